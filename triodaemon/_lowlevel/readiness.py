"""Readiness backends: how a connection's socket transport waits.

Strategy: every socket connection waits through one small interface, the way
trio's own I/O waits go through whichever of ``_io_epoll``/``_io_kqueue`` it
chose at start (``trio/_core/_run.py``). A backend makes one transport per
socket (:meth:`Readiness.transport`, a :class:`~.sockets.SocketTransport` with
the waits added), once, and the connection then:

- ``await transport.wait_readable(deadline)``: until the socket is readable
  (data, EOF or an error), its deadline, or ``transport.wake()``;
- ``await transport.serve(step, deadline)``: the same, except that each time the
  socket is readable the backend calls ``step(now)`` and goes on waiting while
  it returns a new deadline. The step reads, frames and replies without
  blocking (the echo), so a busy connection costs no trip through trio's
  scheduler per read, the way an asyncio ``Protocol`` is called from its loop.

Both return a :class:`~triodaemon._transport.Wait`. Deadlines are per transport
(an idle deadline, a frame deadline, whatever the connection needs) and may
change at every step.

Two backends:

- :class:`EpollReadiness` (Linux): one task waits for an epoll of its own to
  become readable, polls it and reschedules (or steps) the waiting tasks. A
  task waiting there needs neither trio's waiter record nor a cancel scope: it
  sleeps in ``wait_task_rescheduled`` with the transport as its abort function,
  about 1.5 KiB less per idle connection (``python bench/idle_memory.py``). One
  pass serves every ready socket. Deadlines are kept in a heap that is lazy
  about moves: a deadline that moves later (every step of a busy connection)
  costs one store, and only the heap's top is checked, when it is due.
- :class:`PortableReadiness` (everywhere): ``trio.lowlevel.wait_readable`` in
  a cancel scope holding the deadline, and the step called from the
  connection's own task. Slower and larger per connection; no ``select.epoll``
  needed, so it runs wherever trio does (macOS, the BSDs).

:func:`open_readiness` picks one. Registrations in the epoll are
level-triggered, made when a wait starts and removed before its task is woken,
so a socket that is closed or handed on is never left there. A socket the
epoll will not take (out of memory or of ``fs.epoll.max_user_watches``) waits
the portable way for that wait, and is still woken by ``wake()``.
"""

from __future__ import annotations

import abc
import contextlib
import heapq
import math
import os
import select
import socket
from collections.abc import Awaitable
from typing import Literal

import attrs
import outcome
import trio

from .._transport import Step, Wait
from ._env import READINESS_ENV
from .sockets import SocketTransport

#: The names of the backends, for configuration; ``auto`` picks the best there is.
ReadinessName = Literal["auto", "epoll", "portable"]
READINESS_NAMES: tuple[ReadinessName, ...] = ("auto", "epoll", "portable")

#: Events taken per ``epoll.poll()``; a full batch means there may be more.
_POLL_BATCH = 1024


class Readiness(abc.ABC):
    """A readiness backend: one per daemon run, shared by every connection."""

    name: str

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve waits until cancelled. Start it in a nursery that outlives every transport."""

    @abc.abstractmethod
    def transport(self, sock: socket.socket) -> SocketTransport:
        """Return the transport of ``sock`` (non-blocking; closed by the transport)."""

    @property
    @abc.abstractmethod
    def waiting(self) -> int:
        """How many waits are under way now."""


def epoll_available() -> bool:
    """Whether this system has ``select.epoll`` (Linux)."""
    return hasattr(select, "epoll")


def open_readiness(name: ReadinessName = "auto") -> Readiness:
    """Make the backend called ``name``; ``auto``: ``$TRIODAEMON_READINESS`` if set, else
    epoll where there is one, else portable.

    Raises:
        ValueError: an unknown name, or ``epoll`` on a system without it.
    """
    if name == "auto":
        chosen = os.environ.get(READINESS_ENV, "") or ("epoll" if epoll_available() else "portable")
    else:
        chosen = name
    if chosen == "epoll":
        if not epoll_available():
            raise ValueError("the epoll readiness backend needs Linux; use 'portable'")
        return EpollReadiness()
    if chosen == "portable":
        return PortableReadiness()
    where = f"${READINESS_ENV}" if name == "auto" else "readiness"
    raise ValueError(f"{where}: unknown backend {chosen!r}; use epoll or portable")


# -- epoll ------------------------------------------------------------------------


class _EpollTransport(SocketTransport):
    """A socket's registration in :class:`EpollReadiness`, and its task's abort function."""

    __slots__ = ("_backend", "_fd", "deadline", "queued", "step", "task")

    def __init__(self, backend: EpollReadiness, sock: socket.socket) -> None:
        super().__init__(sock)
        self._backend = backend
        self._fd = -1  # registered under this fd while a wait is under way
        self.task: trio.lowlevel.Task | None = None
        self.step: Step | None = None
        self.deadline = math.inf
        #: The deadline of this transport's latest entry in the heap; NaN when none counts.
        self.queued = math.nan

    def wait_readable(self, deadline: float) -> Awaitable[Wait]:
        return self._backend._wait(self, None, deadline)

    def serve(self, step: Step, deadline: float) -> Awaitable[Wait]:
        return self._backend._wait(self, step, deadline)

    def wake(self) -> bool:
        backend = self._backend
        if backend._wake(self, outcome.Value(Wait.WOKEN)):
            return True
        fallback = backend._fallbacks.get(self)
        return fallback is not None and fallback.wake()

    def __call__(self, _raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        """The abort function of a waiting task: stop waiting; the cancellation goes ahead."""
        self._backend._forget(self)
        return trio.lowlevel.Abort.SUCCEEDED

    def __lt__(self, other: _EpollTransport) -> bool:
        return False  # only ever asked when two heap entries tie on deadline and fd


@attrs.define(eq=False)
class EpollReadiness(Readiness):
    """Waits in one task of our own, around an epoll of our own (Linux)."""

    name = "epoll"
    _epoll: select.epoll | None = attrs.field(default=None, init=False)
    _waiters: dict[int, _EpollTransport] = attrs.field(factory=dict, init=False)
    # (deadline, fd, waiter): an entry counts while it matches waiter.queued.
    _heap: list[tuple[float, int, _EpollTransport]] = attrs.field(factory=list, init=False)
    _sleep: trio.CancelScope | None = attrs.field(default=None, init=False)
    # The waits the epoll would not take, going the portable way: how to wake them.
    _fallbacks: dict[_EpollTransport, _Wakeable] = attrs.field(factory=dict, init=False)

    def transport(self, sock: socket.socket) -> SocketTransport:
        return _EpollTransport(self, sock)

    @property
    def waiting(self) -> int:
        return len(self._waiters) + len(self._fallbacks)

    def _wait(self, waiter: _EpollTransport, step: Step | None, deadline: float) -> Awaitable[Wait]:
        if self._epoll is None:
            raise RuntimeError("the readiness backend is not running: start its run() first")
        fd = waiter._sock.fileno()
        try:
            self._register(fd)
        except OSError:
            # Out of memory, or of fs.epoll.max_user_watches (which trio's epoll
            # shares): this wait goes the portable way, wakeable as any other.
            return self._fallback(waiter, step, deadline)
        waiter._fd = fd
        waiter.task = trio.lowlevel.current_task()
        waiter.step = step
        self._waiters[fd] = waiter
        self._set_deadline(waiter, deadline)
        # Not a coroutine of our own: one frame less on every waiting connection.
        # The caller awaits it at once (the transport's contract).
        return trio.lowlevel.wait_task_rescheduled(waiter)  # noqa: ASYNC105 (awaited by the caller)

    def _register(self, fd: int) -> None:
        assert self._epoll is not None
        self._epoll.register(fd, select.EPOLLIN)

    async def _fallback(self, waiter: _EpollTransport, step: Step | None, deadline: float) -> Wait:
        """One wait of ``waiter`` the portable way, woken through :attr:`_fallbacks`."""
        wakeable = self._fallbacks[waiter] = _Wakeable()
        try:
            return await _portable_wait(waiter._sock, step, deadline, wakeable)
        finally:
            del self._fallbacks[waiter]

    def _set_deadline(self, waiter: _EpollTransport, deadline: float) -> None:
        waiter.deadline = deadline
        if deadline < waiter.queued or waiter.queued != waiter.queued:  # earlier, or none
            waiter.queued = deadline
            if deadline != math.inf:
                heapq.heappush(self._heap, (deadline, waiter._fd, waiter))
                if len(self._heap) > 2 * len(self._waiters) + 64:
                    self._compact()
                if self._sleep is not None and deadline < self._sleep.deadline:
                    self._sleep.deadline = deadline

    def _compact(self) -> None:
        """Drop the heap entries that no longer count (moved or finished waits)."""
        self._heap = [entry for entry in self._heap if entry[2].queued == entry[0]]
        heapq.heapify(self._heap)

    def _forget(self, waiter: _EpollTransport) -> bool:
        """End ``waiter``'s registration without waking it; whether it had one."""
        fd = waiter._fd
        if fd < 0:
            return False
        waiter._fd = -1
        waiter.task = waiter.step = None
        waiter.queued = math.nan
        del self._waiters[fd]
        if self._epoll is not None:
            # If it was closed behind our back, the kernel has dropped it already.
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        return True

    def _wake(self, waiter: _EpollTransport, value: outcome.Outcome[Wait]) -> bool:
        task = waiter.task
        if not self._forget(waiter):
            return False
        assert task is not None
        trio.lowlevel.reschedule(task, value)
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll until cancelled; then close the epoll (nothing may wait here by then)."""
        if self._epoll is not None:
            raise RuntimeError("this readiness backend is running already")
        self._epoll = epoll = select.epoll()
        try:
            task_status.started()
            while True:
                # One cancel scope until the earliest deadline, not one per wait:
                # entering and leaving one costs about as much as serving a read.
                # A new earlier deadline moves it (_set_deadline); a deadline that
                # moved later may end it early, and then the next scope waits on.
                with trio.CancelScope(
                    deadline=self._heap[0][0] if self._heap else math.inf
                ) as sleep:
                    self._sleep = sleep
                    while True:
                        await trio.lowlevel.wait_readable(epoll)
                        # After a pass that served a socket, yield (every other task
                        # gets its turn, and the peers' next frames arrive meanwhile)
                        # and poll again at once: the next wait through trio would
                        # cost a wake-up of its own, which is latency and CPU.
                        while self._poll(epoll):
                            await trio.lowlevel.checkpoint()
                self._sleep = None
                self._expire(trio.current_time())
        finally:
            self._sleep = None
            self._epoll = None
            epoll.close()

    def _poll(self, epoll: select.epoll) -> bool:
        """Wake or step every waiter whose socket is ready now (one ``epoll.poll``).

        Returns whether to poll again soon: a socket was served (its peer may
        answer at once), or the batch came back full (more may be ready).
        """
        waiters = self._waiters
        ready = epoll.poll(0, _POLL_BATCH)
        again = len(ready) == _POLL_BATCH
        now = trio.current_time()
        for fd, _events in ready:
            waiter = waiters.get(fd)
            if waiter is None:
                continue
            step = waiter.step
            if step is None:
                self._wake(waiter, outcome.Value(Wait.READY))
                continue
            try:
                deadline = step(now)
            except Exception as exc:  # the task raises it: a bug, not ours to hide
                self._wake(waiter, outcome.Error(exc))
                continue
            if deadline is None:
                self._wake(waiter, outcome.Value(Wait.READY))
            else:
                if deadline != waiter.deadline:
                    self._set_deadline(waiter, deadline)
                again = True
        return again

    def _expire(self, now: float) -> None:
        """Wake every waiter whose deadline has passed; requeue those whose deadline moved."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            queued, _fd, waiter = heapq.heappop(heap)
            if waiter.queued != queued:
                continue  # moved earlier since, or finished: another entry counts
            if waiter.deadline > now:  # moved later since: requeue at its deadline
                waiter.queued = waiter.deadline
                if waiter.deadline != math.inf:
                    heapq.heappush(heap, (waiter.deadline, waiter._fd, waiter))
                continue
            self._wake(waiter, outcome.Value(Wait.DEADLINE))


# -- portable ---------------------------------------------------------------------


class _Wakeable:
    """A wait done with trio's ``wait_readable``, and how to end it early."""

    __slots__ = ("_scope", "_woken")

    def __init__(self) -> None:
        self._scope: trio.CancelScope | None = None
        self._woken = False

    def wake(self) -> bool:
        if self._scope is None:
            return False
        self._woken = True
        self._scope.cancel()
        self._scope = None
        return True


class _PortableTransport(SocketTransport):
    """A socket whose waits are trio's own; it is its own :class:`_Wakeable` (no
    second object per connection)."""

    __slots__ = ("_backend", "_scope", "_woken")

    def __init__(self, backend: PortableReadiness, sock: socket.socket) -> None:
        super().__init__(sock)
        self._backend = backend
        self._scope: trio.CancelScope | None = None
        self._woken = False

    def wait_readable(self, deadline: float) -> Awaitable[Wait]:
        return self._backend._wait(self._sock, None, deadline, self)

    def serve(self, step: Step, deadline: float) -> Awaitable[Wait]:
        return self._backend._wait(self._sock, step, deadline, self)

    wake = _Wakeable.wake


@attrs.define(eq=False)
class PortableReadiness(Readiness):
    """Waits with trio's own ``wait_readable`` in each connection's task (any system)."""

    name = "portable"
    _waiting: int = attrs.field(default=0, init=False)

    def transport(self, sock: socket.socket) -> SocketTransport:
        return _PortableTransport(self, sock)

    @property
    def waiting(self) -> int:
        return self._waiting

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to run: every wait happens in its own task. Returns at once."""
        task_status.started()

    async def _wait(
        self,
        sock: socket.socket,
        step: Step | None,
        deadline: float,
        wakeable: _Wakeable | _PortableTransport,
    ) -> Wait:
        self._waiting += 1
        try:
            return await _portable_wait(sock, step, deadline, wakeable)
        finally:
            self._waiting -= 1


async def _portable_wait(
    sock: socket.socket,
    step: Step | None,
    deadline: float,
    wakeable: _Wakeable | _PortableTransport,
) -> Wait:
    """A wait (``step`` None) or a serving done with trio's ``wait_readable``."""
    while True:
        with trio.CancelScope(deadline=deadline) as scope:
            wakeable._scope = scope
            wakeable._woken = False
            try:
                await trio.lowlevel.wait_readable(sock)
            finally:
                wakeable._scope = None
        # Woken, even if the socket became readable in the same instant (the wake
        # then came too late to cancel anything): the wake must not be lost.
        if wakeable._woken:
            wakeable._woken = False
            return Wait.WOKEN
        if scope.cancelled_caught:
            return Wait.DEADLINE
        if step is None:
            return Wait.READY
        next_deadline = step(trio.current_time())
        if next_deadline is None:
            return Wait.READY
        deadline = next_deadline
