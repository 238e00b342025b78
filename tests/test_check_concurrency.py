"""`triodaemon check` against servers that fail under many connections, or die.

A server that serves only a few connections at a time (``limited``), one that leaks a
descriptor per connection until new ones are never answered (``leak``), and one that
dies in the middle of the battery (``stopped``, and the scenarios after it not run).
"""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree

import pytest
import trio

from triodaemon import Framing
from triodaemon.testing import SCENARIOS, ScenarioResult, run_check
from triodaemon.testing.pytest_plugin import EchoServerFactory

from .echo_servers import FD_LEAK_CONNECTIONS, POOL_WORKERS
from .test_check import check_cli, stdlib_server

#: How far the number of connections a leak is named after may be from the number
#: the server has descriptors for (the run's own first connect, and the order in which
#: 50 concurrent connects are accepted, move it by a few).
LEAK_TOLERANCE = 4
#: Scenarios that open one connection of their own.
ONE_CONNECTION = [
    "one-frame",
    "coalesced",
    "byte-by-byte",
    "edge-frames",
    "max-frame",
    "pipelining",
    "half-close",
    "slow-reader",
]


async def test_a_pool_of_workers_serves_at_most_that_many_connections_whatever_the_seed() -> None:
    """50 connections held open at once: the pool answers 4 and nothing more until
    some close; it is limited, not leaking (a fresh connection is answered after)."""
    async with stdlib_server("pool") as address:
        for seed in ("1", "2", "3", "42", "4294967295"):
            code, scenarios = await check_cli(
                address, "--scenario", "concurrency", "--seed", seed, shrink=0
            )
            assert code == 1
            found = scenarios["concurrency"]
            assert found["kind"] == "limited", found
            detail = found["detail"]
            assert f"the server serves at most {POOL_WORKERS} connections at a time" in detail
            assert f"{POOL_WORKERS} were answered; the other {50 - POOL_WORKERS} got nothing" in (
                detail
            )
            assert detail.endswith("; once they had closed, a fresh connection was answered")
            assert found["received"] == (
                f"the whole echo on {POOL_WORKERS} connections (connections 1-{POOL_WORKERS}), "
                f"nothing on connections {POOL_WORKERS + 1}-50"
            )


@pytest.mark.parametrize("framing", ["line", "length"])
async def test_correct_servers_pass_fast_and_the_same_echo_in_a_pool_is_limited(
    framing: str,
) -> None:
    async with stdlib_server("good", framing) as address:
        start = trio.current_time()
        code, scenarios = await check_cli(address, "--framing", framing)
        took = trio.current_time() - start  # (Python's start included)
    assert code == 0
    assert list(scenarios) == list(SCENARIOS)
    assert all(s["passed"] for s in scenarios.values()), scenarios
    assert took < 10
    async with stdlib_server("pool", framing) as address:
        code, scenarios = await check_cli(address, "--framing", framing, shrink=0)
    assert code == 1
    assert scenarios["concurrency"]["kind"] == "limited"
    # Limited, never dead or leaking: every scenario ran, and none was blamed for it.
    assert list(scenarios) == list(SCENARIOS)
    kinds = {s["kind"] for s in scenarios.values() if not s["passed"]}
    assert not kinds & {"leak", "stopped", "not-run"}, scenarios


async def test_a_descriptor_leak_is_named_with_about_how_many_connections() -> None:
    """The server keeps every socket; once out of descriptors, the kernel still
    accepts connections that nobody answers, even after every other one closed."""
    async with stdlib_server("fd-leak") as address:
        code, scenarios = await check_cli(
            address, "--scenario", "one-frame", "--scenario", "concurrency", "--scenario", "split"
        )
    assert code == 1
    assert scenarios["one-frame"]["passed"]
    found = scenarios["concurrency"]
    assert found["kind"] == "leak", found
    detail = found["detail"]
    match = re.match(r"after about (\d+) connections, new ones are never answered: ", detail)
    assert match, detail
    assert abs(int(match.group(1)) - FD_LEAK_CONNECTIONS) <= LEAK_TOLERANCE, detail
    assert "after scenario concurrency a fresh connection, with every earlier one closed, " in (
        detail
    )
    assert "limited" not in detail
    assert "serves at most" not in detail
    assert scenarios["split"] == {
        "name": "split",
        "passed": False,
        "seconds": 0.0,
        "detail": "not run: the server stopped answering after scenario concurrency",
        "sent": "",
        "received": "",
        "kind": "not-run",
        "minimal": None,
        "shrink_note": "",
    }


@pytest.mark.parametrize(
    ("mode", "framing"), [("die-after-unread", "line"), ("crash-on-reset", "length")]
)
async def test_a_server_that_dies_mid_battery_names_the_scenario_and_runs_no_more(
    mode: str, framing: str, tmp_path: Path
) -> None:
    path = tmp_path / "check.xml"
    async with stdlib_server(mode, framing) as address:
        code, scenarios = await check_cli(
            address,
            "--framing",
            framing,
            "--junit-xml",
            str(path),
            *("--scenario", "one-frame", "--scenario", "resilience"),
            *("--scenario", "coalesced", "--scenario", "half-close"),
        )
    assert code == 1
    assert list(scenarios) == ["one-frame", "resilience", "coalesced", "half-close"]
    assert scenarios["one-frame"]["passed"]
    resilience = scenarios["resilience"]
    assert not resilience["passed"]
    assert resilience["kind"] == "stopped"
    said = (
        "after scenario resilience the server stopped answering: a fresh connection was "
        "not served one frame (it was refused: cannot connect to "
    )
    assert said in resilience["detail"]
    assert resilience["detail"].endswith(
        "): the server seems to have exited, or closed its listener"
    )
    for name in ("coalesced", "half-close"):
        assert not scenarios[name]["passed"]
        assert scenarios[name]["kind"] == "not-run"
        assert scenarios[name]["detail"] == (
            "not run: the server stopped answering after scenario resilience"
        )
    suite = ElementTree.parse(path).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "2")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert cases["resilience"].find("failure") is not None
    skipped = cases["half-close"].find("skipped")
    assert skipped is not None
    assert (
        skipped.get("message") == "not run: the server stopped answering after scenario resilience"
    )


async def test_the_daemon_passes_and_a_fresh_connection_follows_every_scenario(
    echo_server_factory: EchoServerFactory,
) -> None:
    server = await echo_server_factory(Framing())
    stats = server.daemon.stats
    accepted: dict[str, int] = {}

    def started(name: str) -> None:
        accepted[name] = stats.connections_accepted

    def ended(result: ScenarioResult) -> None:
        accepted[result.name] = stats.connections_accepted - accepted[result.name]

    with trio.fail_after(30):
        report = await run_check(server.unix, timeout=3, on_start=started, on_result=ended)
    assert report.passed, report.table()
    assert [result.name for result in report.results] == list(SCENARIOS)
    # Its own connection, and the fresh one that must be answered after it.
    assert {name: accepted[name] for name in ONE_CONNECTION} == dict.fromkeys(ONE_CONNECTION, 2)
    assert accepted["concurrency"] == 51
