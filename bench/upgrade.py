"""Latency of active conversations across upgrades.

    python bench/upgrade.py [--upgrades 5] [--interval 1] [--conns 4] [--workers 1]
                            [--transport unix|tcp] [--json]

Starts ``python -m triodaemon`` (this checkout's) on a Unix socket and a loopback TCP
port with a control socket, and keeps ``--conns`` conversations going: each sends a
64-byte line, waits for its echo, and sends the next (one frame in flight), timing
every round trip. After ``--interval`` seconds of that (the baseline; the first 0.2 s,
connecting and warming up, are not counted), it upgrades the daemon ``--upgrades``
times (``ctl upgrade``: a new process takes every socket and connection over),
``--interval`` seconds apart. It reports the round trips of the baseline, of the
frames sent while an upgrade was under way (from the request until the old process
has exited, plus 100 ms), and of the whole run: their median, p99 and max, and how
long each upgrade took (request to reply).
Every echo is checked; a connection that breaks, or an echo that differs, is an
error (the run then exits 1).

Everything is on loopback or in a temporary directory, bounded in count and time, and
every process it starts (each generation of the daemon) is ended.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from triodaemon import TcpAddress, UnixAddress, connect  # noqa: E402
from triodaemon._control import open_control  # noqa: E402

#: After the old process has exited, how long an upgrade's window goes on.
WINDOW_TAIL = 0.1
#: The first frames of each conversation (connecting, warming up) are not measured.
WARMUP = 0.2
FRAME = b"x" * 63 + b"\n"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class Conversation:
    def __init__(self, address: TcpAddress | UnixAddress) -> None:
        self.address = address
        self.samples: list[tuple[float, float]] = []  # (sent at, round trip)
        self.errors: list[str] = []

    async def run(self, stop: trio.Event) -> None:
        try:
            stream = await connect(self.address)
            async with stream:
                while not stop.is_set() and len(self.samples) < 10_000_000:
                    sent = time.monotonic()
                    await stream.send_all(FRAME)
                    got = b""
                    while len(got) < len(FRAME):
                        data = await stream.receive_some()
                        if not data:
                            raise ConnectionError("the daemon closed the connection")
                        got += data
                    if got != FRAME:
                        raise ValueError(f"echo {got!r}")
                    self.samples.append((sent, time.monotonic() - sent))
        except Exception as exc:
            self.errors.append(f"{self.address}: {type(exc).__name__}: {exc}")


async def wait_ready(stderr: trio.abc.ReceiveStream, count: int) -> list[str]:
    """The addresses of the first ``count`` readiness lines."""
    buffer = b""
    found: list[str] = []
    with trio.fail_after(30):
        while len(found) < count:
            chunk = await stderr.receive_some()
            if not chunk:
                raise RuntimeError(f"the daemon exited before it was ready: {buffer!r}")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode()
                if text.startswith("triodaemon: listening on "):
                    found.append(text.removeprefix("triodaemon: listening on ").split(" (")[0])
    return found


async def drain_stderr(stderr: trio.abc.ReceiveStream) -> None:
    """Read the daemon's log to its end (it would block, writing to a full pipe)."""
    while await stderr.receive_some():
        pass


async def upgrade(control: str) -> tuple[float, dict[str, Any]]:
    client = await open_control(control)
    async with client.stream:
        started = time.monotonic()
        reply = await client.request("upgrade")
        return time.monotonic() - started, reply


async def stats(control: str) -> dict[str, Any]:
    client = await open_control(control)
    async with client.stream:
        result: dict[str, Any] = await client.request("stats")
        return result


def summarize(rtts: list[float]) -> dict[str, float]:
    return {
        "frames": len(rtts),
        "p50_us": percentile(rtts, 0.5) * 1e6,
        "p99_us": percentile(rtts, 0.99) * 1e6,
        "max_us": max(rtts, default=math.nan) * 1e6,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="td-upgrade-")
    sock, control = f"{directory}/echo.sock", f"{directory}/control.sock"
    command = [sys.executable, "-m", "triodaemon", "--sock", sock, "--tcp", "127.0.0.1:0"]
    command += ["--control", control, "--workers", str(args.workers), "--log-level", "warning"]
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    generations: list[int] = []  # pidfds of the processes that took over (not our children)
    try:
        assert process.stderr is not None
        addresses = await wait_ready(process.stderr, 2)
        tcp = next(a for a in addresses if a.startswith("tcp://"))
        host, _, port = tcp.removeprefix("tcp://").rpartition(":")
        address = UnixAddress(sock) if args.transport == "unix" else TcpAddress(host, int(port))
        conversations = [Conversation(address) for _ in range(args.conns)]
        windows: list[tuple[float, float]] = []
        durations: list[float] = []
        stop = trio.Event()
        async with trio.open_nursery() as reading:
            reading.start_soon(drain_stderr, process.stderr)
            async with trio.open_nursery() as nursery:
                for conversation in conversations:
                    nursery.start_soon(conversation.run, stop)
                await trio.sleep(WARMUP)
                baseline_start = time.monotonic()
                await trio.sleep(args.interval)  # the baseline
                baseline_end = time.monotonic()
                for _ in range(args.upgrades):
                    started = time.monotonic()
                    took, reply = await upgrade(control)
                    durations.append(took)
                    # The window ends once the old process has exited (its last work
                    # competes for the cores too), and a little after.
                    old = generations[-1] if generations else None
                    generations.append(os.pidfd_open(reply["pid"]))  # alive: it just took over
                    if old is None:
                        await process.wait()
                    else:
                        with trio.move_on_after(30):
                            await trio.lowlevel.wait_readable(old)
                    windows.append((started, time.monotonic() + WINDOW_TAIL))
                    await trio.sleep(args.interval)
                final = await stats(control)
                stop.set()
            reading.cancel_scope.cancel()
    finally:
        if generations:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(generations[-1], signal.SIGTERM)
        if process.returncode is None and not generations:
            process.kill()
        await process.wait()
        for fd in generations:
            with trio.move_on_after(30):
                await trio.lowlevel.wait_readable(fd)  # it has exited
            os.close(fd)
    samples = [sample for c in conversations for sample in c.samples]
    baseline = [rtt for sent, rtt in samples if baseline_start <= sent < baseline_end]
    during = [rtt for sent, rtt in samples if any(a <= sent <= b for a, b in windows)]
    errors = [error for c in conversations for error in c.errors]
    return {
        "transport": args.transport,
        "workers": args.workers,
        "conns": args.conns,
        "upgrades": args.upgrades,
        "baseline": summarize(baseline),
        "during_upgrades": summarize(during),
        "all": summarize([rtt for sent, rtt in samples if sent >= baseline_start]),
        "upgrade_ms": {
            "p50": percentile(durations, 0.5) * 1e3,
            "max": max(durations, default=math.nan) * 1e3,
        },
        "taken_over_last": final["connections"]["taken_over"],
        "errors": errors,
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        f"upgrades of triodaemon ({result['workers']} worker(s)), {result['conns']} "
        f"lockstep conversations over {result['transport']}, {result['upgrades']} upgrades",
        "",
        "| frames sent | frames | p50 us | p99 us | max us |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, key in (
        ("baseline (no upgrade)", "baseline"),
        ("during an upgrade", "during_upgrades"),
        ("whole run", "all"),
    ):
        s = result[key]
        rows.append(
            f"| {label} | {s['frames']:,} | {s['p50_us']:,.0f} | {s['p99_us']:,.0f} | "
            f"{s['max_us']:,.0f} |"
        )
    rows += [
        "",
        f"upgrade (ctl upgrade, request to reply): p50 {result['upgrade_ms']['p50']:.0f} ms, "
        f"max {result['upgrade_ms']['max']:.0f} ms; connections taken over by the last: "
        f"{result['taken_over_last']}; errors: {len(result['errors'])}",
    ]
    rows += [f"  {error}" for error in result["errors"]]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrades", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between upgrades")
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--transport", choices=("unix", "tcp"), default="unix")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # The samples pile up (a million tuples): the collector's full passes over them
    # would pause every conversation here, the client, and be counted as the daemon's.
    gc.disable()
    result = trio.run(run, args)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
