"""Black-box conformance of any echo server: a battery of framing scenarios.

Strategy: each scenario sends frames in a way that breaks naive servers (many
frames in one write, one byte at a time, a split inside a delimiter or a length
header, hundreds in flight, thousands of mixed sizes, many connections interleaving
partial frames, a half-close, a reader that stalls, abusive clients next to a good
one) and compares what comes back with what was sent, byte for byte: an echo server
returns every frame's wire bytes, in order. Only content, order and completeness are
judged, never speed; each scenario has one time limit for everything in it, so a
whole run has a bound. On a failure the report names the bug from everything that
came back (:mod:`._diagnosis`), and the failing exchange is shrunk to the smallest
case that still fails the same way (:mod:`._case`), which ``--replay`` replays.
Every random choice comes from one seed, printed in the report.

This module is the run: it takes the scenarios (:mod:`._scenarios`) one after
another, each under its time limit, through one :class:`~._engine.Checker`, and
turns each outcome into a :class:`~._report.ScenarioResult`, shrinking failures
within the run's budget (:mod:`._shrinking`); after each, a fresh connection must
still be answered (:mod:`._liveness`), or the scenarios after it are not run.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import attrs
import trio

from ..._errors import count
from ..._framing import Framing
from ..._listeners import Address, connect
from ._case import Case
from ._engine import MARGIN, Checker, Failed
from ._liveness import confirmed_limited, not_run, still_answers, stopped_after
from ._report import CheckReport, MinimalCase, ScenarioResult
from ._scenarios import SCENARIOS
from ._shrinking import Shrinking

#: Seconds each scenario may take, everything in it included, before what has
#: arrived is judged as it is.
DEFAULT_TIMEOUT = 5.0
#: Seconds the whole run may spend shrinking failing cases.
DEFAULT_SHRINK_TIME = 10.0


def new_seed() -> int:
    """A fresh seed for a run."""
    return random.SystemRandom().randrange(2**32)


async def run_check(
    address: Address,
    framing: Framing | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    scenarios: Sequence[str] | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    seed: int | None = None,
    shrink_time: float = DEFAULT_SHRINK_TIME,
) -> CheckReport:
    """Run the conformance battery against the echo server at ``address``.

    After each scenario, a fresh connection must be served one frame within
    ``min(timeout, STILL_ANSWERS)`` seconds (:mod:`._liveness`); if it is not, that
    scenario fails (``stopped`` or ``leak``), and the ones after it are not run.

    A run takes at most ``len(scenarios) * (timeout + min(timeout, STILL_ANSWERS))
    + shrink_time`` seconds, plus the first connect (within ``timeout``) and, after
    a case was shrunk, one more check that the server still answers (within
    ``min(timeout, STILL_ANSWERS)``, at most once per scenario).

    Args:
        address: the server.
        framing: the framing it speaks (line by default).
        timeout: seconds each scenario may take, everything in it included (a
            budget, never a verdict on speed).
        scenarios: names from :data:`SCENARIOS` to run (all by default).
        on_result: called with each result as it is known.
        on_start: called with each scenario's name as it starts.
        seed: every random choice comes from it (a new one by default; the report
            says which).
        shrink_time: seconds the whole run may spend shrinking failing cases (0:
            none).

    Raises:
        ClientError: the server cannot be reached at all.
        ValueError: an unknown scenario name.
    """
    framing = framing or Framing()
    names = list(dict.fromkeys(scenarios)) if scenarios else list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    seed = new_seed() if seed is None else seed
    probe = await connect(address, timeout=timeout)  # fail once, clearly, if nobody is there
    await probe.aclose()
    checker = Checker(address, framing, timeout)
    checker.connections = 1  # (the probe)
    shrinking = Shrinking(checker, shrink_time)
    results: list[ScenarioResult] = []
    dead = ""  # the scenario after which the server stopped answering
    for name in names:
        if dead:
            result = not_run(name, dead)
        else:
            if on_start is not None:
                on_start(name)
            where = "the last scenario" if name == names[-1] else f"scenario {name}"
            result, dead = await _run_one(name, where, checker, shrinking, seed)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return CheckReport(str(address), framing.describe(), tuple(results), seed)


async def _run_one(
    name: str, where: str, checker: Checker, shrinking: Shrinking, seed: int
) -> tuple[ScenarioResult, str]:
    """One scenario's result, and its name if the server stopped answering after
    it (or after its failing case was shrunk), else ``""``."""
    timeout = checker.timeout
    _, scenario = SCENARIOS[name]
    checker.rng = random.Random(f"{seed}/{name}")
    checker.slowest = 0.0
    checker.others = {}
    checker.good_frames = 0
    start = trio.current_time()
    # Exchanges end a little before the scenario, so that they are judged
    # (the outermost cancelled scope is the one that catches).
    checker.deadline = start + timeout - min(MARGIN, timeout / 10)
    failure: Failed | None = None
    try:
        with trio.move_on_after(timeout) as scope:
            await scenario(checker)
        if scope.cancelled_caught:
            raise Failed(f"did not finish within the time limit ({timeout:g}s)", kind="timeout")
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        failure = Failed(f"a connection broke: {exc}", kind="broken")
    except Failed as failed:
        failure = failed
    seconds = trio.current_time() - start
    stopped = await still_answers(checker, timeout)
    if failure is None:
        result = ScenarioResult(name, True, seconds)
        if stopped is None:
            shrinking.passed(name)  # (a later failure of a small frame is the state's)
    elif stopped is not None:
        note = "the server stopped answering: no case can be tried on it"
        result = _result(name, failure, seconds, None, note)
    else:
        left = shrinking.left
        minimal, note = await shrinking.minimal(name, failure)
        result = _result(name, failure, seconds, minimal, note)
        if shrinking.left < left:  # it tried cases: the server may have died of one
            after = await still_answers(checker, timeout)
            if after is not None:
                said = after.sentence("its failing case was shrunk")
                result = attrs.evolve(result, detail=f"{result.detail}; and {said}")
                return result, f"{name} (while its failing case was shrunk)"
    if stopped is not None:
        return stopped_after(result, stopped, where), name
    return confirmed_limited(result), ""


def _result(
    name: str, failure: Failed, seconds: float, minimal: MinimalCase | None, note: str
) -> ScenarioResult:
    return ScenarioResult(
        name,
        False,
        seconds,
        failure.detail,
        failure.sent,
        failure.received,
        failure.kind,
        minimal,
        note,
    )


async def replay(
    address: Address,
    framing: Framing,
    case: Case,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    name: str = "replay",
) -> ScenarioResult:
    """Run one case (a shrunk one, from a report) against ``address``.

    Raises:
        ValueError: ``case`` cannot be written in ``framing`` (a frame it cannot
            encode, a cut outside its frame), before anything is sent.
    """
    case.check_against(framing)
    checker = Checker(address, framing, timeout)
    start = trio.current_time()
    checker.deadline = start + timeout - min(MARGIN, timeout / 10)
    try:
        with trio.move_on_after(timeout):
            writes = len(case.writes(framing))
            await checker.exchange(case, how=f" in {count(writes, 'write')}")
    except Failed as failure:
        return ScenarioResult(
            name,
            False,
            trio.current_time() - start,
            failure.detail,
            failure.sent,
            failure.received,
            failure.kind,
        )
    return ScenarioResult(name, True, trio.current_time() - start)
