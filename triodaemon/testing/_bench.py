"""A load generator for any echo server: frames/s, MB/s, latency, verified echoes.

Strategy: closed loop. Each connection keeps ``depth`` frames in flight: it
sends ``depth`` frames, and for every echo it receives it sends one new frame,
the new frames of one read in one write. Every frame carries its sequence
number, so every echo is checked byte for byte against the frame it answers,
in order; a difference, a reset or an early close is counted as an error and
ends that connection. Latency is measured per frame from just before its write
to the read that completed its echo. The report shows the generator's own CPU
use, because a generator that saturates its core measures itself, not the server.

The server is not trusted. A connection holds at most one frame of an echo (its
decoder's limit is the payload sent, not the framing's ``max_frame``), so a
flood costs a frame's memory. Echoes still owed when the drain after the run
ends are an error of their connection, which says what it was waiting for
(an echo, the rest of one, or the server to read our write); a run in which
every connection has ended stops at once; a run that verified no echo is an
error too. No figure in the JSON is NaN: what could not be measured is ``null``.
"""

from __future__ import annotations

import collections
import json
import math
import resource
import time
from array import array
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._decoders import Decoder
from .._errors import ClientError, FrameTooLarge, FramingError, count
from .._framing import Framing
from .._listeners import Address, connect

#: Hex digits of the sequence number at the start of every payload.
_SEQ_DIGITS = 16

#: Default seconds the echoes in flight at the end of the run may take: ample for
#: any server that echoes at all; past it, the echoes owed are errors.
DEFAULT_DRAIN_TIMEOUT = 5.0


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
    """Length of the measured interval (after the warm-up); shorter than asked, or
    0, if every connection had ended before it was over."""
    frames: int
    """Echoes received and verified in the measured interval."""
    p50_ms: float
    """Latency percentiles in milliseconds; NaN when no echo was measured (``null``
    in :meth:`to_json`)."""
    p99_ms: float
    p999_ms: float
    errors: int
    """Connections that ended in an error (a wrong echo, a close, a reset, echoes
    that never came), and one more if the run verified no echo at all."""
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

    @property
    def failure(self) -> str:
        """What went wrong, in one line; ``""`` without errors."""
        if self.errors <= 1:
            return self.first_error
        return f"{self.errors} errors; the first: {self.first_error}"

    def to_json(self) -> str:
        """Every field and property above as JSON; a figure that could not be
        measured (a percentile of no echo) is ``null``, never ``NaN``."""
        data: dict[str, Any] = attrs.asdict(self)
        data.update(
            frames_per_second=self.frames_per_second,
            megabytes_per_second=self.megabytes_per_second,
            client_cpu_percent=self.client_cpu_percent,
        )
        for name, value in data.items():
            if isinstance(value, float) and not math.isfinite(value):
                data[name] = None
        return json.dumps(data, indent=2, allow_nan=False)

    def table(self) -> str:
        measured = not math.isnan(self.p50_ms)
        rows = [
            ("server", self.address),
            ("framing", self.framing),
            (
                "load",
                f"{count(self.connections, 'connection')} x {self.depth} in flight, {self.frame_size}-byte frames",
            ),
            ("measured", f"{self.seconds:.2f} s"),
            ("frames", f"{self.frames:,} ({self.frames_per_second:,.0f}/s)"),
            ("throughput", f"{self.megabytes_per_second:.2f} MB/s each way"),
            (
                "latency",
                f"p50 {self.p50_ms:.3f} ms, p99 {self.p99_ms:.3f} ms, p99.9 {self.p999_ms:.3f} ms"
                if measured
                else "none measured (no echo)",
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


@attrs.define(eq=False)
class _ConnectionState:
    """One connection's state: what the run's end finds it waiting for."""

    index: int
    decoder: Decoder | None = None
    """None until the connection is open."""
    in_flight: collections.deque[tuple[bytes, int]] = attrs.field(factory=collections.deque)
    """The frames sent and not echoed yet, with when each was sent."""
    echoed: int = 0
    """Echoes verified on this connection, the warm-up's and the drain's too."""
    writing: int = 0
    """Bytes of the write in progress (0: none)."""
    writing_since: int = 0
    """When that write began (``time.perf_counter_ns``)."""
    ended: bool = False
    """The connection ended by itself: every echo back, or an error counted."""

    def waiting_for(self, now: int) -> str:
        """Why the connection had not ended when the run did (at ``now``, in
        ``time.perf_counter_ns``), as an error message."""
        if self.decoder is None:
            return "the connect did not complete"
        if self.writing:
            return (
                f"the server stopped reading: a write of {count(self.writing, 'byte')} "
                f"had not gone out {(now - self.writing_since) / 1e9:.1f}s later"
            )
        waited = f"{(now - self.in_flight[0][1]) / 1e9:.1f}s"
        owed = count(len(self.in_flight), "frame")
        if held := self.decoder.buffered:
            return (
                f"incomplete echo: {count(held, 'byte')} of echo {self.echoed + 1} came "
                f"back in the {waited} since its frame was sent ({owed} in flight)"
            )
        after = f" after {count(self.echoed, 'echo', 'echoes')}" if self.echoed else ""
        return f"no echo came back in {waited}{after} ({owed} in flight)"


@attrs.define
class _Run:
    address: Address
    framing: Framing
    frame_size: int
    payload_size: int
    depth: int
    connections: list[_ConnectionState]
    measuring: bool = False
    stopping: bool = False
    frames: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: array[float] = attrs.field(factory=lambda: array("d"))
    ended: int = 0
    """Connections that have ended by themselves."""
    all_ended: trio.Event = attrs.field(factory=trio.Event)
    """Set once every connection has: nothing more to measure."""

    def payload(self, connection: int, seq: int) -> bytes:
        head = f"{(connection << 40) | seq:0{_SEQ_DIGITS}x}".encode()
        filler = b"." * (self.payload_size - _SEQ_DIGITS)
        return head + filler

    def fail(self, connection: int | None, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = (
                message if connection is None else f"connection {connection}: {message}"
            )

    def decoder(self) -> Decoder:
        """A decoder that holds at most one echo: its limit is the payload sent
        (every frame's, ``fixed`` included), so a flood fails at once."""
        return attrs.evolve(self.framing, max_frame=self.payload_size).decoder()

    async def load(
        self,
        warmup: float,
        duration: float,
        drain_timeout: float,
        on_progress: Callable[[float, int, int], None] | None,
    ) -> tuple[float, float, int]:
        """Run every connection: warm up, measure, drain. Returns the seconds
        measured, the CPU seconds used in them, and the echoes verified in them."""
        async with trio.open_nursery() as nursery:
            for conn in self.connections:
                nursery.start_soon(self.connection, conn)
            with trio.move_on_after(warmup):
                await self.all_ended.wait()
            self.measuring = True
            started = time.perf_counter()
            cpu_started = _cpu_seconds()
            # Every connection ended in the warm-up: nothing to measure, no interval.
            deadline = started if self.all_ended.is_set() else started + duration
            while not self.all_ended.is_set() and (now := time.perf_counter()) < deadline:
                with trio.move_on_after(min(1.0, deadline - now)):
                    await self.all_ended.wait()
                if on_progress is not None:
                    on_progress(time.perf_counter() - started, self.frames, self.errors)
            self.measuring = False
            seconds = time.perf_counter() - started if deadline > started else 0.0
            cpu = _cpu_seconds() - cpu_started if seconds else 0.0
            frames = self.frames
            self.stopping = True
            nursery.cancel_scope.deadline = trio.current_time() + drain_timeout
        return seconds, cpu, frames

    def judge_the_end(self, seconds: float, frames: int) -> None:
        """After the drain: a connection still owed echoes is an error, and so is a
        run that verified none."""
        now = time.perf_counter_ns()
        for conn in self.connections:
            if not conn.ended:
                self.fail(conn.index, conn.waiting_for(now))
        if not frames and not self.errors:
            self.fail(None, f"no echo came back in the {seconds:.2f}s measured")

    async def connection(self, conn: _ConnectionState) -> None:
        try:
            stream = await connect(self.address)
        except ClientError as exc:  # an error of the run, not a crash
            self.fail(conn.index, str(exc))
        else:
            async with stream:
                await self._drive(conn, stream)
        conn.ended = True  # not when cancelled: the run's end judges those
        self.ended += 1
        if self.ended == len(self.connections):
            self.all_ended.set()

    async def _drive(self, conn: _ConnectionState, stream: trio.SocketStream) -> None:
        index = conn.index
        encode = self.framing.encode
        decoder = conn.decoder = self.decoder()
        in_flight = conn.in_flight
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

        async def send(data: bytes) -> None:
            conn.writing = len(data)
            conn.writing_since = clock()
            await stream.send_all(data)
            conn.writing = 0

        try:
            await send(next_frames(self.depth))
            while in_flight:
                data = await stream.receive_some()
                if not data:
                    owed = count(len(in_flight), "echo", "echoes")
                    self.fail(index, f"server closed the connection with {owed} owed")
                    return
                arrived = clock()
                decoder.feed(data)
                completed = 0
                while (frame := decoder.next_frame()) is not None:
                    if not in_flight:
                        self.fail(index, "more echoes than frames sent")
                        return
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
                conn.echoed += completed
                if self.measuring:
                    self.frames += completed
                if completed and not self.stopping:
                    await send(next_frames(completed))
        except FrameTooLarge:
            self.fail(index, f"bad echo: longer than the {self.frame_size}-byte frames sent")
        except FramingError as exc:
            self.fail(index, f"bad echo: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.fail(index, "connection reset")


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
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    on_progress: Callable[[float, int, int], None] | None = None,
) -> BenchResult:
    """Load an echo server and measure it.

    Takes at most the connect (10 s) + ``warmup`` + ``duration`` +
    ``drain_timeout``, whatever the server does, and less once every connection
    has ended. Each connection holds at most one frame of an echo.

    Args:
        address: the server.
        framing: what it speaks (line framing by default).
        connections: connections kept open at once.
        depth: frames in flight per connection.
        frame_size: wire bytes per frame, header or delimiter included.
        duration: seconds measured, after ``warmup`` seconds unmeasured.
        drain_timeout: after the run, how long in-flight echoes may take; a
            connection still owed echoes then is an error.
        on_progress: called about once a second with (elapsed, frames, errors).

    Returns:
        What was measured. ``errors`` is 0 only if every connection ended well
        and at least one echo was verified in the measured interval.

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
    conns = [_ConnectionState(index) for index in range(connections)]
    run = _Run(address, framing, frame_size, payload_size, depth, conns)
    try:
        framing.encode(run.payload(0, 0))
    except ValueError as exc:
        raise ValueError(f"cannot frame the benchmark's payloads: {exc}") from None
    probe = await connect(address)  # fail once, clearly, if nobody is there
    await probe.aclose()
    seconds, cpu, frames = await run.load(warmup, duration, drain_timeout, on_progress)
    run.judge_the_end(seconds, frames)
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
