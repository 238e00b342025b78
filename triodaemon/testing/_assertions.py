"""Drive a decoder with chunkings and say, in words, where it went wrong.

Strategy: decode each chunking, compare with the frames expected, and on the
first difference raise :class:`FramingMismatch` (an ``AssertionError``) that
names the chunking, the frame, its stream offset, and the read it began in.
Works with our decoders and with any object whose ``feed()`` either stores
(then ``next_frame()`` returns frames or ``None``) or returns the frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._chunkings import Chunking


class FramingMismatch(AssertionError):
    """A decoder produced other frames than expected for some chunking."""


def _show(data: bytes, limit: int = 40) -> str:
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data)} bytes)"


def decode_chunks(decoder: Any, chunks: Sequence[bytes], *, eof: bool = True) -> list[bytes]:
    """Feed ``chunks`` to ``decoder``; return every frame it produced.

    ``decoder`` has ``feed(data)`` and either ``next_frame()`` (``None`` for
    "need more") or a ``feed`` that returns the frames it completed. With
    ``eof``, ``feed_eof()`` is called at the end if the decoder has it.
    """
    frames: list[bytes] = []
    pull = getattr(decoder, "next_frame", None)
    for chunk in chunks:
        produced = decoder.feed(chunk)
        if pull is not None:
            while (frame := pull()) is not None:
                frames.append(bytes(frame))
        elif produced is not None:
            frames.extend(bytes(frame) for frame in produced)
    if eof and hasattr(decoder, "feed_eof"):
        decoder.feed_eof()
    return frames


def _locate(offset: int, chunks: Sequence[bytes]) -> str:
    position = 0
    for index, chunk in enumerate(chunks):
        if offset < position + len(chunk):
            return f"read {index + 1} of {len(chunks)} at its byte {offset - position}"
        position += len(chunk)
    return f"after the last read ({len(chunks)} reads)"


def _describe_chunking(chunks: Sequence[bytes]) -> str:
    sizes = [len(chunk) for chunk in chunks]
    shown = ", ".join(map(str, sizes[:12])) + (", ..." if len(sizes) > 12 else "")
    return f"{len(chunks)} reads of sizes {shown}"


def assert_decodes(
    make_decoder: Callable[[], Any],
    chunkings: Iterable[Chunking | tuple[str, Chunking]],
    expected: Sequence[bytes],
    *,
    encode: Callable[[bytes], bytes] | None = None,
    eof: bool = True,
) -> int:
    """Check that a fresh decoder turns every chunking into exactly ``expected``.

    Args:
        make_decoder: returns a new decoder (see :func:`decode_chunks`).
        chunkings: chunk lists, or ``(name, chunks)`` pairs as from ``all_chunkings``.
        expected: the frames' payloads, in order.
        encode: a frame's wire bytes; with it, errors name stream offsets and reads.
        eof: also check that the stream ends cleanly (``feed_eof``).

    Returns:
        How many chunkings were checked.

    Raises:
        FramingMismatch: for the first chunking that decodes differently, or
            that makes the decoder raise, with the first difference in words.
    """
    starts: list[int] = []
    if encode is not None:
        position = 0
        for frame in expected:
            starts.append(position)
            position += len(encode(frame))
    checked = 0
    for item in chunkings:
        name, chunks = item if isinstance(item, tuple) else (f"chunking {checked + 1}", item)
        checked += 1
        where = f"{name} ({_describe_chunking(chunks)})"
        try:
            got = decode_chunks(make_decoder(), chunks, eof=eof)
        except Exception as exc:
            raise FramingMismatch(
                f"{where}: the decoder raised {type(exc).__name__}: {exc}"
            ) from exc
        if got == list(expected):
            continue
        for index, (want, have) in enumerate(zip(expected, got, strict=False)):
            if want != have:
                message = (
                    f"{where}: frame {index + 1} of {len(expected)} differs: "
                    f"expected {_show(want)}, got {_show(have)}"
                )
                if starts:
                    message += (
                        f"; it starts at stream offset {starts[index]}, in "
                        f"{_locate(starts[index], chunks)}"
                    )
                raise FramingMismatch(message)
        if len(got) < len(expected):
            missing = len(got)
            message = (
                f"{where}: got {len(got)} of {len(expected)} frames; frame {missing + 1} "
                f"({_show(expected[missing])}) never came"
            )
            if starts:
                message += f"; it starts at stream offset {starts[missing]}, in {_locate(starts[missing], chunks)}"
            raise FramingMismatch(message)
        raise FramingMismatch(
            f"{where}: got {len(got)} frames, expected {len(expected)}; the first extra one "
            f"is {_show(got[len(expected)])}"
        )
    return checked
