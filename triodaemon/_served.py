"""The connections a daemon serves: each made for its socket, run in a task of the
handler nursery, counted while open, and accounted for when it ends.

Strategy: the task runs ``Connection.run`` itself, and the bookkeeping is done
when it starts and in its ``ended`` hook (one bound method for all of them): a
coroutine of ours around ``run()`` would be part of every idle connection's
memory. A connection holds one slot of the connection limit, unless it was
taken over past the limit (refusing it would drop a conversation under way).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable
from typing import Any, Protocol

import trio

from . import _endings as endings
from ._accept import ConnectionLimit
from ._budget import BufferBudget
from ._config import TCP_RECEIVE_SIZE, UNIX_RECEIVE_SIZE, DaemonConfig, ProxyProtocol
from ._connection import Connection
from ._faults import fault
from ._handlers import FrameHandler
from ._lowlevel import Lowlevel
from ._peers import ConnectionInfo, ConnectionState
from ._stats import Stats

log = logging.getLogger("triodaemon")


class ConnectionWatcher(Protocol):
    """Told of every connection that starts or ends while it watches
    (``Daemon.watch_connections``: a handover's migration)."""

    def started(self, connection: Connection) -> None: ...

    def ended(self, connection: Connection) -> None: ...


class Served:
    """The open connections of one daemon run, and how many a drain saw end."""

    def __init__(
        self,
        config: DaemonConfig,
        handler: FrameHandler | None,
        lowlevel: Lowlevel,
        stats: Stats,
    ) -> None:
        self.config = config
        self.handler = handler
        self.lowlevel = lowlevel
        self.stats = stats
        self.budget = BufferBudget(config.max_buffered or math.inf)
        self.open: set[Connection] = set()
        self.drained = 0
        """Connections that finished on their own terms once draining."""
        self.aborted = 0
        """Connections cancelled once draining (at the deadline, or an abort)."""
        self.draining = False
        self.watcher: ConnectionWatcher | None = None
        self._unlimited: set[Connection] = set()  # taken over past the limit: no slot
        self._next_id = 0
        self._handlers: trio.Nursery | None = None
        self._limit: ConnectionLimit | None = None
        self._ended_hook: Callable[[Any, Exception | None], None] = self._ended

    def serve_in(self, handlers: trio.Nursery, limit: ConnectionLimit) -> None:
        """Run connections in ``handlers`` from now on, each holding a slot of ``limit``."""
        self._handlers, self._limit = handlers, limit

    def drain(self) -> None:
        """Ask every connection to finish, and any that starts from now on."""
        self.draining = True
        for connection in list(self.open):
            connection.drain()

    def accepted(
        self,
        sock: socket.socket,
        peer: object,
        listener: str,
        *,
        proxy_protocol: ProxyProtocol | None = None,
    ) -> bool:
        """Serve a connection ``listener`` accepted (it holds a slot already);
        ``False`` if it could not be. ``proxy_protocol``: the listener is behind a
        balancer, which must send a PROXY header first."""
        self._next_id += 1
        try:
            info = ConnectionInfo.for_socket(self._next_id, listener, sock, peer)
            if proxy_protocol is not None and not proxy_protocol.trusts(peer):
                endings.proxy_untrusted(self.stats, info)
                return False
            connection = self._connection_for(sock, info, proxy_protocol)
        except Exception as exc:  # the boundary of one new connection (MemoryError, say)
            fault(self.stats, f"connection {self._next_id} on {listener}", exc)
            return False
        self.stats.connections_accepted += 1
        log.debug("%s: accepted", info)
        self._start(connection, limited=True)
        return True

    def adopt(self, sock: socket.socket, state: ConnectionState) -> None:
        """Serve a connection another process handed over (see ``Daemon.adopt``)."""
        assert self._limit is not None, "adopt() before serve()"
        self._next_id += 1
        info = ConnectionInfo(self._next_id, state.listener, state.peer, state.proxy)
        try:
            connection = self._connection_for(sock, info)
            connection.resume(state)
        except Exception as exc:  # the boundary of one connection taken over
            fault(self.stats, f"{info}: taking it over", exc)
            sock.close()
            return
        limited = self._limit.try_acquire()
        self.stats.connections_taken += 1
        log.debug("%s: taken over, %d bytes of a frame held", info, len(state.pending))
        self._start(connection, limited=limited)

    def _connection_for(
        self,
        sock: socket.socket,
        info: ConnectionInfo,
        proxy_protocol: ProxyProtocol | None = None,
    ) -> Connection:
        config = self.config
        return Connection(
            self.lowlevel.readiness.transport(sock),
            info,
            config.framing,
            self.handler,
            idle_timeout=config.idle_seconds,
            frame_timeout=config.frame_seconds,
            receive_size=config.receive_size
            or (UNIX_RECEIVE_SIZE if sock.family == socket.AF_UNIX else TCP_RECEIVE_SIZE),
            stats=self.stats,
            budget=self.budget,
            proxy_protocol=proxy_protocol,
        )

    def _start(self, connection: Connection, limited: bool) -> None:
        """Serve ``connection`` in a task of its own. ``limited``: it holds a slot of
        the limit, which its end gives back."""
        assert self._handlers is not None
        # A constant name: trio would otherwise build one string per task.
        self._handlers.start_soon(connection.run, name="triodaemon.connection")
        # (The task has not run yet: it is counted before it can end.)
        connection.ended = self._ended_hook
        if not limited:
            self._unlimited.add(connection)
        self.open.add(connection)
        self.stats.connections_active += 1
        if self.draining:
            connection.drain()
        elif self.watcher is not None:
            self.watcher.started(connection)

    def _ended(self, connection: Any, failure: Exception | None) -> None:
        # (A failure of the frame handler: the connection has logged and counted it.)
        self.open.discard(connection)
        self.stats.connections_active -= 1
        if connection in self._unlimited:
            self._unlimited.discard(connection)
        elif self._limit is not None:
            self._limit.release(quietly=self.draining)
        if self.watcher is not None:
            self.watcher.ended(connection)
        if connection.handed:
            return  # (neither drained nor aborted here)
        if self.draining:
            if connection.completed:
                self.drained += 1
            elif failure is None:
                self.aborted += 1
