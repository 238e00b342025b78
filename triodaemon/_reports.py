"""What a server reports over the control socket: its ``stats``, its connections,
and the command table of a daemon (a supervisor's adds up its workers' reports:
see :mod:`._supervisor`)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Protocol

import trio

from ._config import DaemonConfig
from ._connection import Connection
from ._control import LOG_LEVELS, Command, Commands, ControlError, no_arguments
from ._listeners import BoundListener
from ._stats import Stats
from ._version import __version__

log = logging.getLogger("triodaemon")


class Reporting(Protocol):
    """A daemon, as its command table sees it."""

    config: DaemonConfig
    stats: Stats

    @property
    def draining(self) -> bool: ...

    @property
    def connections(self) -> int: ...

    def drain(self) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...

    def connection_snapshots(self) -> list[dict[str, Any]]: ...


def daemon_commands(daemon: Reporting, source: str) -> Commands:
    """``stats``, ``connections``, ``drain``, ``log-level`` and ``help`` for ``daemon``;
    ``source`` says where requests come from, in the log lines."""
    commands = Commands(daemon.stats)

    async def stats(args: dict[str, Any]) -> dict[str, Any]:
        no_arguments(args)
        return daemon.snapshot()

    async def connections(args: dict[str, Any]) -> list[dict[str, Any]]:
        no_arguments(args)
        return daemon.connection_snapshots()

    async def drain(args: dict[str, Any]) -> dict[str, Any]:
        no_arguments(args)
        already = daemon.draining
        if not already:
            log.info(
                "drain requested %s: draining (deadline %gs)", source, daemon.config.drain_timeout
            )
            daemon.drain()
        return {"draining": daemon.connections, "already": already}

    commands.add("stats", stats, "stats", "counters, listeners, limits, the drain's progress")
    commands.add("connections", connections, "connections", "every open connection")
    commands.add("drain", drain, "drain", "start the graceful shutdown (as SIGTERM does)")
    commands.add(
        "log-level",
        log_level_command(source),
        "log-level LEVEL",
        f"log detail: {', '.join(LOG_LEVELS)}",
    )
    return commands


def connection_records(connections: Collection[Connection]) -> list[dict[str, Any]]:
    """One record per connection, oldest first: id, peer (the client a PROXY header
    named, if one did), proxy (the balancer then, else empty), listener, age in seconds,
    bytes each way, frames, and state (``header``, ``reading``, ``mid-frame``,
    ``writing`` or ``draining``)."""
    if not connections:
        return []
    now = trio.current_time()
    return [
        {
            "id": connection.info.id,
            "peer": connection.info.peer,
            "proxy": connection.info.proxy,
            "listener": connection.info.listener,
            "age": now - connection.opened,
            "bytes_in": connection.bytes_in,
            "bytes_out": connection.bytes_out,
            "frames": connection.frames,
            "state": connection.state,
        }
        for connection in sorted(connections, key=lambda c: c.info.id)
    ]


def seconds_until(deadline: float) -> float:
    """Seconds from now to ``deadline`` on trio's clock (never negative); ``nan``
    outside a trio run."""
    if deadline == math.inf:
        return math.inf
    try:
        return max(0.0, deadline - trio.current_time())
    except RuntimeError:
        return math.nan


def stats_report(
    config: DaemonConfig,
    stats: Stats,
    *,
    started: float,
    started_wall: float,
    draining: bool,
    readiness: str,
    scans: str,
    listeners: Sequence[BoundListener],
    control: BoundListener | None,
    buffered: int,
    drain: dict[str, Any] | None,
) -> dict[str, Any]:
    """The ``stats`` reply, of a daemon or a supervisor: who, since when, what it
    serves, its counters, its limits, and ``drain`` (the drain's progress, or None).

    ``started`` is ``time.monotonic()`` at the start, ``started_wall`` ``time.time()``.
    """
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started": started_wall,
        "uptime": time.monotonic() - started,
        "state": "draining" if draining else "serving",
        "readiness": readiness,
        "scans": scans,
        "speedups": scans == "compiled",
        "listeners": [
            {"address": str(listener.address), "accepting": not draining} for listener in listeners
        ],
        "control": str(control.address) if control is not None else None,
        "connections": {
            "open": stats.connections_active,
            "total": stats.connections_accepted,
            "taken_over": stats.connections_taken,
            "handed_over": stats.connections_handed,
        },
        "frames": stats.frames,
        "bytes_in": stats.bytes_received,
        "bytes_out": stats.bytes_sent,
        "buffered": buffered,
        "memory_waits": stats.memory_waits,
        "errors": stats.errors(),
        "proxy_local": stats.proxy_local,
        "limits": {
            "framing": config.framing.describe(),
            "max_frame": config.framing.max_frame,
            "max_connections": config.max_connections,
            "idle_timeout": config.idle_timeout,
            "frame_timeout": config.frame_timeout,
            "drain_timeout": config.drain_timeout,
            "max_buffered": config.max_buffered,
            "proxy_timeout": (
                config.proxy_protocol.timeout if config.proxy_protocol is not None else None
            ),
        },
        "drain": drain,
    }


def log_level_command(source: str, also: Callable[[str], Awaitable[None]] | None = None) -> Command:
    """``log-level LEVEL``: set the ``triodaemon`` logger's level (and, with ``also``,
    wherever else it should go); logged as a warning that names ``source``."""

    async def log_level(args: dict[str, Any]) -> dict[str, str]:
        level = args.pop("level", None)
        no_arguments(args)
        if level not in LOG_LEVELS:
            raise ControlError(f"level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
        logger = logging.getLogger("triodaemon")
        was = logging.getLevelName(logger.getEffectiveLevel()).lower()
        logger.setLevel(level.upper())
        if also is not None:
            await also(level)
        if level != was:
            log.warning("log level changed %s: %s (was %s)", source, level, was)
        return {"level": level, "was": was}

    return log_level
