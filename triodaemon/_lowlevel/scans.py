"""The decoders' two hot scans, compiled or in Python, chosen once per process.

Strategy: :class:`Scans` is one implementation of both scans; :data:`ACTIVE` is
the one the decoders (:mod:`triodaemon._decoders`, the only module that calls
them) use: the compiled module's (``_speedups.c``) where it was built, unless
``TRIODAEMON_NO_SPEEDUPS`` is switched on, else :data:`PYTHON`, which gives the
same answers, slower (tests/test_speedups.py and fuzz/ hold them to each other).
A test swaps them with :func:`use`; this module is the only one that imports
the compiled scans.

count_byte(data, byte, start, end) -> int
    How many times ``byte`` occurs in ``data[start:end]``.

walk_lengths(data, start, end, n, big, skip, limit, most) -> (pos, count, bad)
    Walk the length-prefixed frames in ``data[start:end]`` (``n``-byte headers,
    big or little endian, ``skip`` bytes of the header counted in the length)
    and stop after ``most`` frames, at an unfinished one, or at a header whose
    length is below ``skip`` or whose payload is above ``limit``: where the walk
    stopped, how many whole frames it passed, and the raw header value that
    stopped it (-1 if none did).

whole_frames(data, start, end, shape) -> frames or -1
    The echo's rule, "is this read whole frames?", in one place: how many frames
    ``data[start:end]`` is when it is whole frames of ``shape`` (a
    :data:`Shape`), else -1; an empty span is 0 frames. The compiled read-and-echo
    decides with the compiled one, the decoders with :data:`ACTIVE`'s.
"""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Callable, Iterator

import attrs

from ._env import SPEEDUPS_OFF_ENV, switched_on

#: What the compiled code needs to know of a framing: (one-byte delimiter, header
#: size, big endian, header bytes counted in the length, max_frame); delimiter -1
#: for length headers. Made by :func:`delimiter_shape` and :func:`length_shape`.
Shape = tuple[int, int, int, int, int]

CountByte = Callable[[bytes | bytearray, int, int, int], int]
WalkLengths = Callable[[bytes | bytearray, int, int, int, int, int, int, int], tuple[int, int, int]]
WholeFrames = Callable[[bytes | bytearray, int, int, Shape], int]


@functools.cache  # (one tuple per framing, shared by its decoders and connections)
def delimiter_shape(byte: int, limit: int) -> Shape:
    """The shape of frames that end with the one byte ``byte``, at most ``limit`` long."""
    return (byte, 0, 0, 0, limit)


@functools.cache
def length_shape(n: int, big: bool, includes_header: bool, limit: int) -> Shape:
    """The shape of frames behind ``n``-byte length headers."""
    return (-1, n, int(big), n if includes_header else 0, limit)


@attrs.frozen
class Scans:
    """One implementation of the scans."""

    name: str
    """``compiled`` or ``python``."""
    count_byte: CountByte
    walk_lengths: WalkLengths
    whole_frames: WholeFrames

    @property
    def compiled(self) -> bool:
        return self.name == "compiled"


_ONE_BYTE = [bytes((value,)) for value in range(256)]


def _count_byte(data: bytes | bytearray, byte: int, start: int, end: int) -> int:
    return data.count(_ONE_BYTE[byte], start, end)


_UNPACKERS = {
    (n, big): struct.Struct((">" if big else "<") + code).unpack_from
    for n, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))
    for big in (0, 1)
}


def _walk_lengths(
    data: bytes | bytearray,
    start: int,
    end: int,
    n: int,
    big: int,
    skip: int,
    limit: int,
    most: int,
) -> tuple[int, int, int]:
    unpack_from = _UNPACKERS[n, 1 if big else 0]
    pos = start
    count = 0
    last = end - n  # where the last whole header can start
    while pos <= last and count < most:
        value = unpack_from(data, pos)[0]
        length = value - skip
        if not 0 <= length <= limit or last - pos < length:  # one test per frame
            if 0 <= length <= limit:
                break  # unfinished
            return pos, count, value
        pos += n + length
        count += 1
    return pos, count, -1


_EVERY = 1 << 62


def _whole_frames(data: bytes | bytearray, start: int, end: int, shape: Shape) -> int:
    delimiter, n, big, skip, limit = shape
    if start == end:
        return 0
    if delimiter >= 0:
        if end - start > limit or data[end - 1] != delimiter:
            return -1
        return data.count(_ONE_BYTE[delimiter], start, end)
    pos, count, _bad = _walk_lengths(data, start, end, n, big, skip, limit, _EVERY)
    return count if pos == end else -1


PYTHON = Scans("python", _count_byte, _walk_lengths, _whole_frames)
"""The scans in Python: what runs where the compiled module was not built."""

COMPILED: Scans | None
"""The compiled scans, or None where the module was not built."""
try:
    from ._speedups import count_byte, walk_lengths, whole_frames
except ImportError:
    COMPILED = None
else:
    COMPILED = Scans("compiled", count_byte, walk_lengths, whole_frames)

ACTIVE: Scans = PYTHON if COMPILED is None or switched_on(SPEEDUPS_OFF_ENV) else COMPILED
"""The scans the decoders run, read at each scan."""


@contextlib.contextmanager
def use(scans: Scans) -> Iterator[Scans]:
    """Run the decoders on ``scans`` inside the block (for tests)."""
    global ACTIVE
    saved, ACTIVE = ACTIVE, scans
    try:
        yield scans
    finally:
        ACTIVE = saved
