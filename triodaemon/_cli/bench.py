"""``triodaemon bench``: load any echo server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from .._errors import ClientError
from .._framing import Framing
from .._listeners import Address
from .._process.logs import error_line
from ._args import (
    Parser,
    add_address_flags,
    add_framing_flags,
    framing_from_args,
    one_target,
    positive_int,
    seconds,
    size,
)
from ._output import interruptible, print_out


def _bench_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="triodaemon bench",
        description=(
            "Load any echo server: N connections, D frames in flight on each; every echo "
            "is verified. Prints frames/s, MB/s, latency percentiles and errors. Exits 0 "
            "only if echoes were verified and none went wrong; else 1, with one line "
            "saying what did. Takes at most the connect (10 s) + warmup + duration + "
            "5 s for the echoes in flight."
        ),
    )
    add_address_flags(parser, server=False)
    add_framing_flags(parser)
    parser.add_argument(
        "--conns", type=positive_int, default=1, metavar="N", help="connections (default 1)"
    )
    parser.add_argument(
        "--depth",
        type=positive_int,
        default=1,
        metavar="D",
        help="frames in flight per connection (default 1)",
    )
    parser.add_argument(
        "--size",
        type=size,
        default=64,
        metavar="B",
        help="wire bytes per frame, header or delimiter included (default 64)",
    )
    parser.add_argument(
        "--duration", type=seconds, default=10.0, metavar="S", help="seconds measured (default 10)"
    )
    parser.add_argument(
        "--warmup",
        type=seconds,
        default=1.0,
        metavar="S",
        help="seconds of load before measuring (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


async def _bench(address: Address, framing: Framing, args: argparse.Namespace) -> int:
    from ..testing._bench import run_bench

    live = sys.stderr.isatty()

    def progress(elapsed: float, frames: int, errors: int) -> None:
        rate = frames / elapsed if elapsed else 0.0
        line = f"{elapsed:5.1f}s  {frames:,} frames  {rate:,.0f}/s  errors {errors}"
        print(f"\r{line}" if live else line, end="" if live else "\n", file=sys.stderr, flush=True)

    try:
        result = await run_bench(
            address,
            framing,
            connections=args.conns,
            depth=args.depth,
            frame_size=args.size,
            duration=args.duration,
            warmup=args.warmup,
            on_progress=progress,
        )
    except (ClientError, ValueError) as exc:
        return error_line(str(exc))
    if live:
        print(file=sys.stderr)
    # The report first (stdout), then what failed in one line (stderr): a gate that
    # keeps only the exit code, and one that reads the log, both see why.
    code = print_out(result.to_json() if args.json else result.table())
    return code or (error_line(result.failure) if result.errors else 0)


def main(argv: Sequence[str]) -> int:
    parser = _bench_parser()
    args = parser.parse_args(argv)
    framing = framing_from_args(parser, args)
    return trio.run(interruptible, _bench, one_target(parser, args), framing, args)
