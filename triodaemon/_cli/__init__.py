"""The command line: ``triodaemon [serve flags]``, ``client``, ``check``, ``bench``, ``ctl``.

Strategy: one module per subcommand, each a parser and a ``main(argv)`` that
returns the exit code; this one only picks the subcommand. Serving builds a
process role and runs it (:mod:`triodaemon._process`); the other commands are
clients. A subcommand's module is imported only when it is run, and the
harness (``check``, ``bench``, ``client``'s exchange) only inside it, so the
daemon starts light.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Sequence

from .. import _signals
from .._process.logs import EXIT_SIGNAL_BASE
from ._output import only_interrupts

_SUBCOMMANDS = ("client", "check", "bench", "ctl")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    The signals that :mod:`triodaemon._signals` holds may be held on entry (the
    entry point holds them first thing): serving lets them through once its
    signal receiver is in place, every other command at once. Ctrl-C in a
    command other than serving is one line and exit 130.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    name = arguments[0] if arguments and arguments[0] in _SUBCOMMANDS else None
    if name is None:
        from .serve import main as serve

        return serve(arguments[1:] if arguments[:1] == ["serve"] else arguments)
    command = importlib.import_module(f".{name}", __name__).main
    try:
        _signals.ignore_as_inherited()  # as any program would: only the daemon overrides them
        with _signals.released():
            return int(command(arguments[1:]))
    except BaseException as exc:
        if not only_interrupts(exc):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C changes nothing now
        print("triodaemon: interrupted", file=sys.stderr, flush=True)
        return EXIT_SIGNAL_BASE + signal.SIGINT
