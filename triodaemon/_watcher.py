"""A shared readiness task that idle connections wait in: less memory per connection.

Strategy: a connection task that must wait for data can wait the usual way
(``trio.lowlevel.wait_readable`` inside a cancel scope holding its idle deadline
and what a drain cancels), or it can *park* here: its socket is registered in an
epoll of our own, and the task sleeps in ``trio.lowlevel.wait_task_rescheduled``.
One watcher task waits for that epoll to become readable (and for the earliest
idle deadline), polls it, and reschedules every parked task whose socket is
ready, with ``True``; one whose idle deadline passed, or that :meth:`wake` is
called for (a drain), gets ``False``. Cancelling a parked task still works: its
abort function calls :meth:`forget`.

A parked task needs neither trio's coroutine frames and waiter record of
``wait_readable`` nor a cancel scope: about 1.5 KiB less per idle connection
(``python bench/idle_memory.py``). The price is a second trip through the
scheduler per wake-up (the watcher, then the connection), which shows as
latency when few connections are open; so the daemon parks only while many are
(:attr:`IdleWatcher.engaged`).

Registrations are level-triggered and last one wait: made by :meth:`park`,
removed before the task is woken, so a socket that is closed or handed on is
never left in the epoll. Every parked task has the same idle timeout, so the
insertion order of the parked table is the order of the deadlines.
"""

from __future__ import annotations

import contextlib
import math
import select

import attrs
import outcome
import trio

#: Events taken per ``epoll.poll()``; a full batch means there may be more.
_POLL_BATCH = 1024


@attrs.define(eq=False)
class IdleWatcher:
    """Wait for many sockets in one task; wake each parked task when its socket is readable.

    Run :meth:`run` in a nursery that outlives every task that parks here.

    Args:
        idle_timeout: how long a task stays parked without data before it is
            woken with ``False``; ``inf`` disables.
    """

    idle_timeout: float = math.inf
    engaged: bool = False
    """Whether connections should park here now; set by whoever owns the policy."""
    _epoll: select.epoll | None = attrs.field(default=None, init=False)
    # fd -> (deadline, task); insertion order is deadline order (one idle timeout).
    _parked: dict[int, tuple[float, trio.lowlevel.Task]] = attrs.field(factory=dict, init=False)
    _sleep: trio.CancelScope | None = attrs.field(default=None, init=False)

    @property
    def parked(self) -> int:
        """How many tasks are parked now."""
        return len(self._parked)

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
        if self._epoll is None:
            raise RuntimeError("the IdleWatcher is not running: start its run() first")
        self._epoll.register(fd, select.EPOLLIN)
        deadline = trio.current_time() + self.idle_timeout
        self._parked[fd] = (deadline, task)
        if self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline  # the watcher slept with nothing parked

    def wake(self, fd: int) -> bool:
        """Wake the task parked on ``fd`` with ``False``; whether one was parked there."""
        return self._wake(fd, False)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` without waking anyone (for an abort function)."""
        self._forget(fd)

    def _forget(self, fd: int) -> tuple[float, trio.lowlevel.Task] | None:
        entry = self._parked.pop(fd, None)
        if entry is not None and self._epoll is not None:
            # If it was closed behind our back, the kernel has dropped it already.
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        return entry

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled; then close the epoll (nothing may be parked by then)."""
        if self._epoll is not None:
            raise RuntimeError("this IdleWatcher is running already")
        self._epoll = epoll = select.epoll()
        parked = self._parked
        try:
            task_status.started()
            while True:
                first = next(iter(parked.values()), None)
                with trio.CancelScope(deadline=math.inf if first is None else first[0]) as sleep:
                    self._sleep = sleep
                    await trio.lowlevel.wait_readable(epoll)
                self._sleep = None
                while True:
                    ready = epoll.poll(0, _POLL_BATCH)
                    for fd, _events in ready:
                        self._wake(fd, True)
                    if len(ready) < _POLL_BATCH:
                        break
                now = trio.current_time()
                expired = []
                for fd, (deadline, _task) in parked.items():
                    if deadline > now:
                        break
                    expired.append(fd)
                for fd in expired:
                    self._wake(fd, False)
        finally:
            self._sleep = None
            self._epoll = None
            epoll.close()

    def _wake(self, fd: int, readable: bool) -> bool:
        entry = self._forget(fd)
        if entry is None:
            return False
        trio.lowlevel.reschedule(entry[1], outcome.Value(readable))  # an outcome is used once
        return True
