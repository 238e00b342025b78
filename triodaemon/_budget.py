"""The buffer budget: a bound on the bytes all connections hold in partial frames together.

Strategy: every connection reports how many bytes of an unfinished frame its
decoder holds after each read (:meth:`BufferBudget.hold`; a read that ends on a
frame boundary holds nothing and costs one comparison). While the total is
over the limit, a connection holding a partial frame is not read (it waits in
:meth:`BufferBudget.wait_for_room`: backpressure, never a close) except the one
whose partial frame is the oldest, which always reads: it finishes its frame,
frees what it held, and the next oldest goes on. So the bound never deadlocks,
whatever the limit, and every connection in a frame makes progress in turn. A
connection at a frame boundary goes on being read, in small reads
(:data:`OVER_BUDGET_READ`) while the budget is exhausted.

The worst case, in bytes held in partial frames: ``limit`` + the oldest frame
(``max_frame`` plus its header) + one read that crossed the limit
(``receive_size``) + ``OVER_BUDGET_READ`` per other connection.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import trio

#: Bytes asked per read, while the budget is exhausted, by a connection that
#: holds no partial frame: what such a read leaves unfinished is at most this.
OVER_BUDGET_READ = 4096


@attrs.define(eq=False)
class BufferBudget:
    """The bytes all connections may hold in partial frames before reads of them pause.

    Args:
        limit: the bound, in bytes; ``inf`` keeps no account at all.
    """

    limit: float = math.inf
    held: int = attrs.field(default=0, init=False)
    """Bytes held in partial frames now."""
    over: bool = attrs.field(default=False, init=False)
    """Whether :attr:`held` is over the limit."""
    # Holders in the order their partial frames began: the first always reads.
    _holders: dict[object, None] = attrs.field(factory=dict, init=False)
    _room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)

    def hold(self, holder: object, old: int, new: int) -> None:
        """``holder`` held ``old`` bytes of a partial frame and now holds ``new``."""
        if self.limit == math.inf:
            return
        self.held += new - old
        if not old:
            self._holders[holder] = None
        elif not new:
            first = next(iter(self._holders)) is holder
            del self._holders[holder]
            if first and self._room:
                self._room.unpark_all()  # a new oldest: it may read now
        self.over = over = self.held > self.limit
        if not over and self._room:
            self._room.unpark_all()

    def may_read(self, holder: object) -> bool:
        """Whether ``holder``, which holds a partial frame, may be read now."""
        return not self.over or next(iter(self._holders), None) is holder

    async def wait_for_room(self, holder: object, stop: Callable[[], bool] | None = None) -> None:
        """Wait until ``holder`` (holding a partial frame) may be read, or ``stop()``
        is true after :meth:`interrupt`."""
        while not self.may_read(holder) and not (stop is not None and stop()):
            await self._room.park()

    def interrupt(self) -> None:
        """Have every wait in :meth:`wait_for_room` look again (at its ``stop``)."""
        self._room.unpark_all()
