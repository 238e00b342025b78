"""``triodaemon client``: send frames, print the replies."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator, Sequence

import trio

from .._errors import TriodaemonError, printable
from .._framing import Framing
from .._listeners import Address, connect
from .._process.logs import error_line
from ._args import (
    Parser,
    add_address_flags,
    add_framing_flags,
    framing_from_args,
    one_target,
    positive_int,
    seconds,
)
from ._output import interruptible, stdout_failed


def _client_parser() -> argparse.ArgumentParser:
    from ..testing._client import DEFAULT_REPLY_TIMEOUT

    parser = Parser(
        prog="triodaemon client",
        description=(
            "Send each stdin line (or each --send TEXT) as a frame; print each reply. "
            "Exits 0 once input ends and every reply has arrived."
        ),
    )
    add_address_flags(parser, server=False)
    add_framing_flags(parser)
    parser.add_argument(
        "--send",
        action="append",
        default=[],
        metavar="TEXT",
        help="send TEXT instead of reading stdin; repeatable",
    )
    parser.add_argument(
        "--count",
        type=positive_int,
        default=1,
        metavar="N",
        help="send the messages N times (default 1)",
    )
    parser.add_argument(
        "--interval",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="pause between repetitions (default 0)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_REPLY_TIMEOUT,
        metavar="SECONDS",
        help=(
            "give up when the connect, or a reply, takes longer than this: each reply "
            "must come whole within SECONDS of its message going out (or of the reply "
            "before it, if later), however the server trickles it "
            f"(default {DEFAULT_REPLY_TIMEOUT:g})"
        ),
    )
    return parser


async def _stdin_lines(keep_newline: bool) -> AsyncIterator[bytes]:
    # os.read in a thread, abandoned on cancel: Ctrl-C stops the wait at once, and
    # the thread holds no lock of sys.stdin's that the interpreter's exit would need.
    fd = sys.stdin.fileno()
    pending = b""
    while chunk := await trio.to_thread.run_sync(os.read, fd, 65536, abandon_on_cancel=True):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line + b"\n" if keep_newline else line
    if pending:
        yield pending


async def _client(address: Address, framing: Framing, args: argparse.Namespace) -> int:
    from ..testing._client import exchange, repeat

    raw = framing.kind == "raw"
    stdout = sys.stdout.buffer
    # On a terminal a reply is shown, not passed on: what is not printable is escaped
    # (one reply, one line; raw bytes keep their newlines), so a server cannot send
    # the terminal escape codes. Piped, it is written byte for byte.
    terminal = stdout.isatty()

    async def show(frame: bytes) -> None:
        if terminal:
            text = frame.decode("utf-8", "backslashreplace")
            lines = text.split("\n") if raw else [text]
            frame = "\n".join(map(printable, lines)).encode()
        try:
            stdout.write(frame if raw else frame + b"\n")
            stdout.flush()
        except OSError as exc:
            raise stdout_failed(exc) from None

    if args.send:
        messages: AsyncIterator[bytes] = repeat(
            [text.encode() for text in args.send], args.count, args.interval
        )
    else:
        messages = _stdin_lines(keep_newline=raw)
    try:
        stream = await connect(address, timeout=args.timeout)
        async with stream:
            await exchange(stream, messages, show, framing=framing, reply_timeout=args.timeout)
    except TriodaemonError as exc:
        return error_line(str(exc))
    return 0


def main(argv: Sequence[str]) -> int:
    parser = _client_parser()
    args = parser.parse_args(argv)
    framing = framing_from_args(parser, args)
    return trio.run(interruptible, _client, one_target(parser, args), framing, args)
