"""Without epoll (macOS, the BSDs): the daemon, its command line and the pytest plugin.

trio itself needs its own backend (kqueue there, epoll here), so these tests take
epoll away from triodaemon only: its readiness module sees a ``select`` without
``epoll``, and its lingering close an OS that will not say what is unacknowledged.
Nothing else in the package may touch epoll (checked below), so that is the
whole difference a system without it makes.
"""

from __future__ import annotations

import re
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from triodaemon import connect

from .conftest import daemon_process, read_until_eof

PACKAGE = Path(__file__).resolve().parent.parent / "triodaemon"

#: Python run before triodaemon loads in the processes below: epoll is gone.
WITHOUT_EPOLL = textwrap.dedent(
    """
    import select, types
    import triodaemon._lowlevel.readiness as readiness
    import triodaemon._lowlevel.sockets as sockets

    readiness.select = types.SimpleNamespace(
        **{name: getattr(select, name) for name in dir(select) if "poll" not in name.lower()}
    )
    sockets._SIOCOUTQ = None
    assert readiness.open_readiness().name == "portable"
    """
)


def test_only_the_readiness_module_touches_epoll() -> None:
    users = sorted(
        path.name
        for path in PACKAGE.rglob("*.py")
        if re.search(r"\bepoll\(|EPOLL", path.read_text())
    )
    assert users == ["readiness.py"]


async def test_the_command_line_serves_and_drains_without_epoll(tmp_path: Path) -> None:
    script = tmp_path / "triodaemon_without_epoll.py"
    script.write_text(WITHOUT_EPOLL + "from triodaemon.__main__ import main_entry\nmain_entry()\n")
    sock = tmp_path / "e.sock"
    command = [sys.executable, str(script), "--tcp", "127.0.0.1:0", "--sock", str(sock)]
    with trio.fail_after(20):
        async with daemon_process(command, env={"TRIODAEMON_READINESS": ""}) as daemon:
            addresses = await daemon.wait_ready(2)
            streams = [await connect(address) for address in addresses]
            for stream in streams:
                await stream.send_all(b"no epoll here\n")
                assert await stream.receive_some() == b"no epoll here\n"
            daemon.signal(signal.SIGTERM)
            for stream in streams:
                assert await read_until_eof(stream) == b""
                await stream.aclose()
            assert await daemon.wait() == 0
    assert "2 connections drained, 0 aborted" in daemon.stderr
    assert not sock.exists()


def test_the_pytest_plugin_runs_without_epoll(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(WITHOUT_EPOLL)
    pytester.copy_example(str(PACKAGE.parent / "examples" / "test_with_triodaemon.py"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7)
