"""Shrinking in a run of ``check``: the budget, and the tries against the server.

Strategy: the run has one budget of seconds for shrinking; each failure gets half of
what is left (at least a second), so later failures get some too. Each try replays
a candidate case alone on a new connection, with a short limit, and diagnoses it;
:func:`~._case.shrink_into` decides what to try next. One case per kind of failure.
"""

from __future__ import annotations

import attrs
import trio

from ._case import Case, Shrunk, python_snippet, shrink_into
from ._diagnosis import Transcript, diagnose
from ._engine import MARGIN, Checker, Failed, close_now
from ._report import MinimalCase

#: The longest one try of a shrunk case waits for its echoes, and how long it
#: waits once they stop coming.
_TRY_LIMIT = 1.0
_TRY_IDLE = 0.1

#: Kinds of failure that no smaller case explains better.
_NOT_SHRUNK = {
    "slow": "a slow server is slow on any case; give it more time with --timeout",
    "refused": "no exchange to shrink",
    "timeout": "no exchange to shrink",
    "reset": "no exchange to shrink",
    "broken": "no exchange to shrink",
}


class _OutOfTime(Exception):
    """The run's time for shrinking is up."""


@attrs.define
class Shrinking:
    """The run's budget for shrinking, and the best case seen in the running shrink."""

    checker: Checker
    left: float
    """Seconds of shrinking the run has left."""
    off: bool = attrs.field(init=False)
    best: tuple[Case, Transcript] | None = None
    shrunk: dict[str, str] = attrs.field(factory=dict)
    """Kinds of failure shrunk already, and the scenario each was shrunk for."""

    def __attrs_post_init__(self) -> None:
        self.off = self.left <= 0

    async def minimal(self, name: str, failure: Failed) -> tuple[MinimalCase | None, str]:
        case = failure.case
        if failure.kind in _NOT_SHRUNK or case is None:
            return None, failure.note or _NOT_SHRUNK.get(failure.kind, "no exchange to shrink")
        if failure.kind in self.shrunk:
            return None, f"the same kind of failure as {self.shrunk[failure.kind]}: see its case"
        if self.off:
            return None, "shrinking is off (--shrink-time 0)"
        if self.left <= 0:
            return None, "the run's time for shrinking (--shrink-time) is used up"
        checker = self.checker
        framing = checker.framing
        start = trio.current_time()
        # Half of what is left (at least a second), so later failures get some too.
        deadline = start + min(self.left, max(self.left / 2, 1.0))
        self.best = None
        result = Shrunk(case, 0, 0)

        async def run(candidate: Case) -> str | None:
            limit = min(_TRY_LIMIT, checker.timeout)
            checker.deadline = min(deadline - MARGIN, trio.current_time() + limit)
            stream = await checker.open()
            try:
                transcript = await checker.talk(stream, candidate, idle=_TRY_IDLE)
            finally:
                await close_now(stream)
            if trio.current_time() >= deadline - MARGIN:
                raise _OutOfTime  # the try may have been cut short: no verdict
            found = diagnose(
                framing, candidate.frames, transcript, candidate.write_ends(framing)[:-1]
            )
            if found is not None and found.kind == failure.kind:
                self.best = (candidate, transcript)
            return found.kind if found else None

        out_of_time = False
        with trio.move_on_at(deadline) as scope:
            try:
                if await run(case) == failure.kind:  # alone, on a fresh connection
                    await shrink_into(framing, result, failure.kind, run)
            except _OutOfTime:
                out_of_time = True
            except Failed:
                pass  # a refused connection: keep what was found
        self.left -= trio.current_time() - start
        if self.best is None:
            if out_of_time or scope.cancelled_caught:
                return None, "the run's time for shrinking (--shrink-time) ran out"
            note = failure.note or "it does not fail the same way alone on a new connection"
            return None, note
        best, transcript = self.best
        found = diagnose(framing, best.frames, transcript, best.write_ends(framing)[:-1])
        assert found is not None
        self.shrunk[failure.kind] = name
        return (
            MinimalCase(
                best,
                framing,
                found.text,
                transcript.received,
                case.describe(framing),
                result.tries,
                trio.current_time() - start,
                python_snippet(checker.address, framing, best, min(_TRY_LIMIT, checker.timeout)),
            ),
            "",
        )
