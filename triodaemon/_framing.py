"""Framing: the settings of one strategy for cutting a byte stream into frames.

Strategy: a :class:`Framing` is a frozen record (the strategy and its limits),
shared by every connection, logged, compared and handed to another process
(:meth:`Framing.to_json`, :meth:`Framing.from_json`: the one way it is written
down and read back); it encodes one frame's payload (:meth:`Framing.encode`) and
makes the per-connection state, a decoder (:mod:`triodaemon._decoders`, where the
stream is cut). :func:`parse_delimiter` reads a delimiter as a command line
spells it. Nothing here imports trio or touches a socket.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import attrs

from ._decoders import (
    DEFAULT_MAX_FRAME,
    ByteOrder,
    Decoder,
    DelimiterDecoder,
    FixedSizeDecoder,
    LengthPrefixDecoder,
    RawDecoder,
    VarintDecoder,
    encode_varint,
)
from ._errors import HEX_DIGITS, shown

FramingKind = Literal["line", "delimiter", "length", "varint", "fixed", "raw"]
FRAMING_KINDS: tuple[FramingKind, ...] = ("line", "delimiter", "length", "varint", "fixed", "raw")

_SIZE = "an integer from 0 to 2**64-1"
#: The fields of :meth:`Framing.to_json`: their JSON types, and how a message says them.
_JSON_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "kind": ((str,), "a string"),
    "delimiter": ((str,), "bytes in hex digits"),
    "length_bytes": ((int,), _SIZE),
    "byte_order": ((str,), "a string"),
    "length_includes_header": ((bool,), "true or false"),
    "frame_size": ((int, type(None)), _SIZE + ", or null"),
    "max_frame": ((int,), _SIZE),
}


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

    def to_json(self) -> dict[str, Any]:
        """This framing as JSON can carry it, field for field (the delimiter in hex):
        what the handover compares and ``check`` saves; :meth:`from_json` reads it."""
        record = attrs.asdict(self)
        record["delimiter"] = self.delimiter.hex()
        return record

    @classmethod
    def from_json(cls, record: Any, *, where: str = "framing") -> Framing:
        """The framing that :meth:`to_json` wrote, strictly: what JSON holds is data
        (a file's, another process's), so each field must be of its JSON type and
        none may be missing or unknown (``"false"`` is no bool, ``true`` no 1).

        Raises:
            ValueError: not a framing; one line that starts with ``not a framing:``
                and names the field (``where``: how to name ``record`` itself).
        """
        if not isinstance(record, dict):
            raise ValueError(f"not a framing: {where}: expected an object, got {shown(record)}")
        for name in record:
            if name not in _JSON_FIELDS:
                raise ValueError(f"not a framing: {where}: unknown field {json.dumps(name[:32])}")
        for name, (types, expected) in _JSON_FIELDS.items():
            if name not in record:
                raise ValueError(f"not a framing: {where}.{name}: missing")
            value = record[name]
            # bool is an int in Python, never in JSON; no size is 2**64 bytes or more.
            if (
                not isinstance(value, types)
                or (isinstance(value, bool) and bool not in types)
                or (
                    isinstance(value, int)
                    and not isinstance(value, bool)
                    and not 0 <= value < 2**64
                )
                or (
                    isinstance(value, str)
                    and name == "delimiter"
                    and not HEX_DIGITS.fullmatch(value)
                )
            ):
                raise ValueError(
                    f"not a framing: {where}.{name}: expected {expected}, got {shown(value)}"
                )
        try:
            return cls(**{**record, "delimiter": bytes.fromhex(record["delimiter"])})
        except ValueError as exc:
            if len(exc.args) == 4 and isinstance(exc.args[1], attrs.Attribute):
                # attrs' in_: (message, attribute, options, value); say it in one line.
                _, attribute, options, value = exc.args
                choices = ", ".join(json.dumps(option) for option in options)
                raise ValueError(
                    f"not a framing: {where}.{attribute.name}: expected one of {choices}, "
                    f"got {shown(value)}"
                ) from None
            raise ValueError(f"not a framing: {where}: {exc}") from None

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
            return encode_varint(len(payload)) + payload
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
            unit = "byte" if self.length_bytes == 1 else "bytes"
            detail = f" ({self.length_bytes} {unit}, {self.byte_order}-endian"
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
