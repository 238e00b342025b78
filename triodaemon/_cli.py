"""The command line: ``triodaemon [serve flags]``, ``client``, ``check`` and ``bench``.

Strategy: parse and validate everything before trio starts, so a bad flag is
one line and exit 2; bind every listener before announcing readiness, so a port
in use or an unusable path is one line and exit 1; only then serve. Signals
(see :mod:`triodaemon._signals` for what each one does) are held from the
first moment of the process and received through ``trio.open_signal_receiver``,
opened before binding, so none can arrive unhandled: a stop signal before the
daemon is ready ends the start with one line and exit 128+N; after it, the
first one drains and a second one aborts. The harness commands (``check``,
``bench``) are imported only when they are run, so the daemon starts light.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import re
import resource
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

from . import _signals
from ._config import DEFAULT_FRAME_TIMEOUT, DaemonConfig
from ._control import ControlClient, ControlClosed, ControlError
from ._daemon import Daemon
from ._errors import AddressError, ClientError, TriodaemonError, printable
from ._faults import fault
from ._framing import DEFAULT_MAX_FRAME, FRAMING_KINDS, Framing, parse_delimiter
from ._handover.giver import Giver
from ._handover.taker import Taken, request_takeover, take_connections
from ._handover.upgrade import Upgrader
from ._handover.wire import CalledOff, Channel, HandoverError
from ._listeners import (
    Address,
    BoundListener,
    TcpAddress,
    UnixAddress,
    connect,
    open_listeners,
    open_unix,
    parse_tcp_address,
)
from ._lowlevel.readiness import READINESS_NAMES, open_readiness
from ._socketfile import check_socket_path, resolve_group
from ._supervisor import Supervisor
from ._systemd import Notifier, activated_sockets
from ._version import __version__

if TYPE_CHECKING:
    from .testing.check import ScenarioResult

log = logging.getLogger("triodaemon")

#: Exit codes: 1 for runtime failures (port in use, forced shutdown), 2 for usage;
#: 128+N for a start (or a client command) ended by signal N, as a shell reports it.
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128
_XCPU = getattr(signal, "SIGXCPU", None)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {printable(message)} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _seconds(text: str, *, above_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 if above_zero else value >= 0) or value == float("inf"):
        least = "above 0" if above_zero else "0 or more"
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds, {least}")
    return value


def _positive_seconds(text: str) -> float:
    return _seconds(text, above_zero=True)


def _interval(text: str) -> float:
    value = _seconds(text)
    if value < 0.1:
        raise argparse.ArgumentTypeError(f"{text!r} is too short: 0.1 seconds or more")
    return value


_SIZE = re.compile(r"(\d+)\s*(k|kib|m|mib|g|gib|t|tib)?b?", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tib": 1024**4,
}
#: The largest size a flag takes: what a signed 64-bit count of bytes holds.
_MAX_SIZE = 2**63 - 1


def _size_or_zero(text: str) -> int:
    """Parse a byte count: ``0``, ``4096``, ``64K``, ``64KiB``, ``1MiB``."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 4096, 64KiB, 1MiB)")
    unit = match.group(2).lower() if match.group(2) else None
    value = int(match.group(1)) * _SIZE_UNITS[unit]
    if value > _MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is too large: at most {_MAX_SIZE} bytes")
    return value


def _size(text: str) -> int:
    """Parse a byte count of at least one byte."""
    value = _size_or_zero(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 byte")
    return value


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0660") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (0000 to 0777)")
    return value


def _group(text: str) -> str:
    """A group that exists, by name or id (checked here: before any file is touched)."""
    try:
        resolve_group(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _delimiter(text: str) -> bytes:
    try:
        return parse_delimiter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tcp(default_host: str | None) -> Callable[[str], TcpAddress]:
    def parse(text: str) -> TcpAddress:
        try:
            return parse_tcp_address(text, default_host=default_host)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _add_address_flags(parser: argparse.ArgumentParser, *, server: bool) -> None:
    group = parser.add_argument_group("addresses")
    group.add_argument(
        "--tcp",
        action="append",
        default=[],
        metavar="[HOST]:PORT",
        type=_tcp(None if server else "localhost"),
        help=(
            "listen on TCP: ':8000' is every interface, '127.0.0.1:8000', '[::1]:8000', "
            "port 0 picks a free port; repeatable"
            if server
            else "connect over TCP: 'localhost:8000', '[::1]:8000'"
        ),
    )
    group.add_argument(
        "--sock",
        action="append",
        default=[],
        metavar="PATH",
        help="listen on a Unix socket at PATH; repeatable"
        if server
        else "connect to the Unix socket at PATH",
    )


def _add_framing_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("framing")
    group.add_argument(
        "--framing",
        choices=FRAMING_KINDS,
        help="how frames are cut from the stream (default: line, or delimiter with --delimiter, fixed with --frame-size)",
    )
    group.add_argument(
        "--delimiter",
        type=_delimiter,
        metavar="SEQ",
        help=r"frame terminator for --framing delimiter; escapes \n \r \t \0 \e \\ \xHH",
    )
    group.add_argument(
        "--length-bytes",
        type=int,
        choices=(1, 2, 4, 8),
        help="length header size for --framing length (default 4)",
    )
    group.add_argument(
        "--byte-order", choices=("big", "little"), help="length header byte order (default big)"
    )
    group.add_argument(
        "--length-includes-header",
        action="store_true",
        help="the length header counts its own bytes too",
    )
    group.add_argument(
        "--frame-size", type=_size, metavar="N", help="frame size for --framing fixed"
    )
    group.add_argument(
        "--max-frame",
        type=_size,
        default=DEFAULT_MAX_FRAME,
        metavar="BYTES",
        help="largest frame accepted, e.g. 65536, 64KiB, 1MiB (default 1MiB)",
    )


def _framing_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Framing:
    kind = args.framing
    if kind is None:
        kind = "delimiter" if args.delimiter is not None else "fixed" if args.frame_size else "line"
    if args.delimiter is not None and kind != "delimiter":
        parser.error(f"--delimiter applies to --framing delimiter, not {kind}")
    length_flags = (
        args.length_bytes is not None or args.byte_order is not None or args.length_includes_header
    )
    if length_flags and kind != "length":
        parser.error(
            f"--length-bytes, --byte-order and --length-includes-header apply to --framing length, not {kind}",
        )
    if args.frame_size is not None and kind != "fixed":
        parser.error(f"--frame-size applies to --framing fixed, not {kind}")
    if kind == "fixed" and args.frame_size is None:
        parser.error("--framing fixed needs --frame-size N")
    try:
        return Framing(
            kind,
            delimiter=args.delimiter if args.delimiter is not None else b"\n",
            length_bytes=args.length_bytes or 4,
            byte_order=args.byte_order or "big",
            length_includes_header=args.length_includes_header,
            frame_size=args.frame_size,
            max_frame=args.max_frame,
        )
    except ValueError as exc:
        parser.error(str(exc))


def _serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="triodaemon",
        usage=(
            "triodaemon [serve] [--tcp [HOST]:PORT]... [--sock PATH]... [options]\n"
            "       triodaemon client (--tcp HOST:PORT | --sock PATH) [options]"
            "  send frames, print the replies\n"
            "       triodaemon check  (--tcp HOST:PORT | --sock PATH) [options]"
            "  check any echo server's framing\n"
            "       triodaemon bench  (--tcp HOST:PORT | --sock PATH) [options]"
            "  load any echo server\n"
            "       triodaemon ctl --control PATH COMMAND [options]"
            "  ask or tell a running daemon"
        ),
        description=(
            "A framed echo daemon on TCP and Unix sockets. Each subcommand has its own "
            "--help: 'triodaemon client --help', 'triodaemon check --help', "
            "'triodaemon bench --help', 'triodaemon ctl --help'."
        ),
    )
    parser.add_argument("--version", action="version", version=f"triodaemon {__version__}")
    _add_address_flags(parser, server=True)
    _add_socket_file_flags(parser)
    _add_process_flags(parser)
    _add_framing_flags(parser)
    _add_limit_flags(parser)
    return parser


def _add_socket_file_flags(parser: argparse.ArgumentParser) -> None:
    """The Unix socket files' modes and groups, and the control socket."""
    group = parser.add_argument_group("unix sockets")
    group.add_argument(
        "--sock-mode",
        type=_mode,
        default=0o600,
        metavar="MODE",
        help="socket file mode (default 0600)",
    )
    group.add_argument(
        "--sock-group", type=_group, metavar="GROUP", help="socket file group, name or id"
    )
    group = parser.add_argument_group("control")
    group.add_argument(
        "--control",
        metavar="PATH",
        help="answer 'triodaemon ctl' (newline-delimited JSON) on a Unix socket at PATH",
    )
    group.add_argument(
        "--control-mode",
        type=_mode,
        default=0o600,
        metavar="MODE",
        help="control socket file mode (default 0600: only its owner)",
    )
    group.add_argument(
        "--control-group",
        type=_group,
        metavar="GROUP",
        help="control socket file group, name or id",
    )


def _add_process_flags(parser: argparse.ArgumentParser) -> None:
    """Worker processes, upgrades, and the hidden flags triodaemon passes its own processes."""
    group = parser.add_argument_group("processes")
    group.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="serve with N worker processes under a supervisor (default 1: this process alone)",
    )
    # A worker's part, given by its supervisor: not for people.
    group.add_argument("--worker", type=_positive_int, help=argparse.SUPPRESS)
    group.add_argument("--inherit", type=int, action="append", default=[], help=argparse.SUPPRESS)
    group.add_argument("--channel", type=int, help=argparse.SUPPRESS)
    group = parser.add_argument_group("upgrades")
    group.add_argument(
        "--takeover",
        metavar="PATH",
        help=(
            "take over from the daemon whose control socket is PATH: its listening sockets "
            "and open connections move here, and it exits (give the same flags it has)"
        ),
    )
    group.add_argument(
        "--no-migrate",
        action="store_true",
        help=(
            "on an upgrade (SIGHUP, ctl upgrade, --takeover), let open connections finish "
            "in the old process, as in a drain, instead of moving them to the new one"
        ),
    )
    group.add_argument(
        "--upgrade-timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="call an upgrade off if the new process is not serving within this (default 30)",
    )
    # An upgrade's new process: its end of the channel to the old one. Not for people.
    group.add_argument("--handover-fd", type=int, help=argparse.SUPPRESS)
    # A worker's listening socket where its successor asks for its connections.
    group.add_argument("--handover-socket", type=int, help=argparse.SUPPRESS)


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Connections, timeouts, buffers, readiness, logging."""
    group = parser.add_argument_group("limits")
    group.add_argument(
        "--max-connections",
        type=_positive_int,
        default=1024,
        metavar="N",
        help="stop accepting at N open connections until one ends (default 1024); "
        "with --workers, N for all workers together",
    )
    group.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="close connections idle this long in both directions; 0 disables (default 300)",
    )
    group.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="on shutdown, cancel connections still busy after this long (default 10)",
    )
    group.add_argument(
        "--frame-timeout",
        type=_seconds,
        default=DEFAULT_FRAME_TIMEOUT,
        metavar="SECONDS",
        help=(
            "close a connection whose frame is not complete this long after its first byte; "
            f"0 disables (default {DEFAULT_FRAME_TIMEOUT:g})"
        ),
    )
    group.add_argument(
        "--max-buffered",
        type=_size_or_zero,
        metavar="BYTES",
        help=(
            "bytes all connections may hold in unfinished frames together; past it, "
            "connections holding one wait to be read; 0 disables (default 64MiB, or "
            "--max-frame if that is larger)"
        ),
    )
    parser.add_argument(
        "--readiness",
        choices=READINESS_NAMES,
        default="auto",
        help="how connections wait for data: epoll (Linux), portable (any system), "
        "auto (default: epoll where there is one)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log detail on stderr (default info)",
    )


def _client_parser() -> argparse.ArgumentParser:
    from .testing._client import DEFAULT_REPLY_TIMEOUT

    parser = _Parser(
        prog="triodaemon client",
        description=(
            "Send each stdin line (or each --send TEXT) as a frame; print each reply. "
            "Exits 0 once input ends and every reply has arrived."
        ),
    )
    _add_address_flags(parser, server=False)
    _add_framing_flags(parser)
    parser.add_argument(
        "--send",
        action="append",
        default=[],
        metavar="TEXT",
        help="send TEXT instead of reading stdin; repeatable",
    )
    parser.add_argument(
        "--count",
        type=_positive_int,
        default=1,
        metavar="N",
        help="send the messages N times (default 1)",
    )
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="pause between repetitions (default 0)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_REPLY_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when a reply is owed and none comes for this long (default {DEFAULT_REPLY_TIMEOUT:g})",
    )
    return parser


def _check_parser() -> argparse.ArgumentParser:
    from .testing.check import DEFAULT_SHRINK_TIME, SCENARIOS
    from .testing.check import DEFAULT_TIMEOUT as DEFAULT_CHECK_TIMEOUT

    parser = _Parser(
        prog="triodaemon check",
        description=(
            "Run a battery of framing scenarios against any echo server and report, per "
            "scenario, whether every frame came back whole and in order; for each failure, "
            "what kind of bug it is and the smallest case that still fails. Exit 0 only if "
            "all pass. A run takes at most (scenarios x --timeout) + --shrink-time seconds."
        ),
    )
    _add_address_flags(parser, server=False)
    _add_framing_flags(parser)
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_CHECK_TIMEOUT,
        metavar="SECONDS",
        help=(
            "time limit of each scenario, every exchange and connection in it included "
            f"(default {DEFAULT_CHECK_TIMEOUT:g})"
        ),
    )
    parser.add_argument(
        "--shrink-time",
        type=_seconds,
        default=DEFAULT_SHRINK_TIME,
        metavar="SECONDS",
        help=(
            "time the whole run may spend shrinking failing cases to the smallest "
            f"(default {DEFAULT_SHRINK_TIME:g}; 0: do not shrink)"
        ),
    )
    parser.add_argument(
        "--seed",
        type=_seed,
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


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 2**64-1")
    return value


def _bench_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="triodaemon bench",
        description=(
            "Load any echo server: N connections, D frames in flight on each; every echo "
            "is verified. Prints frames/s, MB/s, latency percentiles and errors."
        ),
    )
    _add_address_flags(parser, server=False)
    _add_framing_flags(parser)
    parser.add_argument(
        "--conns", type=_positive_int, default=1, metavar="N", help="connections (default 1)"
    )
    parser.add_argument(
        "--depth",
        type=_positive_int,
        default=1,
        metavar="D",
        help="frames in flight per connection (default 1)",
    )
    parser.add_argument(
        "--size",
        type=_size,
        default=64,
        metavar="B",
        help="wire bytes per frame, header or delimiter included (default 64)",
    )
    parser.add_argument(
        "--duration", type=_seconds, default=10.0, metavar="S", help="seconds measured (default 10)"
    )
    parser.add_argument(
        "--warmup",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="seconds of load before measuring (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


#: syslog priorities of the logging levels, for the journal's ``<N>`` prefixes.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class _LineFormatter(logging.Formatter):
    """One record's message on one line, whatever a path or a peer put in it (a
    traceback follows on lines of its own)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


class _JournalFormatter(_LineFormatter):
    """``<N>message``: the journal reads the priority from the prefix and stamps the
    time itself (so ``journalctl -p warning`` works)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 7)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


def _stderr_is_the_journal() -> bool:
    """Whether stderr is the journal: ``$JOURNAL_STREAM`` names its device and inode."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if _stderr_is_the_journal():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(_LineFormatter("%(asctime)s triodaemon %(levelname)s %(message)s"))
    root = logging.getLogger("triodaemon")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def _raise_fd_limit(wanted: int) -> None:
    """Raise the soft open-file limit toward the hard one, as much as ``wanted`` needs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.debug("raised the open-file limit from %d to %d", soft, target)
    elif soft < wanted:
        log.warning("open-file limit is %d; --max-connections may not be reachable", soft)


#: glibc's mallopt parameters, and the values the daemon sets (see below).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Buffers up to this size come from the heap: a receive (256 KiB) plus a
#: partial frame of the default 1 MiB limit fits with room to spare.
MALLOC_MMAP_THRESHOLD = 4 * 1024 * 1024


def _keep_large_buffers_on_the_heap() -> None:
    """glibc only: serve buffers up to 4 MiB from the heap instead of an mmap each.

    A decoder's buffer holds a read and a partial frame (hundreds of KiB on bulk
    transfer) and grows and shrinks with every read. Above glibc's mmap
    threshold (128 KiB until a large block is freed, and then whatever size
    that block had) each of those resizes is an ``mremap`` system call. Whether
    the threshold adapts depends on which buffer happens to be freed first:
    S4 of bench/run.py over TCP ran at 38k or 71k frames per CPU-second
    depending on it. A fixed threshold (with the trim threshold at twice it,
    as glibc's own adaptation does) makes it the fast case every time. Other C
    libraries keep their own policy; a failure here changes nothing else.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, 2 * MALLOC_MMAP_THRESHOLD)


def _error(message: str) -> int:
    prefix = "<3>" if _stderr_is_the_journal() else ""
    print(f"{prefix}triodaemon: error: {printable(message)}", file=sys.stderr, flush=True)
    return EXIT_FAILURE


def _on_stop_signal(daemon: Daemon | Supervisor, signum: int, drain_timeout: float) -> None:
    """A stop signal once the daemon is serving: drain, and abort on a second one."""
    name = _signals.signal_name(signum)
    if signum == _XCPU:
        # The kernel repeats it every CPU-second until the hard limit: never an abort.
        if daemon.draining:
            log.info("received %s during the drain: still draining", name)
        else:
            log.info(
                "received %s (the CPU time limit was reached): draining (deadline %gs); "
                "send SIGTERM to stop at once",
                name,
                drain_timeout,
            )
            daemon.drain()
    elif not daemon.draining:
        log.info(
            "received %s: draining (deadline %gs); send %s again to stop at once",
            name,
            drain_timeout,
            name,
        )
        daemon.drain()
    else:
        log.warning("received %s again: stopping now", name)
        daemon.abort()


class _Startup(trio.TaskStatus[tuple[Address, ...]]):
    """Where the start is: the ``task_status`` the command line gives :meth:`Daemon.serve`.

    It prints the readiness lines in the same instant the daemon starts serving
    (a plain ``nursery.start`` returns a scheduling pass later), so a signal is
    always either before readiness (the start stops) or after it (a drain).
    """

    def __init__(self, notifier: Notifier, *, quiet: bool = False) -> None:
        self.ready = trio.Event()
        """Set once the daemon serves (and the readiness lines are out)."""
        self.quiet = quiet
        """A worker's: its supervisor prints the readiness lines."""
        self.failure: str | None = None
        """Why serving failed to start, after the listeners were bound."""
        self.stopped_by: int | None = None
        """A stop signal that came before the daemon was ready."""
        self._notifier = notifier
        self.labels: list[str] = []
        """What to say of each listener in its readiness line, in listener order."""
        self.taking_over = False
        """An upgrade's new process: silent to systemd until the old one has told it
        that this is the main process now (it sends ``MAINPID=`` and ``READY=1``)."""
        self.go = trio.Event()
        """A worker taking over: set when its supervisor says to take the old
        worker's connections (its own takeover is complete)."""
        self.control: BoundListener | None = None
        """The control socket, announced before the listeners (it answers first)."""

    def taken_over(self, pid: int, labels: list[str]) -> None:
        """This process takes over from ``pid``: say so in each readiness line, and
        stay silent to systemd until the old process has made this one the main one."""
        self.labels = [
            f"{label}, " * bool(label) + f"taken over from pid {pid}" for label in labels
        ]
        self.taking_over = True

    def started(self, value: tuple[Address, ...] | None = None) -> None:
        if self.stopped_by is not None:
            return  # serve() got this far before its cancellation reached it
        if self.control is not None:
            control = printable(str(self.control.address))
            print(f"triodaemon: control on {control}", file=sys.stderr, flush=True)
        for index, address in enumerate(() if self.quiet else value or ()):
            label = self.labels[index] if index < len(self.labels) else ""
            label = f" ({label})" if label else ""
            line = printable(f"listening on {address}{label}")
            print(f"triodaemon: {line}", file=sys.stderr, flush=True)
        self.ready.set()
        if not self.taking_over:
            self._notifier.send("READY=1", "STATUS=serving")


@attrs.frozen
class _Start:
    """How this process starts serving, besides its configuration."""

    argv: Sequence[str]
    """The command line's arguments (for an upgrade's new process)."""
    activated: list[tuple[socket.socket, str]]
    """systemd's sockets, and their names."""
    channel: socket.socket | None = None
    """A worker's end of its supervisor's channel."""
    takeover: str | socket.socket | None = None
    """Take over from a running daemon: its control socket's path, or (an upgrade's
    new process) the channel the old process made; a worker: the handover socket of
    the old worker it succeeds."""
    handover_socket: socket.socket | None = None
    """A worker's: where its successor will ask for its connections."""


async def _serve(
    config: DaemonConfig,
    notifier: Notifier,
    start: _Start,
    server: Callable[[], Daemon | Supervisor],
) -> int:
    """Serve until stopped what ``server`` makes: a daemon, or a supervisor of
    workers; a worker (``start.channel``: its supervisor's end) answers its supervisor."""
    channel = start.channel
    # The receiver is in place before the held signals are let through, so one
    # sent at any moment of startup arrives here; before and after it, they do nothing.
    _signals.inert()
    with trio.open_signal_receiver(*_signals.HANDLED_SIGNALS) as signals, _signals.released():
        daemon = server()
        startup = _Startup(notifier, quiet=channel is not None)
        notify = notifier.send if channel is None else None  # (a worker's supervisor tells)
        if isinstance(daemon, Daemon):
            giver = Giver.for_daemon(daemon, notify)
        else:
            giver = Giver.for_supervisor(daemon, notify)
        upgrader = None
        if channel is None:  # (a worker upgrades with its supervisor)
            upgrader = Upgrader(giver, start.argv, notifier)
        commands = daemon.control_commands()
        giver.add_commands(
            commands, "on the control socket", upgrader.upgrade if upgrader else None
        )

        async with trio.open_nursery() as nursery:

            async def handle_signals() -> None:
                async for signum in signals:
                    if signum in _signals.STATS_SIGNALS:
                        log.info("stats: %s", daemon.stats.summary())
                    elif signum in _signals.UPGRADE_SIGNALS:
                        _on_upgrade_signal(signum, upgrader, startup, nursery)
                    elif signum in _signals.IGNORED_SIGNALS:
                        log.warning("%s", _signals.ignored_message(signum))
                    elif startup.ready.is_set():
                        _on_stop_signal(daemon, signum, config.drain_timeout)
                    elif startup.stopped_by is None:
                        startup.stopped_by = signum
                        nursery.cancel_scope.cancel()  # whatever binding is under way

            async def serve_then_stop(
                listeners: list[BoundListener], control: BoundListener | None
            ) -> None:
                try:
                    await daemon.serve(
                        listeners, control=control, commands=commands, task_status=startup
                    )
                except TriodaemonError as exc:  # a worker that failed at the first start
                    startup.failure = str(exc)
                nursery.cancel_scope.cancel()

            nursery.start_soon(handle_signals)
            # systemd's sockets first: they are what the unit file promised.
            adopted = [
                BoundListener.from_socket(sock, label=f"systemd socket {name}")
                for sock, name in start.activated
            ]
            labels = [listener.label for listener in adopted]
            listeners: list[BoundListener] = []
            control: BoundListener | None = None
            handover: tuple[Channel, Taken] | None = None
            try:
                if start.takeover is not None:
                    handover = await _take_over(start.takeover, config)
                    taken = handover[1]
                    adopted, control = taken.listeners, taken.control
                    labels = [listener.label for listener in adopted]
                    if isinstance(daemon, Supervisor):
                        daemon.predecessors = taken.workers
                    startup.taken_over(taken.pid, labels)
                else:
                    startup.labels = labels
                    listeners, control = await _bind(config, adopted, labels)
            except TriodaemonError as exc:
                for listener in [*adopted, *listeners]:
                    listener.close()
                nursery.cancel_scope.cancel()
                return _error(str(exc))
            listeners = [*adopted, *listeners]
            startup.control = control
            # serve() owns them from its first step, even if cancelled at once.
            nursery.start_soon(serve_then_stop, listeners, control)
            if channel is not None:
                nursery.start_soon(_answer_supervisor, daemon, startup, channel)
            if start.handover_socket is not None:
                assert isinstance(daemon, Daemon)
                nursery.start_soon(_serve_successor, giver, startup, start.handover_socket)
            if handover is not None:
                nursery.start_soon(_finish_takeover, *handover, daemon, giver, startup, notifier)
            else:
                nursery.start_soon(notifier.run, daemon, config.drain_timeout)
    if startup.failure is not None:
        return _error(startup.failure)
    if startup.stopped_by is not None:
        name = _signals.signal_name(startup.stopped_by)
        print(
            f"triodaemon: {name} while starting; stopped before serving",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_SIGNAL_BASE + startup.stopped_by
    summary = daemon.summary
    return EXIT_FAILURE if summary is not None and summary.forced else 0


async def _bind(
    config: DaemonConfig, passed: Sequence[BoundListener], labels: Sequence[str]
) -> tuple[list[BoundListener], BoundListener | None]:
    """Bind the listeners the flags name that systemd has not passed, then the
    control socket; every path is checked before any file is touched.

    Raises:
        AddressError: one line (nothing stays bound).
    """
    if config.control is not None:  # (open_listeners checks its own first)
        check_socket_path(config.control.path)
    listeners = await open_listeners(
        _not_passed(config.listen, passed, labels),
        sock_mode=config.sock_mode,
        sock_group=config.sock_group,
        backlog=config.backlog,
    )
    if config.control is None:
        return listeners, None
    try:
        control = await open_unix(
            config.control, mode=config.control_mode, group=config.control_group
        )
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners, control


def _not_passed(
    addresses: Sequence[Address], passed: Sequence[BoundListener], labels: Sequence[str]
) -> list[Address]:
    """The addresses to bind: those systemd has not passed a socket for already."""
    left = []
    for address in addresses:
        found = [
            label
            for listener, label in zip(passed, labels, strict=True)
            if listener.serves(address)
        ]
        if found:
            log.info("%s: systemd passed this socket (%s); serving it once", address, found[0])
        else:
            left.append(address)
    return left


def _on_upgrade_signal(
    signum: int, upgrader: Upgrader | None, startup: _Startup, nursery: trio.Nursery
) -> None:
    """SIGHUP: start an upgrade (its outcome is logged), if this process can."""
    name = _signals.signal_name(signum)
    if upgrader is None:
        log.warning(
            "received %s: ignored (%s)",
            name,
            "a worker does not upgrade alone"
            if startup.quiet
            else "worker mode does not upgrade yet; restart to run a new release",
        )
    elif not startup.ready.is_set():
        log.warning("received %s while starting: ignored (an upgrade can start once serving)", name)
    else:

        async def upgrade() -> None:
            with contextlib.suppress(ControlError):  # (logged)
                await upgrader.upgrade(name)

        nursery.start_soon(upgrade)


async def _take_over(target: str | socket.socket, config: DaemonConfig) -> tuple[Channel, Taken]:
    """Connect to the daemon to take over from (its control socket, or the channel
    it made) and take its listening sockets.

    Raises:
        HandoverError: it refused, or failed; the message says why.
    """
    if isinstance(target, str):
        try:
            stream = await connect(UnixAddress(target))
        except ClientError as exc:
            raise HandoverError(
                f"cannot take over: {exc} (is a daemon running with --control {target}?)"
            ) from None
        where = f"the daemon at {target}"
    else:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(target))
        where = "the old process"
    try:
        with trio.move_on_after(config.upgrade_timeout):
            return await request_takeover(
                stream, where, framing=config.framing, migrate=config.migrate
            )
        raise HandoverError(
            f"{where} did not hand its sockets over within {config.upgrade_timeout:g}s "
            "(--upgrade-timeout)"
        )
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, HandoverError):
            raise HandoverError(f"cannot take over: {exc}") from None
        raise


async def _finish_takeover(
    channel: Channel,
    taken: Taken,
    daemon: Daemon | Supervisor,
    giver: Giver,
    startup: _Startup,
    notifier: Notifier,
) -> None:
    """Once serving: tell the old process, and adopt the connections it hands over;
    then speak to systemd (the old process has made this one the main one).

    A worker waits for its supervisor's word first (the whole new supervisor is
    ready); a supervisor, once it has taken over, gives its workers that word.
    """
    try:
        await startup.ready.wait()
        if startup.quiet:
            await startup.go.wait()
        count = await take_connections(channel, daemon, taken)
    except CalledOff as exc:
        if not daemon.draining:  # the old process called it off: it serves on, we stop
            startup.failure = f"cannot take over: {exc}"
            daemon.drain()
        else:
            log.warning("took over, but %s", exc)
        await channel.aclose()
        return
    except HandoverError as exc:
        log.warning("took over, but the connections' handover ended early: %s", exc)
    except Exception as exc:  # the boundary of the handover channel: serve on
        fault(giver.faults, "taking the connections over", exc)
    else:
        if isinstance(daemon, Daemon):
            log.info("took over: %d connection%s carried on here", count, "" if count == 1 else "s")
    finally:
        await channel.aclose()
    if isinstance(daemon, Supervisor):
        await daemon.release_takeovers()
    await notifier.run(daemon, daemon.config.drain_timeout)


async def _serve_successor(giver: Giver, startup: _Startup, sock: socket.socket) -> None:
    """A worker's handover socket: where the worker that succeeds it, at an upgrade
    of the supervisor, asks for its connections (``--takeover``)."""
    from ._control import Commands, serve_control

    listener = BoundListener.from_socket(sock, owns_path=True)
    try:
        await startup.ready.wait()
        commands = Commands(giver.faults)
        commands.add(
            "takeover",
            giver.takeover_command(who="an upgrade of the supervisor"),
            "takeover versions=[1]",
            "the worker that succeeds this one takes its connections over",
        )
        await serve_control(listener, commands)
    finally:
        listener.close()


#: The most worker processes --workers starts: a typo of 100000 should not fork a storm.
MAX_WORKERS = max(64, 4 * (os.cpu_count() or 1))


async def _answer_supervisor(
    daemon: Daemon | Supervisor, startup: _Startup, channel: socket.socket
) -> None:
    """A worker's side of its socketpair: answer the supervisor once serving; drain
    when the supervisor is gone (its end closed: it exited, or was killed)."""
    from ._control import serve_control_stream

    stream = trio.SocketStream(trio.socket.from_stdlib_socket(channel))
    await startup.ready.wait()
    assert isinstance(daemon, Daemon)
    commands = daemon.control_commands("by the supervisor")

    async def take_connections(args: dict[str, Any]) -> dict[str, Any]:
        startup.go.set()  # (the takeover under way, if any, goes on)
        return {}

    commands.add(
        "take-connections",
        take_connections,
        "take-connections",
        "a worker taking over: the new supervisor is ready, take the old worker's connections",
    )
    await serve_control_stream(stream, commands, idle_timeout=math.inf)
    if not daemon.draining:
        log.warning("the supervisor is gone: draining")
        daemon.drain()


def _check_workers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--workers`` above what this machine can use, or above ``--max-connections``
    (the whole service's, shared out): usage errors."""
    if args.workers > MAX_WORKERS:
        parser.error(
            f"--workers {args.workers} is more than this machine can use: at most "
            f"{MAX_WORKERS} (4 per core, 64 at least)"
        )
    if args.max_connections < args.workers:
        parser.error(
            f"--max-connections {args.max_connections} is the whole service's limit, "
            f"fewer than the {args.workers} workers that share it: give at least "
            f"{args.workers}, or fewer workers"
        )


def _config_from_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    listen: list[Address],
    framing: Framing,
    control: UnixAddress | None,
) -> DaemonConfig:
    """The configuration the flags say; a value it refuses is a usage error."""
    options: dict[str, Any] = {}
    if args.max_buffered is not None:  # (else DaemonConfig's default: room for a frame)
        options["max_buffered"] = args.max_buffered
    try:
        config = DaemonConfig(
            listen,
            framing,
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            drain_timeout=args.drain_timeout,
            frame_timeout=args.frame_timeout,
            readiness=args.readiness,
            sock_mode=args.sock_mode,
            sock_group=args.sock_group,
            control=control,
            control_mode=args.control_mode,
            control_group=args.control_group,
            migrate=not args.no_migrate,
            upgrade_timeout=args.upgrade_timeout,
            **options,
        )
        open_readiness(config.readiness)  # one that this system has
    except ValueError as exc:
        parser.error(str(exc))
    return config


def _given_socket(parser: argparse.ArgumentParser, flag: str, fd: int) -> socket.socket:
    """The socket behind a descriptor another triodaemon passed (``--inherit 3``):
    these flags are for triodaemon's own use, and a wrong one is a usage error."""
    try:
        if fd <= 2:
            raise OSError(errno.EBADF, "not one that is passed")
        return socket.socket(fileno=fd)
    except OSError as exc:
        parser.error(
            f"{flag} {fd}: not a socket this process was given ({exc.strerror}); "
            "the flag is for triodaemon's own processes"
        )


def serve_main(argv: Sequence[str]) -> int:
    parser = _serve_parser()
    args = parser.parse_args(argv)
    framing = _framing_from_args(parser, args)
    worker = args.worker is not None
    listen: list[Address] = [*args.tcp, *(UnixAddress(path) for path in args.sock)]
    control = UnixAddress(args.control) if args.control is not None else None
    if not worker:
        _check_workers(parser, args)
    takeover: str | socket.socket | None = args.takeover
    if args.handover_fd is not None:
        takeover = _given_socket(parser, "--handover-fd", args.handover_fd)
    if worker:
        # The supervisor's sockets, inherited: the addresses in argv are its business.
        # (A worker taking over from an old one gets the same sockets from it.)
        listen, control = [], None
        inherited = [_given_socket(parser, "--inherit", fd) for fd in args.inherit]
        if takeover is not None:
            for sock in inherited:
                sock.close()
            inherited = []
        activated = [(sock, "") for sock in inherited]
    elif takeover is not None:
        # What the old process serves, handed over: the addresses in argv were its business.
        activated_sockets()  # (unset: nothing we start inherits them)
        listen, control, activated = [], None, []
    else:
        try:
            activated = activated_sockets()  # and unset: nothing we start inherits them
        except AddressError as exc:
            return _error(str(exc))
    if not listen and not activated and takeover is None:
        parser.error(
            "nothing to listen on: give --tcp [HOST]:PORT and/or --sock PATH "
            "(or start it from a systemd socket unit)"
        )
    config = _config_from_args(parser, args, listen, framing, control)
    _setup_logging(args.log_level)
    # Each connection is one descriptor; leave room for listeners and logs.
    _raise_fd_limit(config.max_connections + len(listen) + len(activated) + 64)
    _keep_large_buffers_on_the_heap()
    notifier = Notifier.from_environment()  # and unset: nothing we start inherits it
    server: Callable[[], Daemon | Supervisor]
    if worker or args.workers == 1:
        server = partial(Daemon, config)
    else:
        server = partial(Supervisor, config, args.workers, argv)
    start = _Start(
        argv,
        activated,
        None if args.channel is None else _given_socket(parser, "--channel", args.channel),
        takeover,
        None
        if args.handover_socket is None
        else _given_socket(parser, "--handover-socket", args.handover_socket),
    )
    try:
        return trio.run(_serve, config, notifier, start, server)
    finally:
        _signals.ignore_from_now_on()  # (see _signals: up to the last instant)
        notifier.close()


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


def _stdout_failed(exc: OSError) -> ClientError:
    """Standard output failed: like ``| head``, the reader is gone, or the disk is
    full. Silence the interpreter's own flush at exit; the error is one line."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(exc, BrokenPipeError):
        return ClientError("standard output was closed")
    return ClientError(f"cannot write to standard output: {exc.strerror or exc}")


def _print_out(text: str) -> int:
    """Print ``text`` on stdout: 0, or the exit code after one line saying why not."""
    try:
        print(text, flush=True)
    except OSError as exc:
        return _error(str(_stdout_failed(exc)))
    return 0


async def _client(address: Address, framing: Framing, args: argparse.Namespace) -> int:
    from .testing._client import exchange, repeat

    raw = framing.kind == "raw"
    stdout = sys.stdout.buffer

    async def show(frame: bytes) -> None:
        try:
            stdout.write(frame if raw else frame + b"\n")
            stdout.flush()
        except OSError as exc:
            raise _stdout_failed(exc) from None

    if args.send:
        messages: AsyncIterator[bytes] = repeat(
            [text.encode() for text in args.send], args.count, args.interval
        )
    else:
        messages = _stdin_lines(keep_newline=raw)
    try:
        stream = await connect(address)
        async with stream:
            await exchange(stream, messages, show, framing=framing, reply_timeout=args.timeout)
    except TriodaemonError as exc:
        return _error(str(exc))
    return 0


def _one_target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Address:
    targets: list[Address] = [*args.tcp, *(UnixAddress(path) for path in args.sock)]
    if len(targets) != 1:
        parser.error("give exactly one of --tcp HOST:PORT or --sock PATH")
    return targets[0]


def _only_interrupts(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``KeyboardInterrupt``, or a group (from a nursery) of nothing else."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    inner = getattr(exc, "exceptions", None)  # BaseExceptionGroup, without naming it on 3.10
    return isinstance(inner, tuple) and bool(inner) and all(map(_only_interrupts, inner))


async def _interruptible(command: Callable[..., Awaitable[int]], *args: Any) -> int:
    """Run a client command; Ctrl-C cancels it and raises ``KeyboardInterrupt`` here.

    Left to trio, the interrupt is raised wherever the program happens to be,
    between creating a coroutine and awaiting it too, and the interpreter then
    warns about the coroutine at exit. Cancelling stops it at a checkpoint, with
    every ``finally`` run.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return await command(*args)  # inherited as ignored (``cmd &`` in a script): kept
    code = 0
    with trio.open_signal_receiver(signal.SIGINT) as interrupts:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                nonlocal code
                code = await command(*args)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            async for _ in interrupts:
                nursery.cancel_scope.cancel()
                raise KeyboardInterrupt
    return code


def client_main(argv: Sequence[str]) -> int:
    parser = _client_parser()
    args = parser.parse_args(argv)
    framing = _framing_from_args(parser, args)
    return trio.run(_interruptible, _client, _one_target(parser, args), framing, args)


async def _check(address: Address, framing: Framing, args: argparse.Namespace) -> int:
    from .testing.check import CheckReport, replay, run_check

    # Progress only on a terminal, and only for the scenario still running (the
    # table says the rest); elsewhere (a CI log) the table alone, once.
    live = sys.stderr.isatty() and not args.json

    def started(name: str) -> None:
        if live:
            print(f"\r\x1b[K  running {name} ...", end="", file=sys.stderr, flush=True)

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
            return _error(str(exc))
    code = _print_out(report.to_json() if args.json else report.table()) or (
        0 if report.passed else EXIT_FAILURE
    )
    if args.junit_xml is not None:
        try:
            await trio.Path(args.junit_xml).write_text(report.junit_xml(), encoding="utf-8")
        except OSError as exc:
            return _error(f"cannot write {args.junit_xml}: {_reason_of(exc)}")
    return code


def _reason_of(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


async def _bench(address: Address, framing: Framing, args: argparse.Namespace) -> int:
    from .testing._bench import run_bench

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
        return _error(str(exc))
    if live:
        print(file=sys.stderr)
    return _print_out(result.to_json() if args.json else result.table()) or (
        0 if result.errors == 0 else EXIT_FAILURE
    )


def bench_main(argv: Sequence[str]) -> int:
    parser = _bench_parser()
    args = parser.parse_args(argv)
    framing = _framing_from_args(parser, args)
    return trio.run(_interruptible, _bench, _one_target(parser, args), framing, args)


def check_main(argv: Sequence[str]) -> int:
    parser = _check_parser()
    args = parser.parse_args(argv)
    framing = _framing_from_args(parser, args)
    target = _one_target(parser, args)
    args.replay_cases = _replay_cases(parser, args) if args.replay is not None else None
    if args.junit_xml is not None:
        problem = _unwritable(args.junit_xml)
        if problem:
            parser.exit(
                EXIT_USAGE, f"{parser.prog}: error: cannot write {args.junit_xml}: {problem}\n"
            )
    return trio.run(_interruptible, _check, target, framing, args)


def _replay_cases(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Any]:
    """The cases ``--replay FILE`` names, or exit 2 with one line saying why not."""
    from .testing.check import cases_from_file

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
        parser.exit(
            EXIT_USAGE, f"{parser.prog}: error: cannot replay {args.replay}: {_reason_of(exc)}\n"
        )


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


#: How long ``ctl`` waits for an answer, by default (an upgrade's takes longer).
CTL_TIMEOUT = 10.0
CTL_UPGRADE_TIMEOUT = 300.0

_CTL_COMMANDS = ("stats", "connections", "drain", "log-level", "upgrade", "help")


def _ctl_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="triodaemon ctl",
        description=(
            "Ask a running daemon (started with --control PATH) what it is doing, or tell "
            "it what to do: stats, connections, drain (a graceful shutdown), log-level "
            "LEVEL, upgrade (a new process takes over, dropping nothing), help."
        ),
    )
    parser.add_argument(
        "--control", required=True, metavar="PATH", help="the daemon's control socket"
    )
    parser.add_argument("command", choices=_CTL_COMMANDS, help="what to ask or tell")
    parser.add_argument("level", nargs="?", help="for log-level: debug, info, warning, error")
    parser.add_argument(
        "--json", action="store_true", help="print the reply's result as JSON, not a table"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help=(
            f"give up when the daemon has not answered within this (default "
            f"{CTL_TIMEOUT:g}; {CTL_UPGRADE_TIMEOUT:g} for upgrade, which waits for the new process)"
        ),
    )
    parser.add_argument(
        "--watch",
        type=_interval,
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

    from ._control import open_control
    from ._ctl import rates, render_reply, render_stats

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
                if code := _print_out(text):
                    return code
                if args.watch is None:
                    return 0
                previous = result if args.command == "stats" else {}
                await trio.sleep(args.watch)
    except (ClientError, ControlError) as exc:
        return _error(str(exc))


def ctl_main(argv: Sequence[str]) -> int:
    parser = _ctl_parser()
    args = parser.parse_args(argv)
    if args.command == "log-level" and args.level is None:
        parser.error("log-level needs a LEVEL: debug, info, warning or error")
    if args.command != "log-level" and args.level is not None:
        parser.error(f"{args.command} takes no argument (got {args.level!r})")
    if args.watch is not None and args.command not in ("stats", "connections"):
        parser.error("--watch applies to stats and connections")
    return trio.run(_interruptible, _ctl, args)


_SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "client": client_main,
    "check": check_main,
    "bench": bench_main,
    "ctl": ctl_main,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    The signals that :mod:`triodaemon._signals` holds may be held on entry (the
    entry point holds them first thing): serving lets them through once its
    signal receiver is in place, every other command at once. Ctrl-C in a
    command other than serving is one line and exit 130.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = _SUBCOMMANDS.get(arguments[0]) if arguments else None
    if command is None:
        return serve_main(arguments[1:] if arguments[:1] == ["serve"] else arguments)
    try:
        _signals.ignore_as_inherited()  # as any program would: only the daemon overrides them
        with _signals.released():
            return command(arguments[1:])
    except BaseException as exc:
        if not _only_interrupts(exc):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C changes nothing now
        print("triodaemon: interrupted", file=sys.stderr, flush=True)
        return EXIT_SIGNAL_BASE + signal.SIGINT
