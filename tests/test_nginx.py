"""nginx in front of triodaemon: the configurations in examples/nginx/, run for real.

Each test starts its own nginx (Debian's, with the stream module; .ci/run installs
it) as a foreground process with a temporary prefix, on a loopback port, and its
own triodaemons on Unix sockets in a temporary directory. The examples are used as
they are, with only their socket directory and port replaced.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from triodaemon import Framing, TcpAddress, connect

from .conftest import DaemonProcess, SpawnFn, daemon_process, free_port, run_triodaemon

TEST_TIMEOUT = 60
EXAMPLES = Path(__file__).parent.parent / "examples" / "nginx"
NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)),
    None,
)

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is missing: .ci/run installs it")


def _stream_module() -> str:
    """The directive that gives this nginx its stream module, if it is a loadable one."""
    assert NGINX is not None
    built = subprocess.run([NGINX, "-V"], capture_output=True, text=True, check=True).stderr
    if "--with-stream=dynamic" not in built:
        return ""  # built in (or absent, and nginx -t says so)
    found = re.search(r"--modules-path=(\S+)", built)
    modules = Path(found.group(1) if found else "/usr/lib/nginx/modules")
    return f"load_module {modules / 'ngx_stream_module.so'};"


def _worker_group() -> str | None:
    """The group of the user nginx's workers run as, when they switch user (as root)."""
    if os.geteuid() != 0:
        return None  # the workers run as us, and our sockets are ours
    return grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for the daemons' sockets that nginx's worker user can enter
    (mode 0711: through it, never list it), as /run/triodaemon/ is 0755."""
    with tempfile.TemporaryDirectory(prefix="td-", dir="/tmp") as name:
        os.chmod(name, 0o711)
        yield Path(name)


def _daemon_args(socket_dir: Path, name: str) -> list[str]:
    """A daemon on SOCKET_DIR/NAME that nginx's workers may connect to: mode 0660, and
    the socket's group the workers' group, as triodaemon.socket does it."""
    args = ["--sock", str(socket_dir / name), "--sock-mode", "0660", "--log-level", "debug"]
    group = _worker_group()
    return args if group is None else [*args, "--sock-group", group]


def _render(example: str, socket_dir: Path, port: int) -> str:
    text = (EXAMPLES / example).read_text()
    assert "/run/triodaemon/" in text
    assert "127.0.0.1:7000" in text
    return text.replace("/run/triodaemon/", f"{socket_dir}/").replace(
        "127.0.0.1:7000", f"127.0.0.1:{port}"
    )


def _main_config(prefix: Path, include: Path) -> str:
    group = _worker_group()
    return "\n".join(
        [
            _stream_module(),
            f"user nobody {group};" if group else "",
            "daemon off;",
            f"pid {prefix / 'nginx.pid'};",
            "error_log stderr info;",
            "events {}",
            f"include {include};",
            "",
        ]
    )


@asynccontextmanager
async def nginx(tmp_path: Path, example: str, socket_dir: Path) -> AsyncIterator[TcpAddress]:
    """nginx with ``example`` (its addresses replaced), serving; stopped with SIGTERM."""
    assert NGINX is not None
    port = free_port()
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    (prefix / example).write_text(_render(example, socket_dir, port))
    (prefix / "nginx.conf").write_text(_main_config(prefix, prefix / example))
    async with daemon_process([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]) as proc:
        # The master binds the port before it starts workers; a connection made
        # before a worker accepts waits in the backlog.
        try:
            await proc.wait_for_line("start worker process")
            yield TcpAddress("127.0.0.1", port)
        finally:
            # Whatever happened: a killed master would leave its workers behind.
            proc.signal(signal.SIGTERM)
            with trio.CancelScope(shield=True), trio.fail_after(10):
                await proc.process.wait()


async def test_the_examples_pass_nginx_t_as_they_are(tmp_path: Path) -> None:
    assert NGINX is not None
    examples = (
        "triodaemon-proxy.conf",
        "triodaemon-balance.conf",
        "triodaemon-proxy-protocol.conf",
    )
    for example in examples:
        conf = tmp_path / f"test-{example}"
        conf.write_text(_main_config(tmp_path, EXAMPLES / example))
        result = await trio.run_process(
            [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        output = result.stderr.decode()
        assert result.returncode == 0, output
        assert "[warn]" not in output, output


@pytest.mark.parametrize("framing", ["line", "length"])
async def test_check_passes_through_the_proxy(
    spawn: SpawnFn, socket_dir: Path, tmp_path: Path, framing: str
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(*_daemon_args(socket_dir, "echo.sock"), "--framing", framing)
        await daemon.wait_ready(1)
        async with nginx(tmp_path, "triodaemon-proxy.conf", socket_dir) as proxy:
            result = await run_triodaemon(
                "check", "--tcp", f"{proxy.host}:{proxy.port}", "--framing", framing
            )
        report = result.stdout.decode()
        assert result.returncode == 0, report + result.stderr.decode()
        assert re.search(r"(\d+) scenarios: \1 passed, 0 failed", report), report
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_a_stopped_daemon_loses_nothing_and_the_other_takes_new_connections(
    spawn: SpawnFn, socket_dir: Path, tmp_path: Path
) -> None:
    framing = Framing("length")
    first, second = framing.encode(b"first"), framing.encode(b"in flight at the stop")
    with trio.fail_after(TEST_TIMEOUT):
        a = await spawn(*_daemon_args(socket_dir, "echo-a.sock"), "--framing", "length")
        b = await spawn(*_daemon_args(socket_dir, "echo-b.sock"), "--framing", "length")
        await a.wait_ready(1)
        await b.wait_ready(1)
        async with nginx(tmp_path, "triodaemon-balance.conf", socket_dir) as proxy:
            # Two conversations: least_conn gives each daemon one.
            streams = [await connect(proxy), await connect(proxy)]
            try:
                for stream in streams:
                    await stream.send_all(first)
                    assert await _receive(stream, len(first)) == first
                await a.wait_for_line("accepted")
                await b.wait_for_line("accepted")
                for stream in streams:
                    await stream.send_all(second[:5])  # both mid-frame
                await a.wait_until_received(len(first) + 5)
                a.signal(signal.SIGTERM)
                await a.wait_for_line("listeners closed")
                for stream in streams:
                    await stream.send_all(second[5:])
                    assert await _receive(stream, len(second)) == second  # none lost
                # A's conversation ends after its echo; B's goes on.
                third = framing.encode(b"after the stop")
                outcomes = []
                for stream in streams:
                    await stream.send_all(third)
                    outcomes.append(await read_until_eof_or(stream, third))
                assert sorted(outcomes) == [b"", third]
                assert await a.wait() == 0
                assert "1 connection drained, 0 aborted" in a.stderr

                # New connections: all to B (A's socket is gone; nginx tries the next).
                before = _accepted(b)
                for i in range(10):
                    with trio.fail_after(10):
                        stream = await connect(proxy)
                        async with stream:
                            frame = framing.encode(b"new %d" % i)
                            await stream.send_all(frame)
                            assert await _receive(stream, len(frame)) == frame
                await b.wait_until_received(0)  # its log is up to date
                assert _accepted(b) == before + 10, b.stderr
            finally:
                for stream in streams:
                    await stream.aclose()
        b.signal(signal.SIGTERM)
        assert await b.wait() == 0
    assert "Traceback" not in a.stderr + b.stderr


def _accepted(daemon: DaemonProcess) -> int:
    """How many connections the daemon has logged as accepted (at debug level)."""
    return sum(line.endswith(": accepted") for line in daemon.lines)


async def _receive(stream: trio.SocketStream, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data


async def read_until_eof_or(stream: trio.SocketStream, expected: bytes) -> bytes:
    """``expected`` once it has all come back, or what came before an EOF."""
    data = b""
    while data != expected:
        chunk = await stream.receive_some()
        if not chunk:
            return data
        data += chunk
    return data
