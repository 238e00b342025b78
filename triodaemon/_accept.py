"""Accepting connections: one loop per listener, a shared limit, and what an
accept's failure means.

Strategy: a loop waits until its listener has a connection *before* it takes a
slot of the connection limit (a loop holding a slot while its own listener is
quiet would starve the others), takes the connection without blocking, and
hands it to the daemon. It pauses while the gate is shut (another process
accepts on the same sockets during a handover). An accept that fails for lack
of descriptors or memory pauses that listener and retries; one that says the
listener is broken ends its loop (the daemon drains when none is left).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

import trio

from ._listeners import BROKEN_LISTENER_ERRNOS, AcceptGate, BoundListener
from ._stats import Stats

log = logging.getLogger("triodaemon")

#: Pause between accepts while they fail (out of descriptors or memory, or an
#: error not understood), as trio's serve_listeners does for EMFILE.
ACCEPT_BACKOFF = 0.1


def describe(exc: Exception) -> str:
    """``EIO (Input/output error)``: an OS error with its errno's name (or what else it is)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return f"{type(exc).__name__}: {exc}"
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{name} ({exc.strerror or exc})"


class ConnectionLimit:
    """``max_connections`` slots, shared by every listener's loop; it says once
    when it is reached and once when there is room again."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = trio.Semaphore(limit)
        self._reached = False

    async def acquire(self) -> None:
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            if not self._reached:
                self._reached = True
                log.warning(
                    "connection limit (%d) reached; not accepting until a connection ends",
                    self.limit,
                )
            await self._slots.acquire()

    def try_acquire(self) -> bool:
        """Take a slot if one is free (a connection taken over is served anyway)."""
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return False
        return True

    def release(self, *, quietly: bool = False) -> None:
        """Give a slot back; ``quietly``: say nothing of the room (a drain)."""
        self._slots.release()
        if self._reached and not quietly:
            self._reached = False
            log.info("below the connection limit again; accepting")


async def accept_loop(
    listener: BoundListener,
    limit: ConnectionLimit,
    gate: AcceptGate,
    stats: Stats,
    accepted: Callable[[socket.socket, object, str], bool],
    broken: Callable[[BoundListener, Exception], None],
) -> None:
    """Accept on ``listener`` until cancelled or it breaks (``broken`` is told).

    ``accepted(sock, peer, listener_name)`` serves each connection; it returns
    ``False`` if it could not (the socket is closed then, and its slot given back).
    """
    failing = False
    listener_name = str(listener.address)  # one string for all its connections
    while True:
        try:
            await gate.wait_open()
            await listener.wait_acceptable()
        except (OSError, ValueError, trio.ClosedResourceError) as exc:  # closed under us
            broken(listener, exc)
            return
        await limit.acquire()
        if gate.shut:  # another process takes over: it accepts now
            limit.release()
            await gate.wait_open()
            continue
        try:
            sock, peer = listener.accept_nowait()
        except trio.WouldBlock:
            limit.release()  # another process (or loop) took it
            continue
        except OSError as exc:
            limit.release()
            stats.accept_errors += 1
            if exc.errno in BROKEN_LISTENER_ERRNOS:
                broken(listener, exc)
                return
            # Out of descriptors or memory, or not understood: this listener
            # pauses, the others and every connection carry on.
            if not failing:
                log.error(
                    "accept on %s failed: %s; retrying every %gs",
                    listener.address,
                    describe(exc),
                    ACCEPT_BACKOFF,
                )
                failing = True
            await trio.sleep(ACCEPT_BACKOFF)
            continue
        if failing:
            log.warning("accepting again on %s", listener.address)
            failing = False
        if not accepted(sock, peer, listener_name):
            sock.close()
            limit.release()
