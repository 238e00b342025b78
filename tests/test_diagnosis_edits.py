"""The edit script of an echo, and the kinds it names: sans-I/O, over many payloads."""

from __future__ import annotations

import random
import time

import pytest

from triodaemon import Framing
from triodaemon.testing.check._diagnosis import Transcript, diagnose, wire
from triodaemon.testing.check._edit_kinds import EditJudge
from triodaemon.testing.check._edits import Edit, align

SEEDS = range(8)
LINE = Framing()
LENGTH = Framing("length")
FIXED = Framing("fixed", frame_size=16)
LATE = ", then nothing more for 1s, until the time limit"


def payloads(rng: random.Random, framing: Framing, count: int = 12) -> list[bytes]:
    """Payloads of many shapes: ASCII tags, arbitrary bytes (>= 0x80, NUL, \\r,
    spaces), never the delimiter; at least 8 bytes each."""
    frames = []
    for index in range(count):
        size = framing.frame_size or rng.randint(8, 80)
        if rng.random() < 0.5:
            data = "".join(f"t{index}.{n}|" for n in range(size)).encode()[:size]
        else:
            data = bytes(rng.randrange(256) for _ in range(size))
        if framing.kind == "line":
            data = data.replace(b"\n", b"\x00")
        frames.append(data)
    return frames


def judge(
    framing: Framing,
    frames: list[bytes],
    received: bytes,
    write_ends: tuple[int, ...] = (),
    others: dict[str, bytes] | None = None,
) -> tuple[str, str]:
    short = len(received) < len(wire(framing, frames))
    transcript = Transcript(received, LATE if short else "", timed_out=short)
    found = diagnose(framing, frames, transcript, write_ends, others)
    assert found is not None
    return found.kind, found.text


@pytest.mark.parametrize("seed", SEEDS)
def test_a_stretch_written_twice_is_duplicated(seed: int) -> None:
    rng = random.Random(seed)
    framing = rng.choice([LINE, LENGTH, Framing("raw")])
    frames = payloads(rng, framing)
    sent = wire(framing, frames)
    start = rng.randrange(0, len(sent) // 3)
    end = start + rng.randint(2, len(sent) // 3)  # the server wrote start..end twice
    received = (sent[:end] + sent[start:end] + sent[end:])[: len(sent)]
    kind, text = judge(framing, frames, received)
    assert kind == "duplicated", text
    assert f"({end - start} bytes," in text
    assert "came back twice" in text
    assert "retry that does not skip what was already sent" in text


@pytest.mark.parametrize("seed", SEEDS)
def test_a_byte_gone_here_and_there_is_missing(seed: int) -> None:
    rng = random.Random(seed)
    framing = rng.choice([LINE, LENGTH])
    frames = payloads(rng, framing)
    sent = wire(framing, frames)
    gone = sorted(rng.sample(range(8, len(sent) - 40), 3))
    received = b"".join(
        sent[a + 1 : b] for a, b in zip([-1, *gone], [*gone, len(sent)], strict=True)
    )
    kind, text = judge(framing, frames, received)
    assert kind == "missing", text
    assert "3 bytes never came back, in " in text  # (2 places when two are close)
    assert "the rest came back intact" in text


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("transform", "said"),
    [
        (lambda data: data.decode("utf-8", "replace").encode(), "as U+FFFD"),
        (lambda data: data.decode("latin-1").encode(), "as their UTF-8 encoding"),
    ],
    ids=["utf8-replace", "latin1-to-utf8"],
)
def test_bytes_treated_as_text_are_named_text(seed: int, transform: object, said: str) -> None:
    rng = random.Random(seed)
    framing = rng.choice([LINE, Framing("raw")])
    frames = payloads(rng, framing)
    frames[rng.randrange(len(frames))] += b"\xff\x80"  # not UTF-8, whatever the rest
    sent = wire(framing, frames)
    assert callable(transform)
    received = transform(sent)[: len(sent)]
    kind, text = judge(framing, frames, received)
    assert kind == "text", text
    assert said in text
    assert "the server treats the bytes as text" in text


@pytest.mark.parametrize("seed", SEEDS)
def test_a_length_header_that_counts_itself_is_named_header(seed: int) -> None:
    rng = random.Random(seed)
    frames = payloads(rng, LENGTH)
    received = b"".join((len(p) + 4).to_bytes(4, "big") + p for p in frames)
    kind, text = judge(LENGTH, frames, received)
    assert kind == "header", text
    assert "every length header came back 4 more than its payload" in text
    assert f"frame 1's header said {len(frames[0]) + 4}, for {len(frames[0])}" in text
    assert "count the header itself" in text


@pytest.mark.parametrize("seed", SEEDS)
def test_short_reads_padded_to_the_frame_size_are_named_padded(seed: int) -> None:
    rng = random.Random(seed)
    frames = payloads(rng, FIXED, 6)
    sent = wire(FIXED, frames)
    cuts = sorted({rng.randrange(1, len(sent)) for _ in range(4)} | {21})
    reads = [sent[a:b] for a, b in zip([0, *cuts], [*cuts, len(sent)], strict=True)]
    received = b"".join(  # each read, frame by frame, the short last one padded
        read[n : n + 16].ljust(16, b"\x00") for read in reads for n in range(0, len(read), 16)
    )[: len(sent)]
    kind, text = judge(FIXED, frames, received, tuple(cuts))
    assert kind == "padded", text
    assert "where a write of the client ended" in text
    assert "the server pads a short read instead of waiting for the rest of the frame" in text


def test_the_padded_sentence_in_full() -> None:
    frames = [b"a" * 16, b"bcdefghijklmnopq"]
    received = b"a" * 16 + b"bcdefgh" + bytes(9)
    kind, text = judge(FIXED, frames, received, (23,))
    assert (kind, text) == (
        "padded",
        "frame 2 came back as its first 7 bytes, where a write of the client ended, then 9 "
        "zero bytes: the server pads a short read instead of waiting for the rest of the frame",
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_trailing_whitespace_gone_is_stripped(seed: int) -> None:
    rng = random.Random(seed)
    frames = payloads(rng, LINE)
    for index in rng.sample(range(len(frames)), 3):
        frames[index] += rng.choice([b" ", b"\t", b" \r", b"  \t"])
    received = b"".join(frame.rstrip() + b"\n" for frame in frames)
    kind, text = judge(LINE, frames, received)
    assert kind == "stripped", text
    assert "at the end of" in text  # (of frame N, or of each line: with the first frame)
    assert "frame " in text
    assert "the server strips whitespace from each line (rstrip)" in text


@pytest.mark.parametrize("seed", SEEDS)
def test_a_lone_carriage_return_cut_as_a_line_is_line_ends(seed: int) -> None:
    rng = random.Random(seed)
    frames = payloads(rng, LINE)
    frames = [frame.replace(b"\r", b"\x00") for frame in frames]
    index = rng.randrange(len(frames))
    frames[index] = frames[index][:3] + b"\r" + frames[index][3:]
    sent = wire(LINE, frames)
    received = sent.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    kind, text = judge(LINE, frames, received)
    assert kind == "line-ends", text
    assert f"a lone \\r in frame {index + 1} came back as \\n" in text
    assert "the server takes \\r for a line end (universal newlines)" in text


def test_carriage_return_before_the_newline_gone_is_line_ends() -> None:
    frames = [b"first\r", b"second", b"third\r"]
    received = b"first\nsecond\nthird\n"
    kind, text = judge(LINE, frames, received)
    assert kind == "line-ends", text
    assert "the \\r\\n ending frame 1 came back as \\n" in text


@pytest.mark.parametrize("seed", SEEDS)
def test_bytes_another_connection_sent_are_cross_talk(seed: int) -> None:
    rng = random.Random(seed)
    framing = rng.choice([LINE, LENGTH])
    mine = payloads(rng, framing)
    others = {
        f"connection {n} of 4": wire(framing, payloads(random.Random(seed * 10 + n), framing))
        for n in (2, 3, 4)
    }
    sent = wire(framing, mine)
    theirs = others["connection 3 of 4"]
    at, start = rng.randrange(len(sent)), rng.randrange(len(theirs) - 40)
    received = (sent[:at] + theirs[start : start + 24] + sent[at:])[: len(sent)]
    kind, text = judge(framing, mine, received, others=others)
    assert kind == "cross-talk", text
    assert "that connection 3 of 4 sent came back on this connection" in text
    assert "the server mixes up its connections" in text


def test_frames_answered_sixteen_per_read_say_so() -> None:
    frames = payloads(random.Random(1), LINE, 64)
    received = wire(LINE, frames[:16])
    kind, text = judge(LINE, frames, received)
    assert kind == "one-per-write", text
    assert "the server seems to answer at most 16 frames of each read and drop the rest" in text


def test_a_64_mib_mismatch_is_diagnosed_well_under_a_second() -> None:
    rng = random.Random(0)
    payload = rng.randbytes(64 * 1024 * 1024).replace(b"\n", b"\x00")
    damaged = bytearray(payload)
    for offset in range(4096, len(damaged), 1 << 19):
        del damaged[offset]  # one byte gone every 512 KiB: more edits than are worked out
    framing = Framing(max_frame=len(payload))
    sent, got = wire(framing, [payload]), bytes(damaged) + b"\n"
    start = time.perf_counter()  # the edit script and its name (the rest is linear copies)
    judged = EditJudge(framing, [payload], sent, got, set(), {})
    assert judged.named() is None
    assert judged.missing() is not None
    assert time.perf_counter() - start < 0.5
    kind, text = judge(framing, [payload], got)
    assert kind == "missing", text
    assert text.startswith("at least 64 bytes never came back")


def test_align_names_each_edit_with_its_offsets() -> None:
    sent = b"0123456789abcdefghijklmnopqrstuvwxyz" * 3
    got = sent[:10] + sent[5:10] + sent[10:40] + sent[41:]
    edits, complete = align(sent, got)
    assert complete
    assert edits == [Edit(10, b"", 10, b"56789"), Edit(40, b"4", 45, b"")]
