"""Unix socket files: stale ones, live ones, a safe bind, a lock between starters.

Strategy: an existing socket file is probed (a live one is refused, a stale one
removed); anything else at the path is never touched. The socket is bound in a
fresh private directory next to the path, given its mode and group there, put
into listening state, and only then linked onto the final path, so the path
never exists with wider permissions or without a listener behind it, and no
step after ``bind()`` goes through a name another user could swap (see
:func:`_bind_in_private_directory`). Two starters on one path take turns (see
:func:`_startup_lock`). Every OS error becomes an :class:`AddressError` that
names the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import logging
import os
import pwd
import secrets
import socket as stdlib_socket
import stat
import sys
from collections.abc import AsyncIterator

import trio

from ._errors import AddressError

log = logging.getLogger("triodaemon")

#: The longest socket path, in bytes: ``sun_path`` holds it and a terminating
#: NUL, 108 bytes on Linux, 104 on macOS and the BSDs.
UNIX_PATH_MAX = 107 if sys.platform.startswith("linux") else 103
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
#: The largest group id a file can be given: chown(2) takes ``(gid_t)-1`` (2**32 - 1)
#: to mean "leave the group unchanged".
MAX_GID = 2**32 - 2
#: The socket's name inside its private directory, until it is linked into place.
_BIND_NAME = "s"
#: Opening a directory only to use it as ``dir_fd``: ``O_PATH`` where there is
#: one, so a directory we may write in but not list (mode 0300) still works.
_DIRECTORY_FLAGS = os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)


async def bind_socket_file(
    path: str, *, mode: int, group: str | int | None, backlog: int
) -> tuple[stdlib_socket.socket, tuple[int, int]]:
    """Bind and listen on a Unix socket at ``path``, safely; see the module's strategy.

    Returns:
        The listening, non-blocking socket, and the ``(st_dev, st_ino)`` of its
        file, for :func:`remove_if_ours`.

    Raises:
        AddressError: one line naming the path and what to do.
    """
    try:
        gid = resolve_group(group) if group is not None else None
    except ValueError as exc:
        raise AddressError(f"cannot give {path} a group: {exc}") from None
    directory, parent = _open_directory(path)
    name = os.path.basename(path)
    try:
        async with _startup_lock(parent, directory, path):
            await _remove_if_stale(parent, name, path)
            return _bind_in_private_directory(parent, directory, name, path, mode, gid, backlog)
    finally:
        os.close(parent)


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


def _absolute(path: str) -> str:
    """``path`` from the root, as written: not normalized, since ``link/..`` is not
    the directory the text suggests (the kernel follows ``link`` first)."""
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def canonical_path(path: str) -> str:
    """The file a socket ``path`` names, as the kernel resolves it (its directory's
    symlinks and ``..``; the name as written): to tell whether two spellings name
    one file before either exists. An abstract name (``\0...``) is itself."""
    if path.startswith("\0"):
        return path
    directory, name = os.path.split(_absolute(path))
    return os.path.join(os.path.realpath(directory), name)


def _open_directory(path: str) -> tuple[str, int]:
    """Check the length of ``path``; open its directory (for ``dir_fd``); return both."""
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise AddressError(
            f"socket path {path} is {size} bytes; the limit is {UNIX_PATH_MAX}: choose a shorter path"
        )
    if not path:
        raise AddressError("the socket path is empty")
    directory = os.path.dirname(_absolute(path))
    try:
        return directory, os.open(directory, _DIRECTORY_FLAGS)
    except FileNotFoundError:
        raise AddressError(f"cannot create {path}: directory {directory} does not exist") from None
    except PermissionError:
        raise AddressError(
            f"cannot create {path}: no permission to reach directory {directory}"
        ) from None
    except NotADirectoryError:
        raise AddressError(f"cannot create {path}: {directory} is not a directory") from None
    except OSError as exc:
        raise AddressError(f"cannot create {path}: {directory}: {exc.strerror}") from exc


def file_kind(mode: int) -> str:
    """What sort of file ``mode`` says it is, in a word or two: ``a FIFO``."""
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device file"


def _cannot_create(path: str, directory: str, exc: OSError) -> AddressError:
    """The error for a file we could not create in ``directory``."""
    if isinstance(exc, PermissionError):
        return AddressError(
            f"cannot create {path}: no permission to write in {directory} "
            "(creating a file there needs write and search permission)"
        )
    return AddressError(f"cannot create {path}: {exc.strerror}")


def resolve_group(group: str | int) -> int:
    """The id of ``group``: a name, or an id (a number, or its digits).

    Raises:
        ValueError: no group has that name, or the id is not one a file can have.
    """
    if isinstance(group, str) and group.isascii() and group.isdigit():
        group = int(group)
    if isinstance(group, int):
        if not 0 <= group <= MAX_GID:
            raise ValueError(
                f"group id {group} is out of range: a group id is 0 to {MAX_GID} "
                f"({MAX_GID + 1} means 'leave the group as it is' to chown)"
            )
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except (KeyError, ValueError):  # (ValueError: a NUL in the name)
        raise ValueError(f"no such group: {group!r}") from None


def check_socket_path(path: str) -> None:
    """Check what can be checked of ``path`` before anything is bound: its length,
    and that its directory exists and can be reached.

    Raises:
        AddressError: one line naming the path and what to do.
    """
    os.close(_open_directory(path)[1])


async def _remove_if_stale(parent: int, name: str, path: str) -> None:
    """Refuse a live socket or any other file at ``path``; remove a stale socket."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise AddressError(f"cannot use {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressError(
            f"{path} exists and is not a socket ({file_kind(st.st_mode)}); refusing to replace it"
        )
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


def _bind_in_private_directory(
    parent: int, directory: str, name: str, path: str, mode: int, gid: int | None, backlog: int
) -> tuple[stdlib_socket.socket, tuple[int, int]]:
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
        except OSError as exc:
            raise _cannot_create(path, directory, exc) from exc
        if not stat.S_ISSOCK(st.st_mode):
            raise AddressError(f"cannot set up {path}: the temporary socket is not a socket")
        try:
            os.chmod(_BIND_NAME, mode, dir_fd=private_fd)
            if gid is not None:
                try:
                    os.chown(_BIND_NAME, -1, gid, dir_fd=private_fd)
                except PermissionError:
                    raise AddressError(
                        f"cannot give {path} group {gid}: only root, or a member of "
                        "that group, may; choose another --sock-group"
                    ) from None
            sock.listen(backlog)
            _link_into_place(private_fd, parent, name, path)
        except OSError as exc:
            raise AddressError(f"cannot set up {path}: {exc.strerror}") from exc
    except BaseException:
        sock.close()
        raise
    finally:
        _remove_private_directory(parent, private, private_fd)
    return sock, (st.st_dev, st.st_ino)


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
        except OSError as exc:
            raise _cannot_create(path, directory, exc) from exc
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
    still the one at the name (and starts over if not), so removing it is safe.
    A leftover file (its holder killed before it could remove it) is no
    obstacle, even to another user: ``flock`` needs only a read-only
    descriptor, and the file is made readable to all (it holds nothing).
    Only a file that is ours is removed: one this start made, or an empty one
    of this user (a leftover of a start of ours); anything else found at the
    name is locked and left as it was.
    """
    lock_path = path + _LOCK_SUFFIX
    lock_name = os.path.basename(lock_path)
    deadline = trio.current_time() + LOCK_TIMEOUT
    while True:
        opened = _open_lock_file(parent, directory, lock_name, lock_path)
        if opened is None:
            continue  # created by another starter between our two opens
        fd, created = opened
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
    ours = created or (held.st_size == 0 and held.st_uid == os.geteuid())
    try:
        yield
    finally:
        if ours:
            with contextlib.suppress(OSError):
                os.unlink(lock_name, dir_fd=parent)
        os.close(fd)


def _open_lock_file(
    parent: int, directory: str, name: str, lock_path: str
) -> tuple[int, bool] | None:
    """Open the lock file read-only, creating it if need be: its descriptor, and
    whether this call made it; ``None``: try again.

    An existing one is opened without ``O_CREAT``, so a file another user left
    in a sticky directory (where Linux refuses ``O_CREAT`` on it) still opens.
    Never follows a symlink, and never blocks: ``O_NONBLOCK`` opens a FIFO that
    anyone may have made there at once (a plain open would wait for a writer,
    deaf to signals), and whatever it opened that is not a regular file is refused.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    created = False
    try:
        fd = os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=parent)
        except FileExistsError:
            return None
        except OSError as exc:
            raise _cannot_create(lock_path, directory, exc) from exc
        created = True
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            why = "it is a symlink, which is never followed"
        elif exc.errno == errno.ENXIO:  # what opening a socket file says
            why = "it is a socket, not a regular file (made by someone else?)"
        elif isinstance(exc, PermissionError):
            why = f"it is not readable ({_owner(parent, name)})"
        else:
            why = exc.strerror or str(exc)
        raise AddressError(
            f"cannot use lock file {lock_path}: {why}; remove it if no triodaemon is starting there"
        ) from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise AddressError(
            f"cannot use lock file {lock_path}: it is {file_kind(mode)}, not a regular file "
            "(made by someone else?); remove it"
        )
    return fd, created


def _owner(parent: int, name: str) -> str:
    """``owned by uid 0 (root)``, or what can be said of who owns ``name``."""
    try:
        uid = os.stat(name, dir_fd=parent, follow_symlinks=False).st_uid
    except OSError:
        return "owner unknown"
    try:
        return f"owned by uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"owned by uid {uid}"
