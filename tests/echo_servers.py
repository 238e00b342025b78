"""Echo servers written with nothing but the standard library (asyncio), one correct
and many with the classic framing bugs, for testing ``triodaemon check``.

    python tests/echo_servers.py MODE [--framing line|length]

prints ``listening on PORT`` once it listens on 127.0.0.1 (an ephemeral port).

Modes:
  good                   echoes bytes as they arrive (a correct echo server in any framing)
  slow                   correct, but answers one frame every 200 ms, in order
  socketserver           correct: the textbook socketserver.ThreadingTCPServer, a thread
                         per connection, and its listen backlog of 5
  latency                correct, but every echo leaves 200 ms after its bytes came in
                         (a delay, not a queue: echoes in flight overlap)
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
  pool                   correct, but serves 4 connections at a time: a fixed pool of 4
                         workers, each holding a connection until it ends; the others wait
  fd-leak                correct, but never closes a connection whose client left, and has
                         descriptors for 40 connections: later ones are accepted by the
                         kernel and never answered

Modes that edit the echo (``--framing fixed`` is 16-byte frames):
  retry-partial-write    a send that takes only part of a read is retried from the start
  lose-a-byte            a ring buffer that skips a byte each time it wraps (4096 bytes)
  utf8-replace           decodes each read as UTF-8 (errors replaced), writes it encoded
  latin1-to-utf8         decodes each read as Latin-1, writes it as UTF-8
  rstrip                 answers each line stripped of trailing whitespace
  universal-newlines     takes \r, \n and \r\n for line ends, answers each line with \n
  crlf-lines             takes \r\n for a line end too, answers \n (Go's bufio.ScanLines)
  signed-length          reads length headers as C chars: resets at a byte >= 0x80
  shared-buffer          one receive buffer for all connections (a class attribute)
  header-counts-itself   writes each length header as the payload's length plus 4
  pad-short-reads        reads a frame with one read, pads a short one with zeros
  16-per-read            answers at most 16 frames of each read, drops the rest
    parser.add_argument("--after", type=int, default=30, help="worn-out: connections served right")
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import socketserver
from collections.abc import Awaitable, Callable

MODES = [
    "good",
    "slow",
    "socketserver",
    "latency",
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
    # modes that edit the echo
    "retry-partial-write",
    "lose-a-byte",
    "utf8-replace",
    "latin1-to-utf8",
    "rstrip",
    "universal-newlines",
    "crlf-lines",
    "signed-length",
    "shared-buffer",
    "header-counts-itself",
    "pad-short-reads",
    "16-per-read",
    # Failures that depend on what came before, not on the bytes (one block).
    "flaky",
    "worn-out",
]
EDITS = set(MODES[MODES.index("retry-partial-write") : MODES.index("flaky")])
#: What a send takes of a larger write before the buggy retry (retry-partial-write).
PARTIAL_SEND = 1000
#: The ring buffer's size (lose-a-byte), and the frames answered per read (16-per-read).
RING = 4096
PER_READ = 16
FIXED_SIZE = 16
#: One receive buffer for every connection (shared-buffer): the bug.
SHARED = bytearray()
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
        elif self.mode == "latency":
            asyncio.get_running_loop().call_later(SLOW_DELAY, self.write_now, data)
        elif self.mode == "mute":
            pass
        elif self.mode in EDITS:
            self.transport.write(self.edit(data))
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

    def edit(self, data: bytes) -> bytes:
        """What the modes that edit the echo answer to a read of ``data``."""
        if self.mode == "retry-partial-write":
            taken = min(len(data), PARTIAL_SEND)  # what a non-blocking send() took
            return data[:taken] + (data if taken < len(data) else b"")  # retried whole
        if self.mode == "lose-a-byte":
            start, self.count = self.count, self.count + len(data)
            kept, at = bytearray(), 0
            for wrap in range(max(RING, -(-start // RING) * RING), self.count, RING):
                kept += data[at : wrap - start]  # the byte at each wrap is skipped
                at = wrap - start + 1
            return bytes(kept + data[at:])
        if self.mode == "utf8-replace":
            return data.decode("utf-8", "replace").encode()
        if self.mode == "latin1-to-utf8":
            return data.decode("latin-1").encode()
        if self.mode == "shared-buffer":
            SHARED.extend(data)
            frames, rest = split_frames(self.framing, bytes(SHARED))
            SHARED[:] = rest
            return b"".join(frames)
        frames, self.buffer = split_frames(self.framing, self.buffer + data)
        payloads = [payload_of(self.framing, frame) for frame in frames]
        if self.mode == "rstrip":
            return b"".join(payload.rstrip() + b"\n" for payload in payloads)
        if self.mode == "signed-length":  # C's char: a header byte >= 0x80 goes negative
            for index, frame in enumerate(frames):
                if max(frame[:4]) >= 0x80 and self.transport is not None:
                    self.transport.write(b"".join(frames[:index]))
                    self.transport.abort()
                    return b""
            return b"".join(frames)
        if self.mode == "crlf-lines":
            return b"".join(payload.removesuffix(b"\r") + b"\n" for payload in payloads)
        if self.mode == "universal-newlines":
            return b"".join(line + b"\n" for p in payloads for line in p.splitlines() or [b""])
        if self.mode == "header-counts-itself":
            return b"".join((len(p) + 4).to_bytes(4, "big") + p for p in payloads)
        self.buffer = b""  # 16-per-read: the rest of the read is dropped
        return b"".join(frames[:PER_READ])

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

    def write_now(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

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
        if self.mode == "latency" and self.transport is not None:
            # (After every echo still on its way: a later time, so a later call.)
            asyncio.get_running_loop().call_later(SLOW_DELAY + 0.01, self.transport.close)
            return True
        return False  # close once everything written has been sent


# --- servers that fail under many connections (the concurrency scenario, leaks) ---

CONCURRENCY_MODES = ["pool", "fd-leak"]
MODES += CONCURRENCY_MODES
POOL_WORKERS = 4
FD_LEAK_CONNECTIONS = 40
_kept: list[object] = []  # worker tasks, leaked transports


async def concurrency_server(mode: str) -> asyncio.Server:
    if mode == "pool":
        waiting: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        waiting = asyncio.Queue()

        async def worker() -> None:
            while True:
                reader, writer = await waiting.get()
                try:
                    while data := await reader.read(65536):
                        writer.write(data)
                        await writer.drain()
                except ConnectionError:
                    pass
                finally:
                    writer.close()

        async def enqueue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await waiting.put((reader, writer))

        _kept.extend(asyncio.create_task(worker()) for _ in range(POOL_WORKERS))
        return await asyncio.start_server(enqueue, "127.0.0.1", 0)

    class Leaky(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            _kept.append(transport)  # the leak: never closed, even once the client left

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

        def eof_received(self) -> bool:
            return True  # keep the socket open

    server = await asyncio.get_running_loop().create_server(Leaky, "127.0.0.1", 0)
    # Descriptors for FD_LEAK_CONNECTIONS connections more than are open now (the
    # listing's own descriptor not counted); at the limit, accept() fails (EMFILE),
    # which asyncio logs and retries forever: quiet it.
    in_use = len(os.listdir("/proc/self/fd")) - 1
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + FD_LEAK_CONNECTIONS, hard))
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    return server


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


StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def guarded(handler: StreamHandler) -> StreamHandler:
    """``handler``, ending quietly when the client goes, and closing the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    return serve


def textbook_server() -> None:
    """An echo server as the standard library's documentation writes one."""

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                while data := self.request.recv(65536):
                    self.request.sendall(data)
            except ConnectionError:
                pass  # (the client reset: its right)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True  # (request_queue_size stays 5: the listen backlog)

    with Server(("127.0.0.1", 0), Echo) as server:
        print(f"listening on {server.server_address[1]}", flush=True)
        server.serve_forever()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--framing", choices=["line", "length", "fixed"], default="line")
    parser.add_argument("--after", type=int, default=30, help="worn-out: connections served right")
    args = parser.parse_args()
    if args.mode == "socketserver":
        textbook_server()  # (threads of its own: asyncio has nothing to do)
        return
    loop = asyncio.get_running_loop()
    if args.mode == "deaf":
        held: list[asyncio.StreamWriter] = []

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # never read: the stream reader stops at its limit

        server = await asyncio.start_server(hold, "127.0.0.1", 0, limit=16384)
    elif args.mode == "flood":

        @guarded
        async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            chunk = b"x" * 65536
            while True:
                writer.write(chunk)
                await writer.drain()

        server = await asyncio.start_server(flood, "127.0.0.1", 0)
    elif args.mode == "blocking-writes":
        lock = asyncio.Lock()

        @guarded
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                async with lock:  # the bug: one slow reader holds everyone's writes
                    writer.write(data)
                    await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
    elif args.mode in CONCURRENCY_MODES:
        server = await concurrency_server(args.mode)
    elif args.mode == "pad-short-reads":

        @guarded
        async def pad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while frame := await reader.read(FIXED_SIZE):  # the bug: one read, one frame
                writer.write(frame.ljust(FIXED_SIZE, b"\x00"))
                await writer.drain()

        server = await asyncio.start_server(pad, "127.0.0.1", 0)
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
