"""A client: send frames to a server, collect what comes back.

Strategy: one task sends, one receives, both in a nursery; the exchange ends
when sending is over and every reply owed has arrived. "Owed" is counted in
frames, or in bytes for raw framing (where the server may split and join
freely). Used by ``triodaemon client`` and by the tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable

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
    raw = framing.kind == "raw"
    source = messages if isinstance(messages, AsyncIterable) else _from_iterable(messages)
    sent = 0
    received = 0
    sending_done = False
    failure: ClientError | None = None

    async with trio.open_nursery() as nursery:

        def finish_if_done() -> None:
            if sending_done and received >= sent:
                nursery.cancel_scope.cancel()

        def fail(error: ClientError) -> None:
            # Stop both tasks; raised after the nursery, so callers see a plain
            # ClientError rather than an exception group.
            nonlocal failure
            failure = failure or error
            nursery.cancel_scope.cancel()

        async def send_all() -> None:
            nonlocal sent, sending_done
            index = 0
            async for message in source:
                index += 1
                try:
                    data = framing.encode(message)
                except ValueError as exc:
                    return fail(ClientError(f"cannot send message {index}: {exc}"))
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return fail(
                        ClientError(f"connection lost while sending (after {received} replies)")
                    )
                sent += len(data) if raw else 1
            sending_done = True
            finish_if_done()

        async def receive_all() -> None:
            nonlocal received
            decoder = framing.decoder()
            while True:
                with trio.move_on_after(reply_timeout) as scope:
                    try:
                        data = await stream.receive_some()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return fail(
                            ClientError(f"connection lost after {received} of {sent} replies")
                        )
                if scope.cancelled_caught:
                    if received < sent:
                        return fail(
                            ClientError(
                                f"no reply for {reply_timeout:g}s ({received} of {sent} received)"
                            )
                        )
                    continue
                if not data:
                    return fail(
                        ClientError(
                            f"server closed the connection after {received} of {sent} replies"
                        )
                    )
                decoder.feed(data)
                try:
                    while (frame := decoder.next_frame()) is not None:
                        received += len(frame) if raw else 1
                        await on_reply(frame)
                except FramingError as exc:
                    return fail(ClientError(f"bad reply from the server: {exc}"))
                except ClientError as exc:  # from on_reply
                    return fail(exc)
                finish_if_done()

        nursery.start_soon(receive_all)
        nursery.start_soon(send_all)
    if failure is not None:
        raise failure
    return received


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
