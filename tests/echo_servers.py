"""Echo servers written with nothing but the standard library (asyncio), one correct
and many with the classic framing bugs, for testing ``triodaemon check``.

    python tests/echo_servers.py MODE [--framing line|length]

prints ``listening on PORT`` once it listens on 127.0.0.1 (an ephemeral port).

Modes:
  good                   echoes bytes as they arrive (a correct echo server in any framing)
  slow                   correct, but answers one frame every 200 ms, in order
  drop-tail              echoes the complete frames of each read, throws the rest away
  one-read-one-message   takes each read for one message: answers its first frame only
  lose-last-at-eof       echoes the last frame of a read late, and aborts at EOF
  reorder                answers the frames of each read in reverse order (a worker pool)
  truncate               cuts every frame longer than 4096 bytes at 4096, drops the rest
  skip-empty             never answers an empty frame
  corrupt-rarely         flips a byte of every 1000th non-empty frame on a connection
  blocking-writes        one lock around every connection's write-and-drain: a client
                         that never reads stops everyone
  crash-on-reset         exits when a client resets its connection
  mute                   reads everything, answers nothing
  deaf                   accepts connections, never reads from them
  close-after            closes each connection after echoing 50 frames
  flood                  answers every connection with bytes, as fast as it can, forever
  die-after-unread       correct, but exits when a client leaves with echoes it never
                         read (a crash in the cleanup of a blocked write)
  flaky                  drop-tail on two connections of every three, correct on the
                         third: a bug that comes and goes (never three connections in a row)
  worn-out               correct for its first --after N connections (30), then answers
                         nothing on any connection (worn down by what came before)
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable

MODES = [
    "good",
    "slow",
    "drop-tail",
    "one-read-one-message",
    "lose-last-at-eof",
    "reorder",
    "truncate",
    "skip-empty",
    "corrupt-rarely",
    "blocking-writes",
    "crash-on-reset",
    "mute",
    "deaf",
    "close-after",
    "flood",
    "die-after-unread",
    # Failures that depend on what came before, not on the bytes (one block).
    "flaky",
    "worn-out",
]
CLOSE_AFTER = 50
TRUNCATE_AT = 4096
SLOW_DELAY = 0.2


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


def payload_of(framing: str, frame: bytes) -> bytes:
    return frame[:-1] if framing == "line" else frame[4:]


def frame_of(framing: str, payload: bytes) -> bytes:
    return payload + b"\n" if framing == "line" else len(payload).to_bytes(4, "big") + payload


class Echo(asyncio.Protocol):
    def __init__(self, mode: str, framing: str) -> None:
        self.mode = mode
        self.framing = framing
        self.buffer = b""
        self.late = b""
        self.count = 0
        self.timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.slow: asyncio.Task[None] | None = None
        self.blocked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.mode == "slow":
            self.slow = asyncio.get_running_loop().create_task(self.answer_slowly())

    def pause_writing(self) -> None:
        self.blocked = True  # the peer does not read what we write

    def resume_writing(self) -> None:
        self.blocked = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slow is not None:
            self.slow.cancel()
        if self.mode == "die-after-unread" and self.blocked:
            os._exit(1)
        if self.mode == "crash-on-reset" and isinstance(exc, ConnectionResetError):
            os._exit(1)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.mode in ("good", "crash-on-reset", "die-after-unread"):
            self.transport.write(data)
        elif self.mode == "mute":
            pass
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
        else:
            frames, self.buffer = split_frames(self.framing, self.buffer + data)
            self.transport.write(b"".join(self.transform(frames)))

    def transform(self, frames: list[bytes]) -> list[bytes]:
        payloads = [payload_of(self.framing, frame) for frame in frames]
        if self.mode == "slow":
            for frame in frames:
                self.queue.put_nowait(frame)
            return []
        if self.mode == "reorder":
            payloads.reverse()
        elif self.mode == "truncate":
            payloads = [payload[:TRUNCATE_AT] for payload in payloads]
        elif self.mode == "skip-empty":
            payloads = [payload for payload in payloads if payload]
        elif self.mode == "close-after":
            assert self.transport is not None
            if self.count + len(payloads) >= CLOSE_AFTER:
                payloads = payloads[: CLOSE_AFTER - self.count]
                self.transport.write(b"".join(frame_of(self.framing, p) for p in payloads))
                self.transport.close()
                return []
            self.count += len(payloads)
        elif self.mode == "corrupt-rarely":
            for index, payload in enumerate(payloads):
                if payload:
                    self.count += 1
                    if self.count % 1000 == 0:
                        payloads[index] = payload[:-1] + bytes([payload[-1] ^ 0x01])
        return [frame_of(self.framing, payload) for payload in payloads]

    async def answer_slowly(self) -> None:
        while (frame := await self.queue.get()) is not None:
            await asyncio.sleep(SLOW_DELAY)
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(frame)
        if self.transport is not None:
            self.transport.close()  # at EOF, once every echo is written

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
        if self.mode == "slow":
            self.queue.put_nowait(None)
            return True  # answer_slowly closes
        return False  # close once everything written has been sent


def protocol_factory(mode: str, framing: str, after: int) -> Callable[[], Echo]:
    """Echoes for the modes whose bug depends on how many connections came before: each
    connection gets a correct echo or a buggy one, by its number."""
    connections = 0

    def make() -> Echo:
        nonlocal connections
        connections += 1
        if mode == "flaky":  # drop-tail on connections 1, 2, 4, 5, 7, ...
            return Echo("good" if connections % 3 == 0 else "drop-tail", framing)
        return Echo("good" if connections <= after else "mute", framing)

    return make


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--framing", choices=["line", "length"], default="line")
    parser.add_argument("--after", type=int, default=30, help="worn-out: connections served right")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    if args.mode == "deaf":
        held: list[asyncio.StreamWriter] = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # never read: the stream reader stops at its limit

        server = await asyncio.start_server(hold, "127.0.0.1", 0, limit=16384)
    elif args.mode == "flood":

        async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            chunk = b"x" * 65536
            try:
                while True:
                    writer.write(chunk)
                    await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(flood, "127.0.0.1", 0)
    elif args.mode == "blocking-writes":
        lock = asyncio.Lock()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    async with lock:  # the bug: one slow reader holds everyone's writes
                        writer.write(data)
                        await writer.drain()
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
    elif args.mode in ("flaky", "worn-out"):
        make = protocol_factory(args.mode, args.framing, args.after)
        server = await loop.create_server(make, "127.0.0.1", 0)
    else:
        server = await loop.create_server(lambda: Echo(args.mode, args.framing), "127.0.0.1", 0)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
