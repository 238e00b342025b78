"""A rolling restart behind a balancer: what pipelining clients lose.

    python bench/rolling.py [--balancer none|nginx|haproxy] [--clients 20] [--depth 4]
                            [--interval 1.5] [--json]

Starts two daemons (``python -m triodaemon``, this checkout's) on Unix sockets in a
temporary directory and, with ``--balancer``, that balancer on a loopback port in front
of them, from its example configuration (``examples/nginx/triodaemon-balance.conf``,
``examples/haproxy/haproxy.cfg``: the daemons run with ``--proxy-protocol`` behind
HAProxy, which sends the header); ``none`` connects each client straight to one
daemon, the two in turn. ``--clients`` clients each keep ``--depth`` line frames in
flight and check every echo, in order; when the server ends a connection, the
client counts how it ended (the server's EOF, or a reset) and how many of the frames
it sent never came back, and connects again. After ``--interval`` seconds, daemon A
is stopped the way a rolling restart does it (``SIGTERM``: a drain), started again
on the same socket once it has exited, then the same for B, then the run goes on for
``--interval`` more and the clients stop (their own frames in flight are waited for,
and not counted as lost).

Reported: frames sent, echoed and lost (sent on a connection the server ended, and
never echoed); connections the server ended, with its EOF and with a reset;
connections that failed to open or were ended before a frame came back (refused by a
draining daemon, or by the balancer finding no daemon), and the frames sent on those. Every
echo is checked: one that differs is an error (the run then exits 1).

Everything is on loopback or in a temporary directory, bounded in count and time, and
every process it starts is ended.
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from triodaemon import ClientError, TcpAddress, UnixAddress, connect  # noqa: E402

EXAMPLES = ROOT / "examples"
#: How long a client waits for the echoes of its own frames in flight when it stops.
FINISH = 2.0
#: Pause before connecting again after a connection failed to open.
RETRY = 0.01


@attrs.define
class Tally:
    """What the clients saw, all together."""

    sent: int = 0
    echoed: int = 0
    lost: int = 0
    """Frames sent on connections the server ended, never echoed."""
    eof: int = 0
    """Connections the server ended with its EOF (after at least one echo)."""
    reset: int = 0
    """Connections the server (or the balancer) ended with a reset (after an echo)."""
    failed: int = 0
    """Connections refused, or ended before any echo came back."""
    unanswered: int = 0
    """Frames sent on connections ended before any echo came back."""
    errors: list[str] = attrs.Factory(list)


class Client:
    """One client: connections one after another, ``depth`` frames in flight on each."""

    def __init__(
        self, number: int, addresses: Sequence[TcpAddress | UnixAddress], depth: int
    ) -> None:
        self.number = number
        self.addresses = addresses
        self.depth = depth
        self.connections = 0

    async def run(self, tally: Tally, stop: trio.Event) -> None:
        while not stop.is_set():
            address = self.addresses[(self.number + self.connections) % len(self.addresses)]
            self.connections += 1
            try:
                stream = await connect(address)
            except ClientError:
                tally.failed += 1
                await trio.sleep(RETRY)
                continue
            async with stream:
                await self._converse(stream, tally, stop)

    async def _converse(self, stream: trio.SocketStream, tally: Tally, stop: trio.Event) -> None:
        room = trio.Semaphore(self.depth)
        sent: list[bytes] = []
        echoed = 0
        ended = trio.Event()

        async def write() -> None:
            i = 0
            while not stop.is_set() and not ended.is_set():
                await room.acquire()
                frame = b"client %d conn %d frame %d\n" % (self.number, self.connections, i)
                sent.append(frame)  # (before: its echo may come before send_all returns)
                tally.sent += 1
                i += 1
                try:
                    await stream.send_all(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # (the reader sees how it ended)

        how = "ours"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            buffer = b""
            finish_at = math.inf
            while True:
                if stop.is_set():
                    if echoed == len(sent):
                        break
                    finish_at = min(finish_at, trio.current_time() + FINISH)
                    if trio.current_time() >= finish_at:
                        tally.errors.append(f"client {self.number}: its own frames not echoed")
                        break
                data = b""
                with trio.move_on_after(0.05) as waited:
                    try:
                        data = await stream.receive_some()
                    except trio.BrokenResourceError as exc:
                        cause = exc.__cause__
                        reset = isinstance(cause, OSError) and cause.errno == errno.ECONNRESET
                        how = "reset" if reset else f"broken: {cause!r}"
                        break
                if waited.cancelled_caught:
                    continue
                if not data:
                    how = "eof"
                    break
                *lines, buffer = (buffer + data).split(b"\n")
                for line in lines:
                    if echoed >= len(sent) or line + b"\n" != sent[echoed]:
                        tally.errors.append(f"client {self.number}: echo {line!r}")
                        how = "error"
                        break
                    echoed += 1
                    tally.echoed += 1
                    room.release()
                if how == "error":
                    break
            ended.set()
            nursery.cancel_scope.cancel()
        if how == "ours":
            return
        if echoed == 0:
            tally.failed += 1  # (refused by the balancer finding no daemon, say)
            tally.unanswered += len(sent)
            return
        tally.lost += len(sent) - echoed
        if how == "eof":
            tally.eof += 1
        elif how == "reset":
            tally.reset += 1
        elif how.startswith("broken"):
            tally.errors.append(f"client {self.number}: {how}")


async def wait_ready(process: trio.Process) -> None:
    """Until the daemon prints its readiness line (then its log is read to the end)."""
    assert process.stderr is not None
    buffer = b""
    with trio.fail_after(30):
        while b"triodaemon: listening on" not in buffer:
            chunk = await process.stderr.receive_some()
            if not chunk:
                raise RuntimeError(f"a daemon exited before it was ready: {buffer.decode()}")
            buffer += chunk


async def read_to_end(stream: trio.abc.ReceiveStream | None) -> None:
    if stream is not None:
        while await stream.receive_some():
            pass


class Daemons:
    """The two daemons, started and restarted in ``nursery`` (which reads their logs)."""

    def __init__(
        self,
        directory: Path,
        proxy_protocol: bool,
        nursery: trio.Nursery,
        agents: dict[str, int] | None = None,
        drain_delay: float = 0,
    ) -> None:
        self.directory = directory
        self.proxy_protocol = proxy_protocol
        self.nursery = nursery
        self.agents = agents or {}
        self.drain_delay = drain_delay
        self.processes: dict[str, trio.Process] = {}

    def socket(self, name: str) -> Path:
        return self.directory / f"echo-{name}.sock"

    async def start(self, name: str) -> None:
        command = [sys.executable, "-m", "triodaemon", "--sock", str(self.socket(name))]
        command += ["--sock-mode", "0666", "--log-level", "info"]  # (the balancer's user)
        if self.proxy_protocol:
            command.append("--proxy-protocol")
        if name in self.agents:
            command += ["--agent", f"127.0.0.1:{self.agents[name]}"]
            command += ["--drain-delay", str(self.drain_delay)]
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.processes[name] = process
        await wait_ready(process)
        self.nursery.start_soon(read_to_end, process.stderr)

    async def restart(self, name: str) -> None:
        """A rolling restart's step: SIGTERM (a drain), then a new one once it has exited."""
        process = self.processes[name]
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()
        await self.start(name)

    async def stop(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def nginx_config(directory: Path, port: int) -> Path:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=True).stderr
    module = ""
    if "--with-stream=dynamic" in built:
        module = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
    stream = (EXAMPLES / "nginx" / "triodaemon-balance.conf").read_text()
    stream = stream.replace("/run/triodaemon/", f"{directory}/").replace(
        "127.0.0.1:7000", f"127.0.0.1:{port}"
    )
    (directory / "stream.conf").write_text(stream)
    config = directory / "nginx.conf"
    config.write_text(
        f"{module}\ndaemon off;\npid {directory}/nginx.pid;\nerror_log stderr warn;\n"
        f"events {{}}\ninclude {directory}/stream.conf;\n"
    )
    return config


def haproxy_config(directory: Path, port: int, agents: dict[str, int] | None) -> Path:
    """The example, its addresses replaced; without its agent checks if ``agents`` is None."""
    text = (EXAMPLES / "haproxy" / "haproxy.cfg").read_text()
    text = (
        text.replace("/run/triodaemon/", f"{directory}/")
        .replace("/run/haproxy/", f"{directory}/")
        .replace("127.0.0.1:7000", f"127.0.0.1:{port}")
        .replace("log /dev/log local0", "log stderr format short local0 warning")
    )
    for name, example in (("a", 7101), ("b", 7102)):
        mine = f" agent-port {agents[name]}" if agents is not None else ""
        text = text.replace(f" agent-port {example}", mine)
    lines = [line for line in text.splitlines() if line.split()[:1] not in (["user"], ["group"])]
    if agents is None:
        lines = [line for line in lines if "agent-check" not in line]
    config = directory / "haproxy.cfg"
    config.write_text("\n".join(lines) + "\n")
    return config


async def balancer(
    kind: str, directory: Path, nursery: trio.Nursery, agents: dict[str, int] | None
) -> tuple[trio.Process, TcpAddress]:
    port = free_port()
    if kind == "nginx":
        config = nginx_config(directory, port)
        command = [
            shutil.which("nginx") or "/usr/sbin/nginx",
            "-p",
            str(directory),
            "-c",
            str(config),
        ]
    else:
        config = haproxy_config(directory, port, agents)
        command = [shutil.which("haproxy") or "/usr/sbin/haproxy", "-W", "-db", "-f", str(config)]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    nursery.start_soon(read_to_end, process.stderr)
    address = TcpAddress("127.0.0.1", port)
    with trio.fail_after(30):
        while True:  # until it accepts (its workers then serve what waits in the backlog)
            try:
                stream = await connect(address)
            except ClientError:
                if process.returncode is not None or process.poll() is not None:
                    raise RuntimeError(f"{kind} exited at its start") from None
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return process, address


async def run(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="td-roll-", dir="/tmp"))
    os.chmod(directory, 0o711)
    tally = Tally()
    front: trio.Process | None = None
    retries: dict[str, int] | None = None
    try:
        async with trio.open_nursery() as logs:
            agents = {"a": free_port(), "b": free_port()} if args.drain_delay else None
            daemons = Daemons(directory, args.balancer == "haproxy", logs, agents, args.drain_delay)
            try:
                for name in ("a", "b"):
                    await daemons.start(name)
                addresses: list[TcpAddress | UnixAddress]
                if args.balancer == "none":
                    addresses = [UnixAddress(str(daemons.socket(n))) for n in ("a", "b")]
                else:
                    front, address = await balancer(args.balancer, directory, logs, agents)
                    addresses = [address]
                clients = [Client(n, addresses, args.depth) for n in range(args.clients)]
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    for client in clients:
                        nursery.start_soon(client.run, tally, stop)
                    await trio.sleep(args.interval)
                    for name in ("a", "b"):
                        await daemons.restart(name)
                        await trio.sleep(args.interval)
                    stop.set()
                if args.balancer == "haproxy":
                    retries = await haproxy_retries(directory / "admin.sock")
            finally:
                if front is not None and front.returncode is None:
                    front.send_signal(signal.SIGTERM)
                    with trio.move_on_after(10):
                        await front.wait()
                    if front.returncode is None:
                        front.kill()
                await daemons.stop()
                logs.cancel_scope.cancel()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "balancer": args.balancer,
        "clients": args.clients,
        "depth": args.depth,
        "sent": tally.sent,
        "echoed": tally.echoed,
        "lost": tally.lost,
        "server_eof": tally.eof,
        "server_reset": tally.reset,
        "failed": tally.failed,
        "unanswered": tally.unanswered,
        "drain_delay": args.drain_delay,
        "haproxy_retries": retries,
        "errors": tally.errors[:10],
    }


async def haproxy_retries(stats: Path) -> dict[str, int]:
    """HAProxy's count of connects to a daemon that failed and were tried again
    (``wretr``), or sent to the other daemon (``wredis``), for both daemons."""
    stream = await connect(UnixAddress(str(stats)))
    async with stream:
        await stream.send_all(b"show stat\n")
        reply = b""
        while chunk := await stream.receive_some():
            reply += chunk
    rows = csv.DictReader(reply.decode().removeprefix("# ").splitlines())
    totals = {"retried": 0, "redispatched": 0}
    for row in rows:
        if row["pxname"] == "triodaemons" and row["svname"] in ("a", "b"):
            totals["retried"] += int(row["wretr"] or 0)
            totals["redispatched"] += int(row["wredis"] or 0)
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--balancer", choices=("none", "nginx", "haproxy"), default="none")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.5)
    parser.add_argument(
        "--drain-delay",
        type=float,
        default=0,
        help="run the daemons with --agent and this --drain-delay (HAProxy's agent check)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = trio.run(run, args)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['balancer']}: {result['sent']:,} frames sent, {result['echoed']:,} echoed, "
            f"{result['lost']:,} lost; connections the server ended: {result['server_eof']} "
            f"with EOF, {result['server_reset']} reset; {result['failed']} failed to open "
            f"({result['unanswered']:,} frames sent on them)"
            + (
                f"; HAProxy retried {result['haproxy_retries']['retried']} connects, "
                f"redispatched {result['haproxy_retries']['redispatched']}"
                if result["haproxy_retries"] is not None
                else ""
            )
        )
        for error in result["errors"]:
            print("error:", error)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
