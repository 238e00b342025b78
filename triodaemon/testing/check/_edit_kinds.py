"""Naming the edits a server made to an echo: sans-I/O.

Strategy: :func:`~._edits.align` turns what came back into a short edit script of
what was sent; each check here names one pattern that *every* edit of the script
follows (a stretch repeated right after itself, a few bytes gone, bytes >= 0x80
re-encoded as text, whitespace gone at a line's end, ``\\r`` taken for a line end,
bytes another connection sent), or one the framing shows directly (a length header
off by a constant, a fixed-size frame padded after a short read). A pattern that
only some edits follow is left to the frame-level checks of :mod:`._diagnosis`.
A trailing deletion where what came back ends is the part not read yet: not an edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs

from ..._errors import count
from ..._framing import Framing
from ._edits import ANCHOR, VERIFY, Edit, Layout, align, common_prefix

#: A named failure: (kind, sentence).
Named = tuple[str, str]

#: What ``str.strip`` and ``bytes.strip`` take for whitespace, minus the line end.
_BLANKS = frozenset(b" \t\r\x0b\x0c")
#: Places of an inserted stretch looked up in another connection's bytes, at most
#: (each look-up scans them): the runs found are followed to their end.
_PROBES = 16
#: :meth:`EditJudge.remade` compares at most this many bytes (each transform of them
#: costs a copy).
_REMADE = 1 << 20
#: What a server that drops the ``\r`` of ``\r\n`` (only) does.
_CRLF_WHY = (
    "the server takes \\r\\n for a line end too and answers \\n (Go's bufio.ScanLines "
    "does), or strips a \\r at a line's end"
)
#: A run of another connection's bytes counts as theirs from this length on.
_RUN = 12
#: Deletions at most this long (each) count as bytes missing, not frames lost.
_FEW = 16

#: How servers that treat bytes as text re-encode them: (name, transform, what it does).
_TEXT: tuple[tuple[Callable[[bytes], bytes], str, str], ...] = (
    (
        lambda data: data.decode("utf-8", "replace").encode(),
        "as U+FFFD (EF BF BD)",
        "it decodes them as UTF-8, replacing what does not decode",
    ),
    (
        lambda data: data.decode("latin-1").encode(),
        "as their UTF-8 encoding",
        "it decodes them as Latin-1 and writes them as UTF-8",
    ),
    (
        lambda data: data.decode("utf-8", "ignore").encode(),
        "as nothing",
        "it decodes them as UTF-8 and drops what does not decode",
    ),
    (
        lambda data: data.decode("ascii", "replace").encode("ascii", "replace"),
        "as '?'",
        "it writes them as ASCII, with '?' for the rest",
    ),
)


def _show(data: bytes, limit: int = 24) -> str:
    return repr(data) if len(data) <= limit else f"{data[:limit]!r}..."


def _alike(number: int) -> str:
    return f" ({count(number, 'other place')} alike)" if number else ""


class EditJudge:
    """The edit script of one echo, and the kinds it can be named with."""

    def __init__(
        self,
        framing: Framing,
        frames: Sequence[bytes],
        sent: bytes,
        got: bytes,
        write_ends: set[int],
        others: Mapping[str, bytes],
    ) -> None:
        self.framing = framing
        self.frames = frames
        self.sent = sent
        self.got = got
        self.write_ends = write_ends
        self.others = others
        self.layout = Layout.of(framing, frames)
        self._script: tuple[list[Edit], bool] | None = None

    @property
    def edits(self) -> list[Edit]:
        """The edits (at most :data:`~._edits.MAX_EDITS`), without the part not read."""
        return self.script[0]

    @property
    def complete(self) -> bool:
        return self.script[1]

    @property
    def script(self) -> tuple[list[Edit], bool]:
        if self._script is None:
            edits, complete = align(self.sent, self.got)
            last = edits[-1] if edits else None
            if (
                complete
                and last
                and not last.inserted
                and len(self.got) - last.got_at < VERIFY
                and self.sent.startswith(self.got[last.got_at :], last.at)
            ):
                # What came back stops there, or what follows fits as well without
                # the deletion: the rest was not read (yet), not an edit.
                edits = edits[:-1]
            elif complete and len(edits) > 1 and edits[-1].at == len(self.sent):
                edits = edits[:-1]  # read past the echo's size: what the edits pushed on
            self._script = edits, complete
        return self._script

    def _more(self, seen: int) -> str:
        return "" if self.complete else f" (the first {seen} differences; there are more)"

    def named(self) -> Named | None:
        """The most specific kind that every edit follows, if there is one, but
        :meth:`missing`, which comes after the frame-level checks of whole frames
        skipped (a few bytes gone may be an empty frame)."""
        checks: tuple[Callable[[], Named | None], ...] = (
            # Each edit alike (the most precise sentences), else the whole echo alike
            # (edits too close together to tell apart), before another connection's
            # bytes are looked for in it.
            *((self.text, self.line_ends, self.stripped) if self.edits else ()),
            self.remade,
            self.cross_talk,
            self.header,
            self.padded,
            *((self.duplicated,) if self.edits else ()),
        )
        for check in checks:
            found = check()
            if found is not None:
                return found
        return None

    def remade(self) -> Named | None:
        """What came back is what was sent made over as a whole, as a server that
        handles lines or text does (as far as it was read, and compared over the
        first :data:`_REMADE` bytes at most): for when edits lie too close together
        for the script to tell them apart."""
        if len(self.got) < VERIFY:
            return None
        cut = len(self.sent)
        if cut > _REMADE:  # (at a frame's start if one is near: the transforms are local)
            cut = max((at for at in self.layout.starts if at <= _REMADE), default=0) or _REMADE
        sent = self.sent[:cut]
        for kind, transform, did, why in self._remakes():
            made = transform(sent)
            if made == sent:
                continue
            if cut < len(self.sent):
                made = made[: len(made) - 8]  # (a character the cut split)
            size = min(len(made), len(self.got))
            if made[:size] != self.got[:size]:
                continue
            wires = [  # (the frames on the wire: a transform may take in the delimiter)
                self.sent[start:end]
                for start, end in zip(self.layout.starts, self.layout.starts[1:], strict=False)
                if end <= cut
            ]
            changed = [n for n, data in enumerate(wires) if transform(data) != data]
            if not changed:
                continue
            first = wires[changed[0]]
            at = common_prefix(first, 0, transform(first), 0, len(first))
            alike = f" ({count(len(changed) - 1, 'other frame')} alike)" if changed[1:] else ""
            return (
                kind,
                f"what came back is what was sent, {did}: frame {changed[0] + 1}'s "
                f"{_show(first[at : at + 12])} from its byte {at} (on the wire) came back as "
                f"{_show(transform(first)[at : at + 12])}{alike}: {why}",
            )
        return None

    def _remakes(self) -> list[tuple[str, Callable[[bytes], bytes], str, str]]:
        """(kind, transform, what it did, what the server seems to do) for :meth:`remade`."""
        out = [
            (
                "text",
                transform,
                f"except that the bytes that are not ASCII came back {became}",
                f"the server treats the bytes as text ({how})",
            )
            for transform, became, how in _TEXT
        ]
        if self.framing.kind == "line":  # (the transforms of lines are for "\n")
            out += [
                (
                    "line-ends",
                    lambda data: data.replace(b"\r\n", b"\n"),
                    "except that the \\r of each \\r\\n never came back",
                    _CRLF_WHY,
                ),
                (
                    "line-ends",
                    _universal,
                    "except that each \\r came back as a line end",
                    "the server takes \\r for a line end (universal newlines)",
                ),
                (
                    "stripped",
                    _lines_stripped(bytes.rstrip),
                    "except that the whitespace at the end of each line never came back",
                    "the server strips whitespace from each line (rstrip)",
                ),
                (
                    "stripped",
                    _lines_stripped(bytes.strip),
                    "except that the whitespace at both ends of each line never came back",
                    "the server strips whitespace from each line (strip)",
                ),
            ]
        return out

    def cross_talk(self) -> Named | None:
        """Bytes that another connection of the scenario sent came back here."""
        if not self.others:
            return None
        found: dict[str, int] = {}
        first: dict[str, int] = {}
        for edit in self.edits:
            for name, data in self.others.items():
                taken = _taken_from(edit.inserted, data, self.sent)
                if taken:
                    found[name] = found.get(name, 0) + taken
                    first.setdefault(name, edit.at)
        if not found:
            return None
        name = max(found, key=lambda key: (found[key], -first[key]))
        also = [other for other in found if other != name]
        more = f"; bytes of {', '.join(also)} too" if also else ""
        return (
            "cross-talk",
            f"{count(found[name], 'byte')} that {name} sent came back on this connection, "
            f"the first at byte {first[name]} of this connection's echo "
            f"({self.layout.part(first[name])})"
            f"{more}{self._more(len(self.edits))}: the server mixes up its connections "
            "(a buffer or other state shared between them)",
        )

    def header(self) -> Named | None:
        """Length framing: every payload intact, every header off by one constant."""
        framing = self.framing
        if framing.kind != "length" or not self.frames:
            return None
        size, position = framing.length_bytes, 0
        offsets: set[int] = set()
        first: tuple[int, int] | None = None
        intact = 0
        for frame in self.frames:
            if position + size + len(frame) > len(self.got):
                break
            said = int.from_bytes(self.got[position : position + size], framing.byte_order)
            want = len(frame) + (size if framing.length_includes_header else 0)
            if self.got[position + size : position + size + len(frame)] != frame:
                return None
            offsets.add(said - want)
            intact += len(frame)
            first = first or (want, said)
            position += size + len(frame)
        if first is None or len(offsets) != 1 or 0 in offsets or intact < ANCHOR:
            return None
        (off,) = offsets
        if off == size and not framing.length_includes_header:
            why = "the server seems to count the header itself"
        elif off == -size and framing.length_includes_header:
            why = "the server seems to leave the header itself out of the count"
        else:
            why = "the server writes every length off by the same amount"
        checked = self._frames_within(position)
        more = "more" if off > 0 else "less"
        return (
            "header",
            f"every length header came back {abs(off)} {more} than its payload "
            f"({checked} of {count(len(self.frames), 'frame')} read; frame 1's header said "
            f"{first[1]}, for {first[0]}), every payload intact: {why}",
        )

    def _frame_edge(self, edit: Edit) -> bool:
        return _edge_of(self.layout, self.framing, edit)

    def _frames_within(self, size: int) -> int:
        return sum(1 for start in self.layout.starts[1:] if start <= size)

    def padded(self) -> Named | None:
        """Fixed-size framing: a frame came back as its first bytes, then padding."""
        size = self.framing.frame_size
        if self.framing.kind != "fixed" or not size:
            return None
        for index in range(len(self.frames)):
            start = index * size
            have = self.got[start : start + size]
            want = self.sent[start : start + size]
            if len(have) < size:
                return None
            if have == want:
                continue
            kept = common_prefix(have, 0, want, 0, size)
            pad = have[kept:]
            zeros = pad == bytes(len(pad))
            follows = self.got[start + size :].startswith(want[kept : kept + 4])
            if not kept or not (zeros or (follows and len(pad.strip(pad[:1])) == 0)):
                return None
            what = (
                count(len(pad), "zero byte") if zeros else f"{len(pad)} bytes of {_show(pad[:1])}"
            )
            write = ", where a write of the client ended" if start + kept in self.write_ends else ""
            rest = ", and the rest of it came after, as a frame of its own" if follows else ""
            return (
                "padded",
                f"frame {index + 1} came back as its first "
                f"{'byte' if kept == 1 else f'{kept} bytes'}{write}, "
                f"then {what}{rest}: the server pads a short read instead of waiting for the "
                "rest of the frame",
            )
        return None

    def text(self) -> Named | None:
        """Bytes >= 0x80 (or not valid UTF-8) came back re-encoded as text."""
        edits = self.edits
        if not edits:
            return None
        for transform, became, how in _TEXT:
            if all(
                _explained(self.sent, self.got, edit, transform, high=True) for edit in edits
            ) and all(transform(part[3:-3]) == part[3:-3] for part in self._untouched()):
                edit = edits[0]
                return (
                    "text",
                    f"bytes that are not ASCII came back {became}: {self.layout.part(edit.at)}, "
                    f"byte {edit.at} of the stream, {_show(edit.removed)} came back as "
                    f"{_show(edit.inserted)}{_alike(len(edits) - 1)}{self._more(len(edits))}: "
                    f"the server treats the bytes as text ({how})",
                )
        return None

    def _untouched(self) -> list[bytes]:
        """The sent bytes that came back as they were, between the edits (as far as
        they were aligned and read); where an edit cut a character, its ends may
        belong to the edits around."""
        parts, position, got_position = [], 0, 0
        for edit in self.edits:
            parts.append(self.sent[position : edit.at])
            position = edit.at + len(edit.removed)
            got_position = edit.got_at + len(edit.inserted)
        if self.complete:
            parts.append(self.sent[position : position + len(self.got) - got_position])
        return parts

    def _lines(self) -> bool:
        return self.framing.kind in ("line", "delimiter") and self.framing.delimiter.endswith(b"\n")

    def line_ends(self) -> Named | None:
        r"""A lone ``\r`` came back as ``\n``, or ``\r\n`` as ``\n``."""
        if not self._lines():
            return None
        if not all(
            b"\r" in e.removed and _explained(self.sent, self.got, e, _universal)
            for e in self.edits
        ):
            return None
        cut = [e for e in self.edits if e.inserted]
        first = (cut or self.edits)[0]
        if cut:
            what = f"a lone \\r {self.layout.part(first.at)} came back as \\n (the line cut there)"
            why = "the server takes \\r for a line end (universal newlines)"
        else:
            what = f"the \\r\\n ending {self.layout.part(first.at)[3:]} came back as \\n"
            why = _CRLF_WHY
        return (
            "line-ends",
            f"{what}, byte {first.at} of the stream{_alike(len(self.edits) - 1)}"
            f"{self._more(len(self.edits))}; the rest came back intact: {why}",
        )

    def stripped(self) -> Named | None:
        """Whitespace at a line's end (or start) never came back."""
        if not self._lines():
            return None
        delimiter = self.framing.delimiter
        trailing = leading = 0
        for edit in self.edits:
            if edit.inserted or not set(edit.removed) <= _BLANKS:
                return None
            if self.sent.startswith(delimiter, edit.at + len(edit.removed)):
                trailing += 1
            elif edit.at in self.layout.starts:
                leading += 1
            else:
                return None
        if all(
            e.at in self.write_ends or e.at + len(e.removed) in self.write_ends for e in self.edits
        ):
            return None  # cut where the reads were cut: the frame-level checks say more
        edit = self.edits[0]
        where = "end" if trailing else "start"
        how = "strip" if trailing and leading else "rstrip" if trailing else "lstrip"
        return (
            "stripped",
            f"{_show(edit.removed)} at the {where} of frame {self.layout.frame(edit.at) + 1} "
            f"never came back, the rest of it did{_alike(len(self.edits) - 1)}"
            f"{self._more(len(self.edits))}: the server strips whitespace from each line "
            f"({how})",
        )

    def duplicated(self) -> Named | None:
        """Stretches that came back twice, the second time right after the first."""
        edits = self.edits
        repeats = [_repeat(self.sent, e) for e in edits]
        if not all(repeats):
            return None
        at, size = repeats[0] or (0, 0)
        start, edit = at - size, attrs.evolve(edits[0], at=at)
        write = " (from where a write of the client began)" if start in self.write_ends else ""
        return (
            "duplicated",
            f"bytes {start}-{edit.at - 1} of the stream ({count(size, 'byte')}, "
            f"{self.layout.frames(start, edit.at)}) came back twice, the second time right "
            f"after the first{write}{_alike(len(edits) - 1)}{self._more(len(edits))}; the rest "
            "came back intact: the server seems to write data again after a partial write (a "
            "retry that does not skip what was already sent)",
        )

    def missing(self) -> Named | None:
        """A few bytes gone here and there, not whole frames, the rest intact."""
        edits = self.edits
        if not all(
            len(e.removed) - len(e.inserted) in range(1, _FEW + 1)
            and _within(e.inserted, e.removed)
            and not any(
                self.layout.spans_frames(at, at + len(e.removed))
                for at in _slides(self.sent, e.at, len(e.removed))
            )
            for e in edits
        ):
            return None
        if all(e.at in self.write_ends or e.at + len(e.removed) in self.write_ends for e in edits):
            return None  # cut where the reads were cut: the frame-level checks say more
        if all(len(e.removed) - len(e.inserted) > 1 and self._frame_edge(e) for e in edits):
            return None  # the start or end of frames gone: pieces of frames, said as such
        edit = edits[0]
        gone = sum(len(e.removed) - len(e.inserted) for e in edits)
        places = ", ".join(str(e.at) for e in edits[:8]) + (" ..." if len(edits) > 8 else "")
        least = "at least " if not self.complete else ""
        return (
            "missing",
            f"{least}{count(gone, 'byte')} never came back, in "
            f"{count(len(edits), 'place')} (from byte {places} of the stream); the first, "
            f"{self.layout.part(edit.at)}: {_show(edit.removed)} came back as "
            f"{_show(edit.inserted)}; the rest came back intact, "
            "in order: the server loses bytes (not frames) now and then",
        )


def _edge_of(layout: Layout, framing: Framing, edit: Edit) -> bool:
    """Whether ``edit`` takes bytes from the start or the end of one frame's payload."""
    start, end = edit.at, edit.at + len(edit.removed)
    index = layout.frame(start)
    if layout.frame(max(start, end - 1)) != index:
        return False
    first = layout.starts[index] + layout.headers[index]
    last = layout.starts[index + 1]
    if framing.kind in ("line", "delimiter"):
        last -= len(framing.delimiter)
    return start == first or end == last


def _repeat(sent: bytes, edit: Edit) -> tuple[int, int] | None:
    """(where, how many bytes) if ``edit`` is the stretch of ``sent`` just before
    some place, inserted there again (2 bytes or more); the alignment may have taken
    a few bytes on either side into the edit."""
    removed, inserted = edit.removed, edit.inserted
    if len(removed) > ANCHOR or len(inserted) - len(removed) < 2:
        return None
    if removed and sent[max(0, edit.at - len(inserted)) : edit.at] == inserted:
        return edit.at, len(inserted)  # (and what it pushed on was not read yet)
    if inserted.endswith(removed):
        place, core = edit.at, inserted[: len(inserted) - len(removed)]
    elif inserted.startswith(removed):
        place, core = edit.at + len(removed), inserted[len(removed) :]
    else:
        return None
    if sent[max(0, place - len(core)) : place] == core:
        return place, len(core)
    if sent[place : place + len(core)] == core:  # (the alignment took the first copy)
        return place + len(core), len(core)
    return None


def _within(part: bytes, whole: bytes) -> bool:
    """Whether ``part`` is ``whole`` with some of its bytes left out."""
    rest = iter(whole)
    return all(byte in rest for byte in part)


def _slides(sent: bytes, at: int, size: int) -> list[int]:
    """Where a deletion of ``size`` bytes at ``at`` could as well have been (the same
    bytes left): the alignment puts it as late as it can."""
    places = [at]
    while at > 0 and len(places) <= 2 * size and sent[at - 1] == sent[at - 1 + size]:
        at -= 1
        places.append(at)
    return places


def _taken_from(inserted: bytes, other: bytes, sent: bytes) -> int:
    """How many bytes of ``inserted`` are runs of ``other`` (at least an anchor long)
    that ``sent`` does not hold."""
    taken = position = misses = 0
    while position + ANCHOR <= len(inserted) and misses < _PROBES:
        probe = inserted[position : position + ANCHOR]
        at = other.find(probe)
        if at < 0 or probe in sent:
            position += ANCHOR
            misses += 1
            continue
        run = common_prefix(
            inserted, position, other, at, min(len(inserted) - position, len(other) - at)
        )
        if run >= _RUN:  # (short runs may be filler both streams hold)
            taken += run
        position += max(run, 1)
    return taken


def _lines_stripped(strip: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    """What a server that ``strip``s each line makes of a stream of lines."""
    return lambda data: b"\n".join(strip(line) for line in data.split(b"\n"))


def _universal(data: bytes) -> bytes:
    """What a reader with universal newlines makes of ``data``."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _explained(
    sent: bytes, got: bytes, edit: Edit, transform: Callable[[bytes], bytes], *, high: bool = False
) -> bool:
    """Whether ``edit`` is what ``transform`` makes of the bytes sent there (with up
    to 3 bytes of what is common on each side, where the alignment cut a character);
    ``high``: only if bytes >= 0x80 are involved."""
    if high and not any(byte >= 0x80 for byte in edit.removed + edit.inserted):
        return False
    for left in range(4):
        for right in range(4):
            if edit.at < left or edit.got_at < left:
                continue
            before = sent[edit.at - left : edit.at + len(edit.removed) + right]
            after = got[edit.got_at - left : edit.got_at + len(edit.inserted) + right]
            made = transform(before)
            if made == after or (
                edit.got_at + len(edit.inserted) == len(got) and made.startswith(after)
            ):
                return True  # (or what was read of it, where the reading stopped)
    return False
