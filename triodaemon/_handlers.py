"""Frame handlers: what answers each frame, and the boundary around calling one.

A handler is user code: :func:`answer_frames` calls it once per complete frame,
encodes its replies with the connection's framing, and catches what it raises
(an exception there is the handler's bug, never the daemon's: the connection
that called it reports it, and ends).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ._decoders import Decoder
from ._errors import FramingError
from ._framing import Framing
from ._peers import ConnectionInfo

#: The per-frame behaviour: given a frame's payload, return the reply's payload
#: (framed with the connection's framing), or ``None`` to reply nothing.
FrameHandler = Callable[[bytes, ConnectionInfo], Awaitable["bytes | None"]]


async def echo(frame: bytes, conn: ConnectionInfo) -> bytes:
    """A frame handler that replies with the frame itself.

    The same replies as ``handler=None`` (the built-in echo), through the
    general path: one call per frame. A starting point for handlers of your own.
    """
    return frame


class HandlerFailed(Exception):
    """The frame handler raised ``failure`` (not our own code): what a connection
    carries to the end of its run, to tell the handler's failure from its own."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure


async def answer_frames(
    decoder: Decoder, handler: FrameHandler, info: ConnectionInfo, framing: Framing
) -> tuple[bytearray, int, Exception | None]:
    """Call ``handler`` on every complete frame ``decoder`` holds: their encoded
    replies, how many frames, and the handler's failure (or ``None``).

    Stops at a framing error, which stays in ``decoder.error``, and at the
    handler's first failure: a reply too large to frame is one too. The replies
    before either are kept, so what a client gets back does not depend on how
    its frames were cut into reads.
    """
    replies = bytearray()
    encode = framing.encode
    count = 0
    try:
        while (frame := decoder.next_frame()) is not None:
            count += 1
            try:
                reply = await handler(frame, info)
                if reply is not None:
                    replies += encode(reply)  # (ValueError: a reply too large to frame)
            except Exception as exc:
                return replies, count, exc
    except FramingError:
        pass
    return replies, count, None
