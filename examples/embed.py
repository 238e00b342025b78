"""Embed the daemon in your own trio program, with your own frame handler.

    python examples/embed.py --sock /tmp/counter.sock
    printf 'incr apples\\nincr apples\\nget apples\\n' | nc -U -q1 /tmp/counter.sock

A tiny counter service: ``incr NAME`` adds one and replies with the new value,
``get NAME`` replies with the value. The daemon's machinery (listeners, framing,
limits, drain) is unchanged; only the per-frame behaviour is ours. SIGTERM or
Ctrl-C drains it, as with the triodaemon command.
"""

from __future__ import annotations

import argparse
import collections
import signal

import trio

import triodaemon

counters: collections.Counter[str] = collections.Counter()


async def handle(frame: bytes, conn: triodaemon.ConnectionInfo) -> bytes:
    command, _, name = frame.decode(errors="replace").partition(" ")
    if command == "incr" and name:
        counters[name] += 1
        return b"%d" % counters[name]
    if command == "get" and name:
        return b"%d" % counters[name]
    return b"error: expected 'incr NAME' or 'get NAME'"


async def main(path: str) -> None:
    config = triodaemon.DaemonConfig(
        [triodaemon.UnixAddress(path)],
        triodaemon.Framing(max_frame=4096),
        drain_timeout=5,
    )
    daemon = triodaemon.Daemon(config, handler=handle)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def serve(*, task_status: trio.TaskStatus[object]) -> None:
                summary = await daemon.serve(task_status=task_status)
                print(f"stopped: {summary.drained} drained, {summary.aborted} aborted", flush=True)
                nursery.cancel_scope.cancel()

            addresses = await nursery.start(serve)
            print("counter service listening on", *addresses, flush=True)
            async for _ in signals:
                daemon.drain()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sock", required=True, help="Unix socket path")
    trio.run(main, parser.parse_args().sock)
