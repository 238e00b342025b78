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
within the run's budget (:mod:`._shrinking`).
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
from ._report import CheckReport, ScenarioResult
from ._scenarios import SCENARIOS, make_frames
from ._shrinking import Shrinking

#: Seconds each scenario may take, everything in it included, before what has
#: arrived is judged as it is.
DEFAULT_TIMEOUT = 5.0
#: Seconds the whole run may spend shrinking failing cases.
DEFAULT_SHRINK_TIME = 10.0
#: After the last scenario, a fresh connection must still be served one frame
#: within this long (or the time limit, if shorter): a server that died of the
#: battery, or stopped accepting, must not pass it. The check begins
#: ``STILL_SETTLE`` seconds after the scenario's last close, time for a server that
#: crashes in its cleanup to do so.
STILL_ANSWERS = 2.0
STILL_SETTLE = 0.1


async def _failed(name: str, failure: Failed, start: float, shrinking: Shrinking) -> ScenarioResult:
    seconds = trio.current_time() - start
    minimal, note = await shrinking.minimal(name, failure)
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

    A run takes at most ``len(scenarios) * timeout + shrink_time`` seconds, plus
    the first connect (within ``timeout``) and the last check that the server
    still answers (within ``min(timeout, STILL_ANSWERS)``).

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
    shrinking = Shrinking(checker, shrink_time)
    results = []
    for name in names:
        _, scenario = SCENARIOS[name]
        if on_start is not None:
            on_start(name)
        checker.rng = random.Random(f"{seed}/{name}")
        checker.slowest = 0.0
        checker.others = {}
        checker.planned = checker.good_frames = 0
        start = trio.current_time()
        # Exchanges end a little before the scenario, so that they are judged
        # (the outermost cancelled scope is the one that catches).
        checker.deadline = start + timeout - min(MARGIN, timeout / 10)
        try:
            with trio.move_on_after(timeout) as scope:
                await scenario(checker)
            if scope.cancelled_caught:
                raise Failed(f"did not finish within the time limit ({timeout:g}s)", kind="timeout")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failure = Failed(f"a connection broke: {exc}", kind="broken")
            result = await _failed(name, failure, start, shrinking)
        except Failed as failure:
            result = await _failed(name, failure, start, shrinking)
        else:
            result = ScenarioResult(name, True, trio.current_time() - start)
        if name == names[-1]:
            result = await _still_answering(result, checker, timeout)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return CheckReport(str(address), framing.describe(), tuple(results), seed)


async def _still_answering(
    result: ScenarioResult, checker: Checker, timeout: float
) -> ScenarioResult:
    """``result`` (the last scenario's), failed if the server no longer serves a
    fresh connection one frame afterwards: it stopped answering."""
    bound = min(timeout, STILL_ANSWERS)
    await trio.sleep(min(STILL_SETTLE, bound / 10))
    checker.slowest = 0.0  # (judged on its own: no "slow" from the scenario's pace)
    checker.deadline = trio.current_time() + bound - min(MARGIN, bound / 10)
    try:
        with trio.move_on_after(bound):
            await checker.exchange(Case((make_frames(checker.framing, "alive", 1, 16)[0],)))
            return result
        why = f"no answer within {bound:g}s"
    except Failed as failure:
        why = failure.detail
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        why = f"a connection broke: {exc}"
    said = (
        f"after the last scenario the server stopped answering: a fresh connection was "
        f"not served one frame ({why})"
    )
    if result.passed:
        return attrs.evolve(result, passed=False, detail=said, kind="stopped")
    return attrs.evolve(result, detail=f"{result.detail}; and {said}")


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
