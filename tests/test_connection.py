"""Connection logic over trio.testing memory streams, with a virtual clock."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from triodaemon import Connection, ConnectionInfo, Framing, Stats
from triodaemon._connection import LINGER_SECONDS
from triodaemon._watcher import IdleWatcher

from .conftest import read_until_eof

INFO = ConnectionInfo(1, "test://", "peer")


class CountingStream(trio.abc.HalfCloseableStream):
    """Wrap a stream and count ``send_all`` calls."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.sends: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_echoes_every_frame_of_one_read_in_one_write() -> None:
    server, client = trio.testing.memory_stream_pair()
    counting = CountingStream(server)
    stats = Stats()
    connection = Connection(counting, INFO, stats=stats)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            await client.send_all(b"a\nbb\nccc\nparti")
            await trio.testing.wait_all_tasks_blocked()
            assert counting.sends == [b"a\nbb\nccc\n"]
            await client.send_all(b"al\n")
            await client.send_eof()
            assert await read_until_eof(client) == b"a\nbb\nccc\npartial\n"
    assert connection.completed
    assert stats.frames == 4
    assert stats.bytes_received == stats.bytes_sent == len(b"a\nbb\nccc\npartial\n")


async def test_half_close_mid_frame_reports_and_echoes_only_whole_frames(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, client = trio.testing.memory_stream_pair()
    stats = Stats()
    connection = Connection(server, INFO, Framing("length"), stats=stats)
    framing = Framing("length")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            await client.send_all(framing.encode(b"whole") + framing.encode(b"0123456789")[:7])
            await client.send_eof()
            assert await read_until_eof(client) == framing.encode(b"whole")
    assert stats.incomplete_frames == 1
    assert "conn 1 from peer on test://: peer closed mid-frame (3 of 10 bytes); discarded" in (
        caplog.text
    )


async def test_oversized_frame_flushes_owed_echoes_then_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, client = trio.testing.memory_stream_pair()
    stats = Stats()
    connection = Connection(server, INFO, Framing(max_frame=8), stats=stats)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            await client.send_all(b"ok\nfine\n" + b"x" * 20)
            assert await read_until_eof(client) == b"ok\nfine\n"
            await client.aclose()
    assert stats.framing_errors == 1
    assert "bytes without a delimiter; frames are limited to 8 bytes; closing" in caplog.text


async def test_idle_timeout_closes_after_exactly_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, client = trio.testing.memory_stream_pair()
    stats = Stats()
    connection = Connection(server, INFO, idle_timeout=30, stats=stats)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        await client.send_all(b"ping\n")
        assert await client.receive_some() == b"ping\n"
        start = trio.current_time()
        assert await client.receive_some() == b""  # the server's EOF
        assert trio.current_time() - start == pytest.approx(30)
        await client.aclose()
    assert stats.idle_timeouts == 1


async def test_progress_resets_the_idle_timer(autojump_clock: trio.testing.MockClock) -> None:
    server, client = trio.testing.memory_stream_pair()
    connection = Connection(server, INFO, idle_timeout=30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        start = trio.current_time()
        for _ in range(5):
            await trio.sleep(20)
            await client.send_all(b"beat\n")
            assert await client.receive_some() == b"beat\n"
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(100 + 30)
        await client.aclose()


async def test_peer_that_never_reads_is_closed_after_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, client = trio.testing.lockstep_stream_pair()
    stats = Stats()
    connection = Connection(server, INFO, idle_timeout=10, stats=stats)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            await client.send_all(b"never read this\n")
            start = trio.current_time()
            # The echo blocks: the client never reads; run() ends by itself.
    assert trio.current_time() - start == pytest.approx(10)
    assert stats.idle_timeouts == 1
    assert stats.bytes_sent == 0


async def test_drain_closes_an_idle_connection_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, client = trio.testing.memory_stream_pair()
    connection = Connection(server, INFO, idle_timeout=300)
    await echo_once_then_drain(connection, client, settle=True)


async def echo_once_then_drain(
    connection: Connection, client: trio.abc.Stream, *, settle: bool
) -> None:
    """Echo one line, drain, and check the connection closes at once and completes.

    ``settle``: let the connection reach its wait for the next read before the drain.
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        await client.send_all(b"one\n")
        assert await client.receive_some() == b"one\n"
        if settle:
            await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        connection.drain()
        assert await client.receive_some() == b""
        assert trio.current_time() == start
        await client.aclose()
    assert connection.completed


async def test_drain_finishes_the_frame_in_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, client = trio.testing.memory_stream_pair()
    connection = Connection(server, INFO, Framing("length"))
    framing = Framing("length")
    wire = framing.encode(b"in progress")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        await client.send_all(wire[:6])
        await trio.testing.wait_all_tasks_blocked()
        connection.drain()
        await trio.sleep(3)
        await client.send_all(wire[6:])
        assert await read_until_eof(client) == wire
        await client.aclose()
    assert connection.completed


async def test_graceful_close_lingers_until_the_peer_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, client = trio.testing.memory_stream_pair()
    connection = Connection(server, INFO)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        await trio.testing.wait_all_tasks_blocked()
        connection.drain()
        assert await client.receive_some() == b""
        # Data sent after our EOF is read and discarded, not answered with a reset.
        await client.send_all(b"late\n")
        start = trio.current_time()
    assert trio.current_time() - start == pytest.approx(LINGER_SECONDS)


async def test_handler_errors_propagate_after_closing_the_stream() -> None:
    async def broken(frame: bytes, conn: ConnectionInfo) -> bytes:
        raise RuntimeError("bug in handler")

    server, client = trio.testing.memory_stream_pair()
    connection = Connection(server, INFO, handler=broken)
    with trio.fail_after(5):
        await client.send_all(b"boom\n")
        with pytest.raises(RuntimeError, match="bug in handler"):
            await connection.run()
        assert await client.receive_some() == b""
    assert not connection.completed


async def test_custom_handler_replies_and_can_stay_silent() -> None:
    async def upper_or_nothing(frame: bytes, conn: ConnectionInfo) -> bytes | None:
        return None if frame == b"quiet" else frame.upper()

    server, client = trio.testing.memory_stream_pair()
    connection = Connection(server, INFO, handler=upper_or_nothing)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            await client.send_all(b"abc\nquiet\ndef\n")
            await client.send_eof()
            assert await read_until_eof(client) == b"ABC\nDEF\n"


async def test_reset_by_peer_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "triodaemon")

    class ResetAfterFirstRead(CountingStream):
        reads = 0

        async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
            self.reads += 1
            if self.reads > 1:
                raise trio.BrokenResourceError from ConnectionResetError(
                    104, "Connection reset by peer"
                )
            return await super().receive_some(max_bytes)

    server, client = trio.testing.memory_stream_pair()
    stats = Stats()
    connection = Connection(ResetAfterFirstRead(server), INFO, stats=stats)
    with trio.fail_after(5):
        await client.send_all(b"x\n")
        await connection.run()
    assert await client.receive_some() == b"x\n"
    assert stats.resets == 1
    assert "conn 1 from peer on test://: connection lost: connection reset by peer" in caplog.text


def test_a_connection_needs_a_stream_or_a_socket() -> None:
    with pytest.raises(ValueError, match="needs a stream or a raw_socket"):
        Connection(None, INFO)


async def test_drain_during_the_yield_after_a_reply_closes_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # On a raw socket the connection yields after each reply before reading on.
    # trio runs each batch of tasks in a random order, so over these rounds the
    # drain lands both in that yield and in the wait for the next read.
    for _ in range(40):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        server = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
        stats = Stats()
        connection = Connection(server, INFO, idle_timeout=300, stats=stats, raw_socket=ours)
        await echo_once_then_drain(connection, client, settle=False)
        assert stats.idle_timeouts == 0


@asynccontextmanager
async def maybe_served(served: bool) -> AsyncIterator[IdleWatcher | None]:
    """With ``served``, a running watcher (which serves an echo's reads), else None."""
    if not served:
        yield None
        return
    watcher = IdleWatcher(math.inf)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        yield watcher
        nursery.cancel_scope.cancel()


#: Echo connections on sockets read and reply in their own task, or are served
#: by a watcher (as in the daemon).
OWN_OR_SERVED = pytest.mark.parametrize("served", [False, True], ids=["own", "served"])


@OWN_OR_SERVED
async def test_a_reply_waiting_to_be_sent_survives_other_connections_reads(served: bool) -> None:
    # Sockets are read into one buffer shared by every connection of the run; a
    # reply that does not fit the socket at once must not point into it while it
    # waits, or the next connection's read would overwrite it.
    lines = {name: b"".join(b"%s%05d\n" % (name, i) for i in range(8000)) for name in (b"a", b"b")}
    pairs = [socket.socketpair() for _ in lines]
    for ours, _ in pairs:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # replies wait
    with trio.fail_after(10):
        async with maybe_served(served) as watcher, trio.open_nursery() as nursery:
            connections = [
                Connection(None, INFO, raw_socket=ours, watcher=watcher) for ours, _ in pairs
            ]
            clients = [trio.SocketStream(trio.socket.from_stdlib_socket(c)) for _, c in pairs]
            for connection in connections:
                nursery.start_soon(connection.run)
            first, second = clients
            await first.send_all(lines[b"a"])
            await trio.testing.wait_all_tasks_blocked()  # its reply is stuck half sent
            await second.send_all(lines[b"b"])
            assert await read_exactly(second, len(lines[b"b"])) == lines[b"b"]
            assert await read_exactly(first, len(lines[b"a"])) == lines[b"a"]
            for client in clients:
                await client.aclose()


@OWN_OR_SERVED
async def test_frames_larger_than_a_read_are_echoed_whole_while_replies_wait(
    served: bool,
) -> None:
    # A frame larger than a read is assembled in the decoder and echoed as a view of
    # its buffer; with a small send buffer that reply waits half sent while the other
    # connection reads into the shared buffer, and the decoder goes on behind it.
    framing = Framing("length")
    streams = [
        b"".join(framing.encode(bytes([k]) * (30_000 + 997 * i)) for i in range(6)) for k in (1, 2)
    ]
    pairs = [socket.socketpair() for _ in streams]
    for ours, _ in pairs:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stats = Stats()
    with trio.fail_after(10):
        async with maybe_served(served) as watcher, trio.open_nursery() as nursery:
            for ours, _ in pairs:
                connection = Connection(
                    None,
                    INFO,
                    framing,
                    receive_size=8192,
                    stats=stats,
                    raw_socket=ours,
                    watcher=watcher,
                )
                nursery.start_soon(connection.run)
            clients = [trio.SocketStream(trio.socket.from_stdlib_socket(c)) for _, c in pairs]
            for client, stream in zip(clients, streams, strict=True):
                nursery.start_soon(client.send_all, stream)
            for client, stream in zip(clients, streams, strict=True):
                assert await read_exactly(client, len(stream)) == stream
            for client in clients:
                await client.aclose()
    assert stats.frames == 12


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await stream.receive_some(size - len(data))
    return bytes(data)
