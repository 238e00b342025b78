"""Sans-I/O decoders: turn a byte stream, split and coalesced anywhere, into frames.

Strategy: every decoder keeps one ``bytearray`` and an offset of the first byte
not yet returned. ``feed()`` only stores (compacting the consumed prefix once per
feed, so consuming a frame never copies the rest of the buffer); ``next_frame()``
returns one frame or ``None`` for "need more data"; ``feed_eof()`` says whether
the stream ended on a frame boundary. ``feed_and_take()`` hands complete frames
out uncopied: the read itself when nothing was held, or a view of the buffer;
``feed()`` never changes bytes a live view shows (``bytearray`` refuses to
resize while exported, and the decoder then moves to a new buffer).

Each kind has exactly one scan (``_scan``): find up to N whole frames in a
buffer, or the framing error that stops them. ``next_frame()`` asks it for one
frame, ``take_frames()`` and ``feed_and_take()`` for all of them, so every limit
is checked in one place per kind. The limit is checked before a body is
buffered: a length header that announces too much fails at once, and a
delimiter search fails as soon as more than ``max_frame`` bytes are held
without one. The delimiter scan remembers how far it has looked, so it is
linear however the bytes arrive.

Nothing here imports trio or touches a socket. The unframed bytes a decoder
holds are available through ``pending()``, so a connection can be handed to
another process at a frame boundary together with what it has not decoded yet.
A decoder is made from its settings, a :class:`~triodaemon._framing.Framing`
(``Framing.decoder()``).
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Callable
from typing import Literal, Protocol

import attrs

from ._errors import FrameTooLarge, FramingError, IncompleteFrame, MalformedHeader
from ._lowlevel import scans as _scans

#: Default bound on one frame's payload. 1 MiB holds any sane message while
#: keeping the worst case of 1024 connections each mid-frame near 1 GiB.
DEFAULT_MAX_FRAME = 1024 * 1024

ByteOrder = Literal["big", "little"]

#: A protobuf varint carries at most 64 bits, 7 per byte.
_VARINT_MAX_BYTES = 10


class Decoder(Protocol):
    """What every framing strategy's decoder provides."""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Store (a copy of) ``data`` for decoding. Never raises framing errors."""

    def next_frame(self) -> bytes | None:
        """Return the next complete frame's payload, or ``None`` if more data is needed.

        Raises:
            FrameTooLarge: a frame is, or is announced to be, over the limit.
            MalformedHeader: a length header cannot be valid.
        """

    def feed_eof(self) -> None:
        """Tell the decoder the stream has ended.

        Call it after ``next_frame()`` has returned ``None``.

        Raises:
            IncompleteFrame: the stream ended inside a frame.
        """

    @property
    def buffered(self) -> int:
        """Bytes held that do not belong to a frame returned yet; 0 at a frame boundary."""

    def pending(self) -> bytes:
        """A copy of the bytes held but not yet returned as frames."""

    def take_frames(self) -> tuple[bytes, int]:
        """Consume every complete frame: their wire bytes as one piece, and how many."""

    def feed_and_take(
        self, data: bytes | bytearray, end: int | None = None
    ) -> tuple[bytes | bytearray | memoryview, int]:
        """``feed(data[:end])`` then ``take_frames()``, without copying what it need not.

        The complete frames come back uncopied: when nothing was held, as ``data``
        itself or a ``memoryview`` of its start (use them before ``data`` changes: a
        reused receive buffer is read into again); otherwise as a ``memoryview`` of
        the decoder's own buffer, which a later ``feed`` leaves alone while the view
        lives. ``end`` (default ``len(data)``) is how much of ``data`` holds bytes.
        """

    @property
    def error(self) -> FramingError | None:
        """The framing error that stopped the decoder, if any."""


def _head(data: bytes | bytearray, end: int | None) -> bytes | bytearray | memoryview:
    """``data[:end]`` without a copy: ``data`` itself, or a view of its start."""
    if end is None or end == len(data):
        return data
    return memoryview(data)[:end]


def _copy(buf: bytearray, start: int, end: int) -> bytes:
    """``bytes(buf[start:end])`` with one copy instead of two (slice, then bytes)."""
    with memoryview(buf) as view:
        return bytes(view[start:end])


#: ``most`` for a scan that takes every whole frame there is: more frames than
#: any buffer holds.
_EVERY = (1 << 30) - 1

#: What a scan found: where the last whole frame ends, how many whole frames,
#: and the framing error that stopped it (at the bad frame's first byte), if any.
_Scan = tuple[int, int, "FramingError | None"]


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class _BufferedDecoder(abc.ABC):
    """The sans-I/O core every kind shares; a kind supplies one scan (``_scan``).

    ``_scan(data, start, end, most)`` finds up to ``most`` whole frames in
    ``data[start:end]`` and consumes nothing. Every way of taking frames goes
    through it: :meth:`next_frame` (one frame), :meth:`take_frames` (all of
    them, from the buffer) and :meth:`feed_and_take` (all of them, from the read
    itself when nothing is held), so the limits are checked in one place per kind.
    """

    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=attrs.validators.gt(0))
    _buf: bytearray = attrs.field(factory=bytearray, init=False)
    _start: int = attrs.field(default=0, init=False)
    _error: FramingError | None = attrs.field(default=None, init=False)

    @abc.abstractmethod
    def _scan(self, data: bytes | bytearray, start: int, end: int, most: int) -> _Scan:
        """Up to ``most`` whole frames in ``data[start:end]``: where they end, how
        many, and the framing error that stopped the scan, if one did."""

    def _payload(self, data: bytes | bytearray, begin: int, end: int) -> tuple[int, int]:
        """Where the payload of the whole frame ``data[begin:end]`` lies."""
        return begin, end

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        start = self._start
        try:
            if start:
                if start == len(self._buf):
                    self._buf.clear()
                else:
                    del self._buf[:start]
            self._buf += data
        except BufferError:
            # A view from feed_and_take() is still alive: leave the bytes it shows
            # alone (a resize fails before it changes anything) and carry on in a
            # new buffer.
            self._buf = self._buf[start:] + data
        if start:
            self._start = 0
            self._consumed(start)

    def _consumed(self, count: int) -> None:  # noqa: B027 (optional: few kinds need it)
        """Hook: ``count`` bytes were dropped from the front of the buffer."""

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._start

    def pending(self) -> bytes:
        return _copy(self._buf, self._start, len(self._buf))

    def feed_eof(self) -> None:
        held = self.buffered
        if held:
            raise IncompleteFrame(self._eof_message(held), received=held)

    def _eof_message(self, held: int) -> str:
        return f"peer closed mid-frame ({held} bytes of an unfinished frame)"

    def _fail(self, error: FramingError) -> FramingError:
        self._error = error
        return error

    @property
    def error(self) -> FramingError | None:
        """The framing error that stopped this decoder, if one did."""
        return self._error

    def next_frame(self) -> bytes | None:
        if self._error is not None:
            raise self._error
        buf = self._buf
        start = self._start
        stop, count, error = self._scan(buf, start, len(buf), 1)
        if count:
            self._start = stop
            begin, end = self._payload(buf, start, stop)
            return _copy(buf, begin, end)
        if error is not None:
            raise self._fail(error)
        return None

    def take_frames(self) -> tuple[bytes, int]:
        """Consume every complete frame; return their wire bytes as one piece, and how many.

        For an echo: the frames exactly as they arrived, without a copy per frame.
        Never raises: a framing error stops the taking, and is then in :attr:`error`.
        """
        start, count = self._take()
        return _copy(self._buf, start, self._start), count

    def _take(self) -> tuple[int, int]:
        """Consume every complete frame held; return where the first began, and how many."""
        start = self._start
        if self._error is not None:
            return start, 0
        stop, count, error = self._scan(self._buf, start, len(self._buf), _EVERY)
        self._start = stop
        if error is not None:
            self._fail(error)
        return start, count

    def feed_and_take(
        self, data: bytes | bytearray, end: int | None = None
    ) -> tuple[bytes | bytearray | memoryview, int]:
        """:meth:`feed` then :meth:`take_frames`, returning the frames uncopied.

        When nothing is held (the common case for an echo) the read itself is
        scanned: its whole frames come back as ``data`` or a view of its start,
        and only what follows them is stored. Otherwise the frames are a view of
        the decoder's own buffer: no copy of a large frame that came in pieces.
        """
        size = len(data) if end is None else end
        if self._start == len(self._buf) and self._error is None:
            stop, count, error = self._scan(data, 0, size, _EVERY)
            if stop == size:
                return (data if size == len(data) else memoryview(data)[:size]), count
            with memoryview(data) as view:
                self.feed(view[stop:size])
            if error is not None:
                self._fail(error)
            return (memoryview(data)[:stop], count) if count else (b"", 0)
        self.feed(_head(data, size))
        start, count = self._take()
        if not count:
            return b"", 0
        return memoryview(self._buf)[start : self._start], count


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class DelimiterDecoder(_BufferedDecoder):
    """Frames end with ``delimiter``, which is not part of the payload."""

    delimiter: bytes = attrs.field(default=b"\n", kw_only=True)
    # How far the buffer has been searched: a delimiter cannot start before it.
    _search: int = attrs.field(default=0, init=False)
    _self_overlapping: bool = attrs.field(default=False, init=False)
    # What the scan for every frame needs, decided once: -1 (no byte) where it may
    # not take its shortcut (a delimiter that overlaps itself), else the last byte.
    _last_byte: int = attrs.field(default=-1, init=False)
    # A one-byte delimiter's shape, for the echo's rule (scans.whole_frames).
    _shape: _scans.Shape | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if not self.delimiter:
            raise ValueError("the delimiter must not be empty")
        d = self.delimiter
        self._self_overlapping = any(d[:k] == d[-k:] for k in range(1, len(d)))
        self._last_byte = -1 if self._self_overlapping else d[-1]
        if len(d) == 1:
            self._shape = _scans.delimiter_shape(d[0], self.max_frame)

    def _consumed(self, count: int) -> None:
        self._search = max(0, self._search - count)

    def _scan(self, data: bytes | bytearray, start: int, end: int, most: int) -> _Scan:
        delimiter = self.delimiter
        size = len(delimiter)
        limit = self.max_frame
        ours = data is self._buf
        if most == _EVERY and start < end and end - start <= limit and self._last_byte >= 0:
            # No frame in so few bytes can be too long: the last delimiter ends the
            # whole frames, and count() counts them (delimiters that cannot overlap
            # themselves, "\n" or "\r\n" but not "abab", are never counted twice).
            # Most reads end with one, and are whole frames: for a one-byte
            # delimiter, the echo's rule (the compiled read-and-echo decides with the
            # same, scans.whole_frames); for a longer one, its last byte first (an
            # index costs a fraction of a search).
            if self._shape is not None:
                count = _scans.ACTIVE.whole_frames(data, start, end, self._shape)
                if count >= 0:
                    if ours:
                        self._search = end
                    return end, count, None
            elif data[end - 1] == self._last_byte and data.endswith(delimiter, start, end):
                if ours:
                    self._search = end
                return end, data.count(delimiter, start, end), None
            search = self._search if ours and self._search > start else start
            last = data.rfind(delimiter, search, end)
            if last < 0:
                if ours:
                    self._search = max(start, end - size + 1)
                return start, 0, None
            stop = last + size
            if ours:
                self._search = stop
            if size == 1:
                return stop, _scans.ACTIVE.count_byte(data, self._last_byte, start, stop), None
            return stop, data.count(delimiter, start, stop), None
        search = self._search if ours and self._search > start else start
        pos = start
        count = 0
        while count < most:
            index = data.find(delimiter, max(pos, search), end)
            if index < 0:
                held = end - pos
                # Too long once what is held is more than a frame, besides the start
                # of a delimiter it may end with.
                if held > limit and held - self._delimiter_begun(data, pos, end) > limit:
                    return (
                        pos,
                        count,
                        FrameTooLarge(
                            f"{held} bytes without a delimiter; frames are limited to {limit} bytes"
                        ),
                    )
                # A delimiter split across reads starts at most size-1 bytes back.
                search = max(pos, end - size + 1)
                break
            if index - pos > limit:
                return (
                    pos,
                    count,
                    FrameTooLarge(
                        f"frame of {index - pos} bytes; frames are limited to {limit} bytes"
                    ),
                )
            pos = search = index + size
            count += 1
        if ours:
            self._search = search
        return pos, count, None

    def _delimiter_begun(self, data: bytes | bytearray, start: int, end: int) -> int:
        """How many bytes at the end of ``data[start:end]`` may begin a delimiter."""
        delimiter = self.delimiter
        for size in range(min(len(delimiter) - 1, end - start), 0, -1):
            if data.endswith(delimiter[:size], start, end):
                return size
        return 0

    def _payload(self, data: bytes | bytearray, begin: int, end: int) -> tuple[int, int]:
        return begin, end - len(self.delimiter)

    def _eof_message(self, held: int) -> str:
        return f"peer closed mid-frame ({held} bytes without a delimiter)"


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class LengthPrefixDecoder(_BufferedDecoder):
    """Frames are a fixed-size unsigned length header, then that many payload bytes."""

    length_bytes: int = attrs.field(
        default=4, kw_only=True, validator=attrs.validators.in_((1, 2, 4, 8))
    )
    byte_order: ByteOrder = attrs.field(
        default="big", kw_only=True, validator=attrs.validators.in_(("big", "little"))
    )
    length_includes_header: bool = attrs.field(default=False, kw_only=True)
    _unpack_from: Callable[[bytes | bytearray, int], tuple[int]] = attrs.field(init=False)
    _big: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._big = self.byte_order == "big"
        code = {1: "B", 2: "H", 4: "I", 8: "Q"}[self.length_bytes]
        self._unpack_from = struct.Struct((">" if self._big else "<") + code).unpack_from

    def _scan(self, data: bytes | bytearray, start: int, end: int, most: int) -> _Scan:
        n = self.length_bytes
        limit = self.max_frame
        skip = n if self.length_includes_header else 0
        pos, count, bad = _scans.ACTIVE.walk_lengths(
            data, start, end, n, self._big, skip, limit, most
        )
        return pos, count, None if bad < 0 else self._bad_header(bad)

    def _bad_header(self, value: int) -> FramingError:
        n = self.length_bytes
        if self.length_includes_header and value < n:
            return MalformedHeader(
                f"length header says {value} bytes, less than the {n}-byte header it includes"
            )
        length = value - n if self.length_includes_header else value
        return FrameTooLarge(
            f"header announces a {length}-byte frame; frames are limited to {self.max_frame} bytes"
        )

    def _payload(self, data: bytes | bytearray, begin: int, end: int) -> tuple[int, int]:
        return begin + self.length_bytes, end

    def _eof_message(self, held: int) -> str:
        n = self.length_bytes
        if held < n:
            return f"peer closed mid-header ({held} of {n} header bytes)"
        length = self._unpack_from(self._buf, self._start)[0]
        if self.length_includes_header:
            length -= n
        return f"peer closed mid-frame ({held - n} of {length} bytes)"


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class VarintDecoder(_BufferedDecoder):
    """Frames are a protobuf base-128 varint length, then that many payload bytes.

    The varint is bounded twice: at 10 bytes (64 bits; more is malformed) and by
    ``max_frame`` as it is read, so a runaway header fails before it ends.
    """

    def _header(
        self, data: bytes | bytearray, start: int, end: int
    ) -> tuple[int, int] | FramingError | None:
        """``(payload length, header size)``; ``None`` if the varint is unfinished; or the error."""
        value = 0
        shift = 0
        for position in range(start, min(end, start + _VARINT_MAX_BYTES)):
            byte = data[position]
            value |= (byte & 0x7F) << shift
            if value > self.max_frame:
                return FrameTooLarge(
                    f"varint header announces at least {value} bytes; frames are limited "
                    f"to {self.max_frame} bytes"
                )
            if not byte & 0x80:
                return value, position - start + 1
            shift += 7
        if end - start >= _VARINT_MAX_BYTES:
            return MalformedHeader(f"varint length header runs past {_VARINT_MAX_BYTES} bytes")
        return None

    def _scan(self, data: bytes | bytearray, start: int, end: int, most: int) -> _Scan:
        pos = start
        count = 0
        while count < most:
            header = self._header(data, pos, end)
            if header is None:
                break
            if isinstance(header, FramingError):
                return pos, count, header
            length, size = header
            if end - pos - size < length:
                break
            pos += size + length
            count += 1
        return pos, count, None

    def _payload(self, data: bytes | bytearray, begin: int, end: int) -> tuple[int, int]:
        header = self._header(data, begin, end)
        assert isinstance(header, tuple)  # a whole frame's header
        return begin + header[1], end

    def _eof_message(self, held: int) -> str:
        header = self._header(self._buf, self._start, len(self._buf))
        if not isinstance(header, tuple):
            return f"peer closed mid-header ({held} bytes of an unfinished varint)"
        length, size = header
        return f"peer closed mid-frame ({held - size} of {length} bytes)"


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class FixedSizeDecoder(_BufferedDecoder):
    """Every frame is exactly ``frame_size`` bytes."""

    frame_size: int = attrs.field(default=1, kw_only=True, validator=attrs.validators.gt(0))

    def __attrs_post_init__(self) -> None:
        if self.frame_size > self.max_frame:
            raise ValueError(
                f"frame size {self.frame_size} exceeds the frame limit {self.max_frame}"
            )

    def _scan(self, data: bytes | bytearray, start: int, end: int, most: int) -> _Scan:
        count = min((end - start) // self.frame_size, most)
        return start + count * self.frame_size, count, None

    def _eof_message(self, held: int) -> str:
        return f"peer closed mid-frame ({held} of {self.frame_size} bytes)"


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class RawDecoder(_BufferedDecoder):
    """No framing: whatever has arrived is one "frame" (at most ``max_frame`` bytes).

    Never mid-frame: EOF is always clean.
    """

    def _scan(self, data: bytes | bytearray, start: int, end: int, most: int) -> _Scan:
        # Pieces of at most max_frame bytes: every byte held is in a whole frame.
        count = min(-(-(end - start) // self.max_frame), most)
        return min(end, start + count * self.max_frame), count, None


def encode_varint(value: int) -> bytes:
    """A protobuf varint: 7 bits a byte, the least significant first."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
