"""Shrinking in a run of ``check``: the budget, and the tries against the server.

Strategy: the run has one budget of seconds for shrinking; each failure gets half
of what is left (at least a second per replay a kept step takes), so later failures
get some too. Each try replays
a candidate case alone on a new connection, with a short limit, and diagnoses it;
:func:`~._case.shrink_into` decides what to try next, and keeps a smaller case only
if it fails the same way on every one of :data:`~._case.REPLAYS` replays in a row.
The scenario's own case must pass that test first: one that does not is no smallest
case of anything, and the note says the failure depends on state or timing.

A control frames the search: one small ordinary frame on a fresh connection, before
(once, until one passes) and after. A server that fails even that fails anything:
no case is presented as the cause, and the note says so, and that the failure
depends on the server's state when a small frame passed earlier in the run. One
case per kind of failure.
"""

from __future__ import annotations

import contextlib

import attrs
import trio

from ..._errors import count
from ..._framing import Framing
from ._case import REPLAYS, Case, Replays, Shrunk, python_snippet, replay_case, shrink_into
from ._diagnosis import Transcript, diagnose, show
from ._engine import MARGIN, Checker, Failed, close_now
from ._report import MinimalCase
from ._scenarios import plain_frame

#: The longest one try of a shrunk case waits for its echoes, and how long it
#: waits once they stop coming.
_TRY_LIMIT = 1.0
_TRY_IDLE = 0.1
#: The least time for shrinking a failure gets (if the run has that much left): a
#: second per replay a kept step takes, as a second was when one replay was enough.
_AT_LEAST = 1.0 * REPLAYS
#: What each failure's time for shrinking keeps back for the control at the end (at
#: most a quarter of it): a server that answers takes milliseconds over one small
#: frame, and one that does not is judged once nothing came for ``_TRY_IDLE``.
_CONTROL_TIME = 0.3

#: What a failure that its case alone does not reproduce depends on.
_STATE_OR_TIMING = "state or timing (other connections, what came before, pacing)"

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
    """The run's budget for shrinking, and what it has learnt about the server."""

    checker: Checker
    left: float
    """Seconds of shrinking the run has left."""
    off: bool = attrs.field(init=False)
    shrunk: dict[str, str] = attrs.field(factory=dict)
    """Kinds of failure shrunk already, and the scenario each was shrunk for."""
    earlier: str = ""
    """Evidence that the server served a fresh connection right earlier in this run,
    as a phrase for notes (``scenario one-frame passed earlier in this run``), or
    ``""`` if none was seen: set by :meth:`passed`, or by a control that passed."""
    failing: bool = False
    """Whether the last control failed (so the next failure starts with one)."""

    def __attrs_post_init__(self) -> None:
        self.off = self.left <= 0

    def passed(self, name: str) -> None:
        """Scenario ``name`` passed: the server served it right, at that point of the
        run (what a control that fails later is compared with)."""
        self.earlier = f"scenario {name} passed earlier in this run"

    async def minimal(self, name: str, failure: Failed) -> tuple[MinimalCase | None, str]:
        """The smallest case that fails the way ``failure`` did, or why there is none."""
        case = failure.case
        if failure.kind in _NOT_SHRUNK or case is None:
            return None, failure.note or _NOT_SHRUNK.get(failure.kind, "no exchange to shrink")
        if failure.kind in self.shrunk:
            return None, f"the same kind of failure as {self.shrunk[failure.kind]}: see its case"
        if self.off:
            return None, "shrinking is off (--shrink-time 0)"
        if self.left <= 0:
            return None, "the run's time for shrinking (--shrink-time) is used up"
        start = trio.current_time()
        # Half of what is left (at least _AT_LEAST), so later failures get some too.
        deadline = start + min(self.left, max(self.left / 2, _AT_LEAST))
        tries = _Tries(self.checker, failure.kind, Shrunk(case), deadline)
        try:
            with trio.move_on_at(deadline):
                minimal, note = await self._search(tries, failure)
                if minimal is not None:
                    self.shrunk[failure.kind] = name
                return minimal, note
            return None, "the run's time for shrinking (--shrink-time) ran out"
        finally:
            self.left -= trio.current_time() - start

    async def _search(self, tries: _Tries, failure: Failed) -> tuple[MinimalCase | None, str]:
        """Control, the case alone, shrinking, control: see the module's docstring."""
        kind, result = failure.kind, tries.result
        # The control is kept back from the shrinking's time, so that it has some.
        shrink_until = tries.deadline - min(_CONTROL_TIME, (tries.deadline - tries.start) / 4)
        try:
            if not self.earlier or self.failing:
                control, passed = await tries.control(shrink_until, kind, bool(self.earlier))
                if control:
                    return None, self._fails_anything(control)
                if passed:
                    self.earlier = self.earlier or "one passed earlier in this run"
            first = await replay_case(result.case, kind, lambda c: tries.run(c, shrink_until))
        except _OutOfTime:
            return None, "the run's time for shrinking (--shrink-time) ran out"
        except Failed as refused:
            return None, f"a fresh connection to replay it alone failed: {refused.detail}"
        result.tries += first.made
        if not first.confirmed:
            return None, _not_alone(first, failure.note)
        # Out of time, or a refused connection: keep what was found.
        with trio.move_on_at(shrink_until), contextlib.suppress(_OutOfTime, Failed):
            await shrink_into(tries.framing, result, kind, lambda c: tries.run(c, shrink_until))
        try:
            control, _ = await tries.control(tries.deadline, kind, bool(self.earlier))
        except (_OutOfTime, Failed):
            control = ""  # no verdict: the case failed on every replay, keep it
        if control:
            return None, self._fails_anything(control)
        return tries.minimal(failure), ""

    def _fails_anything(self, control: str) -> str:
        """The note for a server that failed the control: ``control`` says how."""
        self.failing = True
        if self.earlier:
            return (
                f"the server now fails even one small frame on a fresh connection ({control}; "
                f"{self.earlier}): the failure depends on the server's state (what came "
                "before), not on these bytes"
            )
        return (
            f"the server fails even one small frame on a fresh connection ({control}): "
            "the failure is not in these bytes; no small frame was seen to pass earlier in "
            "this run, so whether it depends on the server's state (what came before) is "
            "not known"
        )


def _not_alone(first: Replays, note: str) -> str:
    """The note for a case that did not fail the same way on every replay alone;
    ``note`` is the scenario's own word for a case that passes alone."""
    if not first.same and first.then == "":
        return note or (
            f"replayed alone on a fresh connection, it passes: the failure depends on "
            f"{_STATE_OR_TIMING}, not on these bytes"
        )
    if not first.same:
        return (
            f"replayed alone on a fresh connection, it fails another way ({first.then}): "
            f"this failure depends on {_STATE_OR_TIMING}, not on these bytes alone"
        )
    then = "passed" if first.then == "" else f"failed another way ({first.then})"
    return (
        f"replayed alone on fresh connections, it failed the same way on "
        f"{count(first.same, 'replay')}, then {then} on the next: the failure is intermittent; it "
        f"depends on {_STATE_OR_TIMING}, not on these bytes alone"
    )


@attrs.define(eq=False)
class _Tries:
    """One failure's tries against the server, and what came back for the best case."""

    checker: Checker
    kind: str
    result: Shrunk
    deadline: float
    """When this failure's time for shrinking is up (trio time)."""
    start: float = attrs.field(factory=trio.current_time)
    transcripts: dict[Case, Transcript] = attrs.field(factory=dict)
    """What came back for the best case so far, and for the running candidate, on a
    replay that failed with ``kind``."""

    @property
    def framing(self) -> Framing:
        return self.checker.framing

    async def talk(self, case: Case, until: float) -> Transcript:
        """``case`` alone on a fresh connection, with a short limit.

        Raises:
            _OutOfTime: ``until`` came during it: what came back is no verdict.
            Failed: the connection was refused.
        """
        checker = self.checker
        checker.deadline = min(
            until - MARGIN, trio.current_time() + min(_TRY_LIMIT, checker.timeout)
        )
        try:
            stream = await checker.open()
        except Failed:
            if trio.current_time() >= until - MARGIN:
                raise _OutOfTime from None  # (not refused: out of time to connect)
            raise
        try:
            transcript = await checker.talk(stream, case, idle=_TRY_IDLE)
        finally:
            await close_now(stream)
        if trio.current_time() >= until - MARGIN:
            raise _OutOfTime  # the try may have been cut short: no verdict
        return transcript

    async def run(self, candidate: Case, until: float) -> str | None:
        """The kind of failure ``candidate`` produces alone, or None if it passes."""
        transcript = await self.talk(candidate, until)
        framing = self.checker.framing
        found = diagnose(framing, candidate.frames, transcript, candidate.write_ends(framing)[:-1])
        if found is None or found.kind != self.kind:
            return found.kind if found else None
        best = self.result.case
        keep = {best: self.transcripts[best]} if best in self.transcripts else {}
        keep[candidate] = transcript
        self.transcripts = keep
        return found.kind

    async def control(self, until: float, kind: str, earlier: bool) -> tuple[str, bool]:
        """One small ordinary frame on a fresh connection: ``""`` if it came back whole,
        else what came back instead (or why the connection failed); and whether it
        came back whole. Also ``""`` when it fails as ``kind`` and no frame was seen
        to pass (not ``earlier``): a server that fails every frame that way (a header
        it always gets wrong) has its smallest case like any other."""
        framing = self.checker.framing
        case = Case((plain_frame(framing, "alive"),))
        sent = framing.encode(case.frames[0])
        try:
            transcript = await self.talk(case, until)
        except Failed as refused:
            return refused.detail, False
        found = diagnose(framing, case.frames, transcript)
        if found is None or (found.kind == kind and not earlier):
            return "", found is None
        got = show(transcript.received, 32) if transcript.received else "nothing"
        return f"{got} came back for {show(sent, 32)}{transcript.ended}", False

    def minimal(self, failure: Failed) -> MinimalCase:
        """The best case found, for the report."""
        checker, best = self.checker, self.result.case
        framing = checker.framing
        transcript = self.transcripts[best]
        found = diagnose(framing, best.frames, transcript, best.write_ends(framing)[:-1])
        assert found is not None
        assert failure.case is not None
        return MinimalCase(
            best,
            framing,
            found.text,
            transcript.received,
            failure.case.describe(framing),
            self.result.tries,
            trio.current_time() - self.start,
            python_snippet(checker.address, framing, best, min(_TRY_LIMIT, checker.timeout)),
            REPLAYS,
        )
