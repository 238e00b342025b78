"""systemd's notify protocol, against a datagram socket the test binds as NOTIFY_SOCKET."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from triodaemon import Framing, TcpAddress, UnixAddress, connect
from triodaemon._systemd import STATUS_INTERVAL, Notifier, activated_sockets

from .conftest import DaemonProcess, SpawnFn, daemon_process, read_until_eof

TEST_TIMEOUT = 30


class NotifySocket:
    """A bound datagram socket collecting what the daemon sends, message by message."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.messages: list[tuple[float, list[str]]] = []

    async def next(self) -> list[str]:
        data = await self.sock.recv(65536)
        fields = data.decode().split("\n")
        self.messages.append((trio.current_time(), fields))
        return fields

    async def wait_for(self, field: str) -> list[str]:
        """Read messages until one has a field starting with ``field``; return it."""
        while True:
            fields = await self.next()
            if any(f.startswith(field) for f in fields):
                return fields


@asynccontextmanager
async def notify_socket(address: str) -> AsyncIterator[NotifySocket]:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind("\0" + address[1:] if address.startswith("@") else address)
        yield NotifySocket(sock)


async def test_ready_status_stopping_extensions_and_watchdog(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    path = str(sock_dir / "notify")
    framing = Framing("length")
    wire = framing.encode(b"a frame in progress")
    with trio.fail_after(TEST_TIMEOUT):
        async with notify_socket(path) as notify:
            daemon = await spawn(
                "--sock",
                str(sock_dir / "e.sock"),
                "--framing",
                "length",
                "--drain-timeout",
                "3",
                env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"},
            )
            first = await notify.next()
            assert first in (["READY=1", "STATUS=serving"], ["WATCHDOG=1"])
            if first == ["WATCHDOG=1"]:
                assert await notify.wait_for("READY=1") == ["READY=1", "STATUS=serving"]
            [address] = await daemon.wait_ready(1)
            stream = await connect(address)
            await stream.send_all(wire[:5])
            status = await notify.wait_for("STATUS=serving 1 connection")
            assert status[0].endswith("frames/s")
            pings = [at for at, fields in notify.messages if fields == ["WATCHDOG=1"]]
            # Every 0.1 s (half of WATCHDOG_USEC), over the status interval.
            assert len(pings) >= STATUS_INTERVAL / 0.1 * 0.6, pings
            daemon.signal(signal.SIGTERM)
            assert await notify.wait_for("STOPPING=1") == [
                "STOPPING=1",
                "STATUS=draining 1 connection",
            ]
            extend = await notify.wait_for("EXTEND_TIMEOUT_USEC=")
            assert 2_000_000 < int(extend[0].split("=")[1]) <= 3_000_000
            extend = await notify.wait_for("EXTEND_TIMEOUT_USEC=")  # again a second later
            await stream.send_all(wire[5:])  # the drain holds: the frame completes
            assert await read_until_eof(stream) == wire
            await stream.aclose()
            assert await daemon.wait() == 0


async def test_an_abstract_notify_socket(spawn: SpawnFn, sock_dir: Path) -> None:
    address = f"@triodaemon-test-{os.getpid()}-{id(sock_dir)}"
    with trio.fail_after(TEST_TIMEOUT):
        async with notify_socket(address) as notify:
            daemon = await spawn("--sock", str(sock_dir / "e.sock"), env={"NOTIFY_SOCKET": address})
            assert await notify.next() == ["READY=1", "STATUS=serving"]
            daemon.signal(signal.SIGTERM)
            assert (await notify.next())[0] == "STOPPING=1"
            assert await daemon.wait() == 0


def test_the_environment_is_read_once_and_removed() -> None:
    environ = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "OTHER": "kept",
    }
    notifier = Notifier.from_environment(environ)
    try:
        assert (notifier.address, notifier.watchdog) == ("/run/systemd/notify", 30.0)
        assert environ == {"OTHER": "kept"}
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("pid", "usec", "expected"),
    [("1", "30000000", None), ("", "30000000", 30.0), ("", "0", None), ("", "soon", None)],
)
def test_the_watchdog_is_ours_only_when_systemd_says_so(
    pid: str, usec: str, expected: float | None
) -> None:
    environ = {"WATCHDOG_USEC": usec, **({"WATCHDOG_PID": pid} if pid else {})}
    notifier = Notifier.from_environment(environ)
    assert notifier.watchdog == expected
    assert not notifier.enabled  # no NOTIFY_SOCKET: nothing is sent


def test_a_notify_socket_that_is_gone_does_not_harm_the_daemon(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    try:
        notifier.send("READY=1")  # ENOENT: logged at debug, not raised
    finally:
        notifier.close()


# -- socket activation, with Debian's systemd-socket-activate ---------------------

ACTIVATE = shutil.which("systemd-socket-activate")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def activated(
    sock_dir: Path, *args: str, names: str = "echo-tcp:echo-unix"
) -> AsyncIterator[tuple[DaemonProcess, TcpAddress, UnixAddress]]:
    """triodaemon under systemd-socket-activate, with a TCP and a Unix socket.

    systemd-socket-activate binds both, waits for a first connection, then starts
    triodaemon with them as descriptors 3 and 4 (LISTEN_FDS, LISTEN_PID).
    """
    assert ACTIVATE is not None
    tcp = TcpAddress("127.0.0.1", free_port())
    unix = UnixAddress(str(sock_dir / "activated.sock"))
    command = [
        ACTIVATE,
        *("-l", f"{tcp.host}:{tcp.port}", "-l", unix.path, f"--fdname={names}"),
        *(sys.executable, "-m", "triodaemon", "--log-level", "debug", *args),
    ]
    async with daemon_process(command) as daemon:
        # Both sockets are bound and listening once it says so for the last one.
        await daemon.wait_for_line(f"Listening on {unix.path} as 4.")
        yield daemon, tcp, unix


needs_activate = pytest.mark.skipif(
    ACTIVATE is None, reason="systemd-socket-activate is missing: .ci/run installs systemd"
)


@needs_activate
async def test_socket_activation_serves_both_passed_sockets(sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with activated(sock_dir) as (daemon, tcp, unix):
            # The first connection starts the daemon; it waits in the backlog.
            first = await connect(tcp)
            await first.send_all(b"via tcp\n")
            assert await first.receive_some() == b"via tcp\n"
            lines = [line for line in daemon.lines if "listening on" in line]
            assert lines == [
                f"triodaemon: listening on {tcp} (systemd socket echo-tcp)",
                f"triodaemon: listening on {unix} (systemd socket echo-unix)",
            ]
            second = await connect(unix)
            await second.send_all(b"via unix\n")
            assert await second.receive_some() == b"via unix\n"
            await first.aclose()
            await second.aclose()
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait() == 0
    # systemd owns the socket file: the daemon never removed it.
    assert Path(unix.path).exists()
    assert "Traceback" not in daemon.stderr


@needs_activate
async def test_a_drain_under_activation_finishes_the_frame_in_progress(sock_dir: Path) -> None:
    framing = Framing("length")
    wire = framing.encode(b"a frame in progress")
    with trio.fail_after(TEST_TIMEOUT):
        async with activated(sock_dir, "--framing", "length") as (daemon, tcp, _):
            stream = await connect(tcp)
            await stream.send_all(wire[:6])
            await daemon.wait_for_line("accepted")  # the daemon runs (and holds signals)
            await daemon.wait_until_received(6)  # a frame in progress when the drain comes
            daemon.signal(signal.SIGTERM)
            await daemon.wait_for_line("shutting down")
            await stream.send_all(wire[6:])
            assert await read_until_eof(stream) == wire
            await stream.aclose()
            assert await daemon.wait() == 0
    assert "1 connection drained, 0 aborted" in daemon.stderr


async def test_a_passed_descriptor_that_is_not_a_listening_socket_is_one_line(
    tmp_path: Path,
) -> None:
    # A connected (not listening) socket as fd 3, as a wrong .socket unit would pass.
    script = tmp_path / "pass.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, socket, sys
            a, b = socket.socketpair()
            os.dup2(os.dup(b.fileno()), 3)  # inheritable, whatever fds the pair got
            os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="wrong")
            pid = os.fork()
            if pid == 0:
                os.environ["LISTEN_PID"] = str(os.getpid())
                os.execv(sys.executable, [sys.executable, "-m", "triodaemon"])
            _, status = os.waitpid(pid, 0)
            sys.exit(os.waitstatus_to_exitcode(status))
            """
        )
    )
    result = await trio.run_process(
        [sys.executable, str(script)], capture_stderr=True, check=False, pass_fds=()
    )
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "triodaemon: error: systemd socket wrong (fd 3) is not a listening stream socket: "
        "use ListenStream= in the .socket unit"
    )


def test_activation_is_only_for_the_process_it_names() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    assert activated_sockets(environ) == []
    assert environ == {"OTHER": "x"}  # removed all the same


# -- the journal ----------------------------------------------------------------------


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "other-stream"])
async def test_log_lines_carry_syslog_priorities_when_stderr_is_the_journal(
    sock_dir: Path, journal: bool
) -> None:
    # The journal tells a service its stderr is the journal by JOURNAL_STREAM=DEV:INODE.
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    stream = f"{st.st_dev}:{st.st_ino}" if journal else f"{st.st_dev}:{st.st_ino + 1}"
    process = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "triodaemon", "--sock", str(sock_dir / "e.sock")),
            *("--log-level", "debug", "--max-frame", "8"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "JOURNAL_STREAM": stream},
    )
    os.close(write_end)
    daemon = DaemonProcess(process, trio.lowlevel.FdStream(read_end))
    try:
        with trio.fail_after(TEST_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(daemon._collect)
                [address] = await daemon.wait_ready(1)
                client = await connect(address)
                await client.send_all(b"x" * 20)  # over --max-frame: a warning
                assert await read_until_eof(client) == b""
                await client.aclose()
                await daemon.wait_for_line("frames are limited to 8 bytes")
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    logged = [line for line in daemon.lines if not line.startswith("triodaemon: ")]
    if journal:
        assert any(line.startswith("<7>conn 1 ") and "accepted" in line for line in logged)
        assert any(line.startswith("<4>conn 1 ") and "limited to 8" in line for line in logged)
        assert any(line.startswith("<6>shutdown complete") for line in logged)
        assert all(line[:1] == "<" for line in logged), logged  # and no timestamps
    else:
        assert all(line[:4].isdigit() and " triodaemon " in line for line in logged), logged


async def test_an_error_line_to_the_journal_is_priority_3(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    with trio.fail_after(TEST_TIMEOUT):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "triodaemon", "--sock", str(tmp_path / "no" / "dir.sock")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=write_end,
            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
        )
        os.close(write_end)
        assert await process.wait() == 1
        output = await read_until_eof(trio.lowlevel.FdStream(read_end))
    assert output.decode().startswith("<3>triodaemon: error: "), output
