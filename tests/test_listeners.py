"""Address parsing and listener setup: TCP binding, Unix socket-file hygiene."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from triodaemon import (
    AddressError,
    BoundListener,
    DaemonConfig,
    TcpAddress,
    UnixAddress,
    parse_tcp_address,
)
from triodaemon._config import ProcessConfig
from triodaemon._listeners import open_listeners, open_tcp, open_unix
from triodaemon._socketfile import UNIX_PATH_MAX, canonical_path, check_socket_path


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        (":8000", None, 8000),
        ("127.0.0.1:8000", "127.0.0.1", 8000),
        ("[::1]:0", "::1", 0),
        ("localhost:65535", "localhost", 65535),
    ],
)
def test_parse_tcp_address(text: str, host: str | None, port: int) -> None:
    assert parse_tcp_address(text) == TcpAddress(host, port)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8000", "expected"),
        ("::1:8000", "brackets"),
        ("[::1]8000", "expected"),
        (":http", "must be a number"),
        (":70000", "above 65535"),
    ],
)
def test_parse_tcp_address_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tcp_address(text)


def test_addresses_print_as_urls() -> None:
    assert str(TcpAddress("127.0.0.1", 80)) == "tcp://127.0.0.1:80"
    assert str(TcpAddress("::1", 80)) == "tcp://[::1]:80"
    assert str(UnixAddress("/tmp/e.sock")) == "unix:/tmp/e.sock"


async def test_all_interfaces_port_zero_gives_one_port() -> None:
    listeners = await open_tcp(TcpAddress(None, 0))
    try:
        ports = {listener.address.port for listener in listeners}  # type: ignore[union-attr]
        assert len(ports) == 1
        assert {listener.sock.family for listener in listeners} >= {socket.AF_INET}
    finally:
        for listener in listeners:
            listener.close()


async def test_port_in_use_names_the_port() -> None:
    [first] = await open_tcp(TcpAddress("127.0.0.1", 0))
    try:
        port = first.address.port  # type: ignore[union-attr]
        with pytest.raises(AddressError, match=f"tcp port {port} is already in use"):
            await open_tcp(TcpAddress("127.0.0.1", port))
    finally:
        first.close()


async def test_unresolvable_host() -> None:
    with pytest.raises(AddressError, match="cannot resolve host 'no-such-host.invalid'"):
        await open_tcp(TcpAddress("no-such-host.invalid", 0))


async def test_failure_closes_listeners_already_bound(sock_dir: Path) -> None:
    path = sock_dir / "first.sock"
    (sock_dir / "file").write_text("not a socket")
    with pytest.raises(AddressError, match="is not a socket"):
        await open_listeners([UnixAddress(str(path)), UnixAddress(str(sock_dir / "file"))])
    assert not path.exists()


async def test_unix_socket_gets_its_mode_and_is_removed_on_close(sock_dir: Path) -> None:
    path = sock_dir / "echo.sock"
    listener = await open_unix(UnixAddress(str(path)), mode=0o660, group=os.getgid())
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == os.getgid()
    assert sorted(os.listdir(sock_dir)) == ["echo.sock"]  # no temporary left behind
    listener.close()
    assert not path.exists()


async def test_a_path_through_a_symlink_and_dotdot_is_the_file_the_kernel_names(
    sock_dir: Path,
) -> None:
    # The kernel follows ``link`` before ``..``: link/../y.sock is in a/, beside b/,
    # not in sock_dir, as the text suggests. Bound, checked and removed there.
    (sock_dir / "a" / "b").mkdir(parents=True)
    (sock_dir / "link").symlink_to(sock_dir / "a" / "b")
    path = str(sock_dir / "link" / ".." / "y.sock")
    (listener,) = await open_listeners([UnixAddress(path)])
    try:
        assert (sock_dir / "a" / "y.sock").is_socket()
        assert not (sock_dir / "y.sock").exists()
    finally:
        listener.close()
    assert not (sock_dir / "a" / "y.sock").exists()
    # Two spellings of it are one file; the text's reading is another.
    with pytest.raises(ValueError, match="given twice"):
        DaemonConfig([UnixAddress(path), UnixAddress(str(sock_dir / "a" / "y.sock"))])
    DaemonConfig([UnixAddress(path), UnixAddress(str(sock_dir / "y.sock"))])
    with pytest.raises(ValueError, match="both a listener and the control socket"):
        ProcessConfig(DaemonConfig([UnixAddress(path)]), UnixAddress(str(sock_dir / "a/y.sock")))
    check_socket_path(str(sock_dir / "link" / ".." / "control.sock"))  # a/ exists


async def test_default_mode_is_0600_whatever_the_umask(sock_dir: Path) -> None:
    old = os.umask(0)
    try:
        listener = await open_unix(UnixAddress(str(sock_dir / "e.sock")))
    finally:
        os.umask(old)
    assert stat.S_IMODE((sock_dir / "e.sock").lstat().st_mode) == 0o600
    listener.close()


async def test_stale_socket_is_removed(sock_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "triodaemon")
    path = str(sock_dir / "echo.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(path)
    dead.close()  # the file stays: a crashed daemon's leftover
    listener = await open_unix(UnixAddress(path))
    assert f"removed stale socket file {path}" in caplog.text
    async with await trio.open_unix_socket(path):
        pass
    listener.close()


async def test_live_socket_is_refused(sock_dir: Path) -> None:
    path = str(sock_dir / "echo.sock")
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(path)
        live.listen()
        with pytest.raises(AddressError, match=f"another process is listening on {path}"):
            await open_unix(UnixAddress(path))
        assert os.path.exists(path)


async def test_regular_file_is_never_removed(sock_dir: Path) -> None:
    path = sock_dir / "data.txt"
    path.write_text("precious")
    with pytest.raises(
        AddressError, match=r"exists and is not a socket \(a regular file\); refusing to replace it"
    ):
        await open_unix(UnixAddress(str(path)))
    assert path.read_text() == "precious"


async def test_symlink_is_never_followed_or_removed(sock_dir: Path) -> None:
    path = sock_dir / "link.sock"
    path.symlink_to(sock_dir / "elsewhere")
    with pytest.raises(AddressError, match="not a socket"):
        await open_unix(UnixAddress(str(path)))
    assert path.is_symlink()


async def test_path_too_long(sock_dir: Path) -> None:
    path = str(sock_dir / ("x" * 120))
    with pytest.raises(AddressError, match=f"is {len(path)} bytes; the limit is {UNIX_PATH_MAX}"):
        await open_unix(UnixAddress(path))


async def test_missing_directory(sock_dir: Path) -> None:
    path = str(sock_dir / "nope" / "e.sock")
    with pytest.raises(AddressError, match=f"directory {sock_dir / 'nope'} does not exist"):
        await open_unix(UnixAddress(path))


@contextlib.contextmanager
def unprivileged(directory: Path, mode: int = 0o500) -> Iterator[None]:
    """Restrict ``directory`` to ``mode`` for this process (as root: become nobody for a while)."""
    if os.geteuid() == 0:
        os.seteuid(65534)
        try:
            yield
        finally:
            os.seteuid(0)
    else:
        directory.chmod(mode)
        try:
            yield
        finally:
            directory.chmod(0o700)


async def test_directory_without_permission(sock_dir: Path) -> None:
    sock_dir.chmod(0o755)
    locked = sock_dir / "locked"
    locked.mkdir(mode=0o755)
    with unprivileged(locked), pytest.raises(AddressError, match="no permission to write in"):
        await open_unix(UnixAddress(str(locked / "e.sock")))


async def test_file_that_is_no_longer_ours_is_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "echo.sock"
    listener = await open_unix(UnixAddress(str(path)))
    path.unlink()
    path.write_text("someone else's")
    listener.close()
    assert path.read_text() == "someone else's"


async def test_listener_from_an_already_open_socket(sock_dir: Path) -> None:
    path = str(sock_dir / "handed.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen()
    listener = BoundListener.from_socket(sock, owns_path=True)
    assert listener.address == UnixAddress(path)

    async def connect_and_close() -> None:
        client = await trio.open_unix_socket(path)
        await client.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect_and_close)
        sock, _peer = await listener.accept()
        sock.close()
    listener.close()
    assert not os.path.exists(path)


async def test_unreachable_directory(sock_dir: Path) -> None:
    inner = sock_dir / "inner"
    inner.mkdir()
    with unprivileged(sock_dir, 0o000), pytest.raises(AddressError, match="no permission to reach"):
        await open_unix(UnixAddress(str(inner / "e.sock")))


def test_listeners_close_outside_trio(sock_dir: Path) -> None:
    listeners = trio.run(open_listeners, [UnixAddress(str(sock_dir / "sync.sock"))])
    for listener in listeners:
        listener.close()
    assert not (sock_dir / "sync.sock").exists()


async def test_starts_at_once_on_one_path_leave_exactly_one_listening(sock_dir: Path) -> None:
    """Probe, remove and bind are one step between starters: none removes another's socket."""
    path = sock_dir / "echo.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    results: list[BoundListener | AddressError] = []

    async def start() -> None:
        try:
            results.append(await open_unix(UnixAddress(str(path))))
        except AddressError as exc:
            results.append(exc)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(start)
    [listener] = [result for result in results if isinstance(result, BoundListener)]
    refusals = {str(result) for result in results if isinstance(result, AddressError)}
    try:
        assert refusals == {
            f"another process is listening on {path}; stop it or choose another path"
        }
        st = os.lstat(path)
        assert listener.unix_identity == (st.st_dev, st.st_ino)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
        assert sorted(os.listdir(sock_dir)) == ["echo.sock"]  # no lock file, no temporary
    finally:
        listener.close()
    assert not path.exists()


async def test_a_leftover_lock_file_is_no_obstacle(sock_dir: Path) -> None:
    """A starter killed with -9 leaves its lock file: the kernel has dropped its lock."""
    (sock_dir / "echo.sock.lock").write_text("")
    listener = await open_unix(UnixAddress(str(sock_dir / "echo.sock")))
    listener.close()
    assert os.listdir(sock_dir) == []


async def test_a_lock_file_that_is_not_ours_is_used_and_left_as_it_was(sock_dir: Path) -> None:
    """Only a lock file this start made (or an empty one of this user, a leftover
    of ours) is removed: a file someone else keeps at the name stays, untouched."""
    lock = sock_dir / "echo.sock.lock"
    lock.write_text("someone's notes")
    lock.chmod(0o400)
    listener = await open_unix(UnixAddress(str(sock_dir / "echo.sock")))
    listener.close()
    assert sorted(os.listdir(sock_dir)) == ["echo.sock.lock"]
    assert lock.read_text() == "someone's notes"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o400


async def test_a_socket_at_the_lock_path_is_named_as_one(sock_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(sock_dir / "echo.sock.lock"))
        with pytest.raises(
            AddressError,
            match=r"cannot use lock file .*echo\.sock\.lock: it is a socket, not a regular file",
        ):
            await open_unix(UnixAddress(str(sock_dir / "echo.sock")))
    assert sorted(os.listdir(sock_dir)) == ["echo.sock.lock"]


async def test_a_lock_file_held_by_another_starter_is_waited_for(sock_dir: Path) -> None:
    lock = os.open(sock_dir / "echo.sock.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def start() -> None:
                listener = await open_unix(UnixAddress(str(sock_dir / "echo.sock")))
                listener.close()
                done.set()

            nursery.start_soon(start)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            assert not (sock_dir / "echo.sock").exists()
            os.close(lock)  # the other starter is done (its lock file stays, as after kill -9)
            await done.wait()


async def test_a_lock_held_too_long_is_one_line(sock_dir: Path, autojump_clock: object) -> None:
    lock = os.open(sock_dir / "echo.sock.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with pytest.raises(AddressError, match=r"another process has been starting on .* for 10s"):
            await open_unix(UnixAddress(str(sock_dir / "echo.sock")))
    finally:
        os.close(lock)


def _as_another_user() -> contextlib.AbstractContextManager[None]:
    """What an attacker who may rename entries in a shared directory does, as somebody else."""

    @contextlib.contextmanager
    def switched() -> Iterator[None]:
        if os.geteuid() != 0:
            yield  # the same user: the paths still must not be followed
            return
        os.setegid(65534)
        os.seteuid(65534)
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(0)

    return switched()


async def test_a_name_swapped_for_a_symlink_while_binding_is_never_followed(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between bind() and chmod()/chown() another user swaps the new name for a symlink.

    The shared directory lets others rename entries (mode 0777, no sticky bit).
    Whatever was bound there, the attacker replaces with a link to a victim
    file (and, if the socket was bound inside a directory, that directory with
    a link to a directory of the attacker's own holding such a link). The
    victim's mode and group must not change, and nothing but a real socket of
    ours may end up at the path.
    """
    sock_dir.chmod(0o755)
    shared = sock_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    victim = sock_dir / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    before = os.stat(victim)
    theirs = sock_dir / "theirs"
    theirs.mkdir()
    theirs.chmod(0o777)
    path = shared / "echo.sock"

    def swap(target: Path, link_to: Path) -> None:
        """Move ``target`` aside and put a symlink to ``link_to`` at its name, as the attacker."""
        with _as_another_user():
            os.rename(target, str(target) + ".moved")
            os.symlink(link_to, target)

    class Attacked(socket.socket):
        def bind(self, address: object) -> None:
            bound = Path(str(address))
            if self.family != socket.AF_UNIX:
                return super().bind(address)  # type: ignore[arg-type]
            if bound.parent != shared:  # bound inside a directory: swap the directory first
                swap(bound.parent, theirs)
                bound = theirs / bound.name
            super().bind(address)  # type: ignore[arg-type]
            swap(bound, victim)  # then the socket file itself
            return None

    monkeypatch.setattr(socket, "socket", Attacked)
    try:
        with pytest.raises(AddressError, match="replaced while binding"):
            await open_unix(
                UnixAddress(str(path)), mode=0o666, group=65534 if os.geteuid() == 0 else None
            )
    finally:
        monkeypatch.undo()
        after = os.stat(victim)
        assert (stat.S_IMODE(after.st_mode), after.st_gid) == (0o600, before.st_gid)
        assert not path.is_symlink()
        assert not path.exists()


async def test_a_leftover_lock_of_another_user_is_no_obstacle(sock_dir: Path) -> None:
    """A root daemon killed with -9 mid-start leaves a root-owned lock in /tmp-like dirs."""
    sock_dir.chmod(0o755)
    shared = sock_dir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # world-writable and sticky, as /tmp
    (shared / "echo.sock.lock").write_text("")
    (shared / "echo.sock.lock").chmod(0o644)
    with _as_another_user():
        listener = await open_unix(UnixAddress(str(shared / "echo.sock")))
        listener.close()
    assert not (shared / "echo.sock").exists()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda lock: lock.symlink_to(lock.parent / "elsewhere"), "it is a symlink"),
        (lambda lock: lock.mkdir(), "it is a directory, not a regular file"),
    ],
)
async def test_a_lock_file_that_is_not_a_file_is_one_line(
    sock_dir: Path, make: Callable[[Path], None], why: str
) -> None:
    lock = sock_dir / "echo.sock.lock"
    make(lock)
    with pytest.raises(AddressError, match=f"cannot use lock file {lock}: {why}"):
        await open_unix(UnixAddress(str(sock_dir / "echo.sock")))
    assert not (sock_dir / "elsewhere").exists()
    assert not (sock_dir / "echo.sock").exists()


def test_an_abstract_unix_address_is_written_with_an_at_sign() -> None:
    assert str(UnixAddress("\0triodaemon")) == "unix:@triodaemon"
    assert str(UnixAddress("/run/echo.sock")) == "unix:/run/echo.sock"


def test_an_abstract_name_is_its_own_canonical_path() -> None:
    assert canonical_path("\0triodaemon-test") == "\0triodaemon-test"
    listener = BoundListener.from_socket(socket.socket(socket.AF_UNIX), path="\0a")
    try:
        assert listener.serves(UnixAddress("\0a")) is True
        assert listener.serves(UnixAddress("\0b")) is False
    finally:
        listener.close()
