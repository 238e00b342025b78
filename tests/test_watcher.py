"""The shared readiness task (IdleWatcher), alone and under a Connection, on real sockets."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from triodaemon import (
    Connection,
    ConnectionInfo,
    DaemonConfig,
    FrameHandler,
    Framing,
    Stats,
    UnixAddress,
    echo,
    run_check,
)
from triodaemon._connection import PARK_AFTER_SECONDS
from triodaemon._watcher import IdleWatcher, Step

from .conftest import echo_in_the_task, read_until_eof, running
from .test_check import EVERY_FRAMING

INFO = ConnectionInfo(1, "test://", "peer")


@asynccontextmanager
async def watching(idle_timeout: float = 300) -> AsyncIterator[tuple[IdleWatcher, trio.Nursery]]:
    """A running watcher, engaged, and a nursery for the tasks that park in it."""
    watcher = IdleWatcher(idle_timeout, engaged=True)
    async with trio.open_nursery() as outer:
        await outer.start(watcher.run)
        async with trio.open_nursery() as nursery:
            yield watcher, nursery
        outer.cancel_scope.cancel()


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


async def park(watcher: IdleWatcher, sock: socket.socket) -> bool:
    """Park the current task on ``sock`` the way a Connection does; what it was woken with."""
    fd = sock.fileno()

    def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        watcher.forget(fd)
        return trio.lowlevel.Abort.SUCCEEDED

    watcher.park(fd, trio.lowlevel.current_task())
    woken: bool = await trio.lowlevel.wait_task_rescheduled(abort)
    return woken


async def test_a_parked_task_wakes_when_its_socket_is_readable() -> None:
    ours, theirs = pair()
    results: list[bool] = []
    with ours, theirs, trio.fail_after(5):
        async with watching() as (watcher, nursery):

            async def waiter() -> None:
                results.append(await park(watcher, ours))

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert watcher.parked == 1
            assert results == []
            theirs.send(b"x")
        assert results == [True]
        assert watcher.parked == 0


async def test_eof_wakes_a_parked_task_too() -> None:
    ours, theirs = pair()
    with ours, trio.fail_after(5):
        async with watching() as (watcher, _):
            theirs.close()
            assert await park(watcher, ours) is True
            assert ours.recv(10) == b""


async def test_the_idle_deadline_wakes_with_false_at_exactly_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    first, first_peer = pair()
    second, second_peer = pair()
    woken: dict[str, float] = {}
    with first, first_peer, second, second_peer:
        async with watching(idle_timeout=30) as (watcher, nursery):
            start = trio.current_time()

            async def waiter(name: str, sock: socket.socket, delay: float) -> None:
                await trio.sleep(delay)
                assert await park(watcher, sock) is False
                woken[name] = trio.current_time() - start

            # The watcher is asleep with nothing parked when the first one parks.
            nursery.start_soon(waiter, "first", first, 1)
            nursery.start_soon(waiter, "second", second, 5)
    assert woken == {"first": pytest.approx(31), "second": pytest.approx(35)}


async def test_wake_wakes_early_and_only_a_parked_task() -> None:
    ours, theirs = pair()
    results: list[bool] = []
    with ours, theirs, trio.fail_after(5):
        async with watching() as (watcher, nursery):
            assert watcher.wake(ours.fileno()) is False  # nobody parked there

            async def waiter() -> None:
                results.append(await park(watcher, ours))

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert watcher.wake(ours.fileno()) is True
            assert watcher.wake(ours.fileno()) is False  # woken once
        assert results == [False]


async def test_cancelling_a_parked_task_stops_watching_its_socket() -> None:
    ours, theirs = pair()
    with ours, theirs, trio.fail_after(5):
        async with watching() as (watcher, nursery):
            cancelled = trio.Event()

            async def waiter(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    await park(watcher, ours)
                cancelled.set()

            scope = await nursery.start(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert watcher.parked == 1
            scope.cancel()
            await cancelled.wait()
            assert watcher.parked == 0
            theirs.send(b"nobody is waiting for this")
            await trio.testing.wait_all_tasks_blocked()  # the watcher wakes nobody, and lives


async def test_a_socket_closed_behind_the_watchers_back_is_forgotten_quietly() -> None:
    ours, theirs = pair()
    with theirs, trio.fail_after(5):
        async with watching() as (watcher, nursery):

            async def waiter(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    await park(watcher, ours)

            scope = await nursery.start(waiter)
            await trio.testing.wait_all_tasks_blocked()
            ours.close()  # the kernel drops it from the epoll; unregister would fail
            scope.cancel()
        assert watcher.parked == 0


async def test_more_ready_sockets_than_one_poll_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("triodaemon._watcher._POLL_BATCH", 3)
    pairs = [pair() for _ in range(10)]
    results: list[bool] = []
    try:
        with trio.fail_after(5):
            async with watching() as (watcher, nursery):

                async def waiter(sock: socket.socket) -> None:
                    results.append(await park(watcher, sock))

                for ours, _ in pairs:
                    nursery.start_soon(waiter, ours)
                await trio.testing.wait_all_tasks_blocked()
                for _, theirs in pairs:
                    theirs.send(b"x")
                await trio.testing.wait_all_tasks_blocked()
                assert results == [True] * 10  # all in one wake-up of the watcher
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


async def test_park_needs_a_running_watcher_and_run_runs_once() -> None:
    ours, theirs = pair()
    with ours, theirs:
        with pytest.raises(RuntimeError, match="not running"):
            IdleWatcher().park(ours.fileno(), trio.lowlevel.current_task())
        async with watching() as (watcher, _):
            with pytest.raises(RuntimeError, match="running already"):
                await watcher.run()


async def test_a_served_socket_is_stepped_in_the_watcher_while_its_task_sleeps() -> None:
    ours, theirs = pair()
    seen: list[bytes] = []
    woken: list[bool] = []

    def step() -> bool:
        data = ours.recv(100)
        seen.append(data)
        return data != b"stop"

    with ours, theirs, trio.fail_after(5):
        async with watching() as (watcher, nursery):

            async def waiter() -> None:
                fd = ours.fileno()

                def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                    watcher.forget(fd)
                    return trio.lowlevel.Abort.SUCCEEDED

                watcher.serve(fd, trio.lowlevel.current_task(), step)
                woken.append(await trio.lowlevel.wait_task_rescheduled(abort))

            nursery.start_soon(waiter)
            for message in (b"one", b"two"):
                theirs.send(message)
                await trio.testing.wait_all_tasks_blocked()
                assert watcher.parked == 1
            assert seen == [b"one", b"two"]
            assert woken == []  # served twice; the task never ran
            theirs.send(b"stop")
        assert seen == [b"one", b"two", b"stop"]
        assert woken == [True]
        assert watcher.parked == 0


async def serve_until_woken(watcher: IdleWatcher, sock: socket.socket, step: Step) -> bool:
    """Have ``sock`` served the way a Connection does; what its task was woken with."""
    fd = sock.fileno()

    def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        watcher.forget(fd)
        return trio.lowlevel.Abort.SUCCEEDED

    watcher.serve(fd, trio.lowlevel.current_task(), step)
    woken: bool = await trio.lowlevel.wait_task_rescheduled(abort)
    return woken


async def test_a_served_sockets_idle_deadline_moves_with_each_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = pair()
    with ours, theirs:
        async with watching(idle_timeout=30) as (watcher, nursery):
            start = trio.current_time()

            async def peer() -> None:
                for _ in range(3):
                    await trio.sleep(20)
                    theirs.send(b"x")

            nursery.start_soon(peer)
            assert await serve_until_woken(watcher, ours, lambda: bool(ours.recv(10))) is False
            assert trio.current_time() - start == pytest.approx(90)  # 60 + 30


async def test_an_exception_in_a_step_is_raised_in_the_task_and_the_watcher_goes_on() -> None:
    first, first_peer = pair()
    second, second_peer = pair()

    def broken() -> bool:
        raise ZeroDivisionError("a bug in a step")

    with first, first_peer, second, second_peer, trio.fail_after(5):
        async with watching() as (watcher, nursery):
            first_peer.send(b"x")
            with pytest.raises(ZeroDivisionError, match="a bug in a step"):
                await serve_until_woken(watcher, first, broken)
            assert watcher.parked == 0
            second_peer.send(b"y")
            nursery.start_soon(park, watcher, second)
            await trio.testing.wait_all_tasks_blocked()
            assert watcher.parked == 0  # the watcher is alive: woken at once


# A Connection that waits in the watcher.


#: How a connection waits in the watcher: served (the echo), or parked (another handler).
SERVED_OR_PARKED = pytest.mark.parametrize(
    "handler", [echo, echo_in_the_task], ids=["served", "parked"]
)


@asynccontextmanager
async def parked_connection(
    idle_timeout: float = 300, framing: Framing | None = None, handler: FrameHandler = echo
) -> AsyncIterator[tuple[Connection, trio.SocketStream, IdleWatcher, Stats]]:
    """A running Connection on a socket pair, with an engaged watcher; yields its client.

    With the echo handler it is served by the watcher; with another, it parks there.
    """
    ours, theirs = pair()
    client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    stats = Stats()
    async with watching(idle_timeout) as (watcher, nursery):
        connection = Connection(
            None,
            INFO,
            framing or Framing(),
            handler,
            idle_timeout=idle_timeout,
            stats=stats,
            raw_socket=ours,
            watcher=watcher,
        )
        nursery.start_soon(connection.run)
        async with client:
            yield connection, client, watcher, stats


async def test_a_quiet_connection_parks_a_busy_one_waits_on_its_own_then_parks_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with parked_connection(handler=echo_in_the_task) as (connection, client, watcher, stats):
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.parked == 1
        for _ in range(3):  # frames in quick succession: after two, it is busy
            await client.send_all(b"ping\n")
            assert await client.receive_some() == b"ping\n"
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.parked == 0
        await trio.sleep(PARK_AFTER_SECONDS / 2)
        assert watcher.parked == 0
        await trio.sleep(PARK_AFTER_SECONDS)  # quiet long enough: parked again
        assert watcher.parked == 1
        await client.send_all(b"still served\n")
        assert await client.receive_some() == b"still served\n"
        await client.send_eof()
        assert await client.receive_some() == b""
    assert connection.completed
    assert stats.frames == 4


@SERVED_OR_PARKED
async def test_drain_closes_a_parked_connection_at_once(
    autojump_clock: trio.testing.MockClock, handler: FrameHandler
) -> None:
    # In the first round the connection is surely parked when the drain comes; in the
    # others trio's random batch order lands the drain both in the yield after the
    # reply and in the parked wait after it (as in test_connection).
    for index in range(40):
        async with parked_connection(handler=handler) as (connection, client, watcher, stats):
            await client.send_all(b"one\n")
            assert await client.receive_some() == b"one\n"
            if index == 0:
                await trio.testing.wait_all_tasks_blocked()
                assert watcher.parked == 1
            start = trio.current_time()
            connection.drain()
            assert await client.receive_some() == b""
            assert trio.current_time() == start
        assert connection.completed
        assert stats.idle_timeouts == 0


@SERVED_OR_PARKED
async def test_a_parked_drain_finishes_the_frame_in_progress(
    autojump_clock: trio.testing.MockClock, handler: FrameHandler
) -> None:
    framing = Framing("length")
    wire = framing.encode(b"in progress")
    async with parked_connection(framing=framing, handler=handler) as (
        connection,
        client,
        watcher,
        _,
    ):
        await client.send_all(wire[:6])
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.parked == 1
        connection.drain()
        await trio.sleep(3)
        assert watcher.parked == 1  # not woken: a frame is in progress
        await client.send_all(wire[6:])
        data = b""
        while chunk := await client.receive_some():
            data += chunk
        assert data == wire
    assert connection.completed


@SERVED_OR_PARKED
async def test_a_parked_connection_is_closed_at_its_idle_timeout(
    autojump_clock: trio.testing.MockClock, handler: FrameHandler
) -> None:
    async with parked_connection(idle_timeout=30, handler=handler) as (_, client, watcher, stats):
        await client.send_all(b"ping\n")
        assert await client.receive_some() == b"ping\n"
        start = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.parked == 1
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(30)
    assert stats.idle_timeouts == 1


@SERVED_OR_PARKED
async def test_a_cancelled_parked_connection_closes_its_socket(handler: FrameHandler) -> None:
    ours, theirs = pair()
    with theirs, trio.fail_after(5):
        async with watching() as (watcher, nursery):
            connection = Connection(
                None, INFO, handler=handler, idle_timeout=300, raw_socket=ours, watcher=watcher
            )
            nursery.start_soon(connection.run)
            await trio.testing.wait_all_tasks_blocked()
            assert watcher.parked == 1
            nursery.cancel_scope.cancel()
        assert watcher.parked == 0
        assert ours.fileno() == -1
        assert not connection.completed


def test_the_watcher_and_the_connection_share_one_idle_timeout() -> None:
    ours, theirs = pair()
    with ours, theirs, pytest.raises(ValueError, match="idle timeout"):
        Connection(None, INFO, idle_timeout=30, raw_socket=ours, watcher=IdleWatcher(60))


@SERVED_OR_PARKED
@pytest.mark.parametrize("framing", EVERY_FRAMING, ids=lambda f: f.describe())
async def test_triodaemon_check_passes_with_every_connection_in_the_watcher(
    sock_dir: Path, framing: Framing, handler: FrameHandler
) -> None:
    config = DaemonConfig([UnixAddress(str(sock_dir / "e.sock"))], framing, park_above=0)
    with trio.fail_after(60):
        async with running(config, handler=handler) as (_, [address]):
            report = await run_check(address, framing, timeout=3)
    assert report.passed, report.table()


# An echo connection served by the watcher: what its task is woken for.


class ConnectionWakeups(trio.abc.Instrument):
    """Count how often connection tasks are scheduled to run."""

    def __init__(self) -> None:
        self.count = 0

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        code = getattr(task.coro, "cr_code", None)
        if code is Connection.run.__code__:
            self.count += 1


@asynccontextmanager
async def counting_wakeups() -> AsyncIterator[ConnectionWakeups]:
    wakeups = ConnectionWakeups()
    trio.lowlevel.add_instrument(wakeups)
    try:
        yield wakeups
    finally:
        trio.lowlevel.remove_instrument(wakeups)


async def test_a_served_connection_echoes_without_waking_its_task() -> None:
    with trio.fail_after(5):
        async with parked_connection() as (connection, client, watcher, stats):
            await trio.testing.wait_all_tasks_blocked()
            async with counting_wakeups() as wakeups:
                for index in range(50):
                    await client.send_all(b"frame %d\n" % index)
                    assert await client.receive_some() == b"frame %d\n" % index
                assert wakeups.count == 0
                assert watcher.parked == 1
                await client.send_eof()
                assert await client.receive_some() == b""
                assert wakeups.count >= 1  # for the EOF
    assert connection.completed
    assert stats.frames == 50
    assert (
        stats.bytes_received == stats.bytes_sent == sum(len(b"frame %d\n" % i) for i in range(50))
    )


async def test_a_served_connection_reports_a_frame_cut_short_by_eof(
    caplog: pytest.LogCaptureFixture,
) -> None:
    framing = Framing("length")
    with trio.fail_after(5):
        async with parked_connection(framing=framing) as (connection, client, _, stats):
            await client.send_all(framing.encode(b"whole") + framing.encode(b"0123456789")[:7])
            await client.send_eof()
            assert await read_until_eof(client) == framing.encode(b"whole")
    assert connection.completed
    assert stats.incomplete_frames == 1
    assert "peer closed mid-frame (3 of 10 bytes); discarded" in caplog.text


async def test_a_served_connection_sends_what_it_owes_then_closes_on_an_oversized_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(5):
        async with parked_connection(framing=Framing(max_frame=8)) as (_, client, _, stats):
            await client.send_all(b"ok\nfine\n" + b"x" * 20)
            assert await read_until_eof(client) == b"ok\nfine\n"
    assert stats.framing_errors == 1
    assert "frames are limited to 8 bytes; closing" in caplog.text


async def test_a_served_connection_reset_by_its_peer_is_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "triodaemon")
    with trio.fail_after(5):
        async with parked_connection() as (_, client, _, stats):
            await client.send_all(b"x\n")
            assert await client.receive_some() == b"x\n"
            # A Unix socket closed with unread data resets its peer instead of an EOF.
            await client.send_all(b"unread\n")
            await trio.testing.wait_all_tasks_blocked()  # echoed, not read
            await client.aclose()
            await trio.testing.wait_all_tasks_blocked()
    assert stats.resets == 1
    assert "connection lost: connection reset by peer" in caplog.text
