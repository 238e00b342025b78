"""The PROXY protocol parser, sans-I/O: every header whole, a byte at a time and with
the client's stream after it; every way a header can be bad; and properties over
any addresses, TLVs and cut points (hypothesis). The long fuzz run is in fuzz/."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from triodaemon._proxyproto import (
    MAX_HEADER,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    crc32c,
    encode_v1,
    encode_v2,
    parse,
)

#: Headers as balancers send them, and what each says.
VALID: dict[str, tuple[bytes, ProxyHeader]] = {
    "v1 TCP4": (
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 7000\r\n",
        ProxyHeader(1, 44, "203.0.113.7:51000", "10.0.0.1:7000"),
    ),
    "v1 TCP6": (
        b"PROXY TCP6 2001:db8::7 ::1 51000 7000\r\n",
        ProxyHeader(1, 39, "[2001:db8::7]:51000", "[::1]:7000"),
    ),
    "v1 TCP6, longest": (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        ProxyHeader(
            1,
            V1_MAX - 3,  # (the specification's 107 counts "UNKNOWN"-length family names)
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        ),
    ),
    "v1 UNKNOWN": (b"PROXY UNKNOWN\r\n", ProxyHeader(1, 15, None, None)),
    "v1 UNKNOWN with addresses": (
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff whatever\r\n",
        ProxyHeader(1, 64, None, None),
    ),
    "v2 IPv4": (
        encode_v2(("203.0.113.7", 51000), ("10.0.0.1", 7000)),
        ProxyHeader(2, 28, "203.0.113.7:51000", "10.0.0.1:7000"),
    ),
    "v2 IPv6 with a CRC32C and other TLVs": (
        encode_v2(
            ("2001:db8::7", 51000),
            ("::1", 7000),
            tlvs=b"\x05\x00\x03abc\x04\x00\x00",  # a unique id, a NOOP
            checksum=True,
        ),
        ProxyHeader(2, 16 + 36 + 6 + 3 + 7, "[2001:db8::7]:51000", "[::1]:7000"),
    ),
    "v2 LOCAL": (encode_v2(None, local=True), ProxyHeader(2, 16, None, None, local=True)),
    "v2 LOCAL with an address block": (
        # The specification: a receiver skips what LOCAL carries, whatever it is.
        V2_SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12),
        ProxyHeader(2, 28, None, None, local=True),
    ),
    "v2 UNSPEC": (encode_v2(None), ProxyHeader(2, 16, None, None)),
    "v1 IPv4-mapped, as balancers write it": (
        b"PROXY TCP6 ::ffff:127.0.0.1 ::ffff:10.0.0.1 51000 7000\r\n",
        ProxyHeader(1, 56, "[::ffff:127.0.0.1]:51000", "[::ffff:10.0.0.1]:7000"),
    ),
    "v2 Unix, a path with escape codes and an abstract name": (
        V2_SIGNATURE
        + b"\x21\x31\x00\xd8"
        + b"/tmp/x\nconn 9 from 1.2.3.4:5\x1b[2J\x07".ljust(108, b"\0")
        + b"\0lb".ljust(108, b"\0"),
        ProxyHeader(2, 232, "unix:/tmp/x\\nconn 9 from 1.2.3.4:5\\x1b[2J\\x07", "unix:@lb"),
    ),
    "v2 Unix": (
        V2_SIGNATURE
        + b"\x21\x31\x00\xd8"
        + b"/run/client.sock".ljust(108, b"\0")
        + b"/run/lb.sock".ljust(108, b"\0"),
        ProxyHeader(2, 232, "unix:/run/client.sock", "unix:/run/lb.sock"),
    ),
}


@pytest.mark.parametrize("name", list(VALID))
def test_a_valid_header_whole_a_byte_at_a_time_and_with_the_stream_after_it(name: str) -> None:
    data, expected = VALID[name]
    assert parse(data) == expected
    for end in range(len(data)):
        assert parse(data[:end]) is None, end
    assert parse(data + b"hello\n" + V2_SIGNATURE) == expected
    assert parse(bytearray(data)) == expected
    assert parse(memoryview(data + b"x")) == expected


def v2(command: int, family: int, length: int, block: bytes = b"") -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", command, family, length) + block


#: Each bad header: what it is, the kind of error, words of its message, and the
#: shortest prefix already refused (None: refused only once whole).
BAD: dict[str, tuple[bytes, str, str]] = {
    "missing: the client's own bytes": (b"hello\n", "missing", "no PROXY header"),
    "missing: one byte is enough": (b"G", "missing", "began with b'G'"),
    "missing: TLS": (b"\x16\x03\x01\x02\x00", "missing", "no PROXY header"),
    "v1 too long": (b"PROXY UNKNOWN " + b"x" * 100, "too-long", "first 107 bytes"),
    "v1 signature": (b"PROXY\tTCP4", "signature", "broken off"),
    "v1 lower case": (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "missing", "no PROXY header"),
    "v1 LF only": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "malformed", "without \\r"),
    "v1 two spaces": (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "malformed", "one space"),
    "v1 no ports": (b"PROXY TCP4 1.2.3.4 5.6.7.8\r\n", "malformed", "two ports"),
    "v1 TCP5": (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "malformed", "TCP4, TCP6 or UNKNOWN"),
    "v1 family mismatch": (b"PROXY TCP4 ::1 ::1 1 2\r\n", "malformed", "IPv6"),
    "v1 leading zeros": (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "malformed", "01.2.3.4"),
    "v1 IPv6 zone": (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "malformed", "fe80::1%eth0"),
    "v1 a host name": (b"PROXY TCP4 example.com 5.6.7.8 1 2\r\n", "malformed", "example"),
    "v1 port above 65535": (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "malformed", "65536"),
    "v1 port with a sign": (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", "malformed", "+80"),
    "v1 port with a leading zero": (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "malformed", "080"),
    "v1 NUL": (b"PROXY TCP4 1.2.3.4\x00", "malformed", "bytes no header holds"),
    "v1 CR inside": (b"PROXY TCP4\r 1.2.3.4", "malformed", "bytes no header holds"),
    "v1 non-ASCII": (b"PROXY TCP4 1.2.3.\xc4\xb4", "malformed", "bytes no header holds"),
    "v2 bad signature": (b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4), "signature", "broken off"),
    "v2 version 1": (v2(0x11, 0x11, 12, bytes(12)), "malformed", "version 1"),
    "v2 version 3": (v2(0x31, 0x11, 12, bytes(12)), "malformed", "version 3"),
    "v2 command 2": (v2(0x22, 0x11, 12, bytes(12)), "malformed", "command 0x2"),
    "v2 family 4": (v2(0x21, 0x41, 12, bytes(12)), "malformed", "0x41"),
    "v2 transport 3": (v2(0x21, 0x13, 12, bytes(12)), "malformed", "0x13"),
    "v2 IPv4 over UNSPEC": (v2(0x21, 0x10, 12, bytes(12)), "malformed", "0x10"),
    "v2 Unix over UNSPEC": (v2(0x21, 0x30, 216, bytes(216)), "malformed", "0x30"),
    "v2 UNSPEC over a stream": (v2(0x21, 0x01, 0), "malformed", "0x01"),
    "v2 datagram": (v2(0x21, 0x12, 12, bytes(12)), "malformed", "datagram"),
    "v2 length lie: shorter than IPv4's": (v2(0x21, 0x11, 4, bytes(4)), "malformed", "12"),
    "v2 length lie: shorter than IPv6's": (v2(0x21, 0x21, 12, bytes(12)), "malformed", "36"),
    "v2 length lie: shorter than Unix's": (v2(0x21, 0x31, 12, bytes(12)), "malformed", "216"),
    "v2 too long": (v2(0x21, 0x11, 0xFFFF), "too-long", "65551 bytes"),
    "v2 partial TLV": (v2(0x21, 0x11, 14, bytes(14)), "malformed", "partial TLV"),
    "v2 TLV past the end": (
        v2(0x21, 0x11, 17, bytes(12) + b"\x05\x00\x09ab"),
        "malformed",
        "past the header's end",
    ),
    "v2 CRC32C of 3 bytes": (v2(0x21, 0x11, 18, bytes(12) + b"\x03\x00\x03abc"), "malformed", "3"),
    "v2 CRC32C wrong": (
        encode_v2(("1.2.3.4", 5), checksum=True)[:-1] + b"\x00",
        "checksum",
        "CRC32C",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_header_is_refused_with_what_is_wrong(name: str) -> None:
    data, kind, words = BAD[name]
    with pytest.raises(ProxyHeaderError) as raised:
        parse(data)
    assert raised.value.kind == kind
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)


def test_an_oversized_v2_header_is_refused_on_its_16th_byte() -> None:
    # Before any of its rest is held: the length field is checked first.
    announced = v2(0x21, 0x11, MAX_HEADER - 16 + 1)
    assert len(announced) == 16
    assert parse(announced[:15]) is None
    with pytest.raises(ProxyHeaderError, match=f"of {MAX_HEADER + 1} bytes in all"):
        parse(announced)
    assert parse(v2(0x21, 0x11, MAX_HEADER - 16)) is None  # (the longest accepted: wait)
    with pytest.raises(ProxyHeaderError, match="more than the 200 accepted"):
        parse(v2(0x21, 0x11, 200), max_size=200)


def test_garbage_is_refused_on_its_first_byte() -> None:
    # A client that speaks first, without a balancer in between, costs one read.
    for first in range(256):
        data = bytes([first])
        if data in (b"P", b"\r"):
            assert parse(data) is None
        else:
            with pytest.raises(ProxyHeaderError):
                parse(data)


def test_the_limit_must_leave_room_for_a_v1_header() -> None:
    with pytest.raises(ValueError, match="at least 107"):
        parse(b"", max_size=106)


def test_crc32c_is_castagnolis() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert crc32c(b"") == 0


ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
tlv = st.tuples(st.integers(0, 255).filter(lambda kind: kind != 0x03), st.binary(max_size=40))


def said(host: str, port: int) -> str:
    """An address as the parser says it: IPv4-mapped ones as ``::ffff:1.2.3.4``."""
    mapped = ipaddress.ip_address(host)
    if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
        host = f"::ffff:{mapped.ipv4_mapped}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@given(
    family=st.sampled_from([ipv4, ipv6]).flatmap(lambda hosts: st.tuples(hosts, hosts)),
    source_port=ports,
    destination_port=ports,
    version=st.sampled_from([1, 2]),
    tlvs=st.lists(tlv, max_size=4),
    checksum=st.booleans(),
    after=st.binary(max_size=64),
    cut=st.integers(0, 200),
)
def test_any_header_parses_to_its_addresses_whatever_follows_and_wherever_it_is_cut(
    family: tuple[str, str],
    source_port: int,
    destination_port: int,
    version: int,
    tlvs: list[tuple[int, bytes]],
    checksum: bool,
    after: bytes,
    cut: int,
) -> None:
    source, destination = (family[0], source_port), (family[1], destination_port)
    if version == 1:
        header = encode_v1(source, destination)
    else:
        block = b"".join(
            bytes([kind]) + len(value).to_bytes(2, "big") + value for kind, value in tlvs
        )
        header = encode_v2(source, destination, tlvs=block, checksum=checksum)
    parsed = parse(header + after)
    assert parsed is not None
    assert parsed.size == len(header)
    assert parsed.source == said(*source)
    assert parsed.destination == said(*destination)
    assert parse(header[: min(cut, len(header) - 1)]) is None


@given(data=st.binary(max_size=300))
def test_any_bytes_give_a_header_within_them_need_more_or_one_error(data: bytes) -> None:
    try:
        parsed = parse(data)
    except ProxyHeaderError as exc:
        kind = exc.kind
    else:
        assert parsed is None or parsed.size <= len(data)
        return
    assert kind in ("missing", "too-long", "signature", "malformed", "checksum")


@given(
    header=st.sampled_from([data for data, _ in VALID.values()]),
    position=st.integers(0, 300),
    value=st.integers(0, 255),
)
def test_any_one_byte_changed_gives_a_header_need_more_or_one_error(
    header: bytes, position: int, value: int
) -> None:
    mutated = bytearray(header)
    mutated[position % len(header)] = value
    try:
        parsed = parse(mutated)
    except ProxyHeaderError:
        return
    assert parsed is None or parsed.size <= len(mutated)
