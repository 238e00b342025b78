"""The daemon over real TCP and Unix sockets, in-process."""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import struct
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from triodaemon import (
    ClientError,
    ConnectionInfo,
    Daemon,
    DaemonConfig,
    FrameHandler,
    Framing,
    Stats,
    TcpAddress,
    UnixAddress,
    connect,
)
from triodaemon._config import ProcessConfig
from triodaemon._listeners import (
    PER_CONNECTION_ACCEPT_ERRNOS,
    Address,
    BoundListener,
    open_listeners,
)
from triodaemon._lowlevel.readiness import ReadinessName
from triodaemon.testing import echo_frames

from .conftest import (
    LogWaiter,
    echo_in_the_task,
    loopback,
    read_until_eof,
    running,
    serving,
)

#: Every way a connection waits for data, in each readiness backend: served by
#: the backend (the echo: the backend calls its step), or waiting there for its
#: task to read (another handler). (The whole suite also runs with each backend
#: as the default: see .ci/run.)
WAITS: dict[str, tuple[FrameHandler | None, ReadinessName]] = {
    "served-epoll": (None, "epoll"),
    "task-epoll": (echo_in_the_task, "epoll"),
    "served-portable": (None, "portable"),
    "task-portable": (echo_in_the_task, "portable"),
}
EVERY_WAIT = pytest.mark.parametrize("wait", list(WAITS))


def waiting(wait: str, config: DaemonConfig) -> Daemon:
    """A daemon whose connections wait for data the ``wait`` way."""
    handler, readiness = WAITS[wait]
    return Daemon(attrs.evolve(config, readiness=readiness), handler)


def waits_now(daemon: Daemon) -> int:
    """How many of the daemon's connections wait in its readiness backend now."""
    return daemon._lowlevel.readiness.waiting


FRAMINGS = [
    Framing(),
    Framing("delimiter", delimiter=b"\r\n"),
    Framing("length"),
    Framing("length", length_bytes=2, byte_order="little", length_includes_header=True),
    Framing("varint"),
    Framing("fixed", frame_size=4),
]


def sample(framing: Framing) -> list[bytes]:
    if framing.kind == "fixed":
        return [b"abcd", b"\n\n\n\n", b"wxyz"]
    return [b"hello", b"", b"world " * 1000, b"last"]


@EVERY_WAIT
@pytest.mark.parametrize("framing", FRAMINGS, ids=lambda f: f.describe())
async def test_echo_on_tcp_and_unix_in_every_framing(
    sock_dir: Path, framing: Framing, wait: str
) -> None:
    daemon = waiting(wait, DaemonConfig(loopback(sock_dir), framing))
    with trio.fail_after(10):
        async with serving(daemon) as addresses:
            assert [type(a) for a in addresses] == [TcpAddress, UnixAddress]
            for address in addresses:
                frames = sample(framing)
                assert await echo_frames(address, frames, framing=framing) == frames
    assert daemon.stats.connections_accepted == 2


async def test_raw_echo(sock_dir: Path) -> None:
    framing = Framing("raw")
    with trio.fail_after(10):
        async with running(DaemonConfig(loopback(sock_dir), framing)) as (_, addresses):
            replies = await echo_frames(addresses[1], [b"no\nframes", b" at all"], framing=framing)
            assert b"".join(replies) == b"no\nframes at all"


async def test_every_listener_serves_at_once(sock_dir: Path) -> None:
    config = DaemonConfig(
        [
            TcpAddress("127.0.0.1", 0),
            TcpAddress("::1", 0),
            UnixAddress(str(sock_dir / "a.sock")),
            UnixAddress(str(sock_dir / "b.sock")),
        ]
    )
    with trio.fail_after(10):
        async with running(config) as (_, addresses):
            assert len(addresses) == 4
            async with trio.open_nursery() as nursery:
                for address in addresses:
                    nursery.start_soon(echo_frames, address, [b"x"] * 10)


async def test_socket_file_exists_while_serving_and_goes_on_drain(sock_dir: Path) -> None:
    path = sock_dir / "echo.sock"
    with trio.fail_after(10):
        async with running(DaemonConfig([UnixAddress(str(path))])):
            assert path.is_socket()
    assert not path.exists()


async def test_thousand_concurrent_connections(sock_dir: Path) -> None:
    with trio.fail_after(60):
        async with running(DaemonConfig(loopback(sock_dir))) as (daemon, addresses):
            opened = 0
            all_open = trio.Event()
            go = trio.Event()

            async def client(address: Address, index: int) -> None:
                nonlocal opened
                stream = await connect(address)
                async with stream:
                    await stream.send_all(b"hello %d\npart" % index)
                    opened += 1
                    if opened == 1000:
                        all_open.set()
                    await go.wait()
                    await stream.send_all(b"ial\n")
                    expected = b"hello %d\npartial\n" % index
                    received = b""
                    while len(received) < len(expected):
                        received += await stream.receive_some()
                    assert received == expected

            async with trio.open_nursery() as nursery:
                for index in range(1000):
                    nursery.start_soon(client, addresses[index % 2], index)
                await all_open.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert daemon.connections == 1000  # all open at once, each mid-frame
                go.set()
    assert daemon.stats.connections_accepted == 1000
    assert daemon.stats.frames == 2000


async def test_max_connections_applies_backpressure(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = DaemonConfig([UnixAddress(str(sock_dir / "e.sock"))], max_connections=2)
    with trio.fail_after(10):
        async with running(config) as (daemon, [address]):
            first = await connect(address)
            second = await connect(address)
            for stream in (first, second):
                await stream.send_all(b"in\n")
                assert await stream.receive_some() == b"in\n"
            third = await connect(address)  # the kernel queues it; the daemon does not accept
            await third.send_all(b"waiting\n")
            await second.send_all(b"still here\n")
            assert await second.receive_some() == b"still here\n"
            assert daemon.stats.connections_accepted == 2
            assert "connection limit (2) reached" in caplog.text
            await first.aclose()
            assert await third.receive_some() == b"waiting\n"
            assert daemon.stats.connections_accepted == 3
            await second.aclose()
            await third.aclose()


async def test_connection_limit_is_shared_fairly_by_listeners(
    sock_dir: Path, daemon_log: LogWaiter
) -> None:
    # Regression: a listener's loop must not hold the only free slot while its
    # own listener is quiet and a client waits on another listener.
    config = DaemonConfig(loopback(sock_dir), max_connections=1)
    with trio.fail_after(10):
        async with running(config) as (_, [tcp, unix]):
            first = await connect(tcp)
            await first.send_all(b"1\n")
            assert await first.receive_some() == b"1\n"
            waiting = await connect(unix)
            await waiting.send_all(b"2\n")
            await daemon_log.wait_for("connection limit (1) reached")
            await first.aclose()
            assert await waiting.receive_some() == b"2\n"
            await daemon_log.wait_for("below the connection limit again")
            await waiting.aclose()
    assert daemon_log.count("connection limit (1) reached") == 1


@EVERY_WAIT
async def test_idle_connection_is_closed(sock_dir: Path, wait: str) -> None:
    daemon = waiting(wait, DaemonConfig(loopback(sock_dir), idle_timeout=0.2))
    with trio.fail_after(10):
        async with serving(daemon) as addresses:
            for address in addresses:
                stream = await connect(address)
                async with stream:
                    await stream.send_all(b"x\n")
                    assert await read_until_eof(stream) == b"x\n"
    assert daemon.stats.idle_timeouts == 2


@EVERY_WAIT
async def test_drain_closes_idle_finishes_in_progress_and_refuses_new(
    sock_dir: Path, wait: str
) -> None:
    framing = Framing("length")
    wire = framing.encode(b"a frame in progress")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            daemon = waiting(wait, DaemonConfig(loopback(sock_dir), framing))
            addresses = await nursery.start(daemon.serve)
            idle = await connect(addresses[0])
            busy = await connect(addresses[1])
            await busy.send_all(wire[:7])
            await idle.send_all(framing.encode(b"done"))
            assert await idle.receive_some() == framing.encode(b"done")
            await trio.testing.wait_all_tasks_blocked()  # the daemon has read busy's bytes
            assert waits_now(daemon) == 2
            daemon.drain()
            assert await read_until_eof(idle) == b""
            for address in addresses:
                with pytest.raises(ClientError, match="connection refused|no such file"):
                    await connect(address)
            assert not (sock_dir / "echo.sock").exists()
            await busy.send_all(wire[7:])
            assert await read_until_eof(busy) == wire
            await idle.aclose()
            await busy.aclose()
    assert daemon.summary is not None
    assert (daemon.summary.drained, daemon.summary.aborted) == (2, 0)


async def test_drain_deadline_cancels_a_client_that_never_reads(sock_dir: Path) -> None:
    config = DaemonConfig(loopback(sock_dir), drain_timeout=0.3)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            daemon = Daemon(config)
            addresses = await nursery.start(daemon.serve)
            stream = await connect(addresses[1])

            async def flood() -> None:
                with trio.move_on_after(15):
                    try:
                        while True:
                            await stream.send_all(b"y" * 65535 + b"\n")
                    except trio.BrokenResourceError:
                        pass

            nursery.start_soon(flood)
            await trio.testing.wait_all_tasks_blocked()  # both sides stuck in send
            assert daemon.stats.bytes_received > 0
            daemon.drain()
    await stream.aclose()
    assert daemon.summary is not None
    assert daemon.summary.aborted == 1


@EVERY_WAIT
async def test_abort_cancels_at_once(sock_dir: Path, wait: str) -> None:
    config = DaemonConfig(loopback(sock_dir), framing=Framing("length"), drain_timeout=3600)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            daemon = waiting(wait, config)
            addresses = await nursery.start(daemon.serve)
            stream = await connect(addresses[0])
            await stream.send_all(b"\x00\x00\x00\x10mid")  # a frame that never finishes
            await trio.testing.wait_all_tasks_blocked()
            daemon.drain()
            await trio.testing.wait_all_tasks_blocked()
            assert daemon.connections == 1
            assert waits_now(daemon) == 1  # mid-frame: still waiting
            daemon.abort()
    assert await read_until_eof(stream) == b""
    await stream.aclose()
    assert daemon.summary is not None
    assert daemon.summary.forced
    assert daemon.summary.aborted == 1
    assert waits_now(daemon) == 0  # the cancelled wait left the backend


async def test_handler_bug_harms_no_other_connection(
    sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def fragile(frame: bytes, conn: ConnectionInfo) -> bytes:
        if frame == b"crash":
            raise ZeroDivisionError("division by zero")
        return frame

    with trio.fail_after(10):
        async with running(DaemonConfig(loopback(sock_dir)), handler=fragile) as (daemon, addrs):
            healthy = await connect(addrs[0])
            await healthy.send_all(b"before\n")
            assert await healthy.receive_some() == b"before\n"
            victim = await connect(addrs[1])
            await victim.send_all(b"crash\n")
            assert await read_until_eof(victim) == b""
            await healthy.send_all(b"after\n")
            assert await healthy.receive_some() == b"after\n"
            assert await echo_frames(addrs[1], [b"new"]) == [b"new"]
            await healthy.aclose()
            await victim.aclose()
    assert daemon.stats.handler_errors == 1
    [line] = [r for r in caplog.records if "frame handler failed" in r.getMessage()]
    assert "ZeroDivisionError: division by zero" in line.getMessage()


async def test_oversized_frame_closes_only_that_connection(sock_dir: Path) -> None:
    config = DaemonConfig(loopback(sock_dir), Framing("length", max_frame=100))
    framing = config.framing
    with trio.fail_after(10):
        async with running(config) as (daemon, addrs):
            other = await connect(addrs[0])
            bad = await connect(addrs[1])
            await bad.send_all(framing.encode(b"fine") + (1 << 30).to_bytes(4, "big"))
            assert await read_until_eof(bad) == framing.encode(b"fine")
            await other.send_all(framing.encode(b"unharmed"))
            assert await other.receive_some() == framing.encode(b"unharmed")
            await other.aclose()
            await bad.aclose()
    assert daemon.stats.framing_errors == 1


async def test_reset_mid_frame_is_survived(sock_dir: Path, daemon_log: LogWaiter) -> None:
    config = DaemonConfig([TcpAddress("127.0.0.1", 0)])
    with trio.fail_after(10):
        async with running(config) as (daemon, [address]):
            assert isinstance(address, TcpAddress)
            raw = socket.create_connection((address.host, address.port))
            raw.sendall(b"half a fra")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()  # RST
            line = await daemon_log.wait_for("connection lost", "peer closed mid-frame")
            assert line.startswith("conn 1 from 127.0.0.1:"), line
            assert await echo_frames(address, [b"next"]) == [b"next"]
    assert daemon.stats.resets + daemon.stats.incomplete_frames == 1


async def test_accept_survives_descriptor_exhaustion(sock_dir: Path, daemon_log: LogWaiter) -> None:
    config = DaemonConfig([UnixAddress(str(sock_dir / "e.sock"))])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with trio.fail_after(10):
        async with running(config) as (daemon, _addresses):
            hogs: list[int] = []
            try:
                # No checkpoint until the table is full, so the daemon cannot accept
                # early: a blocking connect (queued in the backlog), then exhaust
                # descriptors for real under a low soft limit.
                raw = socket.socket(socket.AF_UNIX)
                raw.connect(str(sock_dir / "e.sock"))
                in_use = len(os.listdir("/proc/self/fd"))
                resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 4, hard))
                with pytest.raises(OSError, match="Too many open files"):  # noqa: PT012
                    while True:
                        hogs.append(os.open("/dev/null", os.O_RDONLY))
                await daemon_log.wait_for("retrying every")
            finally:
                for fd in hogs:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            client = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
            await daemon_log.wait_for("accepting again")
            await client.send_all(b"served after all\n")
            assert await client.receive_some() == b"served after all\n"
            await client.aclose()
    assert daemon.stats.accept_errors >= 1
    assert daemon_log.count("retrying every") == 1


async def test_serves_listeners_it_was_given(sock_dir: Path) -> None:
    from triodaemon import open_listeners

    listeners = await open_listeners([UnixAddress(str(sock_dir / "given.sock"))])
    daemon = Daemon(DaemonConfig([]))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            [address] = await nursery.start(daemon.serve, listeners)
            assert await echo_frames(address, [b"given"]) == [b"given"]
            daemon.drain()
    assert not (sock_dir / "given.sock").exists()


def test_logging_names_the_logger() -> None:
    assert logging.getLogger("triodaemon").name == "triodaemon"


async def test_a_daemon_serves_once_and_needs_an_address(sock_dir: Path) -> None:
    with pytest.raises(ValueError, match="nothing to listen on"):
        await Daemon(DaemonConfig([])).serve()
    daemon = Daemon(DaemonConfig([UnixAddress(str(sock_dir / "once.sock"))]))
    daemon.drain()  # before it starts: it binds, reports, and stops at once
    assert await daemon.serve() == daemon.summary
    with pytest.raises(RuntimeError, match="serves once"):
        await daemon.serve()


def test_idle_timeout_zero_disables() -> None:
    assert DaemonConfig([], idle_timeout=0).idle_seconds == float("inf")
    assert DaemonConfig([], idle_timeout=2.5).idle_seconds == 2.5
    with pytest.raises(ValueError, match="idle_timeout"):
        DaemonConfig([], idle_timeout=-1)


@pytest.mark.parametrize("field", ["sock_group", "control_group"])
def test_a_group_that_is_no_group_is_a_value_error(field: str) -> None:
    def config(group: Any) -> DaemonConfig | ProcessConfig:
        if field == "control_group":
            return ProcessConfig(DaemonConfig([]), control_group=group)
        return DaemonConfig([], sock_group=group)

    for group in (-1, 2**32 - 1, 2**32, "4294967296"):
        with pytest.raises(ValueError, match=f"^{field}: group id .* is out of range"):
            config(group)
    with pytest.raises(ValueError, match=f"^{field}: no such group: 'no-such-group-here'$"):
        config("no-such-group-here")
    with pytest.raises(TypeError):
        config(1.5)
    assert getattr(config(0), field) == 0
    assert getattr(config("root"), field) == "root"


def test_the_buffer_limit_holds_a_frame_at_least() -> None:
    big = Framing(max_frame=100 * 2**20)
    assert DaemonConfig([]).max_buffered == 64 * 2**20
    assert DaemonConfig([], big).max_buffered == big.max_frame  # the default makes room
    assert DaemonConfig([], big, max_buffered=0).max_buffered == 0  # (disabled)
    with pytest.raises(ValueError, match="the frame limit .* is above the limit of what all"):
        DaemonConfig([], big, max_buffered=2**20)


def test_stats_show_their_public_names() -> None:
    stats = Stats()
    stats.frames, stats.bytes_received, stats.internal_errors = 3, 40, 1
    text = repr(stats)
    assert "frames=3" in text
    assert "bytes_received=40" in text
    assert "internal_errors=1" in text
    assert "(_" not in text
    assert " _" not in text
    assert "_live" not in text
    assert stats.errors()["internal"] == 1


@pytest.mark.parametrize(
    ("receive_size", "expected"),
    [(None, {"tcp": 262144, "unix": 131072}), (1000, {"tcp": 1000, "unix": 1000})],
)
async def test_read_size_by_transport_unless_configured(
    sock_dir: Path, receive_size: int | None, expected: dict[str, int]
) -> None:
    config = DaemonConfig(loopback(sock_dir), receive_size=receive_size)
    with trio.fail_after(10):
        async with running(config) as (daemon, addresses):
            streams = [await connect(address) for address in addresses]
            await trio.testing.wait_all_tasks_blocked()
            sizes = {
                c.info.listener.split(":")[0]: c.receive_size for c in daemon.open_connections()
            }
            assert sizes == expected
            for stream in streams:
                await stream.aclose()


class FlakyListeningSocket(socket.socket):
    """A listening socket whose next accepts fail with the given errors, then work."""

    def __init__(self, sock: socket.socket, errors: list[int]) -> None:
        super().__init__(fileno=sock.detach())
        self.errors = errors

    def accept(self) -> tuple[socket.socket, object]:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return super().accept()


async def flaky_listeners(sock_dir: Path, *errors: list[int]) -> list[BoundListener]:
    """One Unix listener per list of errors, each failing its accepts with that list first."""
    listeners = await open_listeners(
        [UnixAddress(str(sock_dir / f"e{i}.sock")) for i in range(len(errors))]
    )
    for listener, failures in zip(listeners, errors, strict=True):
        listener.sock = FlakyListeningSocket(listener.sock, failures)
    return listeners


async def test_accept_errors_of_one_connection_are_skipped(
    sock_dir: Path, daemon_log: LogWaiter
) -> None:
    """Every error accept(2) passes on from the new connection: skip it, accept the next."""
    errors = sorted(PER_CONNECTION_ACCEPT_ERRNOS)
    assert {errno.ENONET, errno.EHOSTDOWN, errno.ENOPROTOOPT, errno.ENETUNREACH} <= set(errors)
    [listener] = await flaky_listeners(sock_dir, errors)
    daemon = Daemon(DaemonConfig([]))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            [address] = await nursery.start(daemon.serve, [listener])
            assert await echo_frames(address, [b"served"]) == [b"served"]
            assert errors == []  # every one of them was raised, and skipped
            daemon.drain()
    assert daemon.stats.accept_errors == 0
    assert daemon_log.count("failed") == 0


async def test_an_accept_error_not_understood_backs_off_and_serving_goes_on(
    sock_dir: Path, daemon_log: LogWaiter
) -> None:
    failing, healthy = await flaky_listeners(sock_dir, [errno.EIO, errno.EIO], [])
    daemon = Daemon(DaemonConfig([]))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            first, second = await nursery.start(daemon.serve, [failing, healthy])
            async with trio.open_nursery() as clients:
                clients.start_soon(echo_frames, first, [b"waits for the retry"])
                line = await daemon_log.wait_for("failed")
                assert line == (
                    f"accept on {first} failed: EIO (Input/output error); retrying every 0.1s"
                )
                assert await echo_frames(second, [b"meanwhile"]) == [b"meanwhile"]
            await daemon_log.wait_for("accepting again")
            assert await echo_frames(first, [b"and after"]) == [b"and after"]
            daemon.drain()
    assert daemon.stats.accept_errors == 2
    assert daemon_log.count("failed") == 1  # one line, not one per retry


async def test_a_broken_listener_ends_alone_and_the_last_one_drains(
    sock_dir: Path, daemon_log: LogWaiter
) -> None:
    first_listener, second_listener = await flaky_listeners(sock_dir, [errno.EBADF], [])
    daemon = Daemon(DaemonConfig([]))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            first, second = await nursery.start(daemon.serve, [first_listener, second_listener])
            with socket.socket(socket.AF_UNIX) as doomed:
                doomed.connect(first.path)
                line = await daemon_log.wait_for("is broken")
            assert line == (
                f"listener {first} is broken (EBADF (Bad file descriptor)); "
                "no longer accepting there"
            )
            assert await echo_frames(second, [b"still served"]) == [b"still served"]
            assert not daemon.draining
            second_listener.sock = FlakyListeningSocket(second_listener.sock, [errno.EINVAL])
            with socket.socket(socket.AF_UNIX) as doomed:
                doomed.connect(second.path)
                await daemon_log.wait_for("no listener is left, draining")
    assert daemon.summary is not None


async def test_a_listener_closed_under_the_daemon_ends_alone(
    sock_dir: Path, daemon_log: LogWaiter
) -> None:
    listeners = await open_listeners(
        [UnixAddress(str(sock_dir / "a.sock")), UnixAddress(str(sock_dir / "b.sock"))]
    )
    daemon = Daemon(DaemonConfig([]))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            first, second = await nursery.start(daemon.serve, listeners)
            listeners[0].close()  # an embedding program closes one behind our back
            line = await daemon_log.wait_for("is broken")
            assert line == f"listener {first} is broken (it was closed); no longer accepting there"
            assert await echo_frames(second, [b"still served"]) == [b"still served"]
            assert not daemon.draining
            daemon.drain()
