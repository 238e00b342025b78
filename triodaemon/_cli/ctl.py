"""``triodaemon ctl``: ask or tell a running daemon, over its control socket."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import trio

from .._control import ControlClient, ControlClosed, ControlError
from .._errors import ClientError
from .._process.logs import error_line
from ._args import Parser, interval, positive_seconds, socket_path
from ._output import interruptible, print_out

#: How long ``ctl`` waits for an answer, by default (an upgrade's takes longer).
CTL_TIMEOUT = 10.0


CTL_UPGRADE_TIMEOUT = 300.0


_CTL_COMMANDS = ("stats", "connections", "drain", "log-level", "upgrade", "help")


def _ctl_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="triodaemon ctl",
        description=(
            "Ask a running daemon (started with --control PATH) what it is doing, or tell "
            "it what to do: stats, connections, drain (a graceful shutdown), log-level "
            "LEVEL, upgrade (a new process takes over, dropping nothing), help."
        ),
    )
    parser.add_argument(
        "--control",
        required=True,
        type=socket_path,
        metavar="PATH",
        help="the daemon's control socket",
    )
    parser.add_argument("command", choices=_CTL_COMMANDS, help="what to ask or tell")
    parser.add_argument("level", nargs="?", help="for log-level: debug, info, warning, error")
    parser.add_argument(
        "--json", action="store_true", help="print the reply's result as JSON, not a table"
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help=(
            f"give up when the daemon has not answered within this (default "
            f"{CTL_TIMEOUT:g}; {CTL_UPGRADE_TIMEOUT:g} for upgrade, which waits for the new process)"
        ),
    )
    parser.add_argument(
        "--watch",
        type=interval,
        metavar="S",
        help="stats or connections: ask again every S seconds (0.1 or more), until Ctrl-C",
    )
    return parser


async def _ask_in_time(
    control: ControlClient, args: argparse.Namespace, arguments: dict[str, Any], timeout: float
) -> Any:
    """The reply's result; ``ClientError`` if none comes within ``timeout``."""
    try:
        with trio.fail_after(timeout):
            return await control.request(args.command, **arguments)
    except trio.TooSlowError:
        raise ClientError(
            f"the daemon at {args.control} did not answer within {timeout:g}s (--timeout)"
        ) from None


async def _ctl(args: argparse.Namespace) -> int:
    import json

    from .._control import open_control
    from ._render import rates, render_reply, render_stats

    arguments = {"level": args.level} if args.command == "log-level" else {}
    timeout = args.timeout or (CTL_UPGRADE_TIMEOUT if args.command == "upgrade" else CTL_TIMEOUT)
    live = args.watch is not None and sys.stdout.isatty()
    previous: Any = None
    try:
        control = await open_control(args.control)
        async with control.stream:
            while True:
                try:
                    result = await _ask_in_time(control, args, arguments, timeout)
                except ControlClosed:
                    if previous is None:
                        raise
                    # It exited (drained, at once or not): the end of what was watched.
                    print("triodaemon: the daemon has exited", file=sys.stderr, flush=True)
                    return 0
                if args.json:
                    text = json.dumps(result, indent=None if args.watch else 2)
                elif args.command == "stats" and previous is not None:
                    text = render_stats(result, rates(previous, result))
                else:
                    text = render_reply(args.command, result)
                if live:
                    text = "\x1b[H\x1b[2J" + text  # in place, like top
                elif previous is not None and not args.json:
                    text = "\n" + text
                if code := print_out(text):
                    return code
                if args.watch is None:
                    return 0
                previous = result if args.command == "stats" else {}
                await trio.sleep(args.watch)
    except (ClientError, ControlError) as exc:
        return error_line(str(exc))


def main(argv: Sequence[str]) -> int:
    parser = _ctl_parser()
    args = parser.parse_args(argv)
    if args.command == "log-level" and args.level is None:
        parser.error("log-level needs a LEVEL: debug, info, warning or error")
    if args.command != "log-level" and args.level is not None:
        parser.error(f"{args.command} takes no argument (got {args.level!r})")
    if args.watch is not None and args.command not in ("stats", "connections"):
        parser.error("--watch applies to stats and connections")
    return trio.run(interruptible, _ctl, args)
