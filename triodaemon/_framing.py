"""Sans-I/O framing: turn a byte stream, split and coalesced anywhere, into frames.

Strategy: every decoder keeps one ``bytearray`` and an offset of the first byte
not yet returned. ``feed()`` only stores (compacting the consumed prefix once per
feed, so consuming a frame never copies the rest of the buffer); ``next_frame()``
returns one frame or ``None`` for "need more data"; ``feed_eof()`` says whether
the stream ended on a frame boundary. ``feed_and_take()`` hands complete frames
out as a view of that buffer; ``feed()`` never changes bytes a live view shows
(``bytearray`` refuses to resize while exported, and the decoder then moves to a
new buffer). The limit is checked before a body is buffered: a length header
that announces too much fails at once, and a delimiter search fails as soon as
more than ``max_frame`` bytes are held without one. The delimiter scan remembers
how far it has looked, so it is linear however the bytes arrive.

Nothing here imports trio or touches a socket. The unframed bytes a decoder
holds are available through ``pending()``, so a connection can be handed to
another process at a frame boundary together with what it has not decoded yet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Literal, Protocol

import attrs

from ._errors import FrameTooLarge, FramingError, IncompleteFrame, MalformedHeader

#: Default bound on one frame's payload. 1 MiB holds any sane message while
#: keeping the worst case of 1024 connections each mid-frame near 1 GiB.
DEFAULT_MAX_FRAME = 1024 * 1024

FramingKind = Literal["line", "delimiter", "length", "varint", "fixed", "raw"]
FRAMING_KINDS: tuple[FramingKind, ...] = ("line", "delimiter", "length", "varint", "fixed", "raw")
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


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class _BufferedDecoder:
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=attrs.validators.gt(0))
    _buf: bytearray = attrs.field(factory=bytearray, init=False)
    _start: int = attrs.field(default=0, init=False)
    _error: FramingError | None = attrs.field(default=None, init=False)

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

    def _consumed(self, count: int) -> None:
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

    def _next_span(self) -> tuple[int, int, int] | None:
        """``(payload start, payload end, frame end)`` of the next complete frame, or ``None``.

        Consumes nothing; raises (and remembers) framing errors.
        """
        raise NotImplementedError

    def next_frame(self) -> bytes | None:
        span = self._next_span()
        if span is None:
            return None
        begin, end, self._start = span
        return _copy(self._buf, begin, end)

    def take_frames(self) -> tuple[bytes, int]:
        """Consume every complete frame; return their wire bytes as one piece, and how many.

        For an echo: the frames exactly as they arrived, without a copy per frame.
        Never raises: a framing error stops the taking, and is then in :attr:`error`.
        """
        start, count = self._take()
        return _copy(self._buf, start, self._start), count

    def _take(self) -> tuple[int, int]:
        """Consume every complete frame; return where the first began, and how many."""
        start = self._start
        count = 0
        try:
            while (span := self._next_span()) is not None:
                self._start = span[2]
                count += 1
        except FramingError:
            pass
        return start, count

    def feed_and_take(
        self, data: bytes | bytearray, end: int | None = None
    ) -> tuple[bytes | bytearray | memoryview, int]:
        """:meth:`feed` then :meth:`take_frames`, returning a view of the frames.

        Subclasses return ``data`` (or a view of its start) when nothing was held
        and it starts with whole frames (the common case for an echo), uncopied.
        Otherwise the frames are a view of the decoder's own buffer: no copy of a
        large frame that came in pieces.
        """
        self.feed(_head(data, end))
        start, count = self._take()
        if not count:
            return b"", 0
        return memoryview(self._buf)[start : self._start], count


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class DelimiterDecoder(_BufferedDecoder):
    """Frames end with ``delimiter``, which is not part of the payload."""

    delimiter: bytes = attrs.field(default=b"\n", kw_only=True)
    _search: int = attrs.field(default=0, init=False)
    _self_overlapping: bool = attrs.field(default=False, init=False)
    # The delimiter's last byte, for a one-index check on the echo's fast path;
    # -1 (matches no byte) turns that path off for a self-overlapping delimiter.
    _fast_last: int = attrs.field(default=-1, init=False)

    def __attrs_post_init__(self) -> None:
        if not self.delimiter:
            raise ValueError("the delimiter must not be empty")
        d = self.delimiter
        self._self_overlapping = any(d[:k] == d[-k:] for k in range(1, len(d)))
        self._fast_last = -1 if self._self_overlapping else d[-1]

    def _consumed(self, count: int) -> None:
        self._search = max(0, self._search - count)

    def _take(self) -> tuple[int, int]:
        buf = self._buf
        start = self._start
        delimiter = self.delimiter
        # Fast path: when no more than the limit is held, no frame in it can be too
        # long, so the last delimiter ends the complete frames and `count` counts
        # them; valid for delimiters that cannot overlap themselves ("\n", "\r\n",
        # but not "abab").
        if (
            self._error is None
            and not self._self_overlapping
            and len(buf) - start <= self.max_frame
        ):
            last = buf.rfind(delimiter, max(start, self._search))
            if last < 0:
                self._search = max(start, len(buf) - len(delimiter) + 1)
                return start, 0
            end = last + len(delimiter)
            count = buf.count(delimiter, start, end)
            self._start = self._search = end
            return start, count
        return super()._take()

    def feed_and_take(
        self, data: bytes | bytearray, end: int | None = None
    ) -> tuple[bytes | bytearray | memoryview, int]:
        delimiter = self.delimiter
        size = len(data) if end is None else end
        # Nothing held, and the read ends with a delimiter (its last byte compared
        # first: an index costs a third of an endswith call).
        if (
            0 < size <= self.max_frame
            and data[size - 1] == self._fast_last
            and self._start == len(self._buf)
            and self._error is None
            and (len(delimiter) == 1 or data.endswith(delimiter, 0, size))
        ):
            return _head(data, size), data.count(delimiter, 0, size)
        return super().feed_and_take(data, size)

    def _next_span(self) -> tuple[int, int, int] | None:
        if self._error is not None:
            raise self._error
        buf = self._buf
        start = self._start
        delimiter = self.delimiter
        index = buf.find(delimiter, max(start, self._search))
        if index < 0:
            held = len(buf) - start
            if held >= self.max_frame + len(delimiter):
                raise self._fail(
                    FrameTooLarge(
                        f"{held} bytes without a delimiter; frames are limited to "
                        f"{self.max_frame} bytes"
                    )
                )
            # A delimiter split across reads starts at most len-1 bytes back.
            self._search = max(start, len(buf) - len(delimiter) + 1)
            return None
        if index - start > self.max_frame:
            raise self._fail(
                FrameTooLarge(
                    f"frame of {index - start} bytes; frames are limited to {self.max_frame} bytes"
                )
            )
        end = index + len(delimiter)
        self._search = end
        return (start, index, end)

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

    def __attrs_post_init__(self) -> None:
        order = ">" if self.byte_order == "big" else "<"
        code = {1: "B", 2: "H", 4: "I", 8: "Q"}[self.length_bytes]
        self._unpack_from = struct.Struct(order + code).unpack_from

    def feed_and_take(
        self, data: bytes | bytearray, end: int | None = None
    ) -> tuple[bytes | bytearray | memoryview, int]:
        size = len(data) if end is None else end
        if self._start != len(self._buf) or self._error is not None:
            return super().feed_and_take(data, size)
        # Nothing held: walk the headers in ``data`` itself.
        unpack_from = self._unpack_from
        n = self.length_bytes
        limit = self.max_frame
        skip = n if self.length_includes_header else 0
        whole = count = 0
        while size - whole >= n:
            length = unpack_from(data, whole)[0] - skip
            if not 0 <= length <= limit or size - whole - n < length:
                break  # an error or an unfinished frame: the buffered path deals with it
            whole += n + length
            count += 1
        if whole < size:
            with memoryview(data) as view:
                self.feed(view[whole:size])
            self._take()  # nothing complete is left; this finds a bad header, if any
        return _head(data, whole), count

    def _payload_length(self, start: int) -> int:
        n = self.length_bytes
        length = self._unpack_from(self._buf, start)[0]
        if self.length_includes_header:
            if length < n:
                raise self._fail(
                    MalformedHeader(
                        f"length header says {length} bytes, less than the {n}-byte header it includes"
                    )
                )
            length -= n
        if length > self.max_frame:
            raise self._fail(
                FrameTooLarge(
                    f"header announces a {length}-byte frame; frames are limited to "
                    f"{self.max_frame} bytes"
                )
            )
        return length

    def _next_span(self) -> tuple[int, int, int] | None:
        if self._error is not None:
            raise self._error
        start = self._start
        n = self.length_bytes
        held = len(self._buf) - start
        if held < n:
            return None
        length = self._payload_length(start)
        if held < n + length:
            return None
        return (start + n, start + n + length, start + n + length)

    def _eof_message(self, held: int) -> str:
        n = self.length_bytes
        if held < n:
            return f"peer closed mid-header ({held} of {n} header bytes)"
        length = self._payload_length(self._start)
        return f"peer closed mid-frame ({held - n} of {length} bytes)"


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class VarintDecoder(_BufferedDecoder):
    """Frames are a protobuf base-128 varint length, then that many payload bytes.

    The varint is bounded twice: at 10 bytes (64 bits; more is malformed) and by
    ``max_frame`` as it is read, so a runaway header fails before it ends.
    """

    def _header(self, start: int) -> tuple[int, int] | None:
        """Return ``(payload length, header size)``, or ``None`` if the varint is unfinished."""
        buf = self._buf
        value = 0
        shift = 0
        for position in range(start, min(len(buf), start + _VARINT_MAX_BYTES)):
            byte = buf[position]
            value |= (byte & 0x7F) << shift
            if value > self.max_frame:
                raise self._fail(
                    FrameTooLarge(
                        f"varint header announces at least {value} bytes; frames are limited "
                        f"to {self.max_frame} bytes"
                    )
                )
            if not byte & 0x80:
                return value, position - start + 1
            shift += 7
        if len(buf) - start >= _VARINT_MAX_BYTES:
            raise self._fail(
                MalformedHeader(f"varint length header runs past {_VARINT_MAX_BYTES} bytes")
            )
        return None

    def _next_span(self) -> tuple[int, int, int] | None:
        if self._error is not None:
            raise self._error
        start = self._start
        header = self._header(start)
        if header is None:
            return None
        length, size = header
        end = start + size + length
        if len(self._buf) < end:
            return None
        return (start + size, end, end)

    def _eof_message(self, held: int) -> str:
        header = self._header(self._start)
        if header is None:
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

    def _next_span(self) -> tuple[int, int, int] | None:
        start = self._start
        end = start + self.frame_size
        if len(self._buf) < end:
            return None
        return (start, end, end)

    def _eof_message(self, held: int) -> str:
        return f"peer closed mid-frame ({held} of {self.frame_size} bytes)"


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: hot path
class RawDecoder(_BufferedDecoder):
    """No framing: whatever has arrived is one "frame" (at most ``max_frame`` bytes).

    Never mid-frame: EOF is always clean.
    """

    def _next_span(self) -> tuple[int, int, int] | None:
        start = self._start
        if start == len(self._buf):
            return None
        end = min(len(self._buf), start + self.max_frame)
        return (start, end, end)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@attrs.frozen
class Framing:
    """How a byte stream is cut into frames: the settings of one strategy.

    A frozen record, so it can be shared by every connection, logged, and handed
    to another process; :meth:`decoder` makes the per-connection state.
    """

    kind: FramingKind = attrs.field(default="line", validator=attrs.validators.in_(FRAMING_KINDS))
    """``line`` (delimiter ``\\n``), ``delimiter``, ``length``, ``varint``, ``fixed`` or ``raw``."""
    delimiter: bytes = attrs.field(default=b"\n", validator=attrs.validators.instance_of(bytes))
    """The frame terminator for ``line`` and ``delimiter``."""
    length_bytes: int = attrs.field(default=4, validator=attrs.validators.in_((1, 2, 4, 8)))
    """Size of the length header for ``length``."""
    byte_order: ByteOrder = attrs.field(
        default="big", validator=attrs.validators.in_(("big", "little"))
    )
    """Byte order of the length header for ``length``."""
    length_includes_header: bool = False
    """For ``length``: the header's value counts the header's own bytes too."""
    frame_size: int | None = None
    """The size of every frame for ``fixed``."""
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=attrs.validators.gt(0))
    """The largest payload accepted, in bytes, for every strategy."""

    def __attrs_post_init__(self) -> None:
        if self.kind == "line" and self.delimiter != b"\n":
            raise ValueError("line framing always uses the delimiter b'\\n'; use kind='delimiter'")
        if self.kind == "delimiter" and not self.delimiter:
            raise ValueError("the delimiter must not be empty")
        if self.kind == "fixed":
            if self.frame_size is None or self.frame_size <= 0:
                raise ValueError("fixed framing needs a frame size of at least 1 byte")
            if self.frame_size > self.max_frame:
                raise ValueError(
                    f"frame size {self.frame_size} exceeds the frame limit {self.max_frame}"
                )
        elif self.frame_size is not None:
            raise ValueError("a frame size applies only to fixed framing")

    @property
    def largest_payload(self) -> int:
        """The largest payload this framing can carry: ``max_frame``, or less where
        a short length header or a fixed frame size says so."""
        if self.kind == "fixed":
            assert self.frame_size is not None
            return self.frame_size
        if self.kind == "length":
            room = (1 << (8 * self.length_bytes)) - 1
            if self.length_includes_header:
                room -= self.length_bytes
            return min(self.max_frame, room)
        return self.max_frame

    def decoder(self) -> Decoder:
        """Return a new decoder, holding no bytes, for this framing."""
        if self.kind in ("line", "delimiter"):
            return DelimiterDecoder(self.max_frame, delimiter=self.delimiter)
        if self.kind == "length":
            return LengthPrefixDecoder(
                self.max_frame,
                length_bytes=self.length_bytes,
                byte_order=self.byte_order,
                length_includes_header=self.length_includes_header,
            )
        if self.kind == "varint":
            return VarintDecoder(self.max_frame)
        if self.kind == "fixed":
            assert self.frame_size is not None
            return FixedSizeDecoder(self.max_frame, frame_size=self.frame_size)
        return RawDecoder(self.max_frame)

    def encode(self, payload: bytes) -> bytes:
        """Return the wire bytes of one frame carrying ``payload``.

        Raises:
            ValueError: ``payload`` cannot be framed: it is over ``max_frame``,
                contains the delimiter, or has the wrong size for ``fixed``.
        """
        if len(payload) > self.max_frame and self.kind != "raw":
            raise ValueError(
                f"a {len(payload)}-byte frame exceeds the frame limit of {self.max_frame} bytes"
            )
        if self.kind in ("line", "delimiter"):
            wire = payload + self.delimiter
            # One search covers both ways to be cut early: the delimiter inside the
            # payload, and (for "abab" after "ab") the payload's end running into it.
            if wire.find(self.delimiter) != len(payload):
                if self.delimiter in payload:
                    raise ValueError(f"the payload contains the delimiter {self.delimiter!r}")
                raise ValueError(
                    f"the payload's end and the delimiter {self.delimiter!r} together "
                    "contain the delimiter early: the frame would be cut short"
                )
            return wire
        if self.kind == "length":
            value = len(payload) + (self.length_bytes if self.length_includes_header else 0)
            if value >= 1 << (8 * self.length_bytes):
                raise ValueError(
                    f"a {len(payload)}-byte frame does not fit a {self.length_bytes}-byte length header"
                )
            return value.to_bytes(self.length_bytes, self.byte_order) + payload
        if self.kind == "varint":
            return _encode_varint(len(payload)) + payload
        if self.kind == "fixed":
            if len(payload) != self.frame_size:
                raise ValueError(
                    f"fixed framing needs {self.frame_size}-byte frames, got {len(payload)} bytes"
                )
            return payload
        return payload

    def describe(self) -> str:
        """A short human description, for logs: ``length (4 bytes, big-endian)``."""
        if self.kind == "line":
            detail = ""
        elif self.kind == "delimiter":
            detail = f" {self.delimiter!r}"
        elif self.kind == "length":
            detail = f" ({self.length_bytes} bytes, {self.byte_order}-endian"
            detail += ", includes header)" if self.length_includes_header else ")"
        elif self.kind == "fixed":
            detail = f" ({self.frame_size} bytes)"
        else:
            detail = ""
        return f"{self.kind}{detail}, max frame {self.max_frame} bytes"


def parse_delimiter(text: str) -> bytes:
    """Parse a delimiter given on a command line, with backslash escapes.

    Accepts ``\\n \\r \\t \\0 \\\\ \\xHH`` and plain characters (UTF-8 encoded).

    Raises:
        ValueError: an unknown or unfinished escape, or an empty result.
    """
    simple = {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0", "\\": b"\\", "e": b"\x1b"}
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\":
            out += char.encode()
            i += 1
            continue
        if i + 1 == len(text):
            raise ValueError(f"delimiter {text!r} ends with a lone backslash")
        code = text[i + 1]
        if code in simple:
            out += simple[code]
            i += 2
        elif code == "x":
            digits = text[i + 2 : i + 4]
            if len(digits) != 2 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError(f"delimiter {text!r}: \\x needs two hex digits")
            out.append(int(digits, 16))
            i += 4
        else:
            raise ValueError(
                f"delimiter {text!r}: unknown escape \\{code} (use \\n \\r \\t \\0 \\\\ or \\xHH)"
            )
    if not out:
        raise ValueError("the delimiter must not be empty")
    return bytes(out)
