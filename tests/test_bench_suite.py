"""A smoke run of the benchmark suite (bench/run.py), so the harness cannot rot.

It builds the C load generator and the Go peer, runs S3 (length framing) and a
small S5 (line framing, 200 idle connections, one active) over both transports
for a fraction of a second against triodaemon and every peer, and checks that
every server was measured without errors, and its memory per idle connection
too. No figure is asserted.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
#: The peers issue 4 names, written out here rather than taken from bench/run.py:
#: a peer dropped from the suite must fail this test.
SERVERS = {
    "triodaemon",
    "trio-tutorial",
    "asyncio-streams",
    "asyncio-protocol",
    "asyncio-streams+uvloop",
    "asyncio-protocol+uvloop",
    "twisted",
    "go-bufio",
}


def quick_run(*args: str) -> str:
    """``bench/run.py --quick ARGS`` over both transports; its output, once it succeeded."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--transports",
            "tcp,unix",
            *args,
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_bench_suite_smoke() -> None:
    output = quick_run("--scenarios", "s3,s5", "--idle", "200")
    for heading in ("S3 over tcp", "S3 over unix"):
        assert f"### {heading}: 50 conns" in output
    for heading in ("S5 over tcp", "S5 over unix"):
        assert f"### {heading}: scale: 200 idle conns held open" in output
    *tables, transports = output.split("### ")[1:]
    assert len(tables) == 4
    # The last table: Unix socket against TCP, one ratio per server and scenario.
    assert transports.startswith("Unix socket against TCP")
    ratios = [line for line in transports.splitlines() if line.startswith("| ")][2:]
    assert {row.split("|")[1].strip() for row in ratios} == SERVERS
    assert all(cell.strip().endswith("x") for row in ratios for cell in row.split("|")[2:-1])
    for table in tables:
        lines = [line for line in table.splitlines() if line.startswith("| ")]
        header, rows = lines[0], lines[2:]
        assert {row.split("|")[1].strip() for row in rows} == SERVERS
        errors_column = header.split("|").index(" errors ")
        assert all(row.split("|")[errors_column].strip() == "0" for row in rows), table
        assert all("| 1.00x |" in row for row in rows if row.startswith("| triodaemon "))
        if table.startswith("S5"):
            # Memory per idle connection: measured (a number), for every server.
            assert header.rstrip().endswith("| KiB per idle conn |")
            assert not any(math.isnan(float(row.split("|")[-2])) for row in rows)


def test_trio_floor_smoke() -> None:
    # Not in the default set: the floor any trio server stands on (bench/peers/trio_floor.py).
    lines = quick_run("--servers", "triodaemon,trio-floor", "--scenarios", "s1,s3").splitlines()
    # Its rows of the four scenario tables (the tables of ratios have fewer columns).
    rows = [line for line in lines if line.startswith("| trio-floor ") and line.count("|") == 11]
    assert len(rows) == 4
    assert all(row.split("|")[-2].strip() == "0" for row in rows), rows  # errors


def test_accept_balance_smoke() -> None:
    """bench/accept_balance.py runs, and a shared socket loses no queued connection
    when a worker exits (the reason --workers shares its sockets)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "accept_balance.py"), "--connections", "50"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    rows = {
        line.split("|")[1].strip(): line
        for line in result.stdout.decode().splitlines()
        if line.startswith("| shared") or line.startswith("| reuseport")
    }
    assert set(rows) == {"shared", "reuseport"}
    assert "lost" not in rows["shared"]


def test_upgrade_latency_smoke() -> None:
    """bench/upgrade.py runs: conversations across upgrades, every echo checked, and
    the last process carries every conversation on."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "upgrade.py"),
            *("--upgrades", "2", "--interval", "0.3", "--conns", "2", "--json"),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    report = json.loads(result.stdout)
    assert report["errors"] == []
    assert report["taken_over_last"] == 2
    assert report["during_upgrades"]["frames"] > 0
    assert report["baseline"]["frames"] > 0


def test_rolling_restart_smoke() -> None:
    """bench/rolling.py runs: a rolling restart of two daemons under pipelining
    clients, every echo checked; the server ends connections with its EOF, never a
    reset, and a client loses at most the frames it had in flight."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "rolling.py"),
            *("--clients", "4", "--depth", "4", "--interval", "0.4", "--json"),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    report = json.loads(result.stdout)
    assert report["errors"] == []
    assert report["echoed"] > 0
    assert report["server_reset"] == 0
    assert report["server_eof"] >= 2  # (each restart ends at least one conversation)
    assert report["lost"] <= 4 * report["server_eof"]
