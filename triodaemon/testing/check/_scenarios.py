"""The scenarios of ``check``: what each one sends, and how.

Strategy: each scenario is a function of a :class:`~._engine.Checker` that builds
cases (frames and the writes that carry them) and has the checker exchange and
judge them; payloads are tagged so that a fragment that comes back can be placed.
Every random choice comes from ``checker.rng``, seeded per scenario by the run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from ..._errors import count
from ..._framing import Framing
from .._chunkings import boundary_offsets
from ._case import Case, cut_at
from ._diagnosis import Transcript, wire
from ._engine import Checker, Failed, abort, close_now

#: Pause between writes meant to arrive as separate reads (with TCP_NODELAY on
#: loopback, a few milliseconds is plenty; judging never depends on it).
_GAP = 0.005
#: Largest frame the max-frame scenario sends, whatever ``--max-frame`` says.
_MAX_FRAME_BUDGET = 64 * 1024 * 1024
#: At most this many split points in the split scenario, and how many of them are
#: tried at once (each on a connection of its own).
_MAX_SPLITS = 48
_SPLITS_AT_ONCE = 8
#: The sustained scenario: connections, frames on each, the largest frame.
_SUSTAINED_CONNECTIONS = 4
_SUSTAINED_FRAMES = 1500
_SUSTAINED_LARGEST = 4096
#: The resilience scenario: abusive clients of each kind, good frames between them.
_ABUSERS = 5
_GOOD_ROUNDS = 3
#: The never-reading client stops writing after this much (its peer's buffers are
#: long full by then), or once its writes have been stuck for _STUCK seconds.
_NEVER_READ_BYTES = 32 * 1024 * 1024
_STUCK = 0.1


#: Bytes the payloads carry after their tags, the most telling first: a lone ``\r``,
#: NUL, bytes that are not UTF-8 (a lead byte before ASCII, a lone continuation
#: byte, 0xff, Latin-1's e-acute), then every other byte value. A payload with room
#: for a chunk after its first tag (one-frame's) holds the first ones; the
#: sustained scenario's hold every byte value. (Whatever would end a delimited frame
#: early is replaced.)
FILLER = b"\r\x00\xc3(\x80\xff\xe9 "
FILLER += bytes(value for value in range(256) if value not in FILLER)
_FILLER_TWICE = FILLER + FILLER  # (a chunk may wrap around)
#: Filler bytes after each tag.
_FILL = 7
#: Whitespace at a payload's start, and whitespace and ``\r`` at its end (``\r\n``
#: on the wire in line framing; for a longer delimiter, its first bytes): what a
#: server that strips lines, or takes ``\r`` for a line end, changes. Only in
#: payloads with room for them and a whole tag.
_HEAD = b" \t"
_TAIL = b" \t"


def _safe(framing: Framing, payload: bytes) -> bytes:
    """``payload``, with whatever would end a delimited frame early replaced: the first
    byte of each delimiter found in it (or begun at its end) by a byte the delimiter
    does not start with, in one pass (the filler holds a delimiter every few hundred
    bytes, and a payload may be 64 MiB)."""
    if framing.kind not in ("line", "delimiter"):
        return payload
    delimiter = framing.delimiter
    spare = 1 if delimiter[0] == 0 else 0
    data = bytearray(payload + delimiter)
    at = data.find(delimiter)
    while at != len(payload):
        data[at] = spare
        # (only a match that takes in the byte just replaced can be new)
        at = data.find(delimiter, max(0, at - len(delimiter) + 1))
    return bytes(data[: len(payload)])


def make_frames(framing: Framing, tag: str, count: int, size: int) -> list[bytes]:
    """``count`` distinct payloads of about ``size`` bytes that ``framing`` can carry."""
    return [_tagged(framing, f"{tag}{index}", size) for index in range(count)]


def plain_frame(framing: Framing, tag: str) -> bytes:
    """A small payload of ASCII letters, digits and punctuation only, that any echo
    server that works at all returns: the control next to cases that fail."""
    return _tagged(framing, tag, 16, plain=True)


def _tagged(framing: Framing, tag: str, size: int, *, plain: bool = False) -> bytes:
    """A payload of about ``size`` bytes (what ``framing`` can carry) made of pieces
    that differ from every other (``tag.0|`` and ``FILLER`` bytes, and so on), so
    that a fragment that comes back can be placed without ambiguity, and that every
    byte value the framing allows is sent (:data:`FILLER`)."""
    size = (
        framing.largest_payload if framing.kind == "fixed" else min(size, framing.largest_payload)
    )
    delimiter = framing.delimiter if framing.kind in ("line", "delimiter") else b""
    tail = _TAIL + (delimiter[:-1] if len(delimiter) > 1 else b"\r")
    head = _HEAD
    if plain or size < len(head) + len(f"{tag}.0|") + len(tail):
        head = tail = b""  # (no room: the tag alone sets it apart)
    pieces = bytearray(head)
    part = 0
    while len(pieces) < size - len(tail):
        start = part * _FILL % len(FILLER)
        pieces += f"{tag}.{part}|".encode()
        pieces += b"" if plain else _FILLER_TWICE[start : start + _FILL]
        part += 1
    return _safe(framing, bytes(pieces[: size - len(tail)]) + tail)


async def one_frame(checker: Checker) -> None:
    await checker.exchange(Case(tuple(make_frames(checker.framing, "one", 1, 32))))


async def coalesced(checker: Checker) -> None:
    frames = make_frames(checker.framing, "coalesced", 64, 24)
    await checker.exchange(Case(tuple(frames)), how=" in one write")


async def byte_by_byte(checker: Checker) -> None:
    frames = make_frames(checker.framing, "bytewise", 1, 20)
    case = cut_at(checker.framing, frames, range(1, len(wire(checker.framing, frames))), _GAP)
    await checker.exchange(case, how=f", one byte per write, {_GAP * 1000:g} ms apart")


async def splits(checker: Checker) -> None:
    framing = checker.framing

    def frames_of(connection: int) -> list[bytes]:
        """Sizes whose length headers hold bytes >= 0x80 (200, 130), next to small
        ones; tagged with the connection, so that another's bytes can be told apart."""
        frames = [
            _tagged(framing, f"split{connection:02d}.{index}", size)
            for index, size in enumerate((20, 200, 24, 130))
        ]
        if framing.kind in ("line", "delimiter") and len(framing.delimiter) > 1:
            frames.append(framing.delimiter[:-1] + b"x")  # a delimiter's prefix inside
        return frames

    frames = frames_of(0)  # (every connection's frames lie as these do)
    size = len(wire(framing, frames))
    interesting = boundary_offsets(framing, frames)
    step = max(1, size // 16)
    offsets = sorted({*interesting, *range(step, size, step)})
    if len(offsets) > _MAX_SPLITS:
        stride = math.ceil(len(offsets) / _MAX_SPLITS)
        offsets = sorted({*interesting[: _MAX_SPLITS // 2], *offsets[::stride]})
    # Each split on a connection of its own, _SPLITS_AT_ONCE at a time, in order of
    # their offsets: the exchanges are independent, so a server's latency does not
    # add up over them.
    failures: dict[int, Failed] = {}
    waiting = iter(offsets)
    tried = 0
    cases = {}
    for number, offset in enumerate(offsets):
        cases[offset] = cut_at(framing, frames_of(number), [offset], _GAP)
        checker.others[_split_label(offset)] = wire(framing, cases[offset].frames)

    async def splitter() -> None:
        nonlocal tried
        for offset in waiting:
            if trio.current_time() >= checker.deadline:
                return
            tried += 1
            try:
                await checker.exchange(
                    cases[offset],
                    how=f" in two writes split at byte {offset}",
                    context=f"split at byte {offset}{_where(checker, frames, offset)}: ",
                    label=_split_label(offset),
                )
            except Failed as failure:
                failures[offset] = failure

    async with trio.open_nursery() as nursery:
        for _ in range(_SPLITS_AT_ONCE):
            nursery.start_soon(splitter)
    if failures:
        raise first_failure(failures)
    if tried < len(offsets):
        raise Failed(
            f"only {tried} of {len(offsets)} splits could be tried within the time limit "
            f"({_SPLITS_AT_ONCE} at a time), each of them echoed right: the server is slow; "
            "give it more time with --timeout",
            kind="slow",
        )


def first_failure(failures: dict[int, Failed]) -> Failed:
    """The failure to report of several connections': cross-talk if any has it (it
    explains what the others lack), else the first connection's (the lowest key),
    whichever ended first."""
    return min(failures.items(), key=lambda item: (item[1].kind != "cross-talk", item[0]))[1]


def _split_label(offset: int) -> str:
    return f"the connection split at byte {offset}"


def _where(checker: Checker, frames: Sequence[bytes], offset: int) -> str:
    position = 0
    for index, frame in enumerate(frames):
        size = len(checker.framing.encode(frame))
        if offset < position + size:
            inner = offset - position
            if checker.framing.kind in ("line", "delimiter"):
                if inner > size - len(checker.framing.delimiter):
                    return f" (inside the delimiter of frame {index + 1})"
            elif checker.framing.kind in ("length", "varint"):
                header = size - len(frame)
                if inner < header:
                    return f" (inside the length header of frame {index + 1})"
            return f" (in frame {index + 1})" if inner else f" (before frame {index + 1})"
        position += size
    return ""


async def edge_frames(checker: Checker) -> None:
    framing = checker.framing
    if framing.kind == "fixed":
        assert framing.frame_size is not None
        frames = [b"\x00" * framing.frame_size, b"\xff" * framing.frame_size]
    elif framing.kind in ("line", "delimiter"):
        delimiter = framing.delimiter
        first = delimiter[:1]
        frames = [b"", b"", first * 3 if len(delimiter) > 1 else b"x", b""]
        frames += [delimiter[:n] + b"tail" for n in range(1, len(delimiter))]
        frames += [b"tail" + delimiter[:n] for n in range(1, len(delimiter))]
    else:
        frames = [b"", b"\x00\x00\x00\x05", b"", b"\xff\xff\xff\xff", b"\x80\x80\x01", b""]
    frames = [frame[: framing.largest_payload] for frame in frames]
    case = Case(tuple(frames), tuple((0,) if n else () for n in range(len(frames))), _GAP)
    await checker.exchange(case, how=", one per write")


async def max_frame(checker: Checker) -> None:
    size = min(checker.framing.largest_payload, _MAX_FRAME_BUDGET)
    frames = make_frames(checker.framing, "max", 1, size)
    note = "" if size == checker.framing.largest_payload else f" (capped at {size} bytes)"
    await checker.exchange(Case(tuple(frames)), how=note)


async def pipelining(checker: Checker) -> None:
    frames = make_frames(checker.framing, "pipeline", 500, 16)
    case = Case(tuple(frames), tuple((0,) if n else () for n in range(len(frames))))
    await checker.exchange(case, how=", one write each, without waiting for echoes")


def _mixed_frames(checker: Checker, tag: str, count: int) -> list[bytes]:
    """``count`` payloads of mixed sizes: some empty, most small, some up to 4 KiB."""
    frames = []
    largest = min(_SUSTAINED_LARGEST, checker.framing.largest_payload)
    for index in range(count):
        if checker.framing.kind == "fixed":
            size = largest
        else:
            roll = checker.rng.random()
            if roll < 0.05:
                size = 0
            elif roll < 0.45:
                size = checker.rng.randint(1, min(16, largest))
            elif roll < 0.85:
                size = checker.rng.randint(1, min(256, largest))
            else:
                size = checker.rng.randint(1, largest)
        frames.append(_tagged(checker.framing, f"{tag}.{index}", size))
    return frames


def _random_cuts(checker: Checker, frames: Sequence[bytes]) -> Case:
    """``frames`` in writes of random sizes (1 byte to 16 KiB), back to back."""
    size = len(wire(checker.framing, frames))
    offsets = []
    position = checker.rng.randint(1, 16384)
    while position < size:
        offsets.append(position)
        position += checker.rng.choice((1, 7, 100, 1500, 4096, checker.rng.randint(1, 16384)))
    return cut_at(checker.framing, frames, offsets, 0.0)


async def sustained(checker: Checker) -> None:
    count = _SUSTAINED_CONNECTIONS
    cases = [
        _random_cuts(checker, _mixed_frames(checker, f"s{n}", _SUSTAINED_FRAMES))
        for n in range(count)
    ]
    failures: dict[int, Failed] = {}
    labels = [f"connection {n + 1} of {count}" for n in range(count)]
    for label, case in zip(labels, cases, strict=True):
        checker.others[label] = wire(checker.framing, case.frames)

    async def client(index: int) -> None:
        try:
            await checker.exchange(
                cases[index],
                how=", mixed sizes in writes of random sizes, without waiting for echoes",
                context=f"{labels[index]}: ",
                label=labels[index],
            )
        except Failed as failure:
            failures[index] = failure

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(client, index)
    if failures:
        raise first_failure(failures)


async def concurrency(checker: Checker) -> None:
    """Connections held open at once, each sending half a frame, then all the rest:
    every one must be answered while all of them stay open. A server that serves N at
    a time (a pool of workers, each holding its connection until it ends) answers N of
    them, and the rest only once some close: ``limited``."""
    total = _CONCURRENT
    cases = [_halves(checker, index) for index in range(total)]
    for index, case in enumerate(cases):
        checker.others[f"connection {index + 1} of {total}"] = wire(checker.framing, case.frames)
    streams: list[trio.SocketStream] = []
    transcripts: list[Transcript] = []

    async def rest(index: int) -> None:
        half = cases[index].write_ends(checker.framing)[0]
        transcripts[index] = await checker.talk(streams[index], cases[index], written=half)

    try:
        for index, case in enumerate(cases):
            where = f"connection {index + 1} of {total}"
            try:
                streams.append(await checker.open())
                await streams[-1].send_all(case.writes(checker.framing)[0][1])
            except Failed as failure:
                failure.detail = f"{where}: {failure.detail}"
                raise
            except trio.BrokenResourceError:
                raise Failed(
                    f"{where}: the server reset the connection after half a frame", kind="reset"
                ) from None
        transcripts = [Transcript(b"")] * total
        async with trio.open_nursery() as nursery:
            for index in range(total):
                nursery.start_soon(rest, index)
    finally:
        for stream in streams:  # (only now: no connection closes before all are answered)
            await close_now(stream)
    _judge_concurrent(checker, cases, transcripts)


#: The concurrency scenario: connections held open at once.
_CONCURRENT = 50


def _halves(checker: Checker, index: int) -> Case:
    """Connection ``index``'s frame, in two writes cut in its middle."""
    frames = make_frames(checker.framing, f"conn{index:02d}", 1, 24)
    return cut_at(checker.framing, frames, [max(1, len(wire(checker.framing, frames)) // 2)], 0.0)


def _judge_concurrent(
    checker: Checker, cases: Sequence[Case], transcripts: Sequence[Transcript]
) -> None:
    """Every connection answered whole, or: a wrong answer, else ``limited`` (some
    answered, the others nothing while all were open), else what nothing means."""
    total = len(cases)
    whole: list[int] = []
    silent: list[int] = []
    failures: dict[int, Failed] = {}
    for index, (case, transcript) in enumerate(zip(cases, transcripts, strict=True)):
        if not transcript.received and transcript.timed_out:
            silent.append(index)
            continue
        try:
            checker.judge(
                case,
                transcript,
                how=f" in two halves, next to {total - 1} other open connections",
                context=f"connection {index + 1} of {total}: ",
                label=f"connection {index + 1} of {total}",
            )
        except Failed as failure:
            failure.note = "it fails only next to other connections"
            failures[index] = failure
            continue
        whole.append(index)
    if failures:
        raise first_failure(failures)
    if not silent:
        return
    if not whole:  # nothing at all came back: say so as for any exchange
        first = silent[0]
        checker.judge(cases[first], transcripts[first], context=f"connection {first + 1}: ")
    waited = transcripts[silent[0]].elapsed
    raise Failed(
        f"of {total} connections held open at once, each sending a frame in two halves, "
        f"{len(whole)} were answered; the other {len(silent)} got nothing in "
        f"{waited:.2g}s, until the time limit, while all stayed open: the server serves "
        f"at most {count(len(whole), 'connection')} at a time (a fixed pool of workers "
        "or threads, each holding its connection until it ends, does this)",
        sent=f"{total} connections, one frame each in two halves, held open together",
        received=(
            f"the whole echo on {count(len(whole), 'connection')} ({_numbers(whole)}), "
            f"nothing on {_numbers(silent)}"
        ),
        kind="limited",
        note="it takes many connections at once",
    )


def _numbers(indices: Sequence[int]) -> str:
    """``connections 1-4, 7`` for the indices 0, 1, 2, 3, 6 (the first ranges)."""
    ranges: list[list[int]] = []
    for index in indices:
        if ranges and ranges[-1][1] == index:
            ranges[-1][1] = index + 1
        else:
            ranges.append([index + 1, index + 1])
    shown = [f"{a}-{b}" if b > a else str(a) for a, b in ranges[:8]]
    more = ", ..." if len(ranges) > 8 else ""
    noun = "connection" if len(indices) == 1 else "connections"
    return f"{noun} {', '.join(shown)}{more}"


async def half_close(checker: Checker) -> None:
    frames = make_frames(checker.framing, "halfclose", 3, 16)
    await checker.exchange(
        Case(tuple(frames), half_close=True), how=", then the write side shut down"
    )


async def slow_reader(checker: Checker) -> None:
    total = 512 * 1024
    size = min(1024, checker.framing.largest_payload)
    frames = make_frames(checker.framing, "slow", max(1, total // max(size, 1)), size)
    delay = min(1.0, checker.timeout / 3)
    await checker.exchange(
        Case(tuple(frames), read_delay=delay),
        how=f", the client not reading for {delay:.2g}s",
    )


async def resilience(checker: Checker) -> None:
    """Abusive clients next to a good one; the good one must be answered throughout."""
    good = await checker.open()
    abusers: list[trio.SocketStream] = []
    failure: Failed | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                await _abuse(checker, good, abusers, nursery)
            except Failed as failed:
                failure = failed
            nursery.cancel_scope.cancel()
    finally:
        await close_now(good)
        for stream in abusers:
            await close_now(stream)
    if failure is not None:
        raise failure


async def _abuse(
    checker: Checker,
    good: trio.SocketStream,
    abusers: list[trio.SocketStream],
    nursery: trio.Nursery,
) -> None:
    async with _phase("before any abuse: ", ""):
        await _good_client(checker, good)
    async with _phase(
        f"after {_ABUSERS} clients reset their connections in the middle of a frame: ",
        "a server that such clients harm fails this way",
    ):
        for n in range(_ABUSERS):
            stream = await checker.open()
            frame = checker.framing.encode(_tagged(checker.framing, f"reset{n}", 64))
            checker.others[f"abusive client {n + 1} (it reset mid-frame)"] = frame[
                : len(frame) // 2
            ]
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(frame[: len(frame) // 2])
            abort(stream)
        await _good_client(checker, good)
    async with _phase(
        f"while {_ABUSERS} clients that sent 4 KiB of random bytes stay connected: ",
        "a server that garbage from one client harms fails this way",
    ):
        for n in range(_ABUSERS):
            stream = await checker.open()
            abusers.append(stream)
            garbage = checker.rng.randbytes(4096)
            checker.others[f"abusive client {_ABUSERS + n + 1} (it sent random bytes)"] = garbage
            with trio.move_on_after(_STUCK), contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(garbage)  # (dropping it is fine)
        await _good_client(checker, good)
    async with _phase(
        "while a client that never reads its echoes keeps sending: ",
        "a server where one client that does not read holds up the others fails this "
        "way: a write that blocks the whole server, or a lock held across a write",
    ):
        never = await checker.open()
        abusers.append(never)
        stuck = trio.Event()
        nursery.start_soon(_never_read, checker, never, stuck)
        await stuck.wait()
        await _good_client(checker, good)


@asynccontextmanager
async def _phase(context: str, harm: str) -> AsyncIterator[None]:
    """Failures in a phase of the resilience scenario: say which, and what that means."""
    try:
        yield
    except Failed as failure:
        failure.detail = context + failure.detail + (f" ({harm})" if harm else "")
        failure.case = None  # what fails here takes several clients at once
        failure.note = "it takes several clients at once"
        raise


async def _never_read(checker: Checker, stream: trio.SocketStream, stuck: trio.Event) -> None:
    chunk = wire(checker.framing, make_frames(checker.framing, "noread", 64, 1000))
    checker.others[f"abusive client {2 * _ABUSERS + 1} (it never reads)"] = chunk
    sent = 0
    try:
        while sent < _NEVER_READ_BYTES:
            with trio.move_on_after(_STUCK) as scope:
                await stream.send_all(chunk)
                sent += len(chunk)
            if scope.cancelled_caught:
                break  # its buffers and the server's are full
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the server dropped it: its right
    stuck.set()
    await trio.sleep_forever()


async def _good_client(checker: Checker, stream: trio.SocketStream) -> None:
    """Frames one at a time on the good connection, and one on a new connection."""
    for n in range(_GOOD_ROUNDS):
        frames = (_tagged(checker.framing, f"good{n}", 40),)
        await checker.exchange(
            Case(frames),
            stream=stream,
            how=", on the well-behaved client",
            history=checker.good_frames,
        )
        checker.good_frames += 1
    await checker.exchange(
        Case((_tagged(checker.framing, "newcomer", 40),)),
        context="a new connection: ",
        how=", on a new connection",
    )


#: The scenarios in the order they run, with what each one does to the server.
SCENARIOS: dict[str, tuple[str, Callable[[Checker], Awaitable[None]]]] = {
    "one-frame": ("one frame, one write", one_frame),
    "coalesced": ("64 frames in one write", coalesced),
    "byte-by-byte": ("one frame written a byte at a time, with pauses", byte_by_byte),
    "split": (
        "a stream split in two at many offsets, inside delimiters and length headers",
        splits,
    ),
    "edge-frames": (
        "empty frames, frames holding the delimiter's first bytes or header-like bytes",
        edge_frames,
    ),
    "max-frame": ("a frame of the largest allowed size", max_frame),
    "pipelining": ("500 frames in flight on one connection", pipelining),
    "sustained": (
        "1500 frames of mixed sizes on each of 4 connections, in writes of random sizes",
        sustained,
    ),
    "concurrency": (
        "50 connections held open at once, each sending half a frame, then all the rest",
        concurrency,
    ),
    "half-close": (
        "frames, then shutdown of the write side: every echo, then EOF",
        half_close,
    ),
    "slow-reader": (
        "512 KiB sent while the client does not read for a while",
        slow_reader,
    ),
    "resilience": (
        "clients that reset mid-frame, send garbage or never read, next to a good one",
        resilience,
    ),
}
