"""One connection: read, frame, handle, write; drain and close.

Strategy: one task per connection, one loop: read (under the idle deadline),
feed the decoder, run the frame handler on every complete frame, and write all
replies of that read with one write. A read that has to wait for data waits in
its own cancel scope (the idle deadline), which a drain cancels when the
connection is at a frame boundary; in the middle of a frame the drain lets the
loop read on until the frame is complete.

The echo of a socket goes faster: its task sleeps in the daemon's shared
:class:`~triodaemon._watcher.IdleWatcher`, which reads, frames and replies for
it whenever its socket is readable (``_step``, the echo's loop without the
waits), so a busy connection costs no trip through trio's scheduler per read,
as an asyncio ``Protocol`` costs none; the task wakes only for what needs it (an
EOF, a reset, replies that would block, a framing error, a drain, the idle
deadline). With another handler, while many connections are open, a
connection that is not busy *parks* in the watcher instead (no cancel scope:
the watcher wakes it for data, at the idle deadline, or for a drain), which
makes each idle connection about 1.5 KiB smaller.

Expected trouble (a reset, a framing violation, an idle peer, a peer that stops
reading) is caught here, logged as one line naming the peer, counted, and ends
only this connection. Bugs in the frame handler propagate to the daemon, which
logs and counts them. ``trio.Cancelled`` is never caught.
"""

from __future__ import annotations

import enum
import logging
import math
import socket as stdlib_socket
import struct
from collections.abc import Awaitable, Callable

import attrs
import trio

from ._config import DEFAULT_RECEIVE_SIZE
from ._errors import FramingError, IncompleteFrame
from ._framing import Decoder, Framing
from ._listeners import stream_for
from ._stats import Stats
from ._watcher import IdleWatcher

log = logging.getLogger("triodaemon")

#: After we close our side, how long we keep reading (and discarding) so the
#: kernel does not answer unread data with a reset that destroys echoes the
#: peer has not read yet (the "lingering close" of nginx and Apache).
LINGER_SECONDS = 2.0

#: A parked wait that ends with data this soon counts as quick; after two in a
#: row the connection is busy and waits the usual way (the watcher's second trip
#: through the scheduler would cost it latency on every frame) ...
QUICK_WAKE_SECONDS = 0.01
#: ... until one of those waits lasts this long: then it parks again.
PARK_AFTER_SECONDS = 1.0


@attrs.frozen
class ConnectionInfo:
    """Who is on the other end, for handlers and logs."""

    id: int
    """A number unique within one daemon run."""
    listener: str
    """The listener that accepted it, ``tcp://127.0.0.1:8000`` or ``unix:/run/echo.sock``."""
    peer: str
    """The peer: ``127.0.0.1:54321``, ``[::1]:54321``, or ``pid 4242 uid 1000`` on a Unix socket."""

    def __str__(self) -> str:
        return f"conn {self.id} from {self.peer} on {self.listener}"

    @classmethod
    def for_socket(
        cls,
        id: int,
        listener: str,
        sock: stdlib_socket.socket | trio.socket.SocketType,
        peer: object,
    ) -> ConnectionInfo:
        """Describe a connection from its socket and the peer address ``accept()`` gave."""
        return cls(id, listener, _peer_name(sock, peer))


def _peer_name(sock: stdlib_socket.socket | trio.socket.SocketType, peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if sock.family == stdlib_socket.AF_UNIX and hasattr(stdlib_socket, "SO_PEERCRED"):
        try:
            creds = sock.getsockopt(
                stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, struct.calcsize("3i")
            )
        except OSError:
            return "unix peer"
        pid, uid, _gid = struct.unpack("3i", creds)
        return f"pid {pid} uid {uid}"
    return "unix peer" if sock.family == stdlib_socket.AF_UNIX else "unknown peer"


#: The per-frame behaviour: given a frame's payload, return the reply's payload
#: (framed with the connection's framing), or ``None`` to reply nothing.
FrameHandler = Callable[[bytes, ConnectionInfo], Awaitable["bytes | None"]]


async def echo(frame: bytes, conn: ConnectionInfo) -> bytes:
    """The default frame handler: reply with the frame itself."""
    return frame


#: A connection's receive buffer until it starts: none of its own.
_NO_BUFFER = bytearray()


class _Handoff(enum.Enum):
    """What the watcher's serving of a connection left for its task (see ``_step``)."""

    EOF = "eof"


class _Close(enum.Enum):
    """How :meth:`Connection.run` ends a connection."""

    GRACEFUL = "graceful"  # our EOF, then linger until the peer's EOF
    FORCEFUL = "forceful"  # nothing more can be delivered: just close


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class Connection:
    """Serve frames on one stream until the peer leaves, an error, or a drain.

    Args:
        stream: the byte stream; closed by :meth:`run` whatever happens. ``None``
            with ``raw_socket``: a ``trio.SocketStream`` is then made around the
            socket only if one is needed (a reply that does not fit at once, the
            lingering close), which keeps an idle connection small.
        info: who is on the other end.
        framing: how to cut the stream into frames and encode replies.
        handler: the per-frame behaviour.
        idle_timeout: seconds without progress either way before closing; ``inf`` disables.
        receive_size: bytes asked for per read.
        stats: counters to update.
        raw_socket: the (non-blocking) socket under ``stream``, if it is one: reads
            and replies then go to it directly, and the stream is used only for
            what would block. Closed by :meth:`run` whatever happens.
        watcher: with ``raw_socket``, a shared readiness task (running, with the
            same ``idle_timeout``): with the :func:`echo` handler it serves every
            read; with another, a connection waits for data there while
            :attr:`IdleWatcher.engaged`. A wait there needs no cancel scope: less
            memory per idle connection.
    """

    stream: trio.abc.HalfCloseableStream | None
    info: ConnectionInfo
    framing: Framing = attrs.field(factory=Framing)
    handler: FrameHandler = echo
    idle_timeout: float = math.inf
    receive_size: int = DEFAULT_RECEIVE_SIZE
    stats: Stats = attrs.field(factory=Stats)
    raw_socket: stdlib_socket.socket | None = None
    watcher: IdleWatcher | None = None
    decoder: Decoder = attrs.field(init=False)
    completed: bool = attrs.field(default=False, init=False)
    """True once the connection finished and closed on its own terms (see :meth:`run`)."""
    _draining: bool = attrs.field(default=False, init=False)
    _receive_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _echo: bool = attrs.field(default=False, init=False)
    _parked_fd: int = attrs.field(default=-1, init=False)
    _quick: int = attrs.field(default=0, init=False)  # parked waits in a row that were short
    _buf: bytearray = attrs.field(default=_NO_BUFFER, init=False)  # the shared receive buffer
    # Left by _step for the task: an error, an EOF, or replies still to send.
    _handoff: OSError | memoryview | _Handoff | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.stream is None and self.raw_socket is None:
            raise ValueError("a Connection needs a stream or a raw_socket")
        if self.watcher is not None and self.watcher.idle_timeout != self.idle_timeout:
            raise ValueError(
                f"the watcher's idle timeout ({self.watcher.idle_timeout}s) is not the "
                f"connection's ({self.idle_timeout}s)"
            )
        self.decoder = self.framing.decoder()
        self._echo = self.handler is echo

    def _stream(self) -> trio.abc.HalfCloseableStream:
        """The stream, made around the raw socket the first time it is needed."""
        if self.stream is None:
            assert self.raw_socket is not None
            self.stream = stream_for(self.raw_socket)
        return self.stream

    def drain(self) -> None:
        """Finish the frame in progress (if any), reply, and close.

        A connection waiting at a frame boundary closes at once.
        """
        self._draining = True
        if self.decoder.buffered == 0:
            if self._receive_scope is not None:
                self._receive_scope.cancel()
            elif self._parked_fd >= 0 and self.watcher is not None:
                self.watcher.wake(self._parked_fd)

    async def run(self) -> None:
        """Serve until done, then close the stream.

        :attr:`completed` is set only if the connection also closed on its own
        terms: cancelled while lingering for the peer's EOF (at a drain
        deadline, say), the peer may not have read every reply, so it is not.

        Raises:
            Exception: whatever the frame handler raised (the stream is closed first).
        """
        try:
            if await self._serve() is _Close.GRACEFUL:
                await self._linger()
            self.completed = True
        finally:
            if self.stream is not None:
                await trio.aclose_forcefully(self.stream)
            elif self.raw_socket is not None:
                trio.lowlevel.notify_closing(self.raw_socket)
                self.raw_socket.close()

    async def _serve(self) -> _Close:
        decoder = self.decoder
        stats = self.stats
        sock = self.raw_socket
        receive_size = self.receive_size
        echo = self._echo
        watcher = self.watcher if sock is not None else None
        # A socket is read into the run's shared buffer (see _receive_buffer); what
        # was read is used up (sent, or copied into the decoder) before we yield.
        buf = _receive_buffer(receive_size) if sock is not None else bytearray()
        self._buf = buf
        # The echo of a socket is served by the watcher itself (see _step).
        served = self._echo and watcher is not None
        while True:
            if self._draining and decoder.buffered == 0:
                log.debug("%s: drained", self.info)
                return _Close.GRACEFUL
            data: bytes | bytearray = buf
            size: int | None = None  # bytes read into data; None: none yet (or cancelled)
            if served:
                assert sock is not None
                assert watcher is not None
                # Sleep while the watcher reads, frames and replies for us (_step), with
                # no trip through the scheduler per read; we wake for what it cannot do.
                try:
                    watcher.serve(sock.fileno(), trio.lowlevel.current_task(), self._step)
                except OSError as exc:  # the watcher's epoll is full: wait on our own
                    log.debug("%s: not served by the watcher: %s", self.info, _reason(exc))
                    served = False
                    continue
                self._parked_fd = sock.fileno()
                woken = await trio.lowlevel.wait_task_rescheduled(self._abort_park)
                self._parked_fd = -1
                handoff, self._handoff = self._handoff, None
                if not woken:
                    pass  # the idle deadline, or drain(): size stays None
                elif isinstance(handoff, OSError):
                    return self._lost(handoff)
                elif handoff is _Handoff.EOF:
                    size = 0
                else:
                    if handoff is not None:  # replies the socket did not take at once
                        closed = await self._send_rest(handoff)
                        if closed is not None:
                            return closed
                        del handoff
                    if decoder.error is not None:
                        return self._framing_error(decoder.error)
                    continue  # drained, if so: the loop's first test says so
            else:
                try:
                    if sock is not None:
                        # The busy path: yield once (every other connection gets its turn,
                        # and a pipelining peer's next frames arrive meanwhile), then read
                        # directly, paying for neither a cancel scope nor trio's epoll_ctl.
                        await trio.lowlevel.checkpoint()
                        size = _recv_nowait(sock, buf, receive_size)
                    if size is None and watcher is not None and watcher.engaged and self._quick < 2:
                        # Many connections are open and this one is not busy: wait in the
                        # shared watcher, which wakes us with False at the idle deadline or
                        # for drain(), so the wait needs no cancel scope (nor trio's waiter
                        # record): ~1.5 KiB less per idle connection.
                        assert sock is not None
                        while size is None and not (self._draining and decoder.buffered == 0):
                            parked_at = trio.current_time()
                            watcher.park(sock.fileno(), trio.lowlevel.current_task())
                            self._parked_fd = sock.fileno()
                            readable = await trio.lowlevel.wait_task_rescheduled(self._abort_park)
                            self._parked_fd = -1
                            if not readable:
                                break
                            size = _recv_nowait(sock, buf, receive_size)
                            quick = trio.current_time() - parked_at < QUICK_WAKE_SECONDS
                            self._quick = self._quick + 1 if quick else 0
                    elif size is None:
                        # A read that has to wait, in a cancel scope of its own: the idle
                        # deadline, and what drain() cancels. (Inline, not a method: one
                        # coroutine frame less on every idle connection.) A busy connection
                        # among many waits here too, until it has been quiet for a while.
                        now = trio.current_time()
                        idle_deadline = now + self.idle_timeout
                        park_at = math.inf
                        if watcher is not None and watcher.engaged:
                            park_at = now + PARK_AFTER_SECONDS
                        with trio.CancelScope(deadline=min(idle_deadline, park_at)) as scope:
                            self._receive_scope = scope
                            if self._draining and decoder.buffered == 0:
                                scope.cancel()  # drain() came while we yielded
                            try:
                                if sock is None:
                                    data = await self._stream().receive_some(receive_size)
                                    size = len(data)
                                else:
                                    while size is None:
                                        await trio.lowlevel.wait_readable(sock)
                                        size = _recv_nowait(sock, buf, receive_size)
                            finally:
                                self._receive_scope = None
                        if size is None and park_at < idle_deadline and not self._draining:
                            self._quick = 0  # quiet now: park
                            continue
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    return self._lost(exc)
            if size is None:  # the wait was cancelled
                if self._draining:
                    log.debug("%s: drained while idle", self.info)
                else:
                    stats.idle_timeouts += 1
                    log.info("%s: idle for %gs; closing", self.info, self.idle_timeout)
                return _Close.GRACEFUL
            if not size:
                try:
                    decoder.feed_eof()
                except IncompleteFrame as exc:
                    stats.incomplete_frames += 1
                    log.warning("%s: %s; discarded", self.info, exc)
                else:
                    log.debug("%s: closed by peer", self.info)
                return _Close.GRACEFUL
            stats.bytes_received += size
            replies: bytes | bytearray | memoryview
            if echo:
                # An echo's reply is the frames as they came: one piece, no per-frame
                # work, and no copy: a view of the read itself, or of the decoder's
                # buffer when a frame came in pieces.
                replies, count = decoder.feed_and_take(data, size)
                stats.frames += count
                error = decoder.error
            else:
                decoder.feed(memoryview(data)[:size])
                replies, error = await self._handle_frames()
            if replies:
                rest = self._send_direct(replies)
                if isinstance(rest, OSError):
                    return self._lost(rest)
                if rest is not None:
                    closed = await self._send_rest(rest)
                    if closed is not None:
                        return closed
                    del rest
            # Kept no longer: nothing of a read stays with a connection while it waits
            # (a view of the shared buffer alone is ~300 B per idle connection).
            del replies
            if error is not None:
                return self._framing_error(error)

    def _step(self) -> bool:
        """One read of the echo, served by the watcher: whether it may go on serving.

        Reads, frames and replies as :meth:`_serve` does, without blocking; what
        needs the connection's task (an EOF, a broken connection, replies that
        would block, a framing error, a drain done) is left in ``_handoff`` (or
        the decoder) and ends the serving.
        """
        sock = self.raw_socket
        assert sock is not None
        buf = self._buf
        try:
            size = sock.recv_into(buf, self.receive_size)
        except BlockingIOError:
            return True
        except OSError as exc:
            self._handoff = exc
            return False
        if not size:
            self._handoff = _Handoff.EOF
            return False
        stats = self.stats
        decoder = self.decoder
        stats.bytes_received += size
        replies, count = decoder.feed_and_take(buf, size)
        stats.frames += count
        if replies:
            rest = self._send_direct(replies)
            if rest is not None:
                self._handoff = rest
                return False
        return decoder.error is None and not (self._draining and decoder.buffered == 0)

    def _send_direct(self, replies: bytes | bytearray | memoryview) -> memoryview | OSError | None:
        """Send what the socket takes now, with no trip through the scheduler.

        Returns ``None`` once all is sent, the ``OSError`` that broke the
        connection, or the rest for :meth:`_send_rest`: copied if it shows the
        shared receive buffer, which other connections read into meanwhile.
        """
        sent = 0
        if self.raw_socket is not None:
            try:
                sent = self.raw_socket.send(replies)
            except BlockingIOError:
                pass
            except OSError as exc:
                return exc
        self.stats.bytes_sent += sent
        if sent == len(replies):
            return None
        rest = memoryview(replies)[sent:]
        return memoryview(bytes(rest)) if rest.obj is self._buf else rest

    def _framing_error(self, error: FramingError) -> _Close:
        """Count and log a peer that broke the framing; the replies before it are sent."""
        self.stats.framing_errors += 1
        log.warning("%s: %s; closing", self.info, error)
        return _Close.GRACEFUL

    def _abort_park(self, _raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        """Cancelled while parked in the watcher: stop watching; the cancellation goes ahead."""
        if self.watcher is not None:
            self.watcher.forget(self._parked_fd)
        self._parked_fd = -1
        return trio.lowlevel.Abort.SUCCEEDED

    async def _handle_frames(self) -> tuple[bytearray, FramingError | None]:
        """Run the handler on every complete frame; return the encoded replies and any error."""
        replies = bytearray()
        encode = self.framing.encode
        try:
            while (frame := self.decoder.next_frame()) is not None:
                self.stats.frames += 1
                reply = await self.handler(frame, self.info)
                if reply is not None:
                    replies += encode(reply)
        except FramingError as exc:
            return replies, exc
        return replies, None

    async def _send_rest(self, data: memoryview) -> _Close | None:
        """Send what the direct send could not, through the stream: ``None`` once all is sent."""
        with trio.move_on_after(self.idle_timeout) as scope:
            try:
                await self._stream().send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return self._lost(exc)
        if scope.cancelled_caught:
            self.stats.idle_timeouts += 1
            log.info(
                "%s: peer stopped reading (no progress for %gs); closing",
                self.info,
                self.idle_timeout,
            )
            return _Close.FORCEFUL
        self.stats.bytes_sent += len(data)
        return None

    def _lost(self, exc: BaseException) -> _Close:
        """Count and log a connection the peer (or the network) broke."""
        self.stats.resets += 1
        log.info("%s: connection lost: %s", self.info, _reason(exc))
        return _Close.FORCEFUL

    async def _linger(self) -> None:
        """Send EOF, then read and discard until the peer's EOF, for a while at most."""
        with trio.move_on_after(LINGER_SECONDS):
            try:
                stream = self._stream()
                await stream.send_eof()
                while await stream.receive_some(self.receive_size):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


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


def _recv_nowait(sock: stdlib_socket.socket, buf: bytearray, size: int) -> int | None:
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


def _reason(exc: BaseException) -> str:
    """The OS's words for why a connection broke: from ``exc`` or the OSError behind it."""
    error = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(exc) or type(exc).__name__
