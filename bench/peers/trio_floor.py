"""Not a peer: the least a trio server with a task per connection does per read.

Each connection's task reads with ``recv_into`` and sends what it read straight
back, and waits with ``trio.lowlevel.wait_readable`` only when a read would block:
no framing, no counters, no deadlines, no cancel scope, no stream wrapper. It echoes
bytes, not frames, which the load generator cannot tell from a framed echo, so it is
only a floor: what trio's run loop costs per wake-up and per read, which no trio
server can go below. Run it with ``bench/run.py --servers ...,trio-floor``.
"""

from __future__ import annotations

import socket

import trio
from _common import parse_args, ready

RECEIVE_SIZE = 262144


async def main() -> None:
    args = parse_args(__doc__ or "")
    buf = bytearray(RECEIVE_SIZE)  # one for every connection: trio runs one task at a time
    view = memoryview(buf)

    async def handle(sock: socket.socket) -> None:
        with sock:
            while True:
                try:
                    size = sock.recv_into(buf)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except OSError:
                    return
                if not size:
                    return
                sent = 0
                try:
                    while sent < size:
                        try:
                            sent += sock.send(view[sent:size])
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(sock)
                except OSError:
                    return

    if args.tcp is not None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", args.tcp))
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(args.unix)
    listener.listen(1024)
    listener.setblocking(False)
    async with trio.open_nursery() as nursery:
        ready()
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            sock.setblocking(False)
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(handle, sock)


if __name__ == "__main__":
    trio.run(main)
