"""Echo servers written with nothing but the standard library (asyncio), one correct
and several with the classic framing bugs, for testing ``triodaemon check``.

    python tests/echo_servers.py MODE [--framing line|length]

prints ``listening on PORT`` once it listens on 127.0.0.1 (an ephemeral port).

Modes:
  good                   echoes bytes as they arrive (a correct echo server in any framing)
  drop-tail              echoes the complete frames of each read, throws the rest away
  one-read-one-message   takes each read for one message: answers its first frame only
  lose-last-at-eof       echoes the last frame of a read late, and aborts at EOF
"""

from __future__ import annotations

import argparse
import asyncio


def split_frames(framing: str, data: bytes) -> tuple[list[bytes], bytes]:
    """Complete frames' wire bytes in ``data``, and the rest."""
    frames = []
    if framing == "line":
        *lines, rest = data.split(b"\n")
        return [line + b"\n" for line in lines], rest
    while len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[:4], "big"):
        end = 4 + int.from_bytes(data[:4], "big")
        frames.append(data[:end])
        data = data[end:]
    return frames, data


class Echo(asyncio.Protocol):
    def __init__(self, mode: str, framing: str) -> None:
        self.mode = mode
        self.framing = framing
        self.buffer = b""
        self.late = b""
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.mode == "good":
            self.transport.write(data)
        elif self.mode == "drop-tail":
            frames, _dropped = split_frames(self.framing, data)
            self.transport.write(b"".join(frames))
        elif self.mode == "one-read-one-message":
            frames, rest = split_frames(self.framing, data)
            self.transport.write(frames[0] if frames else rest + b"\n")
        elif self.mode == "lose-last-at-eof":
            frames, self.buffer = split_frames(self.framing, self.buffer + data)
            if frames:
                self.write_late()  # order is kept: what was held back goes first
                self.transport.write(b"".join(frames[:-1]))
                self.late = frames[-1]
                self.timer = asyncio.get_running_loop().call_later(0.05, self.write_late)

    def write_late(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.late and self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.late)
        self.late = b""

    def eof_received(self) -> bool:
        if self.mode == "lose-last-at-eof" and self.transport is not None:
            self.transport.abort()
        return False  # close once everything written has been sent


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "mode", choices=["good", "drop-tail", "one-read-one-message", "lose-last-at-eof"]
    )
    parser.add_argument("--framing", choices=["line", "length"], default="line")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Echo(args.mode, args.framing), "127.0.0.1", 0)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
