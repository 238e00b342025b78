"""`check`'s smallest cases reproduce, and the report says so when a failure does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from triodaemon import Framing, TcpAddress
from triodaemon.testing.check._case import REPLAYS, Case, Replays, cut_at, replay_case, shrink
from triodaemon.testing.check._engine import Checker, Failed
from triodaemon.testing.check._shrinking import Shrinking

from .conftest import run_triodaemon
from .test_check import check_cli, stdlib_server

LINE = Framing()

#: Kinds that are never shrunk (no exchange to shrink, or slow on any case).
NOT_SHRUNK = {"slow", "refused", "timeout", "reset", "broken", "stopped"}


async def replayed_kinds(address: TcpAddress, found: dict[str, Any], report: Path) -> list[str]:
    """The kinds of 5 replays, by ``check --replay``, of the smallest case in ``found``
    (a scenario of a report), saved as ``report``."""
    report.write_text(json.dumps({"scenarios": [found]}))
    kinds = []
    for _ in range(5):
        result = await run_triodaemon(
            "check", "--tcp", f"127.0.0.1:{address.port}", "--replay", str(report),
            "--json", "--timeout", "1",
        )  # fmt: skip
        [replayed] = json.loads(result.stdout)["scenarios"]
        kinds.append("" if replayed["passed"] else replayed["kind"])
    return kinds


def sometimes(kind: str, pattern: str) -> tuple[list[Case], Any]:
    """A fake server that fails with ``kind`` or passes, by the letters of ``pattern``
    (F, P) in turn, whatever the case; and the cases it was given."""
    tried: list[Case] = []

    async def run(candidate: Case) -> str | None:
        tried.append(candidate)
        return kind if pattern[(len(tried) - 1) % len(pattern)] == "F" else None

    return tried, run


async def test_a_case_fails_only_if_it_fails_the_same_way_on_every_replay() -> None:
    case = Case((b"ab", b"cd"))
    _, run = sometimes("lost", "F")
    assert await replay_case(case, "lost", run) == Replays(REPLAYS)
    tried, run = sometimes("lost", "FFP")
    found = await replay_case(case, "lost", run)
    assert (found.same, found.then, found.confirmed, found.made) == (2, "", False, 3)
    tried, run = sometimes("lost", "P")
    found = await replay_case(case, "lost", run)
    assert (found, len(tried)) == (Replays(0, ""), 1)  # a passing case costs one try

    async def another_way(candidate: Case) -> str | None:
        return "corrupted"

    assert await replay_case(case, "lost", another_way) == Replays(0, "corrupted")


async def test_shrinking_keeps_no_step_that_passes_on_any_replay() -> None:
    """A server that fails two runs of every three: no smaller case is ever kept,
    and each candidate that passes is given up at once."""
    frames = [b"x" * size for size in (10, 500, 3)]
    case = cut_at(LINE, frames, [5, 260], 0.005)
    tried, run = sometimes("truncated", "FFP")
    result = await shrink(LINE, case, "truncated", run)
    assert result.case == case
    assert result.improvements == 0
    assert result.tries == len(tried)


async def test_a_deterministic_bug_gets_a_case_that_fails_every_replay(tmp_path: Path) -> None:
    async with stdlib_server("drop-tail") as address:
        code, scenarios = await check_cli(address, "--scenario", "byte-by-byte")
        assert code == 1
        found = scenarios["byte-by-byte"]
        minimal = found["minimal"]
        assert minimal is not None, found["shrink_note"]
        assert minimal["replays"] == REPLAYS
        assert await replayed_kinds(address, found, tmp_path / "report.json") == [found["kind"]] * 5
        table = await run_triodaemon(
            "check", "--tcp", f"127.0.0.1:{address.port}", "--scenario", "byte-by-byte",
            "--timeout", "1", "--shrink-time", "3",
        )  # fmt: skip
    assert "      fails the same way on 3 of 3 replays, each alone on a fresh connection\n" in (
        table.stdout.decode()
    )


async def test_a_flaky_server_gets_no_case_that_does_not_reproduce(tmp_path: Path) -> None:
    """It fails two connections of every three: no case fails on three replays in a
    row, so none is presented, and the note says the failure is not in the bytes."""
    async with stdlib_server("flaky") as address:
        code, scenarios = await check_cli(address)
        assert code == 1
        failed = {name: s for name, s in scenarios.items() if not s["passed"]}
        shrinkable = {name: s for name, s in failed.items() if s["kind"] not in NOT_SHRUNK}
        assert shrinkable, failed
        for name, found in shrinkable.items():
            if found["minimal"] is None:
                note = found["shrink_note"]
                if note == "it fails only next to other connections":
                    continue  # (the scenario's own word, for a case that passes alone)
                assert note.startswith("replayed alone on "), (name, note)
                assert "depends on state or timing (other connections, what came before, " in note
                continue
            # A case presented must fail every replay (here: it cannot be).
            kinds = await replayed_kinds(address, found, tmp_path / f"{name}.json")
            assert kinds == [found["kind"]] * 5, (name, kinds)


async def test_a_worn_out_server_gets_no_case_as_the_cause() -> None:
    """Right for its first 30 connections, then mute: what fails after that fails on
    any bytes, and the report presents none as the cause."""
    async with stdlib_server("worn-out") as address:
        code, scenarios = await check_cli(address)
    assert code == 1
    failed = {name: s for name, s in scenarios.items() if not s["passed"]}
    assert failed
    assert all(found["minimal"] is None for found in failed.values()), failed
    notes = [  # (resilience takes several clients at once: it is never shrunk)
        s["shrink_note"]
        for name, s in failed.items()
        if s["kind"] not in NOT_SHRUNK and s["kind"] != "not-run" and name != "resilience"
    ]
    assert notes
    for note in notes:
        # The check after the scenario finds it silent (and names it so), or the
        # control does, which is compared with the scenarios that passed before.
        if note == "the server stopped answering: no case can be tried on it":
            continue
        assert note.startswith(
            "the server now fails even one small frame on a fresh connection ("
        ), note
        assert "nothing came back for b'alive.0|alive.1|\\n'" in note
        assert "passed earlier in this run" in note
        assert "the server's state (what came before)" in note


async def test_a_control_that_fails_after_a_pass_says_the_state_is_the_cause() -> None:
    """What the run tells the shrinking (a scenario passed) is what the note compares
    the control with."""
    async with stdlib_server("worn-out") as address:
        checker = Checker(address, LINE, 1.0)
        shrinking = Shrinking(checker, 3.0)
        with trio.fail_after(30):
            for _ in range(30):  # everything it serves right
                checker.deadline = trio.current_time() + 1
                await checker.exchange(Case((b"fine",)))
            shrinking.passed("one-frame")
            failure = Failed("lost", kind="nothing", case=Case((b"abc", b"def")))
            minimal, note = await shrinking.minimal("split", failure)
    assert minimal is None
    assert note.startswith(
        "the server now fails even one small frame on a fresh connection (nothing came back "
        "for b'alive.0|alive.1|\\n', then nothing more for 0.1"
    ), note
    assert note.endswith(
        "s; scenario one-frame passed earlier in this run): the failure depends on the "
        "server's state (what came before), not on these bytes"
    ), note
