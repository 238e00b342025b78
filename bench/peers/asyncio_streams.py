"""Peer: the idiomatic asyncio streams echo server (readuntil / readexactly, drain per frame).

The shape the asyncio documentation writes: one frame read, written and drained at a
time. Kept as it is, with one handler per framing (no framing test per frame). A
length-prefixed frame goes out as one ``write`` of its prefix and payload joined:
``writelines`` of the two measured no better in S3 and S4 (CPython 3.11's asyncio
joins them itself), and two writes would be two system calls per frame. Frames are
limited to 1 MiB (the stream reader's limit, and a length prefix above it closes the
connection), like triodaemon in the suite.
"""

from __future__ import annotations

import asyncio
import sys

from _common import MAX_FRAME, parse_args, ready


async def echo_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            writer.write(await reader.readuntil(b"\n"))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def echo_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            header = await reader.readexactly(4)
            size = int.from_bytes(header, "big")
            if size > MAX_FRAME:
                break
            writer.write(header + await reader.readexactly(size))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    args = parse_args(__doc__ or "", loops=True)
    handle = echo_lines if args.framing == "line" else echo_length
    if args.tcp is not None:
        server = await asyncio.start_server(handle, "127.0.0.1", args.tcp, limit=MAX_FRAME)
    else:
        server = await asyncio.start_unix_server(handle, args.unix, limit=MAX_FRAME)
    ready()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if "uvloop" in sys.argv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
