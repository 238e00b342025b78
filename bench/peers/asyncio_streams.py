"""Peer: the idiomatic asyncio streams echo server (readuntil / readexactly, drain per frame)."""

from __future__ import annotations

import asyncio

from _common import parse_args, ready


async def main() -> None:
    args = parse_args(__doc__ or "", loops=True)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                if args.framing == "line":
                    frame = await reader.readuntil(b"\n")
                else:
                    header = await reader.readexactly(4)
                    frame = header + await reader.readexactly(int.from_bytes(header, "big"))
                writer.write(frame)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    limit = 1 << 20
    if args.tcp is not None:
        server = await asyncio.start_server(handle, "127.0.0.1", args.tcp, limit=limit)
    else:
        server = await asyncio.start_unix_server(handle, args.unix, limit=limit)
    ready()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if "uvloop" in __import__("sys").argv:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
