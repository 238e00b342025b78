"""What a check run found, for people and for programs: results, reports, saved cases.

Strategy: plain frozen records, built by the run (:mod:`._check`) and never changed;
each says itself as a table, JSON (:func:`cases_from_file` reads a report's cases
back for ``--replay``) or JUnit XML. No I/O here beyond formatting.

A report read back may come from anyone (people replay the reports others send
them), so what it says is data: every field is checked for its exact type and
range before it is used, each failure is one ``ValueError`` naming the field, and
every string of ours that may hold one of its strings is escaped where it leaves
(:func:`~triodaemon._errors.printable`): a table cannot carry terminal escape
codes, and the XML only characters XML can hold.
"""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree

import attrs

from ..._errors import printable, shown
from ..._faults import loads
from ..._framing import Framing
from ..._listeners import Address
from ._case import Case, show_writes
from ._diagnosis import show

#: The deepest a report may nest: ours nest 5 levels.
MAX_REPORT_DEPTH = 64
#: The longest scenario name a report may give: ours have at most 12 characters,
#: and a name is printed in a column as wide as the longest.
MAX_NAME = 64
#: The longest delimiter a report may give, in bytes: every line that names the
#: framing shows it.
MAX_DELIMITER = 256
#: The kind of a scenario that was not run: the server had stopped answering after an
#: earlier one.
NOT_RUN = "not-run"


@attrs.frozen
class MinimalCase:
    """The smallest case found that fails the way a scenario failed."""

    case: Case
    """The frames and the writes."""
    framing: Framing
    detail: str
    """The diagnosis of the smallest case."""
    received: bytes
    """What came back for it."""
    shrunk_from: str
    """The case the scenario failed with, described."""
    tries: int
    """How many cases were tried."""
    seconds: float
    """How long shrinking took."""
    python: str
    """A standalone script that replays the case."""
    replays: int = 0
    """How many replays in a row, each alone on a fresh connection, failed the same
    way (every one that was made: a replay that did not would have ruled the case
    out); 0 if not known."""

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case.to_json(),
            "framing": self.framing.to_json(),
            "writes": [
                {"pause": pause, "hex": data.hex(), "text": repr(data)}
                for pause, data in self.case.writes(self.framing)
            ],
            "detail": self.detail,
            "received": {"hex": self.received.hex(), "text": repr(self.received)},
            "shrunk_from": self.shrunk_from,
            "tries": self.tries,
            "replays": self.replays,
            "seconds": round(self.seconds, 3),
            "python": self.python,
        }


@attrs.frozen
class ScenarioResult:
    """The outcome of one scenario."""

    name: str
    """The scenario's name, e.g. ``coalesced``."""
    passed: bool
    """Whether everything sent came back whole, in order, and nothing else."""
    seconds: float
    """How long the scenario took (shrinking not included)."""
    detail: str = ""
    """On failure: what went wrong, and what kind of server bug does that."""
    sent: str = ""
    """On failure: a summary of what was sent."""
    received: str = ""
    """On failure: a summary of what came back."""
    kind: str = ""
    """On failure: the kind of bug, one of ``triodaemon.testing.check.KINDS`` (or
    ``refused``, ``timeout``, ``reset``, ``broken``: no exchange to judge; ``limited``:
    only some of many connections open at once were answered; ``stopped``, ``leak``:
    after the scenario the server served no fresh connection; :data:`NOT_RUN`: not run,
    the server had stopped answering)."""
    minimal: MinimalCase | None = None
    """On failure: the smallest case that fails the same way, if one was found."""
    shrink_note: str = ""
    """On failure: why there is no smaller case, when there is none."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
        }
        if not self.passed:
            data.update(detail=self.detail, sent=self.sent, received=self.received, kind=self.kind)
            data["minimal"] = self.minimal.to_json() if self.minimal else None
            data["shrink_note"] = self.shrink_note
        return data

    def lines(self, address: Address | None = None) -> list[str]:
        """The failure, for people: the diagnosis, and the smallest case."""
        lines = [f"    {self.detail}"]
        if self.sent:
            lines.append(f"    sent: {self.sent}")
        if self.received:
            lines.append(f"    got:  {self.received}")
        minimal = self.minimal
        if minimal is None:
            if self.shrink_note:
                lines.append(f"    not shrunk: {self.shrink_note}")
            return lines
        lines.append(
            f"    smallest failing case ({minimal.tries} tries, {minimal.seconds:.1f}s; "
            f"from {minimal.shrunk_from}):"
        )
        lines.append(f"      {minimal.case.describe(minimal.framing)}")
        lines += [f"      {line}" for line in show_writes(minimal.framing, minimal.case)]
        lines.append(f"      came back: {show(minimal.received, 96)}")
        lines.append(f"      {minimal.detail}")
        if minimal.replays:
            lines.append(
                f"      fails the same way on {minimal.replays} of {minimal.replays} replays, "
                "each alone on a fresh connection"
            )
        writes = minimal.case.writes(minimal.framing)
        if len(writes) <= 16 and minimal.case.size(minimal.framing) <= 1024:
            lines.append("      replay it with Python (or: check --json, then --replay REPORT):")
            lines += [f"        {line}" for line in minimal.python.splitlines()]
        else:
            lines.append("      replay it: check --json > REPORT, then check --replay REPORT")
        return lines


@attrs.frozen
class CheckReport:
    """Every scenario's result for one server."""

    address: str
    framing: str
    results: tuple[ScenarioResult, ...]
    seed: int | None = None
    """The seed every random choice came from: ``--seed`` repeats the run (None
    for a replay, which makes none)."""

    @property
    def passed(self) -> bool:
        """True only if every scenario passed."""
        return all(result.passed for result in self.results)

    def to_json(self) -> str:
        """The report as a JSON document."""
        return json.dumps(
            {
                "address": self.address,
                "framing": self.framing,
                "seed": self.seed,
                "passed": self.passed,
                "scenarios": [result.to_json() for result in self.results],
            },
            indent=2,
        )

    def summary(self) -> str:
        not_run = sum(result.kind == NOT_RUN for result in self.results)
        failed = sum(not result.passed for result in self.results) - not_run
        noun = "scenario" if len(self.results) == 1 else "scenarios"
        passed = len(self.results) - failed - not_run
        return f"{len(self.results)} {noun}: {passed} passed, {failed} failed" + (
            f", {not_run} not run" if not_run else ""
        )

    def table(self) -> str:
        """The report as a table for people."""
        width = max((len(result.name) for result in self.results), default=8) + 2
        lines = [
            f"triodaemon check {self.address} ({self.framing})"
            + (f", seed {self.seed}" if self.seed is not None else ""),
            f"{'scenario':<{width}}result  time",
        ]
        for result in self.results:
            status = "pass" if result.passed else "not run" if result.kind == NOT_RUN else "FAIL"
            lines.append(f"{result.name:<{width}}{status:<8}{result.seconds:.3f}s")
            if not result.passed:
                lines += result.lines()
        lines.append(self.summary())
        return "\n".join(map(printable, lines))

    def junit_xml(self) -> str:
        """The report as JUnit XML: one test case per scenario, the diagnosis as
        the failure message (what CI systems show). Always well-formed: what is not
        printable (control characters, which XML 1.0 cannot hold, lone surrogates,
        U+FFFE) is written as its escape, ``\\x00``."""
        suite = ElementTree.Element(
            "testsuite",
            name=printable(f"triodaemon check {self.address}"),
            tests=str(len(self.results)),
            failures=str(
                sum(not result.passed and result.kind != NOT_RUN for result in self.results)
            ),
            errors="0",
            skipped=str(sum(result.kind == NOT_RUN for result in self.results)),
            time=f"{sum(result.seconds for result in self.results):.3f}",
        )
        properties = ElementTree.SubElement(suite, "properties")
        for name, value in (("framing", self.framing), ("seed", str(self.seed or ""))):
            ElementTree.SubElement(properties, "property", name=name, value=printable(value))
        for result in self.results:
            case = ElementTree.SubElement(
                suite,
                "testcase",
                classname="triodaemon.check",
                name=printable(result.name),
                time=f"{result.seconds:.3f}",
            )
            if result.kind == NOT_RUN:
                ElementTree.SubElement(case, "skipped", message=printable(result.detail))
            elif not result.passed:
                failure = ElementTree.SubElement(
                    case,
                    "failure",
                    message=printable(result.detail),
                    type=printable(result.kind or "failure"),
                )
                failure.text = "\n".join(printable(line.strip()) for line in result.lines())
        ElementTree.indent(suite)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(
            suite, encoding="unicode"
        )


def cases_from_file(text: str) -> list[tuple[str, Framing, Case]]:
    """The cases in a ``check --json`` report (each failing scenario's smallest
    case): (name, framing, case) each.

    Every field is checked for its exact type (``"false"`` is no bool, ``true`` no
    number), every case against its framing (each frame one it can send, each cut
    inside its frame).

    Raises:
        ValueError: not JSON (or nested deeper than :data:`MAX_REPORT_DEPTH`), not
            a report, or a report without a single case; the one-line message
            names the field and says what was wrong.
    """
    try:
        document = loads(text, max_depth=MAX_REPORT_DEPTH)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"not a check report: expected an object, got {shown(document)}")
    scenarios = document.get("scenarios", [])
    if not isinstance(scenarios, list):
        raise ValueError(f"not a check report: scenarios: expected a list, got {shown(scenarios)}")
    found = []
    for index, scenario in enumerate(scenarios):
        each = _case_of(scenario, f"scenarios[{index}]")
        if each is not None:
            found.append(each)
    if not found:
        raise ValueError("the report holds no failing case to replay")
    return found


def _case_of(scenario: Any, where: str) -> tuple[str, Framing, Case] | None:
    """The smallest case of one scenario of a report, if it has one."""
    if not isinstance(scenario, dict):
        raise ValueError(f"not a check report: {where}: expected an object, got {shown(scenario)}")
    minimal = scenario.get("minimal")
    if minimal is None:  # it passed, or it was not shrunk
        return None
    if not isinstance(minimal, dict):
        raise ValueError(
            f"not a check report: {where}.minimal: expected an object or null, got {shown(minimal)}"
        )
    name = scenario.get("name", "replay")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        got = f"{len(name)} characters" if isinstance(name, str) else shown(name)
        raise ValueError(
            f"not a check report: {where}.name: expected a string of 1 to {MAX_NAME} "
            f"characters, got {got}"
        )
    for field in ("case", "framing"):
        if field not in minimal:
            raise ValueError(f"not a check report: {where}.minimal.{field}: missing")
    framing = Framing.from_json(minimal["framing"], where=f"{where}.minimal.framing")
    if len(framing.delimiter) > MAX_DELIMITER:  # (printed in every line that names it)
        raise ValueError(
            f"not a framing: {where}.minimal.framing.delimiter: expected at most "
            f"{MAX_DELIMITER} bytes, got {len(framing.delimiter)}"
        )
    case = Case.from_json(minimal["case"], where=f"{where}.minimal.case")
    case.check_against(framing, where=f"{where}.minimal.case")
    return name, framing, case
