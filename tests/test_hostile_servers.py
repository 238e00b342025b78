"""`client` and `bench` against servers that do not play along (issue 27).

What a server sends is data, never a way to stop, flood or steer the tool: against
each hostile server below, the command ends within a time its flags bound, under a
memory limit, with exit code 1 and one line saying what happened; `bench --json`
stays JSON (no NaN). The servers are small trio handlers, served on a loopback TCP
port or a Unix socket for the length of one test.
"""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from triodaemon import ClientError, Framing
from triodaemon._listeners import CONNECT_TIMEOUT
from triodaemon.testing import BenchResult, exchange
from triodaemon.testing._bench import DEFAULT_DRAIN_TIMEOUT

from .conftest import run_on_a_terminal, run_triodaemon

Handler = Callable[[trio.SocketStream], Awaitable[None]]

#: Seconds a Python process may need, beyond what its flags allow, to start, connect
#: and exit on a loaded CI machine.
SLACK = 20.0
#: The address space a command may use (``RLIMIT_AS``): a few times what it needs,
#: far below what buffering a flood for its whole time limit would take.
MEMORY_LIMIT = 512 * 1024 * 1024
#: Seconds between the bytes of a trickling server.
TRICKLE_PAUSE = 0.4


# The hostile servers. Each serves one connection; the client going away ends it.


async def trickle(stream: trio.SocketStream) -> None:
    """One byte every TRICKLE_PAUSE, forever, never a whole frame."""
    await stream.receive_some()
    while True:
        await stream.send_all(b"h")
        await trio.sleep(TRICKLE_PAUSE)


async def mute(stream: trio.SocketStream) -> None:
    """Reads everything, answers nothing."""
    while await stream.receive_some():
        pass


async def deaf(stream: trio.SocketStream) -> None:
    """Never reads."""
    await trio.sleep_forever()


async def half(stream: trio.SocketStream) -> None:
    """Echoes the first half of every read."""
    while data := await stream.receive_some():
        await stream.send_all(data[: len(data) // 2])


async def close_at_once(stream: trio.SocketStream) -> None:
    await stream.aclose()


async def reset(stream: trio.SocketStream) -> None:
    """Reads what comes, then resets the connection (SO_LINGER 0)."""
    await stream.receive_some()
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


async def garbage(stream: trio.SocketStream) -> None:
    """Answers every read with as many wrong bytes (a newline every other byte)."""
    while data := await stream.receive_some():
        await stream.send_all((b"\xde\n" * len(data))[: len(data)])


async def flood(stream: trio.SocketStream) -> None:
    """Sends bytes without a delimiter as fast as it can, from the start."""
    chunk = b"x" * 65536
    while True:
        await stream.send_all(chunk)


async def flood_lines(stream: trio.SocketStream) -> None:
    """Sends short lines as fast as it can, from the start."""
    chunk = b"x\n" * 32768
    while True:
        await stream.send_all(chunk)


async def _guarded(handler: Handler, stream: trio.SocketStream) -> None:
    try:
        async with stream:
            await handler(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client has gone: what these servers are for


@asynccontextmanager
async def hostile(handler: Handler, where: str | Path = "tcp") -> AsyncIterator[list[str]]:
    """Serve ``handler`` on a loopback TCP port (or the Unix socket path ``where``);
    yield the command line's address flags for it."""
    async with trio.open_nursery() as nursery:
        serve = partial(_guarded, handler)
        if where == "tcp":
            listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            yield ["--tcp", f"127.0.0.1:{port}"]
        else:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(str(where))
            sock.listen()
            listeners = [trio.SocketListener(sock)]
            await nursery.start(trio.serve_listeners, serve, listeners)
            yield ["--sock", str(where)]
        nursery.cancel_scope.cancel()


#: ``python -m triodaemon`` under an address-space limit: a command that buffered
#: what a server floods it with would die of a MemoryError (a traceback), not
#: print one line.
_LIMITED = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT})); "
    "sys.argv[0] = 'triodaemon'; "
    "runpy.run_module('triodaemon', run_name='__main__', alter_sys=True)"
)


async def run_limited(*args: str, bound: float, stdin: bytes = b"") -> tuple[int, bytes, str]:
    """Run ``triodaemon ARGS...`` under the memory limit; past ``bound`` seconds it
    is killed and the test fails. Returns (exit code, stdout, stderr)."""
    with trio.fail_after(bound):
        result = await trio.run_process(
            [sys.executable, "-c", _LIMITED, *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            deliver_cancel=_kill,
        )
    return result.returncode, result.stdout, result.stderr.decode()


async def _kill(process: trio.Process) -> None:
    process.kill()  # at once (trio's own SIGTERM-then-wait warns, an error here)


def the_error_line(stderr: str) -> str:
    """The one line on stderr that is not a progress line of `bench`; it must be the
    error line, and the last."""
    lines = [line for line in stderr.splitlines() if not _PROGRESS.match(line)]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    [line] = lines
    assert line.startswith("triodaemon: error: "), line
    assert stderr.splitlines()[-1] == line
    return line


_PROGRESS = re.compile(r"^\s*\d+\.\ds  [\d,]+ frames  [\d,]+/s  errors \d+$")


def reject_constant(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


# `triodaemon client`


def client_bound(timeout: float) -> float:
    """The connect and one reply, each within ``--timeout`` (``--send`` once, no
    ``--interval``), and the slack."""
    return 2 * timeout + SLACK


CLIENT_CASES = [
    pytest.param(
        trickle, [], r"no reply for 1s \(0 of 1 received; reply 1 incomplete", id="trickle"
    ),
    pytest.param(
        trickle,
        ["--framing", "raw"],
        r"no reply for 1s \([0-4] of 5 bytes received\)",
        id="trickle-raw",
    ),
    pytest.param(mute, [], r"no reply for 1s \(0 of 1 received\)$", id="mute"),
    pytest.param(half, [], r"reply 1 incomplete after 3 bytes", id="half"),
    pytest.param(
        close_at_once,
        [],
        r"server closed the connection after 0 of 1 replies|connection lost",
        id="close-at-once",
    ),
    pytest.param(reset, [], r"connection lost", id="reset"),
    pytest.param(garbage, [], r"the server sent a reply to no message: reply 2", id="garbage"),
    pytest.param(
        garbage,
        ["--framing", "length"],
        r"bad reply from the server: header announces a \d+-byte frame",
        id="garbage-length",
    ),
    pytest.param(
        flood,
        [],
        r"bad reply from the server: \d+ bytes without a delimiter; "
        r"frames are limited to 1048576 bytes",
        id="flood",
    ),
    pytest.param(
        flood, ["--framing", "raw"], r"sent back more than the 5 bytes it was sent", id="flood-raw"
    ),
    pytest.param(flood_lines, [], r"the server sent a reply to no message", id="flood-lines"),
]


@pytest.mark.parametrize(("handler", "flags", "message"), CLIENT_CASES)
async def test_client_against_a_hostile_server(
    handler: Handler, flags: list[str], message: str
) -> None:
    async with hostile(handler) as where:
        code, out, err = await run_limited(
            "client", *where, *flags, "--send", "hello", "--timeout", "1", bound=client_bound(1)
        )
    assert code == 1, err
    assert re.search(message, the_error_line(err)), err
    assert len(out) <= len(b"hello\n")  # what was owed, at most: never the flood


#: A reply that clears the screen and writes to the clipboard (OSC 52) on a terminal.
ESCAPES = b"\x1b[2J\x1b]52;c;aGk=\x07\xff"


async def escapes(stream: trio.SocketStream) -> None:
    await stream.receive_some()
    await stream.send_all(ESCAPES + b"\n")
    while await stream.receive_some():  # (until the client leaves: no race with its read)
        pass


@pytest.mark.parametrize("framing", ["line", "raw"])
async def test_client_shows_a_reply_on_a_terminal_escaped_and_pipes_it_as_it_is(
    framing: str,
) -> None:
    # (With raw framing, a reply is as many bytes as its message.)
    flags = ["--framing", framing, "--timeout", "10", "--send", "x" * (len(ESCAPES) + 1)]
    async with hostile(escapes) as where:
        piped = await run_triodaemon("client", *where, *flags)
        code, shown = await run_on_a_terminal("client", *where, *flags)
    assert piped.stdout == ESCAPES + b"\n"  # byte for byte, for a pipe or a file
    assert (code, piped.returncode) == (0, 0)
    assert b"\x1b" not in shown
    assert b"\x07" not in shown
    assert shown.startswith(rb"\x1b[2J\x1b]52;c;aGk=\x07\xff")  # (the tty adds \r)


async def test_client_over_a_unix_socket_to_a_trickle(sock_dir: Path) -> None:
    async with hostile(trickle, sock_dir / "t.sock") as where:
        code, _, err = await run_limited(
            "client", *where, "--send", "hello", "--timeout", "1", bound=client_bound(1)
        )
    assert code == 1
    assert "no reply for 1s (0 of 1 received; reply 1 incomplete after" in the_error_line(err)


async def test_client_the_timeout_bounds_every_reply_of_a_heartbeat() -> None:
    # --count 3 --interval 0.2: the third message goes out 0.4 s in, its reply is
    # owed by 1.4 s; the bound is connect + intervals + one timeout.
    async with hostile(trickle) as where:
        code, _, err = await run_limited(
            "client",
            *where,
            *("--send", "beat", "--count", "3", "--interval", "0.2", "--timeout", "1"),
            bound=1 + 2 * 0.2 + 1 + SLACK,
        )
    assert code == 1
    assert "no reply for 1s (0 of 3 received; reply 1 incomplete after" in the_error_line(err)


async def test_client_stdin_to_a_server_that_never_reads() -> None:
    lines = (b"y" * 1023 + b"\n") * (32 * 1024)  # 32 MiB: more than any socket buffer
    async with hostile(deaf) as where:
        code, out, err = await run_limited(
            "client", *where, "--timeout", "1", stdin=lines, bound=client_bound(1)
        )
    assert code == 1
    assert out == b""
    line = the_error_line(err)
    assert re.search(r"no reply for 1s \(0 of \d+ received\); message \d+ not all sent", line)
    assert line.endswith("the server stopped reading")


# `triodaemon client`'s exchange, in virtual time


#: Virtual seconds any exchange below may take: far more than its timeouts allow.
VIRTUAL_BOUND = 60


async def collect(replies: list[bytes], frame: bytes) -> None:
    replies.append(frame)


async def test_exchange_a_trickle_does_not_move_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()

    async def trickle_replies() -> None:
        await server.receive_some()
        for byte in b"hello\n":  # the right reply, a byte a second: 6 s in all
            await server.send_all(bytes([byte]))
            await trio.sleep(1)

    replies: list[bytes] = []
    with trio.fail_after(VIRTUAL_BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle_replies)
            start = trio.current_time()
            with pytest.raises(
                ClientError, match=r"\(0 of 1 received; reply 1 incomplete after 3 bytes\)"
            ):
                await exchange(client, [b"hello"], partial(collect, replies), reply_timeout=2.5)
            assert trio.current_time() - start == pytest.approx(2.5)
            nursery.cancel_scope.cancel()
    assert replies == []


async def slow_echo(stream: trio.abc.Stream, pause: float, gaps: dict[int, float]) -> None:
    """Echo lines, each ``pause`` seconds after the one before (``gaps[n]`` for the
    n-th, from 0)."""
    decoder = Framing().decoder()
    count = 0
    while data := await stream.receive_some():
        decoder.feed(data)
        while (frame := decoder.next_frame()) is not None:
            await trio.sleep(gaps.get(count, pause))
            await stream.send_all(frame + b"\n")
            count += 1


async def test_exchange_whole_replies_are_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Five messages at once, replies 0.9 s apart: 4.5 s in all, and a 1 s timeout
    # passes, because each reply was waited for 0.9 s (a slow server with pipelined
    # messages, as when stdin is piped in).
    client, server = trio.testing.memory_stream_pair()
    replies: list[bytes] = []
    with trio.fail_after(VIRTUAL_BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_echo, server, 0.9, {})
            messages = [b"%d" % n for n in range(5)]
            count = await exchange(client, messages, partial(collect, replies), reply_timeout=1)
            nursery.cancel_scope.cancel()
    assert count == 5
    assert replies == [b"0", b"1", b"2", b"3", b"4"]


async def test_exchange_times_out_between_whole_replies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()
    replies: list[bytes] = []
    with trio.fail_after(VIRTUAL_BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_echo, server, 0.9, {3: 5.0})  # then 5 s for the 4th
            messages = [b"%d" % n for n in range(5)]
            start = trio.current_time()
            with pytest.raises(ClientError, match=r"^no reply for 1s \(3 of 5 received\)$"):
                await exchange(client, messages, partial(collect, replies), reply_timeout=1)
            assert trio.current_time() - start == pytest.approx(3 * 0.9 + 1)
            nursery.cancel_scope.cancel()
    assert replies == [b"0", b"1", b"2"]


async def test_exchange_a_server_that_stops_reading_runs_out_the_reply_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, _server = trio.testing.lockstep_stream_pair()  # a send waits for a read
    start = trio.current_time()
    with (
        trio.fail_after(VIRTUAL_BOUND),
        pytest.raises(ClientError, match=r"message 1 not all sent: the server stopped reading$"),
    ):
        await exchange(client, [b"hello"], partial(collect, []), reply_timeout=3)
    assert trio.current_time() - start == pytest.approx(3)


async def test_exchange_passes_on_the_replies_owed_then_refuses_the_rest() -> None:
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(b"one\ntwo\nthree\n")
    replies: list[bytes] = []
    with trio.fail_after(5), pytest.raises(ClientError, match="reply 3, with 2 messages sent"):
        await exchange(client, [b"a", b"b"], partial(collect, replies))
    assert replies == [b"one", b"two"]


async def test_raw_exchange_passes_on_the_bytes_owed_then_refuses_the_rest() -> None:
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(b"abcdefgh")
    replies: list[bytes] = []
    with (
        trio.fail_after(5),
        pytest.raises(ClientError, match="more than the 3 bytes it was sent"),
    ):
        await exchange(client, [b"xyz"], partial(collect, replies), framing=Framing("raw"))
    assert replies == [b"abc"]


async def test_a_reply_before_any_message_answers_nothing() -> None:
    client, server = trio.testing.memory_stream_pair()
    await server.send_all(b"hello\n")

    async def nothing_yet() -> AsyncIterator[bytes]:
        await trio.sleep_forever()
        yield b""

    with trio.fail_after(5), pytest.raises(ClientError, match="reply 1, with 0 messages sent"):
        await exchange(client, nothing_yet(), partial(collect, []))


# `triodaemon bench`

#: Seconds warmed up and measured in the runs below.
WARMUP, DURATION = 0.1, 0.5


def bench_bound(warmup: float, duration: float) -> float:
    """The probe's connect, warm-up, measured time, the drain of echoes in flight,
    and the slack."""
    return CONNECT_TIMEOUT + warmup + duration + DEFAULT_DRAIN_TIMEOUT + SLACK


BENCH_STALLS = [
    pytest.param(mute, [], r"no echo came back in \d+\.\ds \(1 frame in flight\)$", id="mute"),
    pytest.param(deaf, [], r"no echo came back in", id="deaf"),
    pytest.param(
        half,
        [],
        r"incomplete echo: 32 bytes of echo 1 came back in the \d+\.\ds since its frame was sent",
        id="half",
    ),
    pytest.param(half, ["--framing", "length"], r"incomplete echo: 32 bytes", id="half-length"),
    pytest.param(trickle, [], r"incomplete echo: \d+ bytes? of echo 1 came back", id="trickle"),
]


@pytest.mark.parametrize(("handler", "flags", "message"), BENCH_STALLS)
async def test_bench_against_a_server_that_does_not_echo_fails(
    handler: Handler, flags: list[str], message: str
) -> None:
    async with hostile(handler) as where:
        code, out, err = await run_limited(
            "bench",
            *where,
            *flags,
            *("--conns", "2", "--warmup", f"{WARMUP}"),
            *("--duration", f"{DURATION}", "--json"),
            bound=bench_bound(WARMUP, DURATION),
        )
    assert code == 1, err
    line = the_error_line(err)
    assert line.startswith("triodaemon: error: 2 errors; the first: connection "), line
    assert re.search(message, line), line
    report = json.loads(out.decode(), parse_constant=reject_constant)
    assert report["frames"] == 0
    assert report["errors"] == 2
    assert [report["p50_ms"], report["p99_ms"], report["p999_ms"]] == [None, None, None]
    assert report["frames_per_second"] == 0
    assert report["megabytes_per_second"] == 0
    assert math.isfinite(report["client_cpu_percent"])


BENCH_ENDINGS = [
    pytest.param(
        close_at_once,
        r"server closed the connection with 2 echoes owed|connection reset",
        id="close-at-once",
    ),
    pytest.param(reset, r"connection reset", id="reset"),
    pytest.param(garbage, r"echo b'\\xde' does not match the frame sent", id="garbage"),
    pytest.param(flood, r"bad echo: longer than the 64-byte frames sent", id="flood"),
    pytest.param(flood_lines, r"echo b'x' does not match the frame sent", id="flood-lines"),
]


@pytest.mark.parametrize(("handler", "message"), BENCH_ENDINGS)
async def test_bench_stops_once_every_connection_has_failed(handler: Handler, message: str) -> None:
    # --duration 600: the run ends long before, as soon as no connection is left.
    async with hostile(handler) as where:
        code, out, err = await run_limited(
            "bench",
            *where,
            *("--conns", "3", "--depth", "2", "--warmup", "0.1", "--duration", "600", "--json"),
            bound=CONNECT_TIMEOUT + 0.1 + SLACK,
        )
    assert code == 1, err
    line = the_error_line(err)
    assert line.startswith("triodaemon: error: 3 errors; the first: connection "), line
    assert re.search(message, line), line
    report = json.loads(out.decode(), parse_constant=reject_constant)
    assert report["errors"] == 3
    assert report["frames"] == 0
    assert report["p50_ms"] is None
    assert report["seconds"] < 600


async def test_bench_table_of_a_run_without_echoes(sock_dir: Path) -> None:
    async with hostile(close_at_once, sock_dir / "c.sock") as where:
        code, out, err = await run_limited(
            "bench", *where, "--warmup", "0", "--duration", "600", bound=CONNECT_TIMEOUT + SLACK
        )
    assert code == 1
    text = out.decode()
    rows = dict(line.split(None, 1) for line in text.splitlines())
    assert rows["frames"] == "0 (0/s)"
    assert rows["throughput"] == "0.00 MB/s each way"
    assert rows["latency"] == "none measured (no echo)"
    assert rows["errors"].startswith("1 (first: connection 0: ")
    assert not re.search(r"\b(nan|inf)\b", text, re.IGNORECASE)
    assert the_error_line(err).startswith("triodaemon: error: connection 0: ")


def test_bench_json_never_holds_nan() -> None:
    result = BenchResult(
        address="tcp://127.0.0.1:1",
        framing="line",
        connections=1,
        depth=1,
        frame_size=64,
        seconds=0.0,
        frames=0,
        p50_ms=math.nan,
        p99_ms=math.inf,
        p999_ms=-math.inf,
        errors=1,
        first_error="connection 0: no echo came back in 5.0s (1 frame in flight)",
        client_cpu_seconds=0.0,
    )
    report = json.loads(result.to_json(), parse_constant=reject_constant)
    assert [report["p50_ms"], report["p99_ms"], report["p999_ms"]] == [None, None, None]
    assert report["frames_per_second"] == 0.0
    assert result.failure == "connection 0: no echo came back in 5.0s (1 frame in flight)"
    assert "nan" not in result.table()
