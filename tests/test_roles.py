"""Each process role started and stopped in-process (issue 26), the way hypercorn's
tests run a worker with a shutdown trigger: ``addresses = await nursery.start(role.run)``,
then ``role.drain()`` (or ``abort()``), and ``run`` returns the server's summary.

- a daemon alone (:class:`Standalone`): serving, its control socket, drain, abort,
  and a start whose sockets cannot be had;
- a successor: a second ``Standalone`` that takes the first's sockets and a
  connection caught mid-frame (or is refused, and the first serves on);
- a worker, whose supervisor the test plays over the socketpair; and a worker
  that takes over from an old one at its supervisor's word;
- a supervisor of two real worker processes (:class:`Supervising`);
- :func:`run_role`, the role as the process: its exit codes, its one error line,
  its signals. It gives every handled signal a handler of its own and leaves them
  inert, as a process that exits next can: each test puts this process's handlers
  and signal mask back (:func:`signals_put_back`).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from triodaemon import (
    AddressError,
    DaemonConfig,
    Framing,
    TcpAddress,
    UnixAddress,
    _signals,
    connect,
)
from triodaemon._config import ProcessConfig
from triodaemon._control import ControlClient, open_control
from triodaemon._daemon import Daemon, DrainSummary
from triodaemon._handover.wire import HandoverError
from triodaemon._listeners import Address, BoundListener
from triodaemon._process.roles import Role, Standalone, Supervising, Worker
from triodaemon._process.run import run_role
from triodaemon._process.startup import Start
from triodaemon._systemd import Notifier
from triodaemon.testing import echo_frames

from .conftest import LogWaiter, free_port, read_until_eof

TEST_TIMEOUT = 30
#: A supervisor's test starts two interpreters, each importing triodaemon.
SUPERVISOR_TIMEOUT = 60


# -- helpers ----------------------------------------------------------------------------


class Running:
    """A role run in the background: its bound addresses, and ``run``'s outcome."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.addresses: list[Address] = []
        self.summary: DrainSummary | None = None
        self.returned = trio.Event()
        """Set once ``role.run`` has returned (or raised)."""

    async def run(
        self, task_status: trio.TaskStatus[tuple[Address, ...]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            self.summary = await self.role.run(task_status)
        finally:
            self.returned.set()


@asynccontextmanager
async def running(role: Role) -> AsyncIterator[Running]:
    """``nursery.start(role.run)``; on the way out, drain it (if the test has not
    stopped it) and wait until ``run`` returns."""
    ran = Running(role)
    async with trio.open_nursery() as nursery:
        ran.addresses = list(await nursery.start(ran.run))
        try:
            yield ran
        finally:
            role.drain()


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds, checking each time every task here is blocked
    (trio polls its I/O first, so bytes sent on a local socket have been read by
    then); bounded by the test's ``fail_after``."""
    while not predicate():
        await trio.testing.wait_all_tasks_blocked()


def states(daemon: Daemon) -> list[str]:
    """The state of each connection the daemon has open (``reading``, ``mid-frame``...)."""
    return [row["state"] for row in daemon.connection_snapshots()]


async def receive_line(stream: trio.abc.ReceiveStream) -> bytes:
    """Bytes up to and including the first newline (the test sends one frame at a time)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


async def ask(path: Path, command: str, **args: Any) -> Any:
    """One request to the control socket at ``path``."""
    control = await open_control(str(path))
    async with control.stream:
        return await control.request(command, **args)


def standalone_config(sock_dir: Path, **kwargs: Any) -> ProcessConfig:
    """A TCP port 0, a Unix socket and a control socket, all in ``sock_dir``."""
    return ProcessConfig(
        DaemonConfig(
            [TcpAddress("127.0.0.1", 0), UnixAddress(str(sock_dir / "echo.sock"))], **kwargs
        ),
        UnixAddress(str(sock_dir / "control.sock")),
    )


def standalone(sock_dir: Path, **kwargs: Any) -> Standalone:
    return Standalone(standalone_config(sock_dir, **kwargs), Start([], []), Notifier(None))


class ReadyNotifier(Notifier):
    """Tells nobody, but lets a test wait for what would tell systemd it is ready."""

    def __init__(self) -> None:
        super().__init__(None)
        self.ready = trio.Event()

    def send(self, *fields: str) -> None:
        if "READY=1" in fields:
            self.ready.set()


def assert_port_free(port: int) -> None:
    """Nothing listens on ``port`` (binding it again would fail)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


# -- a daemon alone ---------------------------------------------------------------------


async def test_a_standalone_role_serves_until_drained(sock_dir: Path) -> None:
    role = standalone(sock_dir)
    assert not role.quiet
    assert role.upgrader is not None
    with trio.fail_after(TEST_TIMEOUT):
        async with running(role) as ran:
            tcp, unix = ran.addresses
            assert isinstance(tcp, TcpAddress)
            assert tcp.port != 0
            assert unix == UnixAddress(str(sock_dir / "echo.sock"))
            for address in ran.addresses:
                assert await echo_frames(address, [b"one", b"two"]) == [b"one", b"two"]
            stream = await connect(unix)
            async with stream:
                await stream.send_all(b"three\n")
                assert await receive_line(stream) == b"three\n"
                await until(lambda: role.daemon.connections == 1)
                snapshot = await role.snapshot()
                assert snapshot["state"] == "serving"
                assert snapshot["pid"] == os.getpid()
                assert snapshot["connections"]["open"] == 1
                assert snapshot["connections"]["total"] == 3
                assert snapshot["frames"] == 5
                assert [row["address"] for row in snapshot["listeners"]] == [
                    str(tcp),
                    str(unix),
                ]
                assert snapshot["control"] == str(UnixAddress(str(sock_dir / "control.sock")))
                role.drain()
                assert role.draining
                # No frame in progress: the drain closes the connection at once.
                assert await read_until_eof(stream) == b""
                await ran.returned.wait()
    assert ran.summary == DrainSummary(drained=1, aborted=0, forced=False)
    assert role.failure is None
    assert not (sock_dir / "echo.sock").exists()
    assert not (sock_dir / "control.sock").exists()
    assert_port_free(tcp.port)


async def test_a_standalone_roles_control_socket_answers_and_drains_it(sock_dir: Path) -> None:
    role = standalone(sock_dir)
    control = sock_dir / "control.sock"
    with trio.fail_after(TEST_TIMEOUT):
        async with running(role) as ran:
            commands = await ask(control, "help")
            assert {"stats", "connections", "drain", "takeover versions=[1]", "upgrade"} <= set(
                commands
            )
            assert await echo_frames(ran.addresses[0], [b"x"]) == [b"x"]
            stats = await ask(control, "stats")
            assert stats["pid"] == os.getpid()
            assert stats["frames"] == 1
            assert stats["upgrade"] is None
            assert await ask(control, "drain") == {"draining": 0, "already": False}
            await ran.returned.wait()
    assert ran.summary == DrainSummary(drained=0, aborted=0, forced=False)
    assert not control.exists()


async def test_an_aborted_standalone_role_returns_a_forced_summary(sock_dir: Path) -> None:
    # A drain would wait a minute for the frame in progress; an abort does not.
    role = standalone(sock_dir, drain_timeout=60)
    with trio.fail_after(TEST_TIMEOUT):
        async with running(role) as ran:
            stream = await connect(ran.addresses[1])
            async with stream:
                await stream.send_all(b"half a fra")
                await until(lambda: states(role.daemon) == ["mid-frame"])
                role.abort()
                await ran.returned.wait()
                assert await read_until_eof(stream) == b""
    assert ran.summary == DrainSummary(drained=0, aborted=1, forced=True)
    assert not (sock_dir / "echo.sock").exists()
    assert not (sock_dir / "control.sock").exists()


async def test_a_port_in_use_is_one_line_and_leaves_nothing_bound(sock_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ProcessConfig(
            DaemonConfig([UnixAddress(str(sock_dir / "echo.sock")), TcpAddress("127.0.0.1", port)]),
            UnixAddress(str(sock_dir / "control.sock")),
        )
        role = Standalone(config, Start([], []), Notifier(None))
        with trio.fail_after(TEST_TIMEOUT), pytest.raises(AddressError) as caught:
            await role.run()
    message = str(caught.value)
    assert "\n" not in message
    assert str(port) in message
    assert role.failure is None
    assert role.daemon.summary is None  # it never served
    assert list(sock_dir.iterdir()) == []


@pytest.mark.parametrize("missing", ["listener", "control"])
async def test_a_socket_path_in_a_missing_directory_is_one_line_and_leaves_nothing_bound(
    sock_dir: Path, missing: str
) -> None:
    port = free_port()
    listener = sock_dir / ("gone" if missing == "listener" else "") / "echo.sock"
    control = sock_dir / ("gone" if missing == "control" else "") / "control.sock"
    config = ProcessConfig(
        DaemonConfig([TcpAddress("127.0.0.1", port), UnixAddress(str(listener))]),
        UnixAddress(str(control)),
    )
    role = Standalone(config, Start([], []), Notifier(None))
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(AddressError) as caught:
        await role.run()
    message = str(caught.value)
    assert "\n" not in message
    assert str(sock_dir / "gone") in message
    assert list(sock_dir.iterdir()) == []
    assert_port_free(port)


# -- a successor ------------------------------------------------------------------------


async def test_a_successor_takes_over_with_a_connection_mid_frame(sock_dir: Path) -> None:
    """``--takeover PATH`` in-process: the sockets and the connection (with the half
    frame the first process holds) move; the first role's ``run`` returns; the
    successor finishes the frame, serves new connections and answers the control
    socket, and at its drain removes the socket files it took over."""
    first = standalone(sock_dir)
    control = sock_dir / "control.sock"
    successor = Standalone(
        ProcessConfig(DaemonConfig([])), Start([], [], takeover=str(control)), Notifier(None)
    )
    with trio.fail_after(TEST_TIMEOUT):
        async with running(first) as old:
            stream = await connect(old.addresses[1])
            async with stream:
                await stream.send_all(b"hel")
                await until(lambda: states(first.daemon) == ["mid-frame"])
                async with running(successor) as new:
                    assert new.addresses == old.addresses
                    await old.returned.wait()
                    # The first has gone, and left the socket files to the successor.
                    assert (sock_dir / "echo.sock").exists()
                    assert control.exists()
                    await stream.send_all(b"lo\n")
                    assert await receive_line(stream) == b"hello\n"
                    for address in new.addresses:
                        assert await echo_frames(address, [b"new"]) == [b"new"]
                    stats = await ask(control, "stats")
                    assert stats["connections"]["taken_over"] == 1
                    assert stats["frames"] == 3
    assert first.failure is None
    assert successor.failure is None
    assert old.summary is not None
    assert not old.summary.forced
    assert first.daemon.stats.connections_handed == 1
    assert first.daemon.stats.frames == 0
    assert new.summary == DrainSummary(drained=1, aborted=0, forced=False)
    assert not (sock_dir / "echo.sock").exists()
    assert not control.exists()


async def test_a_successor_with_other_framing_is_refused_and_the_first_serves_on(
    sock_dir: Path,
) -> None:
    first = standalone(sock_dir)
    control = sock_dir / "control.sock"
    successor = Standalone(
        ProcessConfig(DaemonConfig([], Framing("length"))),
        Start([], [], takeover=str(control)),
        Notifier(None),
    )
    with trio.fail_after(TEST_TIMEOUT):
        async with running(first) as old:
            with pytest.raises(HandoverError) as caught:
                await successor.run()
            assert "\n" not in str(caught.value)
            assert str(caught.value).startswith("cannot take over: ")
            assert "frames differently" in str(caught.value)
            assert successor.daemon.summary is None
            for address in old.addresses:
                assert await echo_frames(address, [b"still"]) == [b"still"]
            assert (await ask(control, "stats"))["upgrade"] is None
    assert old.summary == DrainSummary(drained=0, aborted=0, forced=False)
    assert first.failure is None
    assert not control.exists()


# -- a worker, its supervisor played by the test ----------------------------------------


def worker_with_supervisor(
    sock_dir: Path, notifier: Notifier | None = None, handover: socket.socket | None = None
) -> tuple[Worker, ControlClient, UnixAddress]:
    """A worker given a listening socket and its end of a socketpair, as a supervisor
    starts one (``--inherit``, ``--channel``, and ``handover``: ``--handover-socket``);
    and the supervisor's end, to play it."""
    path = str(sock_dir / "echo.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen()
    ours, theirs = socket.socketpair()
    worker = Worker(
        ProcessConfig(DaemonConfig([])),
        Start([], [BoundListener.from_socket(listening)], channel=theirs, handover_socket=handover),
        notifier if notifier is not None else Notifier(None),
    )
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    return worker, ControlClient(stream, "worker 1"), UnixAddress(path)


async def test_a_worker_serves_its_inherited_socket_and_answers_its_supervisor(
    sock_dir: Path,
) -> None:
    worker, supervisor, address = worker_with_supervisor(sock_dir)
    assert worker.quiet
    assert worker.upgrader is None
    with trio.fail_after(TEST_TIMEOUT):
        async with supervisor.stream, running(worker) as ran:
            assert ran.addresses == [address]
            stats = await supervisor.request("stats")
            assert stats["state"] == "serving"
            assert stats["control"] is None
            assert [row["address"] for row in stats["listeners"]] == [str(address)]
            commands = await supervisor.request("help")
            assert {"stats", "connections", "drain", "take-connections"} <= set(commands)
            assert "upgrade" not in commands
            assert not any(usage.startswith("takeover") for usage in commands)
            stream = await connect(address)
            async with stream:
                await stream.send_all(b"hi\n")
                assert await receive_line(stream) == b"hi\n"
                (row,) = await supervisor.request("connections")
                assert (row["frames"], row["state"]) == (1, "reading")
                assert await supervisor.request("drain") == {"draining": 1, "already": False}
                assert await read_until_eof(stream) == b""
                await ran.returned.wait()
    assert ran.summary == DrainSummary(drained=1, aborted=0, forced=False)
    assert worker.failure is None


async def test_a_worker_answers_its_supervisor_only_once_it_serves(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor's handshake: its first ``stats``, asked as it starts the worker,
    is answered once the worker serves (that answer is the worker's readiness). Here
    the worker's daemon is held back from serving until the test lets it."""
    notifier = ReadyNotifier()
    worker, supervisor, address = worker_with_supervisor(sock_dir, notifier)
    let_serve = trio.Event()
    serve = Daemon.serve

    async def serve_when_let(daemon: Daemon, *args: Any, **kwargs: Any) -> DrainSummary:
        await let_serve.wait()
        return await serve(daemon, *args, **kwargs)

    monkeypatch.setattr(Daemon, "serve", serve_when_let)
    answered = trio.Event()

    async def handshake() -> None:
        stats = await supervisor.request("stats")
        assert notifier.ready.is_set()  # (it serves: READY=1 went out before the answer)
        assert [row["address"] for row in stats["listeners"]] == [str(address)]
        answered.set()

    ran = Running(worker)
    with trio.fail_after(TEST_TIMEOUT):
        async with supervisor.stream, trio.open_nursery() as nursery:
            nursery.start_soon(ran.run)
            nursery.start_soon(handshake)
            await trio.testing.wait_all_tasks_blocked()
            assert not answered.is_set()
            let_serve.set()
            await answered.wait()
            assert await echo_frames(address, [b"ready"]) == [b"ready"]
            worker.drain()
    assert ran.summary is not None
    assert (ran.summary.aborted, ran.summary.forced) == (0, False)


async def test_a_worker_drains_by_itself_when_its_supervisor_is_gone(
    sock_dir: Path, daemon_log: LogWaiter
) -> None:
    worker, supervisor, address = worker_with_supervisor(sock_dir)
    with trio.fail_after(TEST_TIMEOUT):
        async with running(worker) as ran:
            await supervisor.request("stats")
            stream = await connect(address)
            async with stream:
                await stream.send_all(b"half")
                await until(lambda: states(worker.daemon) == ["mid-frame"])
                await supervisor.aclose()  # (as at the supervisor's SIGKILL)
                await daemon_log.wait_for("the supervisor is gone: draining")
                assert worker.draining
                # The frame in progress finishes, then the connection closes.
                await stream.send_all(b" done\n")
                assert await read_until_eof(stream) == b"half done\n"
                await ran.returned.wait()
    assert ran.summary == DrainSummary(drained=1, aborted=0, forced=False)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe,
        pytest.raises(ConnectionRefusedError),  # its listener is closed
    ):
        probe.connect(address.path)


async def test_a_worker_takes_over_from_an_old_worker_when_its_supervisor_says(
    sock_dir: Path,
) -> None:
    """At an upgrade of the supervisor, each new worker takes over from the old one of
    its number (``--takeover`` its handover socket): it takes the listening socket and
    serves at once, but the old worker's connections only once its supervisor says
    ``take-connections``."""
    path = sock_dir / "w1.0"
    handover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    handover.bind(str(path))
    handover.listen()
    old_worker, old_supervisor, address = worker_with_supervisor(sock_dir, handover=handover)
    ours, theirs = socket.socketpair()
    new_worker = Worker(
        ProcessConfig(DaemonConfig([])),
        Start([], [], channel=theirs, takeover=str(path)),
        Notifier(None),
    )
    new_supervisor = ControlClient(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), "new")
    with trio.fail_after(TEST_TIMEOUT):
        async with old_supervisor.stream, new_supervisor.stream, running(old_worker) as old:
            await old_supervisor.request("stats")
            stream = await connect(address)
            async with stream:
                await stream.send_all(b"hel")
                await until(lambda: states(old_worker.daemon) == ["mid-frame"])
                async with running(new_worker) as new:
                    assert new.addresses == [address]
                    await new_supervisor.request("stats")
                    # Until its supervisor says so, the connection stays with the old one.
                    await trio.testing.wait_all_tasks_blocked()
                    assert old_worker.daemon.connections == 1
                    assert not old.returned.is_set()
                    assert await new_supervisor.request("take-connections") == {}
                    await old.returned.wait()
                    assert not path.exists()  # (the old worker's handover socket)
                    await stream.send_all(b"lo\n")
                    assert await receive_line(stream) == b"hello\n"
                    stats = await new_supervisor.request("stats")
                    assert stats["connections"]["taken_over"] == 1
                    assert stats["frames"] == 1
                    assert await echo_frames(address, [b"new"]) == [b"new"]
    assert old_worker.failure is None
    assert new_worker.failure is None
    assert old_worker.daemon.stats.connections_handed == 1
    assert new.summary is not None
    assert (new.summary.aborted, new.summary.forced) == (0, False)


# -- a supervisor of real worker processes ----------------------------------------------


async def test_a_supervising_role_serves_with_two_worker_processes(sock_dir: Path) -> None:
    path = str(sock_dir / "echo.sock")
    control = sock_dir / "control.sock"
    config = ProcessConfig(DaemonConfig([UnixAddress(path)]), UnixAddress(str(control)))
    # What a user gives; each worker gets them too (and ignores the addresses).
    argv = ["--sock", path, "--control", str(control), "--workers", "2"]
    role = Supervising(config, Start(argv, []), Notifier(None), 2)
    assert role.upgrader is not None
    with trio.fail_after(SUPERVISOR_TIMEOUT):
        async with running(role) as ran:  # (once both workers answer)
            assert ran.addresses == [UnixAddress(path)]
            snapshot = await role.snapshot()
            workers = snapshot["workers"]
            assert [(w["worker"], w["state"]) for w in workers] == [
                (1, "serving"),
                (2, "serving"),
            ]
            pids = [w["pid"] for w in workers]
            assert len({*pids, os.getpid()}) == 3
            for n in range(4):
                frame = b"frame %d" % n
                assert await echo_frames(UnixAddress(path), [frame]) == [frame]
            commands = await ask(control, "help")
            assert {"stats", "takeover versions=[1]", "upgrade"} <= set(commands)
            assert (await ask(control, "stats"))["frames"] == 4
            role.drain()
            await ran.returned.wait()
    assert ran.summary == DrainSummary(drained=0, aborted=0, forced=False)
    assert role.failure is None
    for pid in pids:  # exited, and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not Path(path).exists()
    assert not control.exists()


#: Stands in for triodaemon's program in a supervisor's workers: worker 1 fails at
#: start, worker 2 would serve forever (it never answers; it is killed).
_ONE_FAILS = (
    "import select, sys\n"
    "if sys.argv[sys.argv.index('--worker') + 1] == '1':\n"
    "    sys.exit('triodaemon: error: worker 1 cannot start')\n"
    "select.select([], [], [])\n"
)


async def test_a_failed_first_start_raises_from_run_and_leaves_no_worker_behind(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that failed says why, as ``run``'s exception (``nursery.start``
    raises it); the other worker is killed and reaped, its pipes closed."""
    import sys

    from triodaemon import TriodaemonError, _workers

    monkeypatch.setattr(_workers, "python_program", lambda: [sys.executable, "-c", _ONE_FAILS])
    path = str(sock_dir / "echo.sock")
    role = Supervising(
        ProcessConfig(DaemonConfig([UnixAddress(path)])),
        Start(["--sock", path], []),
        Notifier(None),
        2,
    )
    with trio.fail_after(SUPERVISOR_TIMEOUT):
        async with trio.open_nursery() as nursery:
            with pytest.raises(TriodaemonError, match="worker 1 exited with code 1 before it"):
                await nursery.start(role.run)
    processes = [worker.process for worker in role.supervisor._workers]
    assert all(process is not None and process.returncode is not None for process in processes)
    assert not Path(path).exists()


async def test_a_supervising_role_drained_before_it_runs_starts_no_worker(
    sock_dir: Path,
) -> None:
    path = str(sock_dir / "echo.sock")
    role = Supervising(
        ProcessConfig(DaemonConfig([UnixAddress(path)])),
        Start(["--sock", path], []),
        Notifier(None),
        2,
    )
    role.drain()
    with trio.fail_after(TEST_TIMEOUT):
        assert await role.run() == DrainSummary(0, 0, False)
    assert [worker.process for worker in role.supervisor._workers] == [None, None]


# -- run_role: a role as the process ----------------------------------------------------


@contextmanager
def signals_put_back() -> Iterator[None]:
    """``run_role`` gives every handled signal a handler of its own and leaves them
    inert (a process exits after it): put back this process's handlers and mask."""
    handlers = {signum: signal.getsignal(signum) for signum in _signals.HANDLED_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            if handler is not None:  # (None: set from C, cannot be put back from Python)
                signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


async def test_run_role_without_its_sockets_exits_1_with_one_line(
    sock_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sock_dir / "gone" / "echo.sock"
    role = Standalone(
        ProcessConfig(DaemonConfig([UnixAddress(str(path))])), Start([], []), Notifier(None)
    )
    with trio.fail_after(TEST_TIMEOUT), signals_put_back():
        assert await run_role(role) == 1
    err = capsys.readouterr().err
    assert err.startswith("triodaemon: error: ")
    assert err.count("\n") == 1
    assert str(path.parent) in err
    assert role.failure is not None
    assert role.failure in err


async def test_run_role_a_takeover_from_nobody_exits_1_with_one_line(
    sock_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(sock_dir / "nobody.sock")
    role = Standalone(ProcessConfig(DaemonConfig([])), Start([], [], takeover=path), Notifier(None))
    with trio.fail_after(TEST_TIMEOUT), signals_put_back():
        assert await run_role(role) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("triodaemon: error: cannot take over: ")
    assert err.endswith(f"(is a daemon running with --control {path}?)\n")
    assert role.failure is not None
    assert role.failure.startswith("cannot take over: ")


@pytest.mark.parametrize(("sigterms", "code"), [(1, 0), (2, 1)])
async def test_run_role_drains_on_sigterm_and_stops_at_once_on_a_second(
    sock_dir: Path,
    capsys: pytest.CaptureFixture[str],
    daemon_log: LogWaiter,
    sigterms: int,
    code: int,
) -> None:
    """The first SIGTERM drains (a frame in progress finishes: exit 0); a second one
    aborts (exit 1)."""
    notifier = ReadyNotifier()
    role = Standalone(standalone_config(sock_dir, drain_timeout=60), Start([], []), notifier)
    exit_code: int | None = None

    async def run() -> None:
        nonlocal exit_code
        exit_code = await run_role(role)

    with trio.fail_after(TEST_TIMEOUT), signals_put_back():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await notifier.ready.wait()
            stream = await connect(UnixAddress(str(sock_dir / "echo.sock")))
            async with stream:
                await stream.send_all(b"in prog")
                await until(lambda: states(role.daemon) == ["mid-frame"])
                os.kill(os.getpid(), signal.SIGTERM)
                await role.daemon.wait_draining()
                if sigterms == 2:
                    os.kill(os.getpid(), signal.SIGTERM)
                    await daemon_log.wait_for("received SIGTERM again: stopping now")
                    assert await read_until_eof(stream) == b""
                else:
                    await stream.send_all(b"ress\n")
                    assert await read_until_eof(stream) == b"in progress\n"
    assert exit_code == code
    assert daemon_log.count("received SIGTERM: draining") == 1
    assert role.daemon.summary == DrainSummary(
        drained=2 - sigterms, aborted=sigterms - 1, forced=sigterms == 2
    )
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"triodaemon: control on unix:{sock_dir / 'control.sock'}"
    assert err[1].startswith("triodaemon: listening on tcp://127.0.0.1:")
    assert err[2] == f"triodaemon: listening on unix:{sock_dir / 'echo.sock'}"
    assert len(err) == 3
