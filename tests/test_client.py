"""The client: exchanges over memory streams, and the CLI client's failures."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from triodaemon import ClientError, Framing
from triodaemon.testing import exchange


async def collect_into(replies: list[bytes], frame: bytes) -> None:
    replies.append(frame)


async def echo_peer(stream: trio.abc.Stream, *, stop_after: int | None = None) -> None:
    """Echo bytes back; with ``stop_after``, close after that many bytes."""
    seen = 0
    while data := await stream.receive_some():
        if stop_after is not None and seen + len(data) > stop_after:
            await stream.send_all(data[: stop_after - seen])
            break
        seen += len(data)
        await stream.send_all(data)
    await stream.aclose()


async def test_exchange_returns_when_every_reply_arrived() -> None:
    client, server = trio.testing.memory_stream_pair()
    replies: list[bytes] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_peer, server)
            count = await exchange(client, [b"a", b"", b"c"], lambda f: collect_into(replies, f))
            await client.aclose()
    assert count == 3
    assert replies == [b"a", b"", b"c"]


async def test_raw_exchange_counts_bytes() -> None:
    client, server = trio.testing.memory_stream_pair()
    replies: list[bytes] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_peer, server)
            count = await exchange(
                client, [b"ab", b"cde"], lambda f: collect_into(replies, f), framing=Framing("raw")
            )
            await client.aclose()
    assert count == 5
    assert b"".join(replies) == b"abcde"


async def test_server_closing_early_is_a_client_error() -> None:
    client, server = trio.testing.memory_stream_pair()
    replies: list[bytes] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: echo_peer(server, stop_after=2))
            with pytest.raises(ClientError, match="server closed the connection after 1 of 2"):
                await exchange(client, [b"a", b"b"], lambda f: collect_into(replies, f))


async def test_missing_reply_times_out(autojump_clock: trio.testing.MockClock) -> None:
    client, _server = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(ClientError, match=r"no reply for 10s \(0 of 1 received\)"):
        await exchange(client, [b"hello?"], lambda f: collect_into([], f))
    assert trio.current_time() - start == pytest.approx(10)


async def test_slow_messages_do_not_time_out(autojump_clock: trio.testing.MockClock) -> None:
    async def heartbeat() -> AsyncIterator[bytes]:
        for _ in range(3):
            await trio.sleep(60)  # longer than the reply timeout, but nothing is owed
            yield b"beat"

    client, server = trio.testing.memory_stream_pair()
    replies: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_peer, server)
        await exchange(client, heartbeat(), lambda f: collect_into(replies, f))
        await client.aclose()
    assert replies == [b"beat"] * 3


async def test_unframeable_message_is_a_client_error() -> None:
    client, _server = trio.testing.memory_stream_pair()
    with (
        trio.fail_after(5),
        pytest.raises(ClientError, match="cannot send message 2: .* delimiter"),
    ):
        await exchange(client, [b"ok", b"not\nok"], lambda f: collect_into([], f))


async def test_garbage_reply_is_a_client_error() -> None:
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(b"\xff\xff\xff\xff")
    with trio.fail_after(5), pytest.raises(ClientError, match="bad reply from the server"):
        await exchange(
            client, [b"x"], lambda f: collect_into([], f), framing=Framing("length", max_frame=10)
        )


def test_cli_client_reports_a_server_that_hangs_up() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = subprocess.Popen(
            [sys.executable, "-m", "triodaemon", "client", "--tcp", f"127.0.0.1:{port}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        conn, _ = server.accept()
        with conn:
            assert client.stdin is not None
            client.stdin.write(b"one\ntwo\n")
            client.stdin.close()
            client.stdin = None  # so communicate() does not touch it
            data = b""
            while data.count(b"\n") < 2:
                data += conn.recv(100)
            conn.sendall(b"one\n")
        out, err = client.communicate(timeout=30)
    assert client.returncode == 1
    assert out == b"one\n"
    assert err.decode().splitlines() == [
        "triodaemon: error: server closed the connection after 1 of 2 replies"
    ]


async def test_a_connect_that_gets_no_answer_gives_up() -> None:
    # A backlog that is full: the kernel drops further SYNs, and a connect would
    # wait over two minutes for its own give-up.
    from triodaemon import TcpAddress

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        address = TcpAddress("127.0.0.1", server.getsockname()[1])
        queued: list[trio.SocketStream] = []
        try:
            with trio.fail_after(10):
                error = await _connect_until_refused(address, queued)
            assert queued  # (how many fit the backlog is the kernel's business)
            assert str(error) == (
                f"cannot connect to {address}: no answer within 0.5s "
                "(its listen backlog is full, or something drops the connection)"
            )
        finally:
            for stream in queued:
                await stream.aclose()


async def _connect_until_refused(address: object, queued: list[trio.SocketStream]) -> ClientError:
    from triodaemon import TcpAddress, connect

    assert isinstance(address, TcpAddress)
    while True:
        try:
            queued.append(await connect(address, timeout=0.5))
        except ClientError as exc:
            return exc
