"""`triodaemon bench`: a smoke run of the load generator (no figure is asserted)."""

from __future__ import annotations

import json
import math
from array import array
from pathlib import Path

import pytest
import trio

from triodaemon import Framing
from triodaemon.testing import run_bench
from triodaemon.testing._bench import _percentile
from triodaemon.testing.pytest_plugin import EchoServerFactory

from .conftest import SpawnFn, run_triodaemon
from .test_check import stdlib_server


@pytest.mark.parametrize(
    "framing", [Framing(), Framing("length"), Framing("varint"), Framing("fixed", frame_size=32)]
)
async def test_bench_verifies_every_echo(
    echo_server_factory: EchoServerFactory, framing: Framing
) -> None:
    server = await echo_server_factory(framing)
    progress: list[tuple[float, int, int]] = []
    with trio.fail_after(30):
        result = await run_bench(
            server.unix,
            framing,
            connections=3,
            depth=4,
            frame_size=48,
            duration=0.3,
            warmup=0.05,
            on_progress=lambda *args: progress.append(args),
        )
    assert result.errors == 0, result.first_error
    assert result.frames > 0
    assert 0 < result.p50_ms <= result.p99_ms <= result.p999_ms
    assert progress
    assert progress[-1][1] == result.frames
    assert server.daemon.stats.frames >= result.frames


async def test_bench_reports_wrong_echoes() -> None:
    async with stdlib_server("one-read-one-message") as address:
        with trio.fail_after(30):
            result = await run_bench(
                address, connections=2, depth=8, duration=0.3, warmup=0.0, drain_timeout=0.5
            )
    assert result.errors >= 1
    assert "does not match the frame sent" in result.first_error or "closed" in result.first_error


def test_percentiles() -> None:
    values = array("d", [float(v) for v in range(1, 1001)])
    assert _percentile(values, 0.5) == 500
    assert _percentile(values, 0.99) == 990
    assert _percentile(values, 0.999) == 999
    assert math.isnan(_percentile(array("d"), 0.5))


async def test_bench_cli_json(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(60):
        daemon = await spawn("--sock", str(sock_dir / "e.sock"), "--framing", "length")
        await daemon.wait_ready(1)
        result = await run_triodaemon(
            "bench",
            "--sock",
            str(sock_dir / "e.sock"),
            "--framing",
            "length",
            "--conns",
            "4",
            "--depth",
            "2",
            "--size",
            "100",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--json",
        )
        daemon.signal()
        assert await daemon.wait() == 0
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["errors"] == 0
    assert report["frames"] > 0
    assert report["frame_size"] == 100
    assert report["connections"] == 4
    assert report["client_cpu_percent"] > 0
    assert "frames" in result.stderr.decode()  # the progress lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "8"], "too small"),
        (
            ["--framing", "varint", "--size", "129"],
            "no frame of varint, max frame 1048576 bytes is exactly 129 bytes on the wire; "
            "try --size 128 or 130",
        ),
        (["--framing", "raw"], "raw framing has no frames"),
    ],
)
async def test_bench_cli_errors_are_one_line(
    echo_server_factory: EchoServerFactory, args: list[str], message: str
) -> None:
    server = await echo_server_factory()
    with trio.fail_after(30):
        result = await run_triodaemon(
            "bench", "--sock", server.unix.path, "--duration", "0.1", *args
        )
    assert result.returncode == 1
    [line] = result.stderr.decode().splitlines()
    assert message in line
