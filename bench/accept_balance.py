"""How the kernel spreads connections over worker processes: one shared listening
socket against one ``SO_REUSEPORT`` socket per worker.

    python bench/accept_balance.py [--workers 2] [--connections 1000]

Each worker is a small process that waits in epoll (as a triodaemon worker does,
through trio) and accepts without blocking; for each connection it writes its
number and closes. Three measurements, for each way:

- **one at a time**: connections made one after another; how many each worker took;
- **bursts**: 50 connections opened at once, 20 times (when work arrives together);
- **a worker that exits**: worker 1 is stopped (SIGSTOP, as a busy or dying worker
  is slow to accept), 200 connections are made, then worker 1 is killed: how many
  of them were served by another worker, and how many were lost (reset, or never
  answered within 2 s).

The numbers decide how ``--workers`` shares its sockets (docs/cli.md#worker-processes).
Everything is on loopback, bounded in count and time, and every process it starts
is ended.
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import signal
import socket
import subprocess
import sys
import time

BURST = 50
BURSTS = 20
QUEUED = 200
ANSWER_TIMEOUT = 2.0


def serve(number: int, fd: int | None, port: int) -> None:
    """A worker: accept forever, answer each connection with our number, close."""
    if fd is not None:
        listener = socket.socket(fileno=fd)
    else:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1024)
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener, select.EPOLLIN)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        poller.poll()
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            except OSError:
                continue
            conn.sendall(b"%d" % number)
            conn.close()


def start_workers(
    mode: str, count: int
) -> tuple[list[subprocess.Popen[bytes]], int, socket.socket]:
    """Workers sharing one socket (``shared``) or each with its own (``reuseport``)."""
    held = socket.socket()
    if mode == "reuseport":
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    if mode == "shared":
        held.listen(1024)
    # (For reuseport the bound, unlistened socket only reserves the port.)
    workers = []
    for number in range(1, count + 1):
        fd = str(held.fileno()) if mode == "shared" else "-"
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(number), fd, str(port)],
            stdout=subprocess.PIPE,
            pass_fds=(held.fileno(),) if mode == "shared" else (),
        )
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        workers.append(process)
    return workers, port, held


def ask(port: int) -> str:
    """Connect, read which worker answered: its number, or ``lost``."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as conn:
        try:
            return conn.recv(16).decode() or "lost"
        except OSError:
            return "lost"


def burst(port: int) -> list[str]:
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(BURST)]
    answers = []
    for conn in conns:
        conn.settimeout(ANSWER_TIMEOUT)
        try:
            answers.append(conn.recv(16).decode() or "lost")
        except OSError:
            answers.append("lost")
        conn.close()
    return answers


def exiting_worker(workers: list[subprocess.Popen[bytes]], port: int) -> collections.Counter[str]:
    os.kill(workers[0].pid, signal.SIGSTOP)
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(QUEUED)]
    workers[0].kill()
    os.kill(workers[0].pid, signal.SIGCONT)
    workers[0].wait()
    answers: collections.Counter[str] = collections.Counter()
    for conn in conns:
        conn.settimeout(ANSWER_TIMEOUT)
        try:
            answers[conn.recv(16).decode() or "lost"] += 1
        except OSError:
            answers["lost"] += 1
        conn.close()
    return answers


def spread(counter: collections.Counter[str], count: int) -> str:
    shares = [counter.get(str(n), 0) for n in range(1, count + 1)]
    total = sum(shares) or 1
    text = " / ".join(f"{100 * share / total:.0f}%" for share in shares)
    lost = counter.get("lost", 0)
    return text + (f", {lost} lost" if lost else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        number, fd, port = args.serve
        serve(int(number), None if fd == "-" else int(fd), int(port))
        return
    print(f"{args.workers} workers; share of connections per worker")
    print("| sockets | one at a time | bursts of 50 | worker 1 exits with 200 queued |")
    print("| --- | --- | --- | --- |")
    took = 0.0
    for mode in ("shared", "reuseport"):
        workers, port, held = start_workers(mode, args.workers)
        try:
            started = time.monotonic()
            one = collections.Counter(ask(port) for _ in range(args.connections))
            bursts: collections.Counter[str] = collections.Counter()
            for _ in range(BURSTS):
                bursts.update(burst(port))
            exits = exiting_worker(workers, port)
            took += time.monotonic() - started
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
            held.close()
        after = f"served: {spread(exits, args.workers)}"
        print(
            f"| {mode} | {spread(one, args.workers)} | {spread(bursts, args.workers)} | {after} |"
        )
    print(f"({args.connections} one at a time, {BURSTS} bursts, {QUEUED} queued; {took:.1f}s)")


if __name__ == "__main__":
    main()
