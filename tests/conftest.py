"""Shared fixtures: short socket directories, in-process daemons, daemon subprocesses."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from triodaemon import ConnectionInfo, Daemon, DaemonConfig, TcpAddress, UnixAddress, connect
from triodaemon._config import ProcessConfig
from triodaemon._control import Commands
from triodaemon._handover.giver import Giver
from triodaemon._listeners import Address, open_unix

pytest_plugins = ["pytester"]


def pytest_report_header() -> str:
    """Which readiness backend the daemons of this run use unless a test picks one."""
    from triodaemon._lowlevel.readiness import open_readiness

    return f"triodaemon readiness backend: {open_readiness().name}"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short temporary directory for socket files (sun_path is 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="td-", dir="/tmp") as name:
        yield Path(name)


@asynccontextmanager
async def running(
    config: DaemonConfig | ProcessConfig, **kwargs: object
) -> AsyncIterator[tuple[Daemon, list[Address]]]:
    """Run a daemon in the background (with the control socket a ``ProcessConfig``
    names); drain it and wait for it on exit."""
    process = config if isinstance(config, ProcessConfig) else ProcessConfig(config)
    daemon = Daemon(process.daemon, **kwargs)  # type: ignore[arg-type]
    async with serving(daemon, process) as addresses:
        yield daemon, addresses


@asynccontextmanager
async def giving(process: ProcessConfig) -> AsyncIterator[tuple[Daemon, list[Address]]]:
    """A daemon whose control socket answers ``takeover`` (as the command line's does)."""
    daemon = Daemon(process.daemon)
    commands = daemon.control_commands()
    giver = Giver.for_daemon(
        daemon, upgrade_timeout=process.upgrade_timeout, migrate=process.migrate
    )
    giver.add_commands(commands)
    async with serving(daemon, process, commands) as addresses:
        yield daemon, addresses


@asynccontextmanager
async def serving(
    daemon: Daemon, process: ProcessConfig | None = None, commands: Commands | None = None
) -> AsyncIterator[list[Address]]:
    """Serve ``daemon`` in the background, with the control socket ``process`` names
    (bound as the command line binds it); drain it and wait for it on exit."""
    async with trio.open_nursery() as nursery:
        control = None
        if process is not None and process.control is not None:
            control = await open_unix(
                process.control, mode=process.control_mode, group=process.control_group
            )
        addresses = await nursery.start(partial(daemon.serve, control=control, commands=commands))
        try:
            yield list(addresses)
        finally:
            daemon.drain()


async def echo_in_the_task(frame: bytes, conn: ConnectionInfo) -> bytes:
    """An echo handler: frames go through the connection's task, one call each."""
    return frame


async def read_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the stream delivers until its EOF."""
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def run_triodaemon(
    *args: str, stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m triodaemon ARGS...`` to completion, capturing its output; past
    ``timeout`` it is killed and the test fails."""
    with trio.fail_after(timeout):
        return await trio.run_process(
            [sys.executable, "-m", "triodaemon", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            deliver_cancel=_kill,
        )


async def run_on_a_terminal(*args: str, timeout: float = 60) -> tuple[int, bytes]:
    """Run ``python -m triodaemon ARGS...`` with stdout and stderr on a new
    pseudo-terminal; return its exit code and everything the terminal received."""
    main, sub = os.openpty()
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "triodaemon", *args],
            stdin=subprocess.DEVNULL,
            stdout=sub,
            stderr=sub,
        )
        os.close(sub)
        sub = -1
        output = b""
        with trio.fail_after(timeout):
            while True:
                await trio.lowlevel.wait_readable(main)
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not chunk:
                    break
                output += chunk
            return await process.wait(), output
    finally:
        os.close(main)
        if sub >= 0:
            os.close(sub)


async def _kill(process: trio.Process) -> None:
    """At once: trio's own way (SIGTERM, then SIGKILL after 5 s with a warning) never
    reaches the SIGKILL under ``filterwarnings = error``, so a process that holds
    SIGTERM (one hung at startup) would hang the test run."""
    process.kill()


async def raw_exchange(path: Path, data: bytes) -> list[dict[str, Any]]:
    """Send ``data`` as it is on a new connection to the control socket at ``path``,
    shut down our side, and return every reply line the daemon sent before it closed."""
    stream = await connect(UnixAddress(str(path)))
    async with stream:
        await stream.send_all(data)
        await stream.send_eof()
        replies = await read_until_eof(stream)
    return [json.loads(line) for line in replies.splitlines()]


def free_port() -> int:
    """A loopback TCP port nobody listens on now (for a program that binds it itself)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def loopback(sock_dir: Path) -> list[Address]:
    return [TcpAddress("127.0.0.1", 0), UnixAddress(str(sock_dir / "echo.sock"))]


#: The readiness line, one per listener: ``triodaemon: listening on ADDRESS``.
_READY = "triodaemon: listening on "


class DaemonProcess:
    """A ``python -m triodaemon`` subprocess whose stderr is collected line by line."""

    def __init__(self, process: trio.Process, stderr: trio.abc.ReceiveStream | None = None) -> None:
        self.process = process
        self._stderr = stderr if stderr is not None else process.stderr
        self.lines: list[str] = []
        self._changed = trio.Event()
        self.addresses: list[Address] = []

    async def _collect(self) -> None:
        assert self._stderr is not None
        buffer = b""
        while chunk := await self._stderr.receive_some():
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            self.lines.extend(line.decode() for line in complete)
            self._changed.set()
            self._changed = trio.Event()
        if buffer:
            self.lines.append(buffer.decode())
        self._changed.set()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_line(self, text: str) -> str:
        """Wait until a stderr line contains ``text`` and return it."""
        with trio.fail_after(15):
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                if self.process.returncode is not None and self._changed.is_set():
                    raise AssertionError(f"exited without printing {text!r}:\n{self.stderr}")
                await self._changed.wait()

    async def wait_ready(self, count: int) -> list[Address]:
        """Wait for ``count`` readiness lines; return their addresses."""
        with trio.fail_after(15):
            while True:
                ready = [line for line in self.lines if line.startswith(_READY)]
                if len(ready) >= count:
                    break
                if self.process.returncode is not None and self._changed.is_set():
                    raise AssertionError(f"exited before it was ready:\n{self.stderr}")
                await self._changed.wait()
        self.addresses = []
        for line in ready:
            url = line.removeprefix(_READY).split(" (", 1)[0]  # " (systemd socket NAME)"
            if url.startswith("unix:"):
                self.addresses.append(UnixAddress(url[5:]))
            else:
                host, _, port = url.removeprefix("tcp://").rpartition(":")
                self.addresses.append(TcpAddress(host.strip("[]"), int(port)))
        return self.addresses

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def wait_until_received(self, count: int) -> None:
        """Ask for stats (SIGUSR1) until the daemon has read ``count`` bytes in all.

        What a test needs before a drain that must find a frame in progress: bytes
        sent are not yet bytes the daemon has read.
        """
        with trio.fail_after(15):
            while True:
                seen = len(self.lines)
                self.signal(signal.SIGUSR1)
                while not (new := [line for line in self.lines[seen:] if "stats: " in line]):
                    if self.process.returncode is not None and self._changed.is_set():
                        raise AssertionError(f"exited before its stats:\n{self.stderr}")
                    await self._changed.wait()
                if int(new[0].split(" bytes in")[0].rsplit(" ", 1)[1]) >= count:
                    return

    async def wait(self) -> int:
        with trio.fail_after(30):
            return await self.process.wait()


SpawnFn = Callable[..., Awaitable[DaemonProcess]]


class LockstepClient:
    """One line frame at a time, each sent once the previous one's echo is back,
    until the server closes: what a drain under load must not lose a frame of.

    ``going`` is released once 50 echoes have come back.
    """

    def __init__(self, n: int, going: trio.Semaphore) -> None:
        self.n = n
        self.going = going
        self.sent: list[bytes] = []
        self.echoed: list[bytes] = []

    async def run(self, stream: trio.SocketStream) -> None:
        async with stream:
            buffer = b""
            for i in range(100_000):
                frame = b"client %d frame %d" % (self.n, i)
                try:
                    await stream.send_all(frame + b"\n")
                except trio.BrokenResourceError:
                    return
                self.sent.append(frame)
                while b"\n" not in buffer:
                    try:
                        data = await stream.receive_some()
                    except trio.BrokenResourceError:
                        return
                    if not data:
                        return
                    buffer += data
                line, buffer = buffer.split(b"\n", 1)
                self.echoed.append(line)
                if i == 50:
                    self.going.release()

    def check(self) -> None:
        """Every frame the server read was echoed, in order; at most the one sent
        as it closed went unread."""
        assert len(self.echoed) > 50
        assert self.echoed == self.sent[: len(self.echoed)]
        assert len(self.sent) - len(self.echoed) <= 1


@asynccontextmanager
async def daemon_process(
    command: list[str], env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()
) -> AsyncIterator[DaemonProcess]:
    """Run ``command`` (a triodaemon, however it is started) with its stderr collected,
    and ``pass_fds`` inherited.

    Killed at the end if it is still running.
    """
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        pass_fds=pass_fds,
    )
    daemon = DaemonProcess(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon._collect)
        try:
            yield daemon
        finally:
            if process.returncode is None:
                process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


@pytest.fixture
async def spawn() -> AsyncIterator[SpawnFn]:
    """Start ``python -m triodaemon ARGS...``; processes left running are killed at the end."""
    processes: list[DaemonProcess] = []
    async with trio.open_nursery() as nursery:

        async def start(*args: str, env: dict[str, str] | None = None) -> DaemonProcess:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "triodaemon", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
            daemon = DaemonProcess(process)
            processes.append(daemon)
            nursery.start_soon(daemon._collect)
            return daemon

        try:
            yield start
        finally:
            for daemon in processes:
                if daemon.process.returncode is None:
                    daemon.process.kill()
                with trio.CancelScope(shield=True):
                    await daemon.process.wait()


class LogWaiter(logging.Handler):
    """Collect the daemon's log lines in-process and let a test wait for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._changed.set()

    def count(self, text: str) -> int:
        return sum(text in message for message in self.messages)

    async def wait_for(self, *texts: str) -> str:
        """Wait until a line containing one of ``texts`` is logged; return it."""
        while True:
            for message in self.messages:
                if any(text in message for text in texts):
                    return message
            self._changed = trio.Event()
            await self._changed.wait()

    async def wait_for_count(self, text: str, count: int) -> None:
        """Wait until ``count`` lines contain ``text``."""
        while self.count(text) < count:
            self._changed = trio.Event()
            await self._changed.wait()


@pytest.fixture
def daemon_log() -> Iterator[LogWaiter]:
    logger = logging.getLogger("triodaemon")
    waiter = LogWaiter()
    old_level = logger.level
    logger.addHandler(waiter)
    logger.setLevel(logging.DEBUG)
    try:
        yield waiter
    finally:
        logger.removeHandler(waiter)
        logger.setLevel(old_level)
