"""Address parsing and listener setup: TCP binding, Unix socket-file hygiene."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from triodaemon import AddressError, BoundListener, TcpAddress, UnixAddress, parse_tcp_address
from triodaemon._listeners import UNIX_PATH_MAX, open_listeners, open_tcp, open_unix


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
    with pytest.raises(AddressError, match="exists and is not a socket; refusing to replace it"):
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
