"""`triodaemon check --replay` of a hostile report: one line and exit 2, never a
traceback; what the report's strings hold reaches no terminal and no XML raw.

People replay the reports others send them, so each test writes a report that
``check --json`` could have written, changes one thing in it, and runs the command
line in-process (``--replay`` is refused before anything is sent; a replay that is
run meets no server, which fails it at once, exit 1).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import attrs
import pytest

from triodaemon import Framing, UnixAddress, _framing
from triodaemon._cli import check as check_cli
from triodaemon.testing.check import (
    Case,
    CheckReport,
    MinimalCase,
    ScenarioResult,
    cases_from_file,
    replay,
)
from triodaemon.testing.check._case import _with_payload

LINE = Framing()

Report = dict[str, Any]


def saved_report(framing: Framing = LINE) -> Report:
    """A report as ``check --json`` saves it, with one failing scenario's case."""
    case = Case((b"ab", b"c"), ((1,), ()), 0.005)
    minimal = MinimalCase(case, framing, "reordered", b"c\nab\n", "2 frames", 3, 0.1, "pass\n")
    result = ScenarioResult(
        "coalesced",
        False,
        0.5,
        "came back out of order",
        "2 frames",
        "2 frames",
        "reordered",
        minimal,
    )
    document: Report = json.loads(
        CheckReport("unix:/x", framing.describe(), (result,), 1).to_json()
    )
    return document


def changed(change: Callable[[Report], object]) -> Report:
    report = saved_report()
    change(report)
    return report


def case_of(report: Report) -> dict[str, Any]:
    case: dict[str, Any] = report["scenarios"][0]["minimal"]["case"]
    return case


def framing_of(report: Report) -> dict[str, Any]:
    framing: dict[str, Any] = report["scenarios"][0]["minimal"]["framing"]
    return framing


@attrs.frozen
class Run:
    code: int | str | None
    out: str
    err: list[str]
    path: Path


@pytest.fixture
def run_replay(
    tmp_path: Path, sock_dir: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Run]:
    """``triodaemon check --replay REPORT`` in-process, against no server."""

    def run(report: Report | str, *flags: str) -> Run:
        path = tmp_path / "report.json"
        # json.dumps writes a lone surrogate as its escape: the file is UTF-8.
        path.write_text(report if isinstance(report, str) else json.dumps(report))
        argv = ["--sock", str(sock_dir / "nobody.sock"), "--timeout", "1"]
        try:
            code: int | str | None = check_cli.main([*argv, "--replay", str(path), *flags])
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return Run(code, out, err.splitlines(), path)

    return run


def refused(run: Run, reason: str) -> None:
    """Exit 2 and exactly the one line ``reason`` on stderr, nothing on stdout."""
    assert run.code == 2
    assert run.err == [f"triodaemon check: error: cannot replay {run.path}: {reason}"]
    assert run.out == ""


# --- one per hostile input ---------------------------------------------------------


def test_brackets_nested_100000_deep(run_replay: Callable[..., Run]) -> None:
    refused(run_replay("[" * 100_000 + "]" * 100_000), "not JSON: nested more than 64 levels deep")


def test_scenarios_that_are_a_number(run_replay: Callable[..., Run]) -> None:
    refused(
        run_replay({"scenarios": 5}),
        "not a check report: scenarios: expected a list, got the number 5",
    )


def test_a_minimal_case_that_is_a_list(run_replay: Callable[..., Run]) -> None:
    report = changed(lambda r: r["scenarios"][0].update(minimal=[1, 2]))
    refused(
        run_replay(report),
        "not a check report: scenarios[0].minimal: expected an object or null, got a list",
    )


def test_a_minimal_case_without_its_case(run_replay: Callable[..., Run]) -> None:
    report = changed(lambda r: r["scenarios"][0]["minimal"].pop("case"))
    refused(run_replay(report), "not a check report: scenarios[0].minimal.case: missing")


def test_a_frame_that_holds_the_delimiter(run_replay: Callable[..., Run]) -> None:
    report = changed(lambda r: case_of(r).update(frames=[b"a\nb".hex(), "63"]))
    refused(
        run_replay(report),
        "not a case: scenarios[0].minimal.case.frames[0]: the payload contains the delimiter b'\\n'",
    )


def test_a_frame_over_the_framings_limit(run_replay: Callable[..., Run]) -> None:
    report = changed(lambda r: framing_of(r).update(max_frame=4))
    case_of(report).update(frames=[(b"x" * 10).hex(), "63"])
    refused(
        run_replay(report),
        "not a case: scenarios[0].minimal.case.frames[0]: "
        "a 10-byte frame exceeds the frame limit of 4 bytes",
    )


def test_a_nan_pause_written_by_json_dumps(run_replay: Callable[..., Run]) -> None:
    report = changed(lambda r: case_of(r).update(pause=math.nan))
    assert "NaN" in json.dumps(report)
    refused(run_replay(report), "not JSON: NaN is not JSON")


@pytest.mark.parametrize(
    ("pause", "got"),
    [("nan", 'the string "nan"'), (-1, "the number -1"), (-0.5, "the number -0.5")],
)
def test_a_nan_or_negative_pause(run_replay: Callable[..., Run], pause: object, got: str) -> None:
    report = changed(lambda r: case_of(r).update(pause=pause))
    refused(
        run_replay(report),
        "not a case: scenarios[0].minimal.case.pause: "
        f"expected seconds, a finite number 0 or more, got {got}",
    )


def test_a_half_close_of_the_string_false(run_replay: Callable[..., Run]) -> None:
    report = changed(lambda r: case_of(r).update(half_close="false"))
    refused(
        run_replay(report),
        'not a case: scenarios[0].minimal.case.half_close: expected true or false, got the string "false"',
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda r: case_of(r).update(half_close=1),
            "not a case: scenarios[0].minimal.case.half_close: expected true or false, "
            "got the number 1",
        ),
        (
            lambda r: case_of(r).update(read_delay=True),
            "not a case: scenarios[0].minimal.case.read_delay: expected seconds, a finite "
            "number 0 or more, got true",
        ),
        (
            lambda r: case_of(r).update(frames="6162"),
            'not a case: scenarios[0].minimal.case.frames: expected a list, got the string "6162"',
        ),
        (
            lambda r: case_of(r).update(frames=[5, "63"]),
            "not a case: scenarios[0].minimal.case.frames[0]: expected a string of hex "
            "digits, got the number 5",
        ),
        (
            lambda r: case_of(r).update(frames=["61 62", "63"]),
            "not a case: scenarios[0].minimal.case.frames[0]: expected a string of hex "
            'digits, got the string "61 62"',
        ),
        (
            lambda r: case_of(r).update(cuts=[[True], []]),
            "not a case: scenarios[0].minimal.case.cuts[0]: expected integers 0 or more, got true",
        ),
        (
            lambda r: case_of(r).update(cuts=[[1.5], []]),
            "not a case: scenarios[0].minimal.case.cuts[0]: expected integers 0 or more, "
            "got the number 1.5",
        ),
        (
            lambda r: case_of(r).update(cuts=[[]]),
            "not a case: scenarios[0].minimal.case.cuts: expected one list of cuts per "
            "frame (2), got 1",
        ),
        (
            lambda r: case_of(r).update(cuts=[[4], []]),
            "not a case: scenarios[0].minimal.case.cuts[0]: the number 4 is outside the "
            "frame's 3 wire bytes",
        ),
        (
            lambda r: case_of(r).pop("frames"),
            "not a case: scenarios[0].minimal.case.frames: expected a list, missing",
        ),
        (
            lambda r: r["scenarios"][0]["minimal"].update(case="ab"),
            'not a case: scenarios[0].minimal.case: expected an object, got the string "ab"',
        ),
        (
            lambda r: r["scenarios"][0].update(name=5),
            "not a check report: scenarios[0].name: expected a string of 1 to 64 "
            "characters, got the number 5",
        ),
        (
            lambda r: r["scenarios"][0].update(name="x" * 100_000),
            "not a check report: scenarios[0].name: expected a string of 1 to 64 "
            "characters, got 100000 characters",
        ),
        (
            lambda r: r["scenarios"].append(3),
            "not a check report: scenarios[1]: expected an object, got the number 3",
        ),
        (
            lambda r: framing_of(r).update(length_includes_header="false"),
            "not a framing: scenarios[0].minimal.framing.length_includes_header: expected "
            'true or false, got the string "false"',
        ),
        (
            lambda r: framing_of(r).update(length_bytes=True),
            "not a framing: scenarios[0].minimal.framing.length_bytes: expected an integer "
            "from 0 to 2**64-1, got true",
        ),
        (
            lambda r: framing_of(r).update(max_frame=1.5),
            "not a framing: scenarios[0].minimal.framing.max_frame: expected an integer "
            "from 0 to 2**64-1, got the number 1.5",
        ),
        (
            lambda r: framing_of(r).update(frame_size="3"),
            "not a framing: scenarios[0].minimal.framing.frame_size: expected an integer "
            'from 0 to 2**64-1, or null, got the string "3"',
        ),
        (
            lambda r: framing_of(r).update(kind="\x1b[2J" + "x" * 1000),
            'not a framing: scenarios[0].minimal.framing.kind: expected one of "line", '
            '"delimiter", "length", "varint", "fixed", "raw", got the string '
            '"\\u001b[2Jxxxxxxxxxxxxxxxxxxxxxxxxxxxx"...',
        ),
        (
            lambda r: framing_of(r).update(kind="delimiter", delimiter="2c" * 1000),
            "not a framing: scenarios[0].minimal.framing.delimiter: expected at most 256 "
            "bytes, got 1000",
        ),
        (
            lambda r: framing_of(r).update(colour="red"),
            'not a framing: scenarios[0].minimal.framing: unknown field "colour"',
        ),
        (
            lambda r: framing_of(r).pop("max_frame"),
            "not a framing: scenarios[0].minimal.framing.max_frame: missing",
        ),
        (
            lambda r: framing_of(r).update(max_frame=-(10**4000)),
            "not a framing: scenarios[0].minimal.framing.max_frame: expected an integer "
            "from 0 to 2**64-1, got the number -10000000000000000000000...",
        ),
        (
            lambda r: framing_of(r).update(max_frame=0),
            "not a framing: scenarios[0].minimal.framing: 'max_frame' must be > 0: 0",
        ),
    ],
    ids=[
        "half_close-1",
        "read_delay-true",
        "frames-a-string",
        "frame-a-number",
        "frame-hex-with-space",
        "cut-true",
        "cut-float",
        "cuts-one-short",
        "cut-outside",
        "no-frames",
        "case-a-string",
        "name-a-number",
        "name-too-long",
        "scenario-a-number",
        "length_includes_header-string",
        "length_bytes-true",
        "max_frame-float",
        "frame_size-string",
        "kind-escapes",
        "delimiter-too-long",
        "unknown-framing-field",
        "no-max_frame",
        "max_frame-huge",
        "max_frame-0",
    ],
)
def test_every_field_of_its_own_type(
    run_replay: Callable[..., Run], change: Callable[[Report], object], reason: str
) -> None:
    refused(run_replay(changed(change)), reason)


def test_the_line_quotes_the_file_escaped(run_replay: Callable[..., Run]) -> None:
    report = changed(lambda r: r["scenarios"][0].update(name="\x1b]52;c;aGk=\x07" * 20))
    run = run_replay(report)
    assert run.code == 2
    assert len(run.err) == 1
    assert run.err[0].isprintable()


# --- what reaches the terminal and the XML -----------------------------------------

#: Clear the screen; write "hi" to the clipboard (OSC 52); a bell; a newline that
#: would forge a line of ours.
ESCAPES = "\x1b[2J\x1b]52;c;aGk=\x07\nevil"


def test_a_name_with_terminal_escapes_is_printed_escaped(run_replay: Callable[..., Run]) -> None:
    run = run_replay(changed(lambda r: r["scenarios"][0].update(name=ESCAPES)))
    assert run.code == 1  # replayed, and failed: there is no server
    assert run.err == []
    assert all(line.isprintable() for line in run.out.splitlines())
    assert "\\x1b[2J\\x1b]52;c;aGk=\\x07\\nevil  FAIL" in run.out.splitlines()[2]


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("nul\x00 and \ufffe", "nul\\x00 and \\ufffe"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        (ESCAPES, "\\x1b[2J\\x1b]52;c;aGk=\\x07\\nevil"),
    ],
    ids=["nul-and-fffe", "lone-surrogate", "escapes"],
)
def test_the_junit_xml_of_any_report_is_well_formed(
    run_replay: Callable[..., Run], tmp_path: Path, name: str, shown: str
) -> None:
    xml = tmp_path / "results.xml"
    run = run_replay(
        changed(lambda r: r["scenarios"][0].update(name=name)), "--junit-xml", str(xml)
    )
    assert run.code == 1
    assert run.err == []
    suite = ElementTree.parse(xml).getroot()  # well-formed, or this raises
    (case,) = suite.iter("testcase")
    assert case.get("name") == shown
    assert shown in run.out


def test_json_output_of_a_hostile_name_is_ascii(run_replay: Callable[..., Run]) -> None:
    run = run_replay(changed(lambda r: r["scenarios"][0].update(name="lone \ud800")), "--json")
    assert run.code == 1
    assert run.out.isascii()
    assert json.loads(run.out)["scenarios"][0]["name"] == "lone \ud800"


# --- the library, and the real program ---------------------------------------------


def test_a_report_check_writes_reads_back() -> None:
    ((name, framing, case),) = cases_from_file(json.dumps(saved_report()))
    assert (name, framing, case) == ("coalesced", LINE, Case((b"ab", b"c"), ((1,), ()), 0.005))
    raw = Framing("raw")
    ((_, framing, case),) = cases_from_file(json.dumps(saved_report(raw)))
    assert framing == raw


def test_the_one_reader_of_a_saved_framing_reads_every_field_it_writes() -> None:
    assert set(_framing._JSON_FIELDS) == set(Framing().to_json())
    for framing in (
        Framing(),
        Framing("delimiter", b"\r\n", max_frame=10),
        Framing("length", length_bytes=2, byte_order="little", length_includes_header=True),
        Framing("fixed", frame_size=8),
    ):
        assert Framing.from_json(framing.to_json()) == framing


def test_a_case_refuses_what_is_not_seconds_or_a_bool() -> None:
    with pytest.raises(ValueError, match="^pause: expected seconds"):
        Case((b"a",), pause=math.nan)
    with pytest.raises(ValueError, match="^read_delay: expected seconds"):
        Case((b"a",), read_delay=math.inf)
    with pytest.raises(ValueError, match="^half_close: expected true or false"):
        Case((b"a",), half_close="false")  # type: ignore[arg-type]


async def test_replay_refuses_a_case_its_framing_cannot_send() -> None:
    with pytest.raises(ValueError, match=r"^not a case: case\.frames\[0\]: the payload contains"):
        await replay(UnixAddress("/nowhere"), LINE, Case((b"a\nb",)))


def test_shrinking_an_empty_raw_frame_keeps_its_cut_inside() -> None:
    raw = Framing("raw")
    shorter = _with_payload(raw, Case((b"ab",), ((1,),)), 0, b"")
    assert shorter is not None
    assert shorter.cuts == ((0,),)
    shorter.check_against(raw)


def test_the_program_says_one_line(tmp_path: Path, sock_dir: Path) -> None:
    """The real program, for the whole path: no traceback, one line, exit 2."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps(changed(lambda r: case_of(r).update(half_close="false"))))
    flags = ["--sock", str(sock_dir / "x.sock"), "--replay", str(path)]
    result = subprocess.run(
        [sys.executable, "-m", "triodaemon", "check", *flags],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"triodaemon check: error: cannot replay {path}: not a case: "
        'scenarios[0].minimal.case.half_close: expected true or false, got the string "false"'
    ]
