"""Connection logic over trio.testing memory streams, with a virtual clock."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from triodaemon import Connection, ConnectionInfo, Framing, Stats
from triodaemon._connection import LINGER_DISCARD, LINGER_SECONDS

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


async def test_the_ended_hook_gets_the_handlers_error_instead_of_the_caller() -> None:
    async def broken(frame: bytes, conn: ConnectionInfo) -> bytes:
        if frame == b"boom":
            raise RuntimeError("bug in handler")
        return frame

    ends: list[tuple[object, str, bool]] = []
    for frames, echoed in ((b"boom\n", b""), (b"ok\n", b"ok\n")):
        server, client = trio.testing.memory_stream_pair()
        connection = Connection(server, INFO, handler=broken)
        connection.ended = lambda conn, error: ends.append(
            (conn, repr(error), conn.completed)  # the connection is closed by then
        )
        with trio.fail_after(5):
            await client.send_all(frames)
            await client.send_eof()
            await connection.run()  # raises nothing: the hook has it
            assert await client.receive_some() == echoed
        assert ends[-1][0] is connection
    assert [end[1:] for end in ends] == [
        ("RuntimeError('bug in handler')", False),
        ("None", True),
    ]


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


async def test_a_trickling_peer_meets_the_frame_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # One byte every 10 s is progress (the idle timeout never fires), but the
    # frame begun at the first byte must be complete within the frame timeout.
    server, client = trio.testing.memory_stream_pair()
    stats = Stats()
    connection = Connection(server, INFO, idle_timeout=30, frame_timeout=60, stats=stats)

    async def trickle() -> None:
        while True:
            await client.send_all(b"x")
            await trio.sleep(10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        nursery.start_soon(trickle)
        start = trio.current_time()
        assert await client.receive_some() == b""  # our EOF
        assert trio.current_time() - start == pytest.approx(60)
        nursery.cancel_scope.cancel()
    assert (stats.frame_timeouts, stats.idle_timeouts) == (1, 0)
    assert "frame not complete after 60s (6 bytes so far); closing" in caplog.text


async def test_the_frame_timeout_starts_again_with_each_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, client = trio.testing.memory_stream_pair()
    stats = Stats()
    connection = Connection(server, INFO, frame_timeout=60, stats=stats)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        # Each read ends inside a frame, 50 s apart: no frame ever takes 60 s.
        for index in range(5):
            await client.send_all(b"end %d\nbegin " % index)
            await trio.sleep(50)
        await client.send_all(b"\n")
        await client.send_eof()
        assert (await read_until_eof(client)).count(b"\n") == 6
    assert stats.frame_timeouts == 0


async def test_lingering_discards_a_bounded_number_of_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, client = trio.testing.memory_stream_pair()
    connection = Connection(server, INFO)
    ended: list[float] = []

    async def run() -> None:
        await connection.run()
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        connection.drain()
        assert await client.receive_some() == b""
        start = trio.current_time()
        await client.send_all(b"x" * (LINGER_DISCARD + 1))
    assert ended == [start]  # cut off at once, not after LINGER_SECONDS
    assert connection.completed


def test_bad_timeouts_are_refused() -> None:
    server, _ = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match="timeouts must be positive"):
        Connection(server, INFO, idle_timeout=0)
    with pytest.raises(ValueError, match="timeouts must be positive"):
        Connection(server, INFO, frame_timeout=-1)


def test_stats_totals_include_open_connections_and_keep_closed_ones() -> None:
    class Source:
        frames = bytes_in = bytes_out = 0

    stats = Stats(frames=1, bytes_received=10, bytes_sent=10)
    open_one = Source()
    stats.follow(open_one)
    open_one.frames, open_one.bytes_in, open_one.bytes_out = 2, 20, 19
    assert (stats.frames, stats.bytes_received, stats.bytes_sent) == (3, 30, 29)
    stats.frames += 5  # an assignment adjusts the total, open connections still counted
    assert stats.frames == 8
    stats.fold(open_one)
    stats.fold(open_one)  # once only
    open_one.frames = 100  # no longer followed
    assert (stats.frames, stats.bytes_received, stats.bytes_sent) == (8, 30, 29)
