"""A connection behind a load balancer: the PROXY header it must begin with, on every
transport, handler and scans of the conformance suite (tests/test_connection.py).

Every bad header of issue 28's table gets its outcome here: missing, v1 too long, v2
bad signature, v2 length lies (short of its addresses, or longer than what comes),
trickled, truncated; and UNKNOWN and LOCAL, which are served with the connection's
own endpoints. Time is real and short (a header timeout of 0.3 s), as in the suite.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from triodaemon import ConnectionInfo, ProxyProtocol
from triodaemon._lowlevel import scans
from triodaemon._proxyproto import V2_SIGNATURE, encode_v1, encode_v2

from .test_connection import HANDLERS, SCANS, TRANSPORTS, Kit, since

CLIENT = ("203.0.113.7", 51000)
BALANCER_SIDE = ("10.0.0.1", 7000)
POLICY = ProxyProtocol(timeout=0.3)
DEFAULT_SCANS = scans.COMPILED or scans.PYTHON


@pytest.fixture(params=[(t, h, s) for t in TRANSPORTS for h in HANDLERS for s in SCANS])
def kit(request: pytest.FixtureRequest) -> Iterator[Kit]:
    transport, handler, scan = request.param
    chosen = scans.COMPILED if scan == "compiled" else scans.PYTHON
    assert chosen is not None, "the compiled module was not built"
    with scans.use(chosen):
        yield Kit(transport, HANDLERS[handler], chosen)


@pytest.fixture(params=TRANSPORTS)
def echo_kit(request: pytest.FixtureRequest) -> Kit:
    """The built-in echo on each transport: where only the header's handling differs."""
    return Kit(str(request.param), None, DEFAULT_SCANS)


async def closed_by_server(client: trio.abc.ReceiveStream) -> bytes:
    """What the server sent before it closed (a close with our bytes unread may reach
    us as a reset: the same ending)."""
    data = bytearray()
    try:
        while chunk := await client.receive_some():
            data += chunk
    except trio.BrokenResourceError:
        pass
    return bytes(data)


@pytest.mark.parametrize("version", [1, 2])
async def test_the_client_a_header_names_is_the_peer_and_what_follows_is_served(
    kit: Kit, version: int
) -> None:
    header = (encode_v1 if version == 1 else encode_v2)(CLIENT, BALANCER_SIDE)
    with trio.fail_after(5):
        async with kit.connected(proxy_protocol=POLICY) as served:
            assert served.connection.state == "header"
            # The header and the client's first frames in one read, as a balancer
            # sends them when the client spoke at once.
            await served.client.send_all(header + b"one\ntw")
            received = b""
            while received != b"one\n":
                received += await served.client.receive_some()
            await served.client.send_all(b"o\nthree\n")
            while received != b"one\ntwo\nthree\n":
                received += await served.client.receive_some()
            info = served.connection.info
            assert (info.peer, info.proxy) == ("203.0.113.7:51000", "peer")
            assert str(info) == "conn 1 from 203.0.113.7:51000 via peer on test://"
            assert served.connection.state == "reading"
            await served.client.send_eof()
            assert await closed_by_server(served.client) == b""
    assert served.connection.completed
    assert (served.stats.proxy_header_errors, served.stats.proxy_local) == (0, 0)
    assert served.connection.bytes_in == len(b"one\ntwo\nthree\n")  # (not the header's)


async def test_a_header_that_comes_a_byte_at_a_time_is_read_whole(kit: Kit) -> None:
    header = encode_v2(("2001:db8::7", 443), tlvs=b"\x05\x00\x02id", checksum=True)
    with trio.fail_after(5):
        async with kit.connected(proxy_protocol=POLICY) as served:
            for byte in header:
                await served.client.send_all(bytes([byte]))
                await trio.sleep(0.001)
            await served.client.send_all(b"after\n")
            assert await served.client.receive_some() == b"after\n"
            assert served.connection.info.peer == "[2001:db8::7]:443"
            await served.client.send_eof()
            assert await closed_by_server(served.client) == b""


@pytest.mark.parametrize(
    "header",
    [encode_v1(None), encode_v2(None, local=True), encode_v2(None)],
    ids=["v1 UNKNOWN", "v2 LOCAL", "v2 UNSPEC"],
)
async def test_a_header_that_names_no_client_leaves_the_connections_own_endpoints(
    echo_kit: Kit, header: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # The specification: UNKNOWN and LOCAL (a balancer's health check) are accepted,
    # and the connection's own addresses used.
    caplog.set_level(logging.DEBUG, "triodaemon")
    with trio.fail_after(5):
        async with echo_kit.connected(proxy_protocol=POLICY) as served:
            await served.client.send_all(header + b"ping\n")
            assert await served.client.receive_some() == b"ping\n"
            await served.client.send_eof()
            assert await closed_by_server(served.client) == b""
    assert served.connection.info == ConnectionInfo(1, "test://", "peer")
    assert (served.stats.proxy_local, served.stats.proxy_header_errors) == (1, 0)
    assert "its own endpoints stand" in caplog.text


def v2(command: int, family: int, length: int, block: bytes = b"") -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", command, family, length) + block


#: The note's table: what the peer sends (then, with ``eof``, its EOF; else it waits),
#: and the words of the one line the daemon logs.
BAD = {
    "missing": (b"hello\n", False, "no PROXY header: the connection began with b'hello\\n'"),
    "v1 too long": (b"PROXY UNKNOWN " + b"x" * 200, False, "without its end in its first 107"),
    "v2 bad signature": (b"\r\n\r\n\x00\r\nQUIX\nxxxx", False, "signature broken off"),
    "v2 length lie (short of its addresses)": (
        v2(0x21, 0x11, 4, bytes(4)) + b"hello\n",
        False,
        "less than the 12 an IPv4 address block needs",
    ),
    "v2 length lie (longer than what comes)": (
        v2(0x21, 0x11, 100, bytes(12)) + b"hello\n",
        False,
        "PROXY header not complete after 0.3s (34 bytes of it came)",
    ),
    "v2 too long": (
        v2(0x21, 0x11, 0xFFF0),
        False,
        "of 65536 bytes in all (its length field says 65520), more than the 4096 accepted",
    ),
    "truncated": (encode_v1(CLIENT)[:20], True, "closed after 20 bytes of a PROXY header"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_a_bad_header_closes_only_its_connection_with_one_line_and_a_count(
    echo_kit: Kit, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    sent, eof, words = BAD[case]
    with trio.fail_after(5):
        async with echo_kit.connected(proxy_protocol=POLICY) as served:
            start = trio.current_time()
            await served.client.send_all(sent)
            if eof:
                await served.client.send_eof()
            assert await closed_by_server(served.client) == b""  # nothing echoed
            took = since(start)
            await served.over.wait()
    assert served.stats.proxy_header_errors == 1
    assert served.stats.frames == served.stats.bytes_received == 0
    lines = [record.getMessage() for record in caplog.records if "PROXY" in record.getMessage()]
    assert len(lines) == 1, lines
    assert words in lines[0]
    assert lines[0].startswith("conn 1 from peer on test://: ")
    assert lines[0].endswith("; closing")
    assert took < 0.3 or "not complete" in words  # refused on sight, but for a wait


async def test_a_trickled_header_meets_its_deadline_though_bytes_keep_coming(
    echo_kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    # One byte every 0.05 s is progress, which never extends the header's deadline.
    header = encode_v1(CLIENT)
    with trio.fail_after(5):
        async with echo_kit.connected(proxy_protocol=POLICY) as served:
            start = trio.current_time()

            async def trickle() -> None:
                for byte in header:
                    await served.client.send_all(bytes([byte]))
                    await trio.sleep(0.05)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                assert await closed_by_server(served.client) == b""
                nursery.cancel_scope.cancel()
            assert 0.3 <= since(start) < 0.6
    assert served.stats.proxy_header_errors == 1
    assert "PROXY header not complete after 0.3s" in caplog.text


async def test_a_peer_that_connects_and_closes_is_no_error(echo_kit: Kit) -> None:
    # A balancer's plain TCP health check: connect, close, nothing sent.
    with trio.fail_after(5):
        async with echo_kit.connected(proxy_protocol=POLICY) as served:
            await served.client.send_eof()
            assert await closed_by_server(served.client) == b""
    assert served.stats.proxy_header_errors == 0


async def test_a_drain_closes_a_connection_still_waiting_for_its_header(echo_kit: Kit) -> None:
    with trio.fail_after(5):
        async with echo_kit.connected(proxy_protocol=POLICY) as served:
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            served.connection.drain()
            assert await closed_by_server(served.client) == b""
            assert since(start) < 0.2
    assert served.stats.proxy_header_errors == 0


async def test_a_drain_closes_a_connection_whose_header_is_not_whole_yet(echo_kit: Kit) -> None:
    # Nothing of the client's stream has come: there is nothing to finish.
    with trio.fail_after(5):
        async with echo_kit.connected(proxy_protocol=ProxyProtocol(timeout=30)) as served:
            await served.client.send_all(b"PROXY TCP4 1.2.")
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            served.connection.drain()
            assert await closed_by_server(served.client) == b""
            assert since(start) < 0.2
    assert served.stats.proxy_header_errors == 0


async def test_a_handler_sees_the_client_and_a_handover_carries_the_balancer() -> None:
    seen: list[ConnectionInfo] = []

    async def handler(frame: bytes, info: ConnectionInfo) -> bytes:
        seen.append(info)
        return frame

    kit = Kit("stream", handler, DEFAULT_SCANS)
    with trio.fail_after(5):
        async with kit.connected(proxy_protocol=POLICY) as served:
            await served.client.send_all(encode_v1(CLIENT) + b"a\nb")
            assert await served.client.receive_some() == b"a\n"
            state = served.connection.handover_state()
            await served.client.send_eof()
            await closed_by_server(served.client)
    assert [info.peer for info in seen] == ["203.0.113.7:51000"]
    assert (state.peer, state.proxy, state.pending) == ("203.0.113.7:51000", "peer", b"b")
