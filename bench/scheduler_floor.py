"""The floor under a task-per-connection server: what one trip through the scheduler costs.

    python bench/scheduler_floor.py

50 tasks (S2's connection count) each yield N times; the process CPU time per
yield is the least a trio connection task pays per read, before any system call
or any work of its own. Shown for trio's ``checkpoint`` (what triodaemon does once
per read), trio's ``cancel_shielded_checkpoint`` (the bare schedule point), and
asyncio's ``sleep(0)`` for comparison (an asyncio ``Protocol`` pays none of these:
its callbacks run straight from the event loop). Run it pinned to a core
(``taskset -c 0``) for steadier figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import trio

TASKS = 50
YIELDS = 20_000


async def trio_yields(step: Callable[[], Awaitable[None]]) -> float:
    async def task() -> None:
        for _ in range(YIELDS):
            await step()

    start = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(TASKS):
            nursery.start_soon(task)
    return time.process_time() - start


async def asyncio_yields() -> float:
    async def task() -> None:
        for _ in range(YIELDS):
            await asyncio.sleep(0)

    start = time.process_time()
    await asyncio.gather(*(task() for _ in range(TASKS)))
    return time.process_time() - start


def main() -> None:
    results = {
        "trio checkpoint": trio.run(trio_yields, trio.lowlevel.checkpoint),
        "trio cancel_shielded_checkpoint": trio.run(
            trio_yields, trio.lowlevel.cancel_shielded_checkpoint
        ),
        "asyncio sleep(0)": asyncio.run(asyncio_yields()),
    }
    for name, seconds in results.items():
        print(f"{name:32} {seconds / (TASKS * YIELDS) * 1e6:5.2f} us of CPU per yield")


if __name__ == "__main__":
    main()
