"""The compiled scans (triodaemon/_speedups.c) give the pure-Python scans' answers.

Where the module is not built these tests cannot run and say so; `.ci/run`
makes sure it is built, and runs the whole suite again without it
(``TRIODAEMON_NO_SPEEDUPS=1``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triodaemon import Framing, FramingError, _framing

speedups = pytest.importorskip("triodaemon._speedups")


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
    for m in (3, 300)
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
    assert isinstance(compiled, _framing.LengthPrefixDecoder)
    saved = _framing._walk_lengths
    _framing._walk_lengths = None
    try:
        want = compiled._scan(wire, start, end, most)
    finally:
        _framing._walk_lengths = saved
    got = compiled._scan(wire, start, end, most)
    assert got[:2] == want[:2]
    assert repr(got[2]) == repr(want[2])  # the same error, word for word, or none


def test_walk_lengths_reports_an_eight_byte_header_whole() -> None:
    wire = b"\xff" * 8
    assert speedups.walk_lengths(wire, 0, 8, 8, 1, 0, 64, 9) == (0, 0, 2**64 - 1)
    decoder = Framing("length", length_bytes=8, max_frame=64).decoder()
    decoder.feed(wire)
    with pytest.raises(FramingError, match=f"announces a {2**64 - 1}-byte frame"):
        decoder.next_frame()


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

    compiled = run()
    saved = _framing._count_byte, _framing._walk_lengths
    _framing._count_byte = _framing._walk_lengths = None
    try:
        assert run() == compiled
    finally:
        _framing._count_byte, _framing._walk_lengths = saved
    assert sum(count for _, count in compiled) == len(frames)


def test_the_environment_turns_them_off() -> None:
    code = "import triodaemon._framing as f; print(f.SPEEDUPS, f._count_byte, f._walk_lengths)"
    env = {k: v for k, v in os.environ.items() if k != "TRIODAEMON_NO_SPEEDUPS"}
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    off = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "TRIODAEMON_NO_SPEEDUPS": "1"},
        capture_output=True,
        text=True,
    )
    assert on.stdout.startswith("True <built-in function count_byte>"), on.stderr
    assert off.stdout == "False None None\n", off.stderr
