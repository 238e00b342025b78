"""Chunkings: the ways a byte stream can be cut into reads.

Strategy: every function returns a plain iterable of chunk lists (``list[bytes]``,
no empty chunks), so any decoder, ours or not, can be fed with them. The ones
that need to know where frames and headers are take a :class:`~triodaemon.Framing`
and the frames; :func:`splits_at` works from offsets you choose yourself.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence

from .._decoders import encode_varint
from .._framing import Framing

Chunking = list[bytes]
"""One way to deliver a stream: the successive reads, none of them empty."""


def _nonempty(chunks: Iterable[bytes]) -> Chunking:
    return [chunk for chunk in chunks if chunk]


def whole(data: bytes) -> Iterator[Chunking]:
    """The stream in one read."""
    yield _nonempty([data])


def two_way_splits(data: bytes) -> Iterator[Chunking]:
    """Every split of ``data`` into two reads: ``len(data) - 1`` chunkings."""
    for index in range(1, len(data)):
        yield [data[:index], data[index:]]


def byte_at_a_time(data: bytes) -> Iterator[Chunking]:
    """The stream one byte per read (one chunking)."""
    yield [data[i : i + 1] for i in range(len(data))]


def splits_at(data: bytes, offsets: Iterable[int]) -> Iterator[Chunking]:
    """One two-way split of ``data`` at each offset (offsets outside 1..len-1 are skipped)."""
    for offset in sorted(set(offsets)):
        if 0 < offset < len(data):
            yield [data[:offset], data[offset:]]


def coalesced(pieces: Sequence[bytes], *, limit: int = 4096, seed: int = 0) -> Iterator[Chunking]:
    """Groupings of consecutive whole pieces (usually frames' wire bytes) into reads.

    Every grouping (``2 ** (len(pieces) - 1)``) when that is at most ``limit``;
    otherwise all-in-one, one-per-read, and ``limit - 2`` random groupings from
    ``seed``.
    """
    pieces = [piece for piece in pieces if piece]
    if not pieces:
        return
    gaps = len(pieces) - 1

    def grouping(mask: int) -> Chunking:
        chunks = [pieces[0]]
        for index in range(gaps):
            if mask >> index & 1:
                chunks[-1] += pieces[index + 1]
            else:
                chunks.append(pieces[index + 1])
        return chunks

    if gaps < 62 and 1 << gaps <= limit:
        for mask in range(1 << gaps):
            yield grouping(mask)
        return
    rng = random.Random(seed)
    yield grouping((1 << gaps) - 1)
    yield grouping(0)
    for _ in range(max(limit - 2, 0)):
        yield grouping(rng.getrandbits(gaps))


def random_chunkings(
    data: bytes, *, count: int = 100, seed: int = 0, max_chunk: int | None = None
) -> Iterator[Chunking]:
    """``count`` chunkings with random read sizes (1 to ``max_chunk``), repeatable by ``seed``."""
    rng = random.Random(seed)
    for _ in range(count):
        largest = max_chunk or max(1, rng.choice((2, 8, 64, len(data) or 1)))
        chunks = []
        position = 0
        while position < len(data):
            size = rng.randint(1, largest)
            chunks.append(data[position : position + size])
            position += size
        yield chunks


def _header_size(framing: Framing, frame: bytes) -> int:
    if framing.kind == "length":
        return framing.length_bytes
    if framing.kind == "varint":
        return len(encode_varint(len(frame)))
    return 0


def boundary_offsets(framing: Framing, frames: Sequence[bytes]) -> list[int]:
    """Stream offsets where a split is most likely to break a naive decoder.

    Inside and right around every delimiter (a multi-byte delimiter split in
    two), inside and right after every length header, and at every frame
    boundary, in the stream ``framing`` makes of ``frames``.
    """
    offsets: set[int] = set()
    position = 0
    for frame in frames:
        start = position
        end = start + len(framing.encode(frame))
        offsets.update((start, start + 1, end - 1))
        if framing.kind in ("line", "delimiter"):
            delimiter_start = end - len(framing.delimiter)
            offsets.update(range(delimiter_start, end))
        header = _header_size(framing, frame)
        offsets.update(range(start + 1, start + header + 1))
        position = end
    offsets.add(position)
    return sorted(offset for offset in offsets if 0 < offset < position)


def boundary_splits(framing: Framing, frames: Sequence[bytes]) -> Iterator[Chunking]:
    """Two-way splits at every :func:`boundary_offsets` offset: inside delimiters and headers."""
    data = b"".join(framing.encode(frame) for frame in frames)
    yield from splits_at(data, boundary_offsets(framing, frames))


#: The named chunkers that need only the bytes, for parametrising tests.
CHUNKERS: dict[str, Callable[[bytes], Iterable[Chunking]]] = {
    "whole": whole,
    "two-way-splits": two_way_splits,
    "byte-at-a-time": byte_at_a_time,
    "random": random_chunkings,
}


def all_chunkings(framing: Framing, frames: Sequence[bytes]) -> Iterator[tuple[str, Chunking]]:
    """Every chunking above for ``frames`` in ``framing``, each with a short name.

    Names read like ``two-way split at 17``, ``coalesced 3+1``, ``random #4``.
    """
    pieces = [framing.encode(frame) for frame in frames]
    data = b"".join(pieces)
    for chunks in whole(data):
        yield "whole", chunks
    for chunks in byte_at_a_time(data):
        yield "byte at a time", chunks
    for chunks in two_way_splits(data):
        yield f"two-way split at {len(chunks[0])}", chunks
    boundaries = set(boundary_offsets(framing, frames))
    for chunks in splits_at(data, boundaries):
        yield f"split inside a delimiter or header at {len(chunks[0])}", chunks
    piece_lengths = [len(piece) for piece in pieces if piece]
    for chunks in coalesced(pieces, limit=256):
        yield "coalesced " + _grouping_name(chunks, piece_lengths), chunks
    for index, chunks in enumerate(random_chunkings(data, count=50)):
        yield f"random #{index}", chunks


def _grouping_name(chunks: Chunking, piece_lengths: list[int]) -> str:
    counts = []
    remaining = list(piece_lengths)
    for chunk in chunks:
        size, count = len(chunk), 0
        while size > 0 and remaining:
            size -= remaining.pop(0)
            count += 1
        counts.append(str(count))
    return "+".join(counts)
