"""The part of ``check`` that talks to the server: connect, write while reading, judge.

Strategy: one exchange is a :class:`~._case.Case` written on a connection while a
reader collects what comes back, under the scenario's deadline; the writer and the
reader share one small record of what each saw, from which the transcript says how
the exchange ended. Judging is :func:`~._diagnosis.diagnose`'s; a failure is raised
as :class:`Failed`, which the run turns into a result (:mod:`._check`).
"""

from __future__ import annotations

import math
import random
import socket
import struct
import weakref
from collections.abc import Sequence

import attrs
import trio

from ..._errors import ClientError
from ..._framing import Framing
from ..._listeners import Address, connect
from ._case import Case
from ._diagnosis import WRITE_PIECE, Diagnosis, Transcript, diagnose, show

#: A connect not done in this long is tried again on a new socket (see
#: :meth:`Checker.open`).
CONNECT_TRY = 0.25
#: Exchanges end this much before their scenario's time limit (at most a tenth of it).
MARGIN = 0.05

#: What an exchange keeps beyond the echo it waits for: a server that sends more (one
#: that floods, or never closes after a half-close) is cut off there, so what ``check``
#: holds is bounded whatever a server does: the echo's size and this much more.
KEEP_BEYOND = 1 << 20
#: Reads whose timing an exchange keeps, at most (a server that trickles a byte per
#: read would otherwise grow the list for as long as the exchange lasts): past this
#: many, the last one is moved on.
MAX_ARRIVALS = 1 << 16

#: Kinds of failure where echoes were still owed when the exchange ended.
_LOST = {"nothing", "lost", "last-frame", "one-per-write"}


class Failed(Exception):
    """A scenario failed: what went wrong, and the case to shrink, if there is one."""

    def __init__(
        self,
        detail: str,
        sent: str = "",
        received: str = "",
        *,
        kind: str = "",
        case: Case | None = None,
        note: str = "",
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.sent = sent
        self.received = received
        self.kind = kind
        self.case = case
        self.note = note


def _summary(frames: Sequence[bytes], wire_size: int, how: str = "") -> str:
    shown = " ".join(show(frame, 24) for frame in frames[:4])
    more = f" ... ({len(frames) - 4} more)" if len(frames) > 4 else ""
    noun = "frame" if len(frames) == 1 else "frames"
    return f"{len(frames)} {noun}, {wire_size} bytes{how}: {shown}{more}"


async def close_now(stream: trio.SocketStream) -> None:
    """Close at once, even in a cancelled scope (so a failure is not replaced by
    the cancellation)."""
    with trio.CancelScope(shield=True):
        await stream.aclose()


def abort(stream: trio.SocketStream) -> None:
    """Close with a reset (RST), as a client that crashes does."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


@attrs.define
class Checker:
    """Talks to the server for the running scenario, and judges each exchange."""

    address: Address
    framing: Framing
    timeout: float
    rng: random.Random = attrs.field(factory=random.Random)
    deadline: float = math.inf
    """When the running scenario's time is up (trio time)."""
    slowest: float = 0.0
    """The longest exchange that passed in the running scenario, in seconds."""
    good_frames: int = 0
    """Frames echoed on the resilience scenario's well-behaved connection."""
    connections: int = 0
    """Connections opened in the whole run so far (each numbered by this count)."""
    answered: int = 0
    """The number of the latest connection that anything came back on (0: none yet):
    a server that stops answering new connections stopped after about this many."""
    _numbers: weakref.WeakKeyDictionary[trio.SocketStream, int] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False
    )
    others: dict[str, bytes] = attrs.field(factory=dict)
    """What each connection of the running scenario sends, by name, for naming
    cross-talk: a scenario of several connections registers the wire bytes of each
    under its label (``"connection 3 of 4"``), and judges each with its label."""

    async def open(self) -> trio.SocketStream:
        """A new connection to the server, counted in :attr:`connections`.

        A connect not done within :data:`CONNECT_TRY` seconds is abandoned for a
        new one, each try allowed twice as long as the one before: a server whose
        listen backlog is full has its kernel drop the connect, which the client's
        kernel would send again only a second later, then three (a correct server
        that accepts slowly is not a failure).
        """
        allowed = CONNECT_TRY
        with trio.move_on_at(self.deadline):
            while True:
                with trio.move_on_after(allowed):
                    try:
                        stream = await connect(self.address, timeout=math.inf)
                    except ClientError as exc:
                        raise Failed(str(exc), kind="refused") from None
                    self.connections += 1
                    self._numbers[stream] = self.connections
                    return stream
                allowed *= 2
        raise Failed(
            "could not even connect within the time limit (trying again every "
            f"{CONNECT_TRY:g}s and more): the server does not accept connections, or its "
            "listen backlog stays full",
            kind="timeout",
        )

    def heard_from(self, stream: trio.SocketStream) -> None:
        """Something came back on ``stream``: the server answered it."""
        self.answered = max(self.answered, self._numbers.get(stream, 0))

    async def talk(
        self,
        stream: trio.SocketStream,
        case: Case,
        *,
        written: int = 0,
        idle: float = math.inf,
        history: int = 0,
    ) -> Transcript:
        """Write the case (each write after its pause) while reading; return what
        came back, when, and how it ended. The first ``written`` bytes of the case
        were sent already; ``history`` frames were echoed on ``stream`` before.

        Reading stops once the echo's size has come back (with a half-close: at EOF),
        at the deadline, or once nothing has come for ``idle`` seconds after the
        last write.
        """
        expected_size = case.size(self.framing)
        talk = _Talk(case, expected_size, expected_size - written, trio.current_time())
        with trio.move_on_at(self.deadline) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write, stream, self.framing, talk, written)
                await _read(stream, talk, idle)
                nursery.cancel_scope.cancel()
        if talk.received:
            self.heard_from(stream)
        elapsed = trio.current_time() - talk.start
        timed_out = scope.cancelled_caught or talk.quiet
        return Transcript(
            bytes(talk.received),
            _ending(talk, elapsed, timed_out, at_the_limit=scope.cancelled_caught),
            timed_out,
            tuple(talk.arrivals),
            elapsed,
            unsent=talk.unsent if timed_out else 0,
            blocked=talk.sending,
            history=history,
            half_closed=talk.case.half_close,
        )

    def judge(
        self,
        case: Case,
        transcript: Transcript,
        *,
        how: str = "",
        context: str = "",
        label: str = "",
    ) -> None:
        """Raise :class:`Failed` unless what came back is ``case``'s echo. ``label``
        names this connection in :attr:`others`: what the other connections send is
        looked for in what came back (cross-talk)."""
        others = {name: data for name, data in self.others.items() if name != label}
        ends = case.write_ends(self.framing)[:-1]
        found = diagnose(self.framing, case.frames, transcript, ends, others)
        if found is None:
            self.slowest = max(self.slowest, transcript.elapsed)
            return
        found = self._out_of_time(found, transcript)
        received = transcript.received
        raise Failed(
            context + found.text,
            sent=_summary(case.frames, case.size(self.framing), how),
            received=f"{len(received)} bytes: {show(received, 96)}",
            kind=found.kind,
            case=case,
        )

    def _out_of_time(self, found: Diagnosis, transcript: Transcript) -> Diagnosis:
        """An exchange that the scenario's time limit cut, while the ones before it
        had taken about as long as it had: slow, not lost."""
        if found.kind not in _LOST or not transcript.timed_out or not self.slowest:
            return found
        last = transcript.arrivals[-1][0] if transcript.arrivals else 0.0
        waited = transcript.elapsed - last
        if waited > 3 * self.slowest:
            return found  # it waited far longer than any exchange that passed took
        return Diagnosis(
            "slow",
            f"{found.text.split(': ')[0]}: the scenario's time limit ran out "
            f"{transcript.elapsed:.2g}s into this exchange, and the ones before it took up "
            f"to {self.slowest:.2g}s each: the server seems slow, not lossy: give it more "
            "time with --timeout",
        )

    async def exchange(
        self,
        case: Case,
        *,
        how: str = "",
        stream: trio.SocketStream | None = None,
        context: str = "",
        history: int = 0,
        label: str = "",
    ) -> None:
        """Write ``case`` on ``stream`` (a new connection by default), read, judge
        (:meth:`judge`, with ``label``)."""
        own = stream is None
        stream = stream or await self.open()
        try:
            transcript = await self.talk(stream, case, history=history)
            self.judge(case, transcript, how=how, context=context, label=label)
        finally:
            if own:
                await close_now(stream)


@attrs.define(eq=False)
class _Talk:
    """One exchange on one connection, as its writer and its reader see it."""

    case: Case
    expected_size: int
    """The echo's size: the case's wire size."""
    unsent: int
    """Bytes of the case not written yet."""
    start: float
    """When the exchange began (trio time)."""
    received: bytearray = attrs.field(factory=bytearray)
    arrivals: list[tuple[float, int]] = attrs.field(factory=list)
    """(seconds since the start, bytes read so far) after each read."""
    sent: trio.Event = attrs.field(factory=trio.Event)
    """Set once the writer is done (every write made, or the connection broke)."""
    sending: bool = False
    """In a write (else pausing between writes)."""
    reset: bool = False
    broke: bool = False
    closed: bool = False
    quiet: bool = False
    """Nothing came for ``idle`` seconds after the last write."""
    flooded: bool = False
    """More came than the echo and ``KEEP_BEYOND`` bytes: the rest was not read."""


async def _write(stream: trio.SocketStream, framing: Framing, talk: _Talk, written: int) -> None:
    """Make the case's writes, each after its pause, skipping the first ``written``
    bytes; then the half-close, if the case has one."""
    case = talk.case
    skip = written
    try:
        for pause, data in case.writes(framing):
            if skip >= len(data):
                skip -= len(data)
                continue
            if pause:
                await trio.sleep(pause)
            talk.sending = True
            rest = memoryview(data)[skip:]
            while rest:  # (in pieces, so that a write the server blocks is counted)
                await stream.send_all(rest[:WRITE_PIECE])
                talk.unsent -= min(len(rest), WRITE_PIECE)
                rest = rest[WRITE_PIECE:]
            talk.sending = False
            skip = 0
        if case.half_close:
            await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        talk.sending = False
        talk.reset = isinstance(exc.__cause__, ConnectionResetError)
        talk.broke = not talk.reset
    talk.sent.set()


async def _read(stream: trio.SocketStream, talk: _Talk, idle: float) -> None:
    """Read until the echo's size has come back (with a half-close: until EOF), the
    server closes or resets, or nothing comes for ``idle`` seconds after the last
    write."""
    case = talk.case
    if case.read_delay:
        await trio.sleep(case.read_delay)
    while case.half_close or len(talk.received) < talk.expected_size:
        with trio.move_on_after(idle) as waiting:
            try:
                data = await stream.receive_some()
            except trio.BrokenResourceError:
                talk.reset = True
                break
        if waiting.cancelled_caught:
            if talk.sent.is_set():
                talk.quiet = True
                break
            continue
        if not data:
            talk.closed = not case.half_close or len(talk.received) < talk.expected_size
            break
        talk.received += data
        keep = talk.expected_size + KEEP_BEYOND
        if len(talk.received) > keep:
            del talk.received[keep:]
            talk.flooded = True
        arrival = (trio.current_time() - talk.start, len(talk.received))
        if len(talk.arrivals) < MAX_ARRIVALS:
            talk.arrivals.append(arrival)
        else:
            talk.arrivals[-1] = arrival
        if talk.flooded:
            break


def _ending(talk: _Talk, elapsed: float, timed_out: bool, *, at_the_limit: bool) -> str:
    """How the exchange ended, as a phrase for :attr:`Transcript.ended`."""
    if talk.flooded:
        return f", and the server went on sending (more than {KEEP_BEYOND} bytes past the echo's size: no more was read)"
    if talk.reset:
        return ", then the server reset the connection"
    if talk.closed:
        return ", then the server closed the connection"
    if talk.broke:
        return ", then the connection broke while sending"
    if not timed_out:
        return ""
    arrivals = talk.arrivals
    last = arrivals[-1][0] if arrivals else 0.0
    until = ", until the time limit" if at_the_limit else ""
    ended = f", then nothing more for {elapsed - last:.3g}s{until}"
    if arrivals and elapsed - last < 0.05 * elapsed:
        ended = ", and more was still coming when the time limit ran out"
    if talk.case.half_close and len(talk.received) >= talk.expected_size:
        ended = ", but the connection was not closed within the time limit after the half-close"
    return ended
