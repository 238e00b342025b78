"""Sans-I/O framing: every strategy, every split, every grouping, the limits."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triodaemon import (
    Decoder,
    FrameTooLarge,
    Framing,
    FramingError,
    IncompleteFrame,
    MalformedHeader,
    parse_delimiter,
)
from triodaemon._decoders import DelimiterDecoder, VarintDecoder
from triodaemon.testing.strategies import chunkings, framed_streams

FRAMINGS = {
    "line": Framing(),
    "crlf": Framing("delimiter", delimiter=b"\r\n"),
    "record-sep": Framing("delimiter", delimiter=b"\x1e"),
    "triple": Framing("delimiter", delimiter=b"END"),
    "length4": Framing("length"),
    "length1": Framing("length", length_bytes=1),
    "length2-little": Framing("length", length_bytes=2, byte_order="little"),
    "length8-incl": Framing("length", length_bytes=8, length_includes_header=True),
    "varint": Framing("varint"),
    "fixed": Framing("fixed", frame_size=3),
}

SAMPLES = {
    "line": [b"hello", b"", b"world", b"x" * 200],
    "crlf": [b"a\rb", b"", b"\n\n", b"last\r"],
    "record-sep": [b"one", b"", b"two"],
    "triple": [b"EN", b"E", b"", b"ENd", b"xEN"],
    "length4": [b"hello", b"", b"\x00\x00\x00\x05", b"y" * 300],
    "length1": [b"a", b"", b"b" * 255],
    "length2-little": [b"abc", b"", b"z" * 1000],
    "length8-incl": [b"", b"payload", b"\xff" * 9],
    "varint": [b"", b"a", b"b" * 127, b"c" * 128, b"d" * 300],
    "fixed": [b"abc", b"\n\n\n", b"\x00\x01\x02"],
}


def decode(framing: Framing, chunks: Sequence[bytes], *, eof: bool = True) -> list[bytes]:
    decoder = framing.decoder()
    frames = []
    for chunk in chunks:
        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    if eof:
        decoder.feed_eof()
    return frames


def groupings(items: Sequence[bytes]) -> Iterator[list[bytes]]:
    """Every way to join consecutive items: 2 ** (len - 1) chunk lists."""
    for mask in range(1 << max(len(items) - 1, 0)):
        chunks = [items[0]]
        for index, item in enumerate(items[1:]):
            if mask >> index & 1:
                chunks[-1] += item
            else:
                chunks.append(item)
        yield chunks


@pytest.mark.parametrize("name", FRAMINGS)
def test_every_split_and_grouping_decodes_exactly(name: str) -> None:
    framing = FRAMINGS[name]
    frames = SAMPLES[name]
    wire = [framing.encode(frame) for frame in frames]
    stream = b"".join(wire)
    assert decode(framing, [stream]) == frames
    for index in range(len(stream) + 1):
        assert decode(framing, [stream[:index], stream[index:]]) == frames, index
    for first in range(0, len(stream), 7):
        for second in range(first, len(stream), 5):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert decode(framing, chunks) == frames, (first, second)
    assert decode(framing, [bytes([b]) for b in stream]) == frames
    for chunks in groupings(wire):
        assert decode(framing, chunks) == frames


@pytest.mark.parametrize("name", FRAMINGS)
def test_byte_at_a_time_yields_nothing_until_the_last_byte(name: str) -> None:
    framing = FRAMINGS[name]
    wire = framing.encode(SAMPLES[name][0])
    decoder = framing.decoder()
    for byte in wire[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_frame() is None
    decoder.feed(wire[-1:])
    assert decoder.next_frame() == SAMPLES[name][0]
    assert decoder.buffered == 0


@pytest.mark.parametrize("name", FRAMINGS)
def test_eof_at_every_prefix(name: str) -> None:
    framing = FRAMINGS[name]
    wire = [framing.encode(frame) for frame in SAMPLES[name]]
    stream = b"".join(wire)
    boundaries = {0}
    for part in wire:
        boundaries.add(max(boundaries) + len(part))
    for index in range(len(stream) + 1):
        if index in boundaries:
            decode(framing, [stream[:index]])
        else:
            with pytest.raises(IncompleteFrame) as caught:
                decode(framing, [stream[:index]])
            assert caught.value.received > 0
            assert "peer closed mid-" in str(caught.value)


@pytest.mark.parametrize("name", FRAMINGS)
def test_trailing_partial_data_stays_pending(name: str) -> None:
    framing = FRAMINGS[name]
    first, second = SAMPLES[name][0], SAMPLES[name][-1]
    tail = framing.encode(second)[:-1]
    decoder = framing.decoder()
    decoder.feed(framing.encode(first) + tail)
    assert decoder.next_frame() == first
    assert decoder.next_frame() is None
    assert decoder.pending() == tail
    assert decoder.buffered == len(tail)


def test_raw_chunks_are_bounded_by_the_limit() -> None:
    decoder = Framing("raw", max_frame=4).decoder()
    decoder.feed(b"0123456789")
    assert [decoder.next_frame() for _ in range(4)] == [b"0123", b"4567", b"89", None]


def test_raw_passes_chunks_through() -> None:
    decoder = Framing("raw").decoder()
    assert decoder.next_frame() is None
    decoder.feed(b"ab")
    decoder.feed(b"c\n")
    assert decoder.next_frame() == b"abc\n"
    assert decoder.next_frame() is None
    assert decoder.buffered == 0
    decoder.feed_eof()


def test_incomplete_messages_say_how_far_the_frame_got() -> None:
    framing = Framing("length")
    decoder = framing.decoder()
    decoder.feed(framing.encode(b"0123456789")[:7])
    with pytest.raises(IncompleteFrame, match=r"mid-frame \(3 of 10 bytes\)"):
        decoder.feed_eof()
    decoder = framing.decoder()
    decoder.feed(b"\x00\x00")
    with pytest.raises(IncompleteFrame, match=r"mid-header \(2 of 4 header bytes\)"):
        decoder.feed_eof()
    decoder = Framing().decoder()
    decoder.feed(b"abc")
    with pytest.raises(IncompleteFrame, match=r"3 bytes without a delimiter"):
        decoder.feed_eof()


# --- limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["line", "crlf", "triple"])
def test_delimiter_limit_is_exact(name: str) -> None:
    base = FRAMINGS[name]
    framing = Framing(base.kind, delimiter=base.delimiter, max_frame=10)
    assert decode(framing, [b"x" * 10 + base.delimiter]) == [b"x" * 10]
    with pytest.raises(FrameTooLarge):
        decode(framing, [b"x" * 11 + base.delimiter])


def test_delimiter_search_fails_as_soon_as_more_than_the_limit_is_held() -> None:
    decoder = DelimiterDecoder(10, delimiter=b"\r\n")
    decoder.feed(b"x" * 10 + b"\r")  # could still be a 10-byte frame
    assert decoder.next_frame() is None
    decoder.feed(b"y")  # now it cannot
    with pytest.raises(FrameTooLarge, match="12 bytes without a delimiter"):
        decoder.next_frame()


@pytest.mark.parametrize(
    ("delimiter", "tail", "too_long"),
    [
        (b"\r\n", b"x", True),  # 11 bytes, none of them a delimiter's start
        (b"\r\n", b"\r", False),  # 10 bytes, then maybe the delimiter
        (b"abab", b"y", True),
        (b"abab", b"a", False),
        (b"abab", b"aba", False),  # 10 bytes and "aba": one byte short of "abab"
        (b"abab", b"abx", True),
        (b"END", b"EN", False),
        (b"END", b"NE", True),
    ],
)
def test_a_long_delimiter_gives_no_slack_past_the_limit(
    delimiter: bytes, tail: bytes, too_long: bool
) -> None:
    # More than the limit held is too long at once, unless what is past it may be
    # the start of the delimiter.
    decoder = DelimiterDecoder(10, delimiter=delimiter)
    decoder.feed(b"x" * 10 + tail)
    if too_long:
        with pytest.raises(FrameTooLarge, match=f"{10 + len(tail)} bytes without a delimiter"):
            decoder.next_frame()
    else:
        assert decoder.next_frame() is None
        decoder.feed(delimiter[len(tail) :] if delimiter.startswith(tail) else delimiter)
        assert decoder.next_frame() == b"x" * 10 + (b"" if delimiter.startswith(tail) else tail)


def test_delimiter_scan_does_not_rescan() -> None:
    decoder = DelimiterDecoder(10**6, delimiter=b"\n")
    for _ in range(1000):
        decoder.feed(b"x" * 100)
        assert decoder.next_frame() is None
    assert decoder._search >= 100 * 1000 - 1  # the scan resumed where it stopped


def test_length_header_over_the_limit_fails_before_the_body() -> None:
    decoder = Framing("length", max_frame=100).decoder()
    decoder.feed((101).to_bytes(4, "big"))
    with pytest.raises(FrameTooLarge, match="announces a 101-byte frame"):
        decoder.next_frame()
    decoder = Framing("length", max_frame=100).decoder()
    decoder.feed((100).to_bytes(4, "big") + b"z" * 100)
    assert decoder.next_frame() == b"z" * 100


def test_length_including_header_smaller_than_header_is_malformed() -> None:
    decoder = Framing("length", length_bytes=2, length_includes_header=True).decoder()
    decoder.feed(b"\x00\x01")
    with pytest.raises(MalformedHeader, match="less than the 2-byte header"):
        decoder.next_frame()


def test_varint_over_the_limit_fails_while_the_header_is_unfinished() -> None:
    decoder = VarintDecoder(1000)
    decoder.feed(b"\xff\xff")  # at least 16383, and the varint goes on
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_runaway_varint_is_malformed() -> None:
    decoder = VarintDecoder(2**70)
    decoder.feed(b"\x80" * 10)
    with pytest.raises(MalformedHeader, match="past 10 bytes"):
        decoder.next_frame()


def test_decoder_stays_failed() -> None:
    decoder = Framing("length", max_frame=1).decoder()
    decoder.feed(b"\x00\x00\x00\x09")
    for _ in range(2):
        with pytest.raises(FrameTooLarge):
            decoder.next_frame()


@pytest.mark.parametrize(
    ("framing", "payload", "message"),
    [
        (Framing(), b"a\nb", "contains the delimiter"),
        (Framing("delimiter", delimiter=b"abab"), b"xab", "cut short"),
        (Framing(max_frame=2), b"abc", "exceeds the frame limit"),
        (Framing("length", length_bytes=1), b"x" * 256, "does not fit"),
        (Framing("fixed", frame_size=2), b"abc", "2-byte frames"),
    ],
)
def test_encode_refuses_what_cannot_be_framed(
    framing: Framing, payload: bytes, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        framing.encode(payload)


def test_varint_encoding_matches_protobuf() -> None:
    assert Framing("varint").encode(b"x" * 300)[:2] == b"\xac\x02"
    assert Framing("varint").encode(b"")[:1] == b"\x00"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "line", "delimiter": b"\r\n"}, "line framing"),
        ({"kind": "delimiter", "delimiter": b""}, "must not be empty"),
        ({"kind": "fixed"}, "frame size"),
        ({"kind": "fixed", "frame_size": 20, "max_frame": 10}, "exceeds"),
        ({"kind": "length", "frame_size": 3}, "only to fixed"),
    ],
)
def test_framing_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Framing(**kwargs)  # type: ignore[arg-type]


def test_framing_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="kind"):
        Framing("json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="length_bytes"):
        Framing("length", length_bytes=3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\n", b"\n"),
        (r"\r\n", b"\r\n"),
        (r"\0", b"\0"),
        (r"\x1e", b"\x1e"),
        (r"\\", b"\\"),
        ("END", b"END"),
        ("é", "é".encode()),
    ],
)
def test_parse_delimiter(text: str, expected: bytes) -> None:
    assert parse_delimiter(text) == expected


@pytest.mark.parametrize("text", ["", "\\", r"\q", r"\x1", r"\xzz"])
def test_parse_delimiter_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="delimiter"):
        parse_delimiter(text)


# --- properties -------------------------------------------------------------------------


@pytest.mark.parametrize("name", FRAMINGS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_property_any_chunking_decodes_exactly(name: str, data: st.DataObject) -> None:
    framing = FRAMINGS[name]
    frames, chunks = data.draw(framed_streams(framing))
    assert decode(framing, chunks) == frames


@settings(max_examples=200, deadline=None)
@given(noise=st.binary(max_size=64), data=st.data())
def test_property_garbage_only_raises_framing_errors(noise: bytes, data: st.DataObject) -> None:
    chunks = data.draw(chunkings(noise))
    for framing in FRAMINGS.values():
        limited = attrs.evolve(framing, max_frame=16)
        decoder = limited.decoder()
        try:
            for chunk in chunks:
                decoder.feed(chunk)
                while (frame := decoder.next_frame()) is not None:
                    assert len(frame) <= 16
                # Never more than the limit plus one read is held.
                assert decoder.buffered <= 16 + 10 + len(chunk)
            decoder.feed_eof()
        except FramingError:
            pass


@pytest.mark.parametrize(
    ("framing", "largest"),
    [
        (Framing(max_frame=1000), 1000),
        (Framing("length", length_bytes=1), 255),
        (Framing("length", length_bytes=1, length_includes_header=True), 254),
        (Framing("length", length_bytes=2, max_frame=100), 100),
        (Framing("fixed", frame_size=7), 7),
    ],
)
def test_largest_payload(framing: Framing, largest: int) -> None:
    assert framing.largest_payload == largest
    framing.encode(b"x" * largest)
    with pytest.raises(ValueError, match="exceeds|does not fit|fixed framing needs"):
        framing.encode(b"x" * (largest + 1))


#: What a reused receive buffer holds after the bytes of the last read: delimiters
#: and plausible length headers, so a decoder that looks past ``end`` is caught.
JUNK = b"\n\x00\x00\x00\x01a\r\n\x02" * 4

#: How frames are taken after each chunk: ``feed`` + ``take_frames``, ``feed_and_take``
#: of the chunk, or ``feed_and_take(buffer, end)`` of the chunk read into a reused
#: buffer with junk after it (as the daemon reads a socket).
TAKES = ("feed", "combined", "buffer")


def take(decoder: Decoder, chunk: bytes, how: str, buffer: bytearray) -> tuple[bytes, int]:
    """One chunk's complete frames, taken ``how`` (one of :data:`TAKES`)."""
    taken: bytes | bytearray | memoryview
    if how == "feed":
        decoder.feed(chunk)
        taken, n = decoder.take_frames()
    elif how == "combined":
        taken, n = decoder.feed_and_take(chunk)
    else:
        buffer[: len(chunk) + len(JUNK)] = chunk + JUNK  # never resized: views may be alive
        taken, n = decoder.feed_and_take(buffer, len(chunk))
    return bytes(taken), n  # a copy before the buffer is read into again


def take_all(framing: Framing, chunks: Sequence[bytes], how: str = "feed") -> tuple[bytes, int]:
    """Take frames after every chunk, ``how`` (one of :data:`TAKES`)."""
    decoder = framing.decoder()
    buffer = bytearray(sum(map(len, chunks)) + len(JUNK))
    wire = b""
    count = 0
    for chunk in chunks:
        taken, n = take(decoder, chunk, how, buffer)
        wire += taken
        count += n
        assert decoder.error is None
    return wire, count


@pytest.mark.parametrize("name", [*FRAMINGS, "overlapping"])
def test_take_frames_returns_the_wire_bytes_of_complete_frames(name: str) -> None:
    framing = FRAMINGS.get(name) or Framing("delimiter", delimiter=b"aXa")
    frames = SAMPLES.get(name) or [b"", b"b", b"Xa", b"Xb"]
    stream = b"".join(framing.encode(frame) for frame in frames)
    for how in TAKES:
        for index in range(len(stream) + 1):
            chunks = [stream[:index], stream[index:]]
            assert take_all(framing, chunks, how) == (stream, len(frames))
        chunks = [bytes([b]) for b in stream]
        assert take_all(framing, chunks, how) == (stream, len(frames))


@pytest.mark.parametrize("name", FRAMINGS)
def test_feed_and_take_returns_whole_frames_uncopied(name: str) -> None:
    framing = FRAMINGS[name]
    stream = b"".join(framing.encode(frame) for frame in SAMPLES[name])
    decoder = framing.decoder()
    wire, count = decoder.feed_and_take(stream)
    assert count == len(SAMPLES[name])
    if name not in ("triple", "varint", "fixed"):  # these take the buffered path
        assert wire is stream
    assert wire == stream
    assert decoder.buffered == 0
    # Read into a reused buffer: a view of the buffer itself comes back.
    buffer = bytearray(stream + JUNK)
    wire, count = decoder.feed_and_take(buffer, len(stream))
    assert count == len(SAMPLES[name])
    if name not in ("triple", "varint", "fixed"):
        assert isinstance(wire, memoryview)
        assert wire.obj is buffer
    assert bytes(wire) == stream
    assert decoder.buffered == 0


@pytest.mark.parametrize("name", FRAMINGS)
def test_feed_and_take_returns_frames_that_came_in_pieces_as_a_view_of_the_decoder(
    name: str,
) -> None:
    framing = FRAMINGS[name]
    stream = b"".join(framing.encode(frame) for frame in SAMPLES[name])
    decoder = framing.decoder()
    head, count = decoder.feed_and_take(stream[:-1])
    assert count == len(SAMPLES[name]) - 1
    assert bytes(head) == stream[: len(head)]
    tail = bytearray(stream[-1:])
    wire, count = decoder.feed_and_take(tail)
    assert count == 1
    # The last frame, held in the decoder since the first read, is not copied out.
    assert isinstance(wire, memoryview)
    assert wire.obj is not tail
    assert bytes(wire) == stream[len(head) :]


@pytest.mark.parametrize("name", FRAMINGS)
def test_a_view_of_the_decoder_keeps_its_bytes_while_the_decoder_is_fed(name: str) -> None:
    framing = FRAMINGS[name]
    frames = SAMPLES[name]
    stream = b"".join(framing.encode(frame) for frame in frames) * 2
    decoder = framing.decoder()
    views: list[tuple[memoryview, bytes]] = []
    taken = b""
    # One byte at a time: every frame is assembled in the decoder, and every
    # view of it is kept alive through all the feeds that follow.
    for offset in range(len(stream)):
        chunk = stream[offset : offset + 1]
        wire, count = decoder.feed_and_take(chunk)
        if count and wire is not chunk:  # a frame assembled in the decoder's buffer
            assert isinstance(wire, memoryview)
            views.append((wire, bytes(wire)))
        taken += bytes(wire)
        assert all(bytes(view) == seen for view, seen in views)
    assert taken == stream
    # Every frame of more than one byte was assembled in the decoder (varint: all).
    assert len(views) >= 2 * sum(len(framing.encode(frame)) > 1 for frame in frames)


@pytest.mark.parametrize(
    ("framing", "stream"),
    [
        (Framing(max_frame=4), b"ok\nfine\n" + b"x" * 10),
        (Framing(max_frame=4), b"ok\n" + b"x" * 6 + b"\n"),
        (Framing("length", max_frame=3), b"\x00\x00\x00\x01a\x00\x00\x00\x09"),
        (Framing("length", length_bytes=2, length_includes_header=True), b"\x00\x03a\x00\x01"),
        (Framing("length", length_bytes=1), b"\x02ab\x05abc"),
    ],
)
def test_feed_and_take_agrees_with_feed_then_take_frames(framing: Framing, stream: bytes) -> None:
    # Every two-way split, so the fast path meets errors and unfinished frames
    # both with nothing held and with something held.
    for index in range(len(stream) + 1):
        outcomes = []
        for how in TAKES:
            decoder = framing.decoder()
            buffer = bytearray(len(stream) + len(JUNK))
            wire, count = b"", 0
            for chunk in (stream[:index], stream[index:]):
                taken, n = take(decoder, chunk, how, buffer)
                wire, count = wire + taken, count + n
            outcomes.append((wire, count, repr(decoder.error), decoder.pending()))
        assert outcomes[0] == outcomes[1] == outcomes[2], f"split at {index}"


@pytest.mark.parametrize(
    ("delimiter", "stream", "frames"),
    [
        (b"\r\n", b"a\r\nb\n", b"a\r\n"),  # ends with the delimiter's last byte only
        (b"aXa", b"aXaXa", b"aXa"),  # ends with a delimiter that overlaps the one before
    ],
)
def test_feed_and_take_takes_no_shortcut_on_a_read_that_only_seems_to_end_a_frame(
    delimiter: bytes, stream: bytes, frames: bytes
) -> None:
    for how in ("combined", "buffer"):
        decoder = Framing("delimiter", delimiter=delimiter).decoder()
        assert take(decoder, stream, how, bytearray(64)) == (frames, 1)
        assert decoder.pending() == stream[len(frames) :]


@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n", b"abab", b"aa"])
def test_take_frames_fast_path_agrees_with_next_frame(delimiter: bytes) -> None:
    framing = Framing("delimiter", delimiter=delimiter, max_frame=1000)
    data = b"aaab\nab\r\nabababab\naaaa" * 3
    decoder = framing.decoder()
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    fast = framing.decoder()
    fast.feed(data)
    wire, count = fast.take_frames()
    assert count == len(frames)
    assert wire == b"".join(frame + delimiter for frame in frames)
    assert fast.pending() == decoder.pending()


def test_take_frames_stops_at_a_framing_error() -> None:
    framing = Framing(max_frame=4)
    decoder = framing.decoder()
    decoder.feed(b"ok\nfine\n" + b"x" * 10)
    assert decoder.take_frames() == (b"ok\nfine\n", 2)
    assert isinstance(decoder.error, FrameTooLarge)
    assert decoder.take_frames() == (b"", 0)
    decoder = Framing("length", max_frame=3).decoder()
    decoder.feed(b"\x00\x00\x00\x01a\x00\x00\x00\x09")
    assert decoder.take_frames() == (b"\x00\x00\x00\x01a", 1)
    assert isinstance(decoder.error, FrameTooLarge)


@pytest.mark.parametrize("name", FRAMINGS)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_property_take_frames(name: str, data: st.DataObject) -> None:
    framing = FRAMINGS[name]
    frames, chunks = data.draw(framed_streams(framing))
    stream = b"".join(chunks)
    for how in TAKES:
        assert take_all(framing, chunks, how) == (stream, len(frames))


@pytest.mark.parametrize(
    "framing",
    [
        Framing(),
        Framing("delimiter", delimiter=b"\r\n", max_frame=7),
        Framing("length", length_bytes=2, byte_order="little", length_includes_header=True),
        Framing("varint"),
        Framing("fixed", frame_size=3),
        Framing("raw"),
    ],
)
def test_a_framing_written_as_json_reads_back_the_same(framing: Framing) -> None:
    record = framing.to_json()
    assert json.loads(json.dumps(record)) == record
    assert Framing.from_json(record) == framing


@pytest.mark.parametrize(
    "record",
    [
        None,
        [],
        {},
        {"kind": "line"},  # no delimiter
        {**Framing().to_json(), "delimiter": "zz"},
        {**Framing().to_json(), "kind": "morse"},
        {**Framing().to_json(), "colour": "red"},
        {**Framing().to_json(), "max_frame": 0},
    ],
)
def test_anything_but_a_framing_is_a_value_error(record: object) -> None:
    with pytest.raises(ValueError, match="not a framing"):
        Framing.from_json(record)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("length_includes_header", "false", 'expected true or false, got the string "false"'),
        ("length_bytes", True, "expected an integer from 0 to 2**64-1, got true"),
        ("max_frame", 1.5, "expected an integer from 0 to 2**64-1, got the number 1.5"),
        ("delimiter", "0a 0a", 'expected bytes in hex digits, got the string "0a 0a"'),
        ("byte_order", "middle", 'expected one of "big", "little", got the string "middle"'),
    ],
)
def test_a_framing_read_from_json_is_taken_only_as_written(
    field: str, value: object, message: str
) -> None:
    # What JSON holds is another process's or a file's: nothing is converted.
    record = {**Framing("length").to_json(), field: value}
    with pytest.raises(ValueError, match="^not a framing: ") as caught:
        Framing.from_json(record)
    assert str(caught.value) == f"not a framing: framing.{field}: {message}"
