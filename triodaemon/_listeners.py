"""Addresses to bound listeners, TCP and Unix, with socket-file hygiene.

Strategy: bind every listener before serving anything, so a bad address fails
the start with one clear line and nothing half-running. Errors from the OS are
translated into :class:`AddressError` here, at one place, with the path or port
named and a hint of what to do.

Unix sockets get the full treatment: an existing socket file is probed (a live
one is refused, a stale one removed); anything else at the path is never
touched; the socket is bound under a temporary name in the same directory, given
its mode and group, put into listening state, and only then linked onto the
final path, so the path never exists with wider permissions or without a
listener behind it. On close the file is removed only if it is still the one we
bound (same device and inode).

A :class:`BoundListener` can also wrap a socket that is already listening (from
systemd or a previous process), which is how listeners will be handed over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import secrets
import socket as stdlib_socket
import stat
from collections.abc import AsyncIterator, Sequence

import attrs
import trio

from ._errors import AddressError

log = logging.getLogger("triodaemon")

#: Linux ``sun_path`` is 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107
#: Listen backlog: the kernel clamps it to ``net.core.somaxconn``.
DEFAULT_BACKLOG = 1024
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
#: How long a probe of an existing socket file may take before we call it live.
_PROBE_TIMEOUT = 2.0
#: How long to wait for another process starting on the same socket path. Each
#: holds the lock for one probe (at most ``_PROBE_TIMEOUT``) and a bind.
LOCK_TIMEOUT = 10.0
#: How often to retry the lock while another process holds it (flock has no
#: readiness to wait for).
_LOCK_POLL = 0.01
#: The lock file beside the socket: ``PATH.lock``.
_LOCK_SUFFIX = ".lock"
#: The socket's name inside its private directory, until it is linked into place.
_BIND_NAME = "s"
#: Opening a directory only to use it as ``dir_fd``: ``O_PATH`` where there is
#: one, so a directory we may write in but not list (mode 0300) still works.
_DIRECTORY_FLAGS = os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)


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
        return f"unix:{self.path}"


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
    """

    sock: stdlib_socket.socket
    address: Address
    unix_identity: tuple[int, int] | None = None
    _closed: bool = attrs.field(default=False, init=False)

    @classmethod
    def from_socket(cls, sock: stdlib_socket.socket, *, owns_path: bool = False) -> BoundListener:
        """Wrap a socket that is already bound and listening (systemd, a handover).

        Args:
            sock: a listening ``SOCK_STREAM`` socket; ownership passes to the listener.
            owns_path: for a Unix socket, remove its file on close (if unchanged).
        """
        address: Address
        identity = None
        if sock.family == stdlib_socket.AF_UNIX:
            path = sock.getsockname()
            path = path.decode() if isinstance(path, bytes) else path
            address = UnixAddress(path)
            if owns_path:
                st = os.stat(path)
                identity = (st.st_dev, st.st_ino)
        else:
            host, port = sock.getsockname()[:2]
            address = TcpAddress(host, port)
        sock.setblocking(False)
        return cls(sock, address, identity)

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


def stream_for(sock: stdlib_socket.socket) -> trio.SocketStream:
    """A trio stream over an accepted socket (TCP gets ``TCP_NODELAY``); it owns the socket."""
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def remove_if_ours(path: str, identity: tuple[int, int]) -> bool:
    """Unlink ``path`` if it is the file with this ``(st_dev, st_ino)``; say whether it was."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if (st.st_dev, st.st_ino) != identity:
        log.warning("not removing %s: it was replaced by another file", path)
        return False
    try:
        os.unlink(path)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc.strerror)
        return False
    return True


async def open_listeners(
    addresses: Sequence[Address],
    *,
    sock_mode: int = 0o600,
    sock_group: str | int | None = None,
    backlog: int = DEFAULT_BACKLOG,
) -> list[BoundListener]:
    """Bind and listen on every address; on any failure close what was bound.

    A TCP address with no host (or a host name) can give several listeners, one
    per resolved address, all on the same port even when the port was 0.

    Raises:
        AddressError: one line naming the address and what to do.
    """
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


async def open_tcp(address: TcpAddress, *, backlog: int = DEFAULT_BACKLOG) -> list[BoundListener]:
    """Bind one listener per address ``address.host`` resolves to."""
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


async def _probe(path: str) -> bool:
    """Return whether something accepts connections on the socket file at ``path``."""
    probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    with probe:
        with trio.move_on_after(_PROBE_TIMEOUT):
            try:
                await probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            except OSError as exc:
                raise AddressError(f"cannot probe existing socket {path}: {exc.strerror}") from exc
            return True
        # A full backlog keeps a connect pending: somebody is there.
        return True


def _check_unix_path(path: str) -> str:
    """Validate the length and parent directory of ``path``; return the directory."""
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise AddressError(
            f"socket path {path} is {size} bytes; the limit is {UNIX_PATH_MAX}: choose a shorter path"
        )
    if not path:
        raise AddressError("the socket path is empty")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        raise AddressError(f"cannot create {path}: directory {directory} does not exist") from None
    except PermissionError:
        raise AddressError(
            f"cannot create {path}: no permission to reach directory {directory}"
        ) from None
    except OSError as exc:
        raise AddressError(f"cannot create {path}: {directory}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise AddressError(f"cannot create {path}: {directory} is not a directory")
    return directory


def _resolve_group(group: str | int) -> int:
    if isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise AddressError(f"no such group: {group}") from None


async def open_unix(
    address: UnixAddress,
    *,
    mode: int = 0o600,
    group: str | int | None = None,
    backlog: int = DEFAULT_BACKLOG,
) -> BoundListener:
    """Bind a Unix socket at ``address.path`` with the hygiene described above."""
    path = address.path
    directory = _check_unix_path(path)
    gid = _resolve_group(group) if group is not None else None
    name = os.path.basename(path)
    try:
        parent = os.open(directory, _DIRECTORY_FLAGS)
    except OSError as exc:
        raise AddressError(f"cannot use directory {directory}: {exc.strerror}") from exc
    try:
        async with _startup_lock(parent, directory, path):
            await _remove_if_stale(parent, name, path)
            return _bind_unix(parent, directory, name, path, mode, gid, backlog)
    finally:
        os.close(parent)


async def _remove_if_stale(parent: int, name: str, path: str) -> None:
    """Refuse a live socket or any other file at ``path``; remove a stale socket."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise AddressError(f"cannot use {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressError(f"{path} exists and is not a socket; refusing to replace it")
    if await _probe(path):
        raise AddressError(
            f"another process is listening on {path}; stop it or choose another path"
        )
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise AddressError(f"cannot remove stale socket {path}: {exc.strerror}") from exc
    log.info("removed stale socket file %s (nothing was listening)", path)


def _bind_unix(
    parent: int, directory: str, name: str, path: str, mode: int, gid: int | None, backlog: int
) -> BoundListener:
    """Bind in a private directory, set mode and group there, listen, then link onto ``path``.

    Why a private directory: ``chmod`` and ``chown`` of a socket file go by its
    name, and in a directory where others may rename entries, a name can be
    swapped for a symlink between ``bind()`` and ``chmod()``, which would then
    change the mode and group of whatever the link points to. So the socket is
    bound inside a fresh directory of our own (mode 0700: nobody else can add,
    rename or replace anything in it), every later step goes through that
    directory's descriptor, never a path, and only ``linkat()`` (which never
    follows a link) puts the finished socket at its final name. ``bind()``
    itself must take a path; if the private directory's name was swapped
    before it, the socket lands elsewhere and is not found through the
    descriptor afterwards, and the start is refused.
    """
    if len(os.fsencode(os.path.join(directory, _private_name(), _BIND_NAME))) > UNIX_PATH_MAX:
        raise AddressError(
            f"socket path {path} is too close to the {UNIX_PATH_MAX}-byte limit "
            "to bind safely: choose a shorter path"
        )
    private, private_fd = _make_private_directory(parent, directory, path)
    bind_path = os.path.join(directory, private, _BIND_NAME)
    sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.bind(bind_path)
            st = os.stat(_BIND_NAME, dir_fd=private_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise AddressError(
                f"cannot set up {path}: the temporary directory was replaced while binding; "
                f"is another user renaming entries in {directory}?"
            ) from None
        except PermissionError as exc:
            raise AddressError(
                f"cannot create {path}: no permission to write in {directory}"
            ) from exc
        except OSError as exc:
            raise AddressError(f"cannot create {path}: {exc.strerror}") from exc
        if not stat.S_ISSOCK(st.st_mode):
            raise AddressError(f"cannot set up {path}: the temporary socket is not a socket")
        try:
            os.chmod(_BIND_NAME, mode, dir_fd=private_fd)
            if gid is not None:
                os.chown(_BIND_NAME, -1, gid, dir_fd=private_fd)
            sock.listen(backlog)
            _link_into_place(private_fd, parent, name, path)
        except PermissionError as exc:
            raise AddressError(f"cannot set up {path}: {exc.strerror}") from exc
        except OSError as exc:
            raise AddressError(f"cannot set up {path}: {exc.strerror}") from exc
    except BaseException:
        sock.close()
        raise
    finally:
        _remove_private_directory(parent, private, private_fd)
    return BoundListener(sock, UnixAddress(path), (st.st_dev, st.st_ino))


def _private_name() -> str:
    """A fresh name for a private directory: short, as the bind path must fit in sun_path."""
    return "." + secrets.token_hex(3)


def _make_private_directory(parent: int, directory: str, path: str) -> tuple[str, int]:
    """Make a fresh 0700 directory beside ``path``; return its name and a descriptor of it."""
    while True:
        private = _private_name()
        try:
            os.mkdir(private, 0o700, dir_fd=parent)
        except FileExistsError:
            continue
        except PermissionError as exc:
            raise AddressError(
                f"cannot create {path}: no permission to write in {directory}"
            ) from exc
        except OSError as exc:
            raise AddressError(f"cannot create {path}: {exc.strerror}") from exc
        break
    try:
        private_fd = os.open(private, _DIRECTORY_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as exc:
        raise AddressError(
            f"cannot set up {path}: the temporary directory was replaced "
            f"({exc.strerror}); is another user renaming entries in {directory}?"
        ) from exc
    st = os.fstat(private_fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(private_fd)
        raise AddressError(
            f"cannot set up {path}: the temporary directory was replaced by someone "
            f"else's; is another user renaming entries in {directory}?"
        )
    return private, private_fd


def _link_into_place(private_fd: int, parent: int, name: str, path: str) -> None:
    """Give the bound socket its final name; never replace what is there."""
    try:
        os.link(_BIND_NAME, name, src_dir_fd=private_fd, dst_dir_fd=parent, follow_symlinks=False)
    except FileExistsError:
        raise AddressError(f"{path} appeared while binding; another program created it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # No hard links on this filesystem: rename, which would replace. The
        # startup lock keeps other triodaemons out; check for anyone else.
        try:
            os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(_BIND_NAME, name, src_dir_fd=private_fd, dst_dir_fd=parent)
        else:
            raise AddressError(
                f"{path} appeared while binding; another program created it"
            ) from None


def _remove_private_directory(parent: int, private: str, private_fd: int) -> None:
    """Remove the private directory (and the socket's temporary name in it). Never raises."""
    with contextlib.suppress(OSError):
        os.unlink(_BIND_NAME, dir_fd=private_fd)
    os.close(private_fd)
    try:
        os.rmdir(private, dir_fd=parent)
    except OSError as exc:
        log.warning("could not remove temporary directory %s: %s", private, exc.strerror)


@contextlib.asynccontextmanager
async def _startup_lock(parent: int, directory: str, path: str) -> AsyncIterator[None]:
    """Hold ``flock`` on a lock file beside the socket across probe, remove and bind.

    Two daemons starting on one path would otherwise both find a stale file
    dead, and the second would remove the first's live socket. The lock is an
    ``flock``, so the kernel releases it when its holder exits, however (a
    ``kill -9`` needs no cleanup); the holder removes the file before
    releasing it, and whoever locks next checks that the file it locked is
    still the one at the name (and starts over if not), so removing it is safe
    and a leftover file is never an obstacle.
    """
    lock_path = path + _LOCK_SUFFIX
    lock_name = os.path.basename(lock_path)
    deadline = trio.current_time() + LOCK_TIMEOUT
    while True:
        try:
            fd = os.open(
                lock_name,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
        except PermissionError as exc:
            raise AddressError(
                f"cannot create {path}: no permission to write in {directory}"
            ) from exc
        except OSError as exc:
            raise AddressError(f"cannot create lock file {lock_path}: {exc.strerror}") from exc
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if trio.current_time() >= deadline:
                        raise AddressError(
                            f"another process has been starting on {path} for "
                            f"{LOCK_TIMEOUT:g}s (it holds {lock_path}); try again"
                        ) from None
                    await trio.sleep(_LOCK_POLL)
            try:
                at_name = os.stat(lock_name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                at_name = None
            held = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if at_name is not None and (at_name.st_dev, at_name.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # removed or replaced by the holder before us: lock the current one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_name, dir_fd=parent)
        os.close(fd)
