"""Running a role as the process: its signals, its start, its exit code.

Strategy: the signals :mod:`triodaemon._signals` holds from the process's first
instant are let through only once a receiver is in place (so one sent at any
moment of the start arrives here); then the role runs. A stop signal before the
role is ready ends the start (exit 128+N); after it, the first one drains and a
second one aborts; SIGHUP upgrades (a role that upgrades by itself), SIGUSR1
logs the counters. A start that cannot go on is one line and exit 1.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys

import trio

from .. import _signals
from .._control import ControlError
from .._errors import TriodaemonError
from .logs import EXIT_FAILURE, EXIT_SIGNAL_BASE, error_line
from .roles import Role
from .startup import Startup

log = logging.getLogger("triodaemon")

_XCPU = getattr(signal, "SIGXCPU", None)


async def run_role(role: Role) -> int:
    """Run ``role`` until it is stopped; return the process's exit code."""
    # The receiver is in place before the held signals are let through, so one
    # sent at any moment of startup arrives here; before and after it, they do nothing.
    _signals.inert()
    with trio.open_signal_receiver(*_signals.HANDLED_SIGNALS) as signals, _signals.released():
        startup = Startup(role.notifier, quiet=role.quiet)
        summary = None
        async with trio.open_nursery() as nursery:

            async def handle_signals() -> None:
                async for signum in signals:
                    _on_signal(role, startup, nursery, signum)

            async def run_then_stop() -> None:
                nonlocal summary
                try:
                    summary = await role.run(startup)
                except TriodaemonError as exc:  # the sockets could not be had
                    role.failure = str(exc)
                nursery.cancel_scope.cancel()

            nursery.start_soon(handle_signals)
            nursery.start_soon(run_then_stop)
    if role.failure is not None:
        return error_line(role.failure)
    if startup.stopped_by is not None:
        name = _signals.signal_name(startup.stopped_by)
        print(
            f"triodaemon: {name} while starting; stopped before serving",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_SIGNAL_BASE + startup.stopped_by
    return EXIT_FAILURE if summary is not None and summary.forced else 0


def _on_signal(role: Role, startup: Startup, nursery: trio.Nursery, signum: int) -> None:
    if signum in _signals.STATS_SIGNALS:
        nursery.start_soon(_log_stats, role)
    elif signum in _signals.UPGRADE_SIGNALS:
        _on_upgrade_signal(role, startup, nursery, signum)
    elif signum in _signals.IGNORED_SIGNALS:
        log.warning("%s", _signals.ignored_message(signum))
    elif startup.ready.is_set():
        _on_stop_signal(role, signum)
    elif startup.stopped_by is None:
        startup.stopped_by = signum
        nursery.cancel_scope.cancel()  # whatever binding is under way


async def _log_stats(role: Role) -> None:
    log.info("stats: %s", await role.summary())


def _on_stop_signal(role: Role, signum: int) -> None:
    """A stop signal once the role is serving: drain, and abort on a second one."""
    name = _signals.signal_name(signum)
    drain_timeout = role.config.daemon.drain_timeout
    if signum == _XCPU:
        # The kernel repeats it every CPU-second until the hard limit: never an abort.
        if role.draining:
            log.info("received %s during the drain: still draining", name)
        else:
            log.info(
                "received %s (the CPU time limit was reached): draining (deadline %gs); "
                "send SIGTERM to stop at once",
                name,
                drain_timeout,
            )
            role.drain()
    elif not role.draining:
        log.info(
            "received %s: draining (deadline %gs); send %s again to stop at once",
            name,
            drain_timeout,
            name,
        )
        role.drain()
    else:
        log.warning("received %s again: stopping now", name)
        role.abort()


def _on_upgrade_signal(role: Role, startup: Startup, nursery: trio.Nursery, signum: int) -> None:
    """SIGHUP: start an upgrade (its outcome is logged), if this role can."""
    name = _signals.signal_name(signum)
    upgrader = role.upgrader
    if upgrader is None:
        log.warning("received %s: ignored (a worker does not upgrade alone)", name)
    elif not startup.ready.is_set():
        log.warning("received %s while starting: ignored (an upgrade can start once serving)", name)
    else:

        async def upgrade() -> None:
            with contextlib.suppress(ControlError):  # (logged)
                await upgrader.upgrade(name)

        nursery.start_soon(upgrade)
