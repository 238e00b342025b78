"""Fuzz every decoder: a long hypothesis run, kept out of the default test suite.

    FUZZ_EXAMPLES=20000 .venv/bin/pytest fuzz -q -p no:cacheprovider

Properties per framing, each for FUZZ_EXAMPLES examples (default 3000; a few
minutes in all on a 2-core machine):

- round trip: any frames, encoded and cut into any reads, decode to exactly those frames;
- differential: on arbitrary bytes cut into arbitrary reads, our incremental decoder
  agrees with a naive whole-buffer reference decoder written here, frame for frame,
  and on whether the stream ends mid-frame or breaks the limit;
- bounded: on arbitrary bytes, only framing errors are raised, no frame exceeds the
  limit, and no more than the limit plus one read is ever held.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triodaemon import Framing, FramingError, IncompleteFrame
from triodaemon.testing.strategies import chunkings, framed_streams

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FRAMINGS = {
    "line": Framing(max_frame=64),
    "crlf": Framing("delimiter", delimiter=b"\r\n", max_frame=64),
    "abab": Framing("delimiter", delimiter=b"abab", max_frame=64),
    "length4": Framing("length", max_frame=64),
    "length1-incl": Framing("length", length_bytes=1, length_includes_header=True, max_frame=64),
    "length2-little": Framing("length", length_bytes=2, byte_order="little", max_frame=64),
    "varint": Framing("varint", max_frame=300),
    "fixed": Framing("fixed", frame_size=5, max_frame=64),
}


class Outcome:
    """What a decoder made of a stream: the frames, then how it ended."""

    def __init__(self, frames: list[bytes], ending: str) -> None:
        self.frames = frames
        self.ending = ending  # "clean", "incomplete", or "error"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Outcome) and (self.frames, self.ending) == (
            other.frames,
            other.ending,
        )

    def __repr__(self) -> str:
        return f"Outcome({self.frames!r}, {self.ending!r})"


def reference(framing: Framing, data: bytes) -> Outcome:
    """Decode the whole stream at once, the obvious way."""
    frames: list[bytes] = []
    position = 0
    limit = framing.max_frame
    while position < len(data):
        rest = data[position:]
        if framing.kind in ("line", "delimiter"):
            index = rest.find(framing.delimiter)
            if index < 0 or index > limit:
                # Without a delimiter: too long once more than the limit is held,
                # besides the start of a delimiter the stream may end with.
                begun = max(
                    (
                        k
                        for k in range(len(framing.delimiter))
                        if rest.endswith(framing.delimiter[:k])
                    ),
                    default=0,
                )
                too_long = index > limit or len(rest) - begun > limit
                return Outcome(frames, "error" if too_long else "incomplete")
            frames.append(rest[:index])
            position += index + len(framing.delimiter)
        elif framing.kind == "length":
            n = framing.length_bytes
            if len(rest) < n:
                return Outcome(frames, "incomplete")
            length = int.from_bytes(rest[:n], framing.byte_order)
            if framing.length_includes_header:
                if length < n:
                    return Outcome(frames, "error")
                length -= n
            if length > limit:
                return Outcome(frames, "error")
            if len(rest) < n + length:
                return Outcome(frames, "incomplete")
            frames.append(rest[n : n + length])
            position += n + length
        elif framing.kind == "varint":
            value = shift = 0
            size = 0
            for byte in rest[:10]:
                size += 1
                value |= (byte & 0x7F) << shift
                if value > limit:
                    return Outcome(frames, "error")
                if not byte & 0x80:
                    break
                shift += 7
            else:
                return Outcome(frames, "error" if len(rest) >= 10 else "incomplete")
            if len(rest) < size + value:
                return Outcome(frames, "incomplete")
            frames.append(rest[size : size + value])
            position += size + value
        else:
            assert framing.frame_size is not None
            if len(rest) < framing.frame_size:
                return Outcome(frames, "incomplete")
            frames.append(rest[: framing.frame_size])
            position += framing.frame_size
    return Outcome(frames, "clean")


def incremental(framing: Framing, chunks: list[bytes]) -> Outcome:
    decoder = framing.decoder()
    frames: list[bytes] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not None:
                assert len(frame) <= framing.max_frame
                frames.append(frame)
            # Never more than the limit, a header or delimiter, and one read.
            assert decoder.buffered <= framing.max_frame + 10 + len(chunk)
        decoder.feed_eof()
    except IncompleteFrame:
        return Outcome(frames, "incomplete")
    except FramingError:
        return Outcome(frames, "error")
    return Outcome(frames, "clean")


@pytest.mark.parametrize("name", FRAMINGS)
@FUZZ
@given(data=st.data())
def test_round_trip(name: str, data: st.DataObject) -> None:
    framing = FRAMINGS[name]
    payloads, chunks = data.draw(framed_streams(framing, max_frames=20, max_size=80))
    assert incremental(framing, chunks) == Outcome(payloads, "clean")


def noise(framing: Framing) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, rich in the framing's own delimiter and header bytes."""
    special = [bytes([b]) for b in sorted({*framing.delimiter, 0x00, 0x01, 0x05, 0x7F, 0x80, 0xFF})]
    pieces = st.one_of(st.binary(max_size=24), st.sampled_from(special), st.just(framing.delimiter))
    return st.lists(pieces, max_size=40).map(b"".join)


@pytest.mark.parametrize("name", FRAMINGS)
@FUZZ
@given(data=st.data())
def test_differential_against_the_reference(name: str, data: st.DataObject) -> None:
    framing = FRAMINGS[name]
    stream = data.draw(noise(framing))
    chunks = data.draw(chunkings(stream))
    assert incremental(framing, chunks) == reference(framing, stream)
