"""The process entry point: ``triodaemon`` (the console script) and ``python -m triodaemon``.

Strategy: the first thing the process does is block every signal, with the C
module behind :mod:`signal` that the interpreter has loaded for itself (so
there is nothing to import, and nothing for a signal to interrupt), before
trio or the rest of triodaemon is imported; then it narrows that down to the
signals the daemon handles (:func:`triodaemon._signals.hold`), which stay
pending until the command can receive them. So no signal sent during startup
acts with its default disposition: death without a word, or a
``KeyboardInterrupt`` traceback from inside an import. The package's
``__init__`` imports nothing until a name is used.
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _early
else:
    try:
        import _signal as _early  # CPython: already loaded by the interpreter itself
    except ImportError:  # another implementation
        import signal as _early


def main_entry() -> None:
    """Run the command line and exit with its code."""
    try:
        mask = _early.pthread_sigmask(_early.SIG_BLOCK, _early.valid_signals())
        from . import _signals

        _signals.hold(mask)
        from ._cli import main
    except KeyboardInterrupt:
        # A Ctrl-C that came just before the block: Python raises it at its next
        # check, which can fall here. SIGINT is held from now on.
        print("triodaemon: SIGINT while starting; stopped before serving", file=sys.stderr)
        sys.exit(128 + _early.SIGINT)
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
