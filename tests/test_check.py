"""`triodaemon check`: passes correct servers, catches each classic framing bug."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import trio

from triodaemon import ClientError, Framing, TcpAddress, UnixAddress
from triodaemon.testing import SCENARIOS, run_check
from triodaemon.testing.pytest_plugin import EchoServerFactory

from .conftest import SpawnFn, run_on_a_terminal, run_triodaemon

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


async def check_cli(
    address: TcpAddress, *args: str, timeout: float = 1, shrink: float = 3
) -> tuple[int, dict[str, dict[str, Any]]]:
    with trio.fail_after(120):
        result = await run_triodaemon(
            "check",
            "--tcp",
            f"127.0.0.1:{address.port}",
            "--timeout",
            str(timeout),
            "--shrink-time",
            str(shrink),
            "--json",
            *args,
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
    # Its late writes make it slow, too: the default time limit is enough for it.
    async with stdlib_server("lose-last-at-eof") as address:
        code, scenarios = await check_cli(address, timeout=5)
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
    assert table[0].startswith(
        f"triodaemon check unix:{sock_dir / 'e.sock'} (varint, max frame 1048576 bytes), seed "
    )
    assert table[-1] == "12 scenarios: 12 passed, 0 failed"
    # The whole battery, against a healthy server, in a few seconds (one of them is
    # slow-reader's pause): the scenario times, not Python's start.
    times = [float(line.split()[-1].rstrip("s")) for line in table[2:-1]]
    assert sum(times) < 8
    assert any(line.startswith("split ") and " pass " in line for line in table)


async def test_check_cli_unreachable_is_one_line(sock_dir: Path) -> None:
    with trio.fail_after(30):
        result = await run_triodaemon("check", "--sock", str(sock_dir / "none.sock"))
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"triodaemon: error: cannot connect to unix:{sock_dir / 'none.sock'}: no such file or directory"
    ]


# --- every bug named right ------------------------------------------------------------


@pytest.mark.parametrize("framing", ["line", "length"])
async def test_reordering_is_named_with_the_order(framing: str) -> None:
    async with stdlib_server("reorder", framing) as address:
        code, scenarios = await check_cli(
            address, "--framing", framing, "--scenario", "coalesced", "--scenario", "pipelining"
        )
    assert code == 1
    coalesced = scenarios["coalesced"]
    assert coalesced["kind"] == "reordered"
    assert "64 of them came back out of order" in coalesced["detail"]
    assert "frame 64 came back in place 1" in coalesced["detail"]
    assert "different from its byte" not in coalesced["detail"]
    minimal = coalesced["minimal"]
    assert len(minimal["case"]["frames"]) == 2  # the fewest frames that can be reordered
    assert "out of order" in minimal["detail"]
    assert scenarios["pipelining"]["kind"] == "reordered"
    assert scenarios["pipelining"]["shrink_note"] == (
        "the same kind of failure as coalesced: see its case"
    )


@pytest.mark.parametrize("framing", ["line", "length"])
async def test_truncation_is_named_with_its_size(framing: str) -> None:
    async with stdlib_server("truncate", framing) as address:
        code, scenarios = await check_cli(address, "--framing", framing)
    assert code == 1
    failed = {name: s for name, s in scenarios.items() if not s["passed"]}
    assert list(failed) == ["max-frame"]
    detail = failed["max-frame"]["detail"]
    assert failed["max-frame"]["kind"] == "truncated"
    assert "frames longer than 4096 bytes came back cut at 4096 bytes" in detail
    assert "nothing more for" in detail  # and how the exchange ended
    assert "each read for one message" not in detail
    [payload] = failed["max-frame"]["minimal"]["case"]["frames"]
    assert len(payload) // 2 > 4096  # (hex) still over the size that cuts


@pytest.mark.parametrize("framing", ["line", "length"])
async def test_skipped_empty_frames_are_named(framing: str) -> None:
    async with stdlib_server("skip-empty", framing) as address:
        code, scenarios = await check_cli(
            address, "--framing", framing, "--scenario", "edge-frames", "--scenario", "one-frame"
        )
    assert code == 1
    assert scenarios["one-frame"]["passed"]
    edge = scenarios["edge-frames"]
    assert edge["kind"] == "skipped-empty"
    what = "empty lines" if framing == "line" else "empty frames"
    assert f"exactly what was sent minus the 3 {what}" in edge["detail"]
    minimal = edge["minimal"]["case"]["frames"]
    assert minimal == ["", minimal[1]]  # an empty frame, then one that comes back


async def test_a_slow_server_is_slow_not_lossy() -> None:
    async with stdlib_server("slow") as address:
        code, scenarios = await check_cli(address, "--scenario", "pipelining", shrink=1)
    assert code == 1
    pipelining = scenarios["pipelining"]
    assert pipelining["kind"] == "slow"
    assert (
        "in order, and they were still arriving when the time limit ran out"
        in (pipelining["detail"])
    )
    assert re.search(r": [45]\.\d+ frames/s", pipelining["detail"])
    assert "--timeout" in pipelining["detail"]
    assert "never came back" not in pipelining["detail"]
    assert pipelining["minimal"] is None


@pytest.mark.parametrize("framing", ["line", "length"])
async def test_a_correct_server_with_latency_passes_at_the_defaults(framing: str) -> None:
    # 200 ms before every echo: split's 40-odd exchanges, one after another, would
    # need over 8 s; they are independent, so they overlap.
    async with stdlib_server("latency", framing) as address:
        with trio.fail_after(120):
            result = await run_triodaemon(
                "check", "--tcp", f"127.0.0.1:{address.port}", "--framing", framing, "--json"
            )
    report = json.loads(result.stdout)
    failed = {s["name"]: s["detail"] for s in report["scenarios"] if not s["passed"]}
    assert (result.returncode, failed) == (0, {})


async def test_the_textbook_threading_server_passes_despite_its_small_backlog() -> None:
    # Its listen backlog of 5 makes the kernel drop connects in a burst, which it
    # would send again only after 1 s, then 3 s: check tries again sooner.
    async with stdlib_server("socketserver") as address:
        for seed in (1, 2, 3):
            with trio.fail_after(60):
                report = await run_check(address, Framing(), seed=seed, shrink_time=0)
            assert report.passed, report.table()


async def test_rare_corruption_is_caught_by_the_sustained_scenario() -> None:
    async with stdlib_server("corrupt-rarely") as address:
        code, scenarios = await check_cli(address, shrink=1)
    assert code == 1
    failed = [name for name, s in scenarios.items() if not s["passed"]]
    assert failed == ["sustained"]  # no other scenario sends a thousand frames on one
    detail = scenarios["sustained"]["detail"]
    assert scenarios["sustained"]["kind"] == "corrupted"
    assert re.search(r"frame \d+ came back different from its byte \d+ on", detail)
    assert re.search(r"the other 1\d{3} came back intact", detail)


async def test_a_server_that_one_client_can_block_fails_resilience() -> None:
    async with stdlib_server("blocking-writes") as address:
        code, scenarios = await check_cli(address)
    assert code == 1
    failed = [name for name, s in scenarios.items() if not s["passed"]]
    assert failed == ["resilience"]
    detail = scenarios["resilience"]["detail"]
    assert detail.startswith("while a client that never reads its echoes keeps sending: ")
    assert "one client that does not read holds up the others" in detail
    assert scenarios["resilience"]["shrink_note"] == "it takes several clients at once"


async def test_a_server_that_dies_of_a_reset_fails_resilience() -> None:
    async with stdlib_server("crash-on-reset") as address:
        code, scenarios = await check_cli(address, "--scenario", "resilience")
    assert code == 1
    detail = scenarios["resilience"]["detail"]
    assert detail.startswith("after 5 clients reset their connections in the middle of a frame: ")
    assert "(a server that such clients harm fails this way)" in detail


# --- the smallest case, seeds, CI output, bounds --------------------------------------


async def test_the_smallest_case_replays_with_check_and_with_python(tmp_path: Path) -> None:
    async with stdlib_server("reorder") as address:
        code, scenarios = await check_cli(address, "--scenario", "coalesced")
        assert code == 1
        report = tmp_path / "report.json"
        report.write_text(json.dumps({"scenarios": list(scenarios.values())}))
        result = await run_triodaemon(
            "check", "--tcp", f"127.0.0.1:{address.port}", "--replay", str(report)
        )
        assert result.returncode == 1
        table = result.stdout.decode()
        assert re.search(r"coalesced +FAIL", table)
        assert "came back out of order" in table
        assert table.splitlines()[-1] == "1 scenario: 0 passed, 1 failed"
        snippet = tmp_path / "replay.py"
        snippet.write_text(scenarios["coalesced"]["minimal"]["python"])
        python = await trio.run_process(
            [sys.executable, str(snippet)], capture_stdout=True, check=False
        )
        assert python.stdout.decode().splitlines()[-1] == "DIFFERENT"
    first_port = address.port
    async with stdlib_server("good") as address:
        result = await run_triodaemon(
            "check", "--tcp", f"127.0.0.1:{address.port}", "--replay", str(report)
        )
        assert result.returncode == 0, result.stdout.decode()
        text = snippet.read_text()
        snippet.write_text(text.replace(f", {first_port})", f", {address.port})"))
        python = await trio.run_process(
            [sys.executable, str(snippet)], capture_stdout=True, check=False
        )
        assert python.stdout.decode().splitlines()[-1] == "same"
    result = await run_triodaemon("check", "--sock", "/nowhere", "--replay", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"triodaemon check: error: cannot replay {tmp_path / 'x'}: no such file or directory"
    ]
    result = await run_triodaemon(
        "check", "--sock", "/nowhere", "--replay", str(report), "--framing", "length"
    )
    assert result.returncode == 2
    assert "--framing cannot go with it" in result.stderr.decode()


async def test_a_seed_repeats_a_run() -> None:
    async with stdlib_server("corrupt-rarely") as address:
        runs = [
            await check_cli(address, "--scenario", "sustained", "--seed", "7", shrink=0)
            for _ in range(2)
        ]
    (code1, first), (code2, second) = runs
    assert code1 == code2 == 1
    assert first["sustained"]["detail"] == second["sustained"]["detail"]
    assert first["sustained"]["sent"] == second["sustained"]["sent"]
    assert first["sustained"]["shrink_note"] == "shrinking is off (--shrink-time 0)"


async def test_junit_xml_has_a_test_case_per_scenario(tmp_path: Path) -> None:
    path = tmp_path / "check.xml"
    async with stdlib_server("skip-empty") as address:
        code, scenarios = await check_cli(
            address,
            "--scenario",
            "one-frame",
            "--scenario",
            "edge-frames",
            "--junit-xml",
            str(path),
        )
    assert code == 1
    suite = ElementTree.parse(path).getroot()
    assert (suite.tag, suite.get("tests"), suite.get("failures")) == ("testsuite", "2", "1")
    one, edge = suite.findall("testcase")
    assert (one.get("name"), one.find("failure")) == ("one-frame", None)
    failure = edge.find("failure")
    assert failure is not None
    assert edge.get("name") == "edge-frames"
    assert failure.get("message") == scenarios["edge-frames"]["detail"]
    assert failure.get("type") == "skipped-empty"
    assert failure.text is not None
    assert "smallest failing case" in failure.text


async def test_a_whole_run_is_bounded_by_the_timeouts() -> None:
    """A server that never answers: every scenario waits its whole time limit, and the
    run ends within scenarios x --timeout + --shrink-time (plus Python's start)."""
    async with stdlib_server("mute") as address:
        start = trio.current_time()
        code, scenarios = await check_cli(address, timeout=0.5, shrink=1)
        took = trio.current_time() - start
    assert code == 1
    assert not any(s["passed"] for s in scenarios.values())
    assert took < len(scenarios) * 0.5 + 1 + 5


async def test_a_flooding_server_is_cut_off_and_the_run_stays_small_and_short() -> None:
    """A server that sends without end: each exchange keeps the echo's size and
    KEEP_BEYOND more, then stops reading; the run does not wait out its limits."""
    async with stdlib_server("flood") as address:
        with trio.fail_after(60):
            result = await run_triodaemon(
                "check", "--tcp", f"127.0.0.1:{address.port}", "--json", "--timeout", "5"
            )
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["scenarios"], report
    assert not any(s["passed"] for s in report["scenarios"])
    # Each exchange stopped reading at its bound (well under its time limit).
    assert all(s["seconds"] < 5 for s in report["scenarios"]), report["scenarios"]
    half_close = {s["name"]: s for s in report["scenarios"]}["half-close"]
    assert "the server went on sending" in half_close["detail"]
    size = int(half_close["received"].split()[0])
    assert 1 << 20 < size <= (1 << 20) + 1024


async def test_a_server_that_dies_of_the_last_scenario_does_not_pass() -> None:
    """It answers everything, then exits as the client that never read its echoes
    leaves: the last scenario's exchanges all passed, but a fresh connection after it
    is not served, and the report says so."""
    async with stdlib_server("die-after-unread") as address:
        code, scenarios = await check_cli(address, "--scenario", "resilience", timeout=5)
    assert code == 1
    resilience = scenarios["resilience"]
    assert not resilience["passed"]
    assert resilience["kind"] == "stopped"
    assert str(resilience["detail"]).startswith(
        "after the last scenario the server stopped answering: a fresh connection was "
        "not served one frame ("
    )


async def test_progress_shows_only_on_a_terminal_and_only_while_running(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(Framing())
    assert isinstance(server.unix, UnixAddress)
    args = ("check", "--sock", server.unix.path, "--scenario", "one-frame")
    piped = await run_triodaemon(*args)
    assert piped.returncode == 0
    assert piped.stderr.decode() == ""  # no progress in a log: the table says it all
    assert piped.stdout.decode().splitlines()[-1] == "1 scenario: 1 passed, 0 failed"
    # On a terminal: the table once, and no progress line left behind.
    code, output = await run_on_a_terminal(*args)
    assert code == 0
    text = output.decode()
    assert "one-frame: pass" not in text
    assert len(re.findall(r"one-frame +pass", text)) == 1
    assert "running one-frame" in text  # shown while it ran, then erased


async def test_a_server_that_does_not_read_stalls_the_client() -> None:
    async with stdlib_server("deaf") as address:
        code, scenarios = await check_cli(address, "--scenario", "max-frame", shrink=0)
    assert code == 1
    found = scenarios["max-frame"]
    assert found["kind"] == "stalled"
    written = re.search(r"the client could write only (\d+) of 1048577 bytes", found["detail"])
    assert written is not None
    # What the kernel took before the server's buffers filled (the deaf server's socket
    # buffers hold some), counted in pieces: not 0, as one whole write would say.
    assert 0 < int(written[1]) < 1048577
    assert "the server stopped reading" in found["detail"]
    assert found["shrink_note"] == "shrinking is off (--shrink-time 0)"


async def test_a_time_limit_shorter_than_the_writes_is_not_blamed_on_the_server(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(Framing())
    report = await run_check(server.unix, timeout=0.05, scenarios=["byte-by-byte"])
    [result] = report.results
    assert result.kind == "slow"
    assert "the time limit is too short for the scenario itself; raise --timeout" in result.detail
    assert result.minimal is None


async def test_a_connection_closed_after_many_frames_is_named_so() -> None:
    async with stdlib_server("close-after") as address:
        code, scenarios = await check_cli(address, "--scenario", "coalesced", timeout=5)
    assert code == 1
    found = scenarios["coalesced"]
    assert found["kind"] == "closed"
    assert found["detail"].endswith("the server closed the connection after 50 frames")


async def test_a_junit_path_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path,
) -> None:
    result = await run_triodaemon(
        "check", "--sock", "/nowhere", "--junit-xml", str(tmp_path / "no" / "x.xml")
    )
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"triodaemon check: error: cannot write {tmp_path / 'no' / 'x.xml'}: "
        f"no such directory: {tmp_path / 'no'}"
    ]
