"""Signals against the real command line: none a user can send by accident ends the
daemon without a drain, at any moment from the first instant of startup.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

import triodaemon
from triodaemon import connect
from triodaemon._signals import (
    HANDLED_SIGNALS,
    IGNORED_SIGNALS,
    STOP_SIGNALS,
    signal_name,
)
from triodaemon.testing import echo_frames

from .conftest import DaemonProcess, SpawnFn, read_until_eof

TEST_TIMEOUT = 60


async def start(spawn: SpawnFn, sock_dir: Path, *args: str) -> DaemonProcess:
    daemon = await spawn("--sock", str(sock_dir / "echo.sock"), *args)
    await daemon.wait_ready(1)
    return daemon


def test_every_catchable_signal_that_would_end_the_process_is_handled() -> None:
    # The signals whose default action ends the process (signal(7)), less the
    # ones that cannot be caught and the ones that report a fault of our own.
    terminating = {
        "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGTERM",
        "SIGSTKFLT", "SIGXCPU", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR",
    }  # fmt: skip
    expected = {getattr(signal, name) for name in terminating if hasattr(signal, name)}
    expected |= set(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    assert set(HANDLED_SIGNALS) == expected
    assert len(HANDLED_SIGNALS) == len(set(HANDLED_SIGNALS))


async def test_stray_signals_are_logged_and_ignored_under_load(
    spawn: SpawnFn, sock_dir: Path
) -> None:
    """SIGUSR2 and every other stray signal: one line each, no frame lost. (SIGHUP is
    an upgrade: tests/test_upgrade.py.)"""
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir)
        address = daemon.addresses[0]
        sent = [b"frame %d" % i for i in range(2000)]
        async with trio.open_nursery() as nursery:
            echoed: list[bytes] = []

            async def load() -> None:
                echoed.extend(await echo_frames(address, sent))

            nursery.start_soon(load)
            for signum in IGNORED_SIGNALS:
                daemon.signal(signum)
                await daemon.wait_for_line(f"received {signal_name(signum)}: ignored")
        assert echoed == sent
        assert await echo_frames(address, [b"still here"]) == [b"still here"]
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0
        assert not (sock_dir / "echo.sock").exists()
        assert "Traceback" not in daemon.stderr


async def test_sigusr1_logs_one_line_of_stats(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir, "--log-level", "debug")
        address = daemon.addresses[0]
        assert await echo_frames(address, [b"abc", b"defg"]) == [b"abc", b"defg"]
        await daemon.wait_for_line("conn 1 from ")  # accepted ...
        await daemon.wait_for_line(": closed by peer")  # ... and closed on the daemon's side
        held = await connect(address)  # one connection open while asking
        await held.send_all(b"x\n")
        assert await held.receive_some() == b"x\n"
        daemon.signal(signal.SIGUSR1)
        line = await daemon.wait_for_line("stats: ")
        assert line.endswith(
            "stats: 1 connection open, 2 accepted; 3 frames; 11 bytes in, 11 out; errors: "
            "0 framing, 0 incomplete, 0 resets, 0 idle timeouts, 0 frame timeouts, 0 handler, "
            "0 accept, 0 proxy header, 0 proxy untrusted, 0 internal; 0 waits for buffer room"
        )
        await held.aclose()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_sigxcpu_drains_and_repeats_do_not_abort(spawn: SpawnFn, sock_dir: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        daemon = await start(spawn, sock_dir, "--framing", "length", "--drain-timeout", "30")
        stream = await connect(daemon.addresses[0])
        wire = b"\x00\x00\x00\x05hello"
        await stream.send_all(wire[:6])  # a frame in progress
        await daemon.wait_until_received(6)  # ... when the drain comes
        daemon.signal(signal.SIGXCPU)
        await daemon.wait_for_line("received SIGXCPU (the CPU time limit was reached): draining")
        daemon.signal(signal.SIGXCPU)  # the kernel repeats it every CPU-second
        await daemon.wait_for_line("received SIGXCPU during the drain: still draining")
        await stream.send_all(wire[6:])
        assert await read_until_eof(stream) == wire
        await stream.aclose()
        assert await daemon.wait() == 0
        await daemon.wait_for_line("1 connection drained, 0 aborted")


async def test_a_stop_signal_during_startup_ends_it_with_one_line(sock_dir: Path) -> None:
    """Blocked from the first instant, delivered once trio receives signals: one line."""
    with trio.fail_after(TEST_TIMEOUT):
        for signum in STOP_SIGNALS:
            # Sent before the process runs any code, so it arrives during startup
            # whatever the machine's speed: the child starts with it pending.
            result = await trio.run_process(
                [sys.executable, "-c", _PENDING_AT_EXEC, str(signum), str(sock_dir / "e.sock")],
                capture_stderr=True,
                check=False,
            )
            name = signal_name(signum)
            assert result.returncode == 128 + signum, result.stderr
            assert result.stderr.decode().splitlines() == [
                f"triodaemon: {name} while starting; stopped before serving"
            ]
            assert list(sock_dir.iterdir()) == []


async def test_a_stop_signal_inherited_as_ignored_still_stops_the_start(sock_dir: Path) -> None:
    """``triodaemon &`` from a script starts with SIGINT ignored; ``kill -INT`` must still work."""
    with trio.fail_after(TEST_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-c", _IGNORED_THEN_PENDING, str(sock_dir / "e.sock")],
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 130, result.stderr
        assert result.stderr.decode().splitlines() == [
            "triodaemon: SIGINT while starting; stopped before serving"
        ]


#: As a shell starts a background job: SIGINT ignored. Then a ``kill -INT`` lands
#: during startup, just after the entry point has held the signals.
_IGNORED_THEN_PENDING = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
from triodaemon import _signals
hold = _signals.hold

def hold_then_kill(mask=None):
    hold(mask)
    os.kill(os.getpid(), signal.SIGINT)

_signals.hold = hold_then_kill
sys.argv = ["triodaemon", "--sock", sys.argv[1]]
from triodaemon.__main__ import main_entry
main_entry()
"""


#: Run the daemon with one signal already pending: block it, raise it, exec.
_PENDING_AT_EXEC = """
import os, signal, sys
signum = int(sys.argv[1])
signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
os.kill(os.getpid(), signum)
os.execv(sys.executable, [sys.executable, "-m", "triodaemon", "--sock", sys.argv[2]])
"""

#: Where triodaemon's own modules are: a traceback may show none of them but
#: ``__init__.py`` (it runs before the entry point, and imports nothing).
_PACKAGE = Path(triodaemon.__file__).parent


def _frames_of_ours(traceback: str) -> list[str]:
    files = re.findall(r'File "([^"]*)"', traceback)
    return [
        file for file in files if Path(file).parent == _PACKAGE and Path(file).name != "__init__.py"
    ]


#: What Python itself prints when a Ctrl-C lands in its own start, before any code
#: of ours runs: importing site, runpy, an import lock's callback (which swallows
#: it: the start goes on), the launcher pip writes, an editable install's .pth.
_PYTHONS_OWN = (
    "Fatal Python error: init_import_site",
    "Could not import runpy module",
    "Exception ignored in",
    "Failed checking if argv[0] is an import path entry",
    "Error processing line",
)


async def _start_time(command: list[str], path: Path) -> float:
    """Seconds from spawning the daemon to its readiness line; then stop it."""
    started = trio.current_time()
    process = await trio.lowlevel.open_process(
        [*command, "--sock", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = b""
    while b"listening on" not in seen:
        chunk = await process.stderr.receive_some()
        assert chunk, seen
        seen += chunk
    elapsed = trio.current_time() - started
    process.send_signal(signal.SIGTERM)
    await read_until_eof(process.stderr)
    assert await process.wait() == 0
    return elapsed


async def test_sigint_at_any_moment_of_startup(sock_dir: Path) -> None:
    """Ctrl-C at 40 moments from process start to serving: never a traceback of ours."""
    script = Path(sys.executable).parent / "triodaemon"  # the console script pip made
    commands = [[sys.executable, "-m", "triodaemon"]] + ([[str(script)]] if script.exists() else [])
    outcomes: dict[str, int] = {}
    with trio.fail_after(8 * TEST_TIMEOUT):
        # How long a start takes on this machine and Python (the slowest of three),
        # so that the moments span it, and a little past readiness.
        slowest = max(
            [await _start_time(commands[i % len(commands)], sock_dir / "t.sock") for i in range(3)]
        )
        step = 1.4 * slowest / 40
        retried: dict[int, bool] = {}
        moments = list(range(40))
        while moments:
            i = moments.pop(0)
            path = sock_dir / f"e{i}.sock"
            process = await trio.lowlevel.open_process(
                [*commands[i % len(commands)], "--sock", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            assert process.stderr is not None
            try:
                await trio.sleep(i * step)  # the moment under test, not a wait for an event
                process.send_signal(signal.SIGINT)
                lost = True
                with trio.move_on_after(15):
                    stderr = await read_until_eof(process.stderr)
                    code = await process.wait()
                    lost = False
                if lost:  # the daemon went on serving: the signal never reached it
                    process.send_signal(signal.SIGTERM)
                    stderr = await read_until_eof(process.stderr)
                    code = await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()
            text = stderr.decode()
            lines = text.splitlines()
            if code == -signal.SIGINT and not lines:
                outcome = "before the interpreter handled signals"
            elif (
                "Traceback" in text
                or any(own in text for own in _PYTHONS_OWN)
                # The interpreter's own report of a KeyboardInterrupt raised with no
                # Python frame on the stack (seen once in ~400 runs on 3.10): outside
                # any code of ours, which never prints it bare.
                or text.strip() == "KeyboardInterrupt"
            ):
                # Only the interpreter's own start may print one, or lose the signal,
                # before any code of ours has run.
                assert _frames_of_ours(text) == [], text
                outcome = "in Python's own start"
            elif lost:
                # Seen once in CI (Python 3.13, 13 ms after the start, under load),
                # never in 350 tries of the same moments by hand, idle and loaded:
                # the same moment is tried again, and a second loss fails the test.
                if retried.get(i):
                    raise AssertionError(f"SIGINT at {i * step:.3f}s was lost twice:\n{text}")
                retried[i] = True
                moments.append(i)
                outcome = "lost once, then tried again"
            elif code == 128 + signal.SIGINT:
                assert lines == ["triodaemon: SIGINT while starting; stopped before serving"]
                outcome = "stopped while starting"
            else:
                assert code == 0, text
                assert "listening on" in text, text
                assert "shutdown complete" in lines[-1], text
                outcome = "drained after starting"
            assert not path.exists(), (outcome, text)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # The moments must have covered both sides of readiness, or the test tested little.
    assert outcomes.get("stopped while starting", 0) >= 3, outcomes
    assert outcomes.get("drained after starting", 0) >= 3, outcomes
    assert [p for p in sock_dir.iterdir()] == []


def python_prints(code: str) -> str:
    """What a fresh interpreter running ``code`` prints."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, timeout=60
    )
    return result.stdout.decode().strip()


def test_serving_imports_neither_the_harness_nor_pytest_nor_hypothesis() -> None:
    code = (
        "import sys\n"
        "from triodaemon._cli import serve\n"
        "serve._serve_parser()\n"
        "from triodaemon import Daemon, DaemonConfig, UnixAddress\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest', "
        "'hypothesis') or m.startswith(('trio.testing', 'triodaemon.testing'))]\n"
        "print(sorted(heavy))\n"
    )
    assert python_prints(code) == "[]"


def test_the_lazy_names_and_the_type_checkers_names_agree() -> None:
    """Each name the type checkers see in ``__init__`` loads from the same module at run time."""
    tree = ast.parse((_PACKAGE / "__init__.py").read_text())
    [block] = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        if node.test.id == "TYPE_CHECKING"
    ]
    seen = {
        alias.asname or alias.name: f".{node.module}"
        for node in ast.walk(block)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        for alias in node.names
    }
    assert seen == triodaemon._EXPORTS


def test_the_package_names_load_on_first_use() -> None:
    code = (
        "import sys, triodaemon\n"
        "assert 'trio' not in sys.modules, 'importing the package imported trio'\n"
        "for name in triodaemon.__all__:\n"
        "    getattr(triodaemon, name)\n"
        "from triodaemon import Daemon\n"
        "assert Daemon is triodaemon._daemon.Daemon\n"
        "try:\n"
        "    triodaemon.NoSuchName\n"
        "except AttributeError as exc:\n"
        "    print(exc)\n"
    )
    assert python_prints(code) == "module 'triodaemon' has no attribute 'NoSuchName'"


async def _interrupt_client(path: str, *options: str, stdin: int | None) -> bytes:
    """Start ``triodaemon client`` on ``path``; once its first line arrives, Ctrl-C it."""
    with trio.socket.socket(socket.AF_UNIX) as server:
        await server.bind(path)
        server.listen()
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "triodaemon", "client", "--sock", path, *options],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert process.stderr is not None
        conn, _ = await server.accept()
        with conn:
            assert await conn.recv(100) == b"hi\n"  # now it waits: for a reply, or for stdin
            process.send_signal(signal.SIGINT)
            stderr = await read_until_eof(process.stderr)
            assert await process.wait() == 130
        return stderr


async def test_ctrl_c_in_a_client_command_is_one_line(sock_dir: Path) -> None:
    # Many times, so that the interrupt lands in different places: none of them
    # may leave a warning (a coroutine created but never awaited) behind.
    with trio.fail_after(TEST_TIMEOUT):
        for i in range(10):
            path = str(sock_dir / f"mute{i}.sock")
            stderr = await _interrupt_client(path, "--send", "hi", stdin=subprocess.DEVNULL)
            assert stderr.decode().splitlines() == ["triodaemon: interrupted"]


async def test_ctrl_c_while_a_client_waits_for_stdin_is_one_line(sock_dir: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"hi\n")  # and the pipe stays open: the next line never comes
        with trio.fail_after(TEST_TIMEOUT):
            stderr = await _interrupt_client(str(sock_dir / "wait.sock"), stdin=read_end)
        assert stderr.decode().splitlines() == ["triodaemon: interrupted"]
    finally:
        os.close(read_end)
        os.close(write_end)


#: Run the rest of the command line with SIGINT ignored, as ``cmd &`` in a script does.
IGNORING_SIGINT = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]
CLIENT = [sys.executable, "-m", "triodaemon", "client"]


def _ignored_signals(pid: int) -> int:
    """The mask of signals process ``pid`` ignores (SigIgn in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigIgn line")


async def test_a_client_command_keeps_sigint_ignored_as_inherited(sock_dir: Path) -> None:
    """``triodaemon client ... &`` in a script starts with SIGINT ignored: Ctrl-C
    on the terminal must not stop it, as it would not stop any other program."""
    path = str(sock_dir / "bg.sock")
    with trio.socket.socket(socket.AF_UNIX) as server, trio.fail_after(TEST_TIMEOUT):
        await server.bind(path)
        server.listen()
        process = await trio.lowlevel.open_process(
            [*IGNORING_SIGINT, *CLIENT, "--sock", path, "--send", "hi"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        conn, _ = await server.accept()
        with conn:
            assert await conn.recv(100) == b"hi\n"  # waiting for the reply now
            assert _ignored_signals(process.pid) & (1 << (signal.SIGINT - 1))
            process.send_signal(signal.SIGINT)  # dropped by the kernel
            await conn.send(b"hi\n")
            assert await read_until_eof(process.stdout) == b"hi\n"
        assert await process.wait() == 0
