"""The daemon's SocketConnection on real socket pairs, every way it waits, in every backend."""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from triodaemon import ConnectionInfo, Framing, Stats, _socket_connection
from triodaemon._budget import BufferBudget
from triodaemon._connection import LINGER_DISCARD
from triodaemon._readiness import Readiness, open_readiness
from triodaemon._socket_connection import SocketConnection

from .conftest import echo_in_the_task, read_until_eof

INFO = ConnectionInfo(1, "test://", "peer")

#: (backend, handler): the echo served by the backend's step, or another handler
#: whose task reads after waiting in the backend.
WAYS = {
    "served-epoll": ("epoll", None),
    "task-epoll": ("epoll", echo_in_the_task),
    "served-portable": ("portable", None),
    "task-portable": ("portable", echo_in_the_task),
}
EVERY_WAY = pytest.mark.parametrize("way", list(WAYS))


@asynccontextmanager
async def backend_running(name: str) -> AsyncIterator[Readiness]:
    backend = open_readiness(name)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        yield backend
        nursery.cancel_scope.cancel()


class Running(SocketConnection):
    """A SocketConnection that says when its run is over."""

    __slots__ = ("over",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.over = trio.Event()

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            self.over.set()


def make(way: str, ours: socket.socket, backend: Readiness, **options: Any) -> Running:
    """A connection on ``ours`` that waits the ``way`` way; ``options`` override the settings."""
    _, handler = WAYS[way]
    settings: dict[str, Any] = {
        "idle_timeout": 300.0,
        "frame_timeout": math.inf,
        "receive_size": 65536,
        "stats": Stats(),
        "budget": None,
    }
    framing = options.pop("framing", None)
    settings.update(options)
    return Running(ours, INFO, framing, handler, readiness=backend, **settings)


@asynccontextmanager
async def connected(
    way: str, **options: Any
) -> AsyncIterator[tuple[Running, trio.SocketStream, Readiness]]:
    """A running SocketConnection on a Unix socket pair; yields it, its client and backend."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    async with backend_running(WAYS[way][0]) as backend, trio.open_nursery() as nursery:
        connection = make(way, ours, backend, **options)
        nursery.start_soon(connection.run)
        try:
            yield connection, client, backend
        finally:
            await client.aclose()


@EVERY_WAY
async def test_echoes_and_closes_at_the_peers_eof(way: str) -> None:
    with trio.fail_after(5):
        async with connected(way) as (connection, client, _):
            for index in range(50):
                await client.send_all(b"frame %d\n" % index)
                assert await client.receive_some() == b"frame %d\n" % index
            await client.send_eof()
            assert await client.receive_some() == b""
    assert connection.completed
    assert connection.stats.frames == 50


@EVERY_WAY
async def test_drain_at_a_frame_boundary_closes_at_once(way: str) -> None:
    # trio runs each batch of tasks in a random order: over these rounds the drain
    # lands both while the connection is busy after a reply and while it waits.
    for round in range(20):
        with trio.fail_after(5):
            async with connected(way) as (connection, client, backend):
                await client.send_all(b"one\n")
                assert await client.receive_some() == b"one\n"
                if round % 2:
                    await trio.testing.wait_all_tasks_blocked()
                    assert backend.waiting == 1
                start = trio.current_time()
                connection.drain()
                assert await client.receive_some() == b""
                assert trio.current_time() - start < 1
        assert connection.completed
        assert connection.stats.idle_timeouts == 0


@EVERY_WAY
async def test_drain_finishes_the_frame_in_progress(way: str) -> None:
    framing = Framing("length")
    wire = framing.encode(b"in progress")
    with trio.fail_after(5):
        async with connected(way, framing=framing) as (connection, client, backend):
            await client.send_all(wire[:6])
            await trio.testing.wait_all_tasks_blocked()
            connection.drain()
            await trio.testing.wait_all_tasks_blocked()
            assert backend.waiting == 1  # not woken: a frame is in progress
            await client.send_all(wire[6:])
            assert await read_until_eof(client) == wire
    assert connection.completed


@EVERY_WAY
async def test_idle_timeout_closes(way: str) -> None:
    with trio.fail_after(5):
        async with connected(way, idle_timeout=0.2) as (connection, client, _):
            await client.send_all(b"x\n")
            assert await read_until_eof(client) == b"x\n"
    assert connection.stats.idle_timeouts == 1


@EVERY_WAY
async def test_cancelled_it_closes_its_socket_and_leaves_the_backend(way: str) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with theirs, trio.fail_after(5):
        async with backend_running(WAYS[way][0]) as backend:
            connection = make(way, ours, backend)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.run)
                await trio.testing.wait_all_tasks_blocked()
                assert backend.waiting == 1
                nursery.cancel_scope.cancel()
            assert backend.waiting == 0
    assert ours.fileno() == -1
    assert not connection.completed


@EVERY_WAY
async def test_a_frame_cut_short_by_eof_is_reported(
    way: str, caplog: pytest.LogCaptureFixture
) -> None:
    framing = Framing("length")
    with trio.fail_after(5):
        async with connected(way, framing=framing) as (connection, client, _):
            await client.send_all(framing.encode(b"whole") + framing.encode(b"0123456789")[:7])
            await client.send_eof()
            assert await read_until_eof(client) == framing.encode(b"whole")
    assert connection.completed
    assert connection.stats.incomplete_frames == 1
    assert "peer closed mid-frame (3 of 10 bytes); discarded" in caplog.text


@EVERY_WAY
async def test_an_oversized_frame_gets_what_is_owed_then_a_close(
    way: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        async with connected(way, framing=Framing(max_frame=8)) as (connection, client, _):
            await client.send_all(b"ok\nfine\n" + b"x" * 20)
            assert await read_until_eof(client) == b"ok\nfine\n"
    assert connection.stats.framing_errors == 1
    assert "frames are limited to 8 bytes; closing" in caplog.text


@EVERY_WAY
async def test_a_reset_is_one_line(way: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "triodaemon")
    with trio.fail_after(5):
        async with connected(way) as (connection, client, _):
            await client.send_all(b"x\n")
            assert await client.receive_some() == b"x\n"
            # A Unix socket closed with unread data resets its peer instead of an EOF.
            await client.send_all(b"unread\n")
            await trio.testing.wait_all_tasks_blocked()  # echoed, not read
            await client.aclose()
            await trio.testing.wait_all_tasks_blocked()
    assert connection.stats.resets == 1
    assert "connection lost: connection reset by peer" in caplog.text


@EVERY_WAY
async def test_replies_waiting_to_be_sent_survive_other_connections_reads(way: str) -> None:
    # Sockets are read into one buffer shared by every connection of the run, and a
    # frame larger than a read is echoed as a view of the decoder's buffer: a reply
    # that waits half sent must point into neither while other connections read.
    framing = Framing("length")
    streams = [
        b"".join(framing.encode(bytes([k]) * (30_000 + 997 * i)) for i in range(6)) for k in (1, 2)
    ]
    lines = b"".join(b"line%05d\n" % i for i in range(8000))
    pairs = [socket.socketpair() for _ in range(3)]
    for ours, _ in pairs:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # replies wait
    stats = Stats()
    with trio.fail_after(10):
        async with backend_running(WAYS[way][0]) as backend, trio.open_nursery() as nursery:
            for (ours, _), kind in zip(pairs, (framing, framing, Framing()), strict=True):
                connection = make(way, ours, backend, framing=kind, receive_size=8192, stats=stats)
                nursery.start_soon(connection.run)
            clients = [trio.SocketStream(trio.socket.from_stdlib_socket(c)) for _, c in pairs]
            sent = [*streams, lines]
            for client, data in zip(clients, sent, strict=True):
                nursery.start_soon(client.send_all, data)
            for client, data in zip(clients, sent, strict=True):
                assert await read_exactly(client, len(data)) == data
            for client in clients:
                await client.aclose()
    assert stats.frames == 12 + 8000


async def send_until_broken(
    client: trio.SocketStream, chunks: list[bytes], pause: float = 0
) -> int:
    """Send ``chunks`` (pausing between them) until the server breaks the connection;
    how many bytes went. Fails if every chunk went."""
    sent = 0
    try:
        for chunk in chunks:
            await client.send_all(chunk)
            sent += len(chunk)
            await trio.sleep(pause)
    except trio.BrokenResourceError:
        return sent
    raise AssertionError(f"the server took all {sent} bytes")


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await stream.receive_some(size - len(data))
    return bytes(data)


# -- the close: linger only while something can be lost ---------------------------


@EVERY_WAY
async def test_an_idle_connection_closes_in_milliseconds_at_a_drain(way: str) -> None:
    # The client stays connected and sends nothing more: everything we sent is
    # acknowledged (read, on a Unix socket), so there is nothing to linger for.
    with trio.fail_after(5):
        async with connected(way) as (connection, client, _):
            await client.send_all(b"hello\n")
            assert await client.receive_some() == b"hello\n"
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            connection.drain()
            assert await client.receive_some() == b""  # our EOF
            with trio.fail_after(0.5):  # closed, though the client never sent its EOF
                await connection.over.wait()
            assert trio.current_time() - start < 0.5
    assert connection.completed


@EVERY_WAY
async def test_it_lingers_while_its_replies_are_unread(way: str) -> None:
    # Replies the peer has not read yet would be lost to a reset: the connection
    # lingers until they are read, then closes without waiting for the peer's EOF.
    framing = Framing("length")
    big = framing.encode(b"r" * 100_000)
    with trio.fail_after(5):
        async with connected(way, framing=framing) as (connection, client, _):
            await client.send_all(big)
            await trio.testing.wait_all_tasks_blocked()
            connection.drain()
            await trio.testing.wait_all_tasks_blocked()
            assert not connection.over.is_set()  # replies unread: still lingering
            assert await read_until_eof(client) == big
            with trio.fail_after(0.5):
                await connection.over.wait()
    assert connection.completed


@EVERY_WAY
@pytest.mark.parametrize("answer", [b"two\n", b"x" * (5 * LINGER_DISCARD) + b"\n"])
async def test_a_peer_answering_our_last_reply_at_a_drain_meets_our_eof_not_a_reset(
    way: str, answer: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pipelining client sends on as it reads our last replies, until it reads our
    # EOF. Its bytes arriving after we closed would be answered with a reset (or
    # EPIPE), which it would take for a crash: the connection waits for it to go
    # quiet first, however much it sends (a large frame's rest, say: a framing
    # violator alone is cut off). (The quiet period is long here: the test must not
    # race it.)
    monkeypatch.setattr(_socket_connection, "_LINGER_QUIET", 2.0)
    with trio.fail_after(10):
        async with connected(way) as (connection, client, _):
            await client.send_all(b"one\n")
            assert await client.receive_some() == b"one\n"
            connection.drain()
            await trio.testing.wait_all_tasks_blocked()  # lingering: our EOF is out
            await client.send_all(answer)  # its answer to the reply it just read
            assert await client.receive_some() == b""  # our EOF, not ECONNRESET
            await connection.over.wait()
    assert connection.completed
    assert connection.bytes_in == 4 + len(answer)  # read (and discarded)


@EVERY_WAY
async def test_a_violator_is_cut_off_after_a_bounded_number_of_bytes(way: str) -> None:
    # A peer that breaks the framing and goes on sending is not read for long.
    with trio.fail_after(10):
        async with connected(way, framing=Framing(max_frame=1024)) as (connection, client, _):
            sent = await send_until_broken(client, [b"v" * 65536] * 800)
    assert connection.stats.framing_errors == 1
    taken = connection.stats.bytes_received
    assert taken < 1024 + 65536 + 2 * LINGER_DISCARD + 65536, taken
    assert sent < 10_000_000


# -- the frame deadline and the buffer budget ----------------------------------------


@EVERY_WAY
async def test_a_trickled_frame_meets_the_frame_timeout(
    way: str, caplog: pytest.LogCaptureFixture
) -> None:
    framing = Framing("length")
    wire = framing.encode(b"t" * 100)
    with trio.fail_after(10):
        async with connected(way, framing=framing, frame_timeout=0.5, idle_timeout=0.3) as (
            connection,
            client,
            _,
        ):
            start = trio.current_time()
            # A byte every 0.05 s: never idle, never a frame.
            await send_until_broken(client, [bytes([byte]) for byte in wire], pause=0.05)
            assert 0.5 <= trio.current_time() - start < 1.5
    assert connection.stats.frame_timeouts == 1
    assert connection.stats.idle_timeouts == 0
    assert "frame not complete after 0.5s" in caplog.text


@EVERY_WAY
async def test_frames_that_keep_completing_never_meet_the_frame_timeout(way: str) -> None:
    # Every read ends inside a frame, but a frame completes in each: no timeout.
    with trio.fail_after(10):
        async with connected(way, frame_timeout=0.3) as (connection, client, _):
            for index in range(12):
                await client.send_all(b"end %d\nstart of %d " % (index, index + 1))
                await trio.sleep(0.05)
            await client.send_all(b"\n")
            await client.send_eof()
            received = await read_until_eof(client)
    assert received.count(b"\n") == 13
    assert connection.stats.frame_timeouts == 0


@pytest.mark.parametrize("way", ["served-epoll", "task-portable"])
async def test_the_buffer_budget_pauses_holders_and_loses_nothing(way: str) -> None:
    # Four connections each send most of a 200 KB frame; the budget holds 250 KB.
    # The ones over it are not read (their senders block), nobody is closed, and as
    # frames finish, the rest go on: every frame comes back whole.
    framing = Framing("length")
    frames = [framing.encode(bytes([k]) * 200_000) for k in range(4)]
    budget = BufferBudget(250_000)
    stats = Stats()
    pairs = [socket.socketpair() for _ in frames]
    for ours, theirs in pairs:
        ours.setblocking(False)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    high = 0
    with trio.fail_after(20):
        async with backend_running(WAYS[way][0]) as backend, trio.open_nursery() as nursery:
            for ours, _ in pairs:
                connection = make(
                    way,
                    ours,
                    backend,
                    framing=framing,
                    receive_size=16384,
                    stats=stats,
                    budget=budget,
                )
                nursery.start_soon(connection.run)
            clients = [trio.SocketStream(trio.socket.from_stdlib_socket(c)) for _, c in pairs]
            go = trio.Event()

            async def send(client: trio.SocketStream, frame: bytes) -> None:
                await client.send_all(frame[:-1000])
                await go.wait()
                await client.send_all(frame[-1000:])

            for client, frame in zip(clients, frames, strict=True):
                nursery.start_soon(send, client, frame)
            await trio.testing.wait_all_tasks_blocked()
            high = budget.held
            assert stats.memory_waits >= 1
            go.set()
            for client, frame in zip(clients, frames, strict=True):
                assert await read_exactly(client, len(frame)) == frame
            for client in clients:
                await client.aclose()
    assert 250_000 < high <= 250_000 + 200_004 + 16384 + 3 * 4096, high
    assert budget.held == 0
    assert stats.frames == 4
    assert stats.framing_errors == stats.resets == stats.frame_timeouts == 0


def tcp_pair(client_receive_buffer: int) -> tuple[socket.socket, socket.socket]:
    """(accepted, connected) TCP sockets on loopback; the accepted one non-blocking."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_receive_buffer)
        client.connect(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    return ours, client


@pytest.mark.parametrize("way", ["served-epoll", "served-portable"])
async def test_a_client_pipelining_through_a_drain_gets_every_echo_sent(way: str) -> None:
    # It goes on sending until it reads our EOF, so the linger finds far more than
    # LINGER_DISCARD waiting; closing before what we sent is acknowledged would let
    # the reset for its unread frames destroy the echoes still in our send queue.
    framing = Framing("length")
    frames = framing.encode(b"abc") * 50
    ours, theirs = tcp_pair(4096)  # our last echoes wait unacknowledged
    client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    got = 0
    with trio.fail_after(20):
        async with backend_running(WAYS[way][0]) as backend, trio.open_nursery() as nursery:
            connection = make(way, ours, backend, framing=framing)
            nursery.start_soon(connection.run)
            done = trio.Event()

            async def write_until_done() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while not done.is_set():
                        await client.send_all(frames)

            nursery.start_soon(write_until_done)
            while got < 200_000:
                got += len(await client.receive_some(1000))
            # Everyone stuck: its window full of our echoes, ours full of its frames.
            await trio.testing.wait_all_tasks_blocked()
            connection.drain()
            with contextlib.suppress(trio.BrokenResourceError):  # (a reset after the EOF)
                while chunk := await client.receive_some(1000):
                    got += len(chunk)
            done.set()
            await connection.over.wait()
            await client.aclose()
    assert connection.completed
    assert got == connection.bytes_out  # every echo it was sent, whole
    assert got % 7 == 0
