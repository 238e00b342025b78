"""How a connection's trouble is told: one line naming the peer, and one counter.

Every expected way a conversation ends short (the peer resets, breaks the
framing, goes idle, trickles a frame past its deadline, stops reading our
replies, or ends mid-frame; a balancer's PROXY header that is bad or late, or a
peer not trusted to send one) and the frame handler's failure: counted in
:class:`~._stats.Stats` and logged once, here, in the words an operator reads.
A connection decides *that* it ends; this module says so, the same way for
every connection.
"""

from __future__ import annotations

import logging

from ._peers import ConnectionInfo
from ._stats import Stats

log = logging.getLogger("triodaemon")


def lost(stats: Stats, info: ConnectionInfo, exc: BaseException | None) -> None:
    """The peer (or the network) broke the connection."""
    stats.resets += 1
    log.info("%s: connection lost: %s", info, reason(exc))


def idle(stats: Stats, info: ConnectionInfo, seconds: float) -> None:
    """No progress either way for ``seconds``."""
    stats.idle_timeouts += 1
    log.info("%s: idle for %gs; closing", info, seconds)


def stopped_reading(stats: Stats, info: ConnectionInfo, seconds: float) -> None:
    """Replies waited ``seconds`` for a peer that read none of them."""
    stats.idle_timeouts += 1
    log.info("%s: peer stopped reading (no progress for %gs); closing", info, seconds)


def frame_timeout(stats: Stats, info: ConnectionInfo, seconds: float, buffered: int) -> None:
    """A frame begun was not complete within ``seconds`` (``buffered`` bytes of it came)."""
    stats.frame_timeouts += 1
    log.warning(
        "%s: frame not complete after %gs (%d bytes so far); closing", info, seconds, buffered
    )


def framing_error(stats: Stats, info: ConnectionInfo, error: Exception) -> None:
    """The peer broke the framing (the replies before it are sent)."""
    stats.framing_errors += 1
    log.warning("%s: %s; closing", info, error)


def incomplete(stats: Stats, info: ConnectionInfo, error: Exception) -> None:
    """The peer's EOF came in the middle of a frame, which is discarded."""
    stats.incomplete_frames += 1
    log.warning("%s: %s; discarded", info, error)


def handler_failed(stats: Stats, info: ConnectionInfo, exc: Exception) -> None:
    """The frame handler raised ``exc`` (logged with its traceback: a bug to fix)."""
    stats.handler_errors += 1
    log.error("%s: frame handler failed: %s: %s", info, type(exc).__name__, exc, exc_info=exc)


def proxy_header_failed(stats: Stats, info: ConnectionInfo, why: str) -> None:
    """The PROXY header a balancer must send first is missing, malformed, too long,
    cut short by the peer's close, or late (``why`` says which)."""
    stats.proxy_header_errors += 1
    log.warning("%s: %s; closing", info, why)


def proxy_untrusted(stats: Stats, info: ConnectionInfo) -> None:
    """A connection to a PROXY-protocol listener from an address not trusted to send
    a header: closed before a byte of it is read."""
    stats.proxy_untrusted += 1
    log.warning("%s: not a trusted balancer (--proxy-from); closing", info)


def reason(exc: BaseException | None) -> str:
    """The OS's words for why a connection broke: from ``exc`` or the OSError behind it."""
    error = exc if isinstance(exc, OSError) else getattr(exc, "__cause__", None)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return (str(exc) or type(exc).__name__) if exc is not None else "unknown"
