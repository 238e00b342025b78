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
from collections.abc import Sequence

import attrs
import trio

from ._budget import BufferBudget
from ._config import TCP_RECEIVE_SIZE, UNIX_RECEIVE_SIZE, DaemonConfig
from ._connection import ConnectionInfo, FrameHandler
from ._listeners import BROKEN_LISTENER_ERRNOS, Address, BoundListener, open_listeners
from ._readiness import Readiness, open_readiness
from ._socket_connection import SocketConnection
from ._stats import Stats

log = logging.getLogger("triodaemon")

#: Pause between accepts while they fail (out of descriptors or memory, or an
#: error not understood), as trio's serve_listeners does for EMFILE.
ACCEPT_BACKOFF = 0.1


def _describe(exc: Exception) -> str:
    """``EIO (Input/output error)``: an OS error with its errno's name (or what else it is)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return f"{type(exc).__name__}: {exc}"
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{name} ({exc.strerror or exc})"


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
    stats: Stats = attrs.field(factory=Stats, init=False)
    """Live counters."""
    summary: DrainSummary | None = attrs.field(default=None, init=False)
    """Set when :meth:`serve` returns."""
    _connections: set[SocketConnection] = attrs.field(factory=set, init=False)
    _accept_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _handlers_scope: trio.CancelScope | None = attrs.field(default=None, init=False)
    _draining: bool = attrs.field(default=False, init=False)
    _forced: bool = attrs.field(default=False, init=False)
    _drained: int = attrs.field(default=0, init=False)
    _aborted: int = attrs.field(default=0, init=False)
    _next_id: int = attrs.field(default=0, init=False)
    _at_limit: bool = attrs.field(default=False, init=False)
    _listening: int = attrs.field(default=0, init=False)
    _readiness: Readiness = attrs.field(init=False)
    _budget: BufferBudget = attrs.field(init=False)
    _drain_started: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self._readiness = open_readiness(self.config.readiness)  # its epoll opens in serve()
        self._budget = BufferBudget(self.config.max_buffered or math.inf)

    @property
    def readiness(self) -> str:
        """The readiness backend connections wait through: ``epoll`` or ``portable``."""
        return self._readiness.name

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
        task_status: trio.TaskStatus[tuple[Address, ...]] = trio.TASK_STATUS_IGNORED,
    ) -> DrainSummary:
        """Serve until drained or aborted.

        Args:
            listeners: already-bound listeners to serve (ownership passes to the
                daemon); by default, bind ``config.listen``.
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
        limiter = trio.Semaphore(config.max_connections)
        try:
            async with trio.open_nursery() as watching:
                # Outlives every connection (they wait through it), then is cancelled.
                await watching.start(self._readiness.run)
                await self._serve_connections(listeners, limiter, task_status)
                watching.cancel_scope.cancel()
        finally:
            for listener in listeners:
                listener.close()
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
            handlers.cancel_scope.deadline = trio.current_time() + config.drain_timeout

    async def _accept_loop(
        self, listener: BoundListener, handlers: trio.Nursery, limiter: trio.Semaphore
    ) -> None:
        failing = False
        listener_name = str(listener.address)  # one string for all its connections
        while True:
            # Wait for a connection before taking a slot: a loop holding a slot
            # while its own listener is quiet would starve the other listeners.
            try:
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
            info = ConnectionInfo.for_socket(self._next_id, listener_name, sock, peer)
            # A constant name: trio would otherwise build one string per task.
            handlers.start_soon(
                self._run_connection, sock, info, limiter, name="triodaemon.connection"
            )

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

    async def _run_connection(
        self,
        sock: socket.socket,
        info: ConnectionInfo,
        limiter: trio.Semaphore,
    ) -> None:
        config = self.config
        connection = SocketConnection(
            sock,
            info,
            config.framing,
            self.handler,
            readiness=self._readiness,
            idle_timeout=config.idle_seconds,
            frame_timeout=config.frame_seconds,
            receive_size=config.receive_size
            or (UNIX_RECEIVE_SIZE if sock.family == socket.AF_UNIX else TCP_RECEIVE_SIZE),
            stats=self.stats,
            budget=self._budget,
        )
        self._connections.add(connection)
        self.stats.connections_accepted += 1
        self.stats.connections_active += 1
        log.debug("%s: accepted", info)
        if self._draining:
            connection.drain()
        failed = False
        try:
            await connection.run()
        except Exception as exc:
            failed = True
            self.stats.handler_errors += 1
            log.error("%s: frame handler failed: %s: %s", info, type(exc).__name__, exc)
            log.debug("%s: handler traceback", info, exc_info=True)
        finally:
            self._connections.discard(connection)
            self.stats.connections_active -= 1
            limiter.release()
            if self._at_limit and not self._draining:
                self._at_limit = False
                log.info("below the connection limit again; accepting")
            if self._draining:
                if connection.completed:
                    self._drained += 1
                elif not failed:
                    self._aborted += 1
