"""One connection: read, frame, handle, write; drain and close; over any transport.

Strategy: one class, :class:`Connection`, owns every policy, and moves bytes
only through a transport (:mod:`._transport`): a trio stream (the public form,
over memory streams in tests or any ``HalfCloseableStream``), or the daemon's
raw socket on a readiness backend (:mod:`._lowlevel`). One task per connection
runs one loop (:meth:`Connection.run`) over the result of one wait: bytes read,
the peer's EOF, or why no bytes came (the idle deadline, the frame deadline, a
drain, a lost connection, or "served": the echo's step read, framed and replied
without the task and left something for it). Every policy is decided here, in
one place each:

- the idle deadline: no progress either way for ``idle_timeout``;
- the frame deadline: a frame begun must be complete within ``frame_timeout``
  (a peer trickling one byte per second makes progress, but no frames);
- the buffer budget: while all connections together hold too much in partial
  frames, one holding a partial frame is not read (:mod:`._budget`);
- the drain: finish the frame in progress, reply, close; at a frame boundary,
  wake the wait and close at once;
- the handover: once nothing is owed, offer the connection to the hook that
  asked (:meth:`Connection.hand_over`); :meth:`Connection.resume` carries one on;
- the close: our EOF, then a lingering close only while something can still
  be lost (:meth:`Connection._linger`).

The echo (``handler=None``) is one step, :meth:`Connection._step`, which the
transport calls whenever it is readable (a readiness backend from its own task,
any other from the connection's); the compiled read-and-echo is the first part
of that step where the transport has it. Any other handler is called once per
frame from the task. Replies go one way: sent at once as far as the transport
takes them, the rest from the task as it becomes writable.

Expected trouble (a reset, a framing violation, an idle or trickling peer, a
peer that stops reading) is caught here, logged as one line naming the peer,
counted, and ends only this connection. Bugs in the frame handler are the
handler's (``ended`` gets them, or :meth:`Connection.run` raises them); a failure
of our own code is an internal error (see :mod:`._faults`). ``trio.Cancelled``
is never caught.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import socket as stdlib_socket
import struct
from collections.abc import Awaitable, Callable

import attrs
import trio

from ._budget import OVER_BUDGET_READ, BufferBudget
from ._config import DEFAULT_RECEIVE_SIZE
from ._errors import FramingError, IncompleteFrame
from ._faults import fault
from ._framing import Decoder, Framing
from ._stats import Stats
from ._transport import BROKEN, StreamTransport, Transport, Wait

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


class _Stop(enum.Enum):
    """Why a wait of :meth:`Connection._wait` brought no bytes."""

    IDLE = "idle"  # the idle deadline passed
    FRAME_TIMEOUT = "frame timeout"  # the frame deadline passed
    WOKEN = "woken"  # a drain, room in the buffer budget, ...: look again
    LOST = "lost"  # the connection broke; the reason is in _handoff
    SERVED = "served"  # the echo's step served reads and left something for the task


class _Handoff(enum.Enum):
    """What the echo's step left for the task, besides an error or replies to send."""

    EOF = "eof"
    PAUSED = "paused"


class _Close(enum.Enum):
    """How a connection ends."""

    GRACEFUL = "graceful"  # our EOF, then linger while replies can still be lost
    FORCEFUL = "forceful"  # nothing more can be delivered: just close
    HANDED = "handed"  # another process serves it now: close our descriptor only


@attrs.frozen
class ConnectionState:
    """Where a conversation stands: what another process needs to carry it on
    (:meth:`Connection.handover_state`, then :meth:`Connection.resume` there). A
    plain record: only the handover writes it down."""

    peer: str
    listener: str
    pending: bytes
    """What was read of a partial frame (empty at a frame boundary)."""
    idle_left: float
    """Seconds until the connection's next deadline (idle, or its frame's); ``inf``: none."""
    frame_left: float
    """Seconds until its partial frame must be complete; ``inf``: no such deadline."""


#: Asked by a connection that is to be handed to another process, once it owes its
#: client nothing: whether it was handed (it then ends), or not (it carries on).
HandoverHook = Callable[["Connection"], Awaitable[bool]]


#: An unlimited budget, which keeps no account: for connections not given one.
_NO_BUDGET = BufferBudget()


class _HandlerFailed(Exception):
    """The frame handler raised ``failure`` (not our own code): :meth:`run` tells apart."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure


class Connection:
    """Serve frames on one transport until the peer leaves, an error, or a drain.

    Args:
        stream: a trio ``HalfCloseableStream`` (such as one end of
            ``trio.testing.memory_stream_pair``), or a :class:`~._transport.Transport`
            (the daemon's sockets); closed by :meth:`run` whatever happens.
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

    __slots__ = (
        "_budget",
        "_buf",
        "_deadline",
        "_draining",
        "_frame_deadline",
        "_handoff",
        "_handover",
        "_held",
        "_shape",
        "_writing",
        "bytes_in",
        "bytes_out",
        "completed",
        "decoder",
        "ended",
        "frame_timeout",
        "frames",
        "framing",
        "handed",
        "handler",
        "idle_timeout",
        "info",
        "opened",
        "receive_size",
        "stats",
        "transport",
    )

    def __init__(
        self,
        stream: trio.abc.HalfCloseableStream | Transport,
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
        self.transport: Transport = (
            stream if isinstance(stream, Transport) else StreamTransport(stream, receive_size)
        )
        self.decoder: Decoder = self.framing.decoder()
        self.completed = False
        self.handed = False
        """Whether it ended handed to another process (:meth:`hand_over`)."""
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
        self._handover: HandoverHook | None = None
        # Left by the echo's step for the task: an error (also a wait's: the reason
        # a connection was lost), an EOF, a pause, or replies to send.
        self._handoff: BaseException | memoryview | _Handoff | None = None
        # The run's shared receive buffer (run() gets it: it is the trio run's).
        self._buf = _NO_BUFFER
        # For the transport's compiled read-and-echo, where it has one (else None).
        self._shape = self.transport.echo_shape(self.framing) if handler is None else None
        #: Called once :meth:`run` is over, however it ended, with the frame
        #: handler's exception (which run() then does not raise) or None. The
        #: daemon's bookkeeping: a hook, not a coroutine around run(), whose frame
        #: every idle connection would carry.
        self.ended: Callable[[Connection, Exception | None], None] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info}>"

    # -- the public part --------------------------------------------------------------

    def drain(self) -> None:
        """Finish the frame in progress (if any), reply, and close.

        A connection waiting at a frame boundary closes at once.
        """
        self._draining = True
        if self._drained():
            self.transport.wake()

    def hand_over(self, hook: HandoverHook | None) -> None:
        """Ask the connection to call ``hook`` as soon as it owes its client nothing
        (its replies sent; a partial frame may be held); ``None`` withdraws the request."""
        self._handover = hook
        if hook is not None:
            self.transport.wake()
            self._budget.interrupt()  # out of a wait for buffer room

    def resume(self, state: ConnectionState) -> None:
        """Carry on a conversation begun elsewhere (in another process), where
        ``state`` says it stands: its deadlines count from now, never later than
        this connection's own timeouts allow. Call before :meth:`run`."""
        self.opened = now = trio.current_time()
        deadline = now + min(self.idle_timeout, state.idle_left)
        pending = state.pending
        if pending:
            self.decoder.feed(pending)
            self._frame_deadline = now + min(self.frame_timeout, state.frame_left)
            deadline = min(deadline, self._frame_deadline)
            self._budget.hold(self, 0, len(pending))
            self._held = len(pending)
        self._deadline = deadline

    def handover_state(self) -> ConnectionState:
        """Where this conversation stands, for another process to carry it on (its
        transport's descriptor stays ours until the connection ends). Only where
        :meth:`hand_over`'s hook is called: no replies owed."""
        now = trio.current_time()
        pending = self.decoder.pending()
        frame = self._frame_deadline if pending else math.inf
        return ConnectionState(
            self.info.peer, self.info.listener, pending, self._deadline - now, frame - now
        )

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
                self._buf = _receive_buffer(max(self.receive_size, OVER_BUDGET_READ))
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
                        self.handed = True
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
                if isinstance(self._handoff, _HandlerFailed):
                    raise self._handoff
                self.completed = True
            finally:
                self.stats.fold(self)
                if self._held:
                    self._budget.hold(self, self._held, 0)
                    self._held = 0
                await self.transport.close()
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

    # -- waiting and reading ----------------------------------------------------------

    def _wait(self) -> Awaitable[int | _Stop | Wait]:
        """Start one wait for the peer; :meth:`_waited` makes sense of its result.

        An awaitable rather than a coroutine of ours where it can be: the
        transport's own wait is awaited directly, one coroutine frame less on
        every idle connection.
        """
        if self._must_pause():
            return self._pause()
        if self.handler is None:
            return self.transport.serve(self._step, self._deadline)
        return self._read_when_ready()

    async def _read_when_ready(self) -> int | _Stop | Wait:
        """Read at once if there is data (a busy connection then waits for nothing,
        as trio's own socket methods do), after a yield so others get their turn;
        else wait until readable."""
        await trio.lowlevel.checkpoint()
        while True:
            size = self._receive()
            if size is not None:
                return size
            if self._drained() or self._handover is not None:
                return _Stop.WOKEN  # drain() came during the yield: nothing to wake
            got = await self.transport.wait_readable(self._deadline)
            if got is not Wait.READY:
                return got

    def _receive(self) -> int | _Stop | None:
        """One read without blocking: its size, LOST (the reason in ``_handoff``), or
        None. (Not in the coroutine: an exception through a coroutine gives it a
        frame object for the rest of its life.)"""
        try:
            return self.transport.receive_into(self._buf, self._read_size())
        except BROKEN as exc:
            self._handoff = exc
            return _Stop.LOST

    def _read_size(self) -> int:
        return OVER_BUDGET_READ if self._budget.over else self.receive_size

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

    def _served(self) -> int | _Stop:
        """What the echo's step left when it ended the serving (``Wait.READY``)."""
        handoff = self._handoff
        if handoff is _Handoff.EOF:
            self._handoff = None
            return 0
        if handoff is _Handoff.PAUSED:
            self._handoff = None
            return _Stop.WOKEN  # the next wait is for buffer room
        if isinstance(handoff, BaseException):
            return _Stop.LOST
        return _Stop.SERVED  # replies left to send, a framing error, or a drain

    def _step(self, now: float) -> float | None:
        """One read of the echo, called by the transport: the deadline to go on until, or None.

        Reads, frames and replies without blocking; what needs the task is left
        in ``_handoff`` (or the decoder's error) and ends the serving.
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
        transport = self.transport
        received: int | None
        try:
            if shape is not None and not self._held:
                # Nothing held: the compiled read, which echoes a read of whole
                # frames itself (the decoder would hold nothing after it either).
                got = transport.receive_echo(buf, size, shape)
                if got is None:
                    return self._deadline
                received, count, sent = got
                if count > 0:
                    return self._echoed(now, received, count, sent)
            else:
                received = transport.receive_into(buf, size)
                if received is None:
                    return self._deadline
        except BROKEN as exc:
            self._handoff = exc
            return None
        if not received:
            self._handoff = _Handoff.EOF
            return None
        replies = self._take_echo(buf, received, now)
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
        """The rest of a step after the compiled read echoed ``size`` bytes of ``count``
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

    async def _after_serving(self) -> _Close | None:
        """Deal with what the echo's step left (SERVED): ``None`` to go on."""
        rest, self._handoff = self._handoff, None
        if isinstance(rest, memoryview):
            return await self._send_rest(rest)
        return None

    async def _received(self, size: int) -> _Close | None:
        """Frame and answer ``size`` bytes just read (a handler's): send the replies."""
        assert self.handler is not None
        self.bytes_in += size
        self.decoder.feed(memoryview(self._buf)[:size])
        replies, count = await self._handle_frames(self.handler)
        self._progress(trio.current_time(), count)
        closed = await self._send(replies) if replies else None
        if isinstance(self._handoff, _HandlerFailed):  # (the replies before it are sent)
            return closed or _Close.GRACEFUL
        return closed

    def _take_echo(
        self, data: bytes | bytearray, size: int, now: float
    ) -> bytes | bytearray | memoryview:
        """The echo: the complete frames of ``size`` bytes read, as they came (uncopied)."""
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

        Stops at a framing error, which stays in ``decoder.error``, and at the
        handler's failure, which is logged, counted and left in ``_handoff`` (run()
        raises it, or gives it to ``ended``, once the replies before it are sent
        and the connection is closed: what a client gets back does not depend on
        how its frames were cut into reads).
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
                    self._handler_failed(exc)
                    break
        except FramingError:
            pass
        return replies, count

    def _handler_failed(self, exc: Exception) -> None:
        self.stats.handler_errors += 1
        log.error(
            "%s: frame handler failed: %s: %s", self.info, type(exc).__name__, exc, exc_info=exc
        )
        self._handoff = _HandlerFailed(exc)

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

    # -- sending ----------------------------------------------------------------------

    async def _send(self, replies: bytes | bytearray | memoryview) -> _Close | None:
        """Send ``replies``: ``None`` once sent, or how to close if they cannot be."""
        rest = self._send_now(replies)
        if rest is None:
            return None
        if isinstance(rest, BaseException):
            return self._lost(rest)
        return await self._send_rest(rest)

    def _send_now(
        self, replies: bytes | bytearray | memoryview
    ) -> memoryview | BaseException | None:
        """Send what the transport takes now, with no trip through the scheduler.

        Returns ``None`` once all is sent, the exception that broke the
        connection, or the rest: copied if it shows the shared receive buffer,
        which other connections read into meanwhile.
        """
        try:
            sent = self.transport.try_send(replies)
        except BROKEN as exc:
            return exc
        self.bytes_out += sent
        if sent == len(replies):
            return None
        rest = memoryview(replies)[sent:]
        return memoryview(bytes(rest)) if rest.obj is self._buf else rest

    async def _send_rest(self, rest: memoryview) -> _Close | None:
        """Send what the transport did not take at once, waiting while it is full:
        until the peer has read nothing for ``idle_timeout`` (a peer that reads a
        large reply slowly but steadily makes progress)."""
        transport = self.transport
        log.debug("%s: %d bytes of replies wait for the peer to read", self.info, len(rest))
        self._writing = True
        # One cancel scope for the whole send, its deadline moved (before a wait)
        # when the peer has read something since: a scope per wait costs as much
        # as the wait in a bulk echo.
        moved = trio.current_time()
        try:
            with trio.CancelScope(deadline=moved + self.idle_timeout) as scope:
                while rest:
                    # Try first, as trio's own send does: since the first attempt the
                    # peer has often made room, and a wait costs a trip through trio.
                    try:
                        sent = transport.try_send(rest)
                        if not sent:
                            if moved > scope.deadline - self.idle_timeout:
                                scope.deadline = moved + self.idle_timeout
                            await transport.wait_writable()
                            continue
                    except BROKEN as exc:
                        return self._lost(exc)
                    self.bytes_out += sent
                    rest = rest[sent:]
                    moved = trio.current_time()
                self._progress(moved, 0)
                return None
        finally:
            self._writing = False
        return self._peer_stopped_reading()

    # -- closing ----------------------------------------------------------------------

    async def _linger(self) -> None:
        """Our EOF; then read and discard until nothing we sent can be lost, for a while at most.

        Ends at the peer's EOF; or once everything we sent is acknowledged (read,
        on a Unix socket), so that a reset for unread data destroys nothing of
        ours (where the transport tells: a socket on Linux; elsewhere after
        ``LINGER_DISCARD`` bytes discarded) and the connection has been quiet for
        ``_LINGER_QUIET``, so that the peer's next read finds our EOF, not a reset
        (a peer that goes on sending is read on for that: a pipelining client
        sends until it reads our EOF); a peer that broke the framing, after
        ``LINGER_DISCARD`` bytes discarded; at the latest after ``LINGER_SECONDS``.
        """
        transport = self.transport
        give_up = trio.current_time() + LINGER_SECONDS
        try:
            with trio.CancelScope(deadline=give_up):
                await transport.shutdown_write()
        except BROKEN:
            return
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
            size = self._receive()
            if size == 0 or size is _Stop.LOST:
                return  # the peer's EOF (it has read all it wanted), or gone
            if size is not None:
                assert isinstance(size, int)
                self.bytes_in += size
                discarded += size
                active = trio.current_time()
                if discarded > next_look:
                    # A peer that goes on sending: a framing violator is cut off
                    # here, as is anyone where we cannot tell what is acknowledged;
                    # anyone else is read on until it is quiet (a pipelining client
                    # at a drain sends until it reads our EOF, a large frame's rest
                    # included), for LINGER_SECONDS at most.
                    if self.decoder.error is not None or transport.unacknowledged() is None:
                        return
                    if trio.current_time() >= give_up:
                        return
                    next_look = discarded + LINGER_DISCARD
                    await trio.lowlevel.checkpoint()  # reading on, but not alone
                continue
            unsent = transport.unacknowledged()
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
            await transport.wait_readable(wake_at)

    # -- endings ----------------------------------------------------------------------

    def _stopped(self, why: _Stop) -> _Close:
        """End the conversation for a wait that brought nothing."""
        if why is _Stop.LOST:
            reason, self._handoff = self._handoff, None
            assert isinstance(reason, BaseException)
            return self._lost(reason)
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


def _reason(exc: BaseException | None) -> str:
    """The OS's words for why a connection broke: from ``exc`` or the OSError behind it."""
    error = exc if isinstance(exc, OSError) else getattr(exc, "__cause__", None)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return (str(exc) or type(exc).__name__) if exc is not None else "unknown"


#: Every connection of a trio run reads into one buffer: no allocation per read (a
#: read of more than 128 KiB into a new ``bytes`` is an ``mmap`` each time) and no
#: memory per connection. Safe because trio runs one task at a time and a
#: connection uses up what it read before it yields.
_RECEIVE_BUFFER: trio.lowlevel.RunVar[bytearray] = trio.lowlevel.RunVar("triodaemon.receive")
_NO_BUFFER = bytearray()


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
