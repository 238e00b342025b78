"""The control socket: the protocol in-process, and ``triodaemon ctl`` against real daemons."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from triodaemon import (
    AddressError,
    ClientError,
    DaemonConfig,
    Framing,
    UnixAddress,
    connect,
)
from triodaemon._cli._render import render_reply
from triodaemon._config import ProcessConfig
from triodaemon._control import (
    MAX_CLIENTS,
    MAX_REQUEST,
    REQUEST_TIMEOUT,
    SEND_TIMEOUT,
    ControlClient,
    open_control,
)
from triodaemon._lowlevel import Lowlevel, scans
from triodaemon._lowlevel.readiness import open_readiness
from triodaemon._process.roles import bind
from triodaemon.testing import echo_frames

from .conftest import (
    LockstepClient,
    LogWaiter,
    SpawnFn,
    giving,
    raw_exchange,
    read_until_eof,
    run_triodaemon,
    running,
)

TEST_TIMEOUT = 30


def config(sock_dir: Path, **kwargs: Any) -> ProcessConfig:
    return ProcessConfig(
        DaemonConfig([UnixAddress(str(sock_dir / "echo.sock"))], **kwargs),
        UnixAddress(str(sock_dir / "control.sock")),
    )


# -- the protocol, in-process ----------------------------------------------------


async def test_stats_and_connections_describe_what_is_going_on(sock_dir: Path) -> None:
    framing = Framing("length")
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir, framing=framing)) as (daemon, addresses):
            control = await open_control(str(sock_dir / "control.sock"))
            async with control.stream:
                stats = await control.request("stats")
                assert stats["pid"] == os.getpid()
                assert stats["state"] == "serving"
                assert stats["listeners"] == [{"address": str(addresses[0]), "accepting": True}]
                assert stats["control"] == f"unix:{sock_dir / 'control.sock'}"
                assert stats["connections"] == {
                    "open": 0,
                    "total": 0,
                    "taken_over": 0,
                    "handed_over": 0,
                }
                assert stats["limits"]["max_connections"] == 1024
                assert stats["drain"] is None
                assert await control.request("connections") == []

                assert await echo_frames(addresses[0], [b"one", b"two"], framing=framing) == [
                    b"one",
                    b"two",
                ]
                busy = await connect(addresses[0])
                async with busy:
                    await busy.send_all(framing.encode(b"three"))
                    assert await busy.receive_some() == framing.encode(b"three")
                    await busy.send_all(framing.encode(b"a frame in progress")[:6])
                    while daemon.buffered == 0:  # the daemon has read the partial frame
                        await trio.testing.wait_all_tasks_blocked()
                    (conn,) = await control.request("connections")
                    assert conn["id"] == 2
                    assert conn["peer"].startswith(f"pid {os.getpid()} uid ")
                    assert conn["listener"] == str(addresses[0])
                    assert conn["bytes_in"] == 9 + 6
                    assert conn["bytes_out"] == 9
                    assert conn["frames"] == 1
                    assert conn["state"] == "mid-frame"
                    assert conn["age"] >= 0
                    stats = await control.request("stats")
                    assert stats["connections"] == {
                        "open": 1,
                        "total": 2,
                        "taken_over": 0,
                        "handed_over": 0,
                    }
                    assert stats["frames"] == 3
                    assert stats["bytes_in"] == 7 + 7 + 9 + 6
                    assert stats["bytes_out"] == 7 + 7 + 9
                    assert stats["buffered"] == 6
                    assert stats["errors"]["framing"] == 0
                    json.dumps(stats)  # JSON-ready as it is


@pytest.mark.parametrize("chosen", ["given", "default"])
async def test_stats_say_what_runs_below_trio(sock_dir: Path, chosen: str) -> None:
    # The backend and the scans are chosen once per run, as one Lowlevel; a test (or
    # an embedding program) may give its own, and stats say which runs.
    lowlevel = Lowlevel(open_readiness("portable"), scans.PYTHON) if chosen == "given" else None
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir), lowlevel=lowlevel) as (daemon, addresses):
            control = await open_control(str(sock_dir / "control.sock"))
            async with control.stream:
                stats = await control.request("stats")
                assert await echo_frames(addresses[0], [b"one", b"two"]) == [b"one", b"two"]
                if chosen == "given":
                    assert scans.ACTIVE is scans.PYTHON  # (while the daemon serves)
    expected = (
        ("portable", "python") if chosen == "given" else (daemon.readiness, scans.ACTIVE.name)
    )
    assert (stats["readiness"], stats["scans"]) == expected
    assert stats["speedups"] == (expected[1] == "compiled")
    assert daemon.readiness == expected[0]


async def test_bad_requests_get_error_replies_and_the_connection_stays(sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with giving(config(sock_dir)):  # (its control socket answers takeover too)
            requests = [
                b"not json",
                b"[1, 2]",
                b'{"id": 1}',
                b'{"id": 2, "command": "reboot"}',
                b'{"id": 3, "command": "stats", "verbose": true}',
                b'{"id": 4, "command": "log-level"}',
                b'{"id": 5, "command": "log-level", "level": "loud"}',
                b'{"id": "six", "command": "help"}',
                b"\xff\xfe",
                b'{"id": 7, "command": "stats"}',
                '{"id": 8, "command": "stats"}'.encode("utf-16"),
                b'{"id": NaN, "command": "stats"}',
                b'{"id": 9, "command": 5}',
                b'{"id": 1e999, "command": "stats"}',
                b'{"id": 10, "command": "takeover", "versions": [true]}',
            ]
            replies = await raw_exchange(sock_dir / "control.sock", b"\n".join(requests) + b"\n")
            assert [(reply["id"], reply["ok"]) for reply in replies] == [
                (None, False),
                (None, False),
                (1, False),
                (2, False),
                (3, False),
                (4, False),
                (5, False),
                ("six", True),
                (None, False),
                (7, True),
                (None, False),
                (None, False),
                (9, False),
                (None, False),
                (10, False),
            ]
            errors = [str(reply.get("error")) for reply in replies]
            assert errors[0].startswith("not a JSON request: ")
            assert errors[1].startswith("a request is a JSON object")
            assert errors[2] == 'no "command" in the request: try {"command": "help"}'
            assert errors[3] == (
                "unknown command 'reboot': the commands are "
                "help, stats, connections, drain, log-level, takeover"
            )
            assert errors[4] == "unexpected argument 'verbose'"
            assert errors[5] == "level must be one of debug, info, warning, error, not None"
            assert errors[6] == "level must be one of debug, info, warning, error, not 'loud'"
            assert errors[8] == "a request is a line of UTF-8 text"
            assert errors[10] == "a request is a line of UTF-8 text"
            assert errors[11] == "not a JSON request: NaN is not JSON"
            assert errors[12] == '"command" is a name such as "stats", not 5'
            assert errors[13] == "not a JSON request: 1e999 is not a finite number"
            assert errors[14].startswith("no handover version in common: ")
            assert set(replies[7]["result"]) == {
                "help",
                "stats",
                "connections",
                "drain",
                "log-level LEVEL",
                "takeover versions=[1]",
            }


async def test_an_oversized_request_is_refused_and_closed(sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir)) as (daemon, _):
            replies = await raw_exchange(sock_dir / "control.sock", b"x" * (2 * MAX_REQUEST))
            assert replies == [
                {
                    "id": None,
                    "ok": False,
                    "error": f"request line longer than {MAX_REQUEST} bytes; closing",
                }
            ]
            # Exactly at the limit is fine.
            request = b'{"command": "help"' + b" " * (MAX_REQUEST - 20) + b"}\n"
            assert len(request) == MAX_REQUEST
            (reply,) = await raw_exchange(sock_dir / "control.sock", request)
            assert reply["ok"]
            assert daemon.connections == 0


async def test_an_unfinished_request_line_times_out(
    sock_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(config(sock_dir)):
        stream = await connect(UnixAddress(str(sock_dir / "control.sock")))
        async with stream:
            await stream.send_all(b'{"command": "st')  # and never the rest
            started = trio.current_time()
            data = await read_until_eof(stream)
            assert trio.current_time() - started == pytest.approx(REQUEST_TIMEOUT, abs=0.1)
        assert json.loads(data)["error"] == (
            f"request line not finished within {REQUEST_TIMEOUT:g}s; closing"
        )


async def test_a_client_that_never_reads_is_cut_off(
    sock_dir: Path, autojump_clock: trio.testing.MockClock, daemon_log: LogWaiter
) -> None:
    async with running(config(sock_dir)) as (_, addresses):
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        sock.connect(str(sock_dir / "control.sock"))
        with sock:
            request = b'{"command": "stats"}\n' * 64
            sent = 0
            # Requests until the daemon stops taking them: its replies fill our
            # receive buffer and its send buffer, and it reads no more requests.
            while True:
                try:
                    sent += sock.send(request)
                except BlockingIOError:
                    break
                await trio.testing.wait_all_tasks_blocked()
            assert sent < 64 * 1024 * 1024  # the daemon did stop reading
            line = await daemon_log.wait_for("control client did not read its reply")
            assert line == f"control client did not read its reply for {SEND_TIMEOUT:g}s; closed"
            # Meanwhile, and after, everything else carries on.
            assert await echo_frames(addresses[0], [b"fine"]) == [b"fine"]
            control = await open_control(str(sock_dir / "control.sock"))
            async with control.stream:
                assert (await control.request("stats"))["state"] == "serving"


async def test_one_control_connection_too_many_is_told_and_closed(sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir)):
            path = str(sock_dir / "control.sock")
            clients: list[ControlClient] = []
            try:
                for _ in range(MAX_CLIENTS):
                    client = await open_control(path)
                    clients.append(client)
                    await client.request("help")  # being served, not only queued
                replies = await raw_exchange(Path(path), b'{"command": "help"}\n')
                assert replies == [
                    {
                        "id": None,
                        "ok": False,
                        "error": f"too many control connections ({MAX_CLIENTS})",
                    }
                ]
                await clients.pop().aclose()
                # A slot is free again once the daemon has seen that one go.
                while True:
                    replies = await raw_exchange(Path(path), b'{"command": "help"}\n')
                    if replies[0]["ok"]:
                        break
                    await trio.testing.wait_all_tasks_blocked()
            finally:
                for client in clients:
                    await client.aclose()


async def test_the_control_socket_answers_through_a_drain(sock_dir: Path) -> None:
    framing = Framing("length")
    wire = framing.encode(b"in progress")
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir, framing=framing, drain_timeout=20)) as (
            daemon,
            addresses,
        ):
            control = await open_control(str(sock_dir / "control.sock"))
            async with control.stream:
                busy = await connect(addresses[0])
                async with busy:
                    await busy.send_all(wire[:5])
                    while daemon.buffered == 0:
                        await trio.testing.wait_all_tasks_blocked()
                    assert await control.request("drain") == {"draining": 1, "already": False}
                    assert await control.request("drain") == {"draining": 1, "already": True}
                    stats = await control.request("stats")
                    assert stats["state"] == "draining"
                    assert stats["listeners"][0]["accepting"] is False
                    assert stats["drain"]["remaining"] == 1
                    assert 0 < stats["drain"]["deadline_in"] <= 20
                    (conn,) = await control.request("connections")
                    assert conn["state"] == "draining"
                    assert not (sock_dir / "echo.sock").exists()  # stopped accepting
                    await busy.send_all(wire[5:])
                    assert await read_until_eof(busy) == wire
                # The daemon is done now, and so is its control socket.
                with pytest.raises(ClientError):
                    await asking_until_it_fails(control)
    assert daemon.summary is not None
    assert daemon.summary.drained == 1
    assert not (sock_dir / "control.sock").exists()


async def test_a_control_socket_gets_the_socket_file_hygiene(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    with trio.fail_after(TEST_TIMEOUT):
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        stale.close()  # a file nothing listens on: removed
        async with running(config(sock_dir)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            second = ProcessConfig(
                DaemonConfig([UnixAddress(str(sock_dir / "other.sock"))]), UnixAddress(str(path))
            )
            with pytest.raises(AddressError, match="another process is listening on"):
                await bind(second, [])
            assert not (sock_dir / "other.sock").exists()  # its listener was closed again
            assert path.exists()  # the refused one did not remove ours
        assert not path.exists()


async def asking_until_it_fails(control: ControlClient) -> None:
    while True:
        await control.request("stats")


async def test_a_client_that_gave_up_on_a_reply_skips_it_later() -> None:
    """A request abandoned (a timeout around it) leaves its reply on the stream: the
    next request must get its own reply, not that one."""
    client_end, server_end = trio.testing.memory_stream_pair()
    client = ControlClient(client_end, "the test's server")
    release = trio.Event()

    async def server() -> None:
        buffer = b""
        while True:
            while b"\n" not in buffer:
                buffer += await server_end.receive_some()
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            if request["id"] == 1:
                await release.wait()  # the first reply comes late
            reply = {"id": request["id"], "ok": True, "result": request["command"]}
            await server_end.send_all(json.dumps(reply).encode() + b"\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        with trio.move_on_after(0.01):
            await client.request("slow")
        release.set()
        assert await client.request("fast") == "fast"
        assert await client.request("again") == "again"
        nursery.cancel_scope.cancel()


def test_a_listener_cannot_also_be_the_control_socket(sock_dir: Path) -> None:
    served = DaemonConfig([UnixAddress(str(sock_dir / "x.sock"))])
    with pytest.raises(ValueError, match="both a listener and the control socket"):
        ProcessConfig(served, UnixAddress(str(sock_dir / ".") + "/x.sock"))


# -- triodaemon ctl, against a daemon process --------------------------------------


async def start(spawn: SpawnFn, sock_dir: Path, *args: str) -> tuple[Any, str]:
    control = str(sock_dir / "control.sock")
    daemon = await spawn("--sock", str(sock_dir / "echo.sock"), "--control", control, *args)
    await daemon.wait_ready(1)
    await daemon.wait_for_line(f"triodaemon: control on unix:{control}")
    return daemon, control


async def ctl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await run_triodaemon("ctl", *args)


def test_ctl_upgrade_says_what_the_old_workers_do() -> None:
    reply = {"pid": 2, "old_pid": 1, "listeners": 2, "handed_over": 0, "finishing": 3}
    moving = render_reply("upgrade", {**reply, "workers": 2, "migrate": True})
    assert moving.endswith(
        "the 2 workers of pid 1 hand their connections over to the new ones, then exit"
    )
    staying = render_reply("upgrade", {**reply, "workers": 2, "migrate": False})
    assert staying.endswith(
        "the 2 workers of pid 1 finish their connections (--no-migrate), then exit"
    )
    # A new process without workers: the old supervisor's connections finish there.
    alone = render_reply("upgrade", {**reply, "workers": 0, "migrate": True})
    assert alone.endswith("pid 1 exits once 3 connections finish")


async def test_ctl_prints_tables_and_json(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon, control = await start(spawn, sock_dir, "--framing", "length")
        framing = Framing("length")
        stream = await connect(daemon.addresses[0])
        async with stream:
            await stream.send_all(framing.encode(b"hello"))
            assert await stream.receive_some() == framing.encode(b"hello")

            result = await ctl("--control", control, "stats")
            assert result.returncode == 0, result.stderr
            lines = result.stdout.decode().splitlines()
            labels = [line.split()[0] for line in lines]
            assert labels == [
                "triodaemon",
                "listeners",
                "connections",
                "frames",
                "bytes",
                "buffered",
                "errors",
                "limits",
            ]
            assert lines[2].split(None, 1)[1] == "1 open, 1 in all"
            assert lines[3].split(None, 1)[1] == "1"
            stats = json.loads((await ctl("--control", control, "stats", "--json")).stdout)
            scans = "compiled scans" if stats["speedups"] else "pure-Python scans"
            assert lines[0].endswith(f"serving ({stats['readiness']}, {scans})")
            assert lines[6].endswith(", 0 accept, 0 proxy header, 0 proxy untrusted, 0 internal")

            result = await ctl("--control", control, "connections")
            assert result.returncode == 0, result.stderr
            header, row = result.stdout.decode().splitlines()
            columns = ["id", "peer", "listener", "age", "in", "out", "frames", "state"]
            assert header.split() == columns
            assert row.split()[0] == "1"
            assert row.split()[-1] == "reading"

            result = await ctl("--control", control, "connections", "--json")
            (conn,) = json.loads(result.stdout)
            assert (conn["bytes_in"], conn["bytes_out"], conn["frames"]) == (9, 9, 1)

            result = await ctl("--control", control, "log-level", "debug")
            assert result.stdout.decode().strip() == "log level debug (was info)"
            await daemon.wait_for_line("log level changed on the control socket: debug (was info)")

            result = await ctl("--control", control, "help")
            assert "log-level LEVEL" in result.stdout.decode()
        daemon.signal()
        assert await daemon.wait() == 0
    assert not Path(control).exists()


async def test_ctl_errors_are_one_line(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        missing = str(sock_dir / "nobody.sock")
        result = await ctl("--control", missing, "stats")
        assert result.returncode == 1
        assert result.stderr.decode().splitlines() == [
            f"triodaemon: error: cannot connect to unix:{missing}: no such file or directory "
            f"(is a daemon running with --control {missing}?)"
        ]
        result = await ctl("--control", missing, "log-level")
        assert result.returncode == 2
        assert "log-level needs a LEVEL" in result.stderr.decode()
        result = await ctl("--control", missing, "stats", "debug")
        assert result.returncode == 2
        assert "stats takes no argument" in result.stderr.decode()

        daemon, control = await start(spawn, sock_dir)
        result = await ctl("--control", control, "log-level", "loud")
        assert result.returncode == 1
        assert result.stderr.decode().splitlines() == [
            "triodaemon: error: level must be one of debug, info, warning, error, not 'loud'"
        ]
        daemon.signal()
        assert await daemon.wait() == 0


async def test_ctl_drain_under_load_loses_no_echo(spawn: SpawnFn, sock_dir: Path) -> None:
    """Clients busy in lockstep when ``ctl drain`` comes: every frame the daemon read
    is echoed; at most the one each client sent as the daemon closed goes unread."""
    with trio.fail_after(TEST_TIMEOUT):
        daemon, control = await start(spawn, sock_dir)
        address = daemon.addresses[0]
        going = trio.Semaphore(0)
        clients = [LockstepClient(n, going) for n in range(8)]
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.run, await connect(address))
            for _ in clients:
                await going.acquire()
            result = await ctl("--control", control, "drain")
            assert result.returncode == 0, result.stderr
            assert result.stdout.decode().strip() == "draining 8 connections"
        assert await daemon.wait() == 0
    for client in clients:
        client.check()
    assert "shutdown complete: 8 connections drained, 0 aborted" in daemon.stderr


WATCH = ["stats", "--watch", "0.2"]


CTL = [sys.executable, "-m", "triodaemon", "ctl"]


async def test_ctl_says_what_is_wrong_in_one_line(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon, control = await start(spawn, sock_dir)
        # The echo socket, by mistake: it echoes the request back.
        echo = str(sock_dir / "echo.sock")
        result = await ctl("--control", echo, "stats")
        assert result.returncode == 1
        assert result.stderr.decode().startswith(
            f"triodaemon: error: the daemon at {echo} is not a triodaemon control socket "
            "(it answered {"
        )
        # A standard output that cannot be written: one line, no traceback.
        written = await trio.run_process(
            ["sh", "-c", 'exec "$@" >/dev/full', "sh", *CTL, "--control", control, "help"],
            stdin=subprocess.DEVNULL,
            capture_stderr=True,
            check=False,
        )
        assert written.returncode == 1
        assert written.stderr.decode().splitlines() == [
            "triodaemon: error: cannot write to standard output: No space left on device"
        ]
        result = await ctl("--control", control, "stats", "--watch", "0")
        assert result.returncode == 2
        assert "'0' is too short: 0.1 seconds or more" in result.stderr.decode()
        # Every control connection taken: ctl says so.
        held = [await open_control(control) for _ in range(MAX_CLIENTS)]
        try:
            for client in held:
                await client.request("help")
            result = await ctl("--control", control, "stats")
            assert result.returncode == 1
            assert result.stderr.decode().splitlines() == [
                f"triodaemon: error: the daemon at {control}: too many control connections "
                f"({MAX_CLIENTS})"
            ]
        finally:
            for client in held:
                await client.aclose()
        daemon.signal()
        assert await daemon.wait() == 0


def stale_socket(path: Path) -> None:
    """A socket file nothing listens on (what a killed daemon leaves)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda path: path.write_text(""), "not a socket (a regular file)"),
        (lambda path: os.mkfifo(path), "not a socket (a FIFO)"),
        (stale_socket, "connection refused (a socket file that nothing listens on)"),
    ],
)
async def test_ctl_at_something_that_is_not_a_control_socket_says_what_it_is(
    sock_dir: Path, make: Any, why: str
) -> None:
    path = sock_dir / "not-a-control.sock"
    make(path)
    result = await ctl("--control", str(path), "stats")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"triodaemon: error: cannot connect to unix:{path}: {why} "
        f"(is a daemon running with --control {path}?)"
    ]


async def test_ctl_at_another_programs_socket_says_so(sock_dir: Path) -> None:
    path = sock_dir / "other.sock"
    listener = trio.socket.socket(socket.AF_UNIX)
    await listener.bind(str(path))
    listener.listen()

    async def greet_everyone() -> None:
        while True:
            sock, _ = await listener.accept()
            with sock:
                await sock.send(b"SSH-2.0-OpenSSH_9.2\x1b[2J\r\n")
                await sock.recv(1000)  # (whatever it asks, before we close)

    with listener, trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(greet_everyone)
            result = await ctl("--control", str(path), "stats")
            nursery.cancel_scope.cancel()
    assert result.returncode == 1
    [line] = result.stderr.decode().splitlines()
    assert line.startswith(
        f"triodaemon: error: the daemon at {path} is not a triodaemon control socket "
        "(it sent something that is not JSON: "
    )


@pytest.mark.parametrize("command", ["stats", "connections"])
async def test_ctl_watch_ends_the_same_when_there_is_nothing_to_drain(
    spawn: SpawnFn, sock_dir: Path, command: str
) -> None:
    """No connection: the daemon exits at once, between two of the watch's requests."""
    with trio.fail_after(TEST_TIMEOUT):
        daemon, control = await start(spawn, sock_dir)
        watch = await trio.lowlevel.open_process(
            [*CTL, "--control", control, command, "--watch", "0.1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert watch.stdout is not None
        assert watch.stderr is not None
        seen = b""
        while not seen:  # the first table
            seen += await watch.stdout.receive_some()
        daemon.signal()
        assert await daemon.wait() == 0
        await read_until_eof(watch.stdout)
        assert await watch.wait() == 0
        assert (await read_until_eof(watch.stderr)).decode().splitlines() == [
            "triodaemon: the daemon has exited"
        ]


async def test_ctl_watch_follows_a_drain_to_the_end(spawn: SpawnFn, sock_dir: Path) -> None:
    framing = Framing("length")
    wire = framing.encode(b"in progress")
    with trio.fail_after(TEST_TIMEOUT):
        daemon, control = await start(spawn, sock_dir, "--framing", "length")
        stream = await connect(daemon.addresses[0])
        async with stream:
            await stream.send_all(wire[:5])
            await daemon.wait_until_received(5)
            watch = await trio.lowlevel.open_process(
                [sys.executable, "-m", "triodaemon", "ctl", "--control", control, *WATCH],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert watch.stdout is not None
            assert watch.stderr is not None
            seen = b""
            while b"frames" not in seen:  # the first table
                seen += await watch.stdout.receive_some()
            assert (await ctl("--control", control, "drain")).returncode == 0
            while b"1 connection left" not in seen:  # the drain's progress
                seen += await watch.stdout.receive_some()
            await stream.send_all(wire[5:])
            assert await read_until_eof(stream) == wire
            seen += await read_until_eof(watch.stdout)
            assert await watch.wait() == 0
            assert (await read_until_eof(watch.stderr)).decode().splitlines() == [
                "triodaemon: the daemon has exited"
            ]
        text = seen.decode()
        assert "\x1b" not in text  # not a terminal: tables one after another
        assert "/s)" in text  # rates, from the second table on
        assert await daemon.wait() == 0
