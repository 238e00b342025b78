"""A short run of the fuzz suite, so the long one (documented in the README) cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_fuzz_suite_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "fuzz", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={**os.environ, "FUZZ_EXAMPLES": "40"},
        capture_output=True,
        timeout=300,
        check=False,
    )
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert "18 passed" in output
