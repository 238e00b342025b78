"""An echo as a short edit script of what was sent: sans-I/O, near-linear.

Strategy: the common prefix and suffix are compared in growing blocks (C speed, no
byte-by-byte loop); in between, after each difference the alignment resynchronises on
an anchor: a few bytes of one stream, a small distance ahead, found in the other
within a window (``bytes.find``), verified over the bytes that follow, the nearest
pair winning. Payloads are tagged with pieces that differ from every other, so an
anchor is almost always unique. At most :data:`MAX_EDITS` edits are made, and the
bytes the searches may scan are budgeted, so a 64 MiB stream costs a few block
comparisons, never a quadratic diff.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import attrs

from ..._framing import Framing

#: At most this many edits are worked out: enough to see a pattern, bounded in cost.
MAX_EDITS = 64
#: Bytes of one stream searched for in the other to resynchronise after a difference.
ANCHOR = 8
#: Bytes that must agree after an anchor for it to count (or one stream ends): two
#: edits closer than this are worked out as one.
VERIFY = 16
#: Bytes the streams must agree for after an anchor for it to be preferred to nearer
#: ones that agree only for :data:`VERIFY` bytes.
SOLID = 256
#: Distances ahead tried for anchors: near ones within a small window first, a few far
#: ones over the whole rest of the stream only if that fails.
_NEAR = (*range(33), 40, 48, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096)
_FAR = (0, 1, 4, 16, 256, 4096)
_WINDOW = 16384
#: Bytes the anchor searches of one alignment may scan in all (some 10 ms).
_SCAN_BUDGET = 32 * 1024 * 1024


@attrs.frozen
class Edit:
    """One stretch where what came back differs from what was sent."""

    at: int
    """Offset in the sent stream."""
    removed: bytes
    """The sent bytes that did not come back there (``b""``: an insertion)."""
    got_at: int
    """Offset in what came back."""
    inserted: bytes
    """What came back instead (``b""``: a deletion)."""


def _agreeing(same: Callable[[int, int], bool], limit: int) -> int:
    """How many leading units agree (at most ``limit``), where ``same(done, size)``
    says whether the ``size`` after the first ``done`` do: in growing blocks, then
    bisecting the block that differs (C-speed comparisons, no byte-by-byte loop)."""
    done, block = 0, 64
    while done < limit:
        size = min(block, limit - done)
        if not same(done, size):
            low, high = 0, size
            while high - low > 1:
                middle = (low + high) // 2
                if same(done, middle):
                    low = middle
                else:
                    high = middle
            return done + low
        done += size
        block = min(block * 2, 1 << 20)
    return done


def common_prefix(a: bytes, i: int, b: bytes, j: int, limit: int) -> int:
    """How many bytes ``a[i:]`` and ``b[j:]`` share from their start (at most ``limit``)."""
    return _agreeing(
        lambda done, size: a[i + done : i + done + size] == b[j + done : j + done + size], limit
    )


def common_suffix(a: bytes, b: bytes, limit: int) -> int:
    """How many bytes ``a`` and ``b`` share at their end (at most ``limit``)."""
    return _agreeing(
        lambda done, size: (
            a[len(a) - done - size : len(a) - done] == b[len(b) - done - size : len(b) - done]
        ),
        limit,
    )


class _Aligner:
    def __init__(self, sent: bytes, got: bytes, sent_end: int, got_end: int) -> None:
        self.sent, self.got = sent, got
        self.sent_end, self.got_end = sent_end, got_end
        self.budget = _SCAN_BUDGET

    def _agrees(self, i: int, j: int) -> bool:
        """Whether the streams agree from ``i`` and ``j`` on (for VERIFY bytes, or to
        both ends)."""
        size = min(VERIFY, self.sent_end - i, self.got_end - j)
        if self.sent[i : i + size] != self.got[j : j + size]:
            return False
        if size == VERIFY or (i + size == self.sent_end and j + size == self.got_end):
            return True
        # (up to the end of one of them: another edit may follow, where it ends)
        return size >= ANCHOR and (i + size == self.sent_end or j + size == self.got_end)

    def _find(self, needle: bytes, hay: bytes, start: int, end: int) -> list[int]:
        found: list[int] = []
        at = start
        while len(found) < 4 and self.budget > 0:
            start = at
            at = hay.find(needle, at, end)
            self.budget -= (end if at < 0 else at) - start + len(needle)
            if at < 0:
                break
            found.append(at)
            at += 1
        return found

    def _candidates(
        self, i: int, j: int, distances: Sequence[int], window: int
    ) -> list[tuple[int, int, bool]]:
        """(sent bytes, got bytes) the next edit may take, each with whether the
        streams agree after it for :data:`SOLID` bytes (or to an end): searched
        nearest first, until a solid one is found (data that repeats, like the
        payloads' filler, agrees for a few bytes in many wrong places)."""
        out: list[tuple[int, int, bool]] = []
        for distance in distances:
            if any(solid and taken + given <= distance for taken, given, solid in out):
                break  # nothing further can be nearer
            if i + distance < self.sent_end:  # the sent bytes there, in what came back
                needle = self.sent[i + distance : i + distance + ANCHOR]
                first = j + (0 if distance else 1)
                for at in self._find(needle, self.got, first, min(self.got_end, j + window)):
                    if self._agrees(i + distance, at):
                        out.append((distance, at - j, self._solid(i + distance, at)))
                        if out[-1][2]:
                            break
            if j + distance < self.got_end:  # the bytes that came back, in what was sent
                needle = self.got[j + distance : j + distance + ANCHOR]
                first = i + (0 if distance else 1)
                for at in self._find(needle, self.sent, first, min(self.sent_end, i + window)):
                    if self._agrees(at, j + distance):
                        out.append((at - i, distance, self._solid(at, j + distance)))
                        if out[-1][2]:
                            break
        return out

    def _solid(self, i: int, j: int) -> bool:
        """Whether the streams agree from ``i`` and ``j`` on for :data:`SOLID` bytes,
        or to the end of one of them."""
        limit = min(SOLID, self.sent_end - i, self.got_end - j)
        return common_prefix(self.sent, i, self.got, j, limit) == limit

    def resync(self, i: int, j: int) -> tuple[int, int]:
        """How many bytes of each stream, from ``i`` and ``j``, the next edit takes:
        the nearest place where they agree again for long, else the nearest where
        they agree at all."""
        rest = (self.sent_end - i, self.got_end - j)
        if not rest[0] or not rest[1]:
            return rest
        found = self._candidates(i, j, _NEAR, _WINDOW)
        if not any(solid for _, _, solid in found):
            found += self._candidates(i, j, _FAR, max(rest))
        solid = [(taken, given) for taken, given, firm in found if firm]
        return min(solid or [(taken, given) for taken, given, _ in found], key=sum, default=rest)


def align(sent: bytes, got: bytes, limit: int = MAX_EDITS) -> tuple[list[Edit], bool]:
    """The edits that turn ``sent`` into ``got``, in order; and whether they are all
    of them (``False``: ``limit`` edits were found, or the scan budget ran out, and
    the rest was not aligned)."""
    start = common_prefix(sent, 0, got, 0, min(len(sent), len(got)))
    shared_end = common_suffix(sent, got, min(len(sent), len(got)) - start)
    aligner = _Aligner(sent, got, len(sent) - shared_end, len(got) - shared_end)
    edits: list[Edit] = []
    i = j = start
    while i < aligner.sent_end or j < aligner.got_end:
        if len(edits) == limit or aligner.budget <= 0:
            return edits, False
        taken, given = aligner.resync(i, j)
        if aligner.budget <= 0:
            return edits, False  # (the last resync may not have seen its anchor)
        edits.append(Edit(i, sent[i : i + taken], j, got[j : j + given]))
        i, j = i + taken, j + given
        same = common_prefix(sent, i, got, j, min(aligner.sent_end - i, aligner.got_end - j))
        i, j = i + same, j + same
    return edits, True


@attrs.frozen
class Layout:
    """Where each frame of a sent stream lies: for placing an offset."""

    framing: Framing
    starts: tuple[int, ...]
    """Each frame's first byte in the stream, and the stream's end last."""
    headers: tuple[int, ...]
    """Each frame's header size (length and varint framing; else 0)."""

    @classmethod
    def of(cls, framing: Framing, frames: Sequence[bytes]) -> Layout:
        starts, headers, position = [0], [], 0
        for frame in frames:
            size = len(framing.encode(frame))
            headers.append(size - len(frame) if framing.kind in ("length", "varint") else 0)
            position += size
            starts.append(position)
        return cls(framing, tuple(starts), tuple(headers))

    def frame(self, offset: int) -> int:
        """The 0-based frame that byte ``offset`` of the stream falls in (the last
        frame for the stream's end)."""
        return max(0, min(bisect.bisect_right(self.starts, offset) - 1, len(self.headers) - 1))

    def part(self, offset: int) -> str:
        """``"in the header of frame 3"``, ``"in the delimiter of frame 3"`` or
        ``"in frame 3"`` (1-based) for byte ``offset``."""
        index = self.frame(offset)
        if not self.headers and len(self.starts) == 1:
            return "in the stream"
        inner = offset - self.starts[index]
        end = self.starts[index + 1]
        if inner < self.headers[index]:
            return f"in the length header of frame {index + 1}"
        if self.framing.kind in ("line", "delimiter") and offset >= end - len(
            self.framing.delimiter
        ):
            return f"in the delimiter of frame {index + 1}"
        return f"in frame {index + 1}"

    def frames(self, start: int, end: int) -> str:
        """``"frame 3"`` or ``"frames 3-5"`` for the bytes ``start`` to ``end``."""
        first, last = self.frame(start), self.frame(max(start, end - 1))
        return f"frame {first + 1}" if first == last else f"frames {first + 1}-{last + 1}"

    def spans_frames(self, start: int, end: int) -> bool:
        """Whether ``start`` to ``end`` is one or more whole frames."""
        return start != end and start in self.starts and end in self.starts
