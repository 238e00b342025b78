"""What each signal does to the command-line daemon, and holding signals while it starts.

Strategy: every catchable signal whose default action would end the process is
given a meaning, so nothing a user can send by accident (a ``kill -HUP`` from
logrotate, the terminal of ``triodaemon &`` closing, a stray ``kill -USR1``)
ends the daemon without a drain:

- :data:`STOP_SIGNALS` start the graceful shutdown (a second one aborts it);
  SIGXCPU (the soft CPU-time limit, which the kernel repeats every second until
  the hard limit kills) drains too, but never escalates to an abort;
- :data:`STATS_SIGNALS` log a one-line stats summary;
- :data:`UPGRADE_SIGNALS` start an upgrade: a new copy of the daemon takes over
  its sockets and connections (see :mod:`triodaemon._upgrade`); so a
  ``kill -HUP`` from logrotate, or the terminal of ``triodaemon &`` closing,
  costs a handover that no client notices, never a stop;
- :data:`IGNORED_SIGNALS` are logged and ignored.

Left at their defaults: the signals that report a fault of the process itself
(SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS), where carrying on
is the wrong answer; SIGKILL and SIGSTOP, which cannot be caught; the stop
signals of job control (SIGTSTP, SIGTTIN, SIGTTOU) and the ones ignored by
default. Python itself ignores SIGPIPE and SIGXFSZ (they become ``OSError``).

Startup: the entry point blocks :data:`HANDLED_SIGNALS` before importing
anything else (:func:`hold`), so a signal sent while trio and triodaemon are
still being imported waits; the serving path releases them once trio's signal
receiver is in place (:func:`released`), where a stop signal that arrives
before the daemon is ready ends the start with one line. Every other command
releases them before it starts. Once serving is over, a signal changes nothing,
up to the process's last instant (:func:`inert` before the receiver, which puts
back what it found, and :func:`ignore_from_now_on` after it): the main thread
holds them again then, but a thread of trio's (a name lookup's, idle in its
cache) would take one with its default action and end the process, as would
any one during the interpreter's finalization, which puts a handler written in
Python back to the default. This module imports only standard-library
modules that the interpreter's own startup has loaded already, besides
``signal``, so that holding comes first and costs nothing.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable, Iterator


def _existing(*names: str) -> tuple[int, ...]:
    """The signals of these names that this platform has."""
    return tuple(int(getattr(signal, name)) for name in names if hasattr(signal, name))


#: Start a graceful shutdown; a second one (other than SIGXCPU) stops at once.
STOP_SIGNALS = _existing("SIGTERM", "SIGINT", "SIGQUIT", "SIGXCPU")
#: Log a one-line summary of the daemon's counters (a cheap, conventional "how are you").
STATS_SIGNALS = _existing("SIGUSR1")
#: Start an upgrade: a new process takes over every socket and connection.
UPGRADE_SIGNALS = _existing("SIGHUP")
#: Logged and ignored.
IGNORED_SIGNALS = _existing(
    "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR", "SIGSTKFLT"
) + (
    tuple(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    if hasattr(signal, "SIGRTMIN") and hasattr(signal, "SIGRTMAX")
    else ()
)
#: Every signal the serving daemon receives, and so every signal held during startup.
HANDLED_SIGNALS = STOP_SIGNALS + STATS_SIGNALS + UPGRADE_SIGNALS + IGNORED_SIGNALS


#: Handled signals this process inherited as ignored (see :func:`hold`).
_inherited_ignores: set[int] = set()


def hold(mask: Iterable[int] | None = None) -> None:
    """Block :data:`HANDLED_SIGNALS`: one sent now stays pending until :func:`released`.

    A signal inherited as ignored is given back its default disposition while
    held: the kernel drops an ignored signal even while it is blocked, and a
    non-interactive shell starts ``triodaemon &`` with SIGINT and SIGQUIT
    ignored, so a ``kill -INT`` sent during startup would vanish, though trio's
    receiver takes SIGINT once serving. The daemon gives each signal its
    meaning whoever started it; other commands put the ignores back
    (:func:`ignore_as_inherited`) before they let signals through.

    Args:
        mask: the blocked signals to add them to, if not the current ones (the
            entry point blocks everything first, then holds just these on top
            of the mask the process started with).
    """
    if mask is None:
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    else:
        signal.pthread_sigmask(signal.SIG_SETMASK, {*mask, *HANDLED_SIGNALS})
    for signum in HANDLED_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_IGN:
            _inherited_ignores.add(signum)
            default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, default)


def ignore_as_inherited() -> None:
    """Ignore again the signals the process inherited as ignored (dropping any pending)."""
    for signum in _inherited_ignores:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def released() -> Iterator[None]:
    """Unblock :data:`HANDLED_SIGNALS` (a pending one is delivered at once); on exit,
    put the signal mask back as it was (held again, if it was held)."""
    previous = signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _nothing(signum: int, frame: object) -> None:
    """A signal that came once serving was over: the process is exiting anyway."""


def inert() -> None:
    """Give every handled signal a handler that does nothing (see the module's
    strategy). A held signal stays pending, as it would not with ``SIG_IGN``."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, _nothing)


def ignore_from_now_on() -> None:
    """Serving is over: ignore every handled signal until the process has exited."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def signal_name(signum: int) -> str:
    """``SIGTERM``, or ``SIGRTMIN+3`` for a real-time signal without a name of its own."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        rtmin = getattr(signal, "SIGRTMIN", None)
        return f"SIGRTMIN+{signum - rtmin}" if rtmin is not None else f"signal {signum}"


def ignored_message(signum: int) -> str:
    """The log line for a signal in :data:`IGNORED_SIGNALS`."""
    name = signal_name(signum)
    return f"received {name}: ignored (it has no meaning to triodaemon; to stop, send SIGTERM)"
