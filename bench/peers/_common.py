"""Shared command line of the peer servers: where to listen, which framing, readiness."""

from __future__ import annotations

import argparse
import struct

#: Largest frame a peer accepts (payload, or line with its newline), like triodaemon in
#: the suite (``--max-frame 1MiB``); a longer one closes the connection.
MAX_FRAME = 1 << 20

#: The 4-byte big-endian length prefix, read in place (no slice per header).
HEADER = struct.Struct(">I")


def parse_args(description: str, *, loops: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT")
    where.add_argument("--unix", metavar="PATH", help="listen on a Unix socket")
    parser.add_argument("--framing", choices=["line", "length"], default="line")
    if loops:
        parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    return parser.parse_args()


def ready() -> None:
    print("ready", flush=True)


def frames_end(buffer: bytes | bytearray, line: bool) -> int:
    """Where the complete frames in ``buffer`` end (line, or 4-byte big-endian length)."""
    if line:
        return buffer.rfind(b"\n") + 1
    return length_frames_end(buffer, 0)


def length_frames_end(buffer: bytes | bytearray, start: int) -> int:
    """Where the complete length-prefixed frames in ``buffer`` from ``start`` on end."""
    unpack_from = HEADER.unpack_from
    size = len(buffer)
    end = start
    while end + 4 <= size:
        after = end + 4 + unpack_from(buffer, end)[0]
        if after > size:
            break
        end = after
    return end
