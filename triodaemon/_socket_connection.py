"""The daemon's connections: the conversation of :mod:`._connection` over a raw socket.

Strategy: bytes go straight between the socket and the run's shared receive
buffer (``recv_into``, ``send``), with no trio stream in between, and every
wait for data goes through the daemon's readiness backend (:mod:`._readiness`).
With the echo (``handler=None``) the task hands the backend a step function
and sleeps: the backend calls :meth:`SocketConnection._step` each time the
socket is readable, which reads, frames and replies without blocking, through
the same echo body as the task would (``_take_echo``). The step ends the
serving for whatever needs the task (an EOF, a broken connection, replies that
would block, a framing error, a drain at a frame boundary, a partial frame
while the buffer budget is exhausted) and leaves it in ``_handoff``. With
another handler, the task tries a read first and waits in the backend only
when there is nothing to read.

A reply that does not fit the socket's send buffer at once is sent from the
task, with trio's ``wait_writable``, under the idle timeout.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import math
import os
import socket
import struct
import sys
from collections.abc import Awaitable

import trio

from ._budget import OVER_BUDGET_READ, BufferBudget
from ._connection import (
    LINGER_DISCARD,
    LINGER_SECONDS,
    ConnectionInfo,
    FrameHandler,
    _Close,
    _Conversation,
    _Stop,
)
from ._framing import EchoShape, Framing, echo_shape
from ._framing import _recv_echo as _compiled_recv_echo
from ._handover import ConnectionRecord, finite_or_none
from ._readiness import Readiness, Wait
from ._stats import Stats

log = logging.getLogger("triodaemon")

#: The ioctl that tells how many bytes we sent are not yet acknowledged by the
#: peer (TCP) or not yet read by it (a Unix socket): Linux's SIOCOUTQ.
_SIOCOUTQ: int | None = None
if sys.platform.startswith("linux"):
    import termios

    _SIOCOUTQ = termios.TIOCOUTQ

#: While lingering with replies unacknowledged, how often to look again: the
#: kernel gives no event for "all acknowledged", so the first look is soon
#: (an idle peer acknowledges within a round trip) and later ones back off.
_LINGER_FIRST_LOOK = 0.001
_LINGER_LAST_LOOK = 0.05
#: Once everything we sent is acknowledged, how long the connection must have been
#: quiet (nothing read, nothing of ours read by the peer) before we close. A
#: pipelining client at a drain sends until it reads our EOF, the more so just as it
#: reads our last replies; closing with its bytes unread would make the kernel
#: answer with a reset, which its next read reports in place of our EOF (a clean
#: drain would look like a crash to it). An idle peer is not waited for at all.
_LINGER_QUIET = 0.1


class _Handoff(enum.Enum):
    """What a backend's step left for the task, besides an error or replies to send."""

    EOF = "eof"
    PAUSED = "paused"


class SocketConnection(_Conversation):
    """A connection on a non-blocking socket, waiting through a readiness backend.

    Args:
        sock: the accepted socket (non-blocking); closed by :meth:`run`. Make the
            connection inside the trio run that serves it (it shares the run's
            receive buffer).
        info, framing, handler, idle_timeout, frame_timeout, receive_size,
            stats, budget: as for :class:`~triodaemon.Connection`.
        readiness: the daemon's running backend.
    """

    __slots__ = ("_buf", "_handoff", "_shape", "_sock", "_waiter")

    def __init__(
        self,
        sock: socket.socket,
        info: ConnectionInfo,
        framing: Framing | None,
        handler: FrameHandler | None,
        *,
        readiness: Readiness,
        idle_timeout: float,
        frame_timeout: float,
        receive_size: int,
        stats: Stats,
        budget: BufferBudget | None,
    ) -> None:
        super().__init__(
            info,
            framing,
            handler,
            idle_timeout=idle_timeout,
            frame_timeout=frame_timeout,
            receive_size=receive_size,
            stats=stats,
            budget=budget,
        )
        if sock.family != socket.AF_UNIX:
            _tune_tcp(sock)
        self._sock = sock
        self._waiter = readiness.waiter(sock)
        self._buf = _receive_buffer(max(receive_size, OVER_BUDGET_READ))
        # Left by _step for the task: an error, an EOF, a pause, or replies to send.
        self._handoff: OSError | memoryview | _Handoff | None = None
        # For the compiled read-and-echo (None: the echo's reads go through Python).
        self._shape = echo_shape(self.framing) if handler is None else None

    # -- waiting and reading -------------------------------------------------------

    def _wait(self) -> Awaitable[int | _Stop | Wait]:
        if self._must_pause():
            return self._pause()
        if self.handler is None:
            # The backend's own wait, awaited by the loop: no frame of ours while idle.
            return self._waiter.serve(self._step, self._deadline)
        return self._read_when_ready()

    async def _read_when_ready(self) -> int | _Stop | Wait:
        """Read at once if there is data (a busy connection then waits for nothing,
        as trio's own socket methods do), after a yield so others get their turn;
        else wait in the backend."""
        await trio.lowlevel.checkpoint()
        while True:
            try:
                size = _recv_nowait(self._sock, self._buf, self._read_size())
            except OSError as exc:
                self._lost_reason = exc
                return _Stop.LOST
            if size is not None:
                return size
            if self._drained() or self._handover is not None:
                return _Stop.WOKEN  # drain() came during the yield: nothing to wake
            got = await self._waiter.wait(self._deadline)
            if got is not Wait.READY:
                return got

    def _served(self) -> int | _Stop:
        handoff = self._handoff
        if handoff is _Handoff.EOF:
            self._handoff = None
            return 0
        if handoff is _Handoff.PAUSED:
            self._handoff = None
            return _Stop.WOKEN  # the next wait is for buffer room
        if isinstance(handoff, OSError):
            self._handoff = None
            self._lost_reason = handoff
            return _Stop.LOST
        return _Stop.SERVED  # replies left to send, a framing error, or a drain

    def _read_size(self) -> int:
        return OVER_BUDGET_READ if self._budget.over else self.receive_size

    def _step(self, now: float) -> float | None:
        """One read of the echo, called by the backend: the deadline to go on until, or None.

        Reads, frames and replies as the task would, without blocking; what needs
        the task is left in ``_handoff`` (or the decoder's error) and ends the serving.
        """
        budget = self._budget
        if budget.over:
            if self._held and not budget.may_read(self):
                self._handoff = _Handoff.PAUSED
                return None
            size = OVER_BUDGET_READ
        else:
            size = self.receive_size
        buf = self._buf
        shape = self._shape
        try:
            if shape is not None and not self._held:
                # Nothing held: the compiled read, which echoes a read of whole
                # frames itself (the decoder would hold nothing after it either).
                got = _recv_echo(self._sock.fileno(), buf, size, shape)
                if got is None:
                    return self._deadline
                size, count, sent = got
                if count > 0:
                    return self._echoed(now, size, count, sent)
            else:
                size = self._sock.recv_into(buf, size)
        except BlockingIOError:
            return self._deadline
        except OSError as exc:
            self._handoff = exc
            return None
        if not size:
            self._handoff = _Handoff.EOF
            return None
        replies = self._take_echo(buf, size, now)
        if replies:
            rest = self._send_now(replies)
            if rest is not None:
                self._handoff = rest
                return None
        decoder = self.decoder
        # (_drained(), inline: this runs for every read.)
        if decoder.error is not None or (self._draining and not decoder.buffered):
            return None
        return self._deadline

    def _echoed(self, now: float, size: int, count: int, sent: int) -> float | None:
        """The rest of a step after ``recv_echo`` echoed ``size`` bytes of ``count``
        whole frames itself: the counters and deadline, and what it could not send."""
        self.bytes_in += size
        self.frames += count
        self._deadline = now + self.idle_timeout
        if sent < 0:
            self._handoff = OSError(-sent, os.strerror(-sent))
            return None
        self.bytes_out += sent
        if sent < size:
            self._handoff = memoryview(bytes(memoryview(self._buf)[sent:size]))
            return None
        return None if self._draining else self._deadline

    def _data(self) -> bytes | bytearray:
        return self._buf

    def _wake(self) -> None:
        self._waiter.wake()

    # -- handing over ----------------------------------------------------------------

    def handover_state(self) -> tuple[ConnectionRecord, bytes, int]:
        """What a new process needs to carry this conversation on: its record, the
        bytes of its partial frame, and its socket's descriptor (still ours until
        the connection ends). Only where :meth:`hand_over`'s hook is called: no
        replies owed."""
        now = trio.current_time()
        pending = self.decoder.pending()
        frame = self._frame_deadline if pending else math.inf
        record = ConnectionRecord(
            peer=self.info.peer,
            listener=self.info.listener,
            pending=len(pending),
            idle_left=finite_or_none(self._deadline - now),
            frame_left=finite_or_none(frame - now),
        )
        return record, pending, self._sock.fileno()

    # -- sending --------------------------------------------------------------------

    def _send_now(self, replies: bytes | bytearray | memoryview) -> memoryview | OSError | None:
        """Send what the socket takes now, with no trip through the scheduler.

        Returns ``None`` once all is sent, the ``OSError`` that broke the
        connection, or the rest: copied if it shows the shared receive buffer,
        which other connections read into meanwhile.
        """
        try:
            sent = self._sock.send(replies)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            return exc
        self.bytes_out += sent
        if sent == len(replies):
            return None
        rest = memoryview(replies)[sent:]
        return memoryview(bytes(rest)) if rest.obj is self._buf else rest

    async def _send(self, replies: bytes | bytearray | memoryview) -> _Close | None:
        rest = self._send_now(replies)
        if rest is None:
            return None
        if isinstance(rest, OSError):
            return self._lost(rest)
        return await self._send_rest(rest)

    async def _after_serving(self) -> _Close | None:
        rest, self._handoff = self._handoff, None
        if isinstance(rest, memoryview):
            return await self._send_rest(rest)
        return None

    async def _send_rest(self, rest: memoryview) -> _Close | None:
        """Send what the socket did not take at once, waiting while it is full."""
        sock = self._sock
        log.debug("%s: %d bytes of replies wait for the peer to read", self.info, len(rest))
        self._writing = True
        try:
            with trio.move_on_after(self.idle_timeout):
                while rest:
                    # Try first, as trio's own send does: since the step's attempt the
                    # peer has often made room, and a wait would cost a trip through
                    # trio's epoll.
                    try:
                        sent = sock.send(rest)
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
                        continue
                    except OSError as exc:
                        return self._lost(exc)
                    self.bytes_out += sent
                    rest = rest[sent:]
                self._progress(trio.current_time(), 0)
                return None
        finally:
            self._writing = False
        return self._peer_stopped_reading()

    # -- closing --------------------------------------------------------------------

    async def _linger(self) -> None:
        """Our EOF; then read and discard until nothing we sent can be lost, for a while at most.

        Ends at the peer's EOF; or once everything we sent is acknowledged (read,
        on a Unix socket), so that a reset for unread data destroys nothing of
        ours (where the OS tells: Linux; elsewhere after ``LINGER_DISCARD`` bytes
        discarded) and the connection has been quiet for ``_LINGER_QUIET``, so that
        the peer's next read finds our EOF, not a reset (a peer that goes on sending
        is read on for that: a pipelining client sends until it reads our EOF); a
        peer that broke the framing, after ``LINGER_DISCARD`` bytes discarded; at
        the latest after ``LINGER_SECONDS``.
        """
        sock = self._sock
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        give_up = trio.current_time() + LINGER_SECONDS
        look = _LINGER_FIRST_LOOK
        discarded = 0
        next_look = LINGER_DISCARD  # discarded bytes at which to look up again
        # When the connection last moved bytes either way (the deadline's last move; at
        # a graceful close no frame is held, so no frame deadline is in it).
        now = trio.current_time()
        active = (
            min(now, self._deadline - self.idle_timeout) if self.idle_timeout < math.inf else now
        )
        while True:
            try:
                size = _recv_nowait(sock, self._buf, self.receive_size)
            except OSError:
                return
            if size == 0:
                return  # the peer's EOF: it has read all it wanted
            if size is not None:
                self.bytes_in += size
                discarded += size
                active = trio.current_time()
                if discarded > next_look:
                    # A peer that goes on sending: a framing violator is cut off
                    # here, as is anyone where the OS does not tell what is
                    # acknowledged; anyone else is read on until it is quiet (a
                    # pipelining client at a drain sends until it reads our EOF, a
                    # large frame's rest included), for LINGER_SECONDS at most.
                    if self.decoder.error is not None or _unacknowledged(sock) is None:
                        return
                    if trio.current_time() >= give_up:
                        return
                    next_look = discarded + LINGER_DISCARD
                    await trio.lowlevel.checkpoint()  # reading on, but not alone
                continue
            unsent = _unacknowledged(sock)
            now = trio.current_time()
            if now >= give_up:
                return
            if unsent == 0:
                quiet_at = active + _LINGER_QUIET
                if now >= quiet_at:
                    return
                wake_at = min(give_up, quiet_at)
            else:
                active = now  # (the peer has yet to read it, and may answer as it does)
                wake_at = give_up if unsent is None else min(give_up, now + look)
                look = min(2 * look, _LINGER_LAST_LOOK)
            await self._waiter.wait(wake_at)

    async def _close(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()


#: What trio's ``SocketStream`` sets on every TCP socket, and why we set it too:
#: replies go out at once (no Nagle delay on a small reply after a large one),
#: and the kernel takes only this much not yet sent ahead of what it is
#: sending, so a bulk echo's replies wait in our buffer (which we reuse) rather
#: than in a send buffer that grows to megabytes (S4 of bench/run.py over TCP:
#: about twice the frames per CPU-second; docs/performance.md).
TCP_NOTSENT_LOWAT = 16384


def _tune_tcp(sock: socket.socket) -> None:
    """``TCP_NODELAY`` and ``TCP_NOTSENT_LOWAT`` on an accepted TCP socket, where there are."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if lowat is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, lowat, TCP_NOTSENT_LOWAT)


def _unacknowledged(sock: socket.socket) -> int | None:
    """Bytes we sent that the peer has not acknowledged (or read); None if the OS won't say."""
    if _SIOCOUTQ is None:
        return None
    try:
        answer = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    return int(struct.unpack("i", answer)[0])


def _no_recv_echo(fd: int, buf: bytearray, size: int, shape: EchoShape) -> tuple[int, int, int]:
    raise RuntimeError("no compiled recv_echo: echo_shape() gives a connection no shape then")


#: The compiled read-and-echo (``triodaemon/_speedups.c``), for connections with
#: an echo shape, which they have only where it was built.
_recv_echo = _compiled_recv_echo or _no_recv_echo


#: Every connection of a trio run reads its socket into one buffer: no allocation
#: per read (a read of more than 128 KiB into a new ``bytes`` is an ``mmap`` each
#: time) and no memory per connection. Safe because trio runs one task at a time
#: and a connection uses up what it read before it yields.
_RECEIVE_BUFFER: trio.lowlevel.RunVar[bytearray] = trio.lowlevel.RunVar("triodaemon.receive")


def _receive_buffer(size: int) -> bytearray:
    """The current run's shared receive buffer, at least ``size`` bytes long."""
    try:
        buf = _RECEIVE_BUFFER.get()
    except LookupError:
        buf = bytearray()
    if len(buf) < size:
        buf = bytearray(size)
        _RECEIVE_BUFFER.set(buf)
    return buf


def _recv_nowait(sock: socket.socket, buf: bytearray, size: int) -> int | None:
    """``sock.recv_into(buf, size)``, or ``None`` if it would block.

    A function of its own so that the ``BlockingIOError`` never passes through
    the connection's coroutine: a traceback through a coroutine gives it a frame
    object for the rest of its life (~300 B per idle connection), and a coroutine
    that waits inside an ``except`` block keeps the exception alive as well.
    """
    try:
        return sock.recv_into(buf, size)
    except BlockingIOError:
        return None
