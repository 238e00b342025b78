"""``triodaemon [serve]``: the daemon's flags, and the role they make.

Strategy: parse and validate everything before trio starts, so a bad flag is
one line and exit 2; then build the role the flags say (:mod:`._process.roles`:
a daemon alone, a supervisor of workers, a worker; taking over or not) and run
it (:mod:`._process.run`), which binds every listener before announcing
readiness, so a port in use or an unusable path is one line and exit 1.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
from collections.abc import Sequence
from typing import Any

import trio

from .. import _signals
from .._config import (
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_PROXY_TIMEOUT,
    DaemonConfig,
    ProcessConfig,
    ProxyProtocol,
)
from .._errors import AddressError
from .._framing import Framing
from .._listeners import Address, BoundListener, UnixAddress
from .._lowlevel.readiness import READINESS_NAMES, open_readiness
from .._process.logs import error_line, setup_logging
from .._process.roles import Role, Standalone, Supervising, Worker
from .._process.run import run_role
from .._process.startup import Start
from .._process.tuning import keep_large_buffers_on_the_heap, raise_fd_limit
from .._systemd import Notifier, activated_sockets
from .._version import __version__
from ._args import (
    Parser,
    add_address_flags,
    add_framing_flags,
    framing_from_args,
    group_name,
    mode,
    network,
    positive_int,
    positive_seconds,
    seconds,
    size_or_zero,
    socket_path,
    tcp,
)


def _serve_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    add_address_flags(parser, server=True)
    _add_socket_file_flags(parser)
    _add_process_flags(parser)
    add_framing_flags(parser)
    _add_limit_flags(parser)
    _add_balancer_flags(parser)
    return parser


def _add_balancer_flags(parser: argparse.ArgumentParser) -> None:
    """Behind a load balancer that speaks the PROXY protocol."""
    group = parser.add_argument_group("behind a load balancer")
    group.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="every connection must begin with a PROXY protocol v1 or v2 header (nginx's "
        "proxy_protocol on, HAProxy's send-proxy-v2); the client it names is the one "
        "logged and listed, the balancer beside it. On every listener",
    )
    group.add_argument(
        "--proxy-timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="close a connection whose header is not whole this long after the accept "
        f"(default {DEFAULT_PROXY_TIMEOUT:g})",
    )
    group.add_argument(
        "--agent",
        type=tcp(None),
        metavar="[HOST]:PORT",
        help="answer HAProxy's agent-check on this TCP port: 'ready 100%%' while serving, "
        "'drain' once a drain is coming",
    )
    group.add_argument(
        "--drain-delay",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="on a stop signal or 'ctl drain', first say 'drain' on --agent and serve on, "
        "accepting, this long; then drain (default 0)",
    )
    group.add_argument(
        "--proxy-from",
        type=network,
        action="append",
        metavar="ADDRESS[/BITS]",
        help="accept TCP connections only from this balancer address or network; "
        "repeat for several (default: any)",
    )


def _add_socket_file_flags(parser: argparse.ArgumentParser) -> None:
    """The Unix socket files' modes and groups, and the control socket."""
    group = parser.add_argument_group("unix sockets")
    group.add_argument(
        "--sock-mode",
        type=mode,
        default=0o600,
        metavar="MODE",
        help="socket file mode (default 0600)",
    )
    group.add_argument(
        "--sock-group", type=group_name, metavar="GROUP", help="socket file group, name or id"
    )
    group = parser.add_argument_group("control")
    group.add_argument(
        "--control",
        type=socket_path,
        metavar="PATH",
        help="answer 'triodaemon ctl' (newline-delimited JSON) on a Unix socket at PATH",
    )
    group.add_argument(
        "--control-mode",
        type=mode,
        default=0o600,
        metavar="MODE",
        help="control socket file mode (default 0600: only its owner)",
    )
    group.add_argument(
        "--control-group",
        type=group_name,
        metavar="GROUP",
        help="control socket file group, name or id",
    )


def _add_process_flags(parser: argparse.ArgumentParser) -> None:
    """Worker processes, upgrades, and the hidden flags triodaemon passes its own processes."""
    group = parser.add_argument_group("processes")
    group.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="serve with N worker processes under a supervisor (default 1: this process alone)",
    )
    # A worker's part, given by its supervisor: not for people.
    group.add_argument("--worker", type=positive_int, help=argparse.SUPPRESS)
    group.add_argument(
        "--inherit", type=_inherited, action="append", default=[], help=argparse.SUPPRESS
    )
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
        type=positive_seconds,
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
        type=positive_int,
        default=1024,
        metavar="N",
        help="stop accepting at N open connections until one ends (default 1024); "
        "with --workers, N for all workers together",
    )
    group.add_argument(
        "--idle-timeout",
        type=seconds,
        default=300.0,
        metavar="SECONDS",
        help="close connections idle this long in both directions; 0 disables (default 300)",
    )
    group.add_argument(
        "--drain-timeout",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="on shutdown, cancel connections still busy after this long (default 10)",
    )
    group.add_argument(
        "--frame-timeout",
        type=seconds,
        default=DEFAULT_FRAME_TIMEOUT,
        metavar="SECONDS",
        help=(
            "close a connection whose frame is not complete this long after its first byte; "
            f"0 disables (default {DEFAULT_FRAME_TIMEOUT:g})"
        ),
    )
    group.add_argument(
        "--max-buffered",
        type=size_or_zero,
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


#: The most worker processes --workers starts: a typo of 100000 should not fork a storm.
MAX_WORKERS = max(64, 4 * (os.cpu_count() or 1))


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
) -> ProcessConfig:
    """The configuration the flags say; a value it refuses is a usage error."""
    options: dict[str, Any] = {}
    if args.max_buffered is not None:  # (else DaemonConfig's default: room for a frame)
        options["max_buffered"] = args.max_buffered
    if args.proxy_protocol:
        options["proxy_protocol"] = ProxyProtocol(
            timeout=args.proxy_timeout or DEFAULT_PROXY_TIMEOUT, trusted=args.proxy_from or ()
        )
    elif args.proxy_timeout is not None or args.proxy_from:
        given = "--proxy-timeout" if args.proxy_timeout is not None else "--proxy-from"
        parser.error(f"{given} applies with --proxy-protocol only")
    try:
        served = DaemonConfig(
            listen,
            framing,
            max_connections=args.max_connections,
            idle_timeout=args.idle_timeout,
            drain_timeout=args.drain_timeout,
            frame_timeout=args.frame_timeout,
            readiness=args.readiness,
            sock_mode=args.sock_mode,
            sock_group=args.sock_group,
            **options,
        )
        config = ProcessConfig(
            served,
            control,
            control_mode=args.control_mode,
            control_group=args.control_group,
            migrate=not args.no_migrate,
            upgrade_timeout=args.upgrade_timeout,
            agent=args.agent,
            drain_delay=args.drain_delay,
        )
        open_readiness(served.readiness)  # one that this system has
    except ValueError as exc:
        parser.error(str(exc))
    return config


def _inherited(text: str) -> tuple[int, str | None]:
    """``--inherit FD`` or ``--inherit FD:PATH``: a listening socket a worker inherits
    from its supervisor, and for a Unix socket the path it serves (what it was bound
    to was another name: see _socketfile)."""
    fd, colon, path = text.partition(":")
    try:
        return int(fd), path if colon else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FD or FD:PATH") from None


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


def main(argv: Sequence[str]) -> int:
    parser = _serve_parser()
    args = parser.parse_args(argv)
    framing = framing_from_args(parser, args)
    worker = args.worker is not None
    listen: list[Address] = [*args.tcp, *(UnixAddress(path) for path in args.sock)]
    control = UnixAddress(args.control) if args.control is not None else None
    if not worker:
        _check_workers(parser, args)
    takeover: str | socket.socket | None = args.takeover
    if args.handover_fd is not None:
        takeover = _given_socket(parser, "--handover-fd", args.handover_fd)
    passed: list[BoundListener] = []
    if worker:
        # The supervisor's sockets, inherited: the addresses in argv are its business.
        # (A worker taking over from an old one gets the same sockets from it.)
        listen, control = [], None
        for fd, path in args.inherit:
            sock = _given_socket(parser, "--inherit", fd)
            if takeover is None:
                passed.append(BoundListener.from_socket(sock, path=path))
            else:
                sock.close()
    elif takeover is not None:
        # What the old process serves, handed over: the addresses in argv were its business.
        activated_sockets()  # (unset: nothing we start inherits them)
        listen, control = [], None
    else:
        try:
            activated = activated_sockets()  # and unset: nothing we start inherits them
        except AddressError as exc:
            return error_line(str(exc))
        passed = [
            BoundListener.from_socket(sock, label=f"systemd socket {name}")
            for sock, name in activated
        ]
    if not listen and not passed and takeover is None:
        parser.error(
            "nothing to listen on: give --tcp [HOST]:PORT and/or --sock PATH "
            "(or start it from a systemd socket unit)"
        )
    config = _config_from_args(parser, args, listen, framing, control)
    setup_logging(args.log_level)
    # Each connection is one descriptor; leave room for listeners and logs.
    raise_fd_limit(config.daemon.max_connections + len(listen) + len(passed) + 64)
    keep_large_buffers_on_the_heap()
    notifier = Notifier.from_environment()  # and unset: nothing we start inherits it
    start = Start(
        argv,
        passed,
        None if args.channel is None else _given_socket(parser, "--channel", args.channel),
        takeover,
        None
        if args.handover_socket is None
        else _given_socket(parser, "--handover-socket", args.handover_socket),
    )
    role: Role
    if worker:
        role = Worker(config, start, notifier)
    elif args.workers == 1:
        role = Standalone(config, start, notifier)
    else:
        role = Supervising(config, start, notifier, args.workers)
    try:
        return trio.run(run_role, role)
    finally:
        _signals.ignore_from_now_on()  # (see _signals: up to the last instant)
        notifier.close()
