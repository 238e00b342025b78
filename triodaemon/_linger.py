"""The lingering close: our EOF, then read and discard until nothing we sent can be lost.

Why: a socket closed with bytes of the peer's unread makes the kernel answer
with a reset, which destroys whatever of our replies the peer has not read yet
(the "lingering close" of nginx and Apache). So after our EOF we read on, and
discard, while something can still be lost, for a while at most:

- until the peer's EOF (it has read all it wanted), or it is gone;
- once everything we sent is acknowledged (read, on a Unix socket), where the
  transport tells (a socket on Linux), and the connection has been quiet for
  ``_QUIET``, so that the peer's next read finds our EOF, not a reset: a
  pipelining client at a drain sends until it reads our EOF, so a peer that goes
  on sending is read on for that;
- where the transport cannot tell, or for a peer that broke the framing, after
  ``LINGER_DISCARD`` bytes discarded;
- at the latest after ``LINGER_SECONDS``.

One function over a :class:`~._transport.Transport`: what it reads goes to a
counter the caller gives, and a broken connection just ends it (the caller's own
account of how the conversation ended is not this function's to change).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ._transport import BROKEN, Transport

#: After our EOF, how long at most we keep reading (and discarding).
LINGER_SECONDS = 2.0
#: Bytes discarded at most while lingering: a peer that goes on sending after our
#: EOF is cut off after this much, if it broke the framing or if we cannot tell
#: whether what we sent has arrived (a trio stream). Otherwise (the daemon's
#: sockets, where the OS tells) it is read on while what we sent may still be
#: lost: a pipelining client at a drain goes on sending until it reads our EOF.
LINGER_DISCARD = 65536

#: While lingering with replies unacknowledged, how often to look again: the
#: kernel gives no event for "all acknowledged", so the first look is soon
#: (an idle peer acknowledges within a round trip) and later ones back off.
_FIRST_LOOK = 0.001
_LAST_LOOK = 0.05
#: Once everything we sent is acknowledged, how long the connection must have been
#: quiet (nothing read, nothing of ours read by the peer) before we close. A
#: pipelining client at a drain sends until it reads our EOF, the more so just as it
#: reads our last replies; closing with its bytes unread would make the kernel
#: answer with a reset, which its next read reports in place of our EOF (a clean
#: drain would look like a crash to it). An idle peer is not waited for at all.
_QUIET = 0.1


async def linger(
    transport: Transport,
    buf: bytearray,
    size: int,
    *,
    active: float,
    framing_broken: bool,
    discarded: Callable[[int], None],
) -> None:
    """Send our EOF on ``transport``, then read and discard (into ``buf``, ``size``
    bytes at a time, each read counted by ``discarded``) as the module says.

    ``active``: when the connection last moved bytes either way; ``framing_broken``:
    whether the peer broke the framing (it is cut off sooner).
    """
    give_up = trio.current_time() + LINGER_SECONDS
    try:
        with trio.CancelScope(deadline=give_up):
            await transport.shutdown_write()
    except BROKEN:
        return
    look = _FIRST_LOOK
    total = 0
    next_look = LINGER_DISCARD  # discarded bytes at which to look up again
    while True:
        try:
            got = transport.receive_into(buf, size)
        except BROKEN:
            return  # gone
        if got == 0:
            return  # the peer's EOF: it has read all it wanted
        if got is not None:
            discarded(got)
            total += got
            active = trio.current_time()
            if total > next_look:
                # A peer that goes on sending: a framing violator is cut off here, as
                # is anyone where we cannot tell what is acknowledged; anyone else is
                # read on until it is quiet (a pipelining client at a drain sends until
                # it reads our EOF, a large frame's rest included), for
                # LINGER_SECONDS at most.
                if framing_broken or transport.unacknowledged() is None:
                    return
                if trio.current_time() >= give_up:
                    return
                next_look = total + LINGER_DISCARD
                await trio.lowlevel.checkpoint()  # reading on, but not alone
            continue
        unsent = transport.unacknowledged()
        now = trio.current_time()
        if now >= give_up:
            return
        if unsent == 0:
            quiet_at = active + _QUIET
            if now >= quiet_at:
                return
            wake_at = min(give_up, quiet_at)
        else:
            active = now  # (the peer has yet to read it, and may answer as it does)
            wake_at = give_up if unsent is None else min(give_up, now + look)
            look = min(2 * look, _LAST_LOOK)
        await transport.wait_readable(wake_at)
