"""A load generator for any echo server: frames/s, MB/s, latency, verified echoes.

Strategy: closed loop. Each connection keeps ``depth`` frames in flight: it
sends ``depth`` frames, and for every echo it receives it sends one new frame,
the new frames of one read in one write. Every frame carries its sequence
number, so every echo is checked byte for byte against the frame it answers,
in order; a difference, a reset or an early close is counted as an error and
ends that connection. Latency is measured per frame from just before its write
to the read that completed its echo. The report shows the generator's own CPU
use, because a generator that saturates its core measures itself, not the server.
"""

from __future__ import annotations

import collections
import json
import math
import resource
import time
from array import array
from collections.abc import Callable

import attrs
import trio

from .._errors import ClientError, FramingError
from .._framing import Framing
from .._listeners import Address, connect

#: Hex digits of the sequence number at the start of every payload.
_SEQ_DIGITS = 16


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@attrs.frozen
class BenchResult:
    """What one run measured."""

    address: str
    framing: str
    connections: int
    depth: int
    frame_size: int
    """Wire bytes per frame (header or delimiter included)."""
    seconds: float
    """Length of the measured interval (after the warm-up)."""
    frames: int
    """Echoes received and verified in the measured interval."""
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    first_error: str
    client_cpu_seconds: float
    """CPU time the generator used in the measured interval."""

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def megabytes_per_second(self) -> float:
        """Echoed wire megabytes (10**6 bytes) per second, one direction."""
        return self.frames * self.frame_size / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def client_cpu_percent(self) -> float:
        """The generator's CPU use as a share of one core."""
        return 100 * self.client_cpu_seconds / self.seconds if self.seconds else 0.0

    def to_json(self) -> str:
        data = attrs.asdict(self)
        data.update(
            frames_per_second=self.frames_per_second,
            megabytes_per_second=self.megabytes_per_second,
            client_cpu_percent=self.client_cpu_percent,
        )
        return json.dumps(data, indent=2)

    def table(self) -> str:
        rows = [
            ("server", self.address),
            ("framing", self.framing),
            (
                "load",
                f"{self.connections} connections x {self.depth} in flight, {self.frame_size}-byte frames",
            ),
            ("measured", f"{self.seconds:.2f} s"),
            ("frames", f"{self.frames:,} ({self.frames_per_second:,.0f}/s)"),
            ("throughput", f"{self.megabytes_per_second:.2f} MB/s each way"),
            (
                "latency",
                f"p50 {self.p50_ms:.3f} ms, p99 {self.p99_ms:.3f} ms, p99.9 {self.p999_ms:.3f} ms",
            ),
            ("errors", f"{self.errors}" + (f" (first: {self.first_error})" if self.errors else "")),
            ("client cpu", f"{self.client_cpu_percent:.0f}% of a core"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _percentile(sorted_values: array[float], fraction: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


@attrs.define
class _Run:
    address: Address
    framing: Framing
    payload_size: int
    depth: int
    measuring: bool = False
    stopping: bool = False
    frames: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: array[float] = attrs.field(factory=lambda: array("d"))

    def payload(self, connection: int, seq: int) -> bytes:
        head = f"{(connection << 40) | seq:0{_SEQ_DIGITS}x}".encode()
        filler = b"." * (self.payload_size - _SEQ_DIGITS)
        return head + filler

    def fail(self, connection: int, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = f"connection {connection}: {message}"

    async def connection(self, index: int) -> None:
        try:
            stream = await connect(self.address)
        except ClientError as exc:  # an error of the run, not a crash
            self.fail(index, str(exc))
            return
        async with stream:
            await self._drive(index, stream)

    async def _drive(self, index: int, stream: trio.SocketStream) -> None:
        framing = self.framing
        encode = framing.encode
        decoder = framing.decoder()
        in_flight: collections.deque[tuple[bytes, int]] = collections.deque()
        seq = 0
        clock = time.perf_counter_ns

        def next_frames(count: int) -> bytes:
            nonlocal seq
            now = clock()
            out = bytearray()
            for _ in range(count):
                payload = self.payload(index, seq)
                seq += 1
                in_flight.append((payload, now))
                out += encode(payload)
            return bytes(out)

        try:
            await stream.send_all(next_frames(self.depth))
            while in_flight:
                data = await stream.receive_some()
                if not data:
                    self.fail(
                        index, f"server closed the connection with {len(in_flight)} echoes owed"
                    )
                    return
                arrived = clock()
                decoder.feed(data)
                completed = 0
                while (frame := decoder.next_frame()) is not None:
                    expected, sent_at = in_flight.popleft()
                    if frame != expected:
                        self.fail(
                            index,
                            f"echo {frame[:24]!r} does not match the frame sent, {expected[:24]!r}",
                        )
                        return
                    completed += 1
                    if self.measuring:
                        self.latencies.append((arrived - sent_at) / 1e6)
                if self.measuring:
                    self.frames += completed
                if completed and not self.stopping:
                    await stream.send_all(next_frames(completed))
        except FramingError as exc:
            self.fail(index, f"bad echo: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.fail(index, "connection reset")
        except IndexError:
            self.fail(index, "more echoes than frames sent")


def _payload_size(framing: Framing, frame_size: int) -> int:
    """The payload size whose frame is ``frame_size`` wire bytes in ``framing``."""
    payload_size = _exact_payload(framing, frame_size)
    if payload_size is not None:
        return payload_size
    if frame_size - 10 < _SEQ_DIGITS:
        raise ValueError(
            f"frames of {frame_size} bytes are too small: the payload must hold a "
            f"{_SEQ_DIGITS}-digit sequence number besides the framing's own bytes"
        )
    # Say which sizes do work nearby (a varint header grows by one byte at 128, ...).
    nearby = [
        size
        for size in sorted(
            range(frame_size - 16, frame_size + 17), key=lambda n: abs(n - frame_size)
        )
        if size > 0 and _exact_payload(framing, size) is not None
    ][:2]
    hint = f"; try --size {' or '.join(str(n) for n in sorted(nearby))}" if nearby else ""
    raise ValueError(
        f"no frame of {framing.describe()} is exactly {frame_size} bytes on the wire{hint}"
    )


def _exact_payload(framing: Framing, frame_size: int) -> int | None:
    """The payload size whose frame is exactly ``frame_size`` wire bytes, if there is one."""
    for overhead in range(0, 11):  # no delimiter, header or varint is longer
        payload_size = frame_size - overhead
        if payload_size < _SEQ_DIGITS:
            return None
        try:
            if len(framing.encode(b"x" * payload_size)) == frame_size:
                return payload_size
        except ValueError:
            continue
    return None


async def run_bench(
    address: Address,
    framing: Framing | None = None,
    *,
    connections: int = 1,
    depth: int = 1,
    frame_size: int = 64,
    duration: float = 10.0,
    warmup: float = 1.0,
    drain_timeout: float = 5.0,
    on_progress: Callable[[float, int, int], None] | None = None,
) -> BenchResult:
    """Load an echo server and measure it.

    Args:
        address: the server.
        framing: what it speaks (line framing by default).
        connections: connections kept open at once.
        depth: frames in flight per connection.
        frame_size: wire bytes per frame, header or delimiter included.
        duration: seconds measured, after ``warmup`` seconds unmeasured.
        drain_timeout: after the run, how long in-flight echoes may take.
        on_progress: called about once a second with (elapsed, frames, errors).

    Raises:
        ValueError: a frame size too small to carry a sequence number, or too
            large for the framing.
        ClientError: the server cannot be reached.
    """
    framing = framing or Framing()
    if framing.kind == "raw":
        raise ValueError("raw framing has no frames to count: choose a framing")
    if framing.kind == "fixed":
        frame_size = framing.largest_payload
    payload_size = _payload_size(framing, frame_size)
    run = _Run(address, framing, payload_size, depth)
    try:
        framing.encode(run.payload(0, 0))
    except ValueError as exc:
        raise ValueError(f"cannot frame the benchmark's payloads: {exc}") from None
    probe = await connect(address)  # fail once, clearly, if nobody is there
    await probe.aclose()
    async with trio.open_nursery() as nursery:
        for index in range(connections):
            nursery.start_soon(run.connection, index)
        await trio.sleep(warmup)
        run.measuring = True
        started = time.perf_counter()
        cpu_started = _cpu_seconds()
        deadline = started + duration
        while (now := time.perf_counter()) < deadline:
            await trio.sleep(min(1.0, deadline - now))
            if on_progress is not None:
                on_progress(time.perf_counter() - started, run.frames, run.errors)
        run.measuring = False
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_started
        frames = run.frames
        run.stopping = True
        nursery.cancel_scope.deadline = trio.current_time() + drain_timeout
    latencies = array("d", sorted(run.latencies))
    return BenchResult(
        address=str(address),
        framing=framing.describe(),
        connections=connections,
        depth=depth,
        frame_size=frame_size,
        seconds=seconds,
        frames=frames,
        p50_ms=_percentile(latencies, 0.50),
        p99_ms=_percentile(latencies, 0.99),
        p999_ms=_percentile(latencies, 0.999),
        errors=run.errors,
        first_error=run.first_error,
        client_cpu_seconds=cpu,
    )
