"""Addresses to bound listeners, TCP and Unix, with socket-file hygiene.

Strategy: bind every listener before serving anything, so a bad address fails
the start with one clear line and nothing half-running. Errors from the OS are
translated into :class:`AddressError` here, at one place, with the path or port
named and a hint of what to do.

Unix sockets get the full treatment of :mod:`triodaemon._socketfile` (stale
files, live ones, a private directory to bind in, a lock between starters); on
close the file is removed only if it is still the one we bound (same device
and inode).

A :class:`BoundListener` can also wrap a socket that is already listening (from
systemd or a previous process: see :mod:`._handover`). An :class:`AcceptGate`
pauses every accept loop of a daemon at once (while a new process takes over)
without closing anything.

:func:`connect` is the other end: an address to a connected stream, for the
server's own clients (the control client, a process taking over) and for the
harness in :mod:`triodaemon.testing`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket as stdlib_socket
import stat
from collections.abc import Sequence

import attrs
import trio

from ._errors import AddressError, ClientError
from ._socketfile import (
    bind_socket_file,
    canonical_path,
    check_socket_path,
    file_kind,
    remove_if_ours,
)

log = logging.getLogger("triodaemon")

#: Listen backlog: the kernel clamps it to ``net.core.somaxconn``.
DEFAULT_BACKLOG = 1024
#: Seconds a connect may take: the kernel's own limit for a TCP connect that gets
#: no answer (a full backlog drops SYNs) is over two minutes.
CONNECT_TIMEOUT = 10.0
#: accept() errors that concern one connection, not the listener: accept(2) on
#: Linux passes on the network errors of the new connection and says to retry
#: (EPERM: a firewall rule); the rest are what trio's SocketListener skips on
#: other systems. Names a platform lacks are left out.
PER_CONNECTION_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)
#: accept() errors that mean the listening socket itself is unusable (closed,
#: not a socket, not listening): retrying cannot help.
BROKEN_LISTENER_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EINVAL})


@attrs.frozen
class TcpAddress:
    """A TCP address to listen on or connect to."""

    host: str | None
    """Host name or IP literal; ``None`` means every interface."""
    port: int = attrs.field(validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    """Port number; 0 lets the system pick a free one."""

    def __str__(self) -> str:
        host = self.host if self.host is not None else "*"
        if ":" in host:
            host = f"[{host}]"
        return f"tcp://{host}:{self.port}"


@attrs.frozen
class UnixAddress:
    """A Unix domain socket path."""

    path: str
    """Filesystem path of the socket."""

    def __str__(self) -> str:
        # An abstract socket (Linux; systemd's ListenStream=@name) as ss and systemd write it.
        path = "@" + self.path[1:] if self.path.startswith("\0") else self.path
        return f"unix:{path}"


Address = TcpAddress | UnixAddress


def parse_tcp_address(text: str, *, default_host: str | None = None) -> TcpAddress:
    """Parse ``[HOST]:PORT``: ``:8000``, ``127.0.0.1:8000``, ``[::1]:8000``, ``localhost:0``.

    An empty host means ``default_host`` (``None``: every interface).

    Raises:
        ValueError: the text is not of that form or the port is out of range.
    """
    host: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"bad tcp address {text!r}: expected [IPV6]:PORT")
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"bad tcp address {text!r}: expected [HOST]:PORT, e.g. :8000")
        if ":" in host:
            raise ValueError(f"bad tcp address {text!r}: put IPv6 hosts in brackets, [::1]:8000")
    if not port_text.isdigit():
        raise ValueError(f"bad tcp address {text!r}: the port must be a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"bad tcp address {text!r}: port {port} is above 65535")
    return TcpAddress(host or default_host, port)


@attrs.define(eq=False)
class BoundListener:
    """A listening socket and the address it is bound to.

    Args:
        sock: a socket that is bound, listening and non-blocking.
        address: what it is bound to, as reported to the user.
        unix_identity: for a Unix socket file we created, its ``(st_dev,
            st_ino)``; the file is removed on close only if it still matches.
        label: what to say of it besides its address (``systemd socket NAME``);
            it goes with the socket when the socket is handed to another process.
    """

    sock: stdlib_socket.socket
    address: Address
    unix_identity: tuple[int, int] | None = None
    label: str = attrs.field(default="", kw_only=True)
    _closed: bool = attrs.field(default=False, init=False)

    @classmethod
    def from_socket(
        cls,
        sock: stdlib_socket.socket,
        *,
        owns_path: bool = False,
        path: str | None = None,
        identity: tuple[int, int] | None = None,
        label: str = "",
    ) -> BoundListener:
        """Wrap a socket that is already bound and listening (systemd, a handover).

        Args:
            sock: a listening ``SOCK_STREAM`` socket; ownership passes to the listener.
            owns_path: for a Unix socket, remove its file on close (if unchanged).
            path: for a Unix socket, its path, if not the name it was bound to
                (:mod:`._socketfile` binds in a private directory, then links).
            identity: for a Unix socket, the ``(st_dev, st_ino)`` of the file that
                was made for it (by the process that handed it over): remove the
                file on close if it is still that one.
            label: what to say of it besides its address.
        """
        address: Address
        if sock.family == stdlib_socket.AF_UNIX:
            if path is None:
                name = sock.getsockname()
                path = name.decode() if isinstance(name, bytes) else name
            address = UnixAddress(path)
            if owns_path or identity is not None:
                try:
                    st = os.stat(path)
                except OSError:
                    identity = None  # gone: nothing to remove
                else:
                    found = (st.st_dev, st.st_ino)
                    identity = found if owns_path or found == identity else None
        else:
            host, port = sock.getsockname()[:2]
            address = TcpAddress(host, port)
            identity = None
        sock.setblocking(False)
        return cls(sock, address, identity, label=label)

    def serves(self, address: Address) -> bool:
        """Whether this listener is already what ``address`` asks for: the same socket
        file (or path), or the same port on the same host (or, for ``host=None``,
        on every interface). For a socket systemd passed that the command line
        names too."""
        mine = self.address
        if isinstance(address, UnixAddress):
            if not isinstance(mine, UnixAddress):
                return False
            try:
                return os.path.samefile(address.path, mine.path)
            except (OSError, ValueError):  # (ValueError: an abstract name's NUL)
                return canonical_path(address.path) == canonical_path(mine.path)
        if not isinstance(mine, TcpAddress) or address.port != mine.port:
            return False
        if address.host is None:
            return mine.host in ("0.0.0.0", "::")
        return address.host == mine.host

    async def wait_acceptable(self) -> None:
        """Wait until a connection is (probably) waiting to be accepted."""
        await trio.lowlevel.wait_readable(self.sock)

    def accept_nowait(self) -> tuple[stdlib_socket.socket, object]:
        """Accept one waiting connection; return its (non-blocking) socket and peer address.

        Connections that died in the backlog (every error in
        :data:`PER_CONNECTION_ACCEPT_ERRNOS`) are skipped, as trio's
        ``SocketListener`` does. Wrap the socket with :func:`stream_for`.

        Raises:
            trio.WouldBlock: no connection is waiting.
            OSError: anything else: out of a resource (EMFILE, ENFILE, ENOBUFS,
                ENOMEM), the listener broken (:data:`BROKEN_LISTENER_ERRNOS`),
                or not understood.
        """
        while True:
            try:
                sock, peer = self.sock.accept()
            except BlockingIOError:
                raise trio.WouldBlock from None
            except OSError as exc:
                if exc.errno in PER_CONNECTION_ACCEPT_ERRNOS:
                    continue
                raise
            sock.setblocking(False)
            return sock, peer

    async def accept(self) -> tuple[stdlib_socket.socket, object]:
        """Wait for a connection and accept it (see :meth:`accept_nowait`)."""
        while True:
            await self.wait_acceptable()
            try:
                return self.accept_nowait()
            except trio.WouldBlock:
                continue

    def disown(self) -> tuple[int, int] | None:
        """Leave the socket file in place on :meth:`close` (another process owns it
        now); return the identity that was ours, to hand on (``None``: not ours)."""
        identity, self.unix_identity = self.unix_identity, None
        return identity

    def close(self) -> None:
        """Remove our socket file (only if it is still ours), then close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.unix_identity is not None and isinstance(self.address, UnixAddress):
            remove_if_ours(self.address.path, self.unix_identity)
        with contextlib.suppress(RuntimeError):  # outside trio.run nobody can be waiting
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class AcceptGate:
    """Open (accept) or shut (wait, accepting nothing): one switch for a daemon's accept loops."""

    def __init__(self) -> None:
        self._opened: trio.Event | None = None  # set when shut; set() opens it again

    @property
    def shut(self) -> bool:
        return self._opened is not None

    def close(self) -> None:
        """Stop accepting (listeners stay open: connections wait in their backlogs)."""
        if self._opened is None:
            self._opened = trio.Event()

    def open(self) -> None:
        """Accept again."""
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.set()

    async def wait_open(self) -> None:
        """Return at once while open; else when :meth:`open` is called."""
        while self._opened is not None:
            await self._opened.wait()


def stream_for(sock: stdlib_socket.socket) -> trio.SocketStream:
    """A trio stream over an accepted socket (TCP gets ``TCP_NODELAY``); it owns the socket."""
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def open_listeners(
    addresses: Sequence[Address],
    *,
    sock_mode: int = 0o600,
    sock_group: str | int | None = None,
    backlog: int = DEFAULT_BACKLOG,
) -> list[BoundListener]:
    """Bind and listen on every address; on any failure close what was bound.

    The Unix socket paths are checked first (:func:`check_socket_path`), so that
    a path too long or a directory missing fails before any file is touched.

    A TCP address with no host (or a host name) can give several listeners, one
    per resolved address, all on the same port even when the port was 0.

    Raises:
        AddressError: one line naming the address and what to do.
    """
    for address in addresses:  # every path's problems before any file is touched
        if isinstance(address, UnixAddress):
            check_socket_path(address.path)
    bound: list[BoundListener] = []
    try:
        for address in addresses:
            if isinstance(address, TcpAddress):
                bound.extend(await open_tcp(address, backlog=backlog))
            else:
                bound.append(
                    await open_unix(address, mode=sock_mode, group=sock_group, backlog=backlog)
                )
    except BaseException:
        for listener in bound:
            listener.close()
        raise
    return bound


async def open_tcp(
    address: TcpAddress, *, backlog: int = DEFAULT_BACKLOG, reuse_port: bool = False
) -> list[BoundListener]:
    """Bind one listener per address ``address.host`` resolves to; ``reuse_port``:
    with ``SO_REUSEPORT``, which lets a process of the same user bind the same port
    while this one still has it (a process that takes over binds its own)."""
    try:
        infos = await trio.socket.getaddrinfo(
            address.host,
            address.port,
            type=stdlib_socket.SOCK_STREAM,
            flags=stdlib_socket.AI_PASSIVE,
        )
    except stdlib_socket.gaierror as exc:
        raise AddressError(f"cannot resolve host {address.host!r}: {exc.strerror}") from exc
    seen: set[tuple[int, str]] = set()
    targets: list[tuple[int, tuple[str, int] | tuple[str, int, int, int]]] = []
    for info_family, _type, _proto, _name, info_sockaddr in infos:
        key = (int(info_family), str(info_sockaddr[0]))
        if key not in seen and info_family in (stdlib_socket.AF_INET, stdlib_socket.AF_INET6):
            seen.add(key)
            targets.append((int(info_family), info_sockaddr))  # type: ignore[arg-type]
    # IPv4 first, so that with port 0 the port is chosen where it is most likely free.
    targets.sort(key=lambda t: t[0] != stdlib_socket.AF_INET)
    listeners: list[BoundListener] = []
    port = address.port
    try:
        for family, sockaddr in targets:
            sock = stdlib_socket.socket(family, stdlib_socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
                if family == stdlib_socket.AF_INET6:
                    sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
                host = str(sockaddr[0])
                try:
                    sock.bind((host, port, *sockaddr[2:]))
                except OSError as exc:
                    if (
                        address.host is None
                        and family == stdlib_socket.AF_INET6
                        and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
                    ):
                        log.debug("IPv6 is not available here; listening on IPv4 only")
                        sock.close()
                        continue
                    raise _tcp_error(exc, host, port) from exc
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
            bound_host, port = sock.getsockname()[:2]
            listeners.append(BoundListener(sock, TcpAddress(bound_host, port)))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    if not listeners:
        raise AddressError(f"{address} resolved to no usable address")
    return listeners


def _tcp_error(exc: OSError, host: str, port: int) -> AddressError:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return AddressError(
            f"tcp port {port} is already in use ({where}); stop the other process or choose another port"
        )
    if exc.errno == errno.EACCES:
        return AddressError(
            f"permission denied binding tcp port {port} ({where}); ports below 1024 need privileges"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return AddressError(f"cannot bind {where}: {host} is not an address of this machine")
    return AddressError(f"cannot bind {where}: {exc.strerror}")


async def open_unix(
    address: UnixAddress,
    *,
    mode: int = 0o600,
    group: str | int | None = None,
    backlog: int = DEFAULT_BACKLOG,
) -> BoundListener:
    """Bind a Unix socket at ``address.path`` with the hygiene of :mod:`._socketfile`."""
    sock, identity = await bind_socket_file(address.path, mode=mode, group=group, backlog=backlog)
    return BoundListener(sock, address, identity)


async def connect(address: Address, *, timeout: float = CONNECT_TIMEOUT) -> trio.SocketStream:
    """Open a stream to a TCP or Unix address, within ``timeout`` seconds.

    Raises:
        ClientError: the connection could not be made (one line, address named).
    """
    with trio.move_on_after(timeout):
        try:
            if isinstance(address, TcpAddress):
                return await trio.open_tcp_stream(address.host or "localhost", address.port)
            return await trio.open_unix_socket(address.path)
        except OSError as exc:
            raise ClientError(f"cannot connect to {address}: {_reason(exc, address)}") from exc
    raise ClientError(
        f"cannot connect to {address}: no answer within {timeout:g}s "
        "(its listen backlog is full, or something drops the connection)"
    )


def _reason(exc: OSError, address: Address) -> str:
    """The OS's words for why a connect failed (trio groups the attempts of one host),
    or, for a path that is no socket at all (which Linux calls "connection
    refused" too), what it is."""
    attempts = getattr(exc.__cause__, "exceptions", ())
    for attempt in attempts:
        if isinstance(attempt, OSError) and attempt.errno is not None:
            exc = attempt
            break
    if isinstance(address, UnixAddress) and exc.errno == errno.ECONNREFUSED:
        try:
            mode = os.stat(address.path).st_mode
        except (OSError, ValueError):
            pass
        else:
            if not stat.S_ISSOCK(mode):
                return f"not a socket ({file_kind(mode)})"
            return "connection refused (a socket file that nothing listens on)"
    return exc.strerror.lower() if exc.strerror else str(exc)
