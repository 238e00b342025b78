"""Peer: an asyncio Protocol echo server (the fastest Python shape), on asyncio or uvloop.

Each data_received echoes all complete frames of the buffer as one slice.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

from _common import frames_end, parse_args, ready


class Echo(asyncio.Protocol):
    def __init__(self, framing: str) -> None:
        self.line = framing == "line"
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer + data if self.buffer else data
        end = frames_end(buffer, self.line)
        if end:
            self.transport.write(buffer[:end])
        self.buffer = buffer[end:]


async def main() -> None:
    args = parse_args(__doc__ or "", loops=True)
    loop = asyncio.get_running_loop()
    if args.tcp is not None:
        server = await loop.create_server(lambda: Echo(args.framing), "127.0.0.1", args.tcp)
    else:
        server = await loop.create_unix_server(lambda: Echo(args.framing), args.unix)
    ready()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if "uvloop" in sys.argv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
