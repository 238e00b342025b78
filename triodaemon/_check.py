"""Black-box conformance of any echo server: a battery of framing scenarios.

Strategy: each scenario sends frames in a way that breaks naive servers (many
frames in one write, one byte at a time, a split inside a delimiter or a length
header, hundreds in flight, many connections interleaving partial frames, a
half-close, a reader that stalls) and compares what comes back with what was
sent, byte for byte: an echo server returns every frame's wire bytes, in order.
Only content, order and completeness are judged, never speed; each scenario has
a time limit and a byte budget so a broken server cannot stall the run. On a
failure the report says what was sent, what came back, and what kind of bug
produces that difference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from ._client import connect
from ._errors import ClientError, FramingError
from ._framing import Framing
from ._listeners import Address
from .testing._chunkings import boundary_offsets

#: Seconds a scenario may take before what has arrived is judged as it is.
DEFAULT_TIMEOUT = 5.0
#: Pause between writes meant to arrive as separate reads (with TCP_NODELAY on
#: loopback, a few milliseconds is plenty; judging never depends on it).
_GAP = 0.005
#: Largest frame the max-frame scenario sends, whatever ``--max-frame`` says.
_MAX_FRAME_BUDGET = 64 * 1024 * 1024
#: At most this many split points in the split scenario.
_MAX_SPLITS = 48


@attrs.frozen
class ScenarioResult:
    """The outcome of one scenario."""

    name: str
    """The scenario's name, e.g. ``coalesced``."""
    passed: bool
    """Whether everything sent came back whole, in order, and nothing else."""
    seconds: float
    """How long the scenario took."""
    detail: str = ""
    """On failure: what went wrong, and what kind of server bug does that."""
    sent: str = ""
    """On failure: a summary of what was sent."""
    received: str = ""
    """On failure: a summary of what came back."""


@attrs.frozen
class CheckReport:
    """Every scenario's result for one server."""

    address: str
    framing: str
    results: tuple[ScenarioResult, ...]

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
                "passed": self.passed,
                "scenarios": [attrs.asdict(result) for result in self.results],
            },
            indent=2,
        )

    def table(self) -> str:
        """The report as a table for people."""
        width = max(len(result.name) for result in self.results) + 2
        lines = [
            f"triodaemon check {self.address} ({self.framing})",
            f"{'scenario':<{width}}result  time",
        ]
        for result in self.results:
            status = "pass" if result.passed else "FAIL"
            lines.append(f"{result.name:<{width}}{status:<8}{result.seconds:.3f}s")
            if not result.passed:
                lines.append(f"    {result.detail}")
                if result.sent:
                    lines.append(f"    sent: {result.sent}")
                if result.received:
                    lines.append(f"    got:  {result.received}")
        failed = sum(not result.passed for result in self.results)
        lines.append(
            f"{len(self.results)} scenarios: {len(self.results) - failed} passed, {failed} failed"
        )
        return "\n".join(lines)


class _Failed(Exception):
    def __init__(self, detail: str, sent: str = "", received: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.sent = sent
        self.received = received


def _show(data: bytes, limit: int = 48) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}..."


def _summary(frames: Sequence[bytes], wire_size: int, how: str = "") -> str:
    shown = " ".join(_show(frame, 24) for frame in frames[:4])
    more = f" ... ({len(frames) - 4} more)" if len(frames) > 4 else ""
    noun = "frame" if len(frames) == 1 else "frames"
    return f"{len(frames)} {noun}, {wire_size} bytes{how}: {shown}{more}"


def _make_frames(framing: Framing, tag: str, count: int, size: int) -> list[bytes]:
    """``count`` distinct payloads of about ``size`` bytes that ``framing`` can carry."""
    size = (
        framing.largest_payload if framing.kind == "fixed" else min(size, framing.largest_payload)
    )
    frames = []
    for index in range(count):
        # Every piece of a payload differs from every other ("tag3.0|tag3.1|..."), so a
        # fragment that comes back can be placed without ambiguity.
        pieces = bytearray()
        part = 0
        while len(pieces) < size:
            pieces += f"{tag}{index}.{part}|".encode()
            part += 1
        payload = bytes(pieces[:size])
        if framing.kind in ("line", "delimiter"):
            delimiter = framing.delimiter
            while (payload + delimiter).find(delimiter) != len(payload):
                # Replace what would end the frame early (a delimiter made of our
                # characters: unusual, but allowed).
                at = (payload + delimiter).find(delimiter)
                payload = payload[:at] + b"\x00" + payload[at + 1 :]
        frames.append(payload)
    return frames


def _wire(framing: Framing, frames: Sequence[bytes]) -> bytes:
    return b"".join(framing.encode(frame) for frame in frames)


def _decode_loosely(framing: Framing, data: bytes) -> list[bytes]:
    """Frames in ``data`` as far as they parse, ignoring limits; a partial tail is dropped."""
    loose = attrs.evolve(framing, max_frame=max(len(data), 1))
    decoder = loose.decoder()
    decoder.feed(data)
    frames = []
    try:
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    except FramingError:
        pass
    return frames


def _complete_frames(framing: Framing, frames: Sequence[bytes], size: int) -> int:
    """How many of ``frames`` lie wholly within the first ``size`` bytes of their stream."""
    position = 0
    for count, frame in enumerate(frames):
        position += len(framing.encode(frame))
        if position > size:
            return count
    return len(frames)


def _is_subsequence(part: Sequence[bytes], whole: Sequence[bytes]) -> bool:
    items = iter(whole)
    return all(any(item == wanted for item in items) for wanted in part)


def _diagnose(
    framing: Framing,
    frames: Sequence[bytes],
    expected: bytes,
    received: bytes,
    ended: str,
    writes: int = 0,
) -> str:
    """Explain how ``received`` differs from ``expected`` and what bug does that.

    ``writes`` is how many writes carried ``frames``, when that is known.
    """
    if received == expected:
        return "every echo came back" + ended
    if expected.startswith(received):
        complete = _complete_frames(framing, frames, len(received))
        text = f"got {len(received)} of {len(expected)} bytes ({complete} of {len(frames)} frames){ended}"
        if not received:
            return text + ": nothing came back"
        if 0 < complete == writes < len(frames):
            return (
                text + f": one frame came back per write ({len(frames)} frames in {writes}): "
                "the server seems to answer each read with one message and drop the rest"
            )
        if complete == len(frames) - 1 and len(frames) > 1:
            return text + ": the last frame never came back"
        return text + f": the echoes of {len(frames) - complete} frames never came back"
    if received.startswith(expected):
        extra = received[len(expected) :]
        return f"got {len(extra)} bytes more than was sent: {_show(extra)}"
    got = _decode_loosely(framing, received) if framing.kind != "raw" else []
    if got:
        sent_payload = b"".join(frames)
        got_payload = b"".join(got)
        if got_payload and sent_payload.startswith(got_payload) and got != list(frames[: len(got)]):
            return (
                f"the bytes came back cut into other frames (sent {len(frames)}, got {len(got)} "
                f"so far; frame 1 was {_show(frames[0])}, came back as {_show(got[0])}): "
                "the server seems to take each read for one message"
            )
        if len(got) < len(frames) and _is_subsequence(got, frames):
            dropped = [i + 1 for i, frame in enumerate(frames) if frame not in got]
            shown = ", ".join(map(str, dropped[:8])) + (" ..." if len(dropped) > 8 else "")
            return (
                f"frames {shown} of {len(frames)} were dropped (got {len(got)}): the server "
                "seems to answer each read with one message and drop the rest"
            )
        for index, (want, have) in enumerate(zip(frames, got, strict=False)):
            if want != have:
                if want and (want.startswith(have) or want.endswith(have)):
                    return (
                        f"frame {index + 1} came back as {_show(have)}, a piece of the "
                        f"{_show(want)} sent: the server seems to drop the partial tail of a "
                        "read, or answer a partial read as a whole message"
                    )
                at = next(
                    (i for i, (a, b) in enumerate(zip(want, have, strict=False)) if a != b),
                    min(len(want), len(have)),
                )
                return (
                    f"frame {index + 1} came back different from its byte {at} on (sent "
                    f"{len(want)} bytes, got {len(have)}): expected {_show(want[at:])}, "
                    f"got {_show(have[at:])}"
                )
    for offset, (want_byte, have_byte) in enumerate(zip(expected, received, strict=False)):
        if want_byte != have_byte:
            return (
                f"the echo differs from byte {offset} on: expected {_show(expected[offset:])}, "
                f"got {_show(received[offset:])}"
            )
    return f"got {len(received)} bytes instead of {len(expected)}"


@attrs.define
class _Checker:
    address: Address
    framing: Framing
    timeout: float

    async def open(self) -> trio.SocketStream:
        try:
            return await connect(self.address)
        except ClientError as exc:
            raise _Failed(str(exc)) from None

    async def talk(
        self,
        stream: trio.SocketStream,
        writes: Sequence[tuple[float, bytes]],
        expected_size: int,
        *,
        half_close: bool = False,
        read_delay: float = 0.0,
    ) -> tuple[bytes, str]:
        """Write (each after its pause) while reading; return what came back and how it ended.

        Reading stops at ``expected_size`` bytes, or with ``half_close`` at EOF.
        The ending is "" (complete), or a phrase like ", then the server closed the connection".
        """
        received = bytearray()
        ended = ""
        with trio.move_on_after(self.timeout) as scope:
            async with trio.open_nursery() as nursery:

                async def write() -> None:
                    nonlocal ended
                    try:
                        for pause, data in writes:
                            if pause:
                                await trio.sleep(pause)
                            await stream.send_all(data)
                        if half_close:
                            await stream.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        ended = ended or ", then the connection broke while sending"

                nursery.start_soon(write)
                if read_delay:
                    await trio.sleep(read_delay)
                while half_close or len(received) < expected_size:
                    try:
                        data = await stream.receive_some()
                    except trio.BrokenResourceError:
                        ended = ", then the server reset the connection"
                        break
                    if not data:
                        if not half_close or len(received) < expected_size:
                            ended = ", then the server closed the connection"
                        break
                    received += data
                nursery.cancel_scope.cancel()
        if scope.cancelled_caught:
            ended = f", then nothing more for {self.timeout:g}s"
            if half_close and len(received) >= expected_size:
                ended = f", but the connection was not closed within {self.timeout:g}s of the half-close"
        return bytes(received), ended

    def judge(
        self,
        frames: Sequence[bytes],
        received: bytes,
        ended: str,
        *,
        how: str = "",
        context: str = "",
        writes: int = 0,
    ) -> None:
        expected = _wire(self.framing, frames)
        if received == expected and not ended:
            return
        detail = _diagnose(self.framing, frames, expected, received, ended, writes)
        raise _Failed(
            context + detail,
            sent=_summary(frames, len(expected), how),
            received=f"{len(received)} bytes: {_show(received, 96)}",
        )

    async def exchange(
        self,
        frames: Sequence[bytes],
        writes: Sequence[tuple[float, bytes]],
        *,
        how: str = "",
        stream: trio.SocketStream | None = None,
        context: str = "",
        read_delay: float = 0.0,
    ) -> None:
        own = stream is None
        stream = stream or await self.open()
        try:
            expected = _wire(self.framing, frames)
            received, ended = await self.talk(stream, writes, len(expected), read_delay=read_delay)
            self.judge(frames, received, ended, how=how, context=context, writes=len(writes))
        finally:
            if own:
                await stream.aclose()

    # --- the scenarios -----------------------------------------------------------------

    async def one_frame(self) -> None:
        frames = _make_frames(self.framing, "one", 1, 32)
        await self.exchange(frames, [(0, _wire(self.framing, frames))])

    async def coalesced(self) -> None:
        frames = _make_frames(self.framing, "coalesced", 64, 24)
        await self.exchange(frames, [(0, _wire(self.framing, frames))], how=" in one write")

    async def byte_by_byte(self) -> None:
        frames = _make_frames(self.framing, "bytewise", 1, 20)
        wire = _wire(self.framing, frames)
        writes = [(_GAP if i else 0.0, wire[i : i + 1]) for i in range(len(wire))]
        await self.exchange(frames, writes, how=f", one byte per write, {_GAP * 1000:g} ms apart")

    async def splits(self) -> None:
        frames = _make_frames(self.framing, "split", 4, 20)
        if self.framing.kind in ("line", "delimiter") and len(self.framing.delimiter) > 1:
            frames.append(self.framing.delimiter[:-1] + b"x")  # a delimiter's prefix inside
        wire = _wire(self.framing, frames)
        interesting = boundary_offsets(self.framing, frames)
        step = max(1, len(wire) // 16)
        offsets = sorted({*interesting, *range(step, len(wire), step)})
        if len(offsets) > _MAX_SPLITS:
            stride = math.ceil(len(offsets) / _MAX_SPLITS)
            offsets = sorted({*interesting[: _MAX_SPLITS // 2], *offsets[::stride]})
        stream = await self.open()
        async with stream:
            for offset in offsets:
                await self.exchange(
                    frames,
                    [(0, wire[:offset]), (_GAP, wire[offset:])],
                    how=f" in two writes split at byte {offset}",
                    stream=stream,
                    context=f"split at byte {offset}{self._where(frames, offset)}: ",
                )

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
        wire_pieces = [framing.encode(frame) for frame in frames]
        writes = [(_GAP if i else 0.0, piece) for i, piece in enumerate(wire_pieces) if piece]
        await self.exchange(frames, writes, how=" one per write")

    async def max_frame(self) -> None:
        size = min(self.framing.largest_payload, _MAX_FRAME_BUDGET)
        frames = _make_frames(self.framing, "max", 1, size)
        note = "" if size == self.framing.largest_payload else f" (capped at {size} bytes)"
        await self.exchange(frames, [(0, _wire(self.framing, frames))], how=note)

    async def pipelining(self) -> None:
        frames = _make_frames(self.framing, "pipeline", 500, 16)
        writes = [(0.0, self.framing.encode(frame)) for frame in frames]
        await self.exchange(frames, writes, how=", one write each, without waiting for echoes")

    async def concurrency(self) -> None:
        count = 50
        everyone_started = trio.Event()
        started = 0
        failures: list[_Failed] = []

        async def client(index: int) -> None:
            nonlocal started
            frames = _make_frames(self.framing, f"conn{index:02d}", 1, 24)
            wire = _wire(self.framing, frames)
            half = max(1, len(wire) // 2)
            stream = await self.open()
            async with stream:
                await stream.send_all(wire[:half])
                started += 1
                if started == count:
                    everyone_started.set()
                await everyone_started.wait()
                received, ended = await self.talk(
                    stream, [(0, wire[half:])], len(wire), read_delay=0
                )
                try:
                    self.judge(
                        frames,
                        received,
                        ended,
                        how=" in two halves, interleaved with 49 other connections",
                        context=f"connection {index + 1} of {count}: ",
                    )
                except _Failed as failure:
                    failures.append(failure)

        # Connecting and sending the first halves has one time limit, each
        # connection's exchange after that another: twice the limit in all.
        with trio.move_on_after(2 * self.timeout) as scope:
            async with trio.open_nursery() as nursery:
                for index in range(count):
                    nursery.start_soon(client, index)
                with trio.move_on_after(self.timeout):
                    await everyone_started.wait()
                if not everyone_started.is_set():
                    raise _Failed(
                        f"only {started} of {count} connections could send their first half "
                        f"within {self.timeout:g}s: the server does not serve connections "
                        "concurrently"
                    )
        if failures:
            raise failures[0]
        if scope.cancelled_caught:
            raise _Failed(f"the connections did not finish within {2 * self.timeout:g}s")

    async def half_close(self) -> None:
        frames = _make_frames(self.framing, "halfclose", 3, 16)
        wire = _wire(self.framing, frames)
        stream = await self.open()
        async with stream:
            received, ended = await self.talk(stream, [(0, wire)], len(wire), half_close=True)
        self.judge(frames, received, ended, how=", then the write side shut down")

    async def slow_reader(self) -> None:
        total = 512 * 1024
        size = min(1024, self.framing.largest_payload)
        frames = _make_frames(self.framing, "slow", max(1, total // max(size, 1)), size)
        delay = min(1.0, self.timeout / 3)
        await self.exchange(
            frames,
            [(0, _wire(self.framing, frames))],
            how=f", the client not reading for {delay:.2g}s",
            read_delay=delay,
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
    "concurrency": ("50 connections interleaving partial frames", _Checker.concurrency),
    "half-close": (
        "frames, then shutdown of the write side: every echo, then EOF",
        _Checker.half_close,
    ),
    "slow-reader": (
        "512 KiB sent while the client does not read for a while",
        _Checker.slow_reader,
    ),
}


async def run_check(
    address: Address,
    framing: Framing | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    scenarios: Sequence[str] | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> CheckReport:
    """Run the conformance battery against the echo server at ``address``.

    Args:
        address: the server.
        framing: the framing it speaks (line by default).
        timeout: seconds each scenario may take (a budget, never a verdict on speed).
        scenarios: names from :data:`SCENARIOS` to run (all by default).
        on_result: called with each result as it is known.

    Raises:
        ClientError: the server cannot be reached at all.
        ValueError: an unknown scenario name.
    """
    framing = framing or Framing()
    names = list(scenarios) if scenarios else list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    probe = await connect(address)  # fail once, clearly, if nobody is there
    await probe.aclose()
    checker = _Checker(address, framing, timeout)
    results = []
    for name in names:
        _, scenario = SCENARIOS[name]
        start = trio.current_time()
        try:
            await scenario(checker)
        except _Failed as failure:
            result = ScenarioResult(
                name,
                False,
                trio.current_time() - start,
                failure.detail,
                failure.sent,
                failure.received,
            )
        else:
            result = ScenarioResult(name, True, trio.current_time() - start)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return CheckReport(str(address), framing.describe(), tuple(results))
