"""Who is on the other end of a connection, and where a conversation with them stands.

Plain records, which a connection exposes and others read: :class:`ConnectionInfo`
(for handlers, logs and ``ctl connections``) and :class:`ConnectionState` (for
the handover, which alone writes it down); and :func:`peer_credentials`, the
one reading of a Unix socket's peer (its pid and user).
"""

from __future__ import annotations

import socket as stdlib_socket
import struct

import attrs
import trio

_CREDENTIALS = struct.Struct("3i")


@attrs.frozen
class ConnectionInfo:
    """Who is on the other end, for handlers and logs."""

    id: int
    """A number unique within one daemon run."""
    listener: str
    """The listener that accepted it, ``tcp://127.0.0.1:8000`` or ``unix:/run/echo.sock``."""
    peer: str
    """The peer: ``127.0.0.1:54321``, ``[::1]:54321``, or ``pid 4242 uid 1000`` on a
    Unix socket; behind a balancer, the client its PROXY header names."""
    proxy: str = ""
    """The balancer the connection came through (the socket's own peer, said as
    :attr:`peer` would be), once a PROXY header has named the client; empty otherwise."""

    def __str__(self) -> str:
        via = f" via {self.proxy}" if self.proxy else ""
        return f"conn {self.id} from {self.peer}{via} on {self.listener}"

    def behind(self, client: str) -> ConnectionInfo:
        """This connection, with ``client`` (named by a PROXY header) as its peer and
        its socket's peer as the balancer it came through."""
        return attrs.evolve(self, peer=client, proxy=self.peer)

    @classmethod
    def for_socket(
        cls,
        id: int,
        listener: str,
        sock: stdlib_socket.socket | trio.socket.SocketType,
        peer: object,
    ) -> ConnectionInfo:
        """Describe a connection from its socket and the peer address ``accept()`` gave."""
        return cls(id, listener, _peer_name(sock, peer))


def _peer_name(sock: stdlib_socket.socket | trio.socket.SocketType, peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if sock.family != stdlib_socket.AF_UNIX:
        return "unknown peer"
    credentials = peer_credentials(sock)
    if credentials is None:
        return "unix peer"
    pid, uid, _gid = credentials
    return f"pid {pid} uid {uid}"


def peer_credentials(
    sock: stdlib_socket.socket | trio.socket.SocketType,
) -> tuple[int, int, int] | None:
    """The (pid, uid, gid) of the process at the other end of a Unix socket, as
    the kernel saw it connect; ``None`` where the system cannot tell
    (``SO_PEERCRED`` is Linux's) or the socket is gone."""
    option = getattr(stdlib_socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        data = sock.getsockopt(stdlib_socket.SOL_SOCKET, option, _CREDENTIALS.size)
    except OSError:
        return None
    pid, uid, gid = _CREDENTIALS.unpack(data)
    return pid, uid, gid


@attrs.frozen
class ConnectionState:
    """Where a conversation stands: what another process needs to carry it on
    (``Connection.handover_state()``, then ``Connection.resume()`` there). A
    plain record: only the handover writes it down."""

    peer: str
    listener: str
    pending: bytes
    """What was read of a partial frame (empty at a frame boundary)."""
    idle_left: float
    """Seconds until the connection's next deadline (idle, or its frame's); ``inf``: none."""
    frame_left: float
    """Seconds until its partial frame must be complete; ``inf``: no such deadline."""
    proxy: str = ""
    """The balancer it came through (:attr:`ConnectionInfo.proxy`); empty: none."""
