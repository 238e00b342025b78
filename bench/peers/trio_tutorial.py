"""Peer: the trio tutorial shape: serve_listeners, receive_some, one send_all per read.

The shape a tutorial writes, without what its best user would not write: the complete
frames of the buffer are sent as a ``memoryview``, not a copy (a read that ends on a
frame boundary, the common case, is sent as it came), only the incomplete tail is
kept, length prefixes are read in place with ``struct``, and each receive asks for
128 KiB instead of trio's default 64 KiB, which never holds a whole S4 frame.
"""

from __future__ import annotations

import socket

import trio
from _common import frames_end, parse_args, ready

#: Bytes per receive_some (trio's default is 64 KiB).
RECEIVE_SIZE = 131072


async def main() -> None:
    args = parse_args(__doc__ or "")
    line = args.framing == "line"

    async def handle(stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while data := await stream.receive_some(RECEIVE_SIZE):
                buffer += data  # no copy while nothing is held: b"" + data is data
                end = frames_end(buffer, line)
                if end:
                    await stream.send_all(memoryview(buffer)[:end])
                    buffer = buffer[end:]
        except trio.BrokenResourceError:
            pass

    if args.tcp is not None:
        listeners = await trio.open_tcp_listeners(args.tcp, host="127.0.0.1")
    else:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(args.unix)
        sock.listen(1024)
        listeners = [trio.SocketListener(sock)]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        ready()


if __name__ == "__main__":
    trio.run(main)
