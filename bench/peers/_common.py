"""Shared command line of the peer servers: where to listen, which framing, readiness."""

from __future__ import annotations

import argparse


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


def frames_end(buffer: bytes, line: bool) -> int:
    """Where the complete frames in ``buffer`` end (line, or 4-byte big-endian length)."""
    if line:
        return buffer.rfind(b"\n") + 1
    end = 0
    while len(buffer) - end >= 4:
        size = 4 + int.from_bytes(buffer[end : end + 4], "big")
        if len(buffer) - end < size:
            break
        end += size
    return end
