"""A client: send frames to a server, collect what comes back.

Strategy: one task sends, one receives, both in a nursery; the exchange ends
when sending is over and every reply owed has arrived. "Owed" is counted in
frames, or in bytes for raw framing (where the server may split and join
freely). The server is not trusted: the next reply owed has a deadline, set
when its message began to go out and moved on only by a whole reply (bytes
trickling in do not move it), the decoder holds at most a frame, and a reply
that answers no message is an error.
Used by ``triodaemon client`` and by the tests.
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable

import attrs
import trio

from .._decoders import Decoder
from .._errors import ClientError, FramingError, count
from .._framing import Framing
from .._listeners import Address, connect

#: Default seconds a reply may take: from when its message began to go out, or from
#: the reply before it if that came later.
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

    Each reply must arrive whole within ``reply_timeout`` seconds of when the
    wait for it began: once its message began to go out and the reply before it
    had arrived. Whole replies are progress; bytes trickling in are not, and a
    server that stops reading our messages runs out the same clock. So the
    exchange takes at most ``reply_timeout`` per message beyond the time the
    messages take to come. What is held of a reply is at most the framing's
    ``max_frame`` (plus one read). While no reply is owed, nothing times out.

    Returns:
        The number of replies received (bytes for raw framing).

    Raises:
        ClientError: a message cannot be framed; the server closed or broke the
            connection before replying to everything; a reply owed did not come
            whole within ``reply_timeout``; or the server sent what is not a
            reply: a frame over ``max_frame``, bytes the framing cannot decode, or
            more replies (bytes, for raw framing) than messages sent.
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
    """One exchange's two tasks and what they share: counts, deadlines, and the
    first failure."""

    stream: trio.abc.Stream
    framing: Framing
    on_reply: Callable[[bytes], Awaitable[None]]
    reply_timeout: float
    scope: trio.CancelScope
    """The nursery's scope: cancelled when the exchange is over or has failed."""
    asked: int = 0
    """Replies owed for the messages whose sending has begun (bytes for raw framing)."""
    received: int = 0
    """Replies received (bytes for raw framing)."""
    owed: collections.deque[tuple[int, float, int]] = attrs.field(factory=collections.deque)
    """For each message not answered yet, oldest first: ``asked`` once it is
    answered, the deadline of its reply (set when it began to go out, moved on
    when the reply before it arrives), and its number."""
    sending: int = 0
    """The number of the message being written (0: none)."""
    sending_done: bool = False
    failure: ClientError | None = None
    receive_scope: trio.CancelScope | None = None
    """The scope of the receive in progress, whose deadline is the oldest reply's."""

    @property
    def raw(self) -> bool:
        return self.framing.kind == "raw"

    def finish_if_done(self) -> None:
        if self.sending_done and self.received >= self.asked:
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
            # Its reply is owed from now (or from the reply before it, if that is
            # later): a server that does not read our message runs out this time.
            deadline = trio.current_time() + self.reply_timeout
            self.asked += len(data) if self.raw else 1
            self.owed.append((self.asked, deadline, index))
            if self.receive_scope is not None:  # waiting with no deadline, or an earlier one
                self.receive_scope.deadline = min(self.receive_scope.deadline, deadline)
            self.sending = index
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return self.fail(
                    ClientError(f"connection lost while sending (after {self.received} replies)")
                )
            self.sending = 0
        self.sending_done = True
        self.finish_if_done()

    async def receive_all(self) -> None:
        decoder = self.framing.decoder()
        while True:
            data = await self._receive(decoder)
            if data is None:
                return  # failed
            decoder.feed(data)
            try:
                while (frame := decoder.next_frame()) is not None:
                    size = len(frame) if self.raw else 1
                    room = self.asked - self.received
                    if size > room:
                        if room:  # raw: the bytes owed are a reply; the rest is not
                            self.received += room
                            await self.on_reply(frame[:room])
                        return self.fail(self._not_asked_for())
                    self.received += size
                    self._answered()
                    await self.on_reply(frame)
            except FramingError as exc:
                return self.fail(ClientError(f"bad reply from the server: {exc}"))
            except ClientError as exc:  # from on_reply
                return self.fail(exc)
            self.finish_if_done()

    def _answered(self) -> None:
        """Drop the messages answered in full; the wait for the next reply begins now."""
        if not self.owed or self.owed[0][0] > self.received:
            return
        while self.owed and self.owed[0][0] <= self.received:
            self.owed.popleft()
        if self.owed:
            asked, deadline, index = self.owed[0]
            self.owed[0] = (asked, max(deadline, trio.current_time() + self.reply_timeout), index)

    async def _receive(self, decoder: Decoder) -> bytes | bytearray | None:
        """The next bytes from the server, never empty; None once the exchange has
        failed: the server closed or broke the connection, or the next reply
        owed did not come whole by its deadline."""
        deadline = self.owed[0][1] if self.owed else math.inf
        with trio.CancelScope(deadline=deadline) as scope:
            self.receive_scope = scope
            try:
                data = await self.stream.receive_some()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.fail(
                    ClientError(f"connection lost after {self.received} of {self.asked} replies")
                )
                return None
            finally:
                self.receive_scope = None
        if scope.cancelled_caught:
            self.fail(self._timed_out(decoder))
            return None
        if not data:
            counts = f"{self.received} of {self.asked} replies"
            self.fail(ClientError(f"server closed the connection after {counts}"))
            return None
        return data

    def _timed_out(self, decoder: Decoder) -> ClientError:
        unit = " bytes" if self.raw else ""
        details = f"{self.received} of {self.asked}{unit} received"
        if held := decoder.buffered:
            details += f"; reply {self.received + 1} incomplete after {count(held, 'byte')}"
        message = f"no reply for {self.reply_timeout:g}s ({details})"
        if self.sending:
            message += f"; message {self.sending} not all sent: the server stopped reading"
        return ClientError(message)

    def _not_asked_for(self) -> ClientError:
        if self.raw:
            return ClientError(
                f"the server sent back more than the {count(self.asked, 'byte')} it was sent"
            )
        return ClientError(
            f"the server sent a reply to no message: reply {self.received + 1}, "
            f"with {count(self.asked, 'message')} sent"
        )


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
