"""The PROXY protocol, sans-I/O: what a load balancer says of the client in front
of the stream it opens to us (HAProxy's specification, versions 1 and 2).

Strategy: one pure function, :func:`parse`, over the bytes received so far. It
returns the header once it is whole, ``None`` while more bytes are needed, and
raises :class:`ProxyHeaderError` as soon as the bytes cannot begin a valid
header, so a peer that sends garbage is refused on its first bytes, one that
announces an oversized version 2 header on its first 16, and one that sends a
version 1 line without its end on its 107th. Nothing here keeps state, reads
or waits: the connection that calls it owns the buffer, the deadline and the
bound on what it holds (:mod:`._connection`). Strict where the specification
lets a receiver choose: exactly one space between version 1's fields, no
leading zeros, no IPv6 zone; version 2's reserved values refused, a CRC32C
that is present verified, its TLVs checked to fill the block exactly.

Encoders (:func:`encode_v1`, :func:`encode_v2`) build headers as a balancer
sends them, for tests and clients. This module never imports trio.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Literal

import attrs

from ._errors import TriodaemonError, printable

#: The version 1 header's longest form, its CRLF included (the specification's
#: bound: ``PROXY TCP6`` with two full IPv6 addresses and two 5-digit ports).
V1_MAX = 107
#: What every version 1 header begins with.
V1_PREFIX = b"PROXY "
#: What every version 2 header begins with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: A version 2 header's fixed part: the signature, version and command, family and
#: transport, and the length of the rest.
V2_FIXED = 16
#: The longest header accepted by default: version 2's address block (216 bytes at
#: most, for Unix sockets) and TLVs (the balancer's unique id, ALPN, TLS details)
#: fit with room to spare; the specification allows 65,551 bytes, which no
#: balancer sends and any peer could make a connection hold.
MAX_HEADER = 4096

_V2_FIXED = struct.Struct("!12sBBH")
_INET = struct.Struct("!4s4sHH")
_INET6 = struct.Struct("!16s16sHH")
_UNIX_PATH = 108
#: Version 2's address families: the address block's size, and the name said of it.
_FAMILIES = {
    0x0: (0, "UNSPEC"),
    0x1: (_INET.size, "IPv4"),
    0x2: (_INET6.size, "IPv6"),
    0x3: (2 * _UNIX_PATH, "Unix"),
}
#: Version 2's family and transport bytes the specification defines (every other
#: value must be refused): UNSPEC, and each family over a stream or datagrams.
_FAMILY_TRANSPORTS = frozenset({0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32})
_LOCAL, _PROXY = 0x0, 0x1
#: TLV types with a meaning here (the others are skipped).
PP2_TYPE_CRC32C = 0x03

ProxyErrorKind = Literal["missing", "too-long", "signature", "malformed", "checksum"]


class ProxyHeaderError(TriodaemonError):
    """The bytes cannot be a valid PROXY protocol header: the connection must be
    closed (there is no way to find where the client's stream begins)."""

    def __init__(self, kind: ProxyErrorKind, message: str) -> None:
        super().__init__(message)
        #: ``missing`` (the stream does not begin with a header), ``too-long``,
        #: ``signature`` (a header's start, then something else), ``malformed``
        #: (a field that cannot be), or ``checksum`` (a CRC32C that does not match).
        self.kind: ProxyErrorKind = kind


@attrs.frozen
class ProxyHeader:
    """A whole, valid header, as far as it matters to a server."""

    version: Literal[1, 2]
    size: int
    """Bytes it took: the client's stream begins after them."""
    source: str | None
    """The client, ``203.0.113.7:51000``, ``[2001:db8::7]:51000`` or ``unix:PATH``;
    ``None`` when the header names no client (``LOCAL``, ``UNKNOWN``, ``UNSPEC``):
    the connection's own endpoints are then the ones to use, as the specification says."""
    destination: str | None
    """The address the client connected to (on the balancer), in the same form."""
    local: bool = False
    """A version 2 ``LOCAL`` command: the balancer speaking for itself (a health check)."""

    def describe(self) -> str:
        """``PROXY v2 header``, ``PROXY v2 LOCAL header``, ``PROXY v1 UNKNOWN header``."""
        what = " LOCAL" if self.local else " UNKNOWN" if self.source is None else ""
        return f"PROXY v{self.version}{what} header"


def parse(
    data: bytes | bytearray | memoryview, *, max_size: int = MAX_HEADER
) -> ProxyHeader | None:
    """The header ``data`` begins with; ``None`` if ``data`` is a valid beginning
    of one that is not complete yet.

    ``max_size`` bounds the header (at least :data:`V1_MAX`): a version 2
    header that announces more is refused on its 16th byte, before its rest is
    held anywhere.

    Raises:
        ProxyHeaderError: ``data`` cannot begin a valid header of at most ``max_size`` bytes.
    """
    if max_size < V1_MAX:
        raise ValueError(f"max_size must be at least {V1_MAX} bytes")
    start = bytes(data[: len(V2_SIGNATURE)])
    if V1_PREFIX.startswith(start[: len(V1_PREFIX)]) and start[:1] == b"P":
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(start) and start:
        return _parse_v2(data, max_size)
    if not start:
        return None
    if start.startswith((b"PROXY", b"\r\n\r\n")):
        raise ProxyHeaderError(
            "signature",
            f"a PROXY header's signature broken off: the connection began with {start!r}",
        )
    raise ProxyHeaderError(
        "missing",
        f"no PROXY header: the connection began with {start!r} (the balancer must send "
        "one: nginx's proxy_protocol on, HAProxy's send-proxy-v2)",
    )


def _parse_v1(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    head = bytes(data[:V1_MAX])
    end = head.find(b"\n")
    if end < 0:
        if len(head) >= V1_MAX:
            raise ProxyHeaderError(
                "too-long", f"a PROXY v1 header without its end in its first {V1_MAX} bytes"
            )
        _v1_characters(head)
        return None
    line = head[:end]
    if not line.endswith(b"\r"):
        raise ProxyHeaderError("malformed", "a PROXY v1 header that ends in \\n without \\r")
    line = line[len(V1_PREFIX) : -1]
    _v1_characters(line)
    size = end + 1
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        # The specification: the rest of the line is ignored, and the connection's
        # own endpoints used.
        return ProxyHeader(1, size, None, None)
    fields = line.split(b" ")
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(
            "malformed",
            f"a PROXY v1 header that is not TCP4, TCP6 or UNKNOWN with two addresses and "
            f"two ports, each after one space: {bytes(line[:60])!r}",
        )
    family, source, destination, source_port, destination_port = fields
    version = 4 if family == b"TCP4" else 6
    return ProxyHeader(
        1,
        size,
        _v1_address(source, source_port, version),
        _v1_address(destination, destination_port, version),
    )


def _v1_characters(text: bytes) -> None:
    """Refuse at once what no version 1 header holds (anything but printable ASCII)."""
    if not (text.isascii() and all(32 <= byte < 127 for byte in text.rstrip(b"\r"))):
        raise ProxyHeaderError(
            "malformed", f"a PROXY v1 header with bytes no header holds: {text[:60]!r}"
        )


def _v1_address(host: bytes, port: bytes, version: int) -> str:
    text = host.decode("ascii")
    try:
        if "%" in text:
            raise ValueError("a zone")
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(
            "malformed", f"a PROXY v1 header with {text!r}, not an IPv{version} address"
        ) from None
    if address.version != version:
        raise ProxyHeaderError(
            "malformed", f"a PROXY v1 TCP{version} header with the IPv{address.version} {text}"
        )
    if not ((port.isdigit() and len(port) <= 5 and port[:1] != b"0") or port == b"0"):
        raise ProxyHeaderError("malformed", f"a PROXY v1 header with {port!r}, not a port")
    number = int(port)
    if number > 65535:
        raise ProxyHeaderError("malformed", f"a PROXY v1 header with port {number}")
    return _address(address, number)


def _address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """Said as a connection's peer is (:mod:`._peers`): ``1.2.3.4:5``, ``[::1]:5``; an
    IPv4-mapped IPv6 address as the kernel and balancers write it, ``[::ffff:1.2.3.4]``
    (Python before 3.13 writes ``::ffff:102:304``)."""
    host = str(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        host = f"::ffff:{address.ipv4_mapped}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_v2(data: bytes | bytearray | memoryview, max_size: int) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        return None
    _signature, version_command, family_transport, length = _V2_FIXED.unpack_from(data)
    version, command = version_command >> 4, version_command & 0xF
    if version != 2:
        raise ProxyHeaderError("malformed", f"a PROXY v2 signature, then version {version}")
    if command not in (_LOCAL, _PROXY):
        raise ProxyHeaderError(
            "malformed", f"a PROXY v2 header with command {command:#x} (LOCAL or PROXY expected)"
        )
    family, transport = family_transport >> 4, family_transport & 0xF
    if family_transport not in _FAMILY_TRANSPORTS:
        raise ProxyHeaderError(
            "malformed",
            f"a PROXY v2 header with address family and transport {family_transport:#04x}",
        )
    size = V2_FIXED + length
    if size > max_size:
        raise ProxyHeaderError(
            "too-long",
            f"a PROXY v2 header of {size} bytes in all (its length field says {length}), "
            f"more than the {max_size} accepted",
        )
    if len(data) < size:
        return None
    header = bytes(data[:size])
    if command == _LOCAL:
        # The balancer speaking for itself: whatever it says is skipped, the
        # connection's own endpoints are the ones (the specification).
        return ProxyHeader(2, size, None, None, local=True)
    needed, name = _FAMILIES[family]
    if length < needed:
        raise ProxyHeaderError(
            "malformed",
            f"a PROXY v2 header announcing {length} bytes of addresses, "
            f"less than the {needed} an {name} address block needs",
        )
    if transport == 0x2:
        raise ProxyHeaderError(
            "malformed", "a PROXY v2 header for a datagram (UDP) connection, not a stream"
        )
    _tlvs(header, V2_FIXED + needed)
    if family == 0x0:
        return ProxyHeader(2, size, None, None)
    block = header[V2_FIXED:]
    if family == 0x3:
        return ProxyHeader(
            2, size, _unix(block[:_UNIX_PATH]), _unix(block[_UNIX_PATH : 2 * _UNIX_PATH])
        )
    layout = _INET if family == 0x1 else _INET6
    source, destination, source_port, destination_port = layout.unpack_from(block)
    return ProxyHeader(
        2,
        size,
        _address(ipaddress.ip_address(source), source_port),
        _address(ipaddress.ip_address(destination), destination_port),
    )


def _unix(path: bytes) -> str:
    """``unix:PATH``, ``unix:@NAME`` for an abstract name; what is not printable in
    it escaped (a peer chose it: it must not break or forge a line of a log or table)."""
    abstract = path[:1] == b"\0"
    name = path[1:].rstrip(b"\0") if abstract else path.split(b"\0", 1)[0]
    text = name.decode("utf-8", "backslashreplace")
    text = printable(text)
    return "unix:" + ("@" if abstract else "") + text


def _tlvs(header: bytes, offset: int) -> None:
    """Check the TLVs from ``offset`` to the end fill it exactly, and verify a CRC32C."""
    while offset < len(header):
        if len(header) - offset < 3:
            raise ProxyHeaderError("malformed", "a PROXY v2 header ending in a partial TLV")
        kind, length = header[offset], int.from_bytes(header[offset + 1 : offset + 3], "big")
        value = offset + 3
        if value + length > len(header):
            raise ProxyHeaderError(
                "malformed",
                f"a PROXY v2 TLV (type {kind:#04x}) of {length} bytes, past the header's end",
            )
        if kind == PP2_TYPE_CRC32C:
            if length != 4:
                raise ProxyHeaderError("malformed", f"a PROXY v2 CRC32C of {length} bytes, not 4")
            expected = int.from_bytes(header[value : value + 4], "big")
            zeroed = header[:value] + b"\0\0\0\0" + header[value + 4 :]
            if crc32c(zeroed) != expected:
                raise ProxyHeaderError(
                    "checksum", "a PROXY v2 header whose CRC32C does not match its bytes"
                )
        offset = value + length


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as version 2's ``PP2_TYPE_CRC32C`` carries it."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF


# -- encoders: headers as a balancer sends them --------------------------------------


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None = None) -> bytes:
    """A version 1 header: ``TCP4`` or ``TCP6`` from ``source``'s address; ``UNKNOWN``
    for ``None``. ``destination`` defaults to the same family's unspecified address."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    host = ipaddress.ip_address(source[0])
    if destination is None:
        destination = ("0.0.0.0" if host.version == 4 else "::", 0)
    return (
        f"PROXY TCP{host.version} {host} {ipaddress.ip_address(destination[0])} "
        f"{source[1]} {destination[1]}\r\n"
    ).encode("ascii")


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None = None,
    *,
    local: bool = False,
    tlvs: bytes = b"",
    checksum: bool = False,
) -> bytes:
    """A version 2 header: ``PROXY`` over TCP from ``source`` (``UNSPEC`` for ``None``),
    or ``LOCAL``; ``tlvs`` appended as given, then a CRC32C TLV if ``checksum``."""
    block = b""
    family = 0x0
    if source is not None and not local:
        host = ipaddress.ip_address(source[0])
        if destination is None:
            destination = ("0.0.0.0" if host.version == 4 else "::", 0)
        there = ipaddress.ip_address(destination[0])
        layout, family = (_INET, 0x1) if host.version == 4 else (_INET6, 0x2)
        block = layout.pack(host.packed, there.packed, source[1], destination[1])
    block += tlvs
    command = _LOCAL if local else _PROXY
    transport = 0x1 if family else 0x0
    if not checksum:
        return (
            _V2_FIXED.pack(V2_SIGNATURE, 0x20 | command, family << 4 | transport, len(block))
            + block
        )
    block += bytes((PP2_TYPE_CRC32C, 0, 4)) + b"\0\0\0\0"
    header = _V2_FIXED.pack(V2_SIGNATURE, 0x20 | command, family << 4 | transport, len(block))
    header += block
    return header[:-4] + crc32c(header).to_bytes(4, "big")
