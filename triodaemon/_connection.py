"""One connection: read, frame, handle, write; drain and close.

Strategy: one task per connection runs one loop (:meth:`_Conversation._serve`)
over the result of one wait (:meth:`_Conversation._wait`): bytes read, the
peer's EOF, or why no bytes came (the idle deadline, the frame deadline, a
drain, a lost connection, or, for the echo served by a readiness backend,
"served": the backend read, framed and replied for us and left something for
the task). Every policy is decided here, in one place each:

- the idle deadline: no progress either way for ``idle_timeout``;
- the frame deadline: a frame begun must be complete within ``frame_timeout``
  (a peer trickling one byte per second makes progress, but no frames);
- the buffer budget: while all connections together hold too much in partial
  frames, one holding a partial frame is not read (:mod:`._budget`);
- the drain: finish the frame in progress, reply, close; at a frame boundary,
  wake the wait and close at once;
- the close: our EOF, then a lingering close only while something can still
  be lost (see ``_linger``).

How bytes move is the subclass's: :class:`Connection` over any trio stream (the
public form, for tests over memory streams), and the daemon's
:class:`~triodaemon._socket_connection.SocketConnection` over a raw socket and
a readiness backend. The echo is one body, :meth:`_Conversation._take_echo`,
used by the task and by a backend's step alike; it is chosen explicitly
(``handler=None``), never by comparing functions.

Expected trouble (a reset, a framing violation, an idle or trickling peer, a
peer that stops reading) is caught here, logged as one line naming the peer,
counted, and ends only this connection. Bugs in the frame handler propagate
to the daemon, which logs and counts them; a failure of our own code does too,
apart (an internal error, see :mod:`._faults`). ``trio.Cancelled`` is never
caught.
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

from ._budget import BufferBudget
from ._config import DEFAULT_RECEIVE_SIZE
from ._errors import FramingError, IncompleteFrame
from ._faults import fault
from ._framing import Decoder, Framing
from ._readiness import Wait
from ._stats import Stats

log = logging.getLogger("triodaemon")

#: After our EOF, how long at most we keep reading (and discarding) so that the
#: kernel does not answer unread data with a reset that destroys replies the
#: peer has not read yet (the "lingering close" of nginx and Apache). We stop
#: sooner: at the peer's EOF, or (where the OS tells) once everything we sent
#: is acknowledged, or for a peer that broke the framing after ``LINGER_DISCARD``.
LINGER_SECONDS = 2.0
#: Bytes discarded at most while lingering: a peer that goes on sending after our
#: EOF is cut off after this much, if it broke the framing or if we cannot tell
#: whether what we sent has arrived (a trio stream). Otherwise (the daemon's
#: sockets, where the OS tells) it is read on while what we sent may still be
#: lost: a pipelining client at a drain goes on sending until it reads our EOF.
LINGER_DISCARD = 65536


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
    """A frame handler that replies with the frame itself.

    The same replies as ``handler=None`` (the built-in echo), through the
    general path: one call per frame. A starting point for handlers of your own.
    """
    return frame


class _Stop(enum.Enum):
    """Why a wait of :meth:`_Conversation._wait` brought no bytes."""

    IDLE = "idle"  # the idle deadline passed
    FRAME_TIMEOUT = "frame timeout"  # the frame deadline passed
    WOKEN = "woken"  # a drain, room in the buffer budget, ...: look again
    LOST = "lost"  # the connection broke; the reason is in _lost_reason
    SERVED = "served"  # a backend's step served reads and left something for the task


class _Close(enum.Enum):
    """How a connection ends."""

    GRACEFUL = "graceful"  # our EOF, then linger while replies can still be lost
    FORCEFUL = "forceful"  # nothing more can be delivered: just close
    HANDED = "handed"  # another process serves it now: close our descriptor only


#: Asked by a connection that is to be handed to another process, once it owes its
#: client nothing: whether it was handed (it then ends), or not (it carries on).
HandoverHook = Callable[["_Conversation"], Awaitable[bool]]


#: An unlimited budget, which keeps no account: for connections not given one.
_NO_BUDGET = BufferBudget()


class _HandlerFailed(Exception):
    """The frame handler raised ``failure`` (not our own code): :meth:`run` tells apart."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure


class _Conversation:
    """The policies and the loop of a connection; subclasses move the bytes.

    A subclass provides ``_wait`` (one wait), ``_wake`` (end the wait, for a
    drain), ``_send`` (replies), ``_linger`` and ``_close``.
    """

    __slots__ = (
        "_budget",
        "_deadline",
        "_draining",
        "_frame_deadline",
        "_handover",
        "_held",
        "_lost_reason",
        "_writing",
        "bytes_in",
        "bytes_out",
        "completed",
        "decoder",
        "ended",
        "frame_timeout",
        "frames",
        "framing",
        "handler",
        "idle_timeout",
        "info",
        "opened",
        "receive_size",
        "stats",
    )

    def __init__(
        self,
        info: ConnectionInfo,
        framing: Framing | None,
        handler: FrameHandler | None,
        *,
        idle_timeout: float,
        frame_timeout: float,
        receive_size: int,
        stats: Stats | None,
        budget: BufferBudget | None,
    ) -> None:
        if not idle_timeout > 0 or not frame_timeout > 0:
            raise ValueError("timeouts must be positive seconds (inf disables)")
        if receive_size <= 0:
            raise ValueError("receive_size must be at least 1 byte")
        self.info = info
        self.framing = framing if framing is not None else Framing()
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.receive_size = receive_size
        self.stats = stats if stats is not None else Stats()
        self.decoder: Decoder = self.framing.decoder()
        self.completed = False
        # This connection's traffic: ``stats`` adds it up (Stats.follow) while it runs.
        self.frames = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.opened = math.nan  # trio.current_time() when run() began
        self._writing = False  # replies wait for the peer to read
        self._budget = budget if budget is not None else _NO_BUDGET
        self._draining = False
        self._deadline = math.inf  # of the next wait: the earlier of the two below
        self._frame_deadline = math.inf  # inf while no partial frame is held
        self._held = 0  # bytes of a partial frame, as last told to the budget
        self._lost_reason: BaseException | None = None
        self._handover: HandoverHook | None = None
        #: Called once :meth:`run` is over, however it ended, with the frame
        #: handler's exception (which run() then does not raise) or None. The
        #: daemon's bookkeeping: a hook, not a coroutine around run(), whose frame
        #: every idle connection would carry.
        self.ended: Callable[[_Conversation, Exception | None], None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info}>"

    # -- what a subclass provides ---------------------------------------------------

    def _wait(self) -> Awaitable[int | _Stop | Wait]:
        """Start one wait for the peer; :meth:`_waited` makes sense of its result.

        An awaitable rather than a coroutine of ours: a backend's own wait is
        awaited directly, one coroutine frame less on every idle connection.
        """
        raise NotImplementedError

    def _served(self) -> int | _Stop:
        """What a backend's step left when it ended the serving (``Wait.READY``)."""
        raise NotImplementedError

    def _data(self) -> bytes | bytearray:
        """What the last wait read."""
        raise NotImplementedError

    def _wake(self) -> None:
        """End a wait under way, if one is (it then comes back WOKEN)."""
        raise NotImplementedError

    async def _send(self, replies: bytes | bytearray | memoryview) -> _Close | None:
        """Send ``replies``: ``None`` once sent, or how to close if they cannot be."""
        raise NotImplementedError

    async def _after_serving(self) -> _Close | None:
        """Deal with what a backend's step left (SERVED): ``None`` to go on."""
        raise NotImplementedError

    async def _linger(self) -> None:
        """Send our EOF, then read and discard while replies can still be lost."""
        raise NotImplementedError

    async def _close(self) -> None:
        """Close the transport, whatever happened."""
        raise NotImplementedError

    # -- the public part --------------------------------------------------------------

    def drain(self) -> None:
        """Finish the frame in progress (if any), reply, and close.

        A connection waiting at a frame boundary closes at once.
        """
        self._draining = True
        if self._drained():
            self._wake()

    def hand_over(self, hook: HandoverHook | None) -> None:
        """Ask the connection to call ``hook`` as soon as it owes its client nothing
        (its replies sent; a partial frame may be held); ``None`` withdraws the request."""
        self._handover = hook
        if hook is not None:
            self._wake()
            self._budget.interrupt()  # out of a wait for buffer room

    def resume(self, pending: bytes, idle_left: float | None, frame_left: float | None) -> None:
        """Carry on a conversation begun elsewhere (in another process): ``pending``
        is what was read of a partial frame; the deadlines are seconds from now
        (``None``: as if just begun), never later than this connection's own
        timeouts allow. Call before :meth:`run`."""
        self.opened = now = trio.current_time()
        deadline = now + min(self.idle_timeout, math.inf if idle_left is None else idle_left)
        if pending:
            self.decoder.feed(pending)
            left = math.inf if frame_left is None else frame_left
            self._frame_deadline = now + min(self.frame_timeout, left)
            deadline = min(deadline, self._frame_deadline)
            self._budget.hold(self, 0, len(pending))
            self._held = len(pending)
        self._deadline = deadline

    @property
    def state(self) -> str:
        """``draining`` (a drain has come), ``writing`` (replies wait for the peer to
        read them), ``mid-frame`` (part of a frame is held) or ``reading``."""
        if self._draining:
            return "draining"
        if self._writing:
            return "writing"
        return "mid-frame" if self.decoder.buffered else "reading"

    def _drained(self) -> bool:
        """Whether a drain has come and no frame is in progress: time to close."""
        return self._draining and not self.decoder.buffered

    async def run(self) -> None:
        """Serve until done, then close.

        :attr:`completed` is set only if the connection also closed on its own
        terms: cancelled while lingering (at a drain deadline, say), the peer
        may not have read every reply, so it is not.

        Raises:
            Exception: whatever the frame handler raised (the connection is closed
                first), unless :attr:`ended` is set: it gets the exception instead.
                Without :attr:`ended`, a failure of our own code is raised too;
                with it, it is logged with its traceback and counted in
                ``stats.internal_errors``, and :attr:`ended` gets ``None``.
        """
        failure: Exception | None = None
        try:
            self.stats.follow(self)
            try:
                if math.isnan(self.opened):  # (else resume() began it)
                    self.opened = now = trio.current_time()
                    self._deadline = now + self.idle_timeout
                # The loop is here, not in a coroutine of its own: every coroutine
                # frame under a connection's task is part of each idle connection's
                # memory.
                decoder = self.decoder
                while True:
                    if self._handover is not None and decoder.error is None and await self._offer():
                        closed: _Close | None = _Close.HANDED
                        break
                    if self._drained():
                        log.debug("%s: drained", self.info)
                        closed = _Close.GRACEFUL
                        break
                    got = self._waited(await self._wait())
                    if got is _Stop.SERVED:
                        closed = await self._after_serving()
                    elif isinstance(got, _Stop):
                        if got is _Stop.WOKEN:
                            continue
                        closed = self._stopped(got)
                    elif got == 0:
                        closed = self._eof()
                    else:
                        closed = await self._received(got)
                    if closed is not None:
                        break
                    if decoder.error is not None:
                        closed = self._framing_error(decoder.error)
                        break
                if closed is _Close.GRACEFUL:
                    await self._linger()
                self.completed = True
            finally:
                self.stats.fold(self)
                if self._held:
                    self._budget.hold(self, self._held, 0)
                    self._held = 0
                await self._close()
        except Exception as exc:  # (one clause, one local: each is in every idle task's frame)
            if isinstance(exc, _HandlerFailed):
                failure = exc.failure
            elif self.ended is None:
                raise
            else:  # the boundary of one connection: our own fault
                fault(self.stats, str(self.info), exc)
        finally:
            if self.ended is not None:
                self.ended(self, failure)
        if failure is not None and self.ended is None:
            raise failure

    async def _received(self, size: int) -> _Close | None:
        """Frame and answer ``size`` bytes just read; send the replies."""
        data = self._data()
        replies: bytes | bytearray | memoryview
        if self.handler is None:
            replies = self._take_echo(data, size, trio.current_time())
        else:
            self.bytes_in += size
            self.decoder.feed(memoryview(data)[:size])
            replies, count = await self._handle_frames(self.handler)
            self._progress(trio.current_time(), count)
        if replies:
            return await self._send(replies)
        return None

    def _take_echo(
        self, data: bytes | bytearray, size: int, now: float
    ) -> bytes | bytearray | memoryview:
        """The echo: the complete frames of ``size`` bytes read, as they came (uncopied).

        The one echo body, for a connection's task and a backend's step alike.
        """
        self.bytes_in += size
        decoder = self.decoder
        replies, count = decoder.feed_and_take(data, size)
        self.frames += count
        # _progress(now, count), inline for the common case: this runs for every read
        # of the echo. Nothing was held and the read came back whole, so nothing is held
        # now: no need to ask the decoder.
        if self._held or (len(replies) != size and decoder.buffered):
            self._progress(now, count)
        else:
            self._deadline = now + self.idle_timeout
        return replies

    async def _handle_frames(self, handler: FrameHandler) -> tuple[bytearray, int]:
        """Run the handler on every complete frame; their encoded replies, and how many.

        Stops at a framing error, which stays in ``decoder.error``.
        """
        replies = bytearray()
        encode = self.framing.encode
        count = 0
        try:
            while (frame := self.decoder.next_frame()) is not None:
                count += 1
                self.frames += 1
                try:
                    reply = await handler(frame, self.info)
                    if reply is not None:
                        replies += encode(reply)  # (ValueError: a reply too large to frame)
                except Exception as exc:
                    raise _HandlerFailed(exc) from None
        except FramingError:
            pass
        return replies, count

    def _progress(self, now: float, count: int) -> None:
        """Bytes moved at ``now``, completing ``count`` frames: set the next deadline."""
        deadline = now + self.idle_timeout
        buffered = self.decoder.buffered
        if buffered or self._held:
            deadline = self._partial_frame(now, count, buffered, deadline)
        self._deadline = deadline

    def _partial_frame(self, now: float, count: int, buffered: int, deadline: float) -> float:
        """The frame deadline and the budget, when a partial frame is (or was) held."""
        if not buffered:
            self._frame_deadline = math.inf
        elif count or self._frame_deadline == math.inf:
            self._frame_deadline = now + self.frame_timeout  # a frame began in this read
        if buffered != self._held:
            self._budget.hold(self, self._held, buffered)
            self._held = buffered
        return min(deadline, self._frame_deadline)

    def _must_pause(self) -> bool:
        """Whether the buffer budget says not to read this connection now."""
        return bool(self._held) and not self._budget.may_read(self)

    async def _pause(self) -> _Stop:
        """Holding a partial frame while the budget is exhausted: wait, with the clocks stopped."""
        self.stats.memory_waits += 1
        log.debug("%s: %d bytes of a frame held; waiting for buffer room", self.info, self._held)
        started = trio.current_time()
        await self._budget.wait_for_room(self, self._handing_over)
        now = trio.current_time()
        self._frame_deadline += now - started  # our wait is not the peer's delay
        self._deadline = min(now + self.idle_timeout, self._frame_deadline)
        return _Stop.WOKEN

    async def _offer(self) -> bool:
        """Offer this connection to the handover that asked for it: whether it went.
        (A method of its own: the loop's frame, part of every idle connection's
        memory, keeps no local for it.)"""
        hook, self._handover = self._handover, None
        assert hook is not None
        return await hook(self)

    def _handing_over(self) -> bool:
        return self._handover is not None

    def _waited(self, got: int | _Stop | Wait) -> int | _Stop:
        """The result of one wait: bytes read (0: the EOF), or why none were."""
        if got is Wait.READY:
            return self._served()
        if got is Wait.WOKEN:
            return _Stop.WOKEN
        if got is Wait.DEADLINE:
            if trio.current_time() >= self._frame_deadline:
                return _Stop.FRAME_TIMEOUT
            return _Stop.IDLE
        assert not isinstance(got, Wait)
        return got

    # -- endings ----------------------------------------------------------------------

    def _stopped(self, why: _Stop) -> _Close:
        """End the conversation for a wait that brought nothing."""
        if why is _Stop.LOST:
            return self._lost(self._lost_reason)
        if why is _Stop.FRAME_TIMEOUT:
            self.stats.frame_timeouts += 1
            log.warning(
                "%s: frame not complete after %gs (%d bytes so far); closing",
                self.info,
                self.frame_timeout,
                self.decoder.buffered,
            )
        else:
            self.stats.idle_timeouts += 1
            log.info("%s: idle for %gs; closing", self.info, self.idle_timeout)
        return _Close.GRACEFUL

    def _eof(self) -> _Close:
        try:
            self.decoder.feed_eof()
        except IncompleteFrame as exc:
            self.stats.incomplete_frames += 1
            log.warning("%s: %s; discarded", self.info, exc)
        else:
            log.debug("%s: closed by peer", self.info)
        return _Close.GRACEFUL

    def _framing_error(self, error: FramingError) -> _Close:
        """Count and log a peer that broke the framing; the replies before it are sent."""
        self.stats.framing_errors += 1
        log.warning("%s: %s; closing", self.info, error)
        return _Close.GRACEFUL

    def _lost(self, exc: BaseException | None) -> _Close:
        """Count and log a connection the peer (or the network) broke."""
        self.stats.resets += 1
        log.info("%s: connection lost: %s", self.info, _reason(exc))
        return _Close.FORCEFUL

    def _peer_stopped_reading(self) -> _Close:
        self.stats.idle_timeouts += 1
        log.info(
            "%s: peer stopped reading (no progress for %gs); closing", self.info, self.idle_timeout
        )
        return _Close.FORCEFUL


class Connection(_Conversation):
    """Serve frames on one stream until the peer leaves, an error, or a drain.

    The daemon serves its sockets with a faster form of the same conversation;
    this one takes any trio stream, such as ``trio.testing.memory_stream_pair``.

    Args:
        stream: the byte stream; closed by :meth:`run` whatever happens.
        info: who is on the other end.
        framing: how to cut the stream into frames and encode replies (line by default).
        handler: the per-frame behaviour; ``None`` (the default) echoes every
            complete frame back as it came, without a call per frame.
        idle_timeout: seconds without progress either way before closing; ``inf`` disables.
        frame_timeout: seconds a frame may take from its first byte to its last;
            ``inf`` disables.
        receive_size: bytes asked for per read.
        stats: counters to update (a new :class:`Stats` by default).
        budget: a :class:`~triodaemon._budget.BufferBudget` shared with other
            connections; none by default.
    """

    __slots__ = ("_got", "_scope", "stream")

    def __init__(
        self,
        stream: trio.abc.HalfCloseableStream,
        info: ConnectionInfo,
        framing: Framing | None = None,
        handler: FrameHandler | None = None,
        *,
        idle_timeout: float = math.inf,
        frame_timeout: float = math.inf,
        receive_size: int = DEFAULT_RECEIVE_SIZE,
        stats: Stats | None = None,
        budget: BufferBudget | None = None,
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
        self.stream = stream
        self._got: bytes | bytearray = b""
        self._scope: trio.CancelScope | None = None

    def _wait(self) -> Awaitable[int | _Stop | Wait]:
        return self._pause() if self._must_pause() else self._receive_some()

    async def _receive_some(self) -> int | _Stop | Wait:
        with trio.CancelScope(deadline=self._deadline) as scope:
            self._scope = scope
            if self._drained() or self._handover is not None:
                scope.cancel()  # drain() (or hand_over()) came before this wait began
            try:
                self._got = data = await self.stream.receive_some(self.receive_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._lost_reason = exc
                return _Stop.LOST
            finally:
                self._scope = None
            return len(data)
        return Wait.WOKEN if self._draining or self._handover is not None else Wait.DEADLINE

    def _served(self) -> int | _Stop:  # pragma: no cover - never served
        raise AssertionError("a stream connection is never served by a backend")

    def _data(self) -> bytes | bytearray:
        return self._got

    def _wake(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _send(self, replies: bytes | bytearray | memoryview) -> _Close | None:
        self._writing = True
        try:
            with trio.move_on_after(self.idle_timeout) as scope:
                try:
                    await self.stream.send_all(replies)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    return self._lost(exc)
        finally:
            self._writing = False
        if scope.cancelled_caught:
            return self._peer_stopped_reading()
        self.bytes_out += len(replies)
        return None

    async def _linger(self) -> None:
        with trio.move_on_after(LINGER_SECONDS):
            try:
                await self.stream.send_eof()
                discarded = 0
                while data := await self.stream.receive_some(self.receive_size):
                    self.bytes_in += len(data)
                    discarded += len(data)
                    if discarded > LINGER_DISCARD:
                        return  # (a stream says nothing of what it delivered)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _close(self) -> None:
        await trio.aclose_forcefully(self.stream)


def _reason(exc: BaseException | None) -> str:
    """The OS's words for why a connection broke: from ``exc`` or the OSError behind it."""
    error = exc if isinstance(exc, OSError) else getattr(exc, "__cause__", None)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return (str(exc) or type(exc).__name__) if exc is not None else "unknown"
