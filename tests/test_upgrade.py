"""Upgrades: SIGHUP, ``ctl upgrade`` and ``--takeover`` hand every socket and open
connection to a new process, under load, as a user starts them; and every way one
can fail leaves the old process serving."""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from triodaemon import (
    ConnectionInfo,
    Daemon,
    DaemonConfig,
    Framing,
    TcpAddress,
    UnixAddress,
    connect,
    open_listeners,
)
from triodaemon._config import ProcessConfig
from triodaemon._control import ControlClient, ControlError, open_control
from triodaemon._framing import FramingKind
from triodaemon._handover.giver import Giver
from triodaemon._handover.wire import (
    HANDOVER_VERSIONS,
    CalledOff,
    Channel,
    HandoverError,
)
from triodaemon.testing import echo_frames

from .conftest import DaemonProcess, LogWaiter, SpawnFn, giving, read_until_eof

TEST_TIMEOUT = 90

#: Frames each load client sends at most; frames in flight on each at most.
MAX_FRAMES = 20_000
DEPTH = 8
_LETTERS = b"abcdefghijklmnopqrstuvwxyz"


def bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """The test, within ``TEST_TIMEOUT`` (tests that use ``generations`` have it there)."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        with trio.fail_after(TEST_TIMEOUT):
            await test(*args, **kwargs)

    return run


class Conversation:
    """One client under load: pipelined frames of mixed sizes (empty to 100 KiB),
    some written in two parts with a pause between (so that a handover finds frames
    half read); every echo checked byte for byte, in order, until our EOF."""

    def __init__(self, address: TcpAddress | UnixAddress, framing: Framing, seed: int) -> None:
        self.address = address
        self.framing = framing
        self.seed = seed
        self.sent: list[bytes] = []
        self.echoed = 0
        self.failure: str | None = None
        self.going = trio.Event()  # 20 echoes are back
        self._want = 20
        self._reached = self.going

    async def wait_echoed(self, count: int) -> None:
        """Wait until ``count`` echoes are back in all (or the client failed)."""
        self._want, self._reached = count, trio.Event()
        if self.echoed >= count or self.failure is not None:
            return
        await self._reached.wait()

    def _payload(self, rng: random.Random) -> bytes:
        size = rng.choice([0, 1, 8, 40, 64, 200, 1000, 4096, 30_000, 100_000])
        if self.framing.kind == "line":
            start = rng.randrange(26)
            return (_LETTERS * (size // 26 + 2))[start : start + size]
        return rng.randbytes(size)

    async def run(self, stop: trio.Event) -> None:
        try:
            stream = await connect(self.address)
        except Exception as exc:
            self.failure = f"connect: {exc}"
            self.going.set()
            return
        in_flight = trio.Semaphore(DEPTH)
        decoder = self.framing.decoder()
        try:
            async with stream, trio.open_nursery() as nursery:

                async def send() -> None:
                    rng = random.Random(self.seed)
                    for _ in range(MAX_FRAMES):
                        if stop.is_set():
                            break
                        await in_flight.acquire()
                        wire = self.framing.encode(self._payload(rng))
                        self.sent.append(wire)
                        if len(wire) > 1 and rng.random() < 0.25:
                            cut = rng.randrange(1, len(wire))
                            await stream.send_all(wire[:cut])
                            await trio.sleep(0.002)  # shapes the load: a frame half sent
                            await stream.send_all(wire[cut:])
                        else:
                            await stream.send_all(wire)
                    await stream.send_eof()

                nursery.start_soon(send)
                while data := await stream.receive_some():
                    decoder.feed(data)
                    while (frame := decoder.next_frame()) is not None:
                        if self.framing.encode(frame) != self.sent[self.echoed]:
                            raise AssertionError(f"echo {self.echoed} differs from its frame")
                        self.echoed += 1
                        in_flight.release()
                        if self.echoed >= self._want:
                            self._reached.set()
                if not stop.is_set() or self.echoed != len(self.sent):
                    raise AssertionError(
                        f"EOF after {self.echoed} of {len(self.sent)} echoes"
                        + ("" if stop.is_set() else ", before the end")
                    )
        except Exception as exc:  # (a group, from the nursery, too)
            self.failure = f"{self.address} client {self.seed}: {exc!r}"
        finally:
            self._reached.set()
            self.going.set()


class Connector:
    """New connections all along: connect, one frame, our EOF, its echo, the daemon's EOF."""

    def __init__(self, addresses: list[TcpAddress | UnixAddress], framing: Framing) -> None:
        self.addresses = addresses
        self.framing = framing
        self.done = 0
        self.failures: list[str] = []

    async def run(self, stop: trio.Event) -> None:
        for i in range(20_000):
            if stop.is_set():
                return
            address = self.addresses[i % len(self.addresses)]
            wire = self.framing.encode(b"connector %d" % i)
            try:
                stream = await connect(address)
                async with stream:
                    await stream.send_all(wire)
                    await stream.send_eof()
                    got = b""
                    while data := await stream.receive_some():
                        got += data
                if got != wire:
                    raise AssertionError(f"echo {got!r}")
                self.done += 1
            except Exception as exc:
                self.failures.append(f"{address} connect {i}: {type(exc).__name__}: {exc}")


async def start_load(
    nursery: trio.Nursery, daemon: DaemonProcess, framing: Framing, count: int
) -> tuple[list[Conversation], Connector, trio.Event]:
    """``count`` conversations (over the daemon's addresses in turn) and a connector,
    once every conversation is under way; and the event that stops them."""
    addresses = daemon.addresses
    conversations = [Conversation(addresses[i % 2], framing, seed=i) for i in range(count)]
    connector = Connector(addresses, framing)
    stop = trio.Event()
    for conversation in conversations:
        nursery.start_soon(conversation.run, stop)
    nursery.start_soon(connector.run, stop)
    for conversation in conversations:
        await conversation.going.wait()
    return conversations, connector, stop


async def carry_on_then_stop(conversations: list[Conversation], stop: trio.Event) -> None:
    """Once each conversation has 10 more echoes (the last process serves them all on),
    stop the load."""
    before = [c.echoed for c in conversations]
    with trio.fail_after(20):
        for conversation, echoed in zip(conversations, before, strict=True):
            await conversation.wait_echoed(echoed + 10)
    stop.set()


def assert_no_problems(
    daemon: DaemonProcess, conversations: list[Conversation], connector: Connector
) -> None:
    """No conversation nor new connection saw anything go wrong (the log if one did)."""
    problems = [c.failure for c in conversations if c.failure] + connector.failures
    assert not problems, "\n".join([*problems, daemon.stderr])
    assert connector.done > 0


async def ask(control: Path, command: str, **args: Any) -> Any:
    client = await open_control(str(control))
    async with client.stream:
        return await client.request(command, **args)


async def open_fds(client: ControlClient) -> tuple[int, int]:
    """How many descriptors the daemon behind ``client`` has open, and how many
    connections; its control connections: the one of ``client`` alone."""
    stats = await client.request("stats")
    return len(os.listdir(f"/proc/{stats['pid']}/fd")), stats["connections"]["open"]


async def wait_exited(pid: int) -> None:
    """Wait until ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(30):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def wait_for_count(daemon: DaemonProcess, text: str, count: int) -> str:
    """Wait until ``count`` stderr lines contain ``text``; return the last of them."""
    with trio.fail_after(30):
        while True:
            found = [line for line in daemon.lines if text in line]
            if len(found) >= count:
                return found[count - 1]
            await daemon._changed.wait()


@asynccontextmanager
async def generations(
    spawn: SpawnFn, sock_dir: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[DaemonProcess, list[int]]]:
    """A daemon on TCP and Unix with a control socket; ``pids`` gathers every process
    that takes over (the test appends them); whichever still runs at the end is stopped.
    The whole test has ``TEST_TIMEOUT``."""
    with trio.fail_after(TEST_TIMEOUT):
        async with _generations(spawn, sock_dir, *args, env=env) as found:
            yield found


@asynccontextmanager
async def _generations(
    spawn: SpawnFn, sock_dir: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[DaemonProcess, list[int]]]:
    daemon = await spawn(
        "--tcp",
        "127.0.0.1:0",
        "--sock",
        str(sock_dir / "echo.sock"),
        "--control",
        str(sock_dir / "control.sock"),
        *args,
        env=env,
    )
    await daemon.wait_ready(2)
    pids = [daemon.process.pid]
    try:
        yield daemon, pids
    finally:
        with trio.CancelScope(shield=True):
            for pid in pids if daemon.process.returncode is None else pids[1:]:
                await stop(pid)


async def stop(pid: int) -> None:
    """SIGTERM (a supervisor then stops its workers, and removes its files); SIGKILL
    if it is still there after a while."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        with trio.move_on_after(15):
            await trio.lowlevel.wait_readable(fd)
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)


async def upgrade_by_sighup(daemon: DaemonProcess, pids: list[int], nth: int) -> int:
    """SIGHUP the current process; wait until it has handed over and exited; the new pid."""
    os.kill(pids[-1], signal.SIGHUP)
    line = await wait_for_count(daemon, " INFO handed over to pid ", nth)  # (not a worker's)
    new = int(line.split("handed over to pid ")[1].split()[0])
    pids.append(new)
    await wait_exited(pids[-2])
    return new


@pytest.mark.parametrize("kind", ["line", "length"])
async def test_sighup_under_load_is_invisible_to_clients(
    spawn: SpawnFn, sock_dir: Path, kind: FramingKind
) -> None:
    framing = Framing(kind)
    async with generations(spawn, sock_dir, "--framing", kind) as (daemon, pids):
        control = sock_dir / "control.sock"
        async with (await open_control(str(control))).stream as first:
            baseline = await open_fds(ControlClient(first, "first"))
        async with trio.open_nursery() as nursery:
            conversations, connector, stop = await start_load(nursery, daemon, framing, 12)
            taken = 0
            last: ControlClient | None = None
            for nth in range(1, 4):
                new = await upgrade_by_sighup(daemon, pids, nth)
                if last is not None:
                    await last.aclose()
                # (The last one stays open: the count of descriptors below counts it.)
                last = await open_control(str(control))
                stats = await last.request("stats")
                assert stats["pid"] == new
                taken += stats["connections"]["taken_over"]
            await carry_on_then_stop(conversations, stop)
        assert_no_problems(daemon, conversations, connector)
        assert taken > 0  # connections moved (not just drained in the old processes)
        assert sum(c.echoed for c in conversations) > 12 * 20
        # Every upgrade moved the connections open at that moment.
        handed = [line for line in daemon.lines if " INFO handed over to pid" in line]
        assert len(handed) == 3
        assert all(" 0 connections finish here" in line for line in handed), handed
        # The command line does not grow with each upgrade.
        cmdline = Path(f"/proc/{pids[-1]}/cmdline").read_text().split("\0")
        assert cmdline.count("--handover-fd") == 1
        # No descriptor left behind: idle again, the last process has what the first had.
        # (Every client saw the daemon's EOF, which it sends as it closes: once this
        # request is answered, every connection is closed.)
        assert last is not None
        async with last.stream:
            assert await open_fds(last) == baseline == (baseline[0], 0)
        os.kill(pids[-1], signal.SIGTERM)
        await wait_exited(pids[-1])
        assert not (sock_dir / "echo.sock").exists()  # removed by whoever owned it last
        assert not control.exists()
    assert await daemon.wait() == 0


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` now."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


async def worker_pids(control: Path) -> list[int]:
    return [worker["pid"] for worker in (await ask(control, "stats"))["workers"]]


async def test_a_supervisor_and_its_workers_upgrade_under_load(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """--workers 2: a new supervisor takes the sockets over, and each new worker the
    connections of the old worker of its number; every old process exits."""
    framing = Framing("line")
    async with generations(spawn, sock_dir, "--workers", "2") as (daemon, pids):
        control = sock_dir / "control.sock"
        first_workers = await worker_pids(control)
        old_workers: list[int] = []
        async with trio.open_nursery() as nursery:
            conversations, connector, stop = await start_load(nursery, daemon, framing, 8)
            for nth in range(1, 3):
                old_workers += await worker_pids(control)
                new = await upgrade_by_sighup(daemon, pids, nth)
                for pid in old_workers:
                    await wait_exited(pid)
                stats = await ask(control, "stats")
                assert stats["pid"] == new
                assert [w["state"] for w in stats["workers"]] == ["serving", "serving"]
            await carry_on_then_stop(conversations, stop)
        assert_no_problems(daemon, conversations, connector)
        # Each old worker handed its open connections to its successor: none finished
        # in an old process (each would say "N connections finish here").
        workers_handed = [line for line in daemon.lines if "): handed over to pid" in line]
        assert len(workers_handed) == 4
        assert all(" 0 connections finish here" in line for line in workers_handed)
        moved = [re.search(r"listeners?, (\d+) connections?;", line) for line in workers_handed]
        assert sum(int(found[1]) for found in moved if found) > 0
        assert not set(await worker_pids(control)) & {*first_workers, *old_workers}
        assert (await ask(control, "stats"))["connections"]["taken_over"] > 0
        os.kill(pids[-1], signal.SIGTERM)
        await wait_exited(pids[-1])
        assert not (sock_dir / "echo.sock").exists()
    assert await daemon.wait() == 0


async def test_a_new_worker_killed_during_the_upgrade_is_started_again_and_takes_over(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """Its old worker keeps its connections meanwhile; the new one started in its
    place takes them over, as the first would have: the client notices nothing."""
    args = ("--workers", "2", "--drain-timeout", "30", "--log-level", "debug")
    async with generations(spawn, sock_dir, *args) as (daemon, pids):
        control = sock_dir / "control.sock"
        old_workers = await worker_pids(control)
        # A connection that cannot move before its client reads: the upgrade waits on it.
        stream, owed = await owing(daemon, daemon.addresses[1])
        async with stream:
            [held] = await ask(control, "connections")
            daemon.signal(signal.SIGHUP)
            line = await daemon.wait_for_line("upgrade (SIGHUP): pid ")
            pids.append(int(line.split(": pid ")[1].split()[0]))
            await daemon.wait_for_line(" INFO handed over to pid")  # the control socket too
            successor = (await worker_pids(control))[held["worker"] - 1]
            assert successor not in old_workers
            os.kill(successor, signal.SIGKILL)
            await daemon.wait_for_line(f"worker {held['worker']} (pid {successor}) killed")
            assert await read_exactly(stream, len(owed)) == owed  # now it can move
            for pid in old_workers:
                await wait_exited(pid)  # each handed its connections over in the end
            await stream.send_all(b"ping\n")
            assert await stream.receive_some() == b"ping\n"
        stats = await ask(control, "stats")
        assert stats["pid"] == pids[-1]
        assert stats["connections"]["taken_over"] == 1
        assert "workers still serving after the upgrade" not in daemon.stderr


async def test_a_new_supervisor_that_dies_during_the_upgrade_leaves_the_old_serving(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    before = set(Path(tempfile.gettempdir()).glob("triodaemon-*"))
    async with generations(spawn, sock_dir, "--workers", "2") as (daemon, pids):
        control = sock_dir / "control.sock"
        daemon.signal(signal.SIGHUP)
        line = await daemon.wait_for_line("upgrade (SIGHUP): pid ")
        new = int(line.split(": pid ")[1].split()[0])
        await daemon.wait_for_line("(taken over from pid")  # the new supervisor serves
        its_workers = children(new)
        os.kill(new, signal.SIGKILL)
        await wait_exited(new)
        await daemon.wait_for_line("serving on")  # called off, or taken back
        for pid in its_workers:  # they drain (accepting nothing more) and exit
            await wait_exited(pid)
        for address in daemon.addresses:
            assert await echo_frames(address, [b"still"]) == [b"still"]
        stats = await ask(control, "stats")
        assert (stats["pid"], stats["upgrade"]) == (pids[0], None)
        assert len(stats["workers"]) == 2  # (one may be starting again: it had handed over)
        assert (sock_dir / "echo.sock").exists()
    # The killed supervisor could not remove its workers' handover directory.
    for left in set(Path(tempfile.gettempdir()).glob("triodaemon-*")) - before:
        shutil.rmtree(left, ignore_errors=True)


async def test_ctl_gives_up_on_a_daemon_that_does_not_answer(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    async with generations(spawn, sock_dir) as (daemon, _):
        control = sock_dir / "control.sock"
        daemon.signal(signal.SIGSTOP)
        try:
            result = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "triodaemon",
                    "ctl",
                    "--control",
                    str(control),
                    "stats",
                    "--timeout",
                    "0.5",
                ],
                capture_stderr=True,
                check=False,
            )
        finally:
            daemon.signal(signal.SIGCONT)
        assert result.returncode == 1
        assert result.stderr.decode() == (
            f"triodaemon: error: the daemon at {control} did not answer within 0.5s (--timeout)\n"
        )


async def test_ctl_upgrade_then_a_takeover_by_hand(spawn: SpawnFn, sock_dir: Path) -> None:
    async with generations(spawn, sock_dir) as (daemon, pids):
        control = sock_dir / "control.sock"
        stream = await connect(daemon.addresses[1])
        async with stream:
            await stream.send_all(b"half a fra")  # a partial frame moves with it
            await daemon.wait_until_received(10)
            reply = await ask(control, "upgrade")
            pids.append(reply["pid"])
            assert reply["old_pid"] == pids[0]
            assert reply["handed_over"] == 1
            assert reply["finishing"] == 0
            await wait_exited(pids[0])
            await stream.send_all(b"me\n")
            assert await stream.receive_some() == b"half a frame\n"
            # By hand, from a shell: a new process with the same flags takes over.
            taker = await spawn(
                "--takeover",
                str(control),
                "--sock",
                str(sock_dir / "echo.sock"),
                "--control",
                str(control),
            )
            await taker.wait_ready(2)
            await taker.wait_for_line("took over: 1 connection carried on here")
            await taker.wait_for_line(f"(taken over from pid {pids[1]})")
            await wait_exited(pids[1])
            await stream.send_all(b"still here\n")
            assert await stream.receive_some() == b"still here\n"
            stats = await ask(control, "stats")
            assert stats["pid"] == taker.process.pid
            assert stats["connections"]["taken_over"] == 1
        taker.signal(signal.SIGTERM)
        assert await taker.wait() == 0
        assert not control.exists()


async def test_a_connection_owed_replies_moves_once_its_client_reads_them(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """Replies the client has not read yet keep the connection in the old process
    until they are sent; then it moves, and nothing is lost or repeated."""
    args = ("--drain-timeout", "30", "--log-level", "debug")
    async with generations(spawn, sock_dir, *args) as (daemon, pids):
        control = sock_dir / "control.sock"
        stream, owed = await owing(daemon, daemon.addresses[1])
        async with stream:
            assert (await ask(control, "connections"))[0]["state"] == "writing"
            reply: dict[str, Any] = {}
            upgraded = trio.Event()

            async def upgrade() -> None:
                reply.update(await ask(control, "upgrade"))
                upgraded.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(upgrade)
                await daemon.wait_for_line("(taken over from pid")  # the new one serves
                assert await read_exactly(stream, len(owed)) == owed
                await upgraded.wait()
            pids.append(reply["pid"])
            assert (reply["handed_over"], reply["finishing"]) == (1, 0)
            await stream.send_all(b"ping\n")  # in the new process now
            assert await stream.receive_some() == b"ping\n"
            assert (await ask(control, "stats"))["connections"]["taken_over"] == 1


async def owing(
    daemon: DaemonProcess, address: TcpAddress | UnixAddress
) -> tuple[trio.SocketStream, bytes]:
    """A connection whose replies wait for it to read them (the daemon, at
    ``--log-level debug``, says so), and the replies it is owed."""
    stream = await connect(address)
    frame = b"y" * 999 + b"\n"
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while True:  # (a trio socket's send is all or nothing when cancelled)
            sent += await stream.socket.send(frame[sent % len(frame) :])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        await daemon.wait_for_line("bytes of replies wait for the peer to read")
        nursery.cancel_scope.cancel()
    rest = -sent % len(frame)
    await stream.send_all(frame[len(frame) - rest :])
    return stream, frame * ((sent + rest) // len(frame))


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    got = b""
    while len(got) < size:
        data = await stream.receive_some(size - len(got))
        assert data, f"EOF after {len(got)} of {size} bytes"
        got += data
    return got


async def test_a_new_process_stopped_during_the_handover_leaves_everything_to_the_old(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """SIGTERM to the new process while connections move: it refuses the rest, which
    stay in the old process; that one accepts again, and the socket files stay."""
    args = ("--drain-timeout", "30", "--log-level", "debug")
    async with generations(spawn, sock_dir, *args) as (daemon, pids):
        control = sock_dir / "control.sock"
        stream, owed = await owing(daemon, daemon.addresses[1])
        async with stream:
            async with trio.open_nursery() as nursery:

                async def upgrade() -> None:
                    with pytest.raises(ControlError, match=rf"; pid {pids[0]} serves on$"):
                        await ask(control, "upgrade")

                nursery.start_soon(upgrade)
                line = await daemon.wait_for_line(
                    "upgrade (ctl upgrade on the control socket): pid "
                )
                new = int(line.split(": pid ")[1].split()[0])
                pids.append(new)
                await daemon.wait_for_line("(taken over from pid")  # it serves; the old waits
                os.kill(new, signal.SIGTERM)
                await daemon.wait_for_line("received SIGTERM")
                # The owed replies, then the connection could move: the new process refuses
                # it, or has exited already.
                assert await read_exactly(stream, len(owed)) == owed
                await wait_exited(new)
            await daemon.wait_for_line("upgrade (ctl upgrade on the control socket) called off: ")
            await stream.send_all(b"still the old one\n")
            assert await stream.receive_some() == b"still the old one\n"
        assert (sock_dir / "echo.sock").exists()
        assert control.exists()
        for address in daemon.addresses:
            assert await echo_frames(address, [b"old"]) == [b"old"]
        stats = await ask(control, "stats")
        assert (stats["pid"], stats["upgrade"]) == (pids[0], None)


async def test_a_new_process_that_stalls_with_connections_in_hand_is_killed(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """A new process wedged after it said ready (SIGSTOP here) holds nothing up for
    long: the old one kills it (its own child), keeps the batch, and accepts again."""
    # (Time enough to be ready even on a busy machine; then a stall is 3 s.)
    args = ("--drain-timeout", "30", "--log-level", "debug", "--upgrade-timeout", "3")
    async with generations(spawn, sock_dir, *args) as (daemon, pids):
        control = sock_dir / "control.sock"
        stream, owed = await owing(daemon, daemon.addresses[1])
        async with stream:
            replies: list[str] = []

            async def upgrade() -> None:
                with pytest.raises(ControlError) as failed:
                    await ask(control, "upgrade")
                replies.append(str(failed.value))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(upgrade)
                line = await daemon.wait_for_line(
                    "upgrade (ctl upgrade on the control socket): pid "
                )
                new = int(line.split(": pid ")[1].split()[0])
                await daemon.wait_for_line(f"pid {new} serves; this process accepts no more")
                os.kill(new, signal.SIGSTOP)
                # Now the connection can move; its batch meets a process that cannot answer.
                assert await read_exactly(stream, len(owed)) == owed
            assert "did not adopt connections within 3s" in replies[0]
            await daemon.wait_for_line(f"pid {new} stalled; killing it")
            await wait_exited(new)
            await stream.send_all(b"still the old one\n")
            assert await stream.receive_some() == b"still the old one\n"
        for address in daemon.addresses:
            assert await echo_frames(address, [b"old"]) == [b"old"]
        assert (await ask(control, "stats"))["pid"] == pids[0]


async def shout(frame: bytes, conn: ConnectionInfo) -> bytes:
    return frame.upper()


@bounded
async def test_connections_move_only_to_a_taker_with_the_same_handler(
    spawn: SpawnFn, sock_dir: Path, daemon_log: LogWaiter
) -> None:
    """An embedded daemon with a handler of its own, taken over by the command line's
    echo: its listeners move, its conversations finish where they began."""
    control = sock_dir / "control.sock"
    # As docs/library.md says: the control socket bound, the giver's commands added.
    daemon = Daemon(DaemonConfig([UnixAddress(str(sock_dir / "shout.sock"))]), handler=shout)
    [control_listener] = await open_listeners([UnixAddress(str(control))])
    commands = daemon.control_commands()
    Giver.for_daemon(daemon).add_commands(commands)
    async with trio.open_nursery() as nursery:
        [address] = await nursery.start(
            partial(daemon.serve, control=control_listener, commands=commands)
        )
        stream = await connect(address)
        async with stream:
            await stream.send_all(b"hi\nhalf")
            assert await stream.receive_some() == b"HI\n"
            taker = await spawn("--takeover", str(control))
            await taker.wait_ready(1)
            await daemon.wait_draining()  # handed over: what is left finishes here
            await daemon_log.wait_for(
                "runs another frame handler (echo, not tests.test_upgrade.shout)"
            )
            await stream.send_all(b" a frame\n")
            assert await read_until_eof(stream) == b"HALF A FRAME\n"
        assert await echo_frames(address, [b"hi"]) == [b"hi"]  # the taker's echo
        assert daemon.stats.connections_handed == 0
    taker.signal(signal.SIGTERM)
    assert await taker.wait() == 0


async def test_a_notify_that_fails_is_counted_and_the_takeover_goes_on(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """``notify`` is the embedding program's code: one that raises (here, written to
    take one message where several come) is an internal error, counted and logged,
    and neither stops this takeover nor leaves the giver refusing the next."""
    told: list[str] = []

    def notify(message: str) -> None:
        told.append(message)

    control = sock_dir / "control.sock"
    daemon = Daemon(DaemonConfig([UnixAddress(str(sock_dir / "e.sock"))]))
    [control_listener] = await open_listeners([UnixAddress(str(control))])
    commands = daemon.control_commands()
    Giver.for_daemon(daemon, notify).add_commands(commands)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(daemon.serve, control=control_listener, commands=commands))
            taker = await spawn("--takeover", str(control))
            await taker.wait_ready(1)
            await daemon.wait_draining()
        assert daemon.stats.internal_errors >= 1
        assert told == []
        taker.signal(signal.SIGTERM)
        assert await taker.wait() == 0


async def test_no_migrate_lets_connections_finish_in_the_old_process(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    async with generations(spawn, sock_dir, "--no-migrate") as (daemon, pids):
        control = sock_dir / "control.sock"
        stream = await connect(daemon.addresses[0])
        async with stream:
            await stream.send_all(b"one\ntw")
            assert await stream.receive_some() == b"one\n"
            reply = await ask(control, "upgrade")
            pids.append(reply["pid"])
            assert (reply["handed_over"], reply["finishing"]) == (0, 1)
            # New connections go to the new process; the old one drains this one: it
            # finishes the frame in progress, then closes, as a drain does.
            assert (await ask(control, "stats"))["pid"] == reply["pid"]
            await stream.send_all(b"o\n")
            assert await stream.receive_some() == b"two\n"
            assert await stream.receive_some() == b""
        assert await daemon.wait() == 0


async def test_a_supervisor_taking_over_a_single_process_leaves_it_its_connections(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """A supervisor cannot carry connections on itself (its workers serve): taking
    over a single process, it says so, and they finish in the old one, as with
    --no-migrate; none is dropped."""
    async with generations(spawn, sock_dir) as (daemon, pids):
        control = sock_dir / "control.sock"
        idle, mid_frame = await connect(daemon.addresses[1]), await connect(daemon.addresses[1])
        async with idle, mid_frame:
            await idle.send_all(b"hello\n")
            assert await idle.receive_some() == b"hello\n"
            await mid_frame.send_all(b"half-")
            await daemon.wait_until_received(11)
            taker = await spawn("--takeover", str(control), "--workers", "2")
            await taker.wait_ready(2)
            pids.append(taker.process.pid)
            await daemon.wait_for_line("takes no connections itself")
            await mid_frame.send_all(b"frame\n")
            assert await read_until_eof(mid_frame) == b"half-frame\n"
            assert await idle.receive_some() == b""  # drained: closed, not reset
        assert await daemon.wait() == 0
        assert await echo_frames(daemon.addresses[1], [b"new"]) == [b"new"]
        assert "handed to the supervisor" not in taker.stderr
        assert (await ask(control, "stats"))["pid"] == taker.process.pid


async def test_a_single_process_taking_over_a_supervisor_drains_its_workers(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """The old workers accept on the same sockets: with no new workers to hand their
    connections to, they must stop accepting and drain, and the old supervisor exit."""
    async with generations(spawn, sock_dir, "--workers", "2") as (daemon, pids):
        control = sock_dir / "control.sock"
        old_workers = await worker_pids(control)
        stream = await connect(daemon.addresses[1])
        async with stream:
            await stream.send_all(b"half-")
            await daemon.wait_until_received(5)
            taker = await spawn("--takeover", str(control))
            await taker.wait_ready(2)
            pids.append(taker.process.pid)
            await daemon.wait_for_line("has no workers to take over ours")
            await stream.send_all(b"frame\n")
            assert await read_until_eof(stream) == b"half-frame\n"
        assert await daemon.wait() == 0
        for pid in old_workers:
            await wait_exited(pid)
        for n in range(8):  # every new connection: the new process's
            assert await echo_frames(daemon.addresses[1], [b"n%d" % n]) == [b"n%d" % n]
        stats = await ask(control, "stats")
        assert stats["pid"] == taker.process.pid
        assert stats["connections"]["total"] >= 8


def broken_release(tmp_path: Path, how: str) -> dict[str, str]:
    """The environment of a daemon whose later starts find a broken program: once the
    marker file exists, a new interpreter exits at once (``crash``; ``crash-workers``:
    only worker processes) or never gets anywhere (``hang``)."""
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "broken"
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import os, select, sys
            if os.path.exists({str(marker)!r}):
                if {how!r} == "hang":
                    select.select([], [], [])  # hangs until killed
                elif {how!r} == "crash" or "--worker" in sys.argv:
                    os.write(2, b"broken release: cannot start\\n")
                    os._exit(3)
            """
        )
    )
    return {
        "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "MARKER": str(marker),
    }


async def test_a_new_process_that_crashes_leaves_the_old_one_serving(
    spawn: SpawnFn, sock_dir: Path, tmp_path: Path
) -> None:
    env = broken_release(tmp_path, "crash")
    async with generations(spawn, sock_dir, env=env) as (daemon, pids):
        control = sock_dir / "control.sock"
        stream = await connect(daemon.addresses[1])
        async with stream:
            await stream.send_all(b"before\n")
            assert await stream.receive_some() == b"before\n"
            Path(env["MARKER"]).touch()
            with pytest.raises(
                ControlError, match=r"upgrade failed: .*exited with code 3.*serves on"
            ):
                await ask(control, "upgrade")
            daemon.signal(signal.SIGHUP)  # the same by signal: logged
            await daemon.wait_for_line("upgrade (SIGHUP) called off")
            await stream.send_all(b"after\n")
            assert await stream.receive_some() == b"after\n"
            assert (await ask(control, "stats"))["pid"] == pids[0]
        Path(env["MARKER"]).unlink()
        reply = await ask(control, "upgrade")  # and it can still upgrade
        pids.append(reply["pid"])
        assert reply["handed_over"] == 0


async def test_new_workers_that_crash_leave_the_old_supervisor_serving(
    spawn: SpawnFn, sock_dir: Path, tmp_path: Path
) -> None:
    env = broken_release(tmp_path, "crash-workers")
    async with generations(spawn, sock_dir, "--workers", "2", env=env) as (daemon, pids):
        control = sock_dir / "control.sock"
        workers = await worker_pids(control)
        stream = await connect(daemon.addresses[1])
        async with stream:
            await stream.send_all(b"before\n")
            assert await stream.receive_some() == b"before\n"
            Path(env["MARKER"]).touch()
            with pytest.raises(ControlError, match=r"upgrade failed: .*exited with code 1"):
                await ask(control, "upgrade")
            await stream.send_all(b"after\n")
            assert await stream.receive_some() == b"after\n"
            for address in daemon.addresses:
                assert await echo_frames(address, [b"new"]) == [b"new"]
            stats = await ask(control, "stats")
            assert stats["pid"] == pids[0]
            assert [w["pid"] for w in stats["workers"]] == workers
            assert stats["upgrade"] is None


async def test_a_new_process_never_ready_is_killed_in_time(
    spawn: SpawnFn, sock_dir: Path, tmp_path: Path
) -> None:
    env = broken_release(tmp_path, "hang")
    async with generations(spawn, sock_dir, "--upgrade-timeout", "1", env=env) as (daemon, _pids):
        control = sock_dir / "control.sock"
        Path(env["MARKER"]).touch()
        daemon.signal(signal.SIGHUP)
        line = await daemon.wait_for_line("upgrade (SIGHUP): pid ")
        hung = int(line.split("pid ")[1].split()[0])
        # A second upgrade while one is under way is refused, and says why.
        with pytest.raises(ControlError, match=r"already under way \(SIGHUP\)"):
            await ask(control, "upgrade")
        await daemon.wait_for_line("did not ask for the sockets within 1s")
        await wait_exited(hung)
        stream = await connect(daemon.addresses[0])
        async with stream:
            await stream.send_all(b"still serving\n")
            assert await stream.receive_some() == b"still serving\n"
        assert (await ask(control, "stats"))["upgrade"] is None


async def test_a_drain_calls_off_an_upgrade_not_yet_ready(
    spawn: SpawnFn, sock_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM while a new process is still starting: the upgrade is called off (the
    new process killed) and the old one drains and exits, as SIGTERM says."""
    env = broken_release(tmp_path, "hang")
    async with generations(spawn, sock_dir, env=env) as (daemon, _pids):
        Path(env["MARKER"]).touch()
        daemon.signal(signal.SIGHUP)
        line = await daemon.wait_for_line("upgrade (SIGHUP): pid ")
        hung = int(line.split("pid ")[1].split()[0])
        daemon.signal(signal.SIGTERM)
        await daemon.wait_for_line("upgrade (SIGHUP) called off: a drain began; draining")
        await wait_exited(hung)
        assert await daemon.wait() == 0
        assert not (sock_dir / "echo.sock").exists()


async def test_an_upgrade_during_a_drain_is_refused(spawn: SpawnFn, sock_dir: Path) -> None:
    async with generations(spawn, sock_dir, "--drain-timeout", "30") as (daemon, _pids):
        control = sock_dir / "control.sock"
        stream = await connect(daemon.addresses[0])
        async with stream:
            await stream.send_all(b"part of a frame")  # holds the drain open
            await daemon.wait_until_received(15)
            await ask(control, "drain")
            with pytest.raises(ControlError, match="draining; an upgrade cannot start now"):
                await ask(control, "upgrade")
            daemon.signal(signal.SIGHUP)
            await daemon.wait_for_line("upgrade (SIGHUP) refused: the daemon is draining")
            await stream.send_all(b"\n")
            assert await stream.receive_some() == b"part of a frame\n"
        assert await daemon.wait() == 0


async def test_a_taker_of_another_protocol_version_is_refused_cleanly(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    async with generations(spawn, sock_dir) as (_daemon, _pids):
        control = sock_dir / "control.sock"
        wanted = max(HANDOVER_VERSIONS) + 1
        with pytest.raises(
            ControlError,
            match=rf"no handover version in common: .* speaks version 1, the new process version {wanted}",
        ):
            await ask(control, "takeover", versions=[wanted])
        # And a real process of this release that cannot get there says so in one line.
        nothing = sock_dir / "nothing.sock"
        taker = await spawn("--takeover", str(nothing))
        assert await taker.wait() == 1
        [line] = taker.lines
        assert line.startswith("triodaemon: error: cannot take over: ")
        assert line.endswith(f"(is a daemon running with --control {nothing}?)")
        assert (await ask(control, "stats"))["upgrade"] is None


async def test_a_taker_with_other_framing_flags_is_refused(spawn: SpawnFn, sock_dir: Path) -> None:
    """The clients of the sockets would meet another protocol: refused before anything
    moved, in one line each side."""
    async with generations(spawn, sock_dir) as (daemon, _pids):
        control = sock_dir / "control.sock"
        taker = await spawn("--takeover", str(control), "--framing", "length")
        assert await taker.wait() == 1
        [line] = taker.lines
        assert line.startswith("triodaemon: error: cannot take over: ")
        assert "frames differently from this daemon (line, max frame 1048576 bytes)" in line
        await daemon.wait_for_line("called off: the new process")
        assert await echo_frames(daemon.addresses[1], [b"line"]) == [b"line"]
        assert (sock_dir / "echo.sock").exists()


@bounded
async def test_a_takeover_of_something_that_never_answers_gives_up_in_time(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    silent = trio.socket.socket(socket.AF_UNIX)
    with silent:
        await silent.bind(str(sock_dir / "silent.sock"))
        silent.listen()
        taker = await spawn("--takeover", str(sock_dir / "silent.sock"), "--upgrade-timeout", "1")
        assert await taker.wait() == 1
    assert taker.lines == [
        f"triodaemon: error: cannot take over: the daemon at {sock_dir / 'silent.sock'} did "
        "not hand its sockets over within 1s (--upgrade-timeout)"
    ]


async def test_systemd_hears_reloading_then_the_new_main_pid(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """With NotifyAccess=main only the main process is heard: the old one says
    RELOADING=1, then MAINPID= (the new one) and READY=1; the new one says nothing
    before that, and pings the watchdog after."""
    path = str(sock_dir / "notify")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

        async def message() -> tuple[int, list[str]]:
            data, ancillary, _, _ = await sock.recvmsg(4096, socket.CMSG_SPACE(12))
            pid = next(
                int.from_bytes(cdata[:4], sys.byteorder)
                for level, kind, cdata in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            )
            return pid, data.decode().split("\n")

        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
        async with generations(spawn, sock_dir, env=env) as (daemon, pids):
            old = pids[0]
            with trio.fail_after(20):
                while (await message())[1] != ["READY=1", "STATUS=serving"]:
                    pass
                daemon.signal(signal.SIGHUP)
                heard: list[tuple[int, list[str]]] = []
                while not any(fields[0].startswith("MAINPID=") for _, fields in heard):
                    heard.append(await message())
                while True:
                    sender, fields = await message()
                    if sender != old and fields == ["WATCHDOG=1"]:
                        break
            new = sender
            pids.append(new)  # (killed at the end, whatever happens below)
            reloading = [fields for pid, fields in heard if "RELOADING=1" in fields]
            assert len(reloading) == 1
            assert reloading[0][1].startswith("MONOTONIC_USEC=")
            assert heard[-1] == (
                old,
                [f"MAINPID={new}", "READY=1", f"STATUS=handing over to pid {new}"],
            )
            assert {pid for pid, _ in heard} == {old}  # the new one was silent till then
            await wait_exited(old)


async def fake_taker(control: Path) -> tuple[Channel, list[socket.socket]]:
    """A process of our own that asks the daemon at ``control`` for its sockets,
    speaking the protocol by hand: its channel, after the listeners came."""
    stream = await connect(UnixAddress(str(control)))
    client = ControlClient(stream, "daemon")
    assert (await client.request("takeover", versions=[1]))["version"] == 1
    channel = Channel(stream.socket, "daemon")
    await channel.send(
        {"type": "hello", "pid": os.getpid(), "framing": Framing().to_json(), "migrate": True}
    )
    _, _, listeners = await channel.receive("listeners")
    return channel, listeners


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2])
async def test_stray_signals_in_the_old_process_s_last_moments_change_nothing(
    spawn: SpawnFn, sock_dir: Path, signum: int
) -> None:
    """After a handover the old process drains and exits; a signal sent in its last
    moments (its main thread holds them again, trio's receiver is gone, the
    interpreter finalizes) must not kill it: it exits 0, as its drain says."""
    async with generations(spawn, sock_dir) as (daemon, pids):
        os.kill(pids[0], signal.SIGHUP)
        line = await daemon.wait_for_line(" INFO handed over to pid ")
        pids.append(int(line.split("handed over to pid ")[1].split()[0]))
        sent = 0
        with trio.move_on_after(20):
            while daemon.process.returncode is None:  # until it has exited, and after
                daemon.process.send_signal(signum)
                sent += 1
                await trio.sleep(0.001)
        assert sent > 1
        assert await daemon.wait() == 0
        assert "Traceback" not in daemon.stderr
        for address in daemon.addresses:  # (the new process serves)
            assert await echo_frames(address, [b"on"]) == [b"on"]


async def test_a_taker_that_never_says_ready_is_given_up_in_time(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    async with generations(spawn, sock_dir, "--upgrade-timeout", "1") as (daemon, _pids):
        control = sock_dir / "control.sock"
        channel, listeners = await fake_taker(control)
        assert len(listeners) == 3  # TCP, Unix, and the control socket
        for sock in listeners:
            sock.close()
        line = await daemon.wait_for_line("called off")
        assert line.endswith(
            f"upgrade (a takeover on the control socket) called off: the new process "
            f"(pid {os.getpid()}) was not ready within 1s; serving on"
        )
        await channel.aclose()
        for address in daemon.addresses:
            assert await echo_frames(address, [b"on"]) == [b"on"]
        assert (await ask(control, "stats"))["upgrade"] is None
        assert (sock_dir / "echo.sock").exists()


async def test_a_taker_that_dies_with_connections_in_hand_leaves_them_with_the_old_one(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    async with generations(spawn, sock_dir) as (daemon, pids):
        control = sock_dir / "control.sock"
        stream = await connect(daemon.addresses[1])
        async with stream:
            await stream.send_all(b"first half, ")
            await daemon.wait_until_received(12)
            channel, listeners = await fake_taker(control)
            await channel.send({"type": "ready"})
            header, blob, socks = await channel.receive("connections")
            assert blob == b"first half, "
            assert len(header["connections"]) == len(socks) == 1
            for sock in [*listeners, *socks]:
                sock.close()
            await channel.aclose()  # dies before it says "adopted"
            await daemon.wait_for_line(
                f"called off: the new process (pid {os.getpid()}) closed the connection"
            )
            # The old process carries the conversation on, and accepts again.
            await stream.send_all(b"second half\n")
            assert await stream.receive_some() == b"first half, second half\n"
            for address in daemon.addresses:
                assert await echo_frames(address, [b"on"]) == [b"on"]
            stats = await ask(control, "stats")
            assert (stats["pid"], stats["upgrade"]) == (pids[0], None)
            assert stats["connections"]["handed_over"] == 0
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert not (sock_dir / "echo.sock").exists()  # its own again, so removed


@bounded
async def test_only_the_daemons_own_user_may_take_it_over(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A control socket a group may use (to watch stats) lets no one else take the
    daemon's clients over. (As root the taker is another user's process; otherwise
    the daemon is told it runs as another user than its peer.)"""
    control = sock_dir / "control.sock"
    config = ProcessConfig(
        DaemonConfig([UnixAddress(str(sock_dir / "e.sock"))]),
        UnixAddress(str(control)),
        control_mode=0o666,
    )
    if os.geteuid() != 0:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)
    async with giving(config) as (daemon, _):
        if os.getuid() == 0:
            sock_dir.chmod(0o755)
            raw = socket.socket(socket.AF_UNIX)
            os.seteuid(65534)  # (the peer's credentials are taken at connect)
            try:
                raw.connect(str(control))
            finally:
                os.seteuid(0)
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
            async with stream:
                client = ControlClient(stream, "daemon")
                with pytest.raises(
                    ControlError,
                    match=r"^uid 65534 may not take this daemon over: only uid 0 \(its own\) or root$",
                ):
                    await client.request("takeover", versions=[1])
        else:
            with pytest.raises(ControlError, match=r"may not take this daemon over"):
                await ask(control, "takeover", versions=[1])
        assert daemon.snapshot()["upgrade"] is None  # nothing under way
        assert not daemon.draining


@bounded
async def test_the_channel_carries_descriptors_with_their_message(sock_dir: Path) -> None:
    a, b = socket.socketpair()
    left = Channel(trio.socket.from_stdlib_socket(a), "left")
    right = Channel(trio.socket.from_stdlib_socket(b), "right")
    x, y = socket.socketpair()
    with x, y:
        await left.send({"type": "connections", "n": 1}, b"pending bytes", [x.fileno()])
        header, blob, socks = await right.receive("connections")
        assert (header["n"], blob, len(socks)) == (1, b"pending bytes", 1)
        with socks[0] as got:
            got.sendall(b"through the copy")
            assert y.recv(100) == b"through the copy"
            assert not got.get_inheritable()
        # Something else where a message was due: an error, and its descriptors closed.
        await left.send({"type": "hello"}, fds=[x.fileno()])
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(HandoverError, match="sent 'hello' where adopted was due"):
            await right.receive("adopted")
        assert len(os.listdir("/proc/self/fd")) == before
        await left.send({"type": "error", "error": "nope"})
        with pytest.raises(CalledOff, match="^right called it off: nope$"):
            await right.receive("done")
        # A header over the limit is refused before it is read.
        await left.sock.send((1 << 30).to_bytes(4, "big"))
        with pytest.raises(HandoverError, match="header"):
            await right.receive("done")
    await left.aclose()
    with pytest.raises(HandoverError, match="closed the connection"):
        await right.receive("done")
    await right.aclose()
