"""Hypothesis strategies for framed streams (needs ``hypothesis`` installed).

from triodaemon.testing.strategies import frames, chunkings

@given(data=st.data())
def test_my_decoder(data):
    payloads = data.draw(frames(FRAMING))
    wire = b"".join(FRAMING.encode(p) for p in payloads)
    chunks = data.draw(chunkings(wire))
    assert my_decode(chunks) == payloads
"""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from .._framing import Framing
from ._chunkings import Chunking

#: Payload sizes drawn by default; a maximum-size frame is drawn on purpose besides.
DEFAULT_MAX_SIZE = 64


def _without(delimiter: bytes, payload: bytes) -> bytes:
    """``payload`` made carriable: no delimiter inside, none formed with the delimiter."""
    while delimiter in payload:
        payload = payload.replace(delimiter, b"")
    while (payload + delimiter).find(delimiter) != len(payload):
        payload = payload[:-1]
    return payload


def payloads(framing: Framing, *, max_size: int = DEFAULT_MAX_SIZE) -> st.SearchStrategy[bytes]:
    """One frame's payload that ``framing`` can carry.

    Biased toward what breaks decoders: empty payloads, bytes of the delimiter
    (its prefixes, for a multi-byte delimiter), bytes that look like headers,
    and, now and then, a payload of exactly the largest size allowed.
    """
    largest = framing.largest_payload
    if framing.kind == "fixed":
        assert framing.frame_size is not None
        return st.binary(min_size=framing.frame_size, max_size=framing.frame_size)
    size = min(max_size, largest)
    if framing.kind in ("line", "delimiter"):
        delimiter = framing.delimiter
        alphabet = st.sampled_from(sorted({*delimiter, 0x00, 0x41, 0xFF}))
        small = st.lists(alphabet, max_size=size).map(bytes)
        prefixes = st.sampled_from([delimiter[:n] for n in range(1, len(delimiter))] or [b""])
        joined = st.lists(st.one_of(small, prefixes), max_size=4).map(b"".join)
        biggest = st.just(b"A" * largest)
        return st.one_of(joined, biggest).map(lambda p: _without(delimiter, p[:largest]))
    headerish = st.sampled_from([b"", b"\x00\x00\x00\x05", b"\xff" * 4, b"\x80\x80\x01"])
    return st.one_of(st.binary(max_size=size), headerish, st.just(b"\x00" * largest))


def frames(
    framing: Framing, *, max_frames: int = 12, max_size: int = DEFAULT_MAX_SIZE
) -> st.SearchStrategy[list[bytes]]:
    """A list of payloads for ``framing`` (see :func:`payloads`)."""
    return st.lists(payloads(framing, max_size=max_size), max_size=max_frames)


@st.composite
def chunkings(draw: st.DrawFn, data: bytes, *, max_reads: int = 32) -> Chunking:
    """A way to cut ``data`` into reads: none empty, their concatenation is ``data``."""
    if not data:
        return []
    cuts = draw(
        st.lists(st.integers(min_value=1, max_value=len(data) - 1), max_size=max_reads - 1)
        if len(data) > 1
        else st.just([])
    )
    edges = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@st.composite
def framed_streams(
    draw: st.DrawFn, framing: Framing, *, max_frames: int = 12, max_size: int = DEFAULT_MAX_SIZE
) -> tuple[list[bytes], Chunking]:
    """``(payloads, chunks)``: frames for ``framing`` and one chunking of their encoding."""
    payload_list = draw(frames(framing, max_frames=max_frames, max_size=max_size))
    wire = b"".join(framing.encode(payload) for payload in payload_list)
    return payload_list, draw(chunkings(wire))
