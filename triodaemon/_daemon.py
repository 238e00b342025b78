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

import errno
import logging
import math
import socket
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import attrs
import trio

from ._budget import BufferBudget
from ._config import TCP_RECEIVE_SIZE, UNIX_RECEIVE_SIZE, DaemonConfig
from ._connection import Connection, ConnectionInfo, ConnectionState, FrameHandler
from ._control import (
    LOG_LEVELS,
    Commands,
    log_level_command,
    no_arguments,
    serve_control,
    stats_report,
)
from ._faults import fault
from ._listeners import (
    BROKEN_LISTENER_ERRNOS,
    AcceptGate,
    Address,
    BoundListener,
    open_listeners,
    open_unix,
)
from ._lowlevel import Lowlevel
from ._socketfile import check_socket_path
from ._stats import Stats

log = logging.getLogger("triodaemon")

#: Pause between accepts while they fail (out of descriptors or memory, or an
#: error not understood), as trio's serve_listeners does for EMFILE.
ACCEPT_BACKOFF = 0.1
#: At the end, how long control requests under way (a ``ctl upgrade`` waiting for
#: its answer, say) may still take to be answered before the control socket goes.
CONTROL_GRACE = 2.0


def _describe(exc: Exception) -> str:
    """``EIO (Input/output error)``: an OS error with its errno's name (or what else it is)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return f"{type(exc).__name__}: {exc}"
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{name} ({exc.strerror or exc})"


class ConnectionWatcher(Protocol):
    """Told of every connection that starts or ends while it watches
    (:meth:`Daemon.watch_connections`: a handover's migration)."""

    def started(self, connection: Connection) -> None: ...

    def ended(self, connection: Connection) -> None: ...


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
    _connections: set[Connection] = attrs.field(factory=set, init=False)
    _accept_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _handlers_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _draining: bool = attrs.field(default=False, init=False)
    _forced: bool = attrs.field(default=False, init=False)
    _drained: int = attrs.field(default=0, init=False)
    _aborted: int = attrs.field(default=0, init=False)
    _next_id: int = attrs.field(default=0, init=False)
    _at_limit: bool = attrs.field(default=False, init=False)
    _listening: int = attrs.field(default=0, init=False)
    _lowlevel: Lowlevel = attrs.field(init=False)
    _budget: BufferBudget = attrs.field(init=False)
    _drain_started: trio.Event = attrs.field(factory=trio.Event, init=False)
    _listeners: Sequence[BoundListener] = attrs.field(default=(), init=False)
    _control: BoundListener | None = attrs.field(default=None, init=False)
    _started: float = attrs.field(default=math.nan, init=False)  # time.monotonic()
    _started_wall: float = attrs.field(default=math.nan, init=False)  # time.time()
    _drain_deadline: float = attrs.field(default=math.inf, init=False)  # trio's clock
    _drain_by: float = attrs.field(default=math.inf, init=False)  # a deadline set beforehand
    _gate: AcceptGate = attrs.field(factory=AcceptGate, init=False)
    _handlers: trio.Nursery | None = attrs.field(default=None, init=False)
    # Connections adopted over max_connections: they hold no limiter token.
    _unlimited: set[Connection] = attrs.field(factory=set, init=False)
    # Every connection's ended hook: one bound method, not one per connection.
    _ended_hook: Callable[[Any, Exception | None], None] = attrs.field(init=False)
    _limiter: trio.Semaphore | None = attrs.field(default=None, init=False)
    # Told of every connection that starts or ends (a handover's migration).
    _watcher: ConnectionWatcher | None = attrs.field(default=None, init=False)
    upgrading: str | None = attrs.field(default=None, init=False)
    """What a handover under way is for (``SIGHUP``, ``ctl upgrade``): set by the
    process's handover, reported by :meth:`snapshot`."""

    def __attrs_post_init__(self) -> None:
        self._faults = self.stats  # (a supervisor counts its own apart from its workers')
        # (Its epoll opens in serve().)
        self._lowlevel = self.lowlevel or Lowlevel.choose(self.config.readiness)
        self._budget = BufferBudget(self.config.max_buffered or math.inf)
        self._ended_hook = self._connection_ended

    @property
    def readiness(self) -> str:
        """The readiness backend connections wait through: ``epoll`` or ``portable``."""
        return self._lowlevel.readiness.name

    def drain(self) -> None:
        """Begin a graceful shutdown; :meth:`serve` returns when it is over. Idempotent."""
        if self._draining:
            return
        self._draining = True
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
        return len(self._connections)

    @property
    def buffered(self) -> int:
        """Bytes all connections hold in partial frames now (see ``config.max_buffered``;
        with ``max_buffered=0`` no account is kept, and this stays 0)."""
        return self._budget.held

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
                on (ownership passes to the daemon); by default, bind
                ``config.control`` if it is set. It answers from before the first
                connection until :meth:`serve` returns, through a drain.
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
            if control is None and config.control is not None:
                check_socket_path(config.control.path)  # before any file is touched
            listeners = await open_listeners(
                config.listen,
                sock_mode=config.sock_mode,
                sock_group=config.sock_group,
                backlog=config.backlog,
            )
        limiter = self._limiter = trio.Semaphore(config.max_connections)
        self._listeners = listeners
        self._started, self._started_wall = time.monotonic(), time.time()
        try:
            if control is None and config.control is not None:
                control = await open_unix(
                    config.control, mode=config.control_mode, group=config.control_group
                )
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
                    await self._serve_connections(listeners, limiter, task_status)
                    with trio.move_on_after(CONTROL_GRACE):
                        await commands.wait_idle()
                    watching.cancel_scope.cancel()
        finally:
            for listener in listeners:
                listener.close()
            if control is not None:
                control.close()
        self.summary = DrainSummary(self._drained, self._aborted, self._forced)
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
        limiter: trio.Semaphore,
        task_status: trio.TaskStatus[tuple[Address, ...]],
    ) -> None:
        """Accept until drained, then drain: the accept and handler nurseries."""
        config = self.config
        async with trio.open_nursery() as handlers:
            self._handlers = handlers
            self._handlers_scope = handlers.cancel_scope
            if self._forced:
                handlers.cancel_scope.cancel()
            with self._accept_scope:
                async with trio.open_nursery() as accepts:
                    self._listening = len(listeners)
                    for listener in listeners:
                        accepts.start_soon(self._accept_loop, listener, handlers, limiter)
                    task_status.started(tuple(listener.address for listener in listeners))
            for listener in listeners:
                listener.close()
            in_flight = len(self._connections)
            log.info(
                "shutting down: listeners closed, draining %d connection%s (deadline %gs)",
                in_flight,
                "" if in_flight == 1 else "s",
                config.drain_timeout,
            )
            for connection in list(self._connections):
                connection.drain()
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

    def handed_over(self, taker: int, take_back: Callable[[], None]) -> None:
        """Another process serves now: finish what is left here, and stop."""
        self.drain()

    def open_connections(self) -> Collection[Connection]:
        return self._connections

    def watch_connections(self, watcher: ConnectionWatcher | None) -> None:
        """Tell ``watcher`` of every connection that starts or ends from now on."""
        self._watcher = watcher

    def finish_by(self, deadline: float) -> None:
        """A drain that begins from now on ends by ``deadline`` at the latest."""
        self._drain_by = deadline

    def adopt(self, sock: socket.socket, state: ConnectionState) -> None:
        """Serve a connection another process handed over, from where ``state`` says
        it stands. Call while serving. Over ``max_connections`` it is served all
        the same (refusing it would drop a conversation under way).

        A failure of our own code on the way is that one connection's: it is
        logged and counted as an internal error, and the socket closed."""
        assert self._handlers is not None, "adopt() before serve()"
        assert self._limiter is not None
        self._next_id += 1
        info = ConnectionInfo(self._next_id, state.listener, state.peer)
        try:
            connection = self._connection_for(sock, info)
            connection.resume(state)
        except Exception as exc:  # the boundary of one connection taken over
            fault(self._faults, f"{info}: taking it over", exc)
            sock.close()
            return
        limiter: trio.Semaphore | None = self._limiter
        try:
            self._limiter.acquire_nowait()
        except trio.WouldBlock:
            limiter = None
        self.stats.connections_taken += 1
        log.debug("%s: taken over, %d bytes of a frame held", info, len(state.pending))
        self._start_connection(connection, limited=limiter is not None)

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
                "remaining": len(self._connections),
                "drained": self._drained,
                "aborted": self._aborted,
                "deadline_in": self._until(self._drain_deadline),
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
        if not self._connections:
            return []
        now = trio.current_time()
        return [
            {
                "id": connection.info.id,
                "peer": connection.info.peer,
                "listener": connection.info.listener,
                "age": now - connection.opened,
                "bytes_in": connection.bytes_in,
                "bytes_out": connection.bytes_out,
                "frames": connection.frames,
                "state": connection.state,
            }
            for connection in sorted(self._connections, key=lambda c: c.info.id)
        ]

    def control_commands(self, source: str = "on the control socket") -> Commands:
        """The control protocol's commands for this daemon: ``stats``,
        ``connections``, ``drain``, ``log-level`` and ``help``. ``source`` says
        where requests come from, in the log lines."""
        commands = Commands(self._faults)

        async def stats(args: dict[str, Any]) -> dict[str, Any]:
            no_arguments(args)
            return self.snapshot()

        async def connections(args: dict[str, Any]) -> list[dict[str, Any]]:
            no_arguments(args)
            return self.connection_snapshots()

        async def drain(args: dict[str, Any]) -> dict[str, Any]:
            no_arguments(args)
            already = self._draining
            if not already:
                log.info(
                    "drain requested %s: draining (deadline %gs)",
                    source,
                    self.config.drain_timeout,
                )
                self.drain()
            return {"draining": len(self._connections), "already": already}

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

    @staticmethod
    def _until(deadline: float) -> float:
        """Seconds from now to ``deadline`` on trio's clock (never negative); ``nan``
        outside a trio run."""
        if deadline == math.inf:
            return math.inf
        try:
            return max(0.0, deadline - trio.current_time())
        except RuntimeError:
            return math.nan

    async def _accept_loop(
        self, listener: BoundListener, handlers: trio.Nursery, limiter: trio.Semaphore
    ) -> None:
        failing = False
        listener_name = str(listener.address)  # one string for all its connections
        while True:
            # Wait for a connection before taking a slot: a loop holding a slot
            # while its own listener is quiet would starve the other listeners.
            try:
                await self._gate.wait_open()
                await listener.wait_acceptable()
            except (OSError, ValueError, trio.ClosedResourceError) as exc:  # closed under us
                self._listener_broken(listener, exc)
                return
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                if not self._at_limit:
                    self._at_limit = True
                    log.warning(
                        "connection limit (%d) reached; not accepting until a connection ends",
                        self.config.max_connections,
                    )
                await limiter.acquire()
            if self._gate.shut:  # another process takes over: it accepts now
                limiter.release()
                await self._gate.wait_open()
                continue
            try:
                sock, peer = listener.accept_nowait()
            except trio.WouldBlock:
                limiter.release()  # another process (or loop) took it
                continue
            except OSError as exc:
                limiter.release()
                self.stats.accept_errors += 1
                if exc.errno in BROKEN_LISTENER_ERRNOS:
                    self._listener_broken(listener, exc)
                    return
                # Out of descriptors or memory, or not understood: this listener
                # pauses, the others and every connection carry on.
                if not failing:
                    log.error(
                        "accept on %s failed: %s; retrying every %gs",
                        listener.address,
                        _describe(exc),
                        ACCEPT_BACKOFF,
                    )
                    failing = True
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            if failing:
                log.warning("accepting again on %s", listener.address)
                failing = False
            self._next_id += 1
            try:
                info = ConnectionInfo.for_socket(self._next_id, listener_name, sock, peer)
                connection = self._connection_for(sock, info)
            except Exception as exc:  # the boundary of one new connection (MemoryError, say)
                fault(self._faults, f"connection {self._next_id} on {listener_name}", exc)
                sock.close()
                limiter.release()
                continue
            self.stats.connections_accepted += 1
            log.debug("%s: accepted", info)
            self._start_connection(connection, limited=True)

    def _listener_broken(self, listener: BoundListener, exc: Exception) -> None:
        """A listening socket that cannot accept any more: stop using it; drain if none is left."""
        self._listening -= 1
        left = self._listening
        closed = isinstance(exc, trio.ClosedResourceError) or listener.sock.fileno() == -1
        log.error(
            "listener %s is broken (%s); no longer accepting there%s",
            listener.address,
            "it was closed" if closed else _describe(exc),
            "" if left else "; no listener is left, draining",
        )
        if not left:
            self.drain()

    def _connection_for(self, sock: socket.socket, info: ConnectionInfo) -> Connection:
        config = self.config
        return Connection(
            self._lowlevel.readiness.transport(sock),
            info,
            config.framing,
            self.handler,
            idle_timeout=config.idle_seconds,
            frame_timeout=config.frame_seconds,
            receive_size=config.receive_size
            or (UNIX_RECEIVE_SIZE if sock.family == socket.AF_UNIX else TCP_RECEIVE_SIZE),
            stats=self.stats,
            budget=self._budget,
        )

    def _start_connection(self, connection: Connection, limited: bool) -> None:
        """Serve ``connection`` in a task of its own. ``limited``: it holds one of
        the limiter's tokens, which its end gives back.

        The task runs ``connection.run`` itself, and the daemon's bookkeeping is
        done here and in :meth:`_connection_ended` (its ``ended`` hook): a coroutine
        of ours around ``run()`` would be part of every idle connection's memory.
        """
        assert self._handlers is not None
        # A constant name: trio would otherwise build one string per task.
        self._handlers.start_soon(connection.run, name="triodaemon.connection")
        # (The task has not run yet: it is counted before it can end.)
        connection.ended = self._ended_hook
        if not limited:
            self._unlimited.add(connection)
        self._connections.add(connection)
        self.stats.connections_active += 1
        if self._draining:
            connection.drain()
        elif self._watcher is not None:
            self._watcher.started(connection)

    def _connection_ended(self, connection: Any, failure: Exception | None) -> None:
        # (A failure of the frame handler: the connection has logged and counted it.)
        self._connections.discard(connection)
        self.stats.connections_active -= 1
        if connection in self._unlimited:
            self._unlimited.discard(connection)
        elif self._limiter is not None:
            self._limiter.release()
        if self._watcher is not None:
            self._watcher.ended(connection)
        if self._at_limit and not self._draining:
            self._at_limit = False
            log.info("below the connection limit again; accepting")
        if connection.handed:
            pass  # (neither drained nor aborted here)
        elif self._draining:
            if connection.completed:
                self._drained += 1
            elif failure is None:
                self._aborted += 1
