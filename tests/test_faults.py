"""Exception boundaries: nothing a peer sends, and no failure of our own code inside one
connection, control request, handover channel or worker pipe, ends the process.

Fault injection: each boundary gets a failure raised from inside its handler (our
own code, monkeypatched: a ``RecursionError``, a ``MemoryError``, a plain bug), and
the daemon must log it with its traceback, count it (``internal`` errors), close
that one connection (or answer that one request with an error), serve on, and drain
cleanly afterwards. And the defect that started it, as a user met it: one control
request nested 1,000 deep ended a real daemon, and a real supervisor.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from triodaemon import (
    ClientError,
    ConnectionInfo,
    Daemon,
    DaemonConfig,
    TcpAddress,
    UnixAddress,
    _connection,
    _control,
    _supervisor,
    _workers,
    connect,
    open_listeners,
)
from triodaemon._config import ProcessConfig
from triodaemon._control import MAX_CLIENTS, ControlClient, open_control
from triodaemon._faults import MAX_JSON_DEPTH, loads
from triodaemon._handover import giver as _giver
from triodaemon._handover.giver import Giver
from triodaemon._handover.taker import Taken
from triodaemon._handover.wire import CalledOff, Channel
from triodaemon._listeners import Address, open_unix
from triodaemon._peers import ConnectionState
from triodaemon._process import takeover as _takeover
from triodaemon._process.roles import Standalone
from triodaemon._process.startup import Start, Startup
from triodaemon._served import Served
from triodaemon._supervisor import Supervisor
from triodaemon._systemd import Notifier
from triodaemon.testing import echo_frames

from .conftest import LogWaiter, SpawnFn, giving, raw_exchange, read_until_eof, running

TEST_TIMEOUT = 60

#: The request of the black-box run: 2,001 bytes, nested 1,000 deep.
NESTED_ARRAYS = b"[" * 1000 + b"]" * 1000
#: The other one: an ``id`` of 900 nested objects.
NESTED_ID = b'{"command": "stats", "id": ' + b'{"a": ' * 900 + b"1" + b"}" * 900 + b"}"

#: The failures injected: what a parser of deep input, an allocation, and a bug raise.
FAULTS = [RecursionError, MemoryError, KeyError]


def config(sock_dir: Path, **kwargs: Any) -> ProcessConfig:
    return ProcessConfig(
        DaemonConfig(
            [TcpAddress("127.0.0.1", 0), UnixAddress(str(sock_dir / "echo.sock"))], **kwargs
        ),
        UnixAddress(str(sock_dir / "control.sock")),
    )


def raising(exc: type[BaseException], times: int = 1) -> Callable[..., Any]:
    """A stand-in that raises ``exc`` the first ``times`` calls (and records them)."""
    calls: list[object] = []

    def fail(*args: object, **kwargs: object) -> Any:
        calls.append(args)
        if len(calls) <= times:
            raise exc("injected")
        raise AssertionError("called more often than the test expects")

    return fail


async def serves_on(
    daemon: Daemon, addresses: list[Address], sock_dir: Path, *, internal: int = 1
) -> dict[str, Any]:
    """Every listener echoes and the control socket answers, counting ``internal``
    errors: its ``stats``."""
    for address in addresses:
        assert await echo_frames(address, [b"still here"]) == [b"still here"]
    control = await open_control(str(sock_dir / "control.sock"))
    async with control.stream:
        stats: dict[str, Any] = await control.request("stats")
    assert stats["state"] == "serving"
    assert stats["errors"]["internal"] == internal
    return stats


def drained_cleanly(daemon: Daemon) -> None:
    assert daemon.summary is not None
    assert daemon.summary.aborted == 0
    assert not daemon.summary.forced


class Faults:
    """The daemon's log, read for internal errors (the ``faults`` fixture)."""

    def __init__(self, log: LogWaiter, caplog: pytest.LogCaptureFixture) -> None:
        self.log = log
        self.caplog = caplog

    async def wait(self) -> None:
        await self.log.wait_for("internal error, closed it")

    def logged_once(self, what: str) -> None:
        """One internal error naming ``what``, logged at ``error`` with its traceback."""
        assert self.log.count("internal error, closed it") == 1, self.log.messages
        (record,) = [
            r for r in self.caplog.records if "internal error, closed it" in r.getMessage()
        ]
        assert what in record.getMessage()
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert record.exc_info[0] is not None


@pytest.fixture
def faults(daemon_log: LogWaiter, caplog: pytest.LogCaptureFixture) -> Faults:
    return Faults(daemon_log, caplog)


# -- what a peer sends: parsers bound depth before they parse ---------------------------


def test_json_from_peers_is_bounded_in_depth_before_it_is_parsed() -> None:
    deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert loads(deep) == eval(deep.decode())  # (32 nested lists: fine)
    for text in [b"[" + deep + b"]", NESTED_ARRAYS, NESTED_ID, b"[" * 100_000]:
        with pytest.raises(ValueError, match=f"^nested more than {MAX_JSON_DEPTH} levels deep$"):
            loads(text)
    # Brackets inside strings do not nest; escaped quotes do not end a string.
    quoted = '{"a": "' + "[" * 100 + '\\"' + "{" * 100 + '", "b": [[]]}'
    assert loads(quoted) == {"a": "[" * 100 + '"' + "{" * 100, "b": [[]]}
    with pytest.raises(ValueError, match="NaN is not JSON"):
        loads("[NaN]")


async def test_nested_requests_get_an_error_reply_and_the_connection_stays(
    sock_dir: Path,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir)) as (daemon, addresses):
            requests = [NESTED_ARRAYS, NESTED_ID, b'{"id": 3, "command": "help"}']
            replies = await raw_exchange(sock_dir / "control.sock", b"\n".join(requests) + b"\n")
            error = f"not a JSON request: nested more than {MAX_JSON_DEPTH} levels deep"
            assert replies[:2] == [{"id": None, "ok": False, "error": error}] * 2
            assert (replies[2]["id"], replies[2]["ok"]) == (3, True)
            await serves_on(daemon, addresses, sock_dir, internal=0)  # refused, not caught
        drained_cleanly(daemon)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_nested_request_cannot_stop_a_real_daemon(
    spawn: SpawnFn, sock_dir: Path, workers: int
) -> None:
    """The black-box run's reproduction: ``[``x1000 ``]``x1000 on the control socket,
    with a client mid-conversation, of a daemon and of a supervisor of workers."""
    with trio.fail_after(TEST_TIMEOUT):
        control = sock_dir / "control.sock"
        daemon = await spawn(
            "--sock", str(sock_dir / "echo.sock"), "--control", str(control),
            "--workers", str(workers),
        )  # fmt: skip
        (address,) = await daemon.wait_ready(1)
        client = await connect(address)
        async with client:
            await client.send_all(b"before\n")
            assert await client.receive_some() == b"before\n"
            for request in [NESTED_ARRAYS, NESTED_ID]:
                (reply,) = await raw_exchange(control, request + b"\n")
                assert reply["ok"] is False
                assert "nested more than" in reply["error"]
            await client.send_all(b"after\n")
            assert await client.receive_some() == b"after\n"
            assert await echo_frames(address, [b"new"]) == [b"new"]
            daemon.signal(signal.SIGTERM)
            assert await read_until_eof(client) == b""  # drained: a clean close
        assert await daemon.wait() == 0
    assert "Traceback" not in daemon.stderr
    assert not (sock_dir / "echo.sock").exists()


# -- client connections -------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_fault_inside_one_connection_ends_that_connection_only(
    sock_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: Faults,
    fault: type[BaseException],
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir)) as (daemon, addresses):
            other = await connect(addresses[1])
            async with other:
                await other.send_all(b"one\n")
                assert await other.receive_some() == b"one\n"
                # Our own code fails when this connection's peer half-closes.
                monkeypatch.setattr(_connection.Connection, "_eof", raising(fault))
                victim = await connect(addresses[0])
                async with victim:
                    await victim.send_all(b"hello\n")
                    assert await victim.receive_some() == b"hello\n"
                    await victim.send_eof()
                    assert await read_until_eof(victim) == b""
                await faults.wait()
                monkeypatch.undo()
                await other.send_all(b"two\n")
                assert await other.receive_some() == b"two\n"
                stats = await serves_on(daemon, addresses, sock_dir)
                assert stats["errors"]["handler"] == 0
                assert stats["connections"]["open"] == 1
        drained_cleanly(daemon)
    faults.logged_once("conn 2 from 127.0.0.1:")


async def test_a_fault_in_the_frame_handler_is_the_handlers_not_ours(
    sock_dir: Path, daemon_log: LogWaiter, caplog: pytest.LogCaptureFixture
) -> None:
    async def picky(frame: bytes, conn: ConnectionInfo) -> bytes:
        if frame == b"boom":
            raise RecursionError("the handler's own")
        return frame

    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir), handler=picky) as (daemon, addresses):
            victim = await connect(addresses[1])
            async with victim:
                await victim.send_all(b"boom\n")
                assert await read_until_eof(victim) == b""
            stats = await serves_on(daemon, addresses, sock_dir, internal=0)
            assert stats["errors"]["handler"] == 1
        drained_cleanly(daemon)
    (record,) = [r for r in caplog.records if "frame handler failed" in r.getMessage()]
    assert record.getMessage().endswith("frame handler failed: RecursionError: the handler's own")
    assert record.exc_info is not None  # with its traceback


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_fault_while_accepting_closes_that_connection_only(
    sock_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: Faults,
    fault: type[BaseException],
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir, max_connections=2)) as (daemon, addresses):
            real = Served._connection_for
            monkeypatch.setattr(Served, "_connection_for", raising(fault))
            victim = await connect(addresses[1])
            async with victim:
                assert await read_until_eof(victim) == b""
            monkeypatch.setattr(Served, "_connection_for", real)
            # Its slot of max_connections is free again: two more are served at once.
            first, second = await connect(addresses[0]), await connect(addresses[1])
            async with first, second:
                for stream in (first, second):
                    await stream.send_all(b"x\n")
                    assert await stream.receive_some() == b"x\n"
            await serves_on(daemon, addresses, sock_dir)
        drained_cleanly(daemon)
    faults.logged_once(f"connection 1 on unix:{sock_dir}/echo.sock")


# -- control connections and requests ------------------------------------------------


def unencodable(self: Daemon) -> list[object]:
    """A result JSON cannot carry: the reply fails in our own code, not the command."""
    return [object()]


@pytest.mark.parametrize(
    ("connections", "name", "what"),
    [
        *((raising(fault), fault.__name__, "control request 'connections'") for fault in FAULTS),
        (unencodable, "TypeError", "control reply {'id': 1, 'ok': True"),
    ],
)
async def test_a_fault_inside_one_control_request_is_an_error_reply(
    sock_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: Faults,
    connections: Callable[..., Any],
    name: str,
    what: str,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir)) as (daemon, addresses):
            monkeypatch.setattr(Daemon, "connection_snapshots", connections)
            replies = await raw_exchange(
                sock_dir / "control.sock",
                b'{"id": 1, "command": "connections"}\n{"id": 2, "command": "help"}\n',
            )
            assert replies[0] == {
                "id": 1,
                "ok": False,
                "error": f"internal error ({name}); it is logged, and the daemon serves on",
            }
            assert (replies[1]["id"], replies[1]["ok"]) == (2, True)  # the connection stays
            await serves_on(daemon, addresses, sock_dir)
        drained_cleanly(daemon)
    faults.logged_once(what)


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_fault_inside_one_control_connection_closes_it_only(
    sock_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: Faults,
    fault: type[BaseException],
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir)) as (daemon, addresses):
            real = _control._next_request
            monkeypatch.setattr(_control, "_next_request", raising(fault))
            assert await raw_exchange(sock_dir / "control.sock", b"") == []  # closed
            monkeypatch.setattr(_control, "_next_request", real)
            await serves_on(daemon, addresses, sock_dir)
        drained_cleanly(daemon)
    faults.logged_once("control connection")


async def test_a_fault_while_refusing_a_control_connection_is_contained(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, faults: Faults
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir)) as (daemon, addresses):
            path = str(sock_dir / "control.sock")
            clients: list[ControlClient] = []
            try:
                for _ in range(MAX_CLIENTS):
                    clients.append(client := await open_control(path))
                    await client.request("help")
                monkeypatch.setattr(_control, "_say", raising(MemoryError))
                assert await raw_exchange(Path(path), b"") == []  # refused, without a word
                await faults.wait()
                monkeypatch.undo()
                assert (await clients[0].request("stats"))["errors"]["internal"] == 1
            finally:
                for client in clients:
                    await client.aclose()
            await serves_on(daemon, addresses, sock_dir)
        drained_cleanly(daemon)
    faults.logged_once("control connection refused")


# -- handover channels ----------------------------------------------------------------


async def takeover_channel(control: Path) -> Channel:
    """Ask the daemon at ``control`` for its sockets, as a new process would."""
    stream = await connect(UnixAddress(str(control)))
    client = ControlClient(stream, "daemon")
    assert (await client.request("takeover", versions=[1]))["version"] == 1
    return Channel(stream.socket, "daemon")


def hello(daemon: Daemon) -> dict[str, Any]:
    """What a new process says first (the same framing: no refusal)."""
    return {
        "type": "hello",
        "framing": daemon.config.framing.to_json(),
        "migrate": True,
    }


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_fault_in_the_givers_handover_calls_it_off_and_serves_on(
    sock_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: Faults,
    fault: type[BaseException],
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with giving(config(sock_dir)) as (daemon, addresses):
            monkeypatch.setattr(Giver, "_listeners", raising(fault))
            channel = await takeover_channel(sock_dir / "control.sock")
            await channel.send(hello(daemon))
            with pytest.raises(CalledOff, match=rf"internal error \({fault.__name__}\)"):
                await channel.receive("listeners")
            await channel.aclose()
            assert (await serves_on(daemon, addresses, sock_dir))["upgrade"] is None
        drained_cleanly(daemon)
    faults.logged_once("upgrade (a takeover on the control socket)")


async def test_a_fault_after_the_giver_stopped_accepting_makes_it_accept_again(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, daemon_log: LogWaiter
) -> None:
    """The taker is ready and the daemon has stopped accepting when its own code fails
    moving the connections: it accepts again (the taker is told to stop)."""
    with trio.fail_after(TEST_TIMEOUT):
        async with giving(config(sock_dir)) as (daemon, addresses):
            monkeypatch.setattr(_giver, "migrate", raising(RecursionError))
            channel = await takeover_channel(sock_dir / "control.sock")
            await channel.send(hello(daemon))
            _, _, listeners = await channel.receive("listeners")
            for sock in listeners:
                sock.close()
            await channel.send({"type": "ready"})
            with pytest.raises(CalledOff, match=r"internal error \(RecursionError\)"):
                await channel.receive("connections", "done")
            await channel.aclose()
            await serves_on(daemon, addresses, sock_dir)
        drained_cleanly(daemon)
    assert (sock_dir / "echo.sock").exists() is False  # its own again: removed at the end


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_fault_adopting_one_connection_closes_that_one_only(
    sock_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    faults: Faults,
    fault: type[BaseException],
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with running(config(sock_dir)) as (daemon, addresses):
            state = ConnectionState("a peer", "unix:elsewhere", b"", math.inf, math.inf)
            ours, theirs = socket.socketpair()
            with theirs:
                monkeypatch.setattr(_connection.Connection, "resume", raising(fault))
                daemon.adopt(ours, state)
                monkeypatch.undo()
                assert theirs.recv(10) == b""  # closed
                kept, peer = socket.socketpair()
                with peer:
                    daemon.adopt(kept, attrs.evolve(state, pending=b"half "))
                    peer.sendall(b"a frame\n")
                    peer.setblocking(False)
                    assert await trio.socket.from_stdlib_socket(peer).recv(100) == (
                        b"half a frame\n"
                    )
            stats = await serves_on(daemon, addresses, sock_dir)
            assert stats["connections"]["taken_over"] == 1
        drained_cleanly(daemon)
    faults.logged_once("conn 1 from a peer on unix:elsewhere: taking it over")


async def test_a_fault_of_the_takers_side_is_logged_and_it_serves_on(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, faults: Faults
) -> None:
    """The new process's side of the channel, after it serves: a failure there ends
    the channel, not the process."""
    role = Standalone(config(sock_dir), Start([], []), Notifier(None))
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            addresses = list(await nursery.start(role.run))
            ours, theirs = socket.socketpair()
            channel = Channel(trio.socket.from_stdlib_socket(ours), "the old process")
            taken = Taken([], None, 1, {}, [])
            monkeypatch.setattr(_takeover, "take_connections", raising(RecursionError))
            startup = Startup(Notifier(None))
            startup.ready.set()
            await _takeover.finish_takeover(channel, taken, role, startup)
            theirs.close()
            await serves_on(role.daemon, addresses, sock_dir)
            role.drain()
    drained_cleanly(role.daemon)
    assert role.failure is None
    faults.logged_once("taking the connections over")


# -- a supervisor's pipes to its workers ------------------------------------------------


@asynccontextmanager
async def supervising(sock_dir: Path) -> AsyncIterator[tuple[Supervisor, Address]]:
    """A supervisor of 2 real worker processes, in this process; drained at the end."""
    path = str(sock_dir / "echo.sock")
    config = DaemonConfig([UnixAddress(path)])
    listeners = await open_listeners(config.listen)
    control = await open_unix(UnixAddress(str(sock_dir / "c.sock")))
    supervisor = Supervisor(config, 2, ["--sock", path])
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(
            lambda task_status: supervisor.serve(
                listeners, control=control, task_status=task_status
            )
        )
        try:
            yield supervisor, address
        finally:
            supervisor.drain()
    assert supervisor.summary is not None
    assert not supervisor.summary.forced


async def supervisor_stats(sock_dir: Path) -> dict[str, Any]:
    control = await open_control(str(sock_dir / "c.sock"))
    async with control.stream:
        stats: dict[str, Any] = await control.request("stats")
    return stats


async def test_a_fault_reading_a_workers_report_skips_that_report(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, faults: Faults
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with supervising(sock_dir) as (_, address):
            real = _workers.add_report
            calls = 0

            def add(total: Any, report: Any) -> None:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise KeyError("injected")
                real(total, report)

            monkeypatch.setattr(_supervisor, "add_report", add)
            assert await echo_frames(address, [b"x"]) == [b"x"]
            await faults.wait()
            monkeypatch.undo()
            stats = await supervisor_stats(sock_dir)
            assert stats["errors"]["internal"] == 1
            assert [w["state"] for w in stats["workers"]] == ["serving", "serving"]
            assert await echo_frames(address, [b"on"]) == [b"on"]
    faults.logged_once("'s stats ")


async def test_a_fault_starting_one_worker_restarts_that_worker(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, faults: Faults
) -> None:
    """The supervisor's own code fails starting worker 1 in the first start: that
    worker is started again, and the start completes."""
    real = Supervisor._run_once
    failed = False

    async def run_once(self: Supervisor, worker: Any) -> Any:
        nonlocal failed
        if worker.number == 1 and not failed:
            failed = True
            raise MemoryError("injected")
        return await real(self, worker)

    monkeypatch.setattr(Supervisor, "_run_once", run_once)
    with trio.fail_after(TEST_TIMEOUT):
        async with supervising(sock_dir) as (_, address):
            assert failed
            stats = await supervisor_stats(sock_dir)
            assert stats["errors"]["internal"] == 1
            assert [w["state"] for w in stats["workers"]] == ["serving", "serving"]
            assert [w["restarts"] for w in stats["workers"]] == [1, 0]
            assert await echo_frames(address, [b"on"]) == [b"on"]
    faults.logged_once("worker 1: internal error")


async def test_a_fault_relaying_one_workers_log_restarts_that_worker(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch, daemon_log: LogWaiter
) -> None:
    real = _workers.relay_line

    def relay_line(worker: Any, pid: int, line: str) -> None:
        if worker.number == 1 and worker.restarts == 0:
            raise RecursionError("injected")
        real(worker, pid, line)

    with trio.fail_after(TEST_TIMEOUT):
        async with supervising(sock_dir) as (supervisor, address):
            monkeypatch.setattr(_workers, "relay_line", relay_line)
            # Worker 1 alone logs a line: the level changed (the supervisor's is debug).
            with contextlib.suppress(ClientError):  # (killed before it replies, or after)
                await supervisor._workers[0].ask("log-level", level="info")
            await daemon_log.wait_for("worker 1's log relay: internal error, closed it")
            await daemon_log.wait_for_count(") serves", 3)  # worker 1 again
            stats = await supervisor_stats(sock_dir)
            assert stats["errors"]["internal"] == 1
            assert [w["state"] for w in stats["workers"]] == ["serving", "serving"]
            assert [w["restarts"] for w in stats["workers"]] == [1, 0]
            assert await echo_frames(address, [b"on"]) == [b"on"]
