"""`triodaemon check`: passes correct servers, catches each classic framing bug."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from triodaemon import ClientError, Framing, TcpAddress, UnixAddress
from triodaemon._check import SCENARIOS, run_check
from triodaemon.testing.pytest_plugin import EchoServerFactory

from .conftest import SpawnFn, run_triodaemon

SERVERS = Path(__file__).parent / "echo_servers.py"

EVERY_FRAMING = [
    Framing(),
    Framing("delimiter", delimiter=b"\r\n"),
    Framing("delimiter", delimiter=b"\x1e"),
    Framing("length"),
    Framing("length", length_bytes=1, byte_order="little"),
    Framing("length", length_bytes=2, length_includes_header=True),
    Framing("varint"),
    Framing("fixed", frame_size=16),
    Framing("raw"),
]


@pytest.mark.parametrize("framing", EVERY_FRAMING, ids=lambda f: f.describe())
async def test_triodaemon_passes_in_every_framing(
    echo_server_factory: EchoServerFactory, framing: Framing
) -> None:
    server = await echo_server_factory(framing)
    with trio.fail_after(60):
        report = await run_check(server.unix, framing, timeout=3)
    assert report.passed, report.table()
    assert [result.name for result in report.results] == list(SCENARIOS)


async def test_tcp_too_and_a_chosen_scenario(echo_server_factory: EchoServerFactory) -> None:
    server = await echo_server_factory(Framing("length"))
    with trio.fail_after(30):
        report = await run_check(server.tcp, Framing("length"), scenarios=["split", "concurrency"])
    assert [(r.name, r.passed) for r in report.results] == [("split", True), ("concurrency", True)]


async def test_unreachable_server_is_one_clear_error(sock_dir: Path) -> None:
    with pytest.raises(ClientError, match="cannot connect to unix:"):
        await run_check(UnixAddress(str(sock_dir / "nobody.sock")))


@asynccontextmanager
async def stdlib_server(mode: str, framing: str = "line") -> AsyncIterator[TcpAddress]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(SERVERS), mode, "--framing", framing], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(15):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the server exited before listening"
                line += chunk
        yield TcpAddress("127.0.0.1", int(line.split()[-1]))
    finally:
        process.kill()
        await process.wait()


async def check_cli(address: TcpAddress, *args: str) -> tuple[int, dict[str, dict[str, object]]]:
    with trio.fail_after(120):
        result = await run_triodaemon(
            "check", "--tcp", f"127.0.0.1:{address.port}", "--timeout", "1", "--json", *args
        )
    report = json.loads(result.stdout)
    return result.returncode, {s["name"]: s for s in report["scenarios"]}


@pytest.mark.parametrize("framing", ["line", "length"])
async def test_stdlib_echo_server_passes(framing: str) -> None:
    async with stdlib_server("good", framing) as address:
        code, scenarios = await check_cli(address, "--framing", framing)
    assert code == 0
    assert all(s["passed"] for s in scenarios.values())


async def test_dropping_partial_tails_is_caught() -> None:
    async with stdlib_server("drop-tail") as address:
        code, scenarios = await check_cli(address)
    assert code == 1
    assert scenarios["one-frame"]["passed"]
    assert scenarios["coalesced"]["passed"]
    for name in ("byte-by-byte", "split"):
        assert not scenarios[name]["passed"]
        assert "drop the partial tail of a read" in str(scenarios[name]["detail"])
    assert "split at byte" in str(scenarios["split"]["detail"])


@pytest.mark.parametrize("framing", ["line", "length"])
async def test_one_read_one_message_is_caught(framing: str) -> None:
    async with stdlib_server("one-read-one-message", framing) as address:
        code, scenarios = await check_cli(address, "--framing", framing)
    assert code == 1
    assert scenarios["one-frame"]["passed"]
    coalesced = scenarios["coalesced"]
    assert not coalesced["passed"]
    assert "answer each read with one message and drop the rest" in str(coalesced["detail"])
    assert str(coalesced["sent"]).startswith("64 frames, ")
    assert "in one write" in str(coalesced["sent"])


async def test_losing_the_last_frame_at_eof_is_caught() -> None:
    async with stdlib_server("lose-last-at-eof") as address:
        code, scenarios = await check_cli(address)
    assert code == 1
    failed = [name for name, s in scenarios.items() if not s["passed"]]
    assert failed == ["half-close"]
    assert "(2 of 3 frames)" in str(scenarios["half-close"]["detail"])
    assert "the last frame never came back" in str(scenarios["half-close"]["detail"])


async def test_check_cli_table_against_the_daemon(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(60):
        daemon = await spawn("--sock", str(sock_dir / "e.sock"), "--framing", "varint")
        await daemon.wait_ready(1)
        result = await run_triodaemon(
            "check", "--sock", str(sock_dir / "e.sock"), "--framing", "varint"
        )
        daemon.signal()
        assert await daemon.wait() == 0
    assert result.returncode == 0, result.stdout.decode()
    table = result.stdout.decode().splitlines()
    assert (
        table[0] == f"triodaemon check unix:{sock_dir / 'e.sock'} (varint, max frame 1048576 bytes)"
    )
    assert table[-1] == "10 scenarios: 10 passed, 0 failed"
    assert any(line.startswith("split ") and " pass " in line for line in table)


async def test_check_cli_unreachable_is_one_line(sock_dir: Path) -> None:
    with trio.fail_after(30):
        result = await run_triodaemon("check", "--sock", str(sock_dir / "none.sock"))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"triodaemon: error: cannot connect to unix:{sock_dir / 'none.sock'}: no such file or directory"
    ]
