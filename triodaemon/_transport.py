"""How a connection moves bytes: the transport interface, and its trio-stream form.

Strategy: a :class:`~triodaemon._connection.Connection` owns every policy
(deadlines, drain, budget, linger, close, handover) and moves bytes only through
these few calls, the shape of a readiness API: read what is there without
blocking, try to send, wait until readable (with a deadline, and wakeable at once
by :meth:`Transport.wake`) or writable (under the connection's own deadline),
shut down writing, tell how much of what was sent is not yet acknowledged, close. Two transports implement it:

- a raw non-blocking socket on the daemon's readiness backend
  (:mod:`triodaemon._lowlevel.sockets`, made by ``Readiness.transport``), which
  may also *serve*: call the connection's step each time the socket is readable,
  from the backend's own task, without a trip through the scheduler;
- :class:`StreamTransport`, any ``trio.abc.HalfCloseableStream`` (memory streams
  in tests, a library user's own stream). A trio stream completes I/O rather
  than reporting readiness, so here the *waits* do the I/O: a wait for
  readability receives, and the read that follows hands over what it received;
  a send that cannot go now is offered, and the wait for writability sends it.
  The connection cannot tell the difference.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._framing import Framing
    from ._lowlevel.scans import Shape


class Wait(enum.Enum):
    """How a wait ended."""

    READY = "ready"
    """Readable or writable; for ``serve``, the step asked for its task."""
    DEADLINE = "deadline"
    """The wait's deadline passed."""
    WOKEN = "woken"
    """:meth:`Transport.wake` was called."""


#: A served transport's step: called with the time whenever the transport is
#: readable; returns the deadline to go on serving until, or ``None`` to end the
#: serving (the task then gets :attr:`Wait.READY`).
Step = Callable[[float], "float | None"]

#: What a transport raises when the connection is broken: the OS's error for a
#: socket, trio's for a stream (its ``__cause__`` is the OS's, where there is one).
BROKEN = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class Transport(abc.ABC):
    """One connection's byte transport. Every method but the waits is non-blocking;
    those that fail raise one of :data:`BROKEN`."""

    __slots__ = ()

    @abc.abstractmethod
    def receive_into(self, buf: bytearray, size: int) -> int | None:
        """Read up to ``size`` bytes into ``buf``: how many (0 at the peer's EOF), or
        ``None`` if none are there now."""

    def echo_shape(self, framing: Framing) -> Shape | None:
        """What :meth:`receive_echo` needs to know of ``framing``, or ``None`` where
        this transport has no read-and-echo of its own for it."""
        return None

    def receive_echo(self, buf: bytearray, size: int, shape: Shape) -> tuple[int, int, int] | None:
        """One read into ``buf``, sent straight back when it is whole frames of
        ``shape`` (from :meth:`echo_shape`): ``None`` if it would block, else (bytes
        read, frames or -1 when the read is not whole frames and nothing was sent,
        bytes sent or -errno). Here: the read alone, never whole frames."""
        received = self.receive_into(buf, size)
        return None if received is None else (received, -1, 0)

    @abc.abstractmethod
    def wait_readable(self, deadline: float) -> Awaitable[Wait]:
        """Wait until a read would not block, ``deadline`` passes, or :meth:`wake`.

        Await it at once: the wait may begin when this is called.
        """

    def serve(self, step: Step, deadline: float) -> Awaitable[Wait]:
        """Call ``step(now)`` whenever a read would not block, until it returns ``None``
        (:attr:`Wait.READY`), its deadline passes, or :meth:`wake`. ``step`` must not
        block; a transport on a readiness backend may call it from the backend's
        task. Await it at once, as for :meth:`wait_readable`."""
        return self._serve_here(step, deadline)

    async def _serve_here(self, step: Step, deadline: float) -> Wait:
        """:meth:`serve` from the connection's own task, for any transport."""
        while True:
            got = await self.wait_readable(deadline)
            if got is not Wait.READY:
                return got
            next_deadline = step(trio.current_time())
            if next_deadline is None:
                return Wait.READY
            deadline = next_deadline

    @abc.abstractmethod
    def wake(self) -> bool:
        """End a wait for readability under way with :attr:`Wait.WOKEN`; whether one was."""

    @abc.abstractmethod
    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """Send what can go now without blocking: how many bytes went (maybe 0).

        After a :meth:`wait_writable`, offer the same bytes again.
        """

    @abc.abstractmethod
    def wait_writable(self) -> Awaitable[None]:
        """Wait until a send would take something. Cancellable: the connection bounds
        it with a deadline of its own, which moves while the peer reads. Await it at once."""

    @abc.abstractmethod
    async def shutdown_write(self) -> None:
        """Send our EOF; reading goes on."""

    @abc.abstractmethod
    def unacknowledged(self) -> int | None:
        """Bytes sent that the peer has not acknowledged (or read); ``None``: unknown."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close, whatever happened; never raises."""

    def fileno(self) -> int:
        """The descriptor to hand to another process, or -1 if it cannot be handed."""
        return -1


#: Every connection of a trio run reads into one buffer: no allocation per read (a
#: read of more than 128 KiB into a new ``bytes`` is an ``mmap`` each time) and no
#: memory per connection. Safe because trio runs one task at a time and a
#: connection uses up what it read before it yields.
_RECEIVE_BUFFER: trio.lowlevel.RunVar[bytearray] = trio.lowlevel.RunVar("triodaemon.receive")
#: A connection's buffer before its run has the shared one.
NO_BUFFER = bytearray()


def receive_buffer(size: int) -> bytearray:
    """The current run's shared receive buffer, at least ``size`` bytes long: read
    into it, and use up (or copy) what was read before the next checkpoint."""
    try:
        buf = _RECEIVE_BUFFER.get()
    except LookupError:
        buf = bytearray()
    if len(buf) < size:
        buf = bytearray(size)
        _RECEIVE_BUFFER.set(buf)
    return buf


def send_now(
    transport: Transport, data: bytes | bytearray | memoryview, shared: bytearray
) -> tuple[int, memoryview | BaseException | None]:
    """Send what ``transport`` takes of ``data`` now, with no trip through the
    scheduler: how much went, and ``None`` once all has, the exception that broke
    the connection, or the rest: copied if it shows the ``shared`` receive buffer,
    which other connections read into meanwhile."""
    try:
        went = transport.try_send(data)
    except BROKEN as exc:
        return 0, exc
    if went == len(data):
        return went, None
    rest = memoryview(data)[went:]
    return went, memoryview(bytes(rest)) if rest.obj is shared else rest


async def send_while_read(
    transport: Transport,
    data: memoryview,
    patience: float,
    sent: Callable[[int], None],
) -> bool:
    """Send all of ``data``, waiting while ``transport`` is full, for as long as the
    peer reads: ``False`` once it has read nothing for ``patience`` seconds (a peer
    that reads a large reply slowly but steadily makes progress). Each part that
    goes is counted by ``sent``. Raises one of :data:`BROKEN`."""
    # One cancel scope for the whole send, its deadline moved (before a wait) when
    # the peer has read something since: a scope per wait costs as much as the wait
    # in a bulk echo.
    moved = trio.current_time()
    with trio.CancelScope(deadline=moved + patience) as scope:
        while data:
            # Try first, as trio's own send does: since the first attempt the peer
            # has often made room, and a wait costs a trip through trio.
            went = transport.try_send(data)
            if not went:
                if moved > scope.deadline - patience:
                    scope.deadline = moved + patience
                await transport.wait_writable()
                continue
            sent(went)
            data = data[went:]
            moved = trio.current_time()
        return True
    return False


#: The most a stream transport sends in one wait (see StreamTransport.wait_writable).
_SEND_PIECE = 16384


class StreamTransport(Transport):
    """A trio ``HalfCloseableStream`` as a transport (see the module's docstring)."""

    __slots__ = ("_asked", "_failure", "_got", "_offered", "_scope", "_sent", "_woken", "stream")

    def __init__(self, stream: trio.abc.HalfCloseableStream, receive_size: int) -> None:
        self.stream = stream
        self._asked = receive_size  # how much the last read asked for
        self._got: bytes | bytearray | None = None  # received by a wait, not yet read
        self._failure: BaseException | None = None  # raised by the next read
        self._offered: bytes | bytearray | memoryview | None = None  # to send at the next wait
        self._sent = 0  # sent by the last wait, taken by the next try_send
        self._scope: trio.CancelScope | None = None
        self._woken = False

    def receive_into(self, buf: bytearray, size: int) -> int | None:
        self._asked = size  # (the next wait receives no more: the budget's small reads)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        got = self._got
        if got is None:
            return None
        if len(got) > size:  # (a read asked for less than the wait received)
            self._got = got[size:]
            got = got[:size]
        else:
            self._got = None
        buf[: len(got)] = got
        return len(got)

    async def wait_readable(self, deadline: float) -> Wait:
        if self._got is not None or self._failure is not None:
            await trio.lowlevel.checkpoint()
            return Wait.READY
        self._woken = False
        with trio.CancelScope(deadline=deadline) as scope:
            self._scope = scope
            try:
                self._got = await self.stream.receive_some(self._asked)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._failure = exc
            finally:
                self._scope = None
        if self._woken:  # (even if the bytes came in the same instant: they are kept)
            self._woken = False
            return Wait.WOKEN if self._got is None and self._failure is None else Wait.READY
        return Wait.DEADLINE if scope.cancelled_caught else Wait.READY

    def wake(self) -> bool:
        if self._scope is None:
            return False
        self._woken = True
        self._scope.cancel()
        return True

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        if self._sent:
            sent, self._sent = self._sent, 0
            return min(sent, len(data))
        self._offered = data
        return 0

    async def wait_writable(self) -> None:
        offered, self._offered = self._offered, None
        if offered is None:
            await trio.lowlevel.checkpoint()
            return
        # A piece at a time: the stream says nothing of a send under way, so each
        # piece sent is the progress a peer that reads slowly but steadily makes.
        piece = memoryview(offered)[:_SEND_PIECE]
        await self.stream.send_all(piece)
        self._sent = len(piece)

    async def shutdown_write(self) -> None:
        await self.stream.send_eof()

    def unacknowledged(self) -> int | None:
        return None  # a stream says nothing of what it delivered

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)
