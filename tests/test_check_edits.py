"""`triodaemon check` names the edits real buggy servers make to their echoes."""

from __future__ import annotations

import pytest

from .test_check import check_cli, stdlib_server

#: (mode, framing, extra check flags, {scenario: kind}, words of the sentence)
CAUGHT_TODAY = [
    (
        "retry-partial-write",
        "line",
        (),
        {"coalesced": "duplicated", "max-frame": "duplicated"},
        "came back twice, the second time right after the first",
    ),
    (
        "lose-a-byte",
        "line",
        (),
        {"max-frame": "missing", "pipelining": "missing"},
        "the server loses bytes (not frames) now and then",
    ),
    (
        "utf8-replace",
        "length",
        (),
        {"edge-frames": "text"},
        "came back as U+FFFD (EF BF BD)",
    ),
    (
        "latin1-to-utf8",
        "length",
        (),
        {"edge-frames": "text"},
        "came back as their UTF-8 encoding",
    ),
    (
        "shared-buffer",
        "line",
        (),
        {"sustained": "cross-talk"},
        "sent came back on this connection",
    ),
    (
        "header-counts-itself",
        "length",
        (),
        {"one-frame": "header", "coalesced": "header"},
        "every length header came back 4 more than its payload",
    ),
    (
        "pad-short-reads",
        "fixed",
        ("--frame-size", "16"),
        {"byte-by-byte": "padded", "split": "padded"},
        "the server pads a short read instead of waiting for the rest of the frame",
    ),
    (
        "16-per-read",
        "line",
        (),
        {"coalesced": "one-per-write"},
        "the server seems to answer at most 16 frames of each read and drop the rest",
    ),
]


@pytest.mark.parametrize(
    ("mode", "framing", "flags", "kinds", "words"), CAUGHT_TODAY, ids=[c[0] for c in CAUGHT_TODAY]
)
async def test_each_edit_is_named_by_the_scenarios_that_catch_it(
    mode: str, framing: str, flags: tuple[str, ...], kinds: dict[str, str], words: str
) -> None:
    async with stdlib_server(mode, framing) as address:
        chosen = [arg for name in kinds for arg in ("--scenario", name)]
        code, scenarios = await check_cli(
            address, "--framing", framing, *flags, *chosen, "--seed", "1", timeout=2
        )
    assert code == 1
    for name, kind in kinds.items():
        found = scenarios[name]
        assert (found["kind"], name) == (kind, name), found["detail"]
        if found["detail"].startswith("the same kind of failure as"):
            continue
        assert words in found["detail"]


# needs the payload alphabet: today's payloads are ASCII tags without trailing
# whitespace or \r, which these servers echo intact.
NEEDS_THE_ALPHABET = [
    ("rstrip", "stripped", "the server strips whitespace from each line (rstrip)"),
    ("universal-newlines", "line-ends", "the server takes \\r for a line end"),
    ("utf8-replace", "text", "the server treats the bytes as text"),
]


@pytest.mark.xfail(strict=True, reason="needs the payload alphabet")
@pytest.mark.parametrize(("mode", "kind", "words"), NEEDS_THE_ALPHABET)
async def test_line_servers_that_edit_text_are_named(mode: str, kind: str, words: str) -> None:
    async with stdlib_server(mode, "line") as address:
        code, scenarios = await check_cli(address, "--scenario", "coalesced", "--seed", "1")
    assert code == 1
    assert scenarios["coalesced"]["kind"] == kind, scenarios["coalesced"]["detail"]
    assert words in scenarios["coalesced"]["detail"]
