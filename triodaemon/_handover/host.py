"""What a process offers the handover: as little as the handover needs.

A :class:`~triodaemon.Daemon` and a supervisor of workers implement these
protocols by their shape (neither imports this package): the giver
(:mod:`.giver`) reads their listening sockets and stops or starts their
accepting; the migration (:mod:`.migration`) moves a daemon's connections; the
taker (:mod:`.taker`) gives it the connections it takes. Everything the handover
itself keeps (the handover under way, the socket files it gave away, what it
tells systemd) is the giver's, not the host's.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from .._connection import Connection
from .._listeners import BoundListener
from .._peers import ConnectionState
from .._served import ConnectionWatcher
from .._stats import Stats


class Host(Protocol):
    """A process whose listening sockets can be handed to another."""

    stats: Stats
    """Where the handover counts what it does (connections handed, its own failures)."""
    upgrading: str | None
    """What the handover under way is for (``SIGHUP``, ``ctl upgrade``), or ``None``:
    the giver sets it, the host reports it (``stats``)."""

    @property
    def draining(self) -> bool:
        """Whether a shutdown has begun (a handover then cannot begin)."""
        ...

    async def wait_draining(self) -> None:
        """Wait until a shutdown begins (an uncommitted handover is then called off)."""
        ...

    @property
    def connections(self) -> int:
        """How many connections are open (those that finish here if none move)."""
        ...

    def listening(self) -> tuple[Sequence[BoundListener], BoundListener | None]:
        """The listening sockets it serves, and its control socket (if any)."""
        ...

    def stop_accepting(self) -> None:
        """Accept no more: the new process accepts on the same sockets now."""
        ...

    def accept_again(self) -> None:
        """The new process failed after all: accept again."""
        ...

    def handed_over(self, taker: int, take_back: Callable[[], None], *, successors: bool) -> None:
        """The handover is done (``taker``: the new process): finish what is left,
        and exit. ``take_back`` undoes it, for a host that learns later that the
        new process failed (a supervisor whose workers still hand over);
        ``successors``: whether the new process's workers take over ours."""
        ...


class ConnectionPool(Protocol):
    """A host's connections, for the migration (a daemon's; a supervisor has none)."""

    stats: Stats

    def open_connections(self) -> Collection[Connection]:
        """The connections open now."""
        ...

    def watch_connections(self, watcher: ConnectionWatcher | None) -> None:
        """Tell ``watcher`` of every connection that starts or ends from now on
        (``None``: stop telling)."""
        ...

    def finish_by(self, deadline: float) -> None:
        """A drain that begins from now on ends by ``deadline`` (trio's clock;
        ``inf``: no such bound): the migration and the drain after it share one
        drain timeout."""
        ...


class Adopter(Protocol):
    """What takes connections over: a daemon (a supervisor closes any it is given)."""

    @property
    def draining(self) -> bool: ...

    def adopt(self, sock: socket.socket, state: ConnectionState) -> None:
        """Serve the connection on ``sock`` from where ``state`` says it stands."""
        ...
