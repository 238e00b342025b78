"""Black-box conformance of any echo server: a battery of framing scenarios.

Strategy: each scenario sends frames in a way that breaks naive servers (many
frames in one write, one byte at a time, a split inside a delimiter or a length
header, hundreds in flight, thousands of mixed sizes, many connections interleaving
partial frames, a half-close, a reader that stalls, abusive clients next to a good
one) and compares what comes back with what was sent, byte for byte: an echo server
returns every frame's wire bytes, in order. Only content, order and completeness are
judged, never speed; each scenario has one time limit for everything in it, so a
whole run has a bound. On a failure the report names the bug from everything that
came back (:mod:`._diagnosis`), and the failing exchange is shrunk to the smallest
case that still fails the same way (:mod:`._case`), which ``--replay`` replays.
Every random choice comes from one seed, printed in the report.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from xml.etree import ElementTree

import attrs
import trio

from ..._errors import ClientError
from ..._faults import loads
from ..._framing import Framing
from ..._listeners import Address, connect
from .._chunkings import boundary_offsets
from ._case import (
    Case,
    Shrunk,
    cut_at,
    python_snippet,
    show_writes,
    shrink_into,
)
from ._diagnosis import Diagnosis, Transcript, count, diagnose, show, wire

#: Seconds each scenario may take, everything in it included, before what has
#: arrived is judged as it is.
DEFAULT_TIMEOUT = 5.0
#: Seconds the whole run may spend shrinking failing cases.
DEFAULT_SHRINK_TIME = 10.0
#: Exchanges end this much before their scenario's time limit (at most a tenth of it).
_MARGIN = 0.05
#: The longest one try of a shrunk case waits for its echoes, and how long it
#: waits once they stop coming.
_TRY_LIMIT = 1.0
_TRY_IDLE = 0.1
#: Pause between writes meant to arrive as separate reads (with TCP_NODELAY on
#: loopback, a few milliseconds is plenty; judging never depends on it).
_GAP = 0.005
#: Largest frame the max-frame scenario sends, whatever ``--max-frame`` says.
_MAX_FRAME_BUDGET = 64 * 1024 * 1024
#: At most this many split points in the split scenario.
_MAX_SPLITS = 48
#: The sustained scenario: connections, frames on each, the largest frame.
_SUSTAINED_CONNECTIONS = 4
_SUSTAINED_FRAMES = 1500
_SUSTAINED_LARGEST = 4096
#: The resilience scenario: abusive clients of each kind, good frames between them.
_ABUSERS = 5
_GOOD_ROUNDS = 3
#: The never-reading client stops writing after this much (its peer's buffers are
#: long full by then), or once its writes have been stuck for _STUCK seconds.
_NEVER_READ_BYTES = 32 * 1024 * 1024
_STUCK = 0.1


@attrs.frozen
class MinimalCase:
    """The smallest case found that fails the way a scenario failed."""

    case: Case
    """The frames and the writes."""
    framing: Framing
    detail: str
    """The diagnosis of the smallest case."""
    received: bytes
    """What came back for it."""
    shrunk_from: str
    """The case the scenario failed with, described."""
    tries: int
    """How many cases were tried."""
    seconds: float
    """How long shrinking took."""
    python: str
    """A standalone script that replays the case."""

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case.to_json(),
            "framing": self.framing.to_json(),
            "writes": [
                {"pause": pause, "hex": data.hex(), "text": repr(data)}
                for pause, data in self.case.writes(self.framing)
            ],
            "detail": self.detail,
            "received": {"hex": self.received.hex(), "text": repr(self.received)},
            "shrunk_from": self.shrunk_from,
            "tries": self.tries,
            "seconds": round(self.seconds, 3),
            "python": self.python,
        }


@attrs.frozen
class ScenarioResult:
    """The outcome of one scenario."""

    name: str
    """The scenario's name, e.g. ``coalesced``."""
    passed: bool
    """Whether everything sent came back whole, in order, and nothing else."""
    seconds: float
    """How long the scenario took (shrinking not included)."""
    detail: str = ""
    """On failure: what went wrong, and what kind of server bug does that."""
    sent: str = ""
    """On failure: a summary of what was sent."""
    received: str = ""
    """On failure: a summary of what came back."""
    kind: str = ""
    """On failure: the kind of bug, one of ``triodaemon.testing.check.KINDS`` (or
    ``refused``, ``timeout``, ``reset``, ``broken``: no exchange to judge)."""
    minimal: MinimalCase | None = None
    """On failure: the smallest case that fails the same way, if one was found."""
    shrink_note: str = ""
    """On failure: why there is no smaller case, when there is none."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
        }
        if not self.passed:
            data.update(detail=self.detail, sent=self.sent, received=self.received, kind=self.kind)
            data["minimal"] = self.minimal.to_json() if self.minimal else None
            data["shrink_note"] = self.shrink_note
        return data

    def lines(self, address: Address | None = None) -> list[str]:
        """The failure, for people: the diagnosis, and the smallest case."""
        lines = [f"    {self.detail}"]
        if self.sent:
            lines.append(f"    sent: {self.sent}")
        if self.received:
            lines.append(f"    got:  {self.received}")
        minimal = self.minimal
        if minimal is None:
            if self.shrink_note:
                lines.append(f"    not shrunk: {self.shrink_note}")
            return lines
        lines.append(
            f"    smallest failing case ({minimal.tries} tries, {minimal.seconds:.1f}s; "
            f"from {minimal.shrunk_from}):"
        )
        lines.append(f"      {minimal.case.describe(minimal.framing)}")
        lines += [f"      {line}" for line in show_writes(minimal.framing, minimal.case)]
        lines.append(f"      came back: {show(minimal.received, 96)}")
        lines.append(f"      {minimal.detail}")
        writes = minimal.case.writes(minimal.framing)
        if len(writes) <= 16 and minimal.case.size(minimal.framing) <= 1024:
            lines.append("      replay it with Python (or: check --json, then --replay REPORT):")
            lines += [f"        {line}" for line in minimal.python.splitlines()]
        else:
            lines.append("      replay it: check --json > REPORT, then check --replay REPORT")
        return lines


@attrs.frozen
class CheckReport:
    """Every scenario's result for one server."""

    address: str
    framing: str
    results: tuple[ScenarioResult, ...]
    seed: int | None = None
    """The seed every random choice came from: ``--seed`` repeats the run (None
    for a replay, which makes none)."""

    @property
    def passed(self) -> bool:
        """True only if every scenario passed."""
        return all(result.passed for result in self.results)

    def to_json(self) -> str:
        """The report as a JSON document."""
        return json.dumps(
            {
                "address": self.address,
                "framing": self.framing,
                "seed": self.seed,
                "passed": self.passed,
                "scenarios": [result.to_json() for result in self.results],
            },
            indent=2,
        )

    def summary(self) -> str:
        failed = sum(not result.passed for result in self.results)
        noun = "scenario" if len(self.results) == 1 else "scenarios"
        return f"{len(self.results)} {noun}: {len(self.results) - failed} passed, {failed} failed"

    def table(self) -> str:
        """The report as a table for people."""
        width = max((len(result.name) for result in self.results), default=8) + 2
        lines = [
            f"triodaemon check {self.address} ({self.framing})"
            + (f", seed {self.seed}" if self.seed is not None else ""),
            f"{'scenario':<{width}}result  time",
        ]
        for result in self.results:
            status = "pass" if result.passed else "FAIL"
            lines.append(f"{result.name:<{width}}{status:<8}{result.seconds:.3f}s")
            if not result.passed:
                lines += result.lines()
        lines.append(self.summary())
        return "\n".join(lines)

    def junit_xml(self) -> str:
        """The report as JUnit XML: one test case per scenario, the diagnosis as
        the failure message (what CI systems show)."""
        suite = ElementTree.Element(
            "testsuite",
            name=f"triodaemon check {self.address}",
            tests=str(len(self.results)),
            failures=str(sum(not result.passed for result in self.results)),
            errors="0",
            skipped="0",
            time=f"{sum(result.seconds for result in self.results):.3f}",
        )
        properties = ElementTree.SubElement(suite, "properties")
        for name, value in (("framing", self.framing), ("seed", str(self.seed or ""))):
            ElementTree.SubElement(properties, "property", name=name, value=value)
        for result in self.results:
            case = ElementTree.SubElement(
                suite,
                "testcase",
                classname="triodaemon.check",
                name=result.name,
                time=f"{result.seconds:.3f}",
            )
            if not result.passed:
                failure = ElementTree.SubElement(
                    case, "failure", message=result.detail, type=result.kind or "failure"
                )
                failure.text = "\n".join(line.strip() for line in result.lines())
        ElementTree.indent(suite)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(
            suite, encoding="unicode"
        )


class _Failed(Exception):
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


def _safe(framing: Framing, payload: bytes) -> bytes:
    """``payload``, with whatever would end a delimited frame early replaced."""
    if framing.kind in ("line", "delimiter"):
        delimiter = framing.delimiter
        while (at := (payload + delimiter).find(delimiter)) != len(payload):
            payload = payload[:at] + b"\x00" + payload[at + 1 :]
    return payload


def _make_frames(framing: Framing, tag: str, count: int, size: int) -> list[bytes]:
    """``count`` distinct payloads of about ``size`` bytes that ``framing`` can carry."""
    return [_tagged(framing, f"{tag}{index}", size) for index in range(count)]


def _tagged(framing: Framing, tag: str, size: int) -> bytes:
    """A payload of about ``size`` bytes (what ``framing`` can carry) made of pieces
    that differ from every other (``tag.0|tag.1|...``), so that a fragment that comes
    back can be placed without ambiguity."""
    size = (
        framing.largest_payload if framing.kind == "fixed" else min(size, framing.largest_payload)
    )
    pieces = bytearray()
    part = 0
    while len(pieces) < size:
        pieces += f"{tag}.{part}|".encode()
        part += 1
    return _safe(framing, bytes(pieces[:size]))


async def _close(stream: trio.SocketStream) -> None:
    """Close at once, even in a cancelled scope (so a failure is not replaced by
    the cancellation)."""
    with trio.CancelScope(shield=True):
        await stream.aclose()


def _abort(stream: trio.SocketStream) -> None:
    """Close with a reset (RST), as a client that crashes does."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


@attrs.define
class _Checker:
    address: Address
    framing: Framing
    timeout: float
    rng: random.Random = attrs.field(factory=random.Random)
    deadline: float = math.inf
    """When the running scenario's time is up (trio time)."""
    slowest: float = 0.0
    """The longest exchange that passed in the running scenario, in seconds."""
    planned: int = 0
    """How many exchanges the running scenario makes one after another, if several."""
    good_frames: int = 0
    """Frames echoed on the resilience scenario's well-behaved connection."""

    async def open(self) -> trio.SocketStream:
        try:
            with trio.move_on_at(self.deadline):
                return await connect(self.address)
        except ClientError as exc:
            raise _Failed(str(exc), kind="refused") from None
        raise _Failed("could not even connect within the time limit", kind="timeout")

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
        received = bytearray()
        arrivals: list[tuple[float, int]] = []
        start = trio.current_time()
        sent = trio.Event()
        unsent = expected_size - written
        sending = False  # in a write (else pausing between writes)
        reset = broke = closed = quiet = False
        with trio.move_on_at(self.deadline) as scope:
            async with trio.open_nursery() as nursery:

                async def write() -> None:
                    nonlocal unsent, sending, reset, broke
                    skip = written
                    try:
                        for pause, data in case.writes(self.framing):
                            if skip >= len(data):
                                skip -= len(data)
                                continue
                            if pause:
                                await trio.sleep(pause)
                            sending = True
                            await stream.send_all(data[skip:])
                            sending = False
                            unsent -= len(data) - skip
                            skip = 0
                        if case.half_close:
                            await stream.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        sending = False
                        reset = isinstance(exc.__cause__, ConnectionResetError)
                        broke = not reset
                    sent.set()

                nursery.start_soon(write)
                if case.read_delay:
                    await trio.sleep(case.read_delay)
                while case.half_close or len(received) < expected_size:
                    with trio.move_on_after(idle) as waiting:
                        try:
                            data = await stream.receive_some()
                        except trio.BrokenResourceError:
                            reset = True
                            break
                    if waiting.cancelled_caught:
                        if sent.is_set():
                            quiet = True
                            break
                        continue
                    if not data:
                        closed = not case.half_close or len(received) < expected_size
                        break
                    received += data
                    arrivals.append((trio.current_time() - start, len(received)))
                nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
        timed_out = scope.cancelled_caught or quiet
        ended = ""
        if reset:
            ended = ", then the server reset the connection"
        elif closed:
            ended = ", then the server closed the connection"
        elif broke:
            ended = ", then the connection broke while sending"
        elif timed_out:
            last = arrivals[-1][0] if arrivals else 0.0
            until = ", until the time limit" if scope.cancelled_caught else ""
            ended = f", then nothing more for {elapsed - last:.3g}s{until}"
            if arrivals and elapsed - last < 0.05 * elapsed:
                ended = ", and more was still coming when the time limit ran out"
            if case.half_close and len(received) >= expected_size:
                ended = (
                    ", but the connection was not closed within the time limit after the half-close"
                )
        return Transcript(
            bytes(received),
            ended,
            timed_out,
            tuple(arrivals),
            elapsed,
            unsent=unsent if timed_out else 0,
            blocked=sending,
            history=history,
        )

    def judge(
        self, case: Case, transcript: Transcript, *, how: str = "", context: str = ""
    ) -> None:
        found = diagnose(self.framing, case.frames, transcript, case.write_ends(self.framing)[:-1])
        if found is None:
            self.slowest = max(self.slowest, transcript.elapsed)
            return
        found = self._out_of_time(found, transcript)
        received = transcript.received
        raise _Failed(
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
        need = (
            f"; its {self.planned} exchanges need about {self.planned * self.slowest:.2g}s: "
            f"try --timeout {math.ceil(self.planned * self.slowest * 1.5)}"
            if self.planned
            else ": give it more time with --timeout"
        )
        return Diagnosis(
            "slow",
            f"{found.text.split(': ')[0]}: the scenario's time limit ran out "
            f"{transcript.elapsed:.2g}s into this exchange, and the ones before it took up "
            f"to {self.slowest:.2g}s each: the server seems slow, not lossy{need}",
        )

    async def exchange(
        self,
        case: Case,
        *,
        how: str = "",
        stream: trio.SocketStream | None = None,
        context: str = "",
        history: int = 0,
    ) -> None:
        own = stream is None
        stream = stream or await self.open()
        try:
            transcript = await self.talk(stream, case, history=history)
            self.judge(case, transcript, how=how, context=context)
        finally:
            if own:
                await _close(stream)

    # --- the scenarios -----------------------------------------------------------------

    async def one_frame(self) -> None:
        await self.exchange(Case(tuple(_make_frames(self.framing, "one", 1, 32))))

    async def coalesced(self) -> None:
        frames = _make_frames(self.framing, "coalesced", 64, 24)
        await self.exchange(Case(tuple(frames)), how=" in one write")

    async def byte_by_byte(self) -> None:
        frames = _make_frames(self.framing, "bytewise", 1, 20)
        case = cut_at(self.framing, frames, range(1, len(wire(self.framing, frames))), _GAP)
        await self.exchange(case, how=f", one byte per write, {_GAP * 1000:g} ms apart")

    async def splits(self) -> None:
        frames = _make_frames(self.framing, "split", 4, 20)
        if self.framing.kind in ("line", "delimiter") and len(self.framing.delimiter) > 1:
            frames.append(self.framing.delimiter[:-1] + b"x")  # a delimiter's prefix inside
        size = len(wire(self.framing, frames))
        interesting = boundary_offsets(self.framing, frames)
        step = max(1, size // 16)
        offsets = sorted({*interesting, *range(step, size, step)})
        if len(offsets) > _MAX_SPLITS:
            stride = math.ceil(len(offsets) / _MAX_SPLITS)
            offsets = sorted({*interesting[: _MAX_SPLITS // 2], *offsets[::stride]})
        stream = await self.open()
        self.planned = len(offsets)
        try:
            for number, offset in enumerate(offsets):
                await self.exchange(
                    cut_at(self.framing, frames, [offset], _GAP),
                    how=f" in two writes split at byte {offset}",
                    stream=stream,
                    context=f"split at byte {offset}{self._where(frames, offset)}: ",
                    history=number * len(frames),
                )
        finally:
            await _close(stream)

    def _where(self, frames: Sequence[bytes], offset: int) -> str:
        position = 0
        for index, frame in enumerate(frames):
            size = len(self.framing.encode(frame))
            if offset < position + size:
                inner = offset - position
                if self.framing.kind in ("line", "delimiter"):
                    if inner > size - len(self.framing.delimiter):
                        return f" (inside the delimiter of frame {index + 1})"
                elif self.framing.kind in ("length", "varint"):
                    header = size - len(frame)
                    if inner < header:
                        return f" (inside the length header of frame {index + 1})"
                return f" (in frame {index + 1})" if inner else f" (before frame {index + 1})"
            position += size
        return ""

    async def edge_frames(self) -> None:
        framing = self.framing
        if framing.kind == "fixed":
            assert framing.frame_size is not None
            frames = [b"\x00" * framing.frame_size, b"\xff" * framing.frame_size]
        elif framing.kind in ("line", "delimiter"):
            delimiter = framing.delimiter
            first = delimiter[:1]
            frames = [b"", b"", first * 3 if len(delimiter) > 1 else b"x", b""]
            frames += [delimiter[:n] + b"tail" for n in range(1, len(delimiter))]
        else:
            frames = [b"", b"\x00\x00\x00\x05", b"", b"\xff\xff\xff\xff", b"\x80\x80\x01", b""]
        frames = [frame[: framing.largest_payload] for frame in frames]
        case = Case(tuple(frames), tuple((0,) if n else () for n in range(len(frames))), _GAP)
        await self.exchange(case, how=", one per write")

    async def max_frame(self) -> None:
        size = min(self.framing.largest_payload, _MAX_FRAME_BUDGET)
        frames = _make_frames(self.framing, "max", 1, size)
        note = "" if size == self.framing.largest_payload else f" (capped at {size} bytes)"
        await self.exchange(Case(tuple(frames)), how=note)

    async def pipelining(self) -> None:
        frames = _make_frames(self.framing, "pipeline", 500, 16)
        case = Case(tuple(frames), tuple((0,) if n else () for n in range(len(frames))))
        await self.exchange(case, how=", one write each, without waiting for echoes")

    def _mixed_frames(self, tag: str, count: int) -> list[bytes]:
        """``count`` payloads of mixed sizes: some empty, most small, some up to 4 KiB."""
        frames = []
        largest = min(_SUSTAINED_LARGEST, self.framing.largest_payload)
        for index in range(count):
            if self.framing.kind == "fixed":
                size = largest
            else:
                roll = self.rng.random()
                if roll < 0.05:
                    size = 0
                elif roll < 0.45:
                    size = self.rng.randint(1, min(16, largest))
                elif roll < 0.85:
                    size = self.rng.randint(1, min(256, largest))
                else:
                    size = self.rng.randint(1, largest)
            frames.append(_tagged(self.framing, f"{tag}.{index}", size))
        return frames

    def _random_cuts(self, frames: Sequence[bytes]) -> Case:
        """``frames`` in writes of random sizes (1 byte to 16 KiB), back to back."""
        size = len(wire(self.framing, frames))
        offsets = []
        position = self.rng.randint(1, 16384)
        while position < size:
            offsets.append(position)
            position += self.rng.choice((1, 7, 100, 1500, 4096, self.rng.randint(1, 16384)))
        return cut_at(self.framing, frames, offsets, 0.0)

    async def sustained(self) -> None:
        count = _SUSTAINED_CONNECTIONS
        cases = [
            self._random_cuts(self._mixed_frames(f"s{n}", _SUSTAINED_FRAMES)) for n in range(count)
        ]
        failures: dict[int, _Failed] = {}

        async def client(index: int) -> None:
            try:
                await self.exchange(
                    cases[index],
                    how=", mixed sizes in writes of random sizes, without waiting for echoes",
                    context=f"connection {index + 1} of {count}: ",
                )
            except _Failed as failure:
                failures[index] = failure

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(client, index)
        if failures:
            raise failures[min(failures)]  # the first connection's, whichever ended first

    async def concurrency(self) -> None:
        count = 50
        everyone_started = trio.Event()
        started = 0
        failures: dict[int, _Failed] = {}
        refused: list[_Failed] = []

        async def client(index: int, nursery: trio.Nursery) -> None:
            nonlocal started
            frames = _make_frames(self.framing, f"conn{index:02d}", 1, 24)
            size = len(wire(self.framing, frames))
            half = max(1, size // 2)
            case = cut_at(self.framing, frames, [half], 0.0)
            try:
                stream = await self.open()
            except _Failed as failure:
                failure.detail = f"connection {index + 1} of {count}: {failure.detail}"
                refused.append(failure)
                nursery.cancel_scope.cancel()
                return
            try:
                try:
                    await stream.send_all(case.writes(self.framing)[0][1])
                except trio.BrokenResourceError:
                    failures[index] = _Failed(
                        f"connection {index + 1} of {count}: the server reset the connection "
                        "after half a frame",
                        kind="reset",
                    )
                    nursery.cancel_scope.cancel()
                    return
                started += 1
                if started == count:
                    everyone_started.set()
                with trio.move_on_at(self.deadline):
                    await everyone_started.wait()
                if not everyone_started.is_set():
                    return
                transcript = await self.talk(stream, case, written=half)
                try:
                    self.judge(
                        case,
                        transcript,
                        how=" in two halves, interleaved with 49 other connections",
                        context=f"connection {index + 1} of {count}: ",
                    )
                except _Failed as failure:
                    failure.note = "it fails only next to other connections"
                    failures[index] = failure
            finally:
                await _close(stream)

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(client, index, nursery)
        if refused:
            raise refused[0]
        if failures and not everyone_started.is_set():
            raise failures[min(failures)]
        if not everyone_started.is_set():
            raise _Failed(
                f"only {started} of {count} connections could send their first half "
                "within the time limit: the server does not serve connections concurrently",
                kind="timeout",
            )
        if failures:
            raise failures[min(failures)]

    async def half_close(self) -> None:
        frames = _make_frames(self.framing, "halfclose", 3, 16)
        await self.exchange(
            Case(tuple(frames), half_close=True), how=", then the write side shut down"
        )

    async def slow_reader(self) -> None:
        total = 512 * 1024
        size = min(1024, self.framing.largest_payload)
        frames = _make_frames(self.framing, "slow", max(1, total // max(size, 1)), size)
        delay = min(1.0, self.timeout / 3)
        await self.exchange(
            Case(tuple(frames), read_delay=delay),
            how=f", the client not reading for {delay:.2g}s",
        )

    async def resilience(self) -> None:
        """Abusive clients next to a good one; the good one must be answered throughout."""
        good = await self.open()
        abusers: list[trio.SocketStream] = []
        failure: _Failed | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self._abuse(good, abusers, nursery)
                except _Failed as failed:
                    failure = failed
                nursery.cancel_scope.cancel()
        finally:
            await _close(good)
            for stream in abusers:
                await _close(stream)
        if failure is not None:
            raise failure

    async def _abuse(
        self, good: trio.SocketStream, abusers: list[trio.SocketStream], nursery: trio.Nursery
    ) -> None:
        async with self._phase("before any abuse: ", ""):
            await self._good_client(good)
        async with self._phase(
            f"after {_ABUSERS} clients reset their connections in the middle of a frame: ",
            "a server that such clients harm fails this way",
        ):
            for n in range(_ABUSERS):
                stream = await self.open()
                frame = self.framing.encode(_tagged(self.framing, f"reset{n}", 64))
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(frame[: len(frame) // 2])
                _abort(stream)
            await self._good_client(good)
        async with self._phase(
            f"while {_ABUSERS} clients that sent 4 KiB of random bytes stay connected: ",
            "a server that garbage from one client harms fails this way",
        ):
            for _ in range(_ABUSERS):
                stream = await self.open()
                abusers.append(stream)
                with trio.move_on_after(_STUCK), contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(self.rng.randbytes(4096))  # (dropping it is fine)
            await self._good_client(good)
        async with self._phase(
            "while a client that never reads its echoes keeps sending: ",
            "a server where one client that does not read holds up the others fails this "
            "way: a write that blocks the whole server, or a lock held across a write",
        ):
            never = await self.open()
            abusers.append(never)
            stuck = trio.Event()
            nursery.start_soon(self._never_read, never, stuck)
            await stuck.wait()
            await self._good_client(good)

    @asynccontextmanager
    async def _phase(self, context: str, harm: str) -> AsyncIterator[None]:
        """Failures in a phase of the resilience scenario: say which, and what that means."""
        try:
            yield
        except _Failed as failure:
            failure.detail = context + failure.detail + (f" ({harm})" if harm else "")
            failure.case = None  # what fails here takes several clients at once
            failure.note = "it takes several clients at once"
            raise

    async def _never_read(self, stream: trio.SocketStream, stuck: trio.Event) -> None:
        chunk = wire(self.framing, _make_frames(self.framing, "noread", 64, 1000))
        sent = 0
        try:
            while sent < _NEVER_READ_BYTES:
                with trio.move_on_after(_STUCK) as scope:
                    await stream.send_all(chunk)
                    sent += len(chunk)
                if scope.cancelled_caught:
                    break  # its buffers and the server's are full
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server dropped it: its right
        stuck.set()
        await trio.sleep_forever()

    async def _good_client(self, stream: trio.SocketStream) -> None:
        """Frames one at a time on the good connection, and one on a new connection."""
        for n in range(_GOOD_ROUNDS):
            frames = (_tagged(self.framing, f"good{n}", 40),)
            await self.exchange(
                Case(frames),
                stream=stream,
                how=", on the well-behaved client",
                history=self.good_frames,
            )
            self.good_frames += 1
        await self.exchange(
            Case((_tagged(self.framing, "newcomer", 40),)),
            context="a new connection: ",
            how=", on a new connection",
        )


#: The scenarios in the order they run, with what each one does to the server.
SCENARIOS: dict[str, tuple[str, Callable[[_Checker], Awaitable[None]]]] = {
    "one-frame": ("one frame, one write", _Checker.one_frame),
    "coalesced": ("64 frames in one write", _Checker.coalesced),
    "byte-by-byte": ("one frame written a byte at a time, with pauses", _Checker.byte_by_byte),
    "split": (
        "a stream split in two at many offsets, inside delimiters and length headers",
        _Checker.splits,
    ),
    "edge-frames": (
        "empty frames, frames holding the delimiter's first bytes or header-like bytes",
        _Checker.edge_frames,
    ),
    "max-frame": ("a frame of the largest allowed size", _Checker.max_frame),
    "pipelining": ("500 frames in flight on one connection", _Checker.pipelining),
    "sustained": (
        "1500 frames of mixed sizes on each of 4 connections, in writes of random sizes",
        _Checker.sustained,
    ),
    "concurrency": ("50 connections interleaving partial frames", _Checker.concurrency),
    "half-close": (
        "frames, then shutdown of the write side: every echo, then EOF",
        _Checker.half_close,
    ),
    "slow-reader": (
        "512 KiB sent while the client does not read for a while",
        _Checker.slow_reader,
    ),
    "resilience": (
        "clients that reset mid-frame, send garbage or never read, next to a good one",
        _Checker.resilience,
    ),
}

#: Kinds of failure where echoes were still owed when the exchange ended.
_LOST = {"nothing", "lost", "last-frame", "one-per-write"}

#: Kinds of failure that no smaller case explains better.
_NOT_SHRUNK = {
    "slow": "a slow server is slow on any case; give it more time with --timeout",
    "refused": "no exchange to shrink",
    "timeout": "no exchange to shrink",
    "reset": "no exchange to shrink",
    "broken": "no exchange to shrink",
}


class _OutOfTime(Exception):
    """The run's time for shrinking is up."""


@attrs.define
class _Shrinking:
    """The run's budget for shrinking, and the best case seen in the running shrink."""

    checker: _Checker
    left: float
    """Seconds of shrinking the run has left."""
    off: bool = attrs.field(init=False)
    best: tuple[Case, Transcript] | None = None
    shrunk: dict[str, str] = attrs.field(factory=dict)
    """Kinds of failure shrunk already, and the scenario each was shrunk for."""

    def __attrs_post_init__(self) -> None:
        self.off = self.left <= 0

    async def minimal(self, name: str, failure: _Failed) -> tuple[MinimalCase | None, str]:
        case = failure.case
        if failure.kind in _NOT_SHRUNK or case is None:
            return None, failure.note or _NOT_SHRUNK.get(failure.kind, "no exchange to shrink")
        if failure.kind in self.shrunk:
            return None, f"the same kind of failure as {self.shrunk[failure.kind]}: see its case"
        if self.off:
            return None, "shrinking is off (--shrink-time 0)"
        if self.left <= 0:
            return None, "the run's time for shrinking (--shrink-time) is used up"
        checker = self.checker
        framing = checker.framing
        start = trio.current_time()
        # Half of what is left (at least a second), so later failures get some too.
        deadline = start + min(self.left, max(self.left / 2, 1.0))
        self.best = None
        result = Shrunk(case, 0, 0)

        async def run(candidate: Case) -> str | None:
            limit = min(_TRY_LIMIT, checker.timeout)
            checker.deadline = min(deadline - _MARGIN, trio.current_time() + limit)
            stream = await checker.open()
            try:
                transcript = await checker.talk(stream, candidate, idle=_TRY_IDLE)
            finally:
                await _close(stream)
            if trio.current_time() >= deadline - _MARGIN:
                raise _OutOfTime  # the try may have been cut short: no verdict
            found = diagnose(
                framing, candidate.frames, transcript, candidate.write_ends(framing)[:-1]
            )
            if found is not None and found.kind == failure.kind:
                self.best = (candidate, transcript)
            return found.kind if found else None

        out_of_time = False
        with trio.move_on_at(deadline) as scope:
            try:
                if await run(case) == failure.kind:  # alone, on a fresh connection
                    await shrink_into(framing, result, failure.kind, run)
            except _OutOfTime:
                out_of_time = True
            except _Failed:
                pass  # a refused connection: keep what was found
        self.left -= trio.current_time() - start
        if self.best is None:
            if out_of_time or scope.cancelled_caught:
                return None, "the run's time for shrinking (--shrink-time) ran out"
            note = failure.note or "it does not fail the same way alone on a new connection"
            return None, note
        best, transcript = self.best
        found = diagnose(framing, best.frames, transcript, best.write_ends(framing)[:-1])
        assert found is not None
        self.shrunk[failure.kind] = name
        return (
            MinimalCase(
                best,
                framing,
                found.text,
                transcript.received,
                case.describe(framing),
                result.tries,
                trio.current_time() - start,
                python_snippet(checker.address, framing, best, min(_TRY_LIMIT, checker.timeout)),
            ),
            "",
        )


async def _failed(
    name: str, failure: _Failed, start: float, shrinking: _Shrinking
) -> ScenarioResult:
    seconds = trio.current_time() - start
    minimal, note = await shrinking.minimal(name, failure)
    return ScenarioResult(
        name,
        False,
        seconds,
        failure.detail,
        failure.sent,
        failure.received,
        failure.kind,
        minimal,
        note,
    )


def new_seed() -> int:
    """A fresh seed for a run."""
    return random.SystemRandom().randrange(2**32)


async def run_check(
    address: Address,
    framing: Framing | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    scenarios: Sequence[str] | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    seed: int | None = None,
    shrink_time: float = DEFAULT_SHRINK_TIME,
) -> CheckReport:
    """Run the conformance battery against the echo server at ``address``.

    A run takes at most ``len(scenarios) * timeout + shrink_time`` seconds (plus
    the first connect, within ``timeout``).

    Args:
        address: the server.
        framing: the framing it speaks (line by default).
        timeout: seconds each scenario may take, everything in it included (a
            budget, never a verdict on speed).
        scenarios: names from :data:`SCENARIOS` to run (all by default).
        on_result: called with each result as it is known.
        on_start: called with each scenario's name as it starts.
        seed: every random choice comes from it (a new one by default; the report
            says which).
        shrink_time: seconds the whole run may spend shrinking failing cases (0:
            none).

    Raises:
        ClientError: the server cannot be reached at all.
        ValueError: an unknown scenario name.
    """
    framing = framing or Framing()
    names = list(dict.fromkeys(scenarios)) if scenarios else list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    seed = new_seed() if seed is None else seed
    probe = await connect(address, timeout=timeout)  # fail once, clearly, if nobody is there
    await probe.aclose()
    checker = _Checker(address, framing, timeout)
    shrinking = _Shrinking(checker, shrink_time)
    results = []
    for name in names:
        _, scenario = SCENARIOS[name]
        if on_start is not None:
            on_start(name)
        checker.rng = random.Random(f"{seed}/{name}")
        checker.slowest = 0.0
        checker.planned = checker.good_frames = 0
        start = trio.current_time()
        # Exchanges end a little before the scenario, so that they are judged
        # (the outermost cancelled scope is the one that catches).
        checker.deadline = start + timeout - min(_MARGIN, timeout / 10)
        try:
            with trio.move_on_after(timeout) as scope:
                await scenario(checker)
            if scope.cancelled_caught:
                raise _Failed(
                    f"did not finish within the time limit ({timeout:g}s)", kind="timeout"
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failure = _Failed(f"a connection broke: {exc}", kind="broken")
            result = await _failed(name, failure, start, shrinking)
        except _Failed as failure:
            result = await _failed(name, failure, start, shrinking)
        else:
            result = ScenarioResult(name, True, trio.current_time() - start)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return CheckReport(str(address), framing.describe(), tuple(results), seed)


async def replay(
    address: Address,
    framing: Framing,
    case: Case,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    name: str = "replay",
) -> ScenarioResult:
    """Run one case (a shrunk one, from a report) against ``address``."""
    checker = _Checker(address, framing, timeout)
    start = trio.current_time()
    checker.deadline = start + timeout - min(_MARGIN, timeout / 10)
    try:
        with trio.move_on_after(timeout):
            writes = len(case.writes(framing))
            await checker.exchange(case, how=f" in {count(writes, 'write')}")
    except _Failed as failure:
        return ScenarioResult(
            name,
            False,
            trio.current_time() - start,
            failure.detail,
            failure.sent,
            failure.received,
            failure.kind,
        )
    return ScenarioResult(name, True, trio.current_time() - start)


def cases_from_file(text: str) -> list[tuple[str, Framing, Case]]:
    """The cases in a ``check --json`` report (each failing scenario's smallest
    case): (name, framing, case) each.

    Raises:
        ValueError: not a report, or a report without a single case.
    """
    try:
        document = loads(text, max_depth=64)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError("not a check report")
    found = []
    for scenario in document.get("scenarios", ()):
        minimal = scenario.get("minimal") if isinstance(scenario, dict) else None
        if minimal:
            try:
                found.append(
                    (
                        str(scenario.get("name", "replay")),
                        Framing.from_json(minimal["framing"]),
                        Case.from_json(minimal["case"]),
                    )
                )
            except (KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"not a check report: a case lacks {exc}") from None
    if not found:
        raise ValueError("the report holds no failing case to replay")
    return found
