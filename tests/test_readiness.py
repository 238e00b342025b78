"""The readiness backends alone, on real sockets: every test runs against each one."""

from __future__ import annotations

import math
import select
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from triodaemon._lowlevel.readiness import (
    EpollReadiness,
    PortableReadiness,
    Readiness,
    epoll_available,
    open_readiness,
)
from triodaemon._transport import Wait

BACKENDS = pytest.mark.parametrize("name", ["epoll", "portable"])


@asynccontextmanager
async def running(name: str) -> AsyncIterator[tuple[Readiness, trio.Nursery]]:
    """A running backend, and a nursery for the tasks that wait in it."""
    backend = open_readiness(name)  # type: ignore[arg-type]
    async with trio.open_nursery() as outer:
        await outer.start(backend.run)
        async with trio.open_nursery() as nursery:
            yield backend, nursery
        outer.cancel_scope.cancel()


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


@BACKENDS
async def test_a_wait_ends_when_the_socket_is_readable_or_at_eof(name: str) -> None:
    ours, theirs = pair()
    with ours, theirs, trio.fail_after(5):
        async with running(name) as (backend, nursery):
            results: list[Wait] = []

            async def wait() -> None:
                results.append(await backend.transport(ours).wait_readable(math.inf))

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert (results, backend.waiting) == ([], 1)
            theirs.send(b"x")
            await trio.testing.wait_all_tasks_blocked()
            assert (results, backend.waiting) == ([Wait.READY], 0)
            ours.recv(1)
            theirs.shutdown(socket.SHUT_WR)
            assert await backend.transport(ours).wait_readable(math.inf) is Wait.READY


@BACKENDS
async def test_deadlines_are_per_waiter(name: str, autojump_clock: trio.testing.MockClock) -> None:
    socks = [pair() for _ in range(3)]
    with trio.fail_after(100):
        async with running(name) as (backend, nursery):
            ended: dict[int, float] = {}
            start = trio.current_time()

            async def wait(index: int, timeout: float) -> None:
                waiter = backend.transport(socks[index][0])
                assert await waiter.wait_readable(start + timeout) is Wait.DEADLINE
                ended[index] = trio.current_time() - start

            # Out of order, and the earliest last: the backend sleeps until 10 first.
            nursery.start_soon(wait, 0, 30)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(wait, 1, 20)
            nursery.start_soon(wait, 2, 10)
    assert ended == pytest.approx({0: 30, 1: 20, 2: 10})
    for ours, theirs in socks:
        ours.close()
        theirs.close()


@BACKENDS
async def test_wake_ends_only_a_wait_under_way(name: str) -> None:
    ours, theirs = pair()
    with ours, theirs, trio.fail_after(5):
        async with running(name) as (backend, nursery):
            waiter = backend.transport(ours)
            assert waiter.wake() is False  # nobody waits
            results: list[Wait] = []

            async def wait() -> None:
                results.append(await waiter.wait_readable(math.inf))

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert waiter.wake() is True
            assert waiter.wake() is False  # woken once
            await trio.testing.wait_all_tasks_blocked()
            assert results == [Wait.WOKEN]


@BACKENDS
async def test_a_cancelled_wait_leaves_the_backend(name: str) -> None:
    ours, theirs = pair()
    with ours, theirs, trio.fail_after(5):
        async with running(name) as (backend, nursery):
            cancelled = trio.CancelScope()

            async def wait() -> None:
                with cancelled:
                    await backend.transport(ours).wait_readable(math.inf)
                    raise AssertionError("not cancelled")

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            assert backend.waiting == 1
            cancelled.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert backend.waiting == 0
            theirs.send(b"x")  # readable now: nobody is woken, nothing breaks
            await trio.testing.wait_all_tasks_blocked()


@BACKENDS
async def test_serve_steps_while_the_task_sleeps_until_the_step_says_stop(name: str) -> None:
    ours, theirs = pair()
    with ours, theirs, trio.fail_after(5):
        async with running(name) as (backend, _):
            seen: list[bytes] = []

            def step(now: float) -> float | None:
                data = ours.recv(100)
                seen.append(data)
                return None if data.endswith(b"!") else now + 60

            async def talk() -> None:
                for chunk in (b"a", b"b", b"c!"):
                    theirs.send(chunk)
                    await trio.testing.wait_all_tasks_blocked()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(talk)
                assert await backend.transport(ours).serve(step, math.inf) is Wait.READY
            assert seen == [b"a", b"b", b"c!"]
            assert backend.waiting == 0


@BACKENDS
async def test_a_served_deadline_moves_with_each_step(
    name: str, autojump_clock: trio.testing.MockClock
) -> None:
    ours, theirs = pair()
    with ours, theirs, trio.fail_after(100):
        async with running(name) as (backend, nursery):

            def step(now: float) -> float | None:
                ours.recv(100)
                return now + 10

            async def talk() -> None:
                for _ in range(3):
                    await trio.sleep(8)  # within each deadline
                    theirs.send(b"x")

            start = trio.current_time()
            nursery.start_soon(talk)
            assert await backend.transport(ours).serve(step, start + 10) is Wait.DEADLINE
            assert trio.current_time() - start == pytest.approx(24 + 10)


@BACKENDS
async def test_a_step_that_raises_ends_the_wait_with_its_exception(name: str) -> None:
    first, first_peer = pair()
    second, second_peer = pair()
    with first, first_peer, second, second_peer, trio.fail_after(5):
        async with running(name) as (backend, _):

            def broken(now: float) -> float | None:
                raise ZeroDivisionError("a bug in the step")

            first_peer.send(b"x")
            with pytest.raises(ZeroDivisionError, match="a bug in the step"):
                await backend.transport(first).serve(broken, math.inf)
            assert backend.waiting == 0
            second_peer.send(b"y")  # the backend lives on
            assert await backend.transport(second).wait_readable(math.inf) is Wait.READY


async def test_epoll_a_socket_closed_behind_the_backends_back_is_forgotten() -> None:
    ours, theirs = pair()
    with theirs, trio.fail_after(5):
        async with running("epoll") as (backend, nursery):
            cancelled = trio.CancelScope()

            async def wait() -> None:
                with cancelled:
                    await backend.transport(ours).wait_readable(math.inf)

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            ours.close()  # the kernel drops it from the epoll by itself
            cancelled.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert backend.waiting == 0


async def test_epoll_serves_every_ready_socket_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("triodaemon._lowlevel.readiness._POLL_BATCH", 3)
    socks = [pair() for _ in range(10)]
    try:
        with trio.fail_after(5):
            async with running("epoll") as (backend, nursery):
                results: list[Wait] = []

                async def wait(sock: socket.socket) -> None:
                    results.append(await backend.transport(sock).wait_readable(math.inf))

                for ours, _ in socks:
                    nursery.start_soon(wait, ours)
                await trio.testing.wait_all_tasks_blocked()
                for _, theirs in socks:
                    theirs.send(b"x")
                await trio.testing.wait_all_tasks_blocked()
                assert results == [Wait.READY] * 10
    finally:
        for ours, theirs in socks:
            ours.close()
            theirs.close()


async def test_epoll_heap_keeps_one_live_entry_per_waiter_however_often_deadlines_move(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A deadline that moves earlier adds a heap entry; stale ones are dropped in
    # bulk, so a busy connection whose frames keep starting does not grow the heap.
    ours, theirs = pair()
    with ours, theirs, trio.fail_after(100):
        async with running("epoll") as (backend, nursery):
            assert isinstance(backend, EpollReadiness)
            steps = 0

            def step(now: float) -> float | None:
                nonlocal steps
                ours.recv(100)
                steps += 1
                # Alternately a far deadline and a nearer one: each near one is earlier.
                return now + (1000 if steps % 2 else 500 - steps * 0.001)

            async def talk() -> None:
                for _ in range(2000):
                    theirs.send(b"x")
                    await trio.testing.wait_all_tasks_blocked()
                theirs.shutdown(socket.SHUT_WR)

            nursery.start_soon(talk)
            with trio.move_on_after(50):
                await backend.transport(ours).serve(step, math.inf)
            assert steps >= 2000
            assert len(backend._heap) <= 2 * backend.waiting + 64


def test_auto_picks_epoll_where_there_is_one_and_the_environment_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRIODAEMON_READINESS", raising=False)
    assert isinstance(open_readiness(), EpollReadiness if epoll_available() else PortableReadiness)
    monkeypatch.setenv("TRIODAEMON_READINESS", "portable")
    assert isinstance(open_readiness(), PortableReadiness)
    assert isinstance(open_readiness("epoll"), EpollReadiness)  # a name given wins
    monkeypatch.setenv("TRIODAEMON_READINESS", "kqueue")
    with pytest.raises(ValueError, match=r"\$TRIODAEMON_READINESS: unknown backend 'kqueue'"):
        open_readiness()


def test_without_epoll_auto_is_portable_and_epoll_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRIODAEMON_READINESS", raising=False)
    monkeypatch.delattr(select, "epoll", raising=False)
    assert isinstance(open_readiness(), PortableReadiness)
    with pytest.raises(ValueError, match="the epoll readiness backend needs Linux"):
        open_readiness("epoll")


async def test_a_wait_needs_a_running_backend_and_run_runs_once() -> None:
    ours, theirs = pair()
    with ours, theirs:
        backend = EpollReadiness()
        with pytest.raises(RuntimeError, match="not running"):
            await backend.transport(ours).wait_readable(math.inf)
        async with running("epoll") as (running_backend, _):
            with pytest.raises(RuntimeError, match="running already"):
                await running_backend.run()
