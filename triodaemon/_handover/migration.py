"""The connections of one handover, as they move from this daemon to another process.

Strategy: each connection asked to go (:meth:`Migration.started`: every one
open when the migration begins, and any that starts during it) parks itself
once it owes its client nothing (its ``hand_over`` hook), and waits there for
the verdict on its batch; :func:`migrate` takes parked connections in batches
(:meth:`Migration.next_batch`), sends each connection's state (its
``handover_state()``, which :mod:`.wire` writes down) and descriptor, and settles
each batch: handed (the connection ends, its descriptor closed), or carry on
here. Whatever is not handed when the migration ends carries on here
(:meth:`Migration.withdraw`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from .._connection import Connection
from .host import ConnectionPool
from .wire import (
    ADOPT_TIMEOUT,
    BATCH_BYTES,
    BATCH_CONNECTIONS,
    Channel,
    HandoverError,
    Stalled,
    connection_to_json,
)


class Migration:
    """The connections of one handover: who is still to go, who is ready to, and
    the verdict each one waits for (handed, or carry on here)."""

    def __init__(self) -> None:
        self.waiting: set[Connection] = set()
        """Connections not yet handed that are still open."""
        self._ready: list[Connection] = []  # at a frame boundary, replies sent
        self._verdicts: dict[Connection, tuple[trio.Event, list[bool]]] = {}
        self._changed = trio.Event()

    def started(self, connection: Connection) -> None:
        """Ask ``connection`` to go (it parks once it owes its client nothing)."""
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


async def migrate(
    pool: ConnectionPool,
    channel: Channel,
    deadline: float,
    *,
    adopt_timeout: float = ADOPT_TIMEOUT,
    kill: Callable[[], Awaitable[bool]] | None = None,
) -> tuple[int, int]:
    """Hand every connection of ``pool`` over as it reaches a frame boundary with
    its replies sent, in batches, until none is left or ``deadline`` (trio's
    clock); return how many were handed, and how many carry on here.

    A taker that does not adopt a batch within ``adopt_timeout`` is ended with
    ``kill``, if it is ours: the batch then carries on here. If it is not, the
    batch is its (it may be slow, not dead): we let our descriptors go.

    Raises:
        HandoverError: the taker failed (every connection not handed carries on).
    """
    migration = Migration()
    pool.finish_by(deadline)
    for connection in list(pool.open_connections()):
        migration.started(connection)
    pool.watch_connections(migration)
    handed: set[Connection] = set()
    try:
        while migration.waiting:
            with trio.move_on_at(deadline):
                batch = await migration.next_batch()
            if trio.current_time() >= deadline:
                break
            if batch:
                await _send(pool, channel, migration, batch, handed, adopt_timeout, kill)
    except BaseException:
        pool.finish_by(math.inf)  # serving on: a later drain has its full time
        raise
    finally:
        pool.watch_connections(None)
        migration.withdraw()
    # (The handed ones end at their next step: still open now.)
    return len(handed), len(set(pool.open_connections()) - handed)


async def _send(
    pool: ConnectionPool,
    channel: Channel,
    migration: Migration,
    batch: list[Connection],
    handed: set[Connection],
    adopt_timeout: float,
    kill: Callable[[], Awaitable[bool]] | None,
) -> None:
    """Hand ``batch`` over and settle it; ``handed`` gathers what went."""
    try:
        await send_batch(channel, batch, adopt_timeout)
    except Stalled as exc:
        gone = kill is not None and await kill()
        migration.settle(batch, handed=not gone)
        if not gone:
            _count(pool, handed, batch)
        raise _with_the_lost(exc, handed) from None
    except HandoverError as exc:
        migration.settle(batch, handed=False)
        raise _with_the_lost(exc, handed) from None
    except BaseException:
        migration.settle(batch, handed=False)
        raise
    migration.settle(batch, handed=True)
    _count(pool, handed, batch)


def _count(pool: ConnectionPool, handed: set[Connection], batch: list[Connection]) -> None:
    handed.update(batch)
    pool.stats.connections_handed += len(batch)


def _with_the_lost(exc: HandoverError, handed: set[Connection]) -> HandoverError:
    """``exc``, saying how many connections had moved (they went with the taker)."""
    if not handed:
        return exc
    return HandoverError(
        f"{exc}; the {len(handed)} connection{'' if len(handed) == 1 else 's'} "
        "it had adopted went with it"
    )


async def send_batch(
    channel: Channel, batch: Sequence[Connection], timeout: float = ADOPT_TIMEOUT
) -> None:
    """Hand one batch of parked connections over; return once the taker has
    adopted them.

    Raises:
        HandoverError: the taker did not adopt them (they are still ours).
    """
    states = [connection.handover_state() for connection in batch]
    await channel.send(
        {"type": "connections", "connections": [connection_to_json(s) for s in states]},
        b"".join(state.pending for state in states),
        [connection.transport.fileno() for connection in batch],
    )
    with trio.move_on_after(timeout):
        answer, _, stray = await channel.receive("adopted")
        for sock in stray:
            sock.close()
        if answer.get("count") == len(batch):
            return
        raise HandoverError(
            f"{channel.where} adopted {answer.get('count')!r} of {len(batch)} connections"
        )
    raise Stalled(f"{channel.where} did not adopt connections within {timeout:g}s")
