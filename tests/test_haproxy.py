"""HAProxy in front of triodaemon: examples/haproxy/haproxy.cfg, run for real.

Each test starts its own HAProxy (Debian's; .ci/run installs it) in the foreground
(``-W -db``: a master and one worker, no pidfile), on a loopback port, in front of
its own two triodaemons with ``--proxy-protocol`` on Unix sockets in a temporary
directory. The example is used as it is, with its socket directory (the daemons'
sockets and HAProxy's stats socket) and port replaced, and its syslog target made
stderr, which the test reads.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from triodaemon import TcpAddress, UnixAddress, connect

from . import test_nginx
from .conftest import DaemonProcess, SpawnFn, daemon_process, free_port, run_triodaemon
from .test_nginx import _receive

TEST_TIMEOUT = 60
EXAMPLE = Path(__file__).parent.parent / "examples" / "haproxy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or next(
    (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(path, os.X_OK)),
    None,
)

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is missing: .ci/run installs it")

#: A directory for the sockets that HAProxy's user can pass through (0711).
socket_dir = test_nginx.socket_dir

#: The example's syslog target; the tests log to stderr instead (no syslog here).
_SYSLOG = "log /dev/log local0"


def _user_lines(text: str) -> list[str]:
    """The example's ``user`` and ``group`` lines (of its global section)."""
    return [line for line in text.splitlines() if re.match(r"\s+(user|group) ", line)]


def _haproxy_group() -> str | None:
    """The group HAProxy's worker runs as (it drops root for the example's ``user``
    and ``group``), or None when we are not root and those lines are left out."""
    if os.geteuid() != 0:
        return None
    group = next(line.split()[1] for line in _user_lines(EXAMPLE.read_text()) if "group" in line)
    return group


#: The agent ports of each test's daemons, by socket directory (one per test).
_AGENT_PORTS: dict[Path, dict[str, int]] = {}


def agent_port(socket_dir: Path, name: str) -> int:
    """The port daemon ``name`` answers HAProxy's agent check on (the example's 7101
    and 7102, replaced by free ones)."""
    ports = _AGENT_PORTS.setdefault(socket_dir, {})
    if name not in ports:
        ports[name] = free_port()
    return ports[name]


def _render(socket_dir: Path, port: int) -> str:
    """The example with its addresses replaced: the daemons' sockets and the stats
    socket in ``socket_dir``, the frontend on ``port``, the agent ports, the log on
    stderr; without ``user``/``group`` when we are not root (a non-root HAProxy
    cannot switch)."""
    text = EXAMPLE.read_text()
    expected = ("/run/triodaemon/", "/run/haproxy/", "127.0.0.1:7000", _SYSLOG)
    for needed in (*expected, "agent-port 7101", "agent-port 7102"):
        assert needed in text, needed
    text = (
        text.replace("/run/triodaemon/", f"{socket_dir}/")
        .replace("/run/haproxy/", f"{socket_dir}/")
        .replace("127.0.0.1:7000", f"127.0.0.1:{port}")
        .replace("agent-port 7101", f"agent-port {agent_port(socket_dir, 'a')}")
        .replace("agent-port 7102", f"agent-port {agent_port(socket_dir, 'b')}")
        .replace(_SYSLOG, "log stderr format short local0")
    )
    if _haproxy_group() is None:
        text = "\n".join(line for line in text.splitlines() if line not in _user_lines(text))
    return text + "\n"


@attrs.frozen
class Balancer:
    """A running HAProxy and where to reach it."""

    address: TcpAddress
    stats: UnixAddress
    process: DaemonProcess


@asynccontextmanager
async def haproxy(tmp_path: Path, socket_dir: Path) -> AsyncIterator[Balancer]:
    """HAProxy with the example (its addresses replaced), serving; stopped with SIGTERM."""
    assert HAPROXY is not None
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(_render(socket_dir, port))
    async with daemon_process([HAPROXY, "-W", "-db", "-f", str(config)]) as proc:
        try:
            # The master binds the port, forks the worker and says this once the
            # worker runs: a connection made from here on is served.
            await proc.wait_for_line("Loading success.")
            address = TcpAddress("127.0.0.1", port)
            stream = await connect(address)
            await stream.aclose()
            yield Balancer(address, UnixAddress(str(socket_dir / "admin.sock")), proc)
        finally:
            # SIGTERM to the master: it stops its worker at once and exits.
            proc.signal(signal.SIGTERM)
            with trio.CancelScope(shield=True), trio.fail_after(10):
                await proc.process.wait()


async def _daemons(spawn: SpawnFn, socket_dir: Path, drain_delay: float = 0) -> list[DaemonProcess]:
    """The example's two daemons, with --proxy-protocol, the agent check (and
    ``drain_delay``), and control sockets (``ctl-a.sock``, ``ctl-b.sock``); their
    sockets' group is HAProxy's."""
    group = _haproxy_group()
    daemons = []
    for name in ("a", "b"):
        args = ["--sock", str(socket_dir / f"echo-{name}.sock"), "--sock-mode", "0660"]
        args += ["--control", str(socket_dir / f"ctl-{name}.sock"), "--log-level", "debug"]
        args += ["--proxy-protocol", "--agent", f"127.0.0.1:{agent_port(socket_dir, name)}"]
        args += ["--drain-delay", str(drain_delay)]
        daemons.append(await spawn(*args, *(["--sock-group", group] if group else [])))
    for daemon in daemons:
        await daemon.wait_ready(1)
    return daemons


async def _stop(daemons: list[DaemonProcess]) -> None:
    for daemon in daemons:
        daemon.signal(signal.SIGTERM)
    for daemon in daemons:
        assert await daemon.wait() == 0, daemon.stderr
        assert "Traceback" not in daemon.stderr


async def _connections(socket_dir: Path, name: str) -> list[dict[str, object]]:
    """``triodaemon ctl connections --json`` of daemon ``name``."""
    control = str(socket_dir / f"ctl-{name}.sock")
    result = await run_triodaemon("ctl", "--control", control, "connections", "--json")
    assert result.returncode == 0, result.stderr.decode()
    connections: list[dict[str, object]] = json.loads(result.stdout)
    return connections


async def _show_stat(stats: UnixAddress) -> dict[str, dict[str, str]]:
    """HAProxy's ``show stat``, one row per server of the backend, by server name."""
    stream = await connect(stats)
    async with stream:
        await stream.send_all(b"show stat\n")
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
    rows = csv.DictReader(reply.decode().removeprefix("# ").splitlines())
    return {row["svname"]: row for row in rows if row["pxname"] == "triodaemons"}


async def test_the_example_passes_haproxy_c_as_it_is_and_rendered(tmp_path: Path) -> None:
    assert HAPROXY is not None
    rendered = tmp_path / "haproxy.cfg"
    rendered.write_text(_render(Path("/tmp/td-sockets"), 7001))
    with trio.fail_after(TEST_TIMEOUT):
        for config in (EXAMPLE, rendered):
            result = await trio.run_process(
                [HAPROXY, "-c", "-f", str(config)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            output = result.stdout.decode() + result.stderr.decode()
            assert result.returncode == 0, output
            assert "Configuration file is valid" in output, output
            assert "[WARNING]" not in output, output
            assert "[ALERT]" not in output, output


async def test_the_harness_starts_and_stops_haproxy(tmp_path: Path, socket_dir: Path) -> None:
    """No daemons: HAProxy still starts (its checks fail), and exits on SIGTERM."""
    with trio.fail_after(TEST_TIMEOUT):
        async with haproxy(tmp_path, socket_dir) as balancer:
            pass
        assert balancer.process.process.returncode is not None
        assert not list(tmp_path.glob("*.pid"))


async def test_frames_are_echoed_byte_for_byte_through_haproxy(
    spawn: SpawnFn, socket_dir: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemons = await _daemons(spawn, socket_dir)
        async with haproxy(tmp_path, socket_dir) as balancer:

            async def conversation(n: int) -> None:
                # Every byte value but the delimiter, frames of 0 to 40,000 bytes,
                # all sent before any echo is read.
                frames = [
                    bytes((n + i + j) % 255 + (((n + i + j) % 255) >= 10) for j in range(size))
                    for i, size in enumerate((0, 1, 5, 100, 4096, 40_000, 3))
                ]
                sent = b"".join(frame + b"\n" for frame in frames)
                stream = await connect(balancer.address)
                async with stream:
                    await stream.send_all(sent)
                    assert await _receive(stream, len(sent)) == sent

            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(conversation, n)
        await _stop(daemons)


async def test_the_client_check_passes_through_haproxy(
    spawn: SpawnFn, socket_dir: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemons = await _daemons(spawn, socket_dir)
        async with haproxy(tmp_path, socket_dir) as balancer:
            address = balancer.address
            result = await run_triodaemon("check", "--tcp", f"{address.host}:{address.port}")
        report = result.stdout.decode()
        assert result.returncode == 0, report + result.stderr.decode()
        assert re.search(r"(\d+) scenarios: \1 passed, 0 failed", report), report
        await _stop(daemons)


async def test_the_daemons_see_the_clients_own_address(
    spawn: SpawnFn, socket_dir: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemons = await _daemons(spawn, socket_dir)
        async with haproxy(tmp_path, socket_dir) as balancer:
            # Two open at once; whichever daemons serve them (that both serve is
            # test_health_checks_pass_and_log_no_error's), each sees its client.
            streams: list[trio.SocketStream] = []
            try:
                ports = []
                for _ in range(2):
                    stream = await connect(balancer.address)
                    streams.append(stream)
                    await stream.send_all(b"who am I\n")
                    assert await _receive(stream, 9) == b"who am I\n"
                    ports.append(stream.socket.getsockname()[1])
                peers: dict[str, dict[str, object]] = {}
                for name in ("a", "b"):
                    for connection in await _connections(socket_dir, name):
                        peers[str(connection["peer"])] = {**connection, "daemon": name}
                for port in ports:
                    connection = peers[f"127.0.0.1:{port}"]
                    assert connection["proxy"], connection  # HAProxy's end
            finally:
                for stream in streams:
                    await stream.aclose()
        await _stop(daemons)
    log = "\n".join(daemon.stderr for daemon in daemons)
    for port in ports:
        assert re.search(rf"conn \d+ from 127\.0\.0\.1:{port} via .*: PROXY v2 header", log), log


async def test_health_checks_pass_and_log_no_error(
    spawn: SpawnFn, socket_dir: Path, tmp_path: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemons = await _daemons(spawn, socket_dir)
        async with haproxy(tmp_path, socket_dir) as balancer:
            # No client yet: whatever connects is a health check (a v2 LOCAL header,
            # then an echoed line). HAProxy has its result once it hangs up.
            for daemon in daemons:
                await daemon.wait_for_line(": closed")
            servers = await _show_stat(balancer.stats)
            for name in ("a", "b"):
                assert servers[name]["status"] == "UP", servers[name]
                assert servers[name]["check_status"] == "L7OK", servers[name]
            for n in range(6):
                stream = await connect(balancer.address)
                async with stream:
                    await stream.send_all(b"client %d\n" % n)
                    assert await _receive(stream, 9) == b"client %d\n" % n
            servers = await _show_stat(balancer.stats)
            assert all(int(servers[name]["lbtot"]) > 0 for name in ("a", "b")), servers
        assert "is DOWN" not in balancer.process.stderr, balancer.process.stderr
        await _stop(daemons)
    for daemon in daemons:
        problems = [line for line in daemon.lines if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]
        assert not problems, daemon.stderr
        # A header read is logged at debug level; anything else about PROXY is a problem.
        assert not [line for line in daemon.lines if "PROXY" in line and " DEBUG " not in line]


async def test_a_stopped_daemons_connections_go_to_the_other(
    spawn: SpawnFn, socket_dir: Path, tmp_path: Path
) -> None:
    """``retries 1`` and ``option redispatch``: before any check has found daemon A
    gone, a connect to its missing socket is retried on B, and no client sees it."""
    with trio.fail_after(TEST_TIMEOUT):
        a, b = await _daemons(spawn, socket_dir)
        async with haproxy(tmp_path, socket_dir) as balancer:
            a.signal(signal.SIGTERM)
            assert await a.wait() == 0
            for n in range(10):
                stream = await connect(balancer.address)
                async with stream:
                    frame = b"after the stop %d\n" % n
                    await stream.send_all(frame)
                    assert await _receive(stream, len(frame)) == frame
        await _stop([b])
    assert "Traceback" not in a.stderr


async def test_a_drain_is_seen_by_haproxy_before_the_daemon_stops_accepting(
    spawn: SpawnFn, socket_dir: Path, tmp_path: Path
) -> None:
    """--agent and --drain-delay: after SIGTERM, daemon A's agent says drain and
    HAProxy sends it nothing new while it still accepts; then it drains, and no
    connect to it ever failed (no retry, no redispatch)."""
    with trio.fail_after(TEST_TIMEOUT):
        a, b = await _daemons(spawn, socket_dir, drain_delay=3)
        async with haproxy(tmp_path, socket_dir) as balancer:
            a.signal(signal.SIGTERM)
            await a.wait_for_line("the agent says drain from now on")
            await balancer.process.wait_for_line("Server triodaemons/a enters drain state")
            assert (socket_dir / "echo-a.sock").exists()  # (still accepting)
            before = await _show_stat(balancer.stats)
            for n in range(6):
                stream = await connect(balancer.address)
                async with stream:
                    frame = b"while a drains %d\n" % n
                    await stream.send_all(frame)
                    assert await _receive(stream, len(frame)) == frame
            after = await _show_stat(balancer.stats)
            assert after["a"]["lbtot"] == before["a"]["lbtot"], (before["a"], after["a"])
            assert int(after["b"]["lbtot"]) >= int(before["b"]["lbtot"]) + 6
            assert await a.wait() == 0
            stats = await _show_stat(balancer.stats)
            assert (stats["a"]["wretr"], stats["a"]["wredis"]) == ("0", "0"), stats["a"]
        await _stop([b])
    assert "the agent says drain" in a.stderr
