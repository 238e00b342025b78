"""A trio stream that delivers what was written to it in a scripted chunking.

Strategy: wrap the receiving side of any stream (usually a ``trio.testing``
memory stream). Each ``receive_some`` hands out at most the next size from
the script, keeping the rest for later, and can pause first, so protocol code
sees one byte at a time, splits inside headers, or long gaps, whatever it
asks for. Writes pass through unchanged. Coalescing happens as far as the
writer has written: a read never waits for more bytes than are there, so
request/response code cannot deadlock on the script.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import trio
import trio.testing

from ._chunkings import Chunking


class ScriptedStream(trio.abc.HalfCloseableStream):
    """Deliver the bytes of ``inner`` in reads of the scripted sizes.

    Args:
        inner: the stream to read from (and write to, unchanged).
        sizes: read sizes, used in order; with ``repeat`` they start over.
        pause: seconds to sleep before each read is handed out (virtual time
            under ``autojump_clock``).
        repeat: cycle the sizes; otherwise reads are unlimited after the script.
    """

    def __init__(
        self,
        inner: trio.abc.HalfCloseableStream,
        sizes: Iterable[int],
        *,
        pause: float = 0.0,
        repeat: bool = True,
    ) -> None:
        sizes = list(sizes)
        if not sizes or any(size <= 0 for size in sizes):
            raise ValueError("sizes must be a non-empty list of positive integers")
        self.inner = inner
        self.pause = pause
        self._sizes: Iterator[int] = itertools.cycle(sizes) if repeat else iter(sizes)
        self._pending = b""
        self.reads: list[bytes] = []
        """Every piece handed out so far, for assertions."""

    @classmethod
    def from_chunking(
        cls, inner: trio.abc.HalfCloseableStream, chunks: Chunking, *, pause: float = 0.0
    ) -> ScriptedStream:
        """Deliver exactly the reads of ``chunks`` (when the writer writes those bytes)."""
        return cls(inner, [len(chunk) for chunk in chunks], pause=pause, repeat=False)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._pending:
            self._pending = bytes(await self.inner.receive_some())
            if not self._pending:
                return b""
        size = next(self._sizes, len(self._pending))
        if max_bytes is not None:
            size = min(size, max_bytes)
        piece, self._pending = self._pending[:size], self._pending[size:]
        if self.pause:
            await trio.sleep(self.pause)
        else:
            await trio.lowlevel.checkpoint()
        self.reads.append(piece)
        return piece

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def scripted_stream_pair(
    sizes: Iterable[int], *, pause: float = 0.0, repeat: bool = True
) -> tuple[
    trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream],
    ScriptedStream,
]:
    """A connected ``(client, server)`` pair whose server reads follow ``sizes``.

    What the client writes reaches the server's ``receive_some`` in reads of
    the scripted sizes (see :class:`ScriptedStream`); the server's writes reach
    the client unchanged.
    """
    client, server = trio.testing.memory_stream_pair()
    return client, ScriptedStream(server, sizes, pause=pause, repeat=repeat)
