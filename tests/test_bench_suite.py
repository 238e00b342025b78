"""A smoke run of the benchmark suite (bench/run.py), so the harness cannot rot.

It builds the C load generator and the Go peer, runs two scenarios (line and
length framing) over both transports for a fraction of a second against
triodaemon and every peer, and checks that every server was measured without
errors. No figure is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
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


def test_bench_suite_smoke() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--scenarios",
            "s1,s3",
            "--transports",
            "tcp,unix",
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    output = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    for heading in ("S1 over tcp", "S1 over unix", "S3 over tcp", "S3 over unix"):
        assert f"### {heading}" in output
    rows = [line for line in output.splitlines() if line.startswith("| ") and "---" not in line]
    measured = [row for row in rows if not row.startswith("| server")]
    servers = {row.split("|")[1].strip() for row in measured}
    assert servers == SERVERS
    assert len(measured) == len(SERVERS) * 4  # every server x 2 scenarios x 2 transports
    assert all(row.rstrip().endswith("| 0 |") for row in measured)  # no errors
    assert all("| 1.00x |" in row for row in measured if row.startswith("| triodaemon "))
