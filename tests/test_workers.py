"""``--workers N``: a supervisor and its worker processes, started as a user starts them."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from triodaemon import ClientError, TcpAddress, UnixAddress, connect
from triodaemon._control import open_control
from triodaemon._supervisor import FIRST_BACKOFF
from triodaemon.testing import echo_frames

from .conftest import DaemonProcess, LockstepClient, SpawnFn, read_until_eof, run_triodaemon

TEST_TIMEOUT = 45


async def start(spawn: SpawnFn, sock_dir: Path, *args: str, workers: int = 2) -> DaemonProcess:
    daemon = await spawn(
        "--sock",
        str(sock_dir / "echo.sock"),
        "--control",
        str(sock_dir / "control.sock"),
        "--workers",
        str(workers),
        *args,
    )
    await daemon.wait_ready(1)
    return daemon


async def ask(sock_dir: Path, command: str, **args: Any) -> Any:
    control = await open_control(str(sock_dir / "control.sock"))
    async with control.stream:
        return await control.request(command, **args)


async def worker_pids(sock_dir: Path) -> dict[int, int]:
    stats = await ask(sock_dir, "stats")
    return {worker["worker"]: worker["pid"] for worker in stats["workers"]}


@asynccontextmanager
async def on_each_worker(
    address: TcpAddress | UnixAddress, pids: dict[int, int], per_worker: int
) -> AsyncIterator[list[trio.SocketStream]]:
    """Open ``per_worker`` answered connections on each worker, in worker order.

    Which worker accepts from the shared socket is the kernel's choice (docs/cli.md,
    worker processes), so one run may give every connection to one worker. Here all
    workers but one are stopped while that one's connections are made and answered:
    only it can accept them. The connections are closed on the way out.
    """
    streams: list[trio.SocketStream] = []
    try:
        for worker, pid in sorted(pids.items()):
            others = [other for other in pids.values() if other != pid]
            for other in others:
                os.kill(other, signal.SIGSTOP)
            try:
                for n in range(per_worker):
                    stream = await connect(address)
                    streams.append(stream)
                    hello = b"hello %d.%d\n" % (worker, n)
                    await stream.send_all(hello)
                    assert await stream.receive_some() == hello
            finally:
                for other in others:
                    os.kill(other, signal.SIGCONT)
        yield streams
    finally:
        for stream in streams:
            await stream.aclose()


@contextmanager
def watching_exits(pids: Iterable[int]) -> Iterator[list[int]]:
    """pidfds of processes that are not our children: readable once each has exited."""
    fds = [os.pidfd_open(pid) for pid in pids]
    try:
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


async def wait_for_lines(daemon: DaemonProcess, pattern: str, count: int) -> list[str]:
    """Wait until ``count`` stderr lines match ``pattern`` (a regex); return them."""
    regex = re.compile(pattern)
    with trio.fail_after(TEST_TIMEOUT):
        while True:
            found = [line for line in daemon.lines if regex.search(line)]
            if len(found) >= count:
                return found
            if daemon.process.returncode is not None:
                raise AssertionError(f"exited first:\n{daemon.stderr}")
            await daemon._changed.wait()


async def test_every_worker_serves_and_the_supervisor_reports_them(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir, "--log-level", "debug")
        address = daemon.addresses[0]
        pids = await worker_pids(sock_dir)
        assert sorted(pids) == [1, 2]
        assert len({*pids.values(), daemon.process.pid}) == 3
        async with on_each_worker(address, pids, 3) as streams:
            rows = await ask(sock_dir, "connections")
            assert [row["worker"] for row in rows] == [1, 1, 1, 2, 2, 2]
            assert {row["pid"] for row in rows} == set(pids.values())
            # Named by the socket file they came through, as in one process (not the
            # private name it was bound to before it was moved into place).
            assert {row["listener"] for row in rows} == {str(address)}
            stats = await ask(sock_dir, "stats")
            assert stats["connections"]["open"] == len(streams)
            assert stats["frames"] == len(streams)
            assert [w["connections"] for w in stats["workers"]] == [3, 3]
            result = await run_triodaemon(
                "ctl", "--control", str(sock_dir / "control.sock"), "stats"
            )
            table = result.stdout.decode()
            assert f"worker 1     pid {pids[1]}, serving" in table
            assert f"worker 2     pid {pids[2]}, serving" in table
            result = await run_triodaemon(
                "ctl", "--control", str(sock_dir / "control.sock"), "connections"
            )
            header, *lines = result.stdout.decode().splitlines()
            assert header.split()[:3] == ["worker", "pid", "id"]
            assert len(lines) == len(streams)
        # Their log lines come through the supervisor, whole, with their names.
        await wait_for_lines(daemon, rf"DEBUG worker [12] \(pid {pids[1]}\): conn 1 from ", 1)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    assert "Traceback" not in daemon.stderr
    assert not (sock_dir / "echo.sock").exists()
    assert not (sock_dir / "control.sock").exists()


async def test_sigusr1_to_the_supervisor_logs_the_workers_counters_as_of_now(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """Not as of its last poll of the workers (a second old at most): the frames
    just echoed are in the line."""
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir)
        pids = await worker_pids(sock_dir)
        async with on_each_worker(daemon.addresses[0], pids, 2) as streams:
            daemon.signal(signal.SIGUSR1)
            line = await daemon.wait_for_line(" INFO stats: ")
            assert f"stats: {len(streams)} connections open, {len(streams)} accepted; " in line
            assert f"; {len(streams)} frames;" in line
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_one_worker_means_no_supervisor(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir, workers=1)
        stats = await ask(sock_dir, "stats")
        assert stats["pid"] == daemon.process.pid
        assert "workers" not in stats
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_a_killed_worker_is_replaced_and_the_other_serves_meanwhile(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir, "--log-level", "debug")
        address = daemon.addresses[0]
        before = await worker_pids(sock_dir)
        os.kill(before[1], signal.SIGKILL)
        # At once, while worker 1 is dead or starting again: nothing is refused.
        for i in range(30):
            assert await echo_frames(address, [b"meanwhile %d" % i]) == [b"meanwhile %d" % i]
        await wait_for_lines(daemon, rf"worker 1 \(pid {before[1]}\) killed by SIGKILL", 1)
        await wait_for_lines(daemon, r"worker 1 \(pid \d+\) serves", 2)  # started again
        one, two = (await ask(sock_dir, "stats"))["workers"]
        assert one["state"] == "serving"
        assert one["pid"] not in before.values()
        assert one["restarts"] == 1
        assert (two["pid"], two["restarts"]) == (before[2], 0)
        assert await echo_frames(address, [b"after"]) == [b"after"]
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_a_worker_that_keeps_dying_at_start_is_restarted_ever_later(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir, "--log-level", "debug")
        address = daemon.addresses[0]
        starts = r"started worker 1 \(pid (\d+)\)"
        for attempt in range(1, 5):
            line = (await wait_for_lines(daemon, starts, attempt))[-1]
            match = re.search(starts, line)
            assert match is not None
            os.kill(int(match[1]), signal.SIGKILL)
        lines = await wait_for_lines(daemon, r"worker 1 \(pid \d+\) killed by SIGKILL", 4)
        delays = [float(re.findall(r"starting it again in ([\d.]+)s", line)[0]) for line in lines]
        assert delays == [FIRST_BACKOFF * 2**n for n in range(4)]
        assert await echo_frames(address, [b"worker 2 serves"]) == [b"worker 2 serves"]
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


@pytest.mark.parametrize(
    ("signum", "why"),
    [
        (signal.SIGKILL, "killed by SIGKILL"),  # the OOM killer
        (
            signal.SIGTERM,
            r"(killed by SIGTERM|exited with code 143|exited with code 0 after serving [\d.]+s)",
        ),
    ],
)
async def test_a_worker_killed_during_the_first_start_is_started_again(
    spawn: SpawnFn, sock_dir: Path, signum: int, why: str
) -> None:
    """The OOM killer (or an operator) ends a worker before the first start is
    complete: it is started again like any other, and the service starts."""
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--sock", str(sock_dir / "echo.sock"), "--control", str(sock_dir / "control.sock"),
            "--workers", "2", "--log-level", "debug",
        )  # fmt: skip
        line = (await wait_for_lines(daemon, r"started worker 2 \(pid \d+\)", 1))[0]
        pid = int(re.findall(r"started worker 2 \(pid (\d+)\)", line)[0])
        os.kill(pid, signum)  # (a worker takes far longer than this to serve)
        (address,) = await daemon.wait_ready(1)
        await wait_for_lines(daemon, rf"worker 2 \(pid {pid}\) {why}; starting it", 1)
        stats = await ask(sock_dir, "stats")
        assert [w["state"] for w in stats["workers"]] == ["serving", "serving"]
        assert [w["restarts"] for w in stats["workers"]] == [0, 1]
        assert await echo_frames(address, [b"served"]) == [b"served"]
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
    assert "Traceback" not in daemon.stderr


async def test_a_worker_that_fails_by_itself_at_the_first_start_ends_it(
    sock_dir: Path,
) -> None:
    """A worker that exits with a code of its own before it ever served: a
    configuration that cannot work. The start fails, in one line, with its words."""
    site = sock_dir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if '--worker' in sys.argv:\n"
        "    print('triodaemon: error: this worker cannot work here', file=sys.stderr)\n"
        "    sys.stderr.flush()\n"
        "    os._exit(1)\n"
    )
    result = await trio.run_process(
        [*TRIODAEMON, "--sock", str(sock_dir / "e.sock"), "--workers", "2"],
        capture_stderr=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert re.fullmatch(
        r"triodaemon: error: worker [12] exited with code 1 before it served: "
        r"triodaemon: error: this worker cannot work here",
        lines[-1],
    )
    assert not (sock_dir / "e.sock").exists()


async def test_max_connections_is_the_whole_services(spawn: SpawnFn, sock_dir: Path) -> None:
    """``--workers 2 --max-connections 3``: 3 connections served at once in all, not
    3 per worker (each worker has its share; the shared socket lets one at its share
    leave connections to the other)."""
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir, "--max-connections", "3")
        address = daemon.addresses[0]
        pids = await worker_pids(sock_dir)
        stats = await ask(sock_dir, "stats")
        assert stats["limits"]["max_connections"] == 3
        streams: list[trio.SocketStream] = []
        try:
            for n in range(6):
                stream = await connect(address)
                streams.append(stream)
                await stream.send_all(b"%d\n" % n)
            answered = []
            for n, stream in enumerate(streams[:3]):
                assert await stream.receive_some() == b"%d\n" % n
                answered.append(n)
            await wait_for_lines(daemon, r"connection limit \([12]\) reached", 2)
            assert (await ask(sock_dir, "stats"))["connections"]["open"] == 3
            # One ends: exactly one more is served.
            await streams.pop(0).aclose()
            assert await streams[2].receive_some() == b"3\n"
            assert (await ask(sock_dir, "stats"))["connections"]["open"] == 3
        finally:
            for stream in streams:
                await stream.aclose()
        assert sorted(pids) == [1, 2]
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_fewer_connections_than_workers_is_a_usage_error() -> None:
    result = await run_triodaemon("--tcp", ":0", "--workers", "3", "--max-connections", "2")
    assert result.returncode == 2
    assert (
        "--max-connections 2 is the whole service's limit, fewer than the 3 workers"
        in result.stderr.decode()
    )


async def test_a_drain_under_load_across_workers_loses_nothing(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir)
        address = daemon.addresses[0]
        going = trio.Semaphore(0)
        async with on_each_worker(address, await worker_pids(sock_dir), 6) as streams:
            rows = await ask(sock_dir, "connections")
            assert sorted(row["worker"] for row in rows) == [1] * 6 + [2] * 6
            clients = [LockstepClient(n, going) for n in range(len(streams))]
            async with trio.open_nursery() as nursery:
                for client, stream in zip(clients, streams, strict=True):
                    nursery.start_soon(client.run, stream)
                for _ in clients:
                    await going.acquire()
                daemon.signal(signal.SIGTERM)
            assert await daemon.wait() == 0
    for client in clients:
        client.check()
    assert len(re.findall(r"worker \d \(pid \d+\): shutdown complete", daemon.stderr)) == 2
    assert "shutdown complete: every worker has exited" in daemon.stderr
    assert not (sock_dir / "echo.sock").exists()


async def test_a_killed_supervisor_leaves_no_worker_behind(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir, workers=3)
        pids = await worker_pids(sock_dir)
        with watching_exits(pids.values()) as exits:
            daemon.process.kill()
            assert await daemon.wait() == -signal.SIGKILL
            with trio.fail_after(5):
                for fd in exits:
                    await trio.lowlevel.wait_readable(fd)


async def test_a_second_signal_stops_the_workers_at_once(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir, "--drain-timeout", "60")
        stream = await connect(daemon.addresses[0])
        async with stream:
            await stream.send_all(b"never finished")  # holds its worker's drain
            await daemon.wait_until_received(14)
            pids = await worker_pids(sock_dir)
            with watching_exits(pids.values()) as exits:
                daemon.signal(signal.SIGTERM)
                await daemon.wait_for_line("draining 2 workers")
                daemon.signal(signal.SIGTERM)
                assert await daemon.wait() == 1
                with trio.fail_after(5):
                    for fd in exits:
                        await trio.lowlevel.wait_readable(fd)
            assert await read_until_eof(stream) == b""
        await daemon.wait_for_line("received SIGTERM again: stopping now")


async def test_a_stopped_worker_is_reported_and_answers_again_once_resumed(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir)
        pids = await worker_pids(sock_dir)
        os.kill(pids[1], signal.SIGSTOP)
        try:
            one, two = (await ask(sock_dir, "stats"))["workers"]  # after ASK_TIMEOUT
            assert (one["state"], two["state"]) == ("not answering", "serving")
        finally:
            os.kill(pids[1], signal.SIGCONT)
        # Its late reply is skipped: the next answers are the right ones.
        for _ in range(3):
            one, two = (await ask(sock_dir, "stats"))["workers"]
            assert (one["state"], one["pid"]) == ("serving", pids[1])
        assert len(await ask(sock_dir, "connections")) == 0
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_a_drain_refuses_new_connections_at_once(spawn: SpawnFn, sock_dir: Path) -> None:
    """The supervisor's own descriptors of the listening sockets close with the
    workers': nothing new is accepted into a queue that nobody will serve."""
    framing_args = ("--framing", "length", "--drain-timeout", "30")
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--sock",
            str(sock_dir / "echo.sock"),
            "--tcp",
            "127.0.0.1:0",
            "--control",
            str(sock_dir / "control.sock"),
            "--workers",
            "2",
            *framing_args,
        )
        tcp, unix = await daemon.wait_ready(2)
        wire = b"\x00\x00\x00\x05hello"
        stream = await connect(unix)
        async with stream:
            await stream.send_all(wire[:6])  # a frame in progress holds the drain open
            await daemon.wait_until_received(6)
            daemon.signal(signal.SIGTERM)
            await wait_for_lines(daemon, r"worker \d \(pid \d+\): shutting down", 2)
            assert not (sock_dir / "echo.sock").exists()
            for address in (tcp, unix):
                with pytest.raises(ClientError):
                    await connect(address)
            assert (await ask(sock_dir, "stats"))["state"] == "draining"  # it still answers
            await stream.send_all(wire[6:])
            assert await read_until_eof(stream) == wire
        assert await daemon.wait() == 0


WITH_40_FILES = ["sh", "-c", 'ulimit -n 40; exec "$@"', "sh"]
TRIODAEMON = [sys.executable, "-m", "triodaemon"]


async def test_a_worker_that_cannot_be_started_ends_the_start_in_one_line(
    sock_dir: Path,
) -> None:
    # Out of descriptors for the 8th worker's socketpair, say.
    result = await trio.run_process(
        [*WITH_40_FILES, *TRIODAEMON, "--sock", str(sock_dir / "e.sock"), "--workers", "20"],
        capture_stderr=True,
        check=False,
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert re.fullmatch(r"triodaemon: error: worker \d+ could not be started: .+", lines[-1])
    assert "Traceback" not in result.stderr.decode()
    assert not (sock_dir / "e.sock").exists()


async def test_too_many_workers_is_a_usage_error() -> None:
    from triodaemon._cli.serve import MAX_WORKERS

    result = await run_triodaemon("--tcp", ":0", "--workers", str(MAX_WORKERS + 1))
    assert result.returncode == 2
    assert f"at most {MAX_WORKERS}" in result.stderr.decode()


def test_worker_lines_keep_their_level_and_tracebacks_follow_theirs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from triodaemon._workers import WorkerProcess, relay_line

    worker = WorkerProcess(2)
    lines = [
        "triodaemon: error: something before any log line",
        "2026-11-26 10:00:00,000 triodaemon DEBUG conn 7: handler traceback",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "2026-11-26 10:00:00,001 triodaemon INFO conn 7: closed by peer",
    ]
    with caplog.at_level(logging.DEBUG, logger="triodaemon"):
        for line in lines:
            relay_line(worker, 4242, line)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "worker 2 (pid 4242): triodaemon: error: something before any log line"),
        (logging.DEBUG, "worker 2 (pid 4242): conn 7: handler traceback"),
        (logging.DEBUG, "worker 2 (pid 4242): Traceback (most recent call last):"),
        (logging.DEBUG, 'worker 2 (pid 4242):   File "x.py", line 1, in <module>'),
        (logging.INFO, "worker 2 (pid 4242): conn 7: closed by peer"),
    ]
