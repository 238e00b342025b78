"""`triodaemon check` names each class of bug real servers have, the same whatever the seed.

One buggy server per class (``tests/echo_servers.py``), run against the scenarios that
catch it with five seeds each: the kind must be the same every time, and the sentence
must say what the server does.
"""

from __future__ import annotations

import pytest
import trio

from triodaemon import Framing
from triodaemon.testing import run_check

from .test_check import check_cli, stdlib_server

SEEDS = range(1, 6)

#: (mode, server framing, check's framing, scenarios, kind, words of the sentence)
CLASSES = [
    (
        "rstrip",
        "line",
        Framing(),
        ("one-frame", "coalesced", "sustained"),
        "stripped",
        "the server strips whitespace from each line (rstrip)",
    ),
    (
        "universal-newlines",
        "line",
        Framing(),
        ("one-frame", "split", "sustained"),
        "line-ends",
        "the server takes \\r for a line end (universal newlines)",
    ),
    (
        "signed-length",
        "length",
        Framing("length"),
        ("split", "sustained"),
        "closed",
        "the first whose length header holds a byte of 0x80 or more",
    ),
    (
        "retry-partial-write",
        "line",
        Framing(),
        ("max-frame",),
        "duplicated",
        "came back twice",
    ),
    (
        "crlf-lines",
        "line",
        Framing(),
        ("one-frame", "coalesced", "split", "sustained"),
        "line-ends",
        "the server takes \\r\\n for a line end too and answers \\n",
    ),
    (
        "utf8-replace",
        "line",
        Framing(),
        ("one-frame", "coalesced"),
        "text",
        "the server treats the bytes as text (it decodes them as UTF-8, replacing",
    ),
    (
        "utf8-replace",
        "length",
        Framing("length"),
        ("one-frame", "edge-frames"),
        "text",
        "came back as U+FFFD (EF BF BD)",
    ),
    (
        "latin1-to-utf8",
        "line",
        Framing(),
        ("one-frame", "coalesced"),
        "text",
        "the server treats the bytes as text (it decodes them as Latin-1",
    ),
    (
        "retry-partial-write",
        "line",
        Framing(),
        ("coalesced", "max-frame", "slow-reader"),
        "duplicated",
        "came back twice, the second time right after the first",
    ),
    (
        "lose-a-byte",
        "line",
        Framing(),
        ("max-frame", "pipelining", "sustained"),
        "missing",
        "the server loses bytes (not frames) now and then",
    ),
    (
        "shared-buffer",
        "line",
        Framing(),
        ("split", "sustained"),
        "cross-talk",
        "the server mixes up its connections",
    ),
    (
        "header-counts-itself",
        "length",
        Framing("length"),
        ("one-frame", "coalesced", "split"),
        "header",
        "every length header came back 4 more than its payload",
    ),
    (
        "pad-short-reads",
        "fixed",
        Framing("fixed", frame_size=16),
        ("byte-by-byte", "split"),
        "padded",
        "the server pads a short read instead of waiting for the rest of the frame",
    ),
    (
        "16-per-read",
        "line",
        Framing(),
        ("coalesced",),
        "one-per-write",
        "the server seems to answer at most 16 frames of each read and drop the rest",
    ),
    (
        "pool",
        "line",
        Framing(),
        ("concurrency",),
        "limited",
        "the server serves at most 4 connections at a time",
    ),
]


@pytest.mark.parametrize(
    ("mode", "served", "framing", "scenarios", "kind", "words"),
    CLASSES,
    ids=[f"{c[0]}-{c[1]}" for c in CLASSES],
)
async def test_each_class_is_named_the_same_whatever_the_seed(
    mode: str,
    served: str,
    framing: Framing,
    scenarios: tuple[str, ...],
    kind: str,
    words: str,
) -> None:
    named: dict[tuple[int, str], str] = {}
    # (50 connections at once need a longer time limit on a loaded machine)
    timeout = 3 if "concurrency" in scenarios else 1
    async with stdlib_server(mode, served) as address:
        for seed in SEEDS:
            with trio.fail_after(60):
                report = await run_check(
                    address, framing, timeout=timeout, scenarios=scenarios, seed=seed, shrink_time=0
                )
            for result in report.results:
                named[seed, result.name] = result.kind
                assert words in result.detail, (seed, result.name, result.detail)
    assert named == {(seed, name): kind for seed in SEEDS for name in scenarios}


async def test_the_command_names_an_edit_and_shrinks_it() -> None:
    # The same through the command line, with a smallest case that fails the same way.
    async with stdlib_server("rstrip", "line") as address:
        code, scenarios = await check_cli(address, "--scenario", "one-frame", "--seed", "1")
    assert code == 1
    found = scenarios["one-frame"]
    assert found["kind"] == "stripped"
    assert "the server strips whitespace from each line (rstrip)" in found["minimal"]["detail"]
