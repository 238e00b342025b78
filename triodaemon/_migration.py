"""The connections of one handover, as they move from this daemon to another process.

Strategy: each connection asked to go (:meth:`Migration.expect`) calls the hook
once it owes its client nothing, and waits there for the verdict on its batch;
the daemon takes ready connections in batches (:meth:`Migration.next_batch`),
sends them, and settles each batch: handed, or carry on here. Whatever is not
handed when the handover ends carries on here (:meth:`Migration.withdraw`).
"""

from __future__ import annotations

from typing import Any

import trio

from ._connection import Connection
from ._handover import BATCH_BYTES, BATCH_CONNECTIONS


class Migration:
    """The connections of one handover: who is still to go, who is ready to, and
    the verdict each one waits for (handed, or carry on here)."""

    def __init__(self) -> None:
        self.waiting: set[Connection] = set()
        """Connections not yet handed that are still open."""
        self._ready: list[Connection] = []  # at a frame boundary, replies sent
        self._verdicts: dict[Connection, tuple[trio.Event, list[bool]]] = {}
        self._changed = trio.Event()

    def expect(self, connection: Connection) -> None:
        self.waiting.add(connection)
        connection.hand_over(self._hook)

    def ended(self, connection: Connection) -> None:
        self.waiting.discard(connection)
        self._changed.set()

    async def _hook(self, connection: Any) -> bool:
        """Called by a connection that can go now: wait for the verdict on its batch."""
        verdict: list[bool] = []
        done = trio.Event()
        self._verdicts[connection] = (done, verdict)
        self._ready.append(connection)
        self._changed.set()
        try:
            await done.wait()
        finally:
            self._verdicts.pop(connection, None)
            if connection in self._ready:
                self._ready.remove(connection)
        return bool(verdict and verdict[0])

    async def next_batch(self) -> list[Connection]:
        """The connections ready to go, up to one batch; empty if one ended instead."""
        if not self._ready:
            self._changed = trio.Event()
            await self._changed.wait()
        # A pass more: connections woken with these (most often) get ready too.
        await trio.lowlevel.checkpoint()
        batch: list[Connection] = []
        size = 0
        for connection in self._ready:
            if len(batch) == BATCH_CONNECTIONS or (batch and size > BATCH_BYTES):
                break
            batch.append(connection)
            size += connection.decoder.buffered
        del self._ready[: len(batch)]
        return batch

    def settle(self, batch: list[Connection], *, handed: bool) -> None:
        for connection in batch:
            self.waiting.discard(connection)
            entry = self._verdicts.get(connection)
            if entry is not None:
                entry[1].append(handed)
                entry[0].set()

    def withdraw(self) -> None:
        """The handover is over: every connection not handed carries on here."""
        for connection in self.waiting:
            connection.hand_over(None)
        for done, verdict in self._verdicts.values():
            verdict.append(False)
            done.set()
        self.waiting.clear()
        self._ready.clear()
