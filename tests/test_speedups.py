"""The compiled code (triodaemon/_lowlevel/_speedups.c) gives the pure-Python answers.

Where the module is not built these tests cannot run and say so; `.ci/run`
makes sure it is built, and runs the whole suite again without it
(``TRIODAEMON_NO_SPEEDUPS=1``).
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio
import trio.lowlevel
from hypothesis import given
from hypothesis import strategies as st

from triodaemon import Connection, ConnectionInfo, Framing, FramingError, Stats, _decoders
from triodaemon._lowlevel import scans, sockets
from triodaemon._lowlevel.readiness import open_readiness

from .conftest import read_until_eof

speedups = pytest.importorskip("triodaemon._lowlevel._speedups")
assert scans.COMPILED is not None  # (the module imported above)
COMPILED: scans.Scans = scans.COMPILED


def _spans(data: bytes, draw: st.DataObject) -> tuple[int, int]:
    start = draw.draw(st.integers(0, len(data)))
    return start, draw.draw(st.integers(start, len(data)))


@given(st.data(), st.binary(max_size=5000), st.integers(0, 255))
def test_count_byte_is_bytes_count(data: st.DataObject, payload: bytes, byte: int) -> None:
    start, end = _spans(payload, data)
    # Mostly the byte itself, so long runs of it (past a lane's 255) are tried too.
    payload = payload.replace(payload[:1] or b"\0", bytes([byte]))
    want = payload.count(bytes([byte]), start, end)
    for kind in (bytes, bytearray):
        assert speedups.count_byte(kind(payload), byte, start, end) == want
    with memoryview(payload) as view:
        assert speedups.count_byte(view, byte, start, end) == want


def test_count_byte_past_a_lane() -> None:
    # 16 lanes of one byte each count 255 at most: 64 KiB of one byte passes many blocks.
    data = b"\n" * 65536 + b"x" * 7 + b"\n" * 9
    assert speedups.count_byte(data, 10, 0, len(data)) == 65545
    assert speedups.count_byte(data, 10, 3, len(data) - 1) == 65541


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((b"abc", 10, 2, 1), ValueError),  # start past end
        ((b"abc", 10, 0, 4), ValueError),  # past the buffer
        ((b"abc", 10, -1, 2), ValueError),
        ((b"abc", 256, 0, 3), ValueError),
        (("abc", 10, 0, 3), TypeError),  # not a buffer
        ((b"abc", 10, 0), TypeError),
    ],
)
def test_count_byte_refuses_bad_arguments(args: tuple[object, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        speedups.count_byte(*args)


def test_walk_lengths_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n must be"):
        speedups.walk_lengths(b"\0\0\0\0", 0, 4, 3, 1, 0, 64, 9)
    with pytest.raises(ValueError, match="not within"):
        speedups.walk_lengths(b"\0\0\0\0", 0, 5, 4, 1, 0, 64, 9)
    with pytest.raises(ValueError, match="negative"):
        speedups.walk_lengths(b"\0\0\0\0", 0, 4, 4, 1, 0, -1, 9)


LENGTH_FRAMINGS = [
    Framing("length", length_bytes=n, byte_order=order, length_includes_header=incl, max_frame=m)
    for n in (1, 2, 4, 8)
    for order in ("big", "little")
    for incl in (False, True)
    for m in (3, 300, 2**63, 2**70)  # (past ssize_t: no buffer holds such a frame)
]


def _wire(framing: Framing, lengths: list[int], junk: bytes) -> bytes:
    frames = b"".join(framing.encode(bytes([65 + i % 26]) * n) for i, n in enumerate(lengths))
    return frames + junk


@given(
    st.sampled_from(LENGTH_FRAMINGS),
    st.lists(st.integers(0, 300), max_size=12),
    st.binary(max_size=20),
    st.integers(1, 20),
    st.data(),
)
def test_walk_lengths_agrees_with_the_python_walk(
    framing: Framing, lengths: list[int], junk: bytes, most: int, data: st.DataObject
) -> None:
    n = framing.length_bytes
    most_encodable = 256**n - 1 - (n if framing.length_includes_header else 0)
    lengths = [k for k in lengths if k <= min(framing.max_frame, most_encodable)]
    wire = _wire(framing, lengths, junk)
    start, end = _spans(wire, data)
    compiled = framing.decoder()
    assert isinstance(compiled, _decoders.LengthPrefixDecoder)
    with scans.use(scans.PYTHON):
        want = compiled._scan(wire, start, end, most)
    with scans.use(COMPILED):
        got = compiled._scan(wire, start, end, most)
    assert got[:2] == want[:2]
    assert repr(got[2]) == repr(want[2])  # the same error, word for word, or none


def test_a_limit_between_ssize_t_and_2_64_is_kept_exactly() -> None:
    # 2**63 <= max_frame < 2**64: a header above it is too large, not unfinished (the
    # compiled walk once took every limit past ssize_t for "no limit").
    wire = b"\0" * 7 + b"\x81"  # an 8-byte little-endian header: 0x81 << 56
    for chosen in (COMPILED, scans.PYTHON):
        assert chosen.walk_lengths(wire, 0, 8, 8, 0, 8, 2**63, 1) == (0, 0, 0x81 << 56)
        assert chosen.walk_lengths(wire, 0, 8, 8, 0, 8, 2**64, 1) == (0, 0, -1)
    decoder = Framing(
        "length", length_bytes=8, byte_order="little", length_includes_header=True, max_frame=2**63
    ).decoder()
    decoder.feed(wire)
    with scans.use(COMPILED), pytest.raises(FramingError, match="frames are limited to"):
        decoder.next_frame()


def test_walk_lengths_reports_an_eight_byte_header_whole() -> None:
    wire = b"\xff" * 8
    assert speedups.walk_lengths(wire, 0, 8, 8, 1, 0, 64, 9) == (0, 0, 2**64 - 1)
    decoder = Framing("length", length_bytes=8, max_frame=64).decoder()
    decoder.feed(wire)
    with pytest.raises(FramingError, match=f"announces a {2**64 - 1}-byte frame"):
        decoder.next_frame()


@given(
    st.sampled_from(
        [
            *LENGTH_FRAMINGS,
            *(
                Framing("delimiter", delimiter=d, max_frame=m)
                for d in (b"\n", b"\0", b"\xff")
                for m in (1, 7, 300, 2**70)
            ),
        ]
    ),
    st.lists(st.integers(0, 300), max_size=12),
    st.binary(max_size=20),
    st.data(),
)
def test_whole_frames_is_one_rule_either_way(
    framing: Framing, lengths: list[int], junk: bytes, data: st.DataObject
) -> None:
    # The echo's rule, compiled and in Python, agree; and "whole" means what the
    # decoder finds: every byte of the span in whole frames, and how many.
    shape = sockets._echo_shape(framing)
    assert shape is not None
    if framing.kind == "delimiter":
        frames = [bytes([65 + i % 26]) * min(n, framing.max_frame) for i, n in enumerate(lengths)]
        wire = b"".join(framing.encode(f) for f in frames) + junk
    else:
        n = framing.length_bytes
        most_encodable = 256**n - 1 - (n if framing.length_includes_header else 0)
        wire = _wire(
            framing, [k for k in lengths if k <= min(framing.max_frame, most_encodable)], junk
        )
    start, end = _spans(wire, data)
    compiled = COMPILED.whole_frames(wire, start, end, shape)
    assert scans.PYTHON.whole_frames(wire, start, end, shape) == compiled
    decoder = framing.decoder()
    decoder.feed(wire[start:end])
    taken, count = decoder.take_frames()
    if compiled >= 0:
        assert (len(taken), count) == (end - start, compiled)
    elif framing.kind == "delimiter" and end - start <= framing.max_frame:
        assert len(taken) < end - start  # (a longer span may hold whole frames: not the rule's)


@pytest.mark.parametrize(
    "framing", [Framing(), Framing("length"), Framing("length", length_bytes=2)]
)
@given(frames=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30))
def test_feed_and_take_the_same_either_way(framing: Framing, frames: list[bytes]) -> None:
    wire = b"".join(framing.encode(f) for f in frames)
    cuts = sorted({len(wire) // 3, len(wire) // 2})
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]

    def run() -> list[tuple[bytes, int]]:
        decoder = framing.decoder()
        out = []
        for piece in pieces:
            replies, count = decoder.feed_and_take(piece)
            out.append((bytes(replies), count))
        return out

    with scans.use(COMPILED):
        compiled = run()
    with scans.use(scans.PYTHON):
        assert run() == compiled
    assert sum(count for _, count in compiled) == len(frames)


@pytest.mark.parametrize(
    ("value", "chosen"),
    [
        (None, "compiled"),
        ("1", "python"),
        ("true", "python"),
        (" YES ", "python"),
        ("0", "compiled"),
        ("no", "compiled"),
        ("", "compiled"),
        ("off", "compiled"),
    ],
)
def test_the_environment_switch_turns_them_off(value: str | None, chosen: str) -> None:
    code = "from triodaemon._lowlevel import scans; print(scans.ACTIVE.name)"
    env = {k: v for k, v in os.environ.items() if k != "TRIODAEMON_NO_SPEEDUPS"}
    if value is not None:
        env["TRIODAEMON_NO_SPEEDUPS"] = value
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.stdout == chosen + "\n", run.stderr


# -- recv_echo: the echo's read and send in one call ------------------------------

# (_echo_shape: the shapes whether or not the daemon may use them.)
LINE = sockets._echo_shape(Framing())
LENGTH = sockets._echo_shape(Framing("length", length_bytes=2, max_frame=8))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    with ours, peer:
        yield ours, peer


def test_recv_echo_echoes_whole_lines(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    buf = bytearray(64)
    assert LINE is not None
    assert speedups.recv_echo(ours.fileno(), buf, 64, LINE) is None  # nothing yet
    peer.sendall(b"ab\n\ncd\n")
    assert speedups.recv_echo(ours.fileno(), buf, 64, LINE) == (7, 3, 7)
    assert peer.recv(64) == b"ab\n\ncd\n"


def test_recv_echo_leaves_a_read_that_is_not_whole_frames(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    buf = bytearray(64)
    assert LINE is not None
    assert LENGTH is not None
    peer.sendall(b"ab\ncd")
    assert speedups.recv_echo(ours.fileno(), buf, 64, LINE) == (5, -1, 0)
    assert bytes(buf[:5]) == b"ab\ncd"  # the caller frames it
    peer.sendall(b"\0\2xy\0\3ab")  # a frame and a half
    assert speedups.recv_echo(ours.fileno(), buf, 64, LENGTH) == (8, -1, 0)
    peer.sendall(b"\0\x09123456789")  # over max_frame: the Python path says so
    assert speedups.recv_echo(ours.fileno(), buf, 64, LENGTH) == (11, -1, 0)
    peer.sendall(b"x" * 9 + b"\n")  # more than max_frame bytes: not the shortcut's
    assert speedups.recv_echo(ours.fileno(), buf, 10, (10, 0, 0, 0, 8)) == (10, -1, 0)
    ours.setblocking(True)
    ours.settimeout(0.01)
    with pytest.raises(TimeoutError):
        peer.recv(1)  # nothing was sent back


def test_recv_echo_whole_length_frames(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    buf = bytearray(64)
    assert LENGTH is not None
    peer.sendall(b"\0\2xy\0\0\0\1z")
    assert speedups.recv_echo(ours.fileno(), buf, 64, LENGTH) == (9, 3, 9)
    assert peer.recv(64) == b"\0\2xy\0\0\0\1z"


def test_recv_echo_end_of_file_and_errors(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    buf = bytearray(64)
    assert LINE is not None
    peer.sendall(b"x\n")
    peer.close()  # the line is still there to read; the echo fails: EPIPE, as a number
    assert speedups.recv_echo(ours.fileno(), buf, 64, LINE) == (2, 1, -errno.EPIPE)
    assert speedups.recv_echo(ours.fileno(), buf, 64, LINE) == (0, -1, 0)
    with pytest.raises(OSError, match="Bad file descriptor"):
        speedups.recv_echo(-1, buf, 64, LINE)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, bytearray(4), 8, (10, 0, 0, 0, 8)), ValueError),  # size past the buffer
        ((0, bytearray(4), 0, (10, 0, 0, 0, 8)), ValueError),
        ((0, b"read-only", 4, (10, 0, 0, 0, 8)), BufferError),
        ((0, bytearray(4), 4, (10, 0, 0, 0)), TypeError),
        ((0, bytearray(4), 4, (-1, 3, 0, 0, 8)), ValueError),  # no 3-byte headers
        ((0, bytearray(4), 4, (10, 0, 0, -1, 8)), ValueError),  # a negative skip
        ((0, bytearray(4), 4, (10, 0, 0, 0, -8)), ValueError),  # a negative limit
        ((0, bytearray(4), 4, (256, 0, 0, 0, 8)), ValueError),
    ],
)
def test_recv_echo_refuses_bad_arguments(args: tuple[object, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        speedups.recv_echo(*args)


def test_echo_shapes(pair: tuple[socket.socket, socket.socket]) -> None:
    transport = open_readiness("portable").transport(pair[0])
    with scans.use(COMPILED):
        assert transport.echo_shape(Framing()) == (10, 0, 0, 0, 1 << 20)
        assert transport.echo_shape(Framing("delimiter", delimiter=b"\0", max_frame=5)) == (
            0,
            0,
            0,
            0,
            5,
        )
        assert transport.echo_shape(Framing("delimiter", delimiter=b"\r\n")) is None
        assert transport.echo_shape(
            Framing("length", length_bytes=8, byte_order="little", length_includes_header=True)
        ) == (-1, 8, 0, 8, 1 << 20)
        for kind in ("varint", "raw"):
            assert transport.echo_shape(Framing(kind)) is None
    with scans.use(scans.PYTHON):  # TRIODAEMON_NO_SPEEDUPS
        assert transport.echo_shape(Framing()) is None


@pytest.mark.parametrize("backend", ["epoll", "portable"])
async def test_the_compiled_echo_with_a_full_send_buffer_loses_nothing(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every read is whole lines (written a read's worth at a time), so the compiled
    # read echoes them itself; the client reads nothing until it has sent all, so
    # its sends come back partial and the rest goes through the connection's task.
    results: list[tuple[int, int, int]] = []

    def recording(fd: int, buf: bytearray, size: int, shape: scans.Shape) -> object:
        got = speedups.recv_echo(fd, buf, size, shape)
        if got is not None:
            results.append(got)
        return got

    monkeypatch.setattr(sockets, "_recv_echo", recording)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    read = 4096
    chunk = b"".join(b"%07d\n" % i for i in range(read // 8))  # 512 lines, one read
    chunks = [chunk] * 16  # (64 KiB: what the client may send while nobody reads)
    stats = Stats()
    readiness = open_readiness(backend)  # type: ignore[arg-type]
    with trio.fail_after(10), scans.use(COMPILED):
        async with trio.open_nursery() as nursery:
            await nursery.start(readiness.run)
            conn = Connection(
                readiness.transport(ours),
                ConnectionInfo(1, "test://", "peer"),
                receive_size=read,
                stats=stats,
            )
            async with trio.open_nursery() as serving:
                serving.start_soon(conn.run)
                client = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
                for piece in chunks:
                    await client.send_all(piece)
                    await trio.lowlevel.checkpoint()  # one read per write, mostly
                await client.send_eof()
                assert await read_until_eof(client) == chunk * len(chunks)
                await client.aclose()
            nursery.cancel_scope.cancel()
    assert stats.frames == 512 * 16
    assert stats.bytes_received == stats.bytes_sent == len(chunk) * 16
    assert any(count > 0 and 0 <= sent < size for size, count, sent in results), results


def test_limits_past_ssize_t(pair: tuple[socket.socket, socket.socket]) -> None:
    # --max-frame 2**63 or more: such a frame is unfinished in any buffer, not too large.
    ours, peer = pair
    buf = bytearray(64)
    for limit in (2**63 - 1, 2**63, 2**64, 10**30):
        line = sockets._echo_shape(Framing(max_frame=limit))
        length = sockets._echo_shape(Framing("length", length_bytes=8, max_frame=limit))
        assert line is not None
        assert length is not None
        peer.sendall(b"ab\n")
        assert speedups.recv_echo(ours.fileno(), buf, 64, line) == (3, 1, 3)
        peer.sendall(b"\0" * 7 + b"\1x")
        assert speedups.recv_echo(ours.fileno(), buf, 64, length) == (9, 1, 9)
        peer.sendall(b"\xff" * 8)  # 2**64 - 1 bytes announced: unfinished, not echoed
        assert speedups.recv_echo(ours.fileno(), buf, 64, length) == (8, -1, 0)
        assert peer.recv(64) == b"ab\n" + b"\0" * 7 + b"\1x"
    with pytest.raises(ValueError, match="negative"):
        speedups.walk_lengths(b"", 0, 0, 4, 1, 0, -(2**70), 9)
