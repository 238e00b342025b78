"""One connection's exchange as data, made smaller while it still fails: sans-I/O.

A :class:`Case` is frames written in pieces (where each write starts, the pause
between writes, a half-close, a reader that waits), which is all any single-connection
scenario of ``check`` does. Because it is data, a failing case can be replayed
(``check --replay``), printed as a Python snippet that needs nothing but the standard
library, and shrunk: :func:`shrink` tries fewer frames, shorter payloads and fewer
writes, the way hypothesis shrinks, keeping each change after which the server still
fails *the same way* (the same :data:`~triodaemon.testing.check.KINDS` kind). Running a
case is the caller's (``check``'s); this module never touches a socket.
"""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from ..._errors import HEX_DIGITS, count, shown
from ..._framing import Framing
from ..._listeners import Address, TcpAddress
from ._diagnosis import show, wire


def _seconds(_: Any, attribute: attrs.Attribute[float], value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"{attribute.name}: expected seconds, a finite number 0 or more, got {shown(value)}"
        )


def _flag(_: Any, attribute: attrs.Attribute[bool], value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name}: expected true or false, got {shown(value)}")


@attrs.frozen
class Case:
    """Frames, and how they are written on one connection.

    Raises:
        ValueError: a pause or read delay that is not a finite number of seconds
            0 or more, a half-close that is not a bool, or not one tuple of cuts
            per frame (the message names the field).
    """

    frames: tuple[bytes, ...]
    """The payloads, in order."""
    cuts: tuple[tuple[int, ...], ...] = attrs.field()
    """For each frame, the offsets in its wire bytes where a new write starts (0 is
    right before the frame; the first write needs none)."""
    pause: float = attrs.field(default=0.0, validator=_seconds)
    """Seconds between one write and the next."""
    half_close: bool = attrs.field(default=False, validator=_flag)
    """Shut down the sending side after the last write (and expect EOF back)."""
    read_delay: float = attrs.field(default=0.0, validator=_seconds)
    """Seconds the client waits before it starts reading."""

    @cuts.default
    def _no_cuts(self) -> tuple[tuple[int, ...], ...]:
        return ((),) * len(self.frames)

    def __attrs_post_init__(self) -> None:
        if len(self.cuts) != len(self.frames):
            raise ValueError(
                f"cuts: expected one list of cuts per frame ({len(self.frames)}), "
                f"got {len(self.cuts)}"
            )

    def check_against(self, framing: Framing, *, where: str = "case") -> None:
        """Whether this case can be written in ``framing``, as :meth:`writes` writes it.

        Args:
            framing: the framing the case is to be written in.
            where: how messages name this case (its path in a report).

        Raises:
            ValueError: a frame that ``framing`` cannot encode (over its
                ``max_frame``, holding its delimiter, not its fixed size), or a cut
                outside its frame's wire bytes (0 to their length); the message
                names which.
        """
        for index, (frame, cuts) in enumerate(zip(self.frames, self.cuts, strict=True)):
            try:
                size = len(framing.encode(frame))
            except ValueError as exc:
                raise ValueError(f"not a case: {where}.frames[{index}]: {exc}") from None
            outside = [cut for cut in cuts if not 0 <= cut <= size]
            if outside:
                raise ValueError(
                    f"not a case: {where}.cuts[{index}]: {shown(outside[0])} is outside "
                    f"the frame's {count(size, 'wire byte')}"
                )

    def writes(self, framing: Framing) -> list[tuple[float, bytes]]:
        """(pause before it, bytes) of each write."""
        out: list[tuple[float, bytes]] = []
        pending = bytearray()
        for frame, cuts in zip(self.frames, self.cuts, strict=True):
            data = framing.encode(frame)
            start = 0
            for cut in sorted(cuts):
                pending += data[start:cut]
                start = cut
                if pending:
                    out.append((self.pause if out else 0.0, bytes(pending)))
                    pending.clear()
            pending += data[start:]
        if pending or not out:
            out.append((self.pause if out else 0.0, bytes(pending)))
        return out

    def write_ends(self, framing: Framing) -> list[int]:
        """The offset in the stream where each write ends."""
        ends, position = [], 0
        for _, data in self.writes(framing):
            position += len(data)
            ends.append(position)
        return ends

    def size(self, framing: Framing) -> int:
        return len(wire(framing, self.frames))

    def describe(self, framing: Framing) -> str:
        writes = self.writes(framing)
        text = (
            f"{count(len(self.frames), 'frame')}, {count(self.size(framing), 'byte')} in "
            f"{count(len(writes), 'write')}"
        )
        if len(writes) > 1 and self.pause:
            text += f" {self.pause * 1000:g} ms apart"
        if self.read_delay:
            text += f", not reading for {self.read_delay:.2g}s"
        if self.half_close:
            text += ", then the write side shut down"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": [frame.hex() for frame in self.frames],
            "cuts": [list(cuts) for cuts in self.cuts],
            "pause": self.pause,
            "half_close": self.half_close,
            "read_delay": self.read_delay,
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str = "case") -> Case:
        """The inverse of :meth:`to_json`, type by type: what JSON holds is data, so
        nothing in it is converted (``"false"`` is no bool, ``1.5`` no cut).

        Args:
            data: what :meth:`to_json` returned, read back from JSON.
            where: how messages name ``data`` (its path in a report).

        Raises:
            ValueError: ``data`` is not a case; the one-line message starts with
                ``not a case:``, names the field and says what was wrong.
        """
        if not isinstance(data, dict):
            raise ValueError(f"not a case: {where}: expected an object, got {shown(data)}")
        for name in ("frames", "cuts"):
            if not isinstance(data.get(name), list):
                problem = "missing" if name not in data else f"got {shown(data[name])}"
                raise ValueError(f"not a case: {where}.{name}: expected a list, {problem}")
        frames = []
        for index, frame in enumerate(data["frames"]):
            if not isinstance(frame, str) or not HEX_DIGITS.fullmatch(frame):
                raise ValueError(
                    f"not a case: {where}.frames[{index}]: expected a string of hex digits, "
                    f"got {shown(frame)}"
                )
            frames.append(bytes.fromhex(frame))
        cuts = []
        for index, each in enumerate(data["cuts"]):
            if not isinstance(each, list):
                raise ValueError(
                    f"not a case: {where}.cuts[{index}]: expected a list, got {shown(each)}"
                )
            for cut in each:
                if isinstance(cut, bool) or not isinstance(cut, int) or cut < 0:
                    raise ValueError(
                        f"not a case: {where}.cuts[{index}]: expected integers 0 or more, "
                        f"got {shown(cut)}"
                    )
            cuts.append(tuple(each))
        try:
            return cls(
                tuple(frames),
                tuple(cuts),
                data.get("pause", 0.0),
                data.get("half_close", False),
                data.get("read_delay", 0.0),
            )
        except ValueError as exc:  # the validators' messages start with the field
            raise ValueError(f"not a case: {where}.{exc}") from None


def python_snippet(address: Address, framing: Framing, case: Case, limit: float) -> str:
    """A standalone script (standard library only) that replays ``case`` and prints
    what came back next to what an echo returns."""
    writes = case.writes(framing)
    expected = wire(framing, case.frames)
    if isinstance(address, TcpAddress):
        opening = [f"s = socket.create_connection({(address.host or 'localhost', address.port)!r})"]
    else:
        path = address.path
        if not path.startswith(("\0", "@")):
            path = os.path.abspath(path)  # the script may run elsewhere
        opening = ["s = socket.socket(socket.AF_UNIX)", f"s.connect({path!r})"]
    lines = [
        "import socket, time",
        *opening,
        "writes = [",
        *(f"    ({pause!r}, {data!r})," for pause, data in writes),
        "]",
        "for pause, data in writes:",
        "    time.sleep(pause)",
        "    s.sendall(data)",
    ]
    if case.half_close:
        lines.append("s.shutdown(socket.SHUT_WR)")
    if case.read_delay:
        lines.append(f"time.sleep({case.read_delay!r})")
    lines += [
        f"expected = {expected!r}",
        f"s.settimeout({limit!r})",
        'got = b""',
        "eof = False",
        "try:",
        "    while True:" if case.half_close else "    while len(got) < len(expected):",
        "        chunk = s.recv(65536)",
        "        if not chunk:",
        "            eof = True",
        "            break",
        "        got += chunk",
        "except (TimeoutError, ConnectionError) as exc:",
        '    print("ended by", type(exc).__name__)',
        'print("expected", expected)',
        'print("got     ", got)',
        # After a half-close the echo must end with the server's EOF too.
        f"right = got == expected{' and eof' if case.half_close else ''}",
        'print("same" if right else "DIFFERENT")',
    ]
    return "\n".join(lines) + "\n"


def show_writes(framing: Framing, case: Case, limit: int = 12) -> list[str]:
    """One line per write (pause and bytes), at most ``limit`` of them."""
    writes = case.writes(framing)
    lines = []
    for number, (pause, data) in enumerate(writes[:limit], 1):
        wait = f"after {pause * 1000:g} ms, " if pause else ""
        lines.append(f"write {number}: {wait}{show(data, 72)}")
    if len(writes) > limit:
        lines.append(f"... {len(writes) - limit} more writes (--json has every one)")
    if case.half_close:
        lines.append("then shutdown(SHUT_WR)")
    if case.read_delay:
        lines.append(f"reading only after {case.read_delay:g}s")
    return lines


# --- shrinking ---------------------------------------------------------------------

#: Returns the kind of failure a case produces, or None when it passes.
RunCase = Callable[[Case], Awaitable[str | None]]

#: A case counts as failing only if it fails the same way on every one of this many
#: replays in a row (each on a fresh connection): a server that fails now and then
#: (when a read boundary happens to fall inside a frame) must not leave a "smallest
#: case" that passes when it is replayed. Three: a case that fails one replay in two
#: gets through once in eight; each more replay costs a connection per kept step.
REPLAYS = 3

#: Payloads are bisected to their shortest failing length only in cases this small.
_BISECT_FRAMES = 64


@attrs.frozen
class Replays:
    """How a case fared when replayed: failing the same way every time, or not."""

    same: int
    """Replays in a row, from the first, that failed the same way."""
    then: str | None = None
    """What the replay after those did: None if there was none (every replay failed
    the same way), ``""`` if it passed, else the kind it failed with."""

    @property
    def confirmed(self) -> bool:
        """Whether every replay failed the same way."""
        return self.then is None

    @property
    def made(self) -> int:
        """How many replays were made."""
        return self.same + (self.then is not None)


async def replay_case(case: Case, kind: str, run: RunCase, replays: int = REPLAYS) -> Replays:
    """Run ``case`` up to ``replays`` times, stopping at the first run that does not
    fail with ``kind`` (so a case that passes costs one run, not ``replays``)."""
    for same in range(replays):
        found = await run(case)
        if found != kind:
            return Replays(same, found or "")
    return Replays(replays)


@attrs.define
class Shrunk:
    """The smallest case found, and how it was found."""

    case: Case
    tries: int = 0
    """Runs made (each replay of each candidate is one)."""
    improvements: int = 0


def _without(case: Case, start: int, stop: int) -> Case:
    return attrs.evolve(
        case,
        frames=case.frames[:start] + case.frames[stop:],
        cuts=case.cuts[:start] + case.cuts[stop:],
    )


def _with_payload(framing: Framing, case: Case, index: int, payload: bytes) -> Case | None:
    try:
        size = len(framing.encode(payload))
    except ValueError:
        return None
    frames = list(case.frames)
    cuts = list(case.cuts)
    frames[index] = payload
    # A cut past the new end moves to its last byte: a split inside stays inside
    # (and before an empty frame on the wire, a raw one, it stays before it).
    cuts[index] = tuple(sorted({max(0, min(cut, size - 1)) for cut in cuts[index]}))
    return attrs.evolve(case, frames=tuple(frames), cuts=tuple(cuts))


def _every_payload(framing: Framing, case: Case, shorten: Callable[[bytes], bytes]) -> Case:
    for index, frame in enumerate(case.frames):
        case = _with_payload(framing, case, index, shorten(frame)) or case
    return case


class _Shrinker:
    """Greedy passes, each to its own fixed point, repeated while any helps."""

    def __init__(
        self, framing: Framing, result: Shrunk, kind: str, run: RunCase, replays: int
    ) -> None:
        self.framing = framing
        self.result = result
        self.kind = kind
        self.run = run
        self.replays = replays
        # Hashes of the candidates given up (not the cases: they may be large), so
        # that no pass replays one again.
        self.given_up: set[int] = set()

    async def fails(self, candidate: Case) -> bool:
        """Try ``candidate``; keep it if it fails the same way on every replay."""
        if candidate == self.result.case or hash(candidate) in self.given_up:
            return False
        replays = await replay_case(candidate, self.kind, self.run, self.replays)
        self.result.tries += replays.made
        if replays.confirmed:
            self.result.case = candidate
            self.result.improvements += 1
            return True
        self.given_up.add(hash(candidate))
        return False

    async def shrink(self) -> None:
        passes = (self.plainer, self.all_payloads, self.fewer_frames, self.fewer_writes)
        improved = True
        while improved:
            improved = False
            for each in passes:
                improved = await each() or improved
            improved = await self.each_payload() or improved
        if len(self.result.case.frames) <= _BISECT_FRAMES:
            await self.bisect_lengths()

    async def plainer(self) -> bool:
        case = self.result.case
        found = False
        if case.read_delay:
            found = await self.fails(attrs.evolve(self.result.case, read_delay=0.0)) or found
        if case.half_close:
            found = await self.fails(attrs.evolve(self.result.case, half_close=False)) or found
        return found

    async def all_payloads(self) -> bool:
        """Every payload empty; else every payload halved, again and again."""
        if self.framing.kind == "fixed":
            return False
        if await self.fails(_every_payload(self.framing, self.result.case, lambda _: b"")):
            return True
        found = False
        while await self.fails(
            _every_payload(self.framing, self.result.case, lambda frame: frame[: len(frame) // 2])
        ):
            found = True
        return found

    async def fewer_frames(self) -> bool:
        """Runs of frames left out: halves, quarters, ..., single frames."""
        found = False
        size = len(self.result.case.frames) // 2
        while size >= 1:
            start = 0
            while start < len(self.result.case.frames) and len(self.result.case.frames) > 1:
                stop = min(len(self.result.case.frames), start + size)
                if stop - start >= len(self.result.case.frames):
                    break
                if await self.fails(_without(self.result.case, start, stop)):
                    found = True
                else:
                    start += size
            size = min(size // 2, len(self.result.case.frames) // 2)
        return found

    async def fewer_writes(self) -> bool:
        case = self.result.case
        if not any(case.cuts):
            return False
        if await self.fails(attrs.evolve(case, cuts=((),) * len(case.frames))):
            return True
        found = False
        for index in range(len(case.frames)):
            for cut in self.result.case.cuts[index]:
                fewer = list(self.result.case.cuts)
                fewer[index] = tuple(other for other in fewer[index] if other != cut)
                found = await self.fails(attrs.evolve(self.result.case, cuts=tuple(fewer))) or found
        return found

    async def each_payload(self) -> bool:
        if self.framing.kind == "fixed":
            return False
        found = False
        for index in range(len(self.result.case.frames)):
            # (Shorter by a byte at a time is for the bisection at the end.)
            for shorter in (lambda p: b"", lambda p: p[: len(p) // 2], lambda p: p[len(p) // 2 :]):
                frame = self.result.case.frames[index]
                if not frame:
                    break
                candidate = _with_payload(self.framing, self.result.case, index, shorter(frame))
                if candidate is not None and await self.fails(candidate):
                    found = True
                    break
        return found

    async def bisect_lengths(self) -> None:
        """Each payload as short as it can be while the case still fails (assuming
        that shorter fails no more often than longer, as a size limit does)."""
        if self.framing.kind == "fixed":
            return
        for index in range(len(self.result.case.frames)):
            low, high = 0, len(self.result.case.frames[index])  # fails at high
            while low + 1 < high:
                middle = (low + high) // 2
                frame = self.result.case.frames[index]
                candidate = _with_payload(self.framing, self.result.case, index, frame[:middle])
                if candidate is not None and await self.fails(candidate):
                    high = middle
                else:
                    low = middle
            # Then from its start: what the failure needs may be at a payload's end
            # (whitespace a server strips, a delimiter's first bytes).
            low, high = 0, len(self.result.case.frames[index])  # fails without [:low]
            while low + 1 < high:
                middle = (low + high) // 2
                frame = self.result.case.frames[index]
                candidate = _with_payload(
                    self.framing, self.result.case, index, frame[middle - low :]
                )
                if candidate is not None and await self.fails(candidate):
                    low = middle
                else:
                    high = middle


async def shrink(
    framing: Framing, case: Case, kind: str, run: RunCase, *, replays: int = REPLAYS
) -> Shrunk:
    """Make ``case`` smaller while ``run`` says it still fails with ``kind``.

    Simpler first (no read delay, no half-close), then every payload emptied or
    halved at once, fewer frames, fewer writes, each payload shorter; again while
    any of them helps; last, in a small case, each payload bisected to the shortest
    length that still fails (cut from its end, then from its start). A smaller case is kept only if it fails with ``kind``
    on every one of ``replays`` runs in a row (:func:`replay_case`); ``case`` itself
    is assumed to (check it with :func:`replay_case` first). Bound it from outside
    (a cancel scope): use :func:`shrink_into` to keep the best case found when it is
    cancelled.
    """
    result = Shrunk(case)
    await shrink_into(framing, result, kind, run, replays=replays)
    return result


async def shrink_into(
    framing: Framing, result: Shrunk, kind: str, run: RunCase, *, replays: int = REPLAYS
) -> None:
    """:func:`shrink`, updating ``result`` as it goes (so a cancelled run keeps it)."""
    await _Shrinker(framing, result, kind, run, replays).shrink()


def cut_at(framing: Framing, frames: Sequence[bytes], offsets: Sequence[int], pause: float) -> Case:
    """``frames`` written in pieces that start at the stream ``offsets``."""
    cuts: list[list[int]] = [[] for _ in frames]
    wanted = sorted(set(offsets))
    position = 0
    index = 0
    for number, frame in enumerate(frames):
        size = len(framing.encode(frame))
        while index < len(wanted) and wanted[index] < position + size:
            if wanted[index] > 0:
                cuts[number].append(wanted[index] - position)
            index += 1
        position += size
    return Case(tuple(frames), tuple(tuple(each) for each in cuts), pause)
