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

from ..._framing import Framing
from .._chunkings import boundary_offsets
from ._case import Case, cut_at
from ._diagnosis import wire
from ._engine import Checker, Failed, abort, close_now

#: Pause between writes meant to arrive as separate reads (with TCP_NODELAY on
#: loopback, a few milliseconds is plenty; judging never depends on it).
_GAP = 0.005
#: Largest frame the max-frame scenario sends, whatever ``--max-frame`` says.
_MAX_FRAME_BUDGET = 64 * 1024 * 1024
#: At most this many split points in the split scenario.
_MAX_SPLITS = 48
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


def _safe(framing: Framing, payload: bytes) -> bytes:
    """``payload``, with whatever would end a delimited frame early replaced."""
    if framing.kind in ("line", "delimiter"):
        delimiter = framing.delimiter
        while (at := (payload + delimiter).find(delimiter)) != len(payload):
            payload = payload[:at] + b"\x00" + payload[at + 1 :]
    return payload


def make_frames(framing: Framing, tag: str, count: int, size: int) -> list[bytes]:
    """``count`` distinct payloads of about ``size`` bytes that ``framing`` can carry."""
    return [_tagged(framing, f"{tag}{index}", size) for index in range(count)]


def _tagged(framing: Framing, tag: str, size: int) -> bytes:
    """A payload of about ``size`` bytes (what ``framing`` can carry) made of pieces
    that differ from every other (``tag.0|tag.1|...``), so that a fragment that comes
    back can be placed without ambiguity."""
    size = (
        framing.largest_payload if framing.kind == "fixed" else min(size, framing.largest_payload)
    )
    pieces = bytearray()
    part = 0
    while len(pieces) < size:
        pieces += f"{tag}.{part}|".encode()
        part += 1
    return _safe(framing, bytes(pieces[:size]))


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
    frames = make_frames(checker.framing, "split", 4, 20)
    if checker.framing.kind in ("line", "delimiter") and len(checker.framing.delimiter) > 1:
        frames.append(checker.framing.delimiter[:-1] + b"x")  # a delimiter's prefix inside
    size = len(wire(checker.framing, frames))
    interesting = boundary_offsets(checker.framing, frames)
    step = max(1, size // 16)
    offsets = sorted({*interesting, *range(step, size, step)})
    if len(offsets) > _MAX_SPLITS:
        stride = math.ceil(len(offsets) / _MAX_SPLITS)
        offsets = sorted({*interesting[: _MAX_SPLITS // 2], *offsets[::stride]})
    stream = await checker.open()
    checker.planned = len(offsets)
    try:
        for number, offset in enumerate(offsets):
            await checker.exchange(
                cut_at(checker.framing, frames, [offset], _GAP),
                how=f" in two writes split at byte {offset}",
                stream=stream,
                context=f"split at byte {offset}{_where(checker, frames, offset)}: ",
                history=number * len(frames),
            )
    finally:
        await close_now(stream)


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
            stream = await checker.open()
            try:
                checker.judge(
                    cases[index],
                    await checker.talk(stream, cases[index]),
                    how=", mixed sizes in writes of random sizes, without waiting for echoes",
                    context=f"{labels[index]}: ",
                    label=labels[index],
                )
            finally:
                await close_now(stream)
        except Failed as failure:
            failures[index] = failure

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(client, index)
    if failures:
        raise failures[min(failures)]  # the first connection's, whichever ended first


async def concurrency(checker: Checker) -> None:
    count = 50
    everyone_started = trio.Event()
    started = 0
    failures: dict[int, Failed] = {}
    refused: list[Failed] = []

    async def client(index: int, nursery: trio.Nursery) -> None:
        nonlocal started
        frames = make_frames(checker.framing, f"conn{index:02d}", 1, 24)
        size = len(wire(checker.framing, frames))
        half = max(1, size // 2)
        case = cut_at(checker.framing, frames, [half], 0.0)
        try:
            stream = await checker.open()
        except Failed as failure:
            failure.detail = f"connection {index + 1} of {count}: {failure.detail}"
            refused.append(failure)
            nursery.cancel_scope.cancel()
            return
        try:
            try:
                await stream.send_all(case.writes(checker.framing)[0][1])
            except trio.BrokenResourceError:
                failures[index] = Failed(
                    f"connection {index + 1} of {count}: the server reset the connection "
                    "after half a frame",
                    kind="reset",
                )
                nursery.cancel_scope.cancel()
                return
            started += 1
            if started == count:
                everyone_started.set()
            with trio.move_on_at(checker.deadline):
                await everyone_started.wait()
            if not everyone_started.is_set():
                return
            transcript = await checker.talk(stream, case, written=half)
            try:
                checker.judge(
                    case,
                    transcript,
                    how=" in two halves, interleaved with 49 other connections",
                    context=f"connection {index + 1} of {count}: ",
                )
            except Failed as failure:
                failure.note = "it fails only next to other connections"
                failures[index] = failure
        finally:
            await close_now(stream)

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(client, index, nursery)
    if refused:
        raise refused[0]
    if failures and not everyone_started.is_set():
        raise failures[min(failures)]
    if not everyone_started.is_set():
        raise Failed(
            f"only {started} of {count} connections could send their first half "
            "within the time limit: the server does not serve connections concurrently",
            kind="timeout",
        )
    if failures:
        raise failures[min(failures)]


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
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(frame[: len(frame) // 2])
            abort(stream)
        await _good_client(checker, good)
    async with _phase(
        f"while {_ABUSERS} clients that sent 4 KiB of random bytes stay connected: ",
        "a server that garbage from one client harms fails this way",
    ):
        for _ in range(_ABUSERS):
            stream = await checker.open()
            abusers.append(stream)
            with trio.move_on_after(_STUCK), contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(checker.rng.randbytes(4096))  # (dropping it is fine)
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
    "concurrency": ("50 connections interleaving partial frames", concurrency),
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
