"""Talk to a running triodaemon from your own trio program.

    python examples/client.py --sock /tmp/echo.sock
    python examples/client.py --tcp localhost:8000

Sends line frames in one write, reads the echoes with the same sans-I/O decoder
the daemon uses, then does the same with the one-call helper of the harness
(triodaemon.testing).
"""

from __future__ import annotations

import argparse

import trio

import triodaemon
import triodaemon.testing


async def main(address: triodaemon.TcpAddress | triodaemon.UnixAddress) -> None:
    framing = triodaemon.Framing()  # line framing: each frame ends with b"\n"
    stream = await triodaemon.connect(address)
    async with stream:
        # Three frames in one write: the daemon echoes them in one write too.
        await stream.send_all(b"".join(framing.encode(m) for m in (b"one", b"two", b"three")))
        decoder = framing.decoder()
        replies: list[bytes] = []
        while len(replies) < 3:
            decoder.feed(await stream.receive_some())
            while (frame := decoder.next_frame()) is not None:
                replies.append(frame)
        for reply in replies:
            print("echoed:", reply.decode())

    # The harness's one-call helper does the same: send frames, collect the replies.
    replies = await triodaemon.testing.echo_frames(address, [b"helper"], framing=framing)
    print("echoed:", replies)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--sock", help="Unix socket path")
    where.add_argument("--tcp", help="HOST:PORT")
    args = parser.parse_args()
    target = (
        triodaemon.UnixAddress(args.sock)
        if args.sock
        else triodaemon.parse_tcp_address(args.tcp, default_host="localhost")
    )
    trio.run(main, target)
