"""``triodaemon check``: check any echo server's framing from outside."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .._errors import ClientError, printable
from .._framing import Framing
from .._listeners import Address
from .._process.logs import EXIT_FAILURE, EXIT_USAGE, error_line
from ._args import (
    Parser,
    add_address_flags,
    add_framing_flags,
    framing_from_args,
    one_target,
    positive_seconds,
    seconds,
    seed,
)
from ._output import interruptible, print_out, reason_of

if TYPE_CHECKING:
    from ..testing.check import ScenarioResult


def _check_parser() -> argparse.ArgumentParser:
    from ..testing.check import DEFAULT_SHRINK_TIME, SCENARIOS
    from ..testing.check import DEFAULT_TIMEOUT as DEFAULT_CHECK_TIMEOUT

    parser = Parser(
        prog="triodaemon check",
        description=(
            "Run a battery of framing scenarios against any echo server and report, per "
            "scenario, whether every frame came back whole and in order; for each failure, "
            "what kind of bug it is and the smallest case that still fails. Exit 0 only if "
            "all pass. After each scenario, a fresh connection must be answered within 2 s "
            "(or --timeout); if not, the scenarios after it are not run. A run takes at most "
            "scenarios x (--timeout + 2) + --shrink-time seconds."
        ),
    )
    add_address_flags(parser, server=False)
    add_framing_flags(parser)
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_CHECK_TIMEOUT,
        metavar="SECONDS",
        help=(
            "time limit of each scenario, every exchange and connection in it included "
            f"(default {DEFAULT_CHECK_TIMEOUT:g})"
        ),
    )
    parser.add_argument(
        "--shrink-time",
        type=seconds,
        default=DEFAULT_SHRINK_TIME,
        metavar="SECONDS",
        help=(
            "time the whole run may spend shrinking failing cases to the smallest "
            f"(default {DEFAULT_SHRINK_TIME:g}; 0: do not shrink)"
        ),
    )
    parser.add_argument(
        "--seed",
        type=seed,
        metavar="N",
        help="seed of every random choice; the report prints it, and --seed N repeats a run",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario; repeatable ({', '.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--replay",
        metavar="FILE",
        help=(
            "instead of the scenarios, replay the smallest failing cases in FILE (a report "
            "saved with --json) against the server, in the framing they were found with"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--junit-xml",
        metavar="PATH",
        help="also write the report as JUnit XML to PATH (one test case per scenario), for CI",
    )
    return parser


async def _check(address: Address, framing: Framing, args: argparse.Namespace) -> int:
    from ..testing.check import CheckReport, replay, run_check

    # Progress only on a terminal, and only for the scenario still running (the
    # table says the rest); elsewhere (a CI log) the table alone, once.
    live = sys.stderr.isatty() and not args.json

    def started(name: str) -> None:
        if live:
            # (A replayed case's name is the report's: escaped.)
            print(f"\r\x1b[K  running {printable(name)} ...", end="", file=sys.stderr, flush=True)

    def progress(result: ScenarioResult) -> None:
        if live:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)

    if args.replay_cases is not None:
        results = []
        for name, case_framing, case in args.replay_cases:
            started(name)
            result = await replay(address, case_framing, case, timeout=args.timeout, name=name)
            progress(result)
            results.append(result)
        framings = {case_framing.describe() for _, case_framing, _ in args.replay_cases}
        report = CheckReport(
            str(address), f"{'; '.join(sorted(framings))}; replay of {args.replay}", tuple(results)
        )
    else:
        try:
            report = await run_check(
                address,
                framing,
                timeout=args.timeout,
                scenarios=args.scenario,
                on_result=progress,
                on_start=started,
                seed=args.seed,
                shrink_time=args.shrink_time,
            )
        except ClientError as exc:
            return error_line(str(exc))
    code = print_out(report.to_json() if args.json else report.table()) or (
        0 if report.passed else EXIT_FAILURE
    )
    if args.junit_xml is not None:
        try:
            await trio.Path(args.junit_xml).write_text(report.junit_xml(), encoding="utf-8")
        except OSError as exc:
            return error_line(f"cannot write {args.junit_xml}: {reason_of(exc)}")
    return code


def main(argv: Sequence[str]) -> int:
    parser = _check_parser()
    args = parser.parse_args(argv)
    framing = framing_from_args(parser, args)
    target = one_target(parser, args)
    args.replay_cases = _replay_cases(parser, args) if args.replay is not None else None
    if args.junit_xml is not None:
        problem = _unwritable(args.junit_xml)
        if problem:
            parser.exit(
                EXIT_USAGE, f"{parser.prog}: error: cannot write {args.junit_xml}: {problem}\n"
            )
    return trio.run(interruptible, _check, target, framing, args)


def _replay_cases(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Any]:
    """The cases ``--replay FILE`` names, or exit 2 with one line saying why not
    (escaped: it may quote the file)."""
    from ..testing.check import cases_from_file

    chosen = [
        flag
        for flag, given in (
            ("--scenario", args.scenario),
            ("--seed", args.seed is not None),
            ("--shrink-time", args.shrink_time != parser.get_default("shrink_time")),
            ("--framing", args.framing is not None),
            ("--delimiter", args.delimiter is not None),
            ("--length-bytes", args.length_bytes is not None),
            ("--byte-order", args.byte_order is not None),
            ("--length-includes-header", args.length_includes_header),
            ("--frame-size", args.frame_size is not None),
            ("--max-frame", args.max_frame != parser.get_default("max_frame")),
        )
        if given
    ]
    if chosen:
        parser.error(
            f"--replay runs the cases in FILE in the framing they were found with: "
            f"{', '.join(chosen)} cannot go with it"
        )
    try:
        with open(args.replay, encoding="utf-8") as file:
            return cases_from_file(file.read())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = printable(f"cannot replay {args.replay}: {reason_of(exc)}")
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {reason}\n")


def _unwritable(path: str) -> str:
    """Why a report could not be written to ``path`` ("" if it could, as far as we can tell)."""
    target = Path(path)
    if target.is_dir():
        return "it is a directory"
    parent = target.parent
    if not parent.is_dir():
        return f"no such directory: {parent}"
    if target.exists() and not os.access(target, os.W_OK):
        return "permission denied"
    if not target.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"permission denied (directory {parent})"
    return ""
