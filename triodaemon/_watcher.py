"""A shared readiness task that connections wait in, and that serves echo reads itself.

Strategy: a connection task that must wait for data can wait the usual way
(``trio.lowlevel.wait_readable`` inside a cancel scope holding its idle deadline
and what a drain cancels), or it can wait here, sleeping in
``trio.lowlevel.wait_task_rescheduled`` with its socket in an epoll of our own.
One watcher task waits for that epoll to become readable (and for the earliest
idle deadline) and polls it. A socket can wait here two ways:

- *parked* (:meth:`IdleWatcher.park`): once it is readable, its task is
  rescheduled with ``True`` and reads for itself. A parked task needs neither
  trio's coroutine frames and waiter record of ``wait_readable`` nor a cancel
  scope: about 1.5 KiB less per idle connection (``python bench/idle_memory.py``).
  The price is a second trip through the scheduler per wake-up (the watcher,
  then the connection), so the daemon parks only while many connections are
  open (:attr:`IdleWatcher.engaged`).
- *served* (:meth:`IdleWatcher.serve`): whenever it is readable, the watcher
  calls the connection's step function itself, in its own task, and the
  connection's task sleeps on. This is the echo's fast path: the step reads,
  frames and replies without blocking, so a busy connection costs no trip
  through trio's scheduler per read (one watcher pass serves every ready socket,
  the way an asyncio ``Protocol`` is called from its loop) and an idle one is as
  small as a parked one. The task is woken with ``True`` only when the step
  says so (an EOF, an error, a reply that would block, a drain done).

Either way a task is woken with ``False`` at its idle deadline (for a served
socket, the idle timeout after its last step) or when :meth:`IdleWatcher.wake`
is called for it (a drain), and cancelling a waiting task still works: its
abort function calls :meth:`IdleWatcher.forget`.

Registrations are level-triggered: made when a task starts waiting, removed
before it is woken, so a socket that is closed or handed on is never left in
the epoll. Every task has the same idle timeout, so the table of waiting tasks,
kept in the order they last made progress, is in the order of their deadlines.
"""

from __future__ import annotations

import contextlib
import math
import select
from collections.abc import Callable

import attrs
import outcome
import trio

#: Events taken per ``epoll.poll()``; a full batch means there may be more.
_POLL_BATCH = 1024

#: What a served socket's step returns: ``True`` to go on serving it, ``False``
#: to stop and wake its task (which then finds out why from its connection).
Step = Callable[[], bool]


@attrs.define(eq=False)
class _Waiting:
    """A task waiting in the watcher: until when, and for what."""

    deadline: float
    task: trio.lowlevel.Task
    step: Step | None  # None: parked


@attrs.define(eq=False)
class IdleWatcher:
    """Wait for many sockets in one task; wake (or serve) each waiting task's socket.

    Run :meth:`run` in a nursery that outlives every task that waits here.

    Args:
        idle_timeout: how long a task waits without progress before it is woken
            with ``False``; ``inf`` disables.
    """

    idle_timeout: float = math.inf
    engaged: bool = False
    """Whether connections should park here now; set by whoever owns the policy."""
    _epoll: select.epoll | None = attrs.field(default=None, init=False)
    # Insertion order is deadline order (one idle timeout): a served socket moves
    # to the end whenever its step goes on.
    _waiting: dict[int, _Waiting] = attrs.field(factory=dict, init=False)
    _sleep: trio.CancelScope | None = attrs.field(default=None, init=False)

    @property
    def parked(self) -> int:
        """How many tasks wait here now (parked or served)."""
        return len(self._waiting)

    def park(self, fd: int, task: trio.lowlevel.Task) -> None:
        """Register ``fd``; ``task`` must then wait in ``wait_task_rescheduled``.

        The task is rescheduled with ``True`` once ``fd`` is readable (data, EOF
        or an error), with ``False`` at its idle deadline or on :meth:`wake`. Its
        abort function must call :meth:`forget`.

        Raises:
            RuntimeError: :meth:`run` is not running (nothing would ever wake the task).
            OSError: the epoll would not take ``fd`` (out of memory, or of
                ``fs.epoll.max_user_watches``, which trio's own epoll shares).
        """
        self._add(fd, task, None)

    def serve(self, fd: int, task: trio.lowlevel.Task, step: Step) -> None:
        """Register ``fd`` and call ``step()`` from the watcher's task whenever it is readable.

        ``step`` must not block, and it runs while ``task`` sleeps: it may use
        what the task owns. While it returns ``True`` the watcher goes on serving
        ``fd`` (and the idle deadline moves on); once it returns ``False`` (or
        raises, which the task then raises), ``task`` is rescheduled with
        ``True``. As for :meth:`park`, ``task`` must wait in
        ``wait_task_rescheduled`` and is woken with ``False`` at its idle
        deadline or on :meth:`wake`, and its abort function must call
        :meth:`forget`.

        Raises:
            RuntimeError: :meth:`run` is not running.
            OSError: the epoll would not take ``fd``.
        """
        self._add(fd, task, step)

    def _add(self, fd: int, task: trio.lowlevel.Task, step: Step | None) -> None:
        if self._epoll is None:
            raise RuntimeError("the IdleWatcher is not running: start its run() first")
        self._epoll.register(fd, select.EPOLLIN)
        deadline = trio.current_time() + self.idle_timeout
        self._waiting[fd] = _Waiting(deadline, task, step)
        if self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline  # the watcher slept with nothing waiting

    def wake(self, fd: int) -> bool:
        """Wake the task waiting on ``fd`` with ``False``; whether one was waiting there."""
        return self._wake(fd, outcome.Value(False))

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` without waking anyone (for an abort function)."""
        self._forget(fd)

    def _forget(self, fd: int) -> _Waiting | None:
        entry = self._waiting.pop(fd, None)
        if entry is not None and self._epoll is not None:
            # If it was closed behind our back, the kernel has dropped it already.
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        return entry

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled; then close the epoll (nothing may wait here by then)."""
        if self._epoll is not None:
            raise RuntimeError("this IdleWatcher is running already")
        self._epoll = epoll = select.epoll()
        waiting = self._waiting
        idle_timeout = self.idle_timeout
        try:
            task_status.started()
            while True:
                # One cancel scope until the earliest idle deadline, not one per wait:
                # entering and leaving one costs about as much as serving a read. Only
                # park() and serve() bring a deadline earlier (they move it); a served
                # socket's deadline only moves later, so the scope may end early, and
                # then nobody has expired yet and the next scope waits for the rest.
                first = next(iter(waiting.values()), None)
                with trio.CancelScope(
                    deadline=math.inf if first is None else first.deadline
                ) as sleep:
                    self._sleep = sleep
                    while True:
                        await trio.lowlevel.wait_readable(epoll)
                        # After a pass that served a socket, yield (every other task
                        # gets its turn, and the peers' next frames arrive meanwhile)
                        # and poll again at once: the next wait through trio would
                        # cost a wake-up of its own, which is latency (S1) and CPU (S2).
                        while self._poll(epoll, trio.current_time() + idle_timeout):
                            await trio.lowlevel.checkpoint()
                self._sleep = None
                self._expire(trio.current_time())
        finally:
            self._sleep = None
            self._epoll = None
            epoll.close()

    def _poll(self, epoll: select.epoll, deadline: float) -> bool:
        """Wake or serve every waiting socket that is ready now (one ``epoll.poll``).

        A served socket whose step goes on gets ``deadline`` and moves to the end of
        the table. Returns whether to poll again soon: a socket was served (its
        peer may answer at once), or the batch came back full (more may be ready).
        """
        waiting = self._waiting
        ready = epoll.poll(0, _POLL_BATCH)
        again = len(ready) == _POLL_BATCH
        for fd, _events in ready:
            entry = waiting.get(fd)
            if entry is None:
                continue
            step = entry.step
            if step is None:
                self._wake(fd, outcome.Value(True))
                continue
            try:
                go_on = step()
            except Exception as exc:  # the task raises it: a bug, not ours to hide
                self._wake(fd, outcome.Error(exc))
                continue
            if go_on:
                entry.deadline = deadline
                del waiting[fd]  # to the end: the latest deadline
                waiting[fd] = entry
                again = True
            else:
                self._wake(fd, outcome.Value(True))
        return again

    def _expire(self, now: float) -> None:
        """Wake every task whose idle deadline has passed, with ``False``."""
        expired = []
        for fd, entry in self._waiting.items():
            if entry.deadline > now:
                break
            expired.append(fd)
        for fd in expired:
            self._wake(fd, outcome.Value(False))

    def _wake(self, fd: int, value: outcome.Outcome[bool]) -> bool:
        entry = self._forget(fd)
        if entry is None:
            return False
        trio.lowlevel.reschedule(entry.task, value)  # an outcome is used once
        return True
