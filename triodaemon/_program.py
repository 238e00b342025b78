"""How triodaemon starts another process of its own: an upgrade's successor, a worker.

The program is triodaemon's entry point as installed, run by this interpreter,
with the command line's arguments less the ones that say where this process
took over from (the new one takes over from somewhere else, or nowhere).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

#: How a new process (an upgrade's, a worker) starts: triodaemon's entry point as
#: installed, not ``-m triodaemon``, which would look for it first in the working
#: directory (a ``triodaemon.py`` there would run as the daemon's user).
_BOOTSTRAP = (
    "import sys\n"
    "if sys.path and sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    "from triodaemon.__main__ import main_entry\n"
    "main_entry()\n"
)


def python_program() -> list[str]:
    """How to start triodaemon again: this interpreter, triodaemon's entry point (the
    program on disk now, so an upgrade runs a newer one), never code that happens to
    be in the working directory."""
    return [sys.executable, "-c", _BOOTSTRAP]


#: The options that say where this process takes over from, and the shortest
#: abbreviation argparse takes for each: never passed on to another process.
_TAKEOVER_OPTIONS = {"--takeover": "--ta", "--handover-fd": "--handover-f"}


def without_options(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--takeover`` and ``--handover-fd`` (spelled out, abbreviated,
    or ``=VALUE``): what a process passes on to its successor or its workers, which
    take over from somewhere else (or nowhere)."""
    kept: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
            continue
        name, equals, _ = argument.partition("=")
        if any(
            len(name) >= len(shortest) and option.startswith(name)
            for option, shortest in _TAKEOVER_OPTIONS.items()
        ):
            skip = not equals
            continue
        kept.append(argument)
    return kept


def exit_reason(code: int) -> str:
    """``exited with code 1``, ``killed by SIGKILL``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"
