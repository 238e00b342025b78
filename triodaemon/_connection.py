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
- behind a balancer, the PROXY header first: the first wait reads it (:mod:`._proxied`);
- the close: our EOF, then a lingering close only while something can still
  be lost (the how is :mod:`._linger`'s).

The echo (``handler=None``) is one step, :meth:`Connection._step`, which the
transport calls whenever it is readable (a readiness backend from its own task,
any other from the connection's); the compiled read-and-echo is the first part
of that step where the transport has it. Any other handler is called once per
frame from the task (:mod:`._handlers`). Replies go one way: sent at once as far
as the transport takes them, the rest from the task as it becomes writable, for
as long as the peer reads (:func:`._transport.send_while_read`).

Expected trouble (a reset, a framing violation, an idle or trickling peer, a
peer that stops reading) is caught here, logged as one line naming the peer and
counted (the words and counters are :mod:`._endings`'), and ends only this
connection. Bugs in the frame handler are the
handler's (``ended`` gets them, or :meth:`Connection.run` raises them); a failure
of our own code is an internal error (see :mod:`._faults`). ``trio.Cancelled``
is never caught.
"""

from __future__ import annotations

import enum
import logging
import math
import os
from collections.abc import Awaitable, Callable

import trio

from . import _endings as endings
from ._budget import OVER_BUDGET_READ, BufferBudget
from ._config import DEFAULT_RECEIVE_SIZE, ProxyProtocol
from ._decoders import Decoder
from ._errors import IncompleteFrame
from ._faults import fault
from ._framing import Framing
from ._handlers import FrameHandler, HandlerFailed, answer_frames
from ._linger import linger
from ._peers import ConnectionInfo, ConnectionState
from ._proxied import Refused, behind, receive_header
from ._stats import Stats
from ._transport import (
    BROKEN,
    NO_BUFFER,
    StreamTransport,
    Transport,
    Wait,
    receive_buffer,
    send_now,
    send_while_read,
)

log = logging.getLogger("triodaemon")


class _Stop(enum.Enum):
    """Why a wait of :meth:`Connection._wait` brought no bytes."""

    IDLE = "idle"  # the idle deadline passed
    FRAME_TIMEOUT = "frame timeout"  # the frame deadline passed
    WOKEN = "woken"  # a drain, room in the buffer budget, ...: look again
    LOST = "lost"  # the connection broke; the reason is in _handoff
    SERVED = "served"  # the echo's step served reads and left something for the task
    REFUSED = "refused"  # a PROXY header was refused (and told)


class _Handoff(enum.Enum):
    """What the echo's step left for the task, besides an error or replies to send."""

    EOF = "eof"
    PAUSED = "paused"


class _Close(enum.Enum):
    """How a connection ends."""

    GRACEFUL = "graceful"  # our EOF, then linger while replies can still be lost
    FORCEFUL = "forceful"  # nothing more can be delivered: just close
    HANDED = "handed"  # another process serves it now: close our descriptor only


#: Asked by a connection that is to be handed to another process, once it owes its
#: client nothing: whether it was handed (it then ends), or not (it carries on).
HandoverHook = Callable[["Connection"], Awaitable[bool]]


#: An unlimited budget, which keeps no account: for connections not given one.
_NO_BUDGET = BufferBudget()


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
        proxy_protocol: the stream must begin with a PROXY protocol header (a
            load balancer's), read under these bounds; its client becomes
            :attr:`info`'s peer. ``None`` (the default): no header.
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
        "_proxy",
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
        proxy_protocol: ProxyProtocol | None = None,
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
        self._proxy = proxy_protocol  # None once its header is read (or if none is due)
        # Left by the echo's step for the task: an error (also a wait's: the reason
        # a connection was lost), an EOF, a pause, or replies to send.
        self._handoff: BaseException | memoryview | _Handoff | None = None
        # The run's shared receive buffer (run() gets it: it is the trio run's).
        self._buf = NO_BUFFER
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
        self._proxy = None  # (its header was read where the conversation began)
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
        info = self.info
        return ConnectionState(
            info.peer, info.listener, pending, self._deadline - now, frame - now, info.proxy
        )

    @property
    def state(self) -> str:
        """``draining`` (a drain has come), ``header`` (its PROXY header has not come
        yet), ``writing`` (replies wait for the peer to read them), ``mid-frame``
        (part of a frame is held) or ``reading``."""
        if self._draining:
            return "draining"
        if self._proxy is not None:
            return "header"
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
                self._buf = receive_buffer(max(self.receive_size, OVER_BUDGET_READ))
                if math.isnan(self.opened):  # (else resume() began it)
                    self.opened = now = trio.current_time()
                    self._deadline = now + self.idle_timeout
                # The loop is here, not in a coroutine of its own: every coroutine
                # frame under a connection's task is part of each idle connection's
                # memory.
                decoder = self.decoder
                closed: _Close | None = None
                while closed is None:
                    if self._handover is not None and decoder.error is None and await self._offer():
                        closed = _Close.HANDED
                    elif self._drained():
                        log.debug("%s: drained", self.info)
                        closed = _Close.GRACEFUL
                    else:
                        got = self._waited(await self._wait())
                        if got is _Stop.SERVED:
                            closed = await self._after_serving()
                        elif isinstance(got, _Stop):
                            closed = None if got is _Stop.WOKEN else self._stopped(got)
                        else:
                            closed = await self._received(got) if got else self._eof()
                        if closed is None and decoder.error is not None:
                            endings.framing_error(self.stats, self.info, decoder.error)
                            closed = _Close.GRACEFUL
                if closed is _Close.GRACEFUL:
                    await self._linger()
                if isinstance(self._handoff, HandlerFailed):
                    raise self._handoff
                self.completed = True
            finally:
                self.stats.fold(self)
                if self._held:
                    self._budget.hold(self, self._held, 0)
                    self._held = 0
                await self.transport.close()
        except Exception as exc:  # (one clause, one local: each is in every idle task's frame)
            if isinstance(exc, HandlerFailed):
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
        if self._proxy is not None:
            return self._proxy_header()
        if self._must_pause():
            return self._pause()
        if self.handler is None:
            return self.transport.serve(self._step, self._deadline)
        return self._read_when_ready()

    async def _proxy_header(self) -> int | _Stop:
        """The first wait behind a balancer: its PROXY header (:mod:`._proxied`); then
        the size of what came after it (in the buffer), the peer's EOF (0), WOKEN
        (nothing came after it, or a drain came first), or REFUSED (told)."""
        assert self._proxy is not None
        try:
            transport, buf, size = self.transport, self._buf, self.receive_size
            got = await receive_header(
                transport, buf, size, self._proxy, self.opened, self._drained
            )
        except BROKEN as exc:
            self._handoff = exc
            return _Stop.LOST
        if isinstance(got, Refused):
            endings.proxy_header_failed(self.stats, self.info, got.why)
            return _Stop.REFUSED
        self._proxy = None
        if got is None:
            return _Stop.WOKEN if self._draining else 0
        header, rest = got
        self.info = behind(header, self.info, self.stats)
        self._buf[: len(rest)] = rest
        return len(rest) or _Stop.WOKEN

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
        size = OVER_BUDGET_READ if self._budget.over else self.receive_size
        try:
            return self.transport.receive_into(self._buf, size)
        except BROKEN as exc:
            self._handoff = exc
            return _Stop.LOST

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
        """Frame and answer ``size`` bytes the task read (a handler's; the echo's only
        after a PROXY header): send the replies."""
        if self.handler is None:
            replies = self._take_echo(self._buf, size, trio.current_time())
            return await self._send(replies) if replies else None
        self.bytes_in += size
        self.decoder.feed(memoryview(self._buf)[:size])
        replies, count, failure = await answer_frames(
            self.decoder, self.handler, self.info, self.framing
        )
        self.frames += count
        self._progress(trio.current_time(), count)
        if failure is not None:
            # run() raises it, or gives it to ``ended``, once the replies before it
            # are sent and the connection is closed.
            endings.handler_failed(self.stats, self.info, failure)
            self._handoff = HandlerFailed(failure)
        closed = await self._send(replies) if replies else None
        if failure is not None:
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
        if self._proxy is not None:
            return False  # (its PROXY header first: the taker would not expect one)
        hook, self._handover = self._handover, None
        assert hook is not None
        self.handed = await hook(self)
        return self.handed

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
        """Send what the transport takes now (:func:`._transport.send_now`): None, or
        the exception that broke the connection, or the rest."""
        sent, rest = send_now(self.transport, replies, self._buf)
        self.bytes_out += sent
        return rest

    async def _send_rest(self, rest: memoryview) -> _Close | None:
        """Send what the transport did not take at once, waiting while it is full:
        until the peer has read nothing for ``idle_timeout`` (a peer that reads a
        large reply slowly but steadily makes progress)."""
        log.debug("%s: %d bytes of replies wait for the peer to read", self.info, len(rest))
        self._writing = True
        try:
            sent = await send_while_read(self.transport, rest, self.idle_timeout, self._sent)
        except BROKEN as exc:
            return self._lost(exc)
        finally:
            self._writing = False
        if not sent:
            endings.stopped_reading(self.stats, self.info, self.idle_timeout)
            return _Close.FORCEFUL
        self._progress(trio.current_time(), 0)
        return None

    def _sent(self, size: int) -> None:
        self.bytes_out += size

    # -- closing ----------------------------------------------------------------------

    async def _linger(self) -> None:
        """Our EOF, then the lingering close (:mod:`._linger`), from when the
        connection last moved bytes: its deadline's last move (at a graceful close
        no frame is held, so no frame deadline is in it)."""
        now = trio.current_time()
        idle = self.idle_timeout
        active = min(now, self._deadline - idle) if idle < math.inf else now
        broken = self.decoder.error is not None
        await linger(
            self.transport, self._buf, self.receive_size, active=active, framing_broken=broken,
            discarded=self._discarded,
        )  # fmt: skip

    def _discarded(self, size: int) -> None:
        self.bytes_in += size

    # -- endings (told by ._endings) ------------------------------------------------

    def _stopped(self, why: _Stop) -> _Close:
        """End the conversation for a wait that brought nothing."""
        if why is _Stop.REFUSED:
            return _Close.FORCEFUL
        if why is _Stop.LOST:
            reason, self._handoff = self._handoff, None
            assert isinstance(reason, BaseException)
            return self._lost(reason)
        if why is _Stop.FRAME_TIMEOUT:
            buffered = self.decoder.buffered
            endings.frame_timeout(self.stats, self.info, self.frame_timeout, buffered)
        else:
            endings.idle(self.stats, self.info, self.idle_timeout)
        return _Close.GRACEFUL

    def _eof(self) -> _Close:
        try:
            self.decoder.feed_eof()
        except IncompleteFrame as exc:
            endings.incomplete(self.stats, self.info, exc)
        else:
            log.debug("%s: closed by peer", self.info)
        return _Close.GRACEFUL

    def _lost(self, exc: BaseException | None) -> _Close:
        endings.lost(self.stats, self.info, exc)
        return _Close.FORCEFUL
