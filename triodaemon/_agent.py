"""HAProxy's agent check: a TCP port where the balancer asks, every few seconds, how
to weigh this daemon, so that it sees a drain coming before the daemon stops accepting.

Strategy: one accept loop per agent listener; each connection is answered with one
line, what the process says of itself now (:data:`Say`), and closed. Nothing is read
first: HAProxy sends nothing unless configured to (``agent-send``); what it sends is
read and discarded after our line, so that our close is no reset that could destroy
the line in flight. Each answer is bounded in time, and the answers under way in
number: past it, a connection is closed unanswered (the balancer keeps the weight it
had: an agent that does not answer changes nothing in HAProxy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import trio

from ._accept import describe
from ._listeners import BoundListener

log = logging.getLogger("triodaemon")

#: What the process says of itself: ``ready`` (serving: full weight), ``drain`` (a
#: drain is coming or under way: no new connections, the open ones go on), or
#: ``gone`` (another process took this one's place: it answers nothing, the new
#: one answers on the same port).
Say = Literal["ready", "drain", "gone"]

#: The lines HAProxy's agent check reads (its ``agent-check`` documentation):
#: ``ready`` clears a drain or maintenance state, ``100%`` restores the configured weight.
LINES: dict[Say, bytes] = {"ready": b"ready 100%\n", "drain": b"drain\n"}
#: How long one answer may take, the discarding of what the balancer sent included.
ANSWER_TIMEOUT = 2.0
#: Answers under way at most; past it, a connection is closed unanswered.
MAX_ANSWERING = 16
#: Bytes of what the balancer sends (``agent-send``) read and discarded at most.
DISCARD = 4096


async def serve_agent(
    listener: BoundListener,
    say: Callable[[], Say],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer the agent check on ``listener`` until cancelled (it stays open: closing
    it is its owner's)."""
    answering = trio.CapacityLimiter(MAX_ANSWERING)
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            try:
                sock, _peer = await listener.accept()
            except OSError as exc:  # (out of descriptors, say: the daemon's own accepts report it)
                log.debug("agent on %s: accept failed: %s", listener.address, describe(exc))
                await trio.sleep(0.1)
                continue
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            try:
                answering.acquire_on_behalf_of_nowait(stream)
            except trio.WouldBlock:
                await trio.aclose_forcefully(stream)
                continue
            nursery.start_soon(_answer, stream, say(), answering)


async def _answer(stream: trio.SocketStream, say: Say, answering: trio.CapacityLimiter) -> None:
    try:
        with trio.move_on_after(ANSWER_TIMEOUT):
            if say != "gone":
                await stream.send_all(LINES[say])
                await stream.send_eof()
                discarded = 0
                while discarded < DISCARD and (data := await stream.receive_some(DISCARD)):
                    discarded += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # (the balancer went: its next check asks again)
    finally:
        answering.release_on_behalf_of(stream)
        await trio.aclose_forcefully(stream)
