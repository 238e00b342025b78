"""A client: send frames to a server, collect what comes back.

Strategy: one task sends, one receives, both in a nursery; the exchange ends
when sending is over and every reply owed has arrived. "Owed" is counted in
frames, or in bytes for raw framing (where the server may split and join
freely). Used by ``triodaemon client`` and by the tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable

import attrs
import trio

from .._errors import ClientError, FramingError
from .._framing import Framing
from .._listeners import Address, connect

#: Default seconds to wait for a reply that is owed before giving up.
DEFAULT_REPLY_TIMEOUT = 10.0


async def _from_iterable(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def exchange(
    stream: trio.abc.Stream,
    messages: AsyncIterable[bytes] | Iterable[bytes],
    on_reply: Callable[[bytes], Awaitable[None]],
    *,
    framing: Framing | None = None,
    reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
) -> int:
    """Send each message as one frame and pass every reply to ``on_reply``.

    Returns once every message has been sent and as many replies have arrived
    (for raw framing: as many bytes). Does not close ``stream``.

    Returns:
        The number of replies received (bytes for raw framing).

    Raises:
        ClientError: a message cannot be framed, the server closed or broke the
            connection before replying to everything, or no reply came for
            ``reply_timeout`` seconds while one was owed.
    """
    framing = framing or Framing()
    source = messages if isinstance(messages, AsyncIterable) else _from_iterable(messages)
    async with trio.open_nursery() as nursery:
        run = _Exchange(stream, framing, on_reply, reply_timeout, nursery.cancel_scope)
        nursery.start_soon(run.receive_all)
        nursery.start_soon(run.send_all, source)
    # Raised after the nursery, so callers see a plain ClientError rather than
    # an exception group.
    if run.failure is not None:
        raise run.failure
    return run.received


@attrs.define(eq=False)
class _Exchange:
    """One exchange's two tasks and what they share: counts, and the first failure."""

    stream: trio.abc.Stream
    framing: Framing
    on_reply: Callable[[bytes], Awaitable[None]]
    reply_timeout: float
    scope: trio.CancelScope
    """The nursery's scope: cancelled when the exchange is over or has failed."""
    sent: int = 0
    """Frames sent (bytes for raw framing)."""
    received: int = 0
    """Replies received (bytes for raw framing)."""
    sending_done: bool = False
    failure: ClientError | None = None

    @property
    def raw(self) -> bool:
        return self.framing.kind == "raw"

    def finish_if_done(self) -> None:
        if self.sending_done and self.received >= self.sent:
            self.scope.cancel()

    def fail(self, error: ClientError) -> None:
        """Stop both tasks; the first failure is the one raised."""
        self.failure = self.failure or error
        self.scope.cancel()

    async def send_all(self, source: AsyncIterable[bytes]) -> None:
        index = 0
        async for message in source:
            index += 1
            try:
                data = self.framing.encode(message)
            except ValueError as exc:
                return self.fail(ClientError(f"cannot send message {index}: {exc}"))
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return self.fail(
                    ClientError(f"connection lost while sending (after {self.received} replies)")
                )
            self.sent += len(data) if self.raw else 1
        self.sending_done = True
        self.finish_if_done()

    async def receive_all(self) -> None:
        decoder = self.framing.decoder()
        while True:
            data = await self._receive()
            if data is None:
                return  # failed
            if not data:
                continue  # nothing for reply_timeout, and nothing owed
            decoder.feed(data)
            try:
                while (frame := decoder.next_frame()) is not None:
                    self.received += len(frame) if self.raw else 1
                    await self.on_reply(frame)
            except FramingError as exc:
                return self.fail(ClientError(f"bad reply from the server: {exc}"))
            except ClientError as exc:  # from on_reply
                return self.fail(exc)
            self.finish_if_done()

    async def _receive(self) -> bytes | bytearray | None:
        """The next bytes from the server, never empty; ``b""`` if none came for
        the reply timeout while no reply was owed; None once the exchange has
        failed: the server closed or broke the connection, or a reply owed did
        not come in time."""
        with trio.move_on_after(self.reply_timeout) as scope:
            try:
                data = await self.stream.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.fail(
                    ClientError(f"connection lost after {self.received} of {self.sent} replies")
                )
                return None
        if scope.cancelled_caught:
            if self.received < self.sent:
                timeout = self.reply_timeout
                counts = f"{self.received} of {self.sent} received"
                self.fail(ClientError(f"no reply for {timeout:g}s ({counts})"))
                return None
            return b""
        if not data:
            counts = f"{self.received} of {self.sent} replies"
            self.fail(ClientError(f"server closed the connection after {counts}"))
            return None
        return data


async def echo_frames(
    address: Address,
    frames: Iterable[bytes],
    *,
    framing: Framing | None = None,
    reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
) -> list[bytes]:
    """Connect, send ``frames``, return the replies, close.

    For raw framing the replies are the chunks as they arrived.
    """
    replies: list[bytes] = []

    async def collect(frame: bytes) -> None:
        replies.append(frame)

    stream = await connect(address)
    async with stream:
        await exchange(stream, frames, collect, framing=framing, reply_timeout=reply_timeout)
    return replies


async def repeat(
    messages: Iterable[bytes], count: int = 1, interval: float = 0.0
) -> AsyncIterator[bytes]:
    """Yield ``messages`` ``count`` times over, pausing ``interval`` seconds between rounds."""
    for round_number in range(count):
        if round_number and interval:
            await trio.sleep(interval)
        for message in messages:
            yield message
