"""What a triodaemon process says on stderr: log lines (journald's way under
systemd), and the one line that ends a start that cannot go on.

Exit codes: 1 for runtime failures (port in use, forced shutdown), 2 for usage;
128+N for a start (or a client command) ended by signal N, as a shell reports it.
"""

from __future__ import annotations

import logging
import os
import sys

from .._errors import printable

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128


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


def stderr_is_the_journal() -> bool:
    """Whether stderr is the journal: ``$JOURNAL_STREAM`` names its device and inode."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def setup_logging(level: str) -> None:
    """Log lines of ``level`` and above on stderr, one per record."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_the_journal():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(_LineFormatter("%(asctime)s triodaemon %(levelname)s %(message)s"))
    root = logging.getLogger("triodaemon")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def error_line(message: str) -> int:
    """Say ``triodaemon: error: message`` on stderr; return the exit code for it."""
    prefix = "<3>" if stderr_is_the_journal() else ""
    print(f"{prefix}triodaemon: error: {printable(message)}", file=sys.stderr, flush=True)
    return EXIT_FAILURE
