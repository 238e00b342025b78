"""Testing framing with triodaemon: a decoder of your own, and a server over real sockets.

Installing triodaemon registers its pytest fixtures; pytest-trio runs the async tests.
Run: pytest examples/test_with_triodaemon.py
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from triodaemon import Framing
from triodaemon.testing import Chunking, all_chunkings, assert_decodes

LINES = Framing()  # "\n"-terminated frames


class MyLineDecoder:
    """The decoder under test: ``feed()`` returns the frames it completed."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        *frames, self.buffer = self.buffer.split(b"\n")
        return frames


def test_decoder_against_every_chunking() -> None:
    frames = [b"hello", b"", b"split\rme", b"world"]
    # Whole, byte at a time, every two-way split, coalesced groupings, random reads;
    # on failure: which chunking, which frame, which offset, which read.
    assert_decodes(MyLineDecoder, all_chunkings(LINES, frames), frames, encode=LINES.encode)


def test_decoder_with_each_chunker(chunker: Callable[[bytes], Iterable[Chunking]]) -> None:
    frames = [b"a", b"bb", b"ccc"]
    wire = b"".join(LINES.encode(frame) for frame in frames)
    assert_decodes(MyLineDecoder, chunker(wire), frames)


@pytest.mark.trio
async def test_echo_over_unix_and_tcp(echo_server) -> None:  # type: ignore[no-untyped-def]
    for transport in ("unix", "tcp"):
        assert await echo_server.echo([b"ping", b"pong"], transport) == [b"ping", b"pong"]


@pytest.mark.trio
async def test_length_prefixed_server(echo_server_factory) -> None:  # type: ignore[no-untyped-def]
    server = await echo_server_factory(Framing("length", max_frame=1024), max_connections=4)
    stream = await server.open_stream("tcp")
    async with stream:
        await stream.send_all(b"\x00\x00\x00\x02hi")  # one frame: a 4-byte length, then "hi"
        assert await stream.receive_some() == b"\x00\x00\x00\x02hi"
