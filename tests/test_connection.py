"""The Connection's conformance suite: every scenario on every transport, handler and scans.

Each scenario is written once and runs on a running :class:`~triodaemon.Connection` of
each combination (:class:`Kit`), talking to its client stream:

- transport: ``stream`` (one end of ``trio.testing.memory_stream_pair()``, or of
  ``lockstep_stream_pair()`` where the scenario needs back-pressure), ``socket-epoll``
  and ``socket-portable`` (a ``socket.socketpair()`` on that readiness backend, or a
  loopback TCP pair where the scenario needs TCP); the client is the stream's other
  end, or a ``trio.SocketStream`` over the peer socket;
- handler: ``echo`` (``handler=None``: the built-in echo, served by the transport's
  step) and ``handler`` (``echo_in_the_task``: one call per frame from the task);
- scans: ``compiled`` and ``python`` (the decoders' scans; on sockets, ``compiled``
  also brings the compiled read-and-echo).

A scenario that cannot be expressed on some transport is parametrized over the
transports that can express it, with the reason next to it. Time is real and short
(timeouts of 0.5 s at most): the same scenario runs over sockets, whose kernels keep
real time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from triodaemon import Connection, ConnectionInfo, Framing, Stats, _linger
from triodaemon._budget import BufferBudget
from triodaemon._handlers import FrameHandler
from triodaemon._linger import LINGER_DISCARD
from triodaemon._lowlevel import scans
from triodaemon._lowlevel.readiness import EpollReadiness, Readiness, open_readiness
from triodaemon._peers import ConnectionState
from triodaemon._transport import StreamTransport

from .conftest import echo_in_the_task, read_until_eof

INFO = ConnectionInfo(1, "test://", "peer")

TRANSPORTS = ["stream", "socket-epoll", "socket-portable"]
#: The transports that are sockets: what only the OS can tell or do (SIOCOUTQ, a reset).
SOCKETS = ["socket-epoll", "socket-portable"]
HANDLERS: dict[str, FrameHandler | None] = {"echo": None, "handler": echo_in_the_task}
SCANS = ["compiled", "python"]

#: Sets socket options on (ours, theirs) before the connection is made.
Tune = Callable[[socket.socket, socket.socket], None]


# -- the kit: a running Connection of one combination, and its client ------------------


class ServerEnd(trio.abc.HalfCloseableStream):
    """The connection's end of a stream pair: records its writes, says when it was
    closed, and plays a reset by its peer at the next read once ``reset`` is set (a
    memory stream has no resets of its own)."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.sends: list[bytes] = []
        self.reset = False
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        if self.reset:
            raise trio.BrokenResourceError from ConnectionResetError(
                errno.ECONNRESET, "Connection reset by peer"
            )
        return data

    async def aclose(self) -> None:
        self.closed = True
        await self.inner.aclose()


@attrs.define(eq=False)
class Served:
    """A connection, its client, and where it runs."""

    connection: Connection
    client: trio.abc.HalfCloseableStream
    backend: Readiness | None  # sockets only
    ours: socket.socket | None  # sockets: the connection's socket
    end: ServerEnd | None  # streams: the connection's stream
    over: trio.Event = attrs.Factory(trio.Event)
    """Set once :meth:`run` is over."""

    @property
    def stats(self) -> Stats:
        return self.connection.stats

    async def run(self) -> None:
        try:
            await self.connection.run()
        finally:
            self.over.set()

    def waiting(self) -> int:
        """How many waits for the peer are under way: the backend's count for a socket,
        whether the stream transport is in a receive for a stream."""
        if self.backend is not None:
            return self.backend.waiting
        transport = self.connection.transport
        assert isinstance(transport, StreamTransport)
        return int(transport._scope is not None)

    def closed(self) -> bool:
        """Whether the connection's socket (or stream) is closed."""
        if self.ours is not None:
            return self.ours.fileno() == -1
        assert self.end is not None
        return self.end.closed

    async def reset(self) -> None:
        """The client goes away with data of its own unread: a socket closed with
        unread data resets its peer; a memory stream cannot, so its end plays one."""
        if self.end is not None:
            self.end.reset = True
        await self.client.send_all(b"unread\n")
        await trio.testing.wait_all_tasks_blocked()  # echoed (not read), or reset
        await self.client.aclose()


@attrs.frozen
class Kit:
    """How to make connections of one combination."""

    transport: str
    handler: FrameHandler | None
    scans: scans.Scans

    @property
    def sockets(self) -> bool:
        return self.transport != "stream"

    @asynccontextmanager
    async def backend(self) -> AsyncIterator[Readiness | None]:
        """The running readiness backend of a socket transport (None for a stream)."""
        if not self.sockets:
            yield None
            return
        backend = open_readiness("epoll" if self.transport == "socket-epoll" else "portable")
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run)
            yield backend
            nursery.cancel_scope.cancel()

    def open(
        self,
        backend: Readiness | None,
        *,
        lockstep: bool = False,
        tcp: bool = False,
        tune: Tune | None = None,
        framing: Framing | None = None,
        **options: Any,
    ) -> Served:
        """A connection (not running yet) and its client. ``lockstep``: a stream with
        back-pressure; ``tcp``: a loopback TCP pair; ``tune``: socket options;
        ``options`` override the connection's settings (``idle_timeout`` 300 s)."""
        settings: dict[str, Any] = {"idle_timeout": 300.0, **options}
        if backend is None:
            ours_stream, client = (
                trio.testing.lockstep_stream_pair()
                if lockstep
                else trio.testing.memory_stream_pair()
            )
            end = ServerEnd(ours_stream)
            connection = Connection(end, INFO, framing, self.handler, **settings)
            return Served(connection, client, None, None, end)
        ours, theirs = tcp_pair(4096) if tcp else socket.socketpair()
        ours.setblocking(False)
        if tune is not None:
            tune(ours, theirs)
        socket_client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
        transport = backend.transport(ours)
        connection = Connection(transport, INFO, framing, self.handler, **settings)
        return Served(connection, socket_client, backend, ours, None)

    @asynccontextmanager
    async def connected(
        self, *, prepare: Callable[[Connection], None] | None = None, **options: Any
    ) -> AsyncIterator[Served]:
        """A running connection (see :meth:`open`); ``prepare`` is called before its
        run. On exit the client is closed and the run waited for."""
        async with self.backend() as backend, trio.open_nursery() as nursery:
            served = self.open(backend, **options)
            if prepare is not None:
                prepare(served.connection)
            nursery.start_soon(served.run)
            try:
                yield served
            finally:
                await served.client.aclose()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=list(HANDLERS))
def handler(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=SCANS)
def scan(request: pytest.FixtureRequest) -> Iterator[scans.Scans]:
    """The scans, in use for the whole test (connections take the compiled
    read-and-echo at construction, and scan while they run)."""
    chosen = scans.COMPILED if request.param == "compiled" else scans.PYTHON
    assert chosen is not None, "the compiled module was not built"
    with scans.use(chosen):
        yield chosen


@pytest.fixture
def kit(transport: str, handler: str, scan: scans.Scans) -> Kit:
    return Kit(transport, HANDLERS[handler], scan)


def tcp_pair(client_receive_buffer: int) -> tuple[socket.socket, socket.socket]:
    """(accepted, connected) TCP sockets on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_receive_buffer)
        client.connect(listener.getsockname())
        ours, _ = listener.accept()
    return ours, client


def small_send_buffer(ours: socket.socket, theirs: socket.socket) -> None:
    """Our replies wait for the peer to read after a few KB (a Unix socket's sends
    are bounded by the sender's buffer)."""
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def small_buffers_both_ways(ours: socket.socket, theirs: socket.socket) -> None:
    """A sender that blocks after a few KB, and reads of a few KB (a socket's
    back-pressure, for the buffer budget)."""
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)


async def read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


async def send_until_broken(
    client: trio.abc.SendStream, chunks: list[bytes], pause: float = 0
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


def since(start: float) -> float:
    return trio.current_time() - start


async def expect_internal_error(
    kit: Kit, sent: bytes, echoed: bytes, hooked: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Send ``sent`` and our EOF to a connection whose own code fails on the way: it
    closes with ``echoed`` sent and reports the failure as internal."""
    ends: list[Exception | None] = []
    with trio.fail_after(5):
        async with kit.backend() as backend:
            served = kit.open(backend)
            if hooked:
                served.connection.ended = lambda conn, error: ends.append(error)
            await served.client.send_all(sent)
            await served.client.send_eof()
            if hooked:
                await served.connection.run()
            else:
                with pytest.raises(RuntimeError, match="boom"):
                    await served.connection.run()
            assert served.closed()
            assert await read_until_eof(served.client) == echoed
            await served.client.aclose()
    assert not served.connection.completed
    assert served.stats.handler_errors == 0
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    if not hooked:
        assert errors == []
        assert served.stats.internal_errors == 0
        return
    assert ends == [None]
    assert served.stats.internal_errors == 1
    assert [record.getMessage() for record in errors] == [
        "conn 1 from peer on test://: internal error, closed it (the daemon serves on): "
        "RuntimeError: boom"
    ]
    assert errors[0].exc_info is not None
    assert repr(errors[0].exc_info[1]) == "RuntimeError('boom')"


# -- the kit itself -------------------------------------------------------------------


async def test_the_kit_builds_the_combination_it_names(kit: Kit) -> None:
    # What every other test relies on: the transport, handler and scans named, and
    # the compiled read-and-echo exactly where the echo runs on a socket with the
    # compiled scans.
    with trio.fail_after(5):
        async with kit.connected() as served:
            connection = served.connection
            assert scans.ACTIVE is kit.scans
            assert connection.handler is kit.handler
            if kit.sockets:
                assert served.backend is not None
                assert served.backend.name == kit.transport.removeprefix("socket-")
                assert served.ours is not None
                assert connection.transport.fileno() == served.ours.fileno()
            else:
                assert isinstance(connection.transport, StreamTransport)
            compiled_echo = kit.sockets and kit.handler is None and kit.scans.compiled
            assert (connection._shape is not None) == compiled_echo
            await served.client.send_all(b"x\n")
            assert await served.client.receive_some() == b"x\n"


# -- echo, EOF, framing errors ------------------------------------------------------


async def test_echoes_and_closes_at_the_peers_eof(kit: Kit) -> None:
    with trio.fail_after(5):
        async with kit.connected() as served:
            for index in range(50):
                await served.client.send_all(b"frame %d\n" % index)
                assert await served.client.receive_some() == b"frame %d\n" % index
            await served.client.send_eof()
            assert await served.client.receive_some() == b""
            await served.over.wait()  # closed at the EOF: no need for ours
    assert served.connection.completed
    total = sum(len(b"frame %d\n" % index) for index in range(50))
    assert served.stats.frames == 50
    assert served.stats.bytes_received == served.stats.bytes_sent == total


async def test_echoes_every_frame_of_one_read_at_once(kit: Kit) -> None:
    with trio.fail_after(5):
        async with kit.connected() as served:
            await served.client.send_all(b"a\nbb\nccc\nparti")
            await trio.testing.wait_all_tasks_blocked()
            # Every whole frame of the read is out before the next read; the
            # partial one is held.
            assert await served.client.receive_some() == b"a\nbb\nccc\n"
            await served.client.send_all(b"al\n")
            await served.client.send_eof()
            assert await read_until_eof(served.client) == b"partial\n"
    if served.end is not None:  # in one write (what only a stream can count)
        assert served.end.sends == [b"a\nbb\nccc\n", b"partial\n"]
    assert served.connection.completed
    assert served.stats.frames == 4
    assert served.stats.bytes_received == served.stats.bytes_sent == len(b"a\nbb\nccc\npartial\n")


async def test_half_close_mid_frame_reports_and_echoes_only_whole_frames(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    framing = Framing("length")
    with trio.fail_after(5):
        async with kit.connected(framing=framing) as served:
            await served.client.send_all(
                framing.encode(b"whole") + framing.encode(b"0123456789")[:7]
            )
            await served.client.send_eof()
            assert await read_until_eof(served.client) == framing.encode(b"whole")
            await served.over.wait()
    assert served.connection.completed
    assert served.stats.incomplete_frames == 1
    assert "conn 1 from peer on test://: peer closed mid-frame (3 of 10 bytes); discarded" in (
        caplog.text
    )


async def test_oversized_frame_flushes_owed_echoes_then_closes(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        async with kit.connected(framing=Framing(max_frame=8)) as served:
            await served.client.send_all(b"ok\nfine\n" + b"x" * 20)
            assert await read_until_eof(served.client) == b"ok\nfine\n"
    assert served.stats.framing_errors == 1
    assert served.stats.frames == 2
    assert "bytes without a delimiter; frames are limited to 8 bytes; closing" in caplog.text


# -- the idle deadline ----------------------------------------------------------------


async def test_idle_timeout_closes_after_the_timeout(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "triodaemon")
    with trio.fail_after(5):
        async with kit.connected(idle_timeout=0.2) as served:
            start = trio.current_time()  # (before the read that sets the deadline)
            await served.client.send_all(b"ping\n")
            assert await served.client.receive_some() == b"ping\n"
            assert await served.client.receive_some() == b""  # our EOF
            assert 0.2 <= since(start) < 0.5
    assert served.stats.idle_timeouts == 1
    assert "conn 1 from peer on test://: idle for 0.2s; closing" in caplog.text


async def test_progress_resets_the_idle_timer(kit: Kit) -> None:
    with trio.fail_after(5):
        async with kit.connected(idle_timeout=0.2) as served:
            start = trio.current_time()
            for _ in range(3):  # 0.3 s of beats, each within the idle timeout
                await trio.sleep(0.1)
                await served.client.send_all(b"beat\n")
                assert await served.client.receive_some() == b"beat\n"
            assert await served.client.receive_some() == b""
            assert 0.3 + 0.2 <= since(start) < 0.3 + 0.5
    assert served.stats.idle_timeouts == 1


@asynccontextmanager
async def large_echo(kit: Kit, idle_timeout: float) -> AsyncIterator[tuple[Served, bytes]]:
    """A connection that has just been sent a 200 KB frame to echo, far more than the
    client's transport holds unread; yields it and the frame."""
    framing = Framing("length")
    frame = framing.encode(b"n" * 200_000)
    async with kit.connected(
        framing=framing, idle_timeout=idle_timeout, lockstep=True, tune=small_send_buffer
    ) as served:
        await served.client.send_all(frame)
        yield served, frame


async def test_a_peer_that_never_reads_is_closed_after_the_idle_timeout(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    # The echo of a large frame blocks (a lockstep stream takes nothing until the
    # client reads; a socket takes a few KB): no progress for the idle timeout.
    caplog.set_level(logging.INFO, "triodaemon")
    with trio.fail_after(5):
        async with large_echo(kit, idle_timeout=0.2) as (served, frame):
            start = trio.current_time()
            await served.over.wait()  # run() ends by itself
            assert 0.1 <= since(start) < 0.5
    assert served.stats.idle_timeouts == 1
    assert served.stats.bytes_sent < len(frame)
    if served.end is not None:
        assert served.stats.bytes_sent == 0  # (a lockstep stream took nothing)
    assert "peer stopped reading (no progress for 0.2s); closing" in caplog.text


async def test_a_peer_that_reads_a_large_reply_slowly_but_steadily_is_not_cut_off(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    # Progress is progress: 4 KB every 20 ms of a 200 KB echo, with an idle timeout
    # of 0.3 s, takes about a second and is never "no progress for 0.3 s".
    with trio.fail_after(10):
        async with large_echo(kit, idle_timeout=0.3) as (served, frame):
            echoed = bytearray()
            while len(echoed) < len(frame):
                chunk = await served.client.receive_some(4096)
                assert chunk, f"EOF after {len(echoed)} of {len(frame)} bytes"
                echoed += chunk
                await trio.sleep(0.02)
            assert echoed == frame
    assert served.stats.idle_timeouts == 0
    assert "peer stopped reading" not in caplog.text


# -- the drain ------------------------------------------------------------------------


async def test_drain_at_a_frame_boundary_closes_at_once(kit: Kit) -> None:
    # trio runs each batch of tasks in a random order: over these rounds the drain
    # lands both while the connection is busy after a reply and while it waits.
    for round in range(20):
        with trio.fail_after(5):
            async with kit.connected() as served:
                await served.client.send_all(b"one\n")
                assert await served.client.receive_some() == b"one\n"
                if round % 2:
                    await trio.testing.wait_all_tasks_blocked()
                    assert served.waiting() == 1
                start = trio.current_time()
                served.connection.drain()
                assert await served.client.receive_some() == b""
                assert since(start) < 0.25
        assert served.connection.completed
        assert served.stats.idle_timeouts == 0


async def test_drain_finishes_the_frame_in_progress(kit: Kit) -> None:
    framing = Framing("length")
    wire = framing.encode(b"in progress")
    with trio.fail_after(5):
        async with kit.connected(framing=framing) as served:
            await served.client.send_all(wire[:6])
            await trio.testing.wait_all_tasks_blocked()
            served.connection.drain()
            await trio.testing.wait_all_tasks_blocked()
            assert served.waiting() == 1  # not woken: a frame is in progress
            assert served.connection.state == "draining"
            await served.client.send_all(wire[6:])
            assert await read_until_eof(served.client) == wire
    assert served.connection.completed
    assert served.stats.frames == 1


# Sockets only: the OS tells (SIOCOUTQ) that everything we sent is acknowledged, so
# there is nothing to linger for; a trio stream cannot tell, and lingers until the
# peer's EOF (test_graceful_close_lingers_until_the_peer_closes).
@pytest.mark.parametrize("transport", SOCKETS)
async def test_an_idle_connection_closes_in_milliseconds_at_a_drain(kit: Kit) -> None:
    # The client stays connected and sends nothing more.
    with trio.fail_after(5):
        async with kit.connected() as served:
            await served.client.send_all(b"hello\n")
            assert await served.client.receive_some() == b"hello\n"
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            served.connection.drain()
            assert await served.client.receive_some() == b""  # our EOF
            with trio.fail_after(0.5):  # closed, though the client never sent its EOF
                await served.over.wait()
            assert since(start) < 0.5
    assert served.connection.completed


# -- the frame deadline ---------------------------------------------------------------


async def test_a_trickling_peer_meets_the_frame_timeout(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    # A byte every 0.05 s is progress (the idle timeout never fires), but the frame
    # begun at the first byte must be complete within the frame timeout.
    with trio.fail_after(5):
        async with kit.connected(idle_timeout=0.2, frame_timeout=0.3) as served:
            client = served.client

            async def trickle() -> None:
                with contextlib.suppress(trio.BrokenResourceError):
                    while True:
                        await client.send_all(b"x")
                        await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                start = trio.current_time()  # (before the first byte)
                nursery.start_soon(trickle)
                assert await client.receive_some() == b""  # our EOF
                assert 0.3 <= since(start) < 0.6
                nursery.cancel_scope.cancel()
    assert (served.stats.frame_timeouts, served.stats.idle_timeouts) == (1, 0)
    found = re.search(
        r"frame not complete after 0\.3s \((\d+) bytes so far\); closing", caplog.text
    )
    assert found is not None, caplog.text
    assert 3 <= int(found[1]) <= 8


async def test_the_frame_timeout_starts_again_with_each_frame(kit: Kit) -> None:
    # Each read ends inside a frame, 0.1 s apart: no frame takes the 0.2 s of the
    # frame timeout, though the reads go on for twice as long.
    with trio.fail_after(5):
        async with kit.connected(frame_timeout=0.2) as served:
            for index in range(4):
                await served.client.send_all(b"end %d\nbegin " % index)
                await trio.sleep(0.1)
            await served.client.send_all(b"\n")
            await served.client.send_eof()
            assert (await read_until_eof(served.client)).count(b"\n") == 5
    assert served.stats.frame_timeouts == 0
    assert served.stats.frames == 5


async def test_frames_that_keep_completing_never_meet_the_frame_timeout(kit: Kit) -> None:
    # Every read ends inside a frame, but a frame completes in each: many reads to
    # a frame timeout, and no timeout.
    with trio.fail_after(5):
        async with kit.connected(frame_timeout=0.2) as served:
            for index in range(12):
                await served.client.send_all(b"end %d\nstart of %d " % (index, index + 1))
                await trio.sleep(0.03)
            await served.client.send_all(b"\n")
            await served.client.send_eof()
            received = await read_until_eof(served.client)
    assert received.count(b"\n") == 13
    assert served.stats.frame_timeouts == 0


# -- the close: linger only while something can be lost --------------------------------


# Streams only: a trio stream cannot tell whether the peer has our replies, so it
# lingers until the peer's EOF (or LINGER_SECONDS); a socket asks the OS and closes
# once all is acknowledged and quiet (test_an_idle_connection_closes_in_milliseconds_
# at_a_drain, test_it_lingers_while_its_replies_are_unread).
@pytest.mark.parametrize("transport", ["stream"])
@pytest.mark.parametrize("peer_closes", [True, False], ids=["peer-closes", "peer-stays"])
async def test_graceful_close_lingers_until_the_peer_closes(
    kit: Kit, peer_closes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_linger, "LINGER_SECONDS", 0.3)
    with trio.fail_after(5):
        async with kit.connected() as served:
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()  # (before the linger begins)
            served.connection.drain()
            assert await served.client.receive_some() == b""
            # Data sent after our EOF is read and discarded, not answered with a reset.
            await served.client.send_all(b"late\n")
            await trio.testing.wait_all_tasks_blocked()
            assert not served.over.is_set()  # lingering
            if peer_closes:
                await served.client.send_eof()
                await served.over.wait()
                assert since(start) < 0.1
            else:
                await served.over.wait()
                assert 0.3 <= since(start) < 0.6  # LINGER_SECONDS
    assert served.connection.completed
    assert served.stats.bytes_received == len(b"late\n")
    assert served.stats.bytes_sent == 0


# Streams only: where what we sent cannot be known to have arrived, a peer that goes
# on sending after our EOF is cut off after LINGER_DISCARD bytes; a socket reads on
# until the peer is quiet (test_a_peer_answering_our_last_reply_at_a_drain_...).
@pytest.mark.parametrize("transport", ["stream"])
async def test_lingering_discards_a_bounded_number_of_bytes_where_delivery_is_unknown(
    kit: Kit,
) -> None:
    with trio.fail_after(5):
        async with kit.connected() as served:
            await trio.testing.wait_all_tasks_blocked()
            served.connection.drain()
            assert await served.client.receive_some() == b""
            start = trio.current_time()
            await served.client.send_all(b"x" * (LINGER_DISCARD + 1))
            await served.over.wait()
            assert since(start) < 0.1  # cut off at once, not after LINGER_SECONDS
    assert served.connection.completed


async def test_lingering_discards_a_bounded_number_of_bytes_from_a_framing_violator(
    kit: Kit,
) -> None:
    # A peer that breaks the framing and goes on sending is not read for long.
    with trio.fail_after(10):
        async with kit.connected(framing=Framing(max_frame=1024)) as served:
            sent = await send_until_broken(served.client, [b"v" * 65536] * 800)
    assert served.stats.framing_errors == 1
    taken = served.stats.bytes_received
    assert taken < 1024 + 65536 + 2 * LINGER_DISCARD + 65536, taken
    assert sent < 10_000_000


# Sockets only: lingering until our replies are read needs the OS to tell what is
# unread (SIOCOUTQ); a trio stream says nothing of what it delivered.
@pytest.mark.parametrize("transport", SOCKETS)
async def test_it_lingers_while_its_replies_are_unread(kit: Kit) -> None:
    # Replies the peer has not read yet would be lost to a reset: the connection
    # lingers until they are read, then closes without waiting for the peer's EOF.
    framing = Framing("length")
    big = framing.encode(b"r" * 100_000)
    with trio.fail_after(5):
        async with kit.connected(framing=framing) as served:
            await served.client.send_all(big)
            await trio.testing.wait_all_tasks_blocked()
            served.connection.drain()
            await trio.testing.wait_all_tasks_blocked()
            assert not served.over.is_set()  # replies unread: still lingering
            assert await read_until_eof(served.client) == big
            with trio.fail_after(0.5):
                await served.over.wait()
    assert served.connection.completed


# Sockets only: a reset for bytes unread at our close is what a socket does; a
# trio stream delivers our EOF whatever the peer sent.
@pytest.mark.parametrize("transport", SOCKETS)
@pytest.mark.parametrize(
    "answer", [b"two\n", b"x" * (5 * LINGER_DISCARD) + b"\n"], ids=["short", "long"]
)
async def test_a_peer_answering_our_last_reply_at_a_drain_meets_our_eof_not_a_reset(
    kit: Kit, answer: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pipelining client sends on as it reads our last replies, until it reads our
    # EOF. Its bytes arriving after we closed would be answered with a reset (or
    # EPIPE), which it would take for a crash: the connection waits for it to go
    # quiet first, however much it sends (a large frame's rest, say: a framing
    # violator alone is cut off). (The quiet period is long here, so that the test
    # does not race it; the client closes once it has our EOF.)
    monkeypatch.setattr(_linger, "_QUIET", 0.5)
    with trio.fail_after(5):
        async with kit.connected() as served:
            await served.client.send_all(b"one\n")
            assert await served.client.receive_some() == b"one\n"
            served.connection.drain()
            await trio.testing.wait_all_tasks_blocked()  # lingering: our EOF is out
            await served.client.send_all(answer)  # its answer to the reply it just read
            assert await served.client.receive_some() == b""  # our EOF, not ECONNRESET
            await served.client.aclose()
            await served.over.wait()
    assert served.connection.completed
    assert served.connection.bytes_in == 4 + len(answer)  # read (and discarded)


# -- a lost connection, cancellation ----------------------------------------------------


async def test_a_reset_is_one_line_and_counted(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "triodaemon")
    with trio.fail_after(5):
        async with kit.connected() as served:
            await served.client.send_all(b"x\n")
            assert await served.client.receive_some() == b"x\n"
            await served.reset()
            await served.over.wait()
    assert served.stats.resets == 1
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    assert lost == ["conn 1 from peer on test://: connection lost: connection reset by peer"]
    assert served.closed()


async def test_cancelled_it_closes_its_transport_and_leaves_no_wait(kit: Kit) -> None:
    with trio.fail_after(5):
        async with kit.backend() as backend:
            served = kit.open(backend)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(served.run)
                await trio.testing.wait_all_tasks_blocked()
                assert served.waiting() == 1
                nursery.cancel_scope.cancel()
            assert served.waiting() == 0
            assert served.closed()
            await served.client.aclose()
    assert not served.connection.completed


# -- replies that wait, the shared receive buffer, the buffer budget ---------------------


async def test_replies_waiting_to_be_sent_survive_other_connections_reads(kit: Kit) -> None:
    # Connections read into one buffer shared by every connection of the run, and a
    # frame larger than a read is echoed as a view of the decoder's buffer: a reply
    # that waits half sent must point into neither while other connections read.
    # (Replies wait: a lockstep stream takes nothing until the client reads.)
    framing = Framing("length")
    streams = [
        b"".join(framing.encode(bytes([k]) * (30_000 + 997 * i)) for i in range(6)) for k in (1, 2)
    ]
    lines = b"".join(b"line%05d\n" % i for i in range(8000))
    stats = Stats()
    with trio.fail_after(10):
        async with kit.backend() as backend, trio.open_nursery() as nursery:
            served = [
                kit.open(
                    backend,
                    framing=kind,
                    receive_size=8192,
                    stats=stats,
                    lockstep=True,
                    tune=small_send_buffer,
                )
                for kind in (framing, framing, Framing())
            ]
            for one in served:
                nursery.start_soon(one.run)
            sent = [*streams, lines]
            for one, data in zip(served, sent, strict=True):
                nursery.start_soon(one.client.send_all, data)
            for one, data in zip(served, sent, strict=True):
                assert await read_exactly(one.client, len(data)) == data
            for one in served:
                await one.client.aclose()
    assert stats.frames == 12 + 8000


async def test_the_buffer_budget_pauses_holders_and_loses_nothing(kit: Kit) -> None:
    # Four connections each send most of a 200 KB frame; the budget holds 250 KB.
    # The ones over it are not read (their senders block: a lockstep stream, or
    # small socket buffers), nobody is closed, and as frames finish, the rest go
    # on: every frame comes back whole.
    framing = Framing("length")
    frames = [framing.encode(bytes([k]) * 200_000) for k in range(4)]
    budget = BufferBudget(250_000)
    stats = Stats()
    high = 0
    with trio.fail_after(20):
        async with kit.backend() as backend, trio.open_nursery() as nursery:
            served = [
                kit.open(
                    backend,
                    framing=framing,
                    receive_size=16384,
                    stats=stats,
                    budget=budget,
                    lockstep=True,
                    tune=small_buffers_both_ways,
                )
                for _ in frames
            ]
            for one in served:
                nursery.start_soon(one.run)
            go = trio.Event()

            async def send(client: trio.abc.SendStream, frame: bytes) -> None:
                await client.send_all(frame[:-1000])
                await go.wait()
                await client.send_all(frame[-1000:])

            for one, frame in zip(served, frames, strict=True):
                nursery.start_soon(send, one.client, frame)
            await trio.testing.wait_all_tasks_blocked()
            high = budget.held
            assert stats.memory_waits >= 1
            go.set()
            for one, frame in zip(served, frames, strict=True):
                assert await read_exactly(one.client, len(frame)) == frame
            for one in served:
                await one.client.aclose()
    assert 250_000 < high <= 250_000 + 200_004 + 16384 + 3 * 4096, high
    assert budget.held == 0
    assert stats.frames == 4
    assert stats.framing_errors == stats.resets == stats.frame_timeouts == 0


async def test_a_client_pipelining_through_a_drain_gets_every_echo_sent(kit: Kit) -> None:
    # It goes on sending until it reads our EOF, so the linger finds far more than
    # LINGER_DISCARD waiting; closing before what we sent is acknowledged would let
    # the reset for its unread frames destroy the echoes still in our send queue
    # (TCP, where the client's window is small; a lockstep stream for the stream).
    framing = Framing("length")
    frames = framing.encode(b"abc") * 50
    got = 0
    with trio.fail_after(20):
        async with kit.backend() as backend, trio.open_nursery() as nursery:
            served = kit.open(backend, framing=framing, tcp=True, lockstep=True)
            client = served.client
            nursery.start_soon(served.run)
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
            served.connection.drain()
            with contextlib.suppress(trio.BrokenResourceError):  # (a reset after the EOF)
                while chunk := await client.receive_some(1000):
                    got += len(chunk)
            done.set()
            # (Its EOF ends our linger at once: a stream cannot tell that all is read.)
            await client.aclose()
            await served.over.wait()
    assert served.connection.completed
    assert got == served.connection.bytes_out  # every echo it was sent, whole
    assert got % 7 == 0


# -- frame handlers of the test's own: transport x scans (the handler is the scenario's) --


async def test_handler_errors_propagate_after_closing_the_stream(
    transport: str, scan: scans.Scans
) -> None:
    async def broken(frame: bytes, conn: ConnectionInfo) -> bytes:
        raise RuntimeError("bug in handler")

    kit = Kit(transport, broken, scan)
    with trio.fail_after(5):
        async with kit.backend() as backend:
            served = kit.open(backend)
            await served.client.send_all(b"boom\n")
            await served.client.send_eof()  # (the close lingers until then, on a stream)
            with pytest.raises(RuntimeError, match="bug in handler"):
                await served.connection.run()
            assert served.closed()
            assert await served.client.receive_some() == b""
            await served.client.aclose()
    assert not served.connection.completed
    assert served.stats.internal_errors == 0
    assert served.stats.handler_errors == 1


def ending_into(ends: list[Exception | None]) -> Callable[[Connection], None]:
    """A ``prepare`` for :meth:`Kit.connected`: the connection's ``ended`` hook
    appends the handler's failure (or None) to ``ends``."""

    def prepare(connection: Connection) -> None:
        connection.ended = lambda conn, error: ends.append(error)

    return prepare


async def echo_but_boom(frame: bytes, conn: ConnectionInfo) -> bytes:
    """A handler with a bug: it fails on the frame ``boom``, and echoes any other."""
    if frame == b"boom":
        raise RuntimeError("bug in handler")
    return frame


async def test_the_ended_hook_gets_the_handlers_error_instead_of_the_caller(
    transport: str, scan: scans.Scans, caplog: pytest.LogCaptureFixture
) -> None:
    kit = Kit(transport, echo_but_boom, scan)
    ends: list[tuple[object, str, bool, bool]] = []
    for frames, echoed in ((b"boom\n", b""), (b"ok\n", b"ok\n")):
        with trio.fail_after(5):
            async with kit.backend() as backend:
                served = kit.open(backend)

                def ended(conn: Connection, error: Exception | None, one: Served = served) -> None:
                    # (the connection is closed by then)
                    ends.append((conn, repr(error), conn.completed, one.closed()))

                served.connection.ended = ended
                await served.client.send_all(frames)
                await served.client.send_eof()
                await served.connection.run()  # raises nothing: the hook has it
                assert await read_until_eof(served.client) == echoed
                await served.client.aclose()
        assert ends[-1][0] is served.connection
        assert served.stats.internal_errors == 0
    assert [end[1:] for end in ends] == [
        ("RuntimeError('bug in handler')", False, True),
        ("None", True, True),
    ]
    assert "internal error" not in caplog.text


@pytest.mark.parametrize("writes", [[b"good\nbad\nlater\n"], [b"good\n", b"bad\nlater\n"]])
async def test_the_replies_before_a_failing_frame_are_sent_however_the_frames_came(
    transport: str, scan: scans.Scans, writes: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    # What a client gets back must not depend on how its bytes were cut into reads:
    # the reply to "good" goes out before the connection closes for "bad", as the
    # replies before a framing error do; nothing after "bad" is answered.
    async def shouting(frame: bytes, conn: ConnectionInfo) -> bytes:
        if frame == b"bad":
            raise ValueError("no")
        return frame.upper()

    kit = Kit(transport, shouting, scan)
    ends: list[Exception | None] = []
    with trio.fail_after(5):
        async with kit.connected(prepare=ending_into(ends)) as served:
            for write in writes:
                await served.client.send_all(write)
                await trio.testing.wait_all_tasks_blocked()
            await served.client.send_eof()
            assert await read_until_eof(served.client) == b"GOOD\n"
            await served.client.aclose()
    assert [repr(error) for error in ends] == ["ValueError('no')"]
    assert served.stats.handler_errors == 1
    assert served.stats.internal_errors == 0
    assert "frame handler failed: ValueError: no" in caplog.text


async def test_a_reset_while_lingering_after_a_handlers_failure_keeps_the_failure(
    transport: str, scan: scans.Scans
) -> None:
    # The close after a handler's failure lingers; a peer that resets meanwhile
    # ends the linger, and must not take the handler's failure with it.
    kit = Kit(transport, echo_but_boom, scan)
    ends: list[Exception | None] = []
    with trio.fail_after(5):
        async with kit.connected(prepare=ending_into(ends)) as served:
            await served.client.send_all(b"ok\nboom\n")  # "ok" is echoed, and left unread
            await trio.testing.wait_all_tasks_blocked()  # lingering
            await served.reset()
            await served.over.wait()
    assert [repr(error) for error in ends] == ["RuntimeError('bug in handler')"]
    assert not served.connection.completed
    assert served.stats.handler_errors == 1


async def test_custom_handler_replies_and_can_stay_silent(
    transport: str, scan: scans.Scans
) -> None:
    async def upper_or_nothing(frame: bytes, conn: ConnectionInfo) -> bytes | None:
        return None if frame == b"quiet" else frame.upper()

    kit = Kit(transport, upper_or_nothing, scan)
    with trio.fail_after(5):
        async with kit.connected() as served:
            await served.client.send_all(b"abc\nquiet\ndef\n")
            await served.client.send_eof()
            assert await read_until_eof(served.client) == b"ABC\nDEF\n"
    assert served.stats.frames == 3


# -- handover: park, hand over or carry on, resume ------------------------------------


@pytest.mark.parametrize("handed", [False, True], ids=["carries-on", "handed"])
async def test_hand_over_calls_the_hook_once_nothing_is_owed(kit: Kit, handed: bool) -> None:
    # A large frame's echo waits for the client to read it (a lockstep stream; a
    # small send buffer), and part of the next frame is held: the hook is called
    # once the echo is all sent, with the partial frame to hand over.
    big = b"b" * 100_000 + b"\n"
    calls: list[tuple[int, bytes, str, str, int]] = []

    async def hook(conn: Connection) -> bool:
        state = conn.handover_state()
        calls.append(
            (conn.bytes_out, state.pending, state.peer, conn.state, conn.transport.fileno())
        )
        return handed

    with trio.fail_after(5):
        async with kit.connected(
            lockstep=True, tune=small_send_buffer, receive_size=1 << 20
        ) as served:
            client = served.client
            await client.send_all(big + b"par")  # one read
            await trio.testing.wait_all_tasks_blocked()
            assert served.connection.state == "writing"
            fd = served.ours.fileno() if served.ours is not None else -1
            served.connection.hand_over(hook)
            await trio.testing.wait_all_tasks_blocked()
            assert calls == []  # replies owed
            assert await read_exactly(client, len(big)) == big
            await trio.testing.wait_all_tasks_blocked()
            assert calls == [(len(big), b"par", served.connection.info.peer, "mid-frame", fd)]
            if handed:
                await served.over.wait()
                assert await read_until_eof(client) == b""  # nothing sent after
            else:
                await client.send_all(b"tial\nmore\n")
                assert await read_exactly(client, 13) == b"partial\nmore\n"
                await client.send_eof()
                assert await read_until_eof(client) == b""
    assert served.connection.completed
    assert served.connection.handed is handed
    assert len(calls) == 1
    assert served.stats.bytes_sent == len(big) + (0 if handed else 13)


async def test_hand_over_an_idle_connection_calls_the_hook_at_once(kit: Kit) -> None:
    called = trio.Event()

    async def hook(conn: Connection) -> bool:
        called.set()
        return True

    with trio.fail_after(5):
        async with kit.connected() as served:
            await served.client.send_all(b"one\n")
            assert await served.client.receive_some() == b"one\n"
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            served.connection.hand_over(hook)
            with trio.fail_after(0.1):
                await called.wait()
                await served.over.wait()
            assert since(start) < 0.1
    assert served.connection.completed


async def test_resume_carries_a_partial_frame_on(kit: Kit) -> None:
    with trio.fail_after(5):
        async with kit.connected(
            prepare=lambda conn: conn.resume(
                ConnectionState("peer", "listener", b"par", math.inf, math.inf)
            )
        ) as served:
            await served.client.send_all(b"tial\n")
            assert await served.client.receive_some() == b"partial\n"
            await served.client.send_all(b"next\n")
            assert await served.client.receive_some() == b"next\n"
            await served.client.send_eof()
            assert await read_until_eof(served.client) == b""
    assert served.connection.completed
    assert served.stats.frames == 2
    assert served.stats.frame_timeouts == served.stats.incomplete_frames == 0


@pytest.mark.parametrize(
    ("pending", "idle_left", "frame_left"),
    [(b"par", math.inf, 0.2), (b"", 0.2, math.inf)],
    ids=["frame-left", "idle-left"],
)
async def test_resume_keeps_the_deadlines_it_is_given(
    kit: Kit, pending: bytes, idle_left: float, frame_left: float
) -> None:
    with trio.fail_after(5):
        start = trio.current_time()  # (before the resume)
        async with kit.connected(
            frame_timeout=10,
            prepare=lambda conn: conn.resume(
                ConnectionState("peer", "listener", pending, idle_left, frame_left)
            ),
        ) as served:
            assert await served.client.receive_some() == b""  # our EOF, 0.2 s on
            assert 0.2 <= since(start) < 0.5
    stats = served.stats
    assert (stats.frame_timeouts, stats.idle_timeouts) == ((1, 0) if pending else (0, 1))


# -- regressions ----------------------------------------------------------------------


async def test_a_drained_connection_holding_part_of_a_frame_meets_the_frame_timeout(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    # The drain waits for the frame in progress, but no longer than the frame
    # deadline: then it closes (it used to wake again and again, at 100% CPU).
    with trio.fail_after(5):
        async with kit.connected(frame_timeout=0.3) as served:
            start = trio.current_time()  # (before the read that sets the frame deadline)
            await served.client.send_all(b"part")
            await trio.testing.wait_all_tasks_blocked()
            served.connection.drain()
            with trio.fail_after(1):
                assert await served.client.receive_some() == b""  # our EOF
            assert 0.3 <= since(start) < 1
    assert served.stats.frame_timeouts == 1
    assert "frame not complete after 0.3s (4 bytes so far); closing" in caplog.text


# The epoll backend only: its fallback for sockets its epoll will not take.
@pytest.mark.parametrize("transport", ["socket-epoll"])
@pytest.mark.parametrize("wake", ["drain", "hand_over"])
async def test_where_the_epoll_will_not_take_a_socket_drain_and_hand_over_still_wake_it(
    kit: Kit, wake: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Out of fs.epoll.max_user_watches: every wait goes the portable way, and must
    # still be woken by drain() and hand_over() at once (not at the idle timeout).
    def refuse(self: EpollReadiness, fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EpollReadiness, "_register", refuse)
    called = trio.Event()

    async def hook(conn: Connection) -> bool:
        called.set()
        return True

    with trio.fail_after(5):
        async with kit.connected(idle_timeout=300) as served:
            await served.client.send_all(b"one\n")
            assert await served.client.receive_some() == b"one\n"
            await trio.testing.wait_all_tasks_blocked()
            assert isinstance(served.backend, EpollReadiness)
            # (Waiting, but not in the epoll: the portable way.)
            assert served.waiting() == 1
            assert not served.backend._waiters
            start = trio.current_time()
            if wake == "drain":
                served.connection.drain()
                with trio.fail_after(0.1):
                    assert await served.client.receive_some() == b""  # our EOF
            else:
                served.connection.hand_over(hook)
                with trio.fail_after(0.1):
                    await called.wait()
            assert since(start) < 0.1
            with trio.fail_after(0.5):
                await served.over.wait()
    assert served.connection.completed
    assert served.stats.idle_timeouts == 0


@pytest.mark.parametrize("hooked", [True, False], ids=["ended", "no-ended"])
async def test_a_failure_of_our_own_code_is_an_internal_error(
    kit: Kit, hooked: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Any exception out of the connection's own code (here: at the peer's EOF) is
    # ours, not the frame handler's: with ``ended``, logged with its traceback,
    # counted, and ``ended`` gets None; without, run() raises it.
    def boom(self: Connection) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(Connection, "_eof", boom)
    await expect_internal_error(kit, b"x\n", b"x\n", hooked, caplog)


# The echo only (the injection is in the echo's own step: a handler's reads never
# come there); a partial frame, so that the compiled read-and-echo hands it on too.
@pytest.mark.parametrize("handler", ["echo"])
@pytest.mark.parametrize("hooked", [True, False], ids=["ended", "no-ended"])
async def test_a_failure_in_the_echos_step_is_an_internal_error(
    kit: Kit, hooked: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(self: Connection, data: object, size: int, now: float) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(Connection, "_take_echo", boom)
    await expect_internal_error(kit, b"part", b"", hooked, caplog)


# -- not per transport ----------------------------------------------------------------


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
