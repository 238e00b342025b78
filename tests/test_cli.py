"""The command line as a real subprocess: readiness, hygiene, errors, signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from triodaemon import ClientError, Framing, TcpAddress, UnixAddress, connect
from triodaemon.testing import echo_frames

from .conftest import DaemonProcess, SpawnFn, daemon_process, read_until_eof, run_triodaemon

#: A bound on every test here, so a hang fails instead of stalling the run.
TEST_TIMEOUT = 60


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "triodaemon", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )


async def start_daemon(spawn: SpawnFn, sock_dir: Path, *args: str) -> DaemonProcess:
    daemon = await spawn(
        "--tcp", "127.0.0.1:0", "--sock", str(sock_dir / "echo.sock"), "--log-level", "debug", *args
    )
    await daemon.wait_ready(2)
    return daemon


async def test_readiness_echo_and_sigterm(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir)
        tcp, unix = daemon.addresses
        assert isinstance(tcp, TcpAddress)
        assert unix == UnixAddress(str(sock_dir / "echo.sock"))
        assert any(f"listening on tcp://127.0.0.1:{tcp.port}" in line for line in daemon.lines)
        assert stat.S_IMODE(os.lstat(sock_dir / "echo.sock").st_mode) == 0o600
        for address in (tcp, unix):
            assert await echo_frames(address, [b"one", b"two"]) == [b"one", b"two"]
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert not (sock_dir / "echo.sock").exists()
        # The clients may still be closing at the signal: drained, not aborted.
        line = await daemon.wait_for_line("shutdown complete: ")
        assert line.endswith("drained, 0 aborted at the deadline")
        assert "Traceback" not in daemon.stderr


async def test_console_script_and_client_subcommand(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--framing", "length")
        tcp = daemon.addresses[0]
        assert isinstance(tcp, TcpAddress)
        result = await run_triodaemon(
            "client",
            "--tcp",
            f"127.0.0.1:{tcp.port}",
            "--framing",
            "length",
            stdin=b"a\nbb\n\nccc\n",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"a\nbb\n\nccc\n"
        result = await run_triodaemon(
            "client",
            "--sock",
            str(sock_dir / "echo.sock"),
            "--framing",
            "length",
            "--send",
            "ping",
            "--count",
            "3",
            "--interval",
            "0.01",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"ping\nping\nping\n"
        daemon.signal(signal.SIGINT)
        assert await daemon.wait() == 0


async def test_client_reports_a_refused_connection(sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        result = await run_triodaemon(
            "client", "--sock", str(sock_dir / "none.sock"), "--send", "x"
        )
        assert result.returncode == 1
        assert result.stderr.decode().splitlines() == [
            f"triodaemon: error: cannot connect to unix:{sock_dir / 'none.sock'}: no such file or directory"
        ]


async def test_stale_socket_is_replaced_and_live_one_refused(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        path = sock_dir / "echo.sock"
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        stale.close()
        first = await spawn("--sock", str(path))
        await first.wait_ready(1)
        await first.wait_for_line(f"removed stale socket file {path}")
        second = await spawn("--sock", str(path))
        assert await second.wait() == 1
        assert second.lines == [
            f"triodaemon: error: another process is listening on {path}; stop it or choose another path"
        ]
        assert await echo_frames(UnixAddress(str(path)), [b"still first"]) == [b"still first"]
        first.signal(signal.SIGTERM)
        assert await first.wait() == 0


async def test_many_daemons_started_at_once_on_one_path(spawn: SpawnFn, sock_dir: Path) -> None:
    """Exactly one serves; the others refuse with the usual line and remove nothing."""
    with trio.fail_after(TEST_TIMEOUT):
        path = sock_dir / "echo.sock"
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))  # every starter finds a stale file to probe and remove
        stale.close()
        daemons = [await spawn("--sock", str(path)) for _ in range(8)]
        serving: list[DaemonProcess] = []
        for daemon in daemons:
            first = await daemon.wait_for_line("triodaemon: ")
            if first.startswith("triodaemon: listening on "):
                serving.append(daemon)
            else:
                assert await daemon.wait() == 1
                assert daemon.lines == [
                    f"triodaemon: error: another process is listening on {path}; "
                    "stop it or choose another path"
                ]
        [server] = serving
        assert await echo_frames(UnixAddress(str(path)), [b"the one"]) == [b"the one"]
        assert sorted(p.name for p in sock_dir.iterdir()) == ["echo.sock"]
        server.signal(signal.SIGTERM)
        assert await server.wait() == 0
        assert list(sock_dir.iterdir()) == []


async def test_sigquit_drains_too(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir)
        daemon.signal(signal.SIGQUIT)
        assert await daemon.wait() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--sock", "{dir}/data.txt"],
            "{dir}/data.txt exists and is not a socket (a regular file); refusing to replace it",
        ),
        (["--sock", "{dir}/" + "x" * 110], "bytes; the limit is 107: choose a shorter path"),
        (["--sock", "{dir}/missing/e.sock"], "directory {dir}/missing does not exist"),
        (["--tcp", "no-such-host.invalid:0"], "cannot resolve host 'no-such-host.invalid'"),
    ],
)
async def test_unusable_addresses_are_one_line_and_exit_1(
    sock_dir: Path, args: list[str], message: str
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        (sock_dir / "data.txt").write_text("keep me")
        result = await run_triodaemon(*(arg.format(dir=sock_dir) for arg in args))
        assert result.returncode == 1
        [line] = result.stderr.decode().splitlines()
        assert line.startswith("triodaemon: error: ")
        assert message.format(dir=sock_dir) in line
        assert (sock_dir / "data.txt").read_text() == "keep me"


@pytest.mark.parametrize("flag", ["--sock-group", "--control-group"])
@pytest.mark.parametrize(
    ("group", "message"),
    [
        ("99999999999", "group id 99999999999 is out of range: a group id is 0 to 4294967294"),
        ("4294967296", "group id 4294967296 is out of range"),
        # chown's "leave the group unchanged": not a group a file can be given.
        ("4294967295", "(4294967295 means 'leave the group as it is' to chown)"),
        ("no-such-group-here", "no such group: 'no-such-group-here'"),
    ],
)
async def test_a_group_that_cannot_be_is_refused_before_any_file_is_touched(
    sock_dir: Path, flag: str, group: str, message: str
) -> None:
    """A stale socket file is still there afterwards: the value was checked first."""
    with trio.fail_after(TEST_TIMEOUT):
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(sock_dir / "echo.sock"))
        stale.close()  # (bound, never listening: what a killed daemon leaves)
        result = await run_triodaemon(
            "--sock", str(sock_dir / "echo.sock"), "--control", str(sock_dir / "c.sock"),
            flag, group,
        )  # fmt: skip
        assert result.returncode == 2
        [line] = result.stderr.decode().splitlines()
        assert line.startswith(f"triodaemon: error: argument {flag}: ")
        assert message in line
        assert (sock_dir / "echo.sock").is_socket()


async def test_every_socket_path_is_checked_before_any_file_is_touched(sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(sock_dir / "echo.sock"))
        stale.close()
        for later in (["--sock", f"{sock_dir}/missing/b.sock"], ["--control", "/nowhere/c.sock"]):
            result = await run_triodaemon("--sock", str(sock_dir / "echo.sock"), *later)
            assert result.returncode == 1
            [line] = result.stderr.decode().splitlines()
            assert "does not exist" in line
            assert (sock_dir / "echo.sock").is_socket()


@pytest.mark.parametrize("which", ["--sock", "--control"])
async def test_a_fifo_at_the_lock_path_is_one_line_not_a_hang(sock_dir: Path, which: str) -> None:
    """Anyone who may create files beside the socket (in /tmp: anyone) can make a FIFO
    at ``PATH.lock``; opening it must neither block nor be taken for a lock."""
    with trio.fail_after(TEST_TIMEOUT):
        path = sock_dir / "x.sock"
        os.mkfifo(f"{path}.lock")
        args = ["--sock", str(path)] if which == "--sock" else ["--tcp", "127.0.0.1:0"]
        if which == "--control":
            args += ["--control", str(path)]
        result = await run_triodaemon(*args, timeout=20)
        assert result.returncode == 1
        assert result.stderr.decode().splitlines() == [
            f"triodaemon: error: cannot use lock file {path}.lock: it is a FIFO, not a "
            "regular file (made by someone else?); remove it"
        ]
        assert sorted(os.listdir(sock_dir)) == ["x.sock.lock"]


async def test_a_path_cannot_break_a_line_or_forge_one(sock_dir: Path) -> None:
    """Scripts wait for the readiness lines, and read errors as one line."""
    forged = "e\ntriodaemon: listening on tcp:192.0.2.1:9\x1b[2J"  # (no "/": one name)
    with trio.fail_after(TEST_TIMEOUT):
        async with daemon_process(
            [sys.executable, "-m", "triodaemon", "--sock", str(sock_dir / forged)]
        ) as daemon:
            await daemon.wait_ready(1)
            daemon.signal()
            assert await daemon.wait() == 0
        assert [line for line in daemon.lines if "listening on" in line] == [
            f"triodaemon: listening on unix:{sock_dir}/e\\ntriodaemon: listening on "
            "tcp:192.0.2.1:9\\x1b[2J"
        ]
        result = await run_triodaemon("--sock", str(sock_dir / "missing" / forged))
        assert result.returncode == 1
        [line] = result.stderr.decode().splitlines()
        assert line.startswith(f"triodaemon: error: cannot create {sock_dir}/missing/e\\n")


async def test_directory_without_permission(sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        if os.geteuid() == 0:
            target = "/sys/kernel/td.sock"  # not even root may create files here
        else:
            (sock_dir / "locked").mkdir(mode=0o500)
            target = str(sock_dir / "locked" / "td.sock")
        result = await run_triodaemon("--sock", target)
        assert result.returncode == 1
        [line] = result.stderr.decode().splitlines()
        assert "no permission to write in" in line


async def test_port_in_use_names_the_port() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = await run_triodaemon("--tcp", f"127.0.0.1:{port}")
        assert result.returncode == 1
        assert result.stderr.decode().splitlines() == [
            f"triodaemon: error: tcp port {port} is already in use (127.0.0.1:{port}); "
            "stop the other process or choose another port"
        ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to listen on"),
        (["--tcp", "8000"], "expected [HOST]:PORT"),
        (["--tcp", ":99999"], "above 65535"),
        (["--sock", "/tmp/x", "--max-frame", "lots"], "is not a size"),
        (["--sock", "/tmp/x", "--max-connections", "0"], "must be at least 1"),
        (["--sock", "/tmp/x", "--idle-timeout", "-1"], "0 or more"),
        (["--sock", "/tmp/x", "--sock-mode", "999"], "octal mode"),
        (["--sock", "/tmp/x", "--framing", "json"], "invalid choice"),
        (["--sock", "/tmp/x", "--delimiter", r"\q"], "unknown escape"),
        (["--sock", "/tmp/x", "--framing", "fixed"], "needs --frame-size"),
        (["--sock", "/tmp/x", "--length-bytes", "2"], "apply to --framing length"),
        (
            ["--sock", "/tmp/x", "--framing", "fixed", "--frame-size", "2M"],
            "exceeds the frame limit",
        ),
        (["--bogus"], "unrecognized arguments"),
        (["--sock", "/tmp/x", "--sock", "/tmp/x"], "unix:/tmp/x is given twice"),
        (
            ["--sock", "/tmp/x", "--sock", "/tmp/./x"],
            "unix:/tmp/./x is given twice (as unix:/tmp/x)",
        ),
        (["--sock", "/tmp/x", "--control", "/tmp//x"], "is both a listener and the control socket"),
        (
            ["--sock", "/tmp/x", "--max-frame", "9" * 30],
            "is too large: at most 9223372036854775807",
        ),
        (
            ["--sock", "/tmp/x", "--max-frame", "16MiB", "--max-buffered", "8MiB"],
            "the frame limit (16777216 bytes) is above the limit of what all connections",
        ),
        (["--sock", "/tmp/x", "--handover-fd", "99"], "--handover-fd 99: not a socket this"),
        (["--sock", "/tmp/x", "--worker", "1", "--inherit", "1"], "--inherit 1: not a socket"),
        (["--sock", "/tmp/x", "--frame-size", "a\nb"], r"'a\nb' is not a size"),
        (["--sock", ""], "argument --sock: the path is empty"),
        (["--sock", "/tmp/x", "--control", ""], "argument --control: the path is empty"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    [line] = result.stderr.decode().splitlines()
    assert message in line
    assert line.startswith("triodaemon: error: ")


def test_help_lists_the_subcommands_in_its_usage() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    usage = result.stdout.decode().split("\n\n", 1)[0]
    assert usage.startswith("usage: triodaemon [serve] ")
    for command in ("client", "check", "bench"):
        assert f"triodaemon {command} " in usage


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.decode().startswith("triodaemon 0.")


async def test_sigterm_closes_an_idle_connection_at_once(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--drain-timeout", "60")
        stream = await connect(daemon.addresses[0])
        await stream.send_all(b"hello\n")
        assert await stream.receive_some() == b"hello\n"
        daemon.signal(signal.SIGTERM)
        with trio.fail_after(5):  # well under the 60 s deadline
            assert await read_until_eof(stream) == b""
        await stream.aclose()
        assert await daemon.wait() == 0
        await daemon.wait_for_line("1 connection drained, 0 aborted")


async def test_sigterm_with_an_idle_client_that_stays_exits_at_once_and_drains_it(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    # Nothing is owed to a client that has read every reply: no lingering for its
    # EOF, so a drain deadline under the linger time still counts it drained.
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--drain-timeout", "0.5")
        clients = [await connect(address) for address in daemon.addresses]
        for client in clients:
            await client.send_all(b"hello\n")
            assert await client.receive_some() == b"hello\n"
        start = trio.current_time()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert trio.current_time() - start < 0.5
        await daemon.wait_for_line("2 connections drained, 0 aborted")
        for client in clients:
            await client.aclose()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_a_framing_violator_is_cut_off_within_a_bounded_number_of_bytes(
    spawn: SpawnFn, sock_dir: Path, transport: str
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--max-frame", "1KiB")
        address = daemon.addresses[0 if transport == "tcp" else 1]
        violator = await connect(address)
        sent = 0
        try:
            while sent < 200_000_000:
                await violator.send_all(b"v" * 65536)
                sent += 65536
        except trio.BrokenResourceError:
            pass
        await violator.aclose()
        await daemon.wait_for_line("frames are limited to 1024 bytes; closing")
        daemon.signal(signal.SIGUSR1)
        line = await daemon.wait_for_line("stats: ")
        taken = int(line.split("bytes in")[0].rsplit(";", 1)[1])
        # The read that found the violation, the discard cap, and reads in flight;
        # and what the client got into the kernel's buffers before the reset.
        assert taken < 2_000_000, line
        assert sent < 4_000_000, sent
        daemon.signal()
        assert await daemon.wait() == 0


class PipeliningClient:
    """Frames of ``size`` bytes with ``depth`` of them in flight, until the server
    closes: how it ends (``eof`` or ``reset``), and what it sent and got back."""

    def __init__(self, depth: int, size: int) -> None:
        self.depth = depth
        self.size = size
        self.sent = self.echoed = 0
        self.ended: str | None = None
        self.going = trio.Event()  # 20 echoes are back

    async def run(self, stream: trio.SocketStream) -> None:
        room = trio.Semaphore(self.depth)
        async with stream, trio.open_nursery() as nursery:

            async def send() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while True:
                        await room.acquire()
                        frame = b"frame %d " % self.sent
                        await stream.send_all(frame.ljust(self.size - 1, b"x") + b"\n")
                        self.sent += 1

            nursery.start_soon(send)
            buffer = b""
            try:
                while data := await stream.receive_some():
                    buffer += data
                    lines = buffer.count(b"\n")
                    buffer = buffer[buffer.rfind(b"\n") + 1 :] if lines else buffer
                    self.echoed += lines
                    for _ in range(lines):
                        room.release()
                    if self.echoed >= 20:
                        self.going.set()
                self.ended = "eof"
            except trio.BrokenResourceError:
                self.ended = "reset"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("size", [16, 200_000])
@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_a_drain_ends_pipelining_clients_with_our_eof_not_a_reset(
    spawn: SpawnFn, sock_dir: Path, workers: str, transport: str, size: int
) -> None:
    """A pipelining client sends until it reads our EOF (the rest of a large frame
    too): closing with those bytes unread would make the kernel reset, which its
    read reports in place of the EOF."""
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--workers", workers, "--log-level", "info")
        address = daemon.addresses[0 if transport == "tcp" else 1]
        clients = [PipeliningClient(depth=4, size=size) for _ in range(30 if size < 1000 else 10)]
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.run, await connect(address))
            for client in clients:
                await client.going.wait()
            daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    assert [client.ended for client in clients] == ["eof"] * len(clients)
    for client in clients:
        # Every frame the daemon read was answered; the ones in flight at its EOF were not read.
        assert client.echoed >= 20
        assert client.sent - client.echoed <= client.depth


async def test_frame_timeout_closes_a_trickling_client_and_frees_its_slot(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(
            spawn, sock_dir, "--frame-timeout", "0.5", "--max-connections", "1"
        )
        trickler = await connect(daemon.addresses[0])
        start = trio.current_time()

        async def trickle() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                while True:
                    await trickler.send_all(b"x")  # progress, but never a frame
                    await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            assert await read_until_eof(trickler) == b""
            assert 0.5 <= trio.current_time() - start < 3
            nursery.cancel_scope.cancel()
        await daemon.wait_for_line("frame not complete after 0.5s")
        legit = await connect(daemon.addresses[1])  # the slot is free again
        await legit.send_all(b"hello\n")
        assert await legit.receive_some() == b"hello\n"
        await legit.aclose()
        await trickler.aclose()
        daemon.signal()
        assert await daemon.wait() == 0


async def test_sigterm_lets_a_frame_in_progress_finish(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        framing = Framing("length")
        wire = framing.encode(b"finish me please")
        daemon = await start_daemon(spawn, sock_dir, "--framing", "length")
        stream = await connect(daemon.addresses[1])
        await stream.send_all(wire[:9])
        await daemon.wait_until_received(9)  # a frame in progress when the drain comes
        daemon.signal(signal.SIGTERM)
        await daemon.wait_for_line("draining 1 connection")
        with pytest.raises(ClientError):
            await connect(daemon.addresses[0])  # listeners are closed at once
        await stream.send_all(wire[9:])
        assert await read_until_eof(stream) == wire
        await stream.aclose()
        assert await daemon.wait() == 0
        await daemon.wait_for_line("1 connection drained, 0 aborted")


async def test_drain_deadline_aborts_a_client_that_never_reads(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--drain-timeout", "0.5")
        stream = await connect(daemon.addresses[0])
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                with trio.move_on_after(20):
                    try:
                        while True:
                            await stream.send_all(b"z" * 65535 + b"\n")
                    except trio.BrokenResourceError:
                        return  # the daemon cancelled us at its deadline
                raise AssertionError("the daemon never cut the flood off")

            nursery.start_soon(flood)
            # The daemon owes replies the client will never read: stuck in a send.
            await daemon.wait_for_line("bytes of replies wait for the peer to read")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait() == 0
        await stream.aclose()
        await daemon.wait_for_line("0 connections drained, 1 aborted at the deadline")


async def test_second_signal_stops_at_once(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(
            spawn, sock_dir, "--drain-timeout", "600", "--framing", "length"
        )
        stream = await connect(daemon.addresses[0])
        await stream.send_all(b"\x00\x00\x01\x00never finished")
        await daemon.wait_until_received(18)  # a frame in progress when the drain comes
        daemon.signal(signal.SIGTERM)
        await daemon.wait_for_line("draining 1 connection")
        daemon.signal(signal.SIGINT)
        assert await daemon.wait() == 1
        await daemon.wait_for_line("received SIGINT again: stopping now")
        assert await read_until_eof(stream) == b""
        await stream.aclose()
        assert not (sock_dir / "echo.sock").exists()
        assert "Traceback" not in daemon.stderr


async def test_sock_mode_and_group(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        path = sock_dir / "shared.sock"
        daemon = await spawn(
            "--sock", str(path), "--sock-mode", "0660", "--sock-group", str(os.getgid())
        )
        await daemon.wait_ready(1)
        st = path.lstat()
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == os.getgid()
        daemon.signal()
        assert await daemon.wait() == 0


async def test_oversized_frames_and_resets_harm_no_one(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--max-frame", "64")
        tcp = daemon.addresses[0]
        assert isinstance(tcp, TcpAddress)
        bystander = await connect(daemon.addresses[1])
        await bystander.send_all(b"before\n")
        assert await bystander.receive_some() == b"before\n"
        greedy = await connect(tcp)
        await greedy.send_all(b"ok\n" + b"x" * 100)
        assert await read_until_eof(greedy) == b"ok\n"
        await greedy.aclose()
        await daemon.wait_for_line(
            "100 bytes without a delimiter; frames are limited to 64 bytes; closing"
        )
        rude = socket.create_connection((tcp.host, tcp.port))
        rude.sendall(b"half a fr")
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        rude.close()  # a reset in the middle of a frame
        await daemon.wait_for_line("conn 3 ")
        await bystander.send_all(b"after\n")
        assert await bystander.receive_some() == b"after\n"
        await bystander.aclose()
        daemon.signal()
        assert await daemon.wait() == 0
        assert "Traceback" not in daemon.stderr


async def test_half_close_gets_every_echo_then_eof(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir)
        for address in daemon.addresses:
            stream = await connect(address)
            await stream.send_all(b"a\nb\npartial")
            await stream.send_eof()
            assert await read_until_eof(stream) == b"a\nb\n"
            await stream.aclose()
        await daemon.wait_for_line("peer closed mid-frame (7 bytes without a delimiter); discarded")
        daemon.signal()
        assert await daemon.wait() == 0


async def test_idle_timeout(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--idle-timeout", "0.3")
        stream = await connect(daemon.addresses[1])
        await stream.send_all(b"then silence\n")
        assert await read_until_eof(stream) == b"then silence\n"
        await stream.aclose()
        await daemon.wait_for_line("idle for 0.3s; closing")
        daemon.signal()
        assert await daemon.wait() == 0


async def test_max_connections(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--max-connections", "1")
        first = await connect(daemon.addresses[0])
        await first.send_all(b"1\n")
        assert await first.receive_some() == b"1\n"
        second = await connect(daemon.addresses[1])  # accepted by the kernel only
        await second.send_all(b"2\n")
        await daemon.wait_for_line("connection limit (1) reached")
        await first.send_all(b"1 again\n")
        assert await first.receive_some() == b"1 again\n"
        assert not any("conn 2 " in line for line in daemon.lines)
        await first.aclose()
        assert await second.receive_some() == b"2\n"
        await second.aclose()
        daemon.signal()
        assert await daemon.wait() == 0


async def test_thousand_concurrent_connections(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir, "--log-level", "info")
        streams: list[trio.SocketStream] = []
        try:
            for index in range(1000):
                stream = await connect(daemon.addresses[index % 2])
                streams.append(stream)
                await stream.send_all(b"%d-" % index)
            # Every connection is open and mid-frame; now finish all the frames.
            for stream in streams:
                await stream.send_all(b"done\n")
            for index, stream in enumerate(streams):
                expected = b"%d-done\n" % index
                received = b""
                with trio.fail_after(20):
                    while len(received) < len(expected):
                        received += await stream.receive_some()
                assert received == expected
        finally:
            for stream in streams:
                await stream.aclose()
        daemon.signal()
        assert await daemon.wait() == 0
        assert "Traceback" not in daemon.stderr


async def test_client_stops_cleanly_when_stdout_closes(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start_daemon(spawn, sock_dir)
        lines = b"".join(b"%d\n" % n for n in range(100_000))
        client = await trio.lowlevel.open_process(
            [sys.executable, "-m", "triodaemon", "client", "--sock", str(sock_dir / "echo.sock")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert client.stdin is not None
        assert client.stdout is not None
        assert client.stderr is not None
        async with trio.open_nursery() as nursery:

            async def feed() -> None:
                assert client.stdin is not None
                try:
                    await client.stdin.send_all(lines)
                    await client.stdin.aclose()
                except trio.BrokenResourceError:
                    pass  # the client stopped reading: that is the point

            nursery.start_soon(feed)
            first = await client.stdout.receive_some(2)
            assert first == b"0\n"
            await client.stdout.aclose()  # like `| head -1`
            errors = b""
            while chunk := await client.stderr.receive_some():
                errors += chunk
            assert await client.wait() == 1
        assert errors.decode().splitlines() == ["triodaemon: error: standard output was closed"]
        daemon.signal()
        assert await daemon.wait() == 0
