"""What an echo that differs from what was sent says about the server: sans-I/O.

``check`` sends frames and records what came back (a :class:`Transcript`);
:func:`diagnose` compares the two *as a whole* and names the bug: frames lost, late,
reordered, truncated at a size, skipped when empty, cut where the reads were cut,
corrupted now and then. Each explanation has a kind (a short name, stable, what the
shrinker keeps while it makes a failing case smaller) and a sentence for people that
also says how the exchange ended.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Mapping, Sequence

import attrs

from ..._errors import FramingError, count
from ..._framing import Framing
from ._edit_kinds import EditJudge

#: The client writes a case's writes in pieces of at most this many bytes, back to
#: back (the same stream on the wire), so that what the kernel took is counted.
WRITE_PIECE = 65536

#: The kinds of failure, most specific first within each family.
KINDS = (
    "stalled",  # the server stopped reading: the client could not finish writing
    "nothing",  # not a byte came back
    "slow",  # a prefix came back, and echoes were still arriving at the time limit
    "one-per-write",  # one frame (or N) back for each write, the rest never
    "last-frame",  # all but the last frame
    "lost",  # a prefix, then nothing more
    "closed",  # a prefix, then the server closed or reset a connection that had carried frames
    "extra",  # bytes that were never sent, before, between or after the echoes
    "cross-talk",  # bytes another connection of the scenario sent came back on this one
    "ending",  # everything, but the connection did not end as it should
    "reordered",  # whole frames, in another order
    "skipped-empty",  # every frame but the empty ones
    "read-cut",  # frames cut where the client's writes were cut
    "truncated",  # frames longer than N came back cut at N, the rest lost
    "chopped",  # frames longer than N came back in pieces of N
    "header",  # every length header off by one constant, the payloads intact
    "padded",  # a fixed-size frame came back as a short read, padded to the size
    "text",  # bytes >= 0x80 came back re-encoded as text (U+FFFD, Latin-1 as UTF-8)
    "line-ends",  # a lone \r came back as \n, or \r\n as \n
    "stripped",  # whitespace at the end (or start) of lines never came back
    "duplicated",  # a stretch came back twice, the second time right after the first
    "missing",  # a few bytes gone here and there, not whole frames, the rest intact
    "fragmented",  # the payload bytes in order, cut into other frames
    "dropped",  # some frames never came back, the others whole and in order
    "corrupted",  # as many frames, a few of them different
    "partial-tail",  # a frame came back as a piece of itself
    "pieces",  # pieces of what was sent, in order, with gaps
    "differs",  # anything else
)


@attrs.frozen
class Transcript:
    """What came back on one connection, and when."""

    received: bytes
    """Every byte read, in order."""
    ended: str = ""
    """How the exchange ended, as a phrase: ``""`` (as expected), or
    ``", then the server closed the connection"`` and the like."""
    timed_out: bool = False
    """Whether the time limit ended it."""
    arrivals: tuple[tuple[float, int], ...] = ()
    """(seconds since the first write, bytes read so far) after each read."""
    elapsed: float = 0.0
    """Seconds from the first write to the end of the exchange."""
    unsent: int = 0
    """Bytes the client had not written yet when the exchange ended."""
    blocked: bool = False
    """Whether the client was stuck in a write then (the server not reading), rather
    than pausing between writes."""
    history: int = 0
    """Frames echoed on this connection before this exchange."""
    half_closed: bool = False
    """Whether the client shut down its sending side: then a close is the answer to
    that, not a failure of its own."""


@attrs.frozen
class Diagnosis:
    """The kind of failure (one of :data:`KINDS`) and its explanation."""

    kind: str
    text: str


def wire(framing: Framing, frames: Sequence[bytes]) -> bytes:
    """The bytes of ``frames`` on the wire, one after another."""
    return b"".join(framing.encode(frame) for frame in frames)


def show(data: bytes, limit: int = 48) -> str:
    """``data`` as a Python literal, cut after ``limit`` bytes."""
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}..."


def numbers(items: Sequence[int], limit: int = 8) -> str:
    """``1, 2, 5`` (1-based already), with ``...`` past ``limit`` of them."""
    text = ", ".join(map(str, items[:limit]))
    return text + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")


def _were(number: int) -> str:
    return "was" if number == 1 else "were"


def which(items: Sequence[int]) -> str:
    """``frame 3`` or ``frames 1, 4, 9`` (1-based already)."""
    return f"frame {items[0]}" if len(items) == 1 else f"frames {numbers(items)}"


def decode_loosely(framing: Framing, data: bytes) -> tuple[list[bytes], bytes]:
    """The frames in ``data`` as far as they parse, ignoring size limits; and the rest."""
    loose = attrs.evolve(framing, max_frame=max(len(data), 1))
    decoder = loose.decoder()
    decoder.feed(data)
    frames = []
    used = 0
    try:
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
            used += len(loose.encode(frame))
    except (FramingError, ValueError):
        pass
    return frames, data[used:]


def complete_frames(framing: Framing, frames: Sequence[bytes], size: int) -> int:
    """How many of ``frames`` lie wholly within the first ``size`` bytes of their stream."""
    position = 0
    for whole, frame in enumerate(frames):
        position += len(framing.encode(frame))
        if position > size:
            return whole
    return len(frames)


def _is_subsequence(part: Sequence[bytes], whole: Sequence[bytes]) -> bool:
    items = iter(whole)
    return all(any(item == wanted for item in items) for wanted in part)


def _chunks(payload: bytes, size: int) -> list[bytes]:
    return [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]


def _payload_offsets(framing: Framing, frames: Sequence[bytes], wire_offsets: set[int]) -> set[int]:
    """Where in the payloads (all of them joined) each of ``wire_offsets`` falls."""
    found = set()
    position = payload = 0
    for frame in frames:
        size = len(framing.encode(frame))
        header = size - len(frame) if framing.kind in ("length", "varint") else 0
        for offset in wire_offsets:
            if position <= offset < position + size:
                found.add(payload + min(max(offset - position - header, 0), len(frame)))
        position += size
        payload += len(frame)
    return found


def _longest_run(total: int, missing: Sequence[int]) -> int:
    """The most frames in a row that came back, of ``total``, ``missing`` (1-based)
    never having come back; the run after the last missing frame is not counted (it
    may be the tail of a read the server answered whole)."""
    longest = previous = 0
    for number in missing:
        longest = max(longest, number - previous - 1)
        previous = number
    return longest


class _Judge:
    """One comparison: the facts it states once, the explanations it chooses from."""

    def __init__(
        self,
        framing: Framing,
        frames: Sequence[bytes],
        transcript: Transcript,
        write_ends: set[int],
        others: Mapping[str, bytes],
    ) -> None:
        self.framing = framing
        self.sent = list(frames)
        self.transcript = transcript
        self.expected = wire(framing, frames)
        self.received = transcript.received
        self.ended = transcript.ended
        self.write_ends = write_ends
        self.edits = EditJudge(framing, self.sent, self.expected, self.received, write_ends, others)

    def diagnose(self) -> Diagnosis:
        if self.transcript.unsent and self.transcript.timed_out:
            return self.unfinished()
        if self.received == self.expected:
            return Diagnosis("ending", f"every echo came back{self.ended}")
        if self.expected.startswith(self.received):
            return self.prefix()
        if self.received.startswith(self.expected):
            extra = self.received[len(self.expected) :]
            ended = self.ended or " (the client read no further)"
            return Diagnosis(
                "extra",
                f"every echo came back, then {count(len(extra), 'byte')} more than was "
                f"sent: {show(extra)}{ended}",
            )
        named = self.edits.named()
        if named is not None:
            return Diagnosis(named[0], named[1] + self.ended)
        greeting = self.greeting()
        if greeting is not None:
            return greeting
        if self.framing.kind != "raw":
            got, rest = decode_loosely(self.framing, self.received)
            if got:
                found = self.frames(got, rest)
                if found is not None:
                    return found
        return self.missing([], "") or self.bytewise()

    def missing(self, got: list[bytes], facts: str) -> Diagnosis | None:
        """A few bytes gone, not whole frames (after :meth:`skipped_empty`: an empty
        frame is a few bytes too)."""
        found = self.edits.missing() if self.edits.edits else None
        if found is None:
            return None
        return Diagnosis(found[0], found[1] + self.ended)

    def unfinished(self) -> Diagnosis:
        """The time limit came before the client had written everything."""
        transcript = self.transcript
        written = len(self.expected) - transcript.unsent
        facts = (
            f"the client could write only {written} of {count(len(self.expected), 'byte')} "
            f"before the time limit, and got {count(len(self.received), 'byte')} back"
        )
        if transcript.blocked:
            return Diagnosis(
                "stalled",
                f"{facts}: the server stopped reading (its writes stuck too, or it never "
                "reads while it owes echoes, or not at all)",
            )
        return Diagnosis(
            "slow",
            f"{facts}, pausing between writes as the scenario does: the time limit is too "
            "short for the scenario itself; raise --timeout",
        )

    def greeting(self) -> Diagnosis | None:
        """Bytes never sent, then the echo as far as it was read."""
        probe = self.expected[: min(16, len(self.expected))]
        at = self.received.find(probe) if probe else -1
        if at <= 0 or not self.expected.startswith(self.received[at:]):
            return None
        first = self.received[:at]
        if self.framing.kind == "raw":
            if first in self.expected:
                return None
        elif set(decode_loosely(self.framing, first)[0]) & set(self.sent):
            return None  # echoes of frames sent, out of place: not a greeting
        return Diagnosis(
            "extra",
            f"{count(at, 'byte')} that {_were(at)} never sent came first, {show(self.received[:at])}, "
            f"then the echo, intact as far as it was read{self.ended}",
        )

    def prefix(self) -> Diagnosis:
        sent, received = self.sent, self.received
        complete = complete_frames(self.framing, sent, len(received))
        facts = (
            f"got {len(received)} of {len(self.expected)} bytes "
            f"({complete} of {count(len(sent), 'frame')}){self.ended}"
        )
        closed = (" closed " in self.ended and not self.transcript.half_closed) or (
            " reset " in self.ended
        )
        if not received and not (closed and self.header_hint(complete)):
            return Diagnosis("nothing", f"{facts}: nothing came back")
        slow = self.still_arriving(complete)
        if slow is not None:
            return slow
        history = self.transcript.history
        if complete == len(sent) - 1 and len(sent) > 1:
            return Diagnosis(
                "last-frame", f"{facts}: the last frame never came back{self.header_hint(complete)}"
            )
        if closed and (history or complete or self.header_hint(complete)):
            # (before one-per-write: a server that closes after a frame answered one;
            # after last-frame: a server that loses the last frame at EOF closes too)
            how = "reset" if " reset " in self.ended else "closed"
            before = f" on it ({history} of them in exchanges before this one)" if history else ""
            return Diagnosis(
                "closed",
                f"{facts}: the server {how} the connection after "
                f"{count(history + complete, 'frame')}{before}{self.header_hint(complete)}",
            )
        writes = len(self.write_ends) + 1
        per_write = complete // writes
        if (
            per_write > 1
            and complete == per_write * writes
            and len(sent) - complete > per_write
            and self.transcript.timed_out
        ):
            return Diagnosis(
                "one-per-write",
                f"{facts}: {per_write} frames came back per write ({len(sent)} frames in "
                f"{count(writes, 'write')}): the server seems to answer at most {per_write} "
                "frames of each read and drop the rest",
            )
        if 0 < complete == writes < len(sent):
            return Diagnosis(
                "one-per-write",
                f"{facts}: one frame came back per write ({len(sent)} frames in {writes}): "
                "the server seems to answer each read with one message and drop the rest",
            )
        return Diagnosis(
            "lost",
            f"{facts}: the echoes of {count(len(sent) - complete, 'frame')} never came back"
            f"{self.header_hint(complete)}",
        )

    def header_hint(self, complete: int) -> str:
        """Length framing: that the first frame not echoed is the first whose header
        holds a byte >= 0x80, if it is (a server that reads the length as signed)."""
        if self.framing.kind not in ("length", "varint") or complete >= len(self.sent):
            return ""
        headers = [self.framing.encode(frame)[: -len(frame) or None] for frame in self.sent]
        if max(headers[complete]) < 0x80 or any(max(h) >= 0x80 for h in headers[:complete]):
            return ""
        return (
            f" (frame {complete + 1}, the first not echoed, is the first whose length "
            f"header holds a byte of 0x80 or more, {show(headers[complete])}: the server "
            "may read the length as signed, or a varint as one byte)"
        )

    def still_arriving(self, complete: int) -> Diagnosis | None:
        """A prefix, cut by the time limit while echoes were still coming in order."""
        transcript = self.transcript
        if not transcript.timed_out or len(transcript.arrivals) < 2:
            return None
        first, _ = transcript.arrivals[0]
        last, _ = transcript.arrivals[-1]
        quiet = transcript.elapsed - last
        raw = self.framing.kind == "raw"
        done = len(self.received) if raw else complete
        unit = "bytes" if raw else "frames"
        if done < 2 or last <= 0:
            return None
        rate = done / last
        # Still arriving: the last echo came less than two average gaps (or a tenth
        # of the time) before the limit, not long before it.
        if quiet > max(2 * last / done, 0.1 * transcript.elapsed):
            return None
        left = (len(self.expected) - len(self.received)) if raw else len(self.sent) - complete
        return Diagnosis(
            "slow",
            f"got {done} of {len(self.expected) if raw else len(self.sent)} {unit} in "
            f"{transcript.elapsed:.3g}s, in order, and they were still arriving when the time "
            f"limit ran out: {rate:.3g} {unit}/s, the last {quiet:.2g}s before the limit "
            f"(the first after {first:.2g}s): the server is slow, not lossy; the "
            f"other {left} need about {left / rate:.3g}s more at that rate: give it "
            "that much with --timeout",
        )

    def frames(self, got: list[bytes], rest: bytes) -> Diagnosis | None:
        sent = self.sent
        tail = f" and {len(rest)} bytes of a frame not finished" if rest else ""
        facts = f"sent {count(len(sent), 'frame')}, got {len(got)}{tail}{self.ended}"
        for check in (
            self.reordered,
            self.skipped_empty,
            self.missing,
            self.extra_frames,
            self.read_cut,
            self.truncated,
            self.fragmented,
            self.dropped,
            self.partial_tail,
            self.corrupted,
            self.pieces,
            self.differs,
        ):
            found = check(got, facts)
            if found is not None:
                return found
        return None

    def reordered(self, got: list[bytes], facts: str) -> Diagnosis | None:
        if Counter(got) - Counter(self.sent) or _is_subsequence(got, self.sent):
            return None  # something that was never sent, or only missing frames
        where: dict[bytes, deque[int]] = defaultdict(deque)
        for index, frame in enumerate(self.sent):
            where[frame].append(index)
        order = [where[frame].popleft() for frame in got]
        moved = [n for n, index in enumerate(order) if index != n]
        first = moved[0]
        missing = len(self.sent) - len(got)
        lost = f", and {missing} never came back" if missing else ""
        return Diagnosis(
            "reordered",
            f"{facts}: every frame that came back is whole, but {len(moved)} of them came "
            f"back out of order{lost}: frame {order[first] + 1} came back in place "
            f"{first + 1}, where frame {first + 1} belonged (the order they came back in"
            f"{f', from place {first + 1}' if first else ''}: "
            f"{numbers([index + 1 for index in order[first:]], 12)}): the server seems to answer "
            "pipelined frames concurrently (a worker pool, a task per frame) without "
            "putting the answers back in order",
        )

    def skipped_empty(self, got: list[bytes], facts: str) -> Diagnosis | None:
        empty = [n + 1 for n, frame in enumerate(self.sent) if not frame]
        rest = [frame for frame in self.sent if frame]
        if not empty or got != rest[: len(got)] or not got:
            return None
        what = "empty lines" if self.framing.kind == "line" else "empty frames"
        missing = len(rest) - len(got)
        also = f"; {missing} more were still owed" if missing else ""
        return Diagnosis(
            "skipped-empty",
            f"{facts}: what came back is exactly what was sent minus the "
            f"{count(len(empty), what[:-1])} ({which(empty)}){also}: the server skips "
            f"{what} instead of echoing them",
        )

    def _first_difference(self, got: list[bytes]) -> int:
        return next(
            (n for n, (want, have) in enumerate(zip(self.sent, got, strict=False)) if want != have),
            min(len(self.sent), len(got)),
        )

    def read_cut(self, got: list[bytes], facts: str) -> Diagnosis | None:
        """The payload came back in order, cut into frames where the writes were cut."""
        if not self.write_ends or not b"".join(self.sent).startswith(b"".join(got)):
            return None
        sent_ends, got_ends = set(), set()
        position = 0
        for frame in self.sent:
            position += len(frame)
            sent_ends.add(position)
        position = 0
        for frame in got:
            position += len(frame)
            got_ends.add(position)
        extra = got_ends - sent_ends
        writes = _payload_offsets(self.framing, self.sent, self.write_ends)
        if not extra or not extra <= writes:
            return None
        index = self._first_difference(got)
        if index >= min(len(got), len(self.sent)):
            return None
        return Diagnosis(
            "read-cut",
            f"{facts}: the bytes came back in order, but cut into frames where the writes "
            f"were cut (frame {index + 1}, {show(self.sent[index])}, came back as "
            f"{show(got[index])} and what followed): the server seems to take each read "
            "for one message",
        )

    def truncated(self, got: list[bytes], facts: str) -> Diagnosis | None:
        index = self._first_difference(got)
        if index >= min(len(got), len(self.sent)):
            return None
        want, have = self.sent[index], got[index]
        size = len(have)
        if not size or size >= len(want) or not want.startswith(have):
            return None
        longer = [n + 1 for n, frame in enumerate(self.sent) if len(frame) > size]
        others = "; the others came back whole" if len(longer) < len(self.sent) else ""
        if got == [frame[:size] for frame in self.sent][: len(got)]:
            return Diagnosis(
                "truncated",
                f"{facts}: frames longer than {size} bytes came back cut at {size} bytes, "
                f"the rest of them lost ({which(longer)}{others}): the server seems to "
                f"read frames into a {size}-byte buffer",
            )
        pieces = [piece for frame in self.sent for piece in _chunks(frame, size)]
        if got == pieces[: len(got)]:
            return Diagnosis(
                "chopped",
                f"{facts}: frames longer than {size} bytes came back cut at every {size} "
                f"bytes, each piece as a frame of its own ({which(longer)}{others}): the "
                f"server seems to read frames into a {size}-byte buffer and answer each fill",
            )
        return None

    def fragmented(self, got: list[bytes], facts: str) -> Diagnosis | None:
        joined = b"".join(got)
        if not joined or not b"".join(self.sent).startswith(joined):
            return None
        index = self._first_difference(got)
        if index >= min(len(got), len(self.sent)):
            return None
        return Diagnosis(
            "fragmented",
            f"{facts}: the bytes came back in order, but cut into other frames (frame "
            f"{index + 1} was {show(self.sent[index])}, came back as {show(got[index])}): "
            "the server does not keep frame boundaries",
        )

    def dropped(self, got: list[bytes], facts: str) -> Diagnosis | None:
        if len(got) >= len(self.sent) or not _is_subsequence(got, self.sent):
            return None
        kept = iter(got)
        pending = next(kept, None)
        missing = []
        for n, frame in enumerate(self.sent):
            if frame == pending:
                pending = next(kept, None)
            else:
                missing.append(n + 1)
        if len(missing) <= max(1, len(self.sent) // 10):
            why = "the server loses a frame now and then"
        elif (run := _longest_run(len(self.sent), missing)) > 1:
            why = (
                "the server seems to answer only the first frames of each read and drop the "
                f"rest (they came back in runs of up to {run} frames)"
            )
        else:
            why = "the server seems to answer each read with one message and drop the rest"
        return Diagnosis(
            "dropped",
            f"{facts}: {which(missing)} never came back, the others came back whole "
            f"and in order: {why}",
        )

    def extra_frames(self, got: list[bytes], facts: str) -> Diagnosis | None:
        """The frames sent came back in order, with frames never sent among them (the
        same ones each time, or a couple): as far as the client read."""
        wanted = iter(self.sent)
        pending = next(wanted, None)
        extra = []
        matched = 0
        for n, frame in enumerate(got):
            if frame == pending:
                matched += 1
                pending = next(wanted, None)
            else:
                extra.append(n)
        kinds = {got[n] for n in extra}
        if (
            not extra
            or not matched
            or (len(kinds) > 1 and len(extra) > 2)
            or kinds & set(self.sent)  # frames that were sent, out of place: not extra
        ):
            return None
        what = f"{show(next(iter(kinds)))} each time" if len(kinds) == 1 else "of several kinds"
        far = "every frame sent" if matched == len(self.sent) else f"the first {matched} frames"
        return Diagnosis(
            "extra",
            f"{facts}: {far} came back, in order, with {count(len(extra), 'frame')} that "
            f"{_were(len(extra))} never sent among them ({what}): the server adds to its echoes",
        )

    def _pairs(self, got: list[bytes]) -> tuple[list[tuple[bytes, bytes]], list[int]]:
        """(sent, got) frame by frame, and the places where the two differ."""
        pairs = list(zip(self.sent, got, strict=False))
        return pairs, [n for n, (want, have) in enumerate(pairs) if want != have]

    def partial_tail(self, got: list[bytes], facts: str) -> Diagnosis | None:
        """Frames that came back, each in its place, as a piece of itself."""
        pairs, different = self._pairs(got)
        if not different or not all(
            len(pairs[n][1]) < len(pairs[n][0])
            and (pairs[n][0].startswith(pairs[n][1]) or pairs[n][0].endswith(pairs[n][1]))
            for n in different
        ):
            return None
        index = different[0]
        want, have = pairs[index]
        also = f" ({which([n + 1 for n in different])} alike)" if len(different) > 1 else ""
        return Diagnosis(
            "partial-tail",
            f"{facts}: frame {index + 1} came back as {show(have)}, a piece of the "
            f"{show(want)} sent{also}: the server seems to drop the partial tail of a read, "
            "or answer a partial read as a whole message",
        )

    def corrupted(self, got: list[bytes], facts: str) -> Diagnosis | None:
        """As many frames, in place, of the right sizes, and a few of them different."""
        pairs, different = self._pairs(got)
        intact = len(pairs) - len(different)
        if (
            not different
            or not intact
            or len(different) > max(1, len(pairs) // 10)
            or any(len(pairs[n][0]) != len(pairs[n][1]) for n in different)
            or (len(got) < len(self.sent) and not self.transcript.timed_out)
        ):
            return None
        others = f"; {which([n + 1 for n in different])} differ" if len(different) > 1 else ""
        return Diagnosis(
            "corrupted",
            f"{facts}: {self._difference(got, different[0])}{others}; the other "
            f"{intact} came back intact: the server corrupts a frame now and then (a buffer "
            "reused before it was sent, state shared between connections)",
        )

    def pieces(self, got: list[bytes], facts: str) -> Diagnosis | None:
        """Every frame that came back is a piece of the payloads, in order, with gaps."""
        joined = b"".join(self.sent)
        position = skipped = 0
        for frame in got:
            at = joined.find(frame, position)
            if at < 0:
                return None
            skipped += at - position
            position = at + len(frame)
        if not skipped:
            return None
        return Diagnosis(
            "pieces",
            f"{facts}: each frame that came back is a piece of what was sent, in order, but "
            f"cut at other places, and {skipped} bytes in between never came back: the "
            "server seems to take each read for one message and answer only its first frame",
        )

    def _difference(self, got: list[bytes], index: int) -> str:
        want, have = self.sent[index], got[index]
        at = next(
            (i for i, (a, b) in enumerate(zip(want, have, strict=False)) if a != b),
            min(len(want), len(have)),
        )
        return (
            f"frame {index + 1} came back different from its byte {at} on (sent {len(want)} "
            f"bytes, got {len(have)}): expected {show(want[at:], 24)}, got {show(have[at:], 24)}"
        )

    def differs(self, got: list[bytes], facts: str) -> Diagnosis | None:
        index = self._first_difference(got)
        if index >= min(len(got), len(self.sent)):
            return None
        return Diagnosis("differs", f"{facts}: {self._difference(got, index)}")

    def bytewise(self) -> Diagnosis:
        for offset, (want, have) in enumerate(zip(self.expected, self.received, strict=False)):
            if want != have:
                whole = complete_frames(self.framing, self.sent, offset)
                first = f"the first {count(whole, 'frame')} came back whole, then " if whole else ""
                return Diagnosis(
                    "differs",
                    f"{first}the echo differs from byte {offset} on: expected "
                    f"{show(self.expected[offset:])}, got {show(self.received[offset:])}"
                    f"{self.ended}",
                )
        return Diagnosis(
            "differs", f"got {len(self.received)} bytes instead of {len(self.expected)}{self.ended}"
        )


def diagnose(
    framing: Framing,
    frames: Sequence[bytes],
    transcript: Transcript,
    write_ends: Sequence[int] = (),
    others: Mapping[str, bytes] | None = None,
) -> Diagnosis | None:
    """Compare what came back with what was sent; ``None`` if it is exactly right.

    ``write_ends`` are the offsets in the sent stream where one write ended and the
    next began, when they are known: a server that takes each read for a message
    cuts frames there. ``others`` are the wire bytes that the other connections of
    the same scenario send, by name (``"connection 3 of 4"``): bytes of theirs that
    come back on this one are named as cross-talk.
    """
    if transcript.received == wire(framing, frames) and not transcript.ended:
        return None
    return _Judge(framing, frames, transcript, set(write_ends), others or {}).diagnose()
