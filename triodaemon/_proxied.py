"""Behind a load balancer: reading the PROXY header it sends before the client's
stream, over a connection's transport, and what the connection then is.

Strategy: the header is the first thing a connection reads (its first wait, see
:mod:`._connection`); :func:`receive_header` reads until :func:`._proxyproto.parse`
has it whole or refuses it, under the policy's deadline from the accept (bytes
that trickle in never extend it) and its size bound, and hands back what came after
the header, which is the client's stream. It decides nothing about the connection
itself: a refusal is returned, for the connection to tell (:mod:`._endings`) and close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from ._config import ProxyProtocol
from ._peers import ConnectionInfo
from ._proxyproto import ProxyHeader, ProxyHeaderError, parse
from ._stats import Stats
from ._transport import Transport, Wait

log = logging.getLogger("triodaemon")


@attrs.frozen
class Refused:
    """Why a connection's header was refused: one line, for the log."""

    why: str


async def receive_header(
    transport: Transport,
    buf: bytearray,
    size: int,
    policy: ProxyProtocol,
    opened: float,
    draining: Callable[[], bool],
) -> tuple[ProxyHeader, bytearray] | Refused | None:
    """Read the header from ``transport`` (into ``buf``, ``size`` bytes at a time).

    Returns the header and the bytes that came after it (from the last read alone:
    no more than ``size``); :class:`Refused`; or ``None`` when nothing of the
    client's came and nothing will: the peer's EOF before a byte (a balancer's
    plain TCP check), or a drain (``draining()``) before the header was whole.

    Raises:
        OSError, trio.BrokenResourceError: the connection broke (``_transport.BROKEN``).
    """
    deadline = opened + policy.timeout
    got = bytearray()
    while True:
        received = transport.receive_into(buf, size)
        if received is None:
            if draining():  # (a partial header is none: nothing of the client's came)
                return None
            if await transport.wait_readable(deadline) is Wait.DEADLINE:
                return Refused(
                    f"PROXY header not complete after {policy.timeout:g}s "
                    f"({len(got)} bytes of it came)"
                )
            continue
        if not received:
            return Refused(f"closed after {len(got)} bytes of a PROXY header") if got else None
        got += memoryview(buf)[:received]
        try:
            header = parse(got, max_size=policy.max_header)
        except ProxyHeaderError as exc:
            return Refused(str(exc))
        if header is not None:
            return header, got[header.size :]


def behind(header: ProxyHeader, info: ConnectionInfo, stats: Stats) -> ConnectionInfo:
    """The connection ``info`` describes, once ``header`` has come: its client the
    peer, or as it was if the header names none (``LOCAL``, ``UNKNOWN``)."""
    if header.source is None:
        stats.proxy_local += 1
        log.debug("%s: %s: its own endpoints stand", info, header.describe())
        return info
    info = info.behind(header.source)
    log.debug("%s: %s", info, header.describe())
    return info
