"""After each scenario of ``check``: does the server still answer a fresh connection?

Strategy: a moment after a scenario has closed its last connection, one frame is sent
on a new connection, which must be answered within :data:`STILL_ANSWERS` seconds (or
the time limit, if shorter). How it fails says what became of the server: a refused
connect means it exited or closed its listener; one accepted then closed or reset
without an answer, that it exited or turns connections away; one accepted and never
answered, after many connections, that it ran out of descriptors (it keeps the sockets
of connections whose clients left: a leak), or, after few, that it hung. Only a
server that answered something before can stop answering: one that never answers is
judged by the scenarios alone. The verdict is turned into the scenario's result here,
and the scenarios after it are not run against a dead server.
"""

from __future__ import annotations

import attrs
import trio

from ..._errors import count
from ._case import Case
from ._engine import MARGIN, Checker, Failed, close_now
from ._report import NOT_RUN, ScenarioResult
from ._scenarios import plain_frame

#: After each scenario, a fresh connection must be served one frame within this long
#: (or the time limit, if shorter): a server that died of the battery, or stopped
#: accepting, must not pass it.
STILL_ANSWERS = 2.0
#: The check begins this long after the scenario's last close (at most a tenth of its
#: bound): time for a server that crashes in its cleanup to do so. Short, because it
#: is paid after every scenario.
STILL_SETTLE = 0.05
#: A server that accepts a fresh connection but never answers it, after it answered
#: this many connections or more, is named a ``leak`` (it seems to have run out of
#: descriptors); after fewer, ``stopped`` (it seems to have hung). Default descriptor
#: limits are hundreds or thousands; every scenario but two uses one connection.
LEAK_AFTER = 20


@attrs.frozen
class Stopped:
    """A fresh connection was not served one frame: what it met, and what that means."""

    kind: str
    """``stopped`` or ``leak``."""
    met: str
    """What the fresh connection met, e.g. ``it was refused (...)``."""
    meaning: str
    """What the server seems to do."""
    answered: int
    """The number of the run's last connection that anything came back on."""

    def sentence(self, where: str) -> str:
        """What a user reads: ``where`` is ``the last scenario``, ``scenario X`` or
        ``its failing case was shrunk``."""
        if self.kind == "leak":
            return (
                f"after about {count(self.answered, 'connection')}, new ones are never "
                f"answered: after {where} a fresh connection, with every earlier one "
                f"closed, was not served one frame ({self.met}): {self.meaning}"
            )
        return (
            f"after {where} the server stopped answering: a fresh connection was not "
            f"served one frame ({self.met}): {self.meaning}"
        )


async def still_answers(checker: Checker, timeout: float) -> Stopped | None:
    """``None`` if a fresh connection is answered (or the server never answered
    anything in this run); else what it met."""
    if not checker.answered:
        return None  # it never answered: nothing stopped (the scenarios say what it does)
    bound = min(timeout, STILL_ANSWERS)
    # The settle is part of the bound: the whole check takes at most ``bound``.
    checker.deadline = trio.current_time() + bound - min(MARGIN, bound / 10)
    await trio.sleep(min(STILL_SETTLE, bound / 10))
    checker.slowest = 0.0  # (judged on its own: no "slow" from the scenario's pace)
    checker.others = {}  # (nor its bytes named as another connection's)
    case = Case((plain_frame(checker.framing, "alive"),))
    try:
        stream = await checker.open()
    except Failed as failure:
        if failure.kind == "refused":
            return Stopped(
                "stopped",
                f"it was refused: {failure.detail}",
                "the server seems to have exited, or closed its listener",
                checker.answered,
            )
        return _silent(checker, f"it could not even connect in {bound:g}s")
    try:
        transcript = await checker.talk(stream, case)
    finally:
        await close_now(stream)
    if transcript.received:
        return None  # it answers (what it answers, the scenarios judge)
    if not transcript.timed_out:
        return Stopped(
            "stopped",
            f"it was accepted{transcript.ended}, without an answer",
            "the server seems to have exited, or to turn new connections away",
            checker.answered,
        )
    return _silent(checker, f"it was accepted, but nothing came back in {transcript.elapsed:.2g}s")


def _silent(checker: Checker, met: str) -> Stopped:
    if checker.answered >= LEAK_AFTER:
        return Stopped(
            "leak",
            met,
            "the server seems to keep the socket of every connection whose client left, "
            "until it runs out of descriptors (a leak), or to have hung",
            checker.answered,
        )
    return Stopped(
        "stopped", met, "the server seems to have hung, or to accept no more", checker.answered
    )


def stopped_after(result: ScenarioResult, stopped: Stopped, where: str) -> ScenarioResult:
    """``result``, failed because the server stopped answering after its scenario."""
    said = stopped.sentence(where)
    if result.passed or result.kind == "limited":
        # (a server that answered only some of the concurrent connections, then none
        # after they closed, is not limited: it stopped, or leaks)
        return attrs.evolve(result, passed=False, detail=said, kind=stopped.kind)
    return attrs.evolve(result, detail=f"{result.detail}; and {said}", kind=stopped.kind)


def confirmed_limited(result: ScenarioResult) -> ScenarioResult:
    """A ``limited`` result, once a fresh connection was answered after the scenario."""
    if result.kind != "limited":
        return result
    return attrs.evolve(
        result, detail=f"{result.detail}; once they had closed, a fresh connection was answered"
    )


def not_run(name: str, stopped_after: str) -> ScenarioResult:
    """A scenario not run, because the server had stopped answering."""
    return ScenarioResult(
        name,
        False,
        0.0,
        f"not run: the server stopped answering after scenario {stopped_after}",
        kind=NOT_RUN,
    )
