"""What `check` says about an echo that differs, and the cases it shrinks: no sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triodaemon import Framing, UnixAddress
from triodaemon.testing.check._case import (
    Case,
    cut_at,
    python_snippet,
    shrink,
)
from triodaemon.testing.check._diagnosis import KINDS, Transcript, diagnose, wire

LINE = Framing()
LENGTH = Framing("length")


def frames_of(count: int, size: int = 12) -> list[bytes]:
    return [(b"frame%d." % n * size)[:size] for n in range(count)]


def echo_of(framing: Framing, payloads: list[bytes]) -> bytes:
    return wire(framing, payloads)


def test_a_right_echo_has_no_diagnosis() -> None:
    sent = frames_of(3)
    assert diagnose(LINE, sent, Transcript(echo_of(LINE, sent))) is None


@pytest.mark.parametrize("framing", [LINE, LENGTH], ids=["line", "length"])
def test_reordered_frames_are_named_with_the_order(framing: Framing) -> None:
    sent = frames_of(6)
    back = [sent[0], sent[2], sent[1], sent[3], sent[5], sent[4]]
    found = diagnose(framing, sent, Transcript(echo_of(framing, back)))
    assert found is not None
    assert found.kind == "reordered"
    assert "4 of them came back out of order" in found.text
    assert "frame 3 came back in place 2, where frame 2 belonged" in found.text
    assert "from place 2: 3, 2, 4, 6, 5" in found.text
    assert "byte" not in found.text  # not "came back different from its byte 9 on"


def test_reordered_and_incomplete_says_both() -> None:
    sent = frames_of(4)
    ended = ", then nothing more for 5s, until the time limit"
    found = diagnose(LINE, sent, Transcript(echo_of(LINE, [sent[1], sent[0]]), ended, True))
    assert found is not None
    assert found.kind == "reordered"
    assert "and 2 never came back" in found.text
    assert ended in found.text


@pytest.mark.parametrize("framing", [LINE, LENGTH], ids=["line", "length"])
def test_truncation_names_the_size(framing: Framing) -> None:
    sent = [b"short", b"x" * 5000, b"also short", b"y" * 4097]
    back = [frame[:4096] for frame in sent]
    found = diagnose(framing, sent, Transcript(echo_of(framing, back)))
    assert found is not None
    assert found.kind == "truncated"
    assert "frames longer than 4096 bytes came back cut at 4096 bytes" in found.text
    assert "frames 2, 4; the others came back whole" in found.text
    assert "take each read for one message" not in found.text


def test_frames_cut_into_pieces_of_a_size_are_chopped() -> None:
    sent = [b"a" * 10, b"bb", b"c" * 9]
    back = [b"a" * 4, b"a" * 4, b"aa", b"bb", b"c" * 4, b"c" * 4, b"c"]
    found = diagnose(LINE, sent, Transcript(echo_of(LINE, back)))
    assert found is not None
    assert found.kind == "chopped"
    assert "cut at every 4 bytes" in found.text


@pytest.mark.parametrize("framing", [LINE, LENGTH], ids=["line", "length"])
def test_skipped_empty_frames_are_named(framing: Framing) -> None:
    sent = [b"", b"one", b"", b"two", b""]
    ended = ", then nothing more for 1s, until the time limit"
    found = diagnose(framing, sent, Transcript(echo_of(framing, [b"one", b"two"]), ended, True))
    assert found is not None
    assert found.kind == "skipped-empty"
    what = "empty lines" if framing is LINE else "empty frames"
    assert f"exactly what was sent minus the 3 {what} (frames 1, 3, 5)" in found.text
    assert ended in found.text


def test_echoes_still_arriving_at_the_limit_are_slow_not_lost() -> None:
    sent = frames_of(50)
    back = echo_of(LINE, sent[:5])
    step = len(back) // 5
    arrivals = tuple((0.2 * (n + 1), step * (n + 1)) for n in range(5))
    transcript = Transcript(back, ", then nothing more for 0s", True, arrivals, 1.05)
    found = diagnose(LINE, sent, transcript)
    assert found is not None
    assert found.kind == "slow"
    assert "still arriving" in found.text
    assert "5 frames/s" in found.text
    assert "--timeout" in found.text
    assert "never came back" not in found.text


def test_echoes_that_stopped_long_before_the_limit_are_lost() -> None:
    sent = frames_of(50)
    back = echo_of(LINE, sent[:40])
    arrivals = ((0.001, len(back) // 2), (0.002, len(back)))
    ended = ", then nothing more for 5s, until the time limit"
    found = diagnose(LINE, sent, Transcript(back, ended, True, arrivals, 5.0))
    assert found is not None
    assert found.kind == "lost"
    assert "the echoes of 10 frames never came back" in found.text
    assert ended in found.text


def test_frames_cut_where_the_writes_were_cut() -> None:
    sent = [b"hello world"]
    wire_ends = [5]  # the first write was b"hello"
    back = [b"hello", b" world"]
    found = diagnose(LINE, sent, Transcript(echo_of(LINE, back)), wire_ends)
    assert found is not None
    assert found.kind == "read-cut"
    assert "where the writes were cut" in found.text


def test_one_corrupted_frame_in_many_is_named_with_the_rest_intact() -> None:
    sent = frames_of(2000)
    back = list(sent)
    back[999] = back[999][:-1] + b"?"
    found = diagnose(LINE, sent, Transcript(echo_of(LINE, back)))
    assert found is not None
    assert found.kind == "corrupted"
    assert "frame 1000 came back different from its byte 11 on" in found.text
    assert "the other 1999 came back intact" in found.text


def test_pieces_of_frames_are_a_partial_tail_not_corruption() -> None:
    sent = [b"abcdef", b"ghijkl"]
    found = diagnose(LINE, sent, Transcript(echo_of(LINE, [b"def", b"ghijkl"])))
    assert found is not None
    assert found.kind == "partial-tail"
    assert "a piece of the b'abcdef' sent" in found.text


def test_dropped_frames_are_listed() -> None:
    sent = frames_of(5)
    found = diagnose(LINE, sent, Transcript(echo_of(LINE, [sent[0], sent[3]])))
    assert found is not None
    assert found.kind == "dropped"
    assert "frames 2, 3, 5 never came back" in found.text


@pytest.mark.parametrize(
    "ended", [", then the server closed the connection", ", then the server reset the connection"]
)
@pytest.mark.parametrize(
    "back",
    [
        [b"frame1.frame", b"frame0.frame"],  # reordered
        [b"frame0.frame"[:4], b"frame1.frame"[:4]],  # truncated
        [b"frame0.frame", b"frame1.fXame"],  # different
    ],
)
def test_every_diagnosis_says_how_the_exchange_ended(ended: str, back: list[bytes]) -> None:
    sent = frames_of(2)
    found = diagnose(LINE, sent, Transcript(echo_of(LINE, back) + b"\x00", ended))
    assert found is not None
    assert ended in found.text


def test_a_case_writes_its_frames_in_its_pieces() -> None:
    frames = [b"ab", b"cd"]
    case = cut_at(LINE, frames, [1, 3, 4], 0.005)
    assert case.writes(LINE) == [(0.0, b"a"), (0.005, b"b\n"), (0.005, b"c"), (0.005, b"d\n")]
    assert case.write_ends(LINE) == [1, 3, 4, 6]
    assert Case.from_json(case.to_json()) == case
    assert Framing.from_json(Framing("delimiter", delimiter=b"\r\n").to_json()) == (
        Framing("delimiter", delimiter=b"\r\n")
    )
    with pytest.raises(ValueError, match="not a case"):
        Case.from_json({"frames": ["zz"], "cuts": [[]]})


async def test_shrinking_keeps_the_kind_and_finds_the_smallest() -> None:
    """A fake server that cuts frames longer than 100 bytes: the smallest case is
    one frame of 101 bytes, in one write."""
    frames = [b"x" * size for size in (10, 500, 3, 2000, 7)]
    case = cut_at(LINE, frames, [5, 260, 700, 1500], 0.005)
    tried: list[Case] = []

    async def run(candidate: Case) -> str | None:
        tried.append(candidate)
        return "truncated" if any(len(frame) > 100 for frame in candidate.frames) else None

    result = await shrink(LINE, case, "truncated", run)
    assert result.case.frames == (b"x" * 101,)
    assert result.case.writes(LINE) == [(0.0, b"x" * 101 + b"\n")]
    assert result.tries == len(tried)
    assert result.improvements > 0


async def test_shrinking_keeps_what_a_failure_needs() -> None:
    """A fake server that fails only when a frame is split across two writes."""
    frames = [b"abcdef", b"ghij", b"kl"]
    case = cut_at(LINE, frames, [2, 9], 0.005)

    async def run(candidate: Case) -> str | None:
        return "read-cut" if any(cut > 0 for cuts in candidate.cuts for cut in cuts) else None

    result = await shrink(LINE, case, "read-cut", run)
    assert len(result.case.frames) == 1
    assert len(result.case.writes(LINE)) == 2
    assert len(result.case.frames[0]) == 1  # one byte, then the delimiter


@settings(max_examples=300, deadline=None)
@given(
    framing=st.sampled_from([LINE, LENGTH, Framing("varint"), Framing("raw")]),
    sent=st.lists(st.binary(max_size=20).filter(lambda b: b"\n" not in b), max_size=8),
    received=st.binary(max_size=200),
    cut=st.integers(min_value=0, max_value=200),
    ended=st.sampled_from(["", ", then the server closed the connection"]),
    timed_out=st.booleans(),
)
def test_any_echo_gets_a_diagnosis_and_never_an_error(
    framing: Framing, sent: list[bytes], received: bytes, cut: int, ended: str, timed_out: bool
) -> None:
    """Whatever comes back (an echo with bytes changed, cut, added), the judge names
    a kind and never raises."""
    expected = wire(framing, sent)
    for back in (received, expected[:cut] + received[:3], expected + received[:2], expected[:cut]):
        transcript = Transcript(back, ended, timed_out, ((0.1, len(back)), (0.2, len(back))), 0.3)
        found = diagnose(framing, sent, transcript, [cut] if 0 < cut < len(expected) else [])
        if back == expected and not ended:
            assert found is None
        else:
            assert found is not None
            assert found.kind in KINDS
            assert found.text


def test_frames_never_sent_among_the_echoes_are_extra_not_fragments() -> None:
    sent = frames_of(3)
    back = [sent[0], b"", sent[1], b"", sent[2], b""]
    found = diagnose(LINE, sent, Transcript(echo_of(LINE, back)[: len(echo_of(LINE, sent))]))
    assert found is not None
    assert found.kind == "extra"


def test_a_greeting_before_the_echo_is_extra() -> None:
    sent = frames_of(2)
    expected = echo_of(LINE, sent)
    back = (b"HELLO\n" + expected)[: len(expected)]  # the client reads as much as it sent
    found = diagnose(LINE, sent, Transcript(back))
    assert found is not None
    assert found.kind == "extra"
    assert "6 bytes that were never sent came first, b'HELLO\\n'" in found.text
    assert "not finished" not in found.text
    one = diagnose(LINE, sent, Transcript((b">" + expected)[: len(expected)]))
    assert one is not None
    assert "1 byte that was never sent came first, b'>'" in one.text


def test_a_few_dropped_frames_are_not_blamed_on_reads() -> None:
    sent = frames_of(500)
    back = sent[:299] + sent[300:]
    found = diagnose(LINE, sent, Transcript(echo_of(LINE, back)))
    assert found is not None
    assert found.kind == "dropped"
    assert "frame 300 never came back" in found.text
    assert "the server loses a frame now and then" in found.text


@pytest.mark.parametrize(("blocked", "kind"), [(True, "stalled"), (False, "slow")])
def test_writes_the_time_limit_cut_short_are_named(blocked: bool, kind: str) -> None:
    sent = frames_of(1, 20)
    transcript = Transcript(b"", ", then nothing more for 1s", True, (), 1.0, 15, blocked)
    found = diagnose(LINE, sent, transcript)
    assert found is not None
    assert found.kind == kind
    assert "the client could write only 6 of 21 bytes before the time limit" in found.text


def test_a_close_after_frames_on_the_connection_says_after_how_many() -> None:
    sent = frames_of(4)
    back = echo_of(LINE, sent[:2])
    ended = ", then the server closed the connection"
    found = diagnose(LINE, sent, Transcript(back, ended, history=48))
    assert found is not None
    assert found.kind == "closed"
    assert "closed the connection after 50 frames on it" in found.text


def test_a_close_that_answers_a_half_close_is_not_the_failure() -> None:
    sent = frames_of(3)
    back = echo_of(LINE, sent[:1])
    ended = ", then the server closed the connection"
    found = diagnose(LINE, sent, Transcript(back, ended))
    assert found is not None
    assert found.kind == "closed"  # a close of its own, after 1 frame
    found = diagnose(LINE, sent, Transcript(back, ended, half_closed=True))
    assert found is not None
    # The close answers the client's: what is wrong is that 1 frame of a write came back.
    assert found.kind == "one-per-write"


def test_the_snippet_of_a_half_close_case_wants_the_servers_eof() -> None:
    case = Case((b"ab",), half_close=True)
    script = python_snippet(UnixAddress("relative.sock"), LINE, case, 1.0)
    assert "right = got == expected and eof" in script
    assert "s.shutdown(socket.SHUT_WR)" in script
    assert f"s.connect({str(Path('relative.sock').absolute())!r})" in script
    compile(script, "snippet", "exec")
