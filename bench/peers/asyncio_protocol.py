"""Peer: an asyncio Protocol echo server (the fastest Python shape), on asyncio or uvloop.

Written as a fast ``Protocol`` is written: each ``data_received`` echoes the received
chunk itself with one ``transport.write`` when it ends on a frame boundary (the common
case under pipelined load: no copy at all), or a ``memoryview`` of its complete frames
when it does not; only the incomplete tail is copied, once, into a ``bytearray``. The
read that completes a pending frame writes the held bytes, then the view of the new
ones, and leaves the held ``bytearray`` to the transport, which may keep it: a new one
takes its place. Two writes, not one ``writelines``: CPython 3.11's asyncio transports
join what ``writelines`` is given into a new ``bytes`` first (S4 measured 2-3x slower
so), and on uvloop the two writes measured the same as one ``writelines``. Frames
are limited to 1 MiB, like triodaemon in the suite; only an incomplete frame can be
that long (a read is at most 256 KiB), so the check costs the common case nothing.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

from _common import HEADER, MAX_FRAME, length_frames_end, parse_args, ready


class LineEcho(asyncio.Protocol):
    """Echo ``\\n``-terminated lines."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.pending = bytearray()  # an incomplete line, never a newline in it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.pending:
            self.complete(data)
        elif data[-1] == 10:  # ends on a frame boundary: echo the chunk itself
            self.transport.write(data)
        else:
            end = data.rfind(b"\n") + 1
            if end:
                self.transport.write(memoryview(data)[:end])
            self.hold(memoryview(data)[end:])

    def complete(self, data: bytes) -> None:
        end = data.rfind(b"\n") + 1
        if not end:
            self.hold(data)
            return
        pending = self.pending
        self.pending = bytearray()
        self.transport.write(pending)
        self.transport.write(memoryview(data)[:end])
        if end < len(data):
            self.hold(memoryview(data)[end:])

    def hold(self, tail: bytes | memoryview) -> None:
        self.pending += tail
        if len(self.pending) >= MAX_FRAME:  # no newline yet: the line is too long
            self.transport.abort()


class LengthEcho(asyncio.Protocol):
    """Echo frames with a 4-byte big-endian length prefix."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.pending = bytearray()  # an incomplete frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.pending:
            self.complete(data)
            return
        end = length_frames_end(data, 0)
        if end == len(data):  # ends on a frame boundary: echo the chunk itself
            self.transport.write(data)
            return
        if end:
            self.transport.write(memoryview(data)[:end])
        self.hold(memoryview(data)[end:])

    def complete(self, data: bytes) -> None:
        pending = self.pending
        taken = 0  # bytes of ``data`` that completed the pending header
        if len(pending) < 4:
            taken = 4 - len(pending)
            pending += data[:taken]
            if len(pending) < 4:
                return
        start = taken + 4 + HEADER.unpack_from(pending)[0] - len(pending)
        if start > len(data):  # still incomplete
            self.hold(memoryview(data)[taken:])
            return
        end = length_frames_end(data, start)
        self.pending = bytearray()
        self.transport.write(pending)
        self.transport.write(memoryview(data)[taken:end])
        if end < len(data):
            self.hold(memoryview(data)[end:])

    def hold(self, tail: bytes | memoryview) -> None:
        pending = self.pending
        pending += tail
        if len(pending) >= 4 and HEADER.unpack_from(pending)[0] > MAX_FRAME:
            self.transport.abort()


async def main() -> None:
    args = parse_args(__doc__ or "", loops=True)
    protocol = LineEcho if args.framing == "line" else LengthEcho
    loop = asyncio.get_running_loop()
    if args.tcp is not None:
        server = await loop.create_server(protocol, "127.0.0.1", args.tcp)
    else:
        server = await loop.create_unix_server(protocol, args.unix)
    ready()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if "uvloop" in sys.argv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
