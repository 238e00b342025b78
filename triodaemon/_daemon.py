"""The daemon: listeners, connection handlers, and graceful shutdown.

Strategy (the shape of hypercorn's trio runner): connection handlers live in an
outer nursery, accept loops in an inner one inside a cancel scope. A drain
cancels the accept scope, closes every listener (new connections are refused;
Unix socket files go away), asks every connection to finish the frame it is in,
and sets the outer nursery's deadline to now + ``drain_timeout``; whatever is
left at the deadline is cancelled. An abort cancels the outer nursery at once.

The library takes its shutdown trigger as method calls (:meth:`Daemon.drain`,
:meth:`Daemon.abort`); only the CLI installs signal handlers.
"""

from __future__ import annotations

import functools
import logging
import math
import socket
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import attrs
import trio

from ._accept import ConnectionLimit, accept_loop, describe
from ._config import DaemonConfig
from ._connection import Connection
from ._control import Commands, serve_control
from ._handlers import FrameHandler
from ._listeners import (
    AcceptGate,
    Address,
    BoundListener,
    open_listeners,
)
from ._lowlevel import Lowlevel
from ._peers import ConnectionState
from ._reports import connection_records, daemon_commands, seconds_until, stats_report
from ._served import ConnectionWatcher, Served
from ._stats import Stats

log = logging.getLogger("triodaemon")

#: At the end, how long control requests under way (a ``ctl upgrade`` waiting for
#: its answer, say) may still take to be answered before the control socket goes.
CONTROL_GRACE = 2.0


@attrs.frozen
class DrainSummary:
    """How the daemon's shutdown went."""

    drained: int
    """Connections that finished on their own terms during the shutdown."""
    aborted: int
    """Connections cancelled at the drain deadline (or by an abort)."""
    forced: bool
    """Whether shutdown was forced (``abort()``) rather than a drain."""


@attrs.define(eq=False)
class Daemon:
    """A frame-serving daemon: every listener's accept loop and every connection in one nursery.

    Run it with ``await nursery.start(daemon.serve)``, which returns the bound
    addresses once every listener is listening; stop it with :meth:`drain` (or
    :meth:`abort`). Example::

        daemon = Daemon(DaemonConfig([TcpAddress("127.0.0.1", 0)]), handler=my_handler)
        addresses = await nursery.start(daemon.serve)
        ...
        daemon.drain()

    Args:
        config: what to listen on, framing, limits.
        handler: the per-frame behaviour; ``None`` (the default) echoes every
            frame back as it came, on the fast path (no call per frame).

    Raises:
        ValueError: ``config.readiness`` names a backend this system lacks.
    """

    config: DaemonConfig
    handler: FrameHandler | None = None
    lowlevel: Lowlevel | None = attrs.field(default=None, kw_only=True)
    """What runs below trio (:class:`~._lowlevel.Lowlevel`): ``None`` chooses
    ``config.readiness`` and the process's scans; a test may give its own."""
    stats: Stats = attrs.field(factory=Stats, init=False)
    """Live counters."""
    _faults: Stats = attrs.field(init=False)
    summary: DrainSummary | None = attrs.field(default=None, init=False)
    """Set when :meth:`serve` returns."""
    _accept_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _handlers_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _draining: bool = attrs.field(default=False, init=False)
    _forced: bool = attrs.field(default=False, init=False)
    _listening: int = attrs.field(default=0, init=False)
    _lowlevel: Lowlevel = attrs.field(init=False)
    _served: Served = attrs.field(init=False)
    _drain_started: trio.Event = attrs.field(factory=trio.Event, init=False)
    _listeners: Sequence[BoundListener] = attrs.field(default=(), init=False)
    _control: BoundListener | None = attrs.field(default=None, init=False)
    _started: float = attrs.field(default=math.nan, init=False)  # time.monotonic()
    _started_wall: float = attrs.field(default=math.nan, init=False)  # time.time()
    _drain_deadline: float = attrs.field(default=math.inf, init=False)  # trio's clock
    _drain_by: float = attrs.field(default=math.inf, init=False)  # a deadline set beforehand
    _gate: AcceptGate = attrs.field(factory=AcceptGate, init=False)
    upgrading: str | None = attrs.field(default=None, init=False)
    """What a handover under way is for (``SIGHUP``, ``ctl upgrade``): set by the
    process's handover, reported by :meth:`snapshot`."""

    def __attrs_post_init__(self) -> None:
        self._faults = self.stats  # (a supervisor counts its own apart from its workers')
        # (Its epoll opens in serve().)
        self._lowlevel = self.lowlevel or Lowlevel.choose(self.config.readiness)
        self._served = Served(self.config, self.handler, self._lowlevel, self.stats)

    @property
    def readiness(self) -> str:
        """The readiness backend connections wait through: ``epoll`` or ``portable``."""
        return self._lowlevel.readiness.name

    def drain(self) -> None:
        """Begin a graceful shutdown; :meth:`serve` returns when it is over. Idempotent."""
        if self._draining:
            return
        self._draining = True
        self._served.draining = True  # (each one is asked once the accepting has stopped)
        self._drain_started.set()
        self._accept_scope.cancel()

    def abort(self) -> None:
        """Stop at once: cancel every connection handler."""
        self._forced = True
        self.drain()
        if self._handlers_scope is not None:
            self._handlers_scope.cancel()

    @property
    def draining(self) -> bool:
        """Whether a shutdown has begun."""
        return self._draining

    async def wait_draining(self) -> None:
        """Wait until a shutdown begins (at once if it has)."""
        await self._drain_started.wait()

    @property
    def connections(self) -> int:
        """How many connections are open now."""
        return len(self._served.open)

    @property
    def buffered(self) -> int:
        """Bytes all connections hold in partial frames now (see ``config.max_buffered``;
        with ``max_buffered=0`` no account is kept, and this stays 0)."""
        return self._served.budget.held

    async def serve(
        self,
        listeners: Sequence[BoundListener] | None = None,
        *,
        control: BoundListener | None = None,
        commands: Commands | None = None,
        task_status: trio.TaskStatus[tuple[Address, ...]] = trio.TASK_STATUS_IGNORED,
    ) -> DrainSummary:
        """Serve until drained or aborted.

        Args:
            listeners: already-bound listeners to serve (ownership passes to the
                daemon); by default, bind ``config.listen``.
            control: an already-bound Unix listener to serve the control protocol
                on (ownership passes to the daemon); none by default. It answers
                from before the first connection until :meth:`serve` returns,
                through a drain.
            commands: what the control socket answers: :meth:`control_commands`
                by default (a process adds its own, such as ``upgrade``).
            task_status: receives the tuple of bound addresses, in listener order.

        Returns:
            The summary of the shutdown (also stored as :attr:`summary`).

        Raises:
            AddressError: a listener could not be bound (only when binding here).
            ValueError: no listeners given and none configured.
            RuntimeError: this daemon has served already.
        """
        config = self.config
        if self._handlers_scope is not None:
            raise RuntimeError("a Daemon serves once; make a new one to serve again")
        if listeners is None:
            if not config.listen:
                raise ValueError("nothing to listen on: config.listen is empty")
            listeners = await open_listeners(
                config.listen,
                sock_mode=config.sock_mode,
                sock_group=config.sock_group,
                backlog=config.backlog,
            )
        limit = ConnectionLimit(config.max_connections)
        self._listeners = listeners
        self._started, self._started_wall = time.monotonic(), time.time()
        try:
            self._control = control
            if commands is None:
                commands = self.control_commands()
            with self._lowlevel.running():
                async with trio.open_nursery() as watching:
                    # Outlive every connection (they wait through the backend; the control
                    # socket reports the drain), then are cancelled.
                    await watching.start(self._lowlevel.readiness.run)
                    if control is not None:
                        await watching.start(serve_control, control, commands, self._gate)
                    await self._serve_connections(listeners, limit, task_status)
                    with trio.move_on_after(CONTROL_GRACE):
                        await commands.wait_idle()
                    watching.cancel_scope.cancel()
        finally:
            for listener in listeners:
                listener.close()
            if control is not None:
                control.close()
        self.summary = DrainSummary(self._served.drained, self._served.aborted, self._forced)
        log.info(
            "shutdown complete: %d connection%s drained, %d aborted at the deadline%s",
            self.summary.drained,
            "" if self.summary.drained == 1 else "s",
            self.summary.aborted,
            " (forced)" if self._forced else "",
        )
        return self.summary

    async def _serve_connections(
        self,
        listeners: Sequence[BoundListener],
        limit: ConnectionLimit,
        task_status: trio.TaskStatus[tuple[Address, ...]],
    ) -> None:
        """Accept until drained, then drain: the accept and handler nurseries."""
        config = self.config
        async with trio.open_nursery() as handlers:
            self._served.serve_in(handlers, limit)
            self._handlers_scope = handlers.cancel_scope
            if self._forced:
                handlers.cancel_scope.cancel()
            with self._accept_scope:
                async with trio.open_nursery() as accepts:
                    self._listening = len(listeners)
                    proxy = config.proxy_protocol
                    for listener in listeners:
                        accepted = self._served.accepted
                        if proxy is not None and proxy.covers(listener):
                            accepted = functools.partial(accepted, proxy_protocol=proxy)
                        accepts.start_soon(
                            accept_loop,
                            listener,
                            limit,
                            self._gate,
                            self.stats,
                            accepted,
                            self._listener_broken,
                        )
                    task_status.started(tuple(listener.address for listener in listeners))
            for listener in listeners:
                listener.close()
            in_flight = len(self._served.open)
            log.info(
                "shutting down: listeners closed, draining %d connection%s (deadline %gs)",
                in_flight,
                "" if in_flight == 1 else "s",
                config.drain_timeout,
            )
            self._served.drain()
            self._drain_deadline = min(trio.current_time() + config.drain_timeout, self._drain_by)
            handlers.cancel_scope.deadline = self._drain_deadline

    # -- what a handover to another process uses (see _handover.host) -------------

    def listening(self) -> tuple[Sequence[BoundListener], BoundListener | None]:
        """The listening sockets it serves, and its control socket (if any)."""
        return self._listeners, self._control

    def stop_accepting(self) -> None:
        """Accept no more (another process accepts on the same sockets)."""
        self._gate.close()

    def accept_again(self) -> None:
        self._gate.open()

    def handed_over(self, taker: int, take_back: Callable[[], None], *, successors: bool) -> None:
        """Another process serves now: finish what is left here, and stop."""
        self.drain()

    def open_connections(self) -> Collection[Connection]:
        return self._served.open

    def watch_connections(self, watcher: ConnectionWatcher | None) -> None:
        """Tell ``watcher`` of every connection that starts or ends from now on."""
        self._served.watcher = watcher

    def finish_by(self, deadline: float) -> None:
        """A drain that begins from now on ends by ``deadline`` at the latest."""
        self._drain_by = deadline

    def adopt(self, sock: socket.socket, state: ConnectionState) -> None:
        """Serve a connection another process handed over, from where ``state`` says
        it stands. Call while serving. Over ``max_connections`` it is served all
        the same (refusing it would drop a conversation under way).

        A failure of our own code on the way is that one connection's: it is
        logged and counted as an internal error, and the socket closed."""
        self._served.adopt(sock, state)

    # -- what a control socket (or an embedding program) can ask ------------------

    def snapshot(self) -> dict[str, Any]:
        """What the control socket's ``stats`` reports, ready for ``json.dumps``.

        Version, pid, start time and uptime, listeners, connections open and in
        all, frames, bytes each way, errors by kind, the limits in force, and the
        drain's progress once one has begun (``drain``, else ``None``).
        """
        drain = None
        if self._draining:
            drain = {
                "remaining": len(self._served.open),
                "drained": self._served.drained,
                "aborted": self._served.aborted,
                "deadline_in": seconds_until(self._drain_deadline),
                "forced": self._forced,
            }
        report = stats_report(
            self.config,
            self.stats,
            started=self._started,
            started_wall=self._started_wall,
            draining=self._draining,
            readiness=self.readiness,
            scans=self._lowlevel.scans.name,
            listeners=self._listeners,
            control=self._control,
            buffered=self.buffered,
            drain=drain,
        )
        report["upgrade"] = self.upgrading
        return report

    def connection_snapshots(self) -> list[dict[str, Any]]:
        """What the control socket's ``connections`` reports: one record per open
        connection, oldest first (id, peer, listener, age in seconds, bytes each
        way, frames, and state: ``reading``, ``mid-frame``, ``writing`` or
        ``draining``)."""
        return connection_records(self._served.open)

    def control_commands(self, source: str = "on the control socket") -> Commands:
        """The control protocol's commands for this daemon: ``stats``,
        ``connections``, ``drain``, ``log-level`` and ``help``. ``source`` says
        where requests come from, in the log lines."""
        return daemon_commands(self, source)

    def _listener_broken(self, listener: BoundListener, exc: Exception) -> None:
        """A listening socket that cannot accept any more: stop using it; drain if none is left."""
        self._listening -= 1
        left = self._listening
        closed = isinstance(exc, trio.ClosedResourceError) or listener.sock.fileno() == -1
        log.error(
            "listener %s is broken (%s); no longer accepting there%s",
            listener.address,
            "it was closed" if closed else describe(exc),
            "" if left else "; no listener is left, draining",
        )
        if not left:
            self.drain()
