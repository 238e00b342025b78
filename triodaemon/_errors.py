"""The exception hierarchy, and the one-line rule of its messages.

Strategy: one base class, so a caller can catch everything triodaemon raises on
purpose with one ``except``; below it, one class per thing a user can act on.
Messages are lowercase, say what was received and what was expected, and fit on
one line; what they quote (a path, a name, a peer's words) may not, so the CLI
prints every line through :func:`printable`. A value read from JSON (a file's,
another process's) is named in a message by :func:`shown`.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Hex digits in pairs, nothing else (``bytes.fromhex`` also takes spaces).
HEX_DIGITS = re.compile(r"(?:[0-9a-fA-F]{2})*")


def shown(value: Any) -> str:
    """A value read from JSON, said the way JSON says it and kept short: ``the
    string "false"``, ``the number -1``, ``true``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = json.dumps(value)
        return f"the number {text if len(text) <= 24 else text[:24] + '...'}"
    if isinstance(value, str):
        return f"the string {json.dumps(value[:32])}{'...' if len(value) > 32 else ''}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def count(number: int, noun: str, plural: str = "") -> str:
    """``1 frame``, ``2 frames`` (``plural``: for a noun not made plural by an s)."""
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"


def printable(text: str) -> str:
    """``text`` with what is not printable escaped (``\\n``, ``\\x1b``): a path, a name
    or a peer's words cannot break a line of ours into two, forge one, or send the
    terminal escape codes."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class TriodaemonError(Exception):
    """Base class of every error triodaemon raises on purpose."""


class FramingError(TriodaemonError):
    """The byte stream does not follow the configured framing.

    After a decoder raises one of these it is poisoned: the stream has no frame
    boundary to resynchronise on, so the connection must be closed.
    """


class FrameTooLarge(FramingError):
    """A frame is (or is announced to be) larger than ``max_frame``."""


class MalformedHeader(FramingError):
    """A length header that cannot be valid (a runaway varint, a negative length)."""


class IncompleteFrame(FramingError):
    """The peer closed the stream in the middle of a frame."""

    def __init__(self, message: str, *, received: int) -> None:
        super().__init__(message)
        #: How many bytes of the unfinished frame had arrived.
        self.received = received


class AddressError(TriodaemonError):
    """A listener could not be set up: bad address, port in use, unusable path."""


class ClientError(TriodaemonError):
    """The client could not complete its exchange with a server."""
