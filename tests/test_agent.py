"""HAProxy's agent check and the drain announced before it begins: ``serve_agent``
in-process, then ``--agent`` and ``--drain-delay`` on real processes (alone, with
workers, across an upgrade). Through a real HAProxy: tests/test_haproxy.py."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import trio

from triodaemon import TcpAddress, connect
from triodaemon._agent import MAX_ANSWERING, Say, serve_agent
from triodaemon._listeners import open_tcp

from .conftest import SpawnFn, free_port, read_until_eof, run_triodaemon

TEST_TIMEOUT = 30


async def ask_agent(port: int, send: bytes = b"") -> bytes:
    """What the agent answers one check (HAProxy's ``agent-send``: ``send`` first)."""
    stream = await connect(TcpAddress("127.0.0.1", port))
    async with stream:
        if send:
            await stream.send_all(send)
        return await read_until_eof(stream)


async def test_the_agent_says_what_the_process_says_of_itself_then_closes() -> None:
    state: list[Say] = ["ready"]
    with trio.fail_after(TEST_TIMEOUT):
        (listener,) = await open_tcp(TcpAddress("127.0.0.1", 0), reuse_port=True)
        assert isinstance(listener.address, TcpAddress)
        port = listener.address.port
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_agent, listener, lambda: state[0])
            assert await ask_agent(port) == b"ready 100%\n"
            state[0] = "drain"
            assert await ask_agent(port) == b"drain\n"
            # HAProxy's agent-send: read and discarded after the answer, no reset.
            assert await ask_agent(port, b"hello agent\n" * 100) == b"drain\n"
            state[0] = "gone"  # (another process answers on the same port)
            assert await ask_agent(port) == b""
            nursery.cancel_scope.cancel()
        listener.close()


async def test_the_agent_answers_a_bounded_number_at_once() -> None:
    # Connections that send nothing and never read hold an answer each for its
    # timeout at most; past MAX_ANSWERING, a check is closed unanswered, and the
    # agent answers again once they are gone.
    with trio.fail_after(TEST_TIMEOUT):
        (listener,) = await open_tcp(TcpAddress("127.0.0.1", 0))
        assert isinstance(listener.address, TcpAddress)
        port = listener.address.port
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_agent, listener, lambda: "ready")
            hogs = []
            for _ in range(MAX_ANSWERING):
                hog = socket.create_connection(("127.0.0.1", port))
                hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
                hogs.append(hog)
            answers = {await ask_agent(port) for _ in range(3)}
            assert answers <= {b"", b"ready 100%\n"}
            for hog in hogs:
                hog.close()
            nursery.cancel_scope.cancel()
        listener.close()


async def test_a_stop_is_announced_for_the_delay_while_the_daemon_serves_on(
    spawn: SpawnFn,
) -> None:
    agent = free_port()
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--agent", f"127.0.0.1:{agent}", "--drain-delay", "1",
        )  # fmt: skip
        (tcp,) = await daemon.wait_ready(1)
        assert await ask_agent(agent) == b"ready 100%\n"
        async with await connect(tcp) as held:
            daemon.signal(signal.SIGTERM)
            await daemon.wait_for_line("draining in 1s (--drain-delay): the agent says drain")
            start = trio.current_time()
            assert await ask_agent(agent) == b"drain\n"
            # Still accepting and serving, old connections and new.
            async with await connect(tcp) as new:
                await new.send_all(b"new\n")
                assert await new.receive_some() == b"new\n"
            await held.send_all(b"held\n")
            assert await held.receive_some() == b"held\n"
            await daemon.wait_for_line("shutting down: listeners closed")
            assert trio.current_time() - start > 0.5
            assert await held.receive_some() == b""  # drained
        assert await daemon.wait() == 0


async def test_a_second_stop_signal_during_the_delay_stops_at_once(spawn: SpawnFn) -> None:
    agent = free_port()
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--agent", f"127.0.0.1:{agent}", "--drain-delay", "20",
        )  # fmt: skip
        await daemon.wait_ready(1)
        daemon.signal(signal.SIGTERM)
        await daemon.wait_for_line("the agent says drain")
        daemon.signal(signal.SIGTERM)
        await daemon.wait_for_line("received SIGTERM again: stopping now")
        assert await daemon.wait() == 1


async def test_ctl_drain_is_announced_too(spawn: SpawnFn, tmp_path: Path) -> None:
    agent, control = free_port(), tmp_path / "ctl.sock"
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--control", str(control),
            "--agent", f"127.0.0.1:{agent}", "--drain-delay", "1",
        )  # fmt: skip
        await daemon.wait_ready(1)
        result = await run_triodaemon("ctl", "--control", str(control), "drain", "--json")
        assert json.loads(result.stdout) == {"draining": 0, "already": False}
        assert await ask_agent(agent) == b"drain\n"
        again = await run_triodaemon("ctl", "--control", str(control), "drain", "--json")
        assert json.loads(again.stdout)["already"] is True
        assert await daemon.wait() == 0


async def test_with_workers_the_supervisor_answers_and_announces(spawn: SpawnFn) -> None:
    agent = free_port()
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--workers", "2",
            "--agent", f"127.0.0.1:{agent}", "--drain-delay", "1",
        )  # fmt: skip
        (tcp,) = await daemon.wait_ready(1)
        # Only the supervisor binds the agent port: every answer is its own.
        assert [await ask_agent(agent) for _ in range(4)] == [b"ready 100%\n"] * 4
        daemon.signal(signal.SIGTERM)
        await daemon.wait_for_line("the agent says drain")
        assert await ask_agent(agent) == b"drain\n"
        async with await connect(tcp) as stream:  # (the workers accept on)
            await stream.send_all(b"x\n")
            assert await stream.receive_some() == b"x\n"
        assert await daemon.wait() == 0


async def test_an_upgrade_keeps_the_agent_answering_ready(spawn: SpawnFn, tmp_path: Path) -> None:
    # The new process binds the agent port beside the old one (SO_REUSEPORT); the
    # old one, once it has handed over, answers nothing, so no check hears "drain".
    agent, control = free_port(), tmp_path / "ctl.sock"
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await spawn(
            "--tcp", "127.0.0.1:0", "--control", str(control),
            "--agent", f"127.0.0.1:{agent}", "--drain-delay", "5",
        )  # fmt: skip
        await daemon.wait_ready(1)
        result = await run_triodaemon("ctl", "--control", str(control), "upgrade", "--json")
        assert result.returncode == 0, result.stderr
        answers = {await ask_agent(agent) for _ in range(20)}
        assert answers <= {b"ready 100%\n", b""}, answers
        assert b"ready 100%\n" in answers
        assert await daemon.wait() == 0  # (the old one, handed over: no delay)
        pid = json.loads(result.stdout)["pid"]
        assert b"--agent" in await trio.Path(f"/proc/{pid}/cmdline").read_bytes()
        exited = os.pidfd_open(pid)
        try:
            os.kill(pid, signal.SIGTERM)
            await trio.lowlevel.wait_readable(exited)
        finally:
            os.close(exited)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--drain-delay", "2"], "--drain-delay announces the drain to the balancer"),
        (["--agent", "127.0.0.1:notaport"], "--agent"),
        (["--agent", "127.0.0.1:1", "--drain-delay", "-1"], "--drain-delay"),
    ],
)
async def test_usage_errors(args: list[str], words: str) -> None:
    result = await run_triodaemon("--tcp", "127.0.0.1:0", *args)
    assert result.returncode == 2
    stderr = result.stderr.decode()
    assert words in stderr, stderr
    assert "Traceback" not in stderr
