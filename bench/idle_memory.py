"""Where an idle triodaemon connection's memory goes, by allocation site (tracemalloc).

    python bench/idle_memory.py [--conns 2000] [--top 25]

Runs a daemon in-process on a Unix socket, opens ``--conns`` connections that each
do one round trip and then stay idle, and prints the Python memory allocated per
connection by source line (the client sockets of this process are included, a few
hundred bytes). Every connection waits in the daemon's readiness backend (epoll by
default; ``TRIODAEMON_READINESS=portable`` for the other); S5 of the suite measures the
same from outside, as resident memory.
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import socket
import tempfile
import tracemalloc

import trio
import trio.testing

from triodaemon import Daemon, DaemonConfig, UnixAddress


async def measure(conns: int, top: int) -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="td-idle-"), "idle.sock")
    config = DaemonConfig([UnixAddress(path)], max_connections=conns + 10, idle_timeout=0)
    daemon = Daemon(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        clients = []
        before = None
        for index in range(conns + 1):
            if index == 1:  # after the first: imports and first-use caches are not per connection
                gc.collect()
                tracemalloc.start(10)
                before = tracemalloc.take_snapshot()
            client = trio.socket.socket(socket.AF_UNIX)
            await client.connect(path)
            await client.send(b"hello\n")
            if await client.recv(100) != b"hello\n":
                raise RuntimeError("no echo")
            clients.append(client)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        assert before is not None
        stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
        total = sum(stat.size_diff for stat in stats)
        print(f"{total / conns:,.0f} bytes per idle connection, by allocation site:")
        for stat in stats[:top]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1]
            if "/triodaemon/" in where:
                where = "triodaemon/" + where.rsplit("/triodaemon/", 1)[1]
            code = linecache.getline(frame.filename, frame.lineno).strip()[:60]
            print(f"{stat.size_diff / conns:7.0f} B  {where}:{frame.lineno}  {code}")
        for client in clients:
            client.close()
        daemon.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    trio.run(measure, args.conns, args.top)


if __name__ == "__main__":
    main()
