"""The public framing harness: chunkings, assertions, scripted streams, strategies."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from triodaemon import Connection, ConnectionInfo, Framing
from triodaemon.testing import (
    CHUNKERS,
    FramingMismatch,
    ScriptedStream,
    all_chunkings,
    assert_decodes,
    boundary_offsets,
    boundary_splits,
    byte_at_a_time,
    coalesced,
    random_chunkings,
    scripted_stream_pair,
    splits_at,
    two_way_splits,
    whole,
)
from triodaemon.testing.strategies import chunkings, framed_streams, frames

from .test_framing import FRAMINGS, SAMPLES


def test_basic_chunkings() -> None:
    data = b"abcd"
    assert list(whole(data)) == [[b"abcd"]]
    assert list(two_way_splits(data)) == [[b"a", b"bcd"], [b"ab", b"cd"], [b"abc", b"d"]]
    assert list(byte_at_a_time(data)) == [[b"a", b"b", b"c", b"d"]]
    assert list(splits_at(data, [0, 2, 2, 4, 9])) == [[b"ab", b"cd"]]
    assert list(whole(b"")) == [[]]


def test_coalesced_yields_every_grouping() -> None:
    groupings = list(coalesced([b"a", b"b", b"c"]))
    assert len(groupings) == 4
    assert sorted(groupings) == sorted([[b"a", b"b", b"c"], [b"ab", b"c"], [b"a", b"bc"], [b"abc"]])


def test_coalesced_samples_when_there_are_too_many() -> None:
    pieces = [bytes([i]) for i in range(40)]
    groupings = list(coalesced(pieces, limit=10))
    assert len(groupings) == 10
    assert groupings[0] == [b"".join(pieces)]
    assert groupings[1] == pieces
    assert all(b"".join(g) == b"".join(pieces) for g in groupings)
    assert groupings == list(coalesced(pieces, limit=10))  # repeatable


def test_random_chunkings_are_repeatable_and_complete() -> None:
    data = bytes(range(200))
    first = list(random_chunkings(data, count=20, seed=7))
    assert first == list(random_chunkings(data, count=20, seed=7))
    assert first != list(random_chunkings(data, count=20, seed=8))
    assert all(b"".join(chunks) == data and all(chunks) for chunks in first)
    assert all(max(map(len, c)) <= 3 for c in random_chunkings(data, count=5, max_chunk=3))


def test_boundary_offsets_fall_inside_delimiters_and_headers() -> None:
    crlf = Framing("delimiter", delimiter=b"\r\n")
    # b"ab\r\n" + b"c\r\n": the \r\n pairs start at 2 and 5; split between \r and \n.
    assert {3, 6} <= set(boundary_offsets(crlf, [b"ab", b"c"]))
    length = Framing("length")
    # Header bytes 0-3, payload 4-5, next header 6-9.
    assert {1, 2, 3, 4, 7, 8, 9, 10} <= set(boundary_offsets(length, [b"xy", b"z"]))
    for chunks in boundary_splits(length, [b"xy", b"z"]):
        assert b"".join(chunks) == length.encode(b"xy") + length.encode(b"z")


@pytest.mark.parametrize("name", FRAMINGS)
def test_our_decoders_pass_every_chunking(name: str) -> None:
    framing = FRAMINGS[name]
    checked = assert_decodes(
        framing.decoder, all_chunkings(framing, SAMPLES[name]), SAMPLES[name], encode=framing.encode
    )
    assert checked > 50


class OneReadOneMessage:
    """The classic bug: every read is taken for one whole message."""

    def feed(self, data: bytes) -> list[bytes]:
        return [data.removesuffix(b"\n")]


class FirstReadOnly:
    """Another: only the first read is ever looked at."""

    def __init__(self) -> None:
        self.reads = 0

    def feed(self, data: bytes) -> list[bytes]:
        self.reads += 1
        return data.split(b"\n")[:-1] if self.reads == 1 else []


def test_assert_decodes_names_the_chunking_frame_offset_and_read() -> None:
    framing = Framing()
    expected = [b"hello", b"world"]
    with pytest.raises(FramingMismatch) as caught:
        assert_decodes(
            OneReadOneMessage, all_chunkings(framing, expected), expected, encode=framing.encode
        )
    assert str(caught.value) == (
        "whole (1 reads of sizes 12): frame 1 of 2 differs: expected b'hello', "
        "got b'hello\\nworld'; it starts at stream offset 0, in read 1 of 1 at its byte 0"
    )


def test_assert_decodes_reports_frames_that_never_came() -> None:
    framing = Framing()
    expected = [b"ab", b"cd"]
    chunkings_ = [[b"ab\n", b"cd\n"]]
    with pytest.raises(
        FramingMismatch,
        match=r"got 1 of 2 frames; frame 2 \(b'cd'\) never came; "
        r"it starts at stream offset 3, in read 2 of 2 at its byte 0",
    ):
        assert_decodes(FirstReadOnly, chunkings_, expected, encode=framing.encode)


def test_assert_decodes_reports_decoder_exceptions_and_extra_frames() -> None:
    framing = Framing(max_frame=3)
    with pytest.raises(FramingMismatch, match="the decoder raised FrameTooLarge"):
        assert_decodes(framing.decoder, [[b"toolong\n"]], [b"toolong"])
    with pytest.raises(
        FramingMismatch, match="got 2 frames, expected 1; the first extra one is b'b'"
    ):
        assert_decodes(Framing().decoder, [[b"a\nb\n"]], [b"a"])


def test_assert_decodes_checks_the_end_of_stream() -> None:
    with pytest.raises(FramingMismatch, match="peer closed mid-frame"):
        assert_decodes(Framing().decoder, [[b"a\nb"]], [b"a"])
    assert assert_decodes(Framing().decoder, [[b"a\nb"]], [b"a"], eof=False) == 1


async def test_scripted_stream_delivers_the_script(autojump_clock: trio.testing.MockClock) -> None:
    client, server = scripted_stream_pair([1, 3], pause=0.5)
    await client.send_all(b"abcdefghi")
    start = trio.current_time()
    reads = [await server.receive_some() for _ in range(5)]
    assert reads == [b"a", b"bcd", b"e", b"fgh", b"i"]
    assert trio.current_time() - start == pytest.approx(2.5)
    await client.send_eof()
    assert await server.receive_some() == b""


async def test_scripted_stream_is_never_waiting_for_bytes_not_written() -> None:
    client, server = scripted_stream_pair([100])
    with trio.fail_after(5):
        await client.send_all(b"short")
        assert await server.receive_some() == b"short"


async def test_our_connection_survives_hostile_delivery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    framing = Framing("length", length_bytes=2)
    wire = b"".join(framing.encode(p) for p in (b"one", b"", b"three"))
    for chunks in list(byte_at_a_time(wire)) + list(
        boundary_splits(framing, [b"one", b"", b"three"])
    ):
        client, raw_server = trio.testing.memory_stream_pair()
        server = ScriptedStream.from_chunking(raw_server, chunks, pause=0.01)
        connection = Connection(server, ConnectionInfo(1, "test", "peer"), framing)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run)
            await client.send_all(wire)
            await client.send_eof()
            echoed = b""
            while data := await client.receive_some():
                echoed += data
        assert echoed == wire
        assert server.reads == chunks


def test_chunkers_are_named() -> None:
    assert set(CHUNKERS) == {"whole", "two-way-splits", "byte-at-a-time", "random"}


@pytest.mark.parametrize("name", FRAMINGS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_strategies_make_valid_streams(name: str, data: st.DataObject) -> None:
    framing = FRAMINGS[name]
    payloads, chunks = data.draw(framed_streams(framing))
    assert b"".join(chunks) == b"".join(framing.encode(p) for p in payloads)
    assert all(chunks)
    assert_decodes(framing.decoder, [chunks], payloads)


@settings(max_examples=30, deadline=None)
@given(frames(Framing("delimiter", delimiter=b"\r\n", max_frame=50), max_size=8))
def test_frame_strategy_respects_the_limit_and_the_delimiter(payloads: list[bytes]) -> None:
    assert all(len(p) <= 50 and b"\r\n" not in p for p in payloads)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_chunking_strategy(data: st.DataObject) -> None:
    blob = data.draw(st.binary(max_size=100))
    chunks = data.draw(chunkings(blob))
    assert b"".join(chunks) == blob
    assert all(chunks)
