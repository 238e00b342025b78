"""What every subcommand's parser shares: one-line usage errors, the value types
of the flags, the address and framing flags."""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable
from typing import NoReturn

from .._decoders import DEFAULT_MAX_FRAME
from .._errors import printable
from .._framing import FRAMING_KINDS, Framing, parse_delimiter
from .._listeners import Address, TcpAddress, UnixAddress, parse_tcp_address
from .._process.logs import EXIT_USAGE
from .._socketfile import resolve_group


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not usage plus message."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {printable(message)} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def seconds(text: str, *, above_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value > 0 if above_zero else value >= 0) or value == float("inf"):
        least = "above 0" if above_zero else "0 or more"
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds, {least}")
    return value


def positive_seconds(text: str) -> float:
    return seconds(text, above_zero=True)


def network(text: str) -> str:
    """An address or network: ``10.0.0.7``, ``10.0.0.0/8``, ``::1``."""
    try:
        if "%" in text:
            raise ValueError("a zone")  # (a scoped address matches no peer)
        ipaddress.ip_network(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an address or network (10.0.0.7, 10.0.0.0/8, ::1)"
        ) from None
    return text


def interval(text: str) -> float:
    value = seconds(text)
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


def size_or_zero(text: str) -> int:
    """Parse a byte count: ``0``, ``4096``, ``64K``, ``64KiB``, ``1MiB``."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 4096, 64KiB, 1MiB)")
    unit = match.group(2).lower() if match.group(2) else None
    value = int(match.group(1)) * _SIZE_UNITS[unit]
    if value > _MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r} is too large: at most {_MAX_SIZE} bytes")
    return value


def size(text: str) -> int:
    """Parse a byte count of at least one byte."""
    value = size_or_zero(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 byte")
    return value


def mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 0660") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (0000 to 0777)")
    return value


def group_name(text: str) -> str:
    """A group that exists, by name or id (checked here: before any file is touched)."""
    try:
        resolve_group(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def socket_path(text: str) -> str:
    """A Unix socket's path: anything but empty (the rest is checked where it is used)."""
    if not text:
        raise argparse.ArgumentTypeError("the path is empty: give the socket file's path")
    return text


def delimiter(text: str) -> bytes:
    try:
        return parse_delimiter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tcp(default_host: str | None) -> Callable[[str], TcpAddress]:
    def parse(text: str) -> TcpAddress:
        try:
            return parse_tcp_address(text, default_host=default_host)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 2**64-1")
    return value


def add_address_flags(parser: argparse.ArgumentParser, *, server: bool) -> None:
    group = parser.add_argument_group("addresses")
    group.add_argument(
        "--tcp",
        action="append",
        default=[],
        metavar="[HOST]:PORT",
        type=tcp(None if server else "localhost"),
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
        type=socket_path,
        metavar="PATH",
        help="listen on a Unix socket at PATH; repeatable"
        if server
        else "connect to the Unix socket at PATH",
    )


def add_framing_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("framing")
    group.add_argument(
        "--framing",
        choices=FRAMING_KINDS,
        help="how frames are cut from the stream (default: line, or delimiter with --delimiter, fixed with --frame-size)",
    )
    group.add_argument(
        "--delimiter",
        type=delimiter,
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
        "--frame-size", type=size, metavar="N", help="frame size for --framing fixed"
    )
    group.add_argument(
        "--max-frame",
        type=size,
        default=DEFAULT_MAX_FRAME,
        metavar="BYTES",
        help="largest frame accepted, e.g. 65536, 64KiB, 1MiB (default 1MiB)",
    )


def framing_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Framing:
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


def one_target(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Address:
    targets: list[Address] = [*args.tcp, *(UnixAddress(path) for path in args.sock)]
    if len(targets) != 1:
        parser.error("give exactly one of --tcp HOST:PORT or --sock PATH")
    return targets[0]
