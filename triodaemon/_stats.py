"""Counters of what the daemon has done, for logs and the control socket.

Strategy: a connection counts its own frames and bytes (one place per read, on
the hottest path); the daemon-wide totals add up the connections still open,
which :meth:`Stats.follow` registers, and the ones :meth:`Stats.fold` has
added in when they ended. Reading a total costs one pass over the open
connections; counting costs nothing twice.
"""

from __future__ import annotations

from typing import Protocol

import attrs


class Counting(Protocol):
    """What counts its own traffic: a connection."""

    frames: int
    bytes_in: int
    bytes_out: int


@attrs.define(repr=False)
class Stats:
    """Running counters for one daemon. Plain integers: trio runs one task at a time.

    ``frames``, ``bytes_received`` and ``bytes_sent`` include the connections open
    now (they count their own); assigning to one adjusts it as expected.
    """

    connections_accepted: int = 0
    """Connections accepted since start."""
    connections_active: int = 0
    """Connections open now."""
    _frames: int = 0
    _bytes_received: int = 0
    _bytes_sent: int = 0
    # Connections counting now: their counts are added in by fold() when they end.
    _live: set[Counting] = attrs.field(factory=set, init=False, repr=False, eq=False)
    framing_errors: int = 0
    """Connections closed for an oversized or malformed frame."""
    incomplete_frames: int = 0
    """Peers that closed in the middle of a frame."""
    resets: int = 0
    """Connections the peer reset or broke."""
    idle_timeouts: int = 0
    """Connections closed for having made no progress for the idle timeout."""
    frame_timeouts: int = 0
    """Connections closed for a frame not completed within the frame timeout."""
    memory_waits: int = 0
    """Times a connection holding a partial frame waited for the buffer budget."""
    handler_errors: int = 0
    """Connections ended by an exception in the frame handler."""
    accept_errors: int = 0
    """Failed accepts that were not one dead connection (descriptors or memory
    exhausted, a broken listener, an error not understood)."""
    connections_taken: int = 0
    """Connections another process handed to this one (an upgrade)."""
    connections_handed: int = 0
    """Connections this process handed to another one (an upgrade)."""
    proxy_header_errors: int = 0
    """Connections closed for a PROXY header that was missing, malformed, too long,
    cut short, or late."""
    proxy_untrusted: int = 0
    """Connections to a PROXY-protocol listener from an address not trusted to send
    a header (closed at once)."""
    proxy_local: int = 0
    """Connections whose PROXY header named no client (``LOCAL``: a balancer's health
    check; ``UNKNOWN``, ``UNSPEC``), served with their own endpoints."""
    internal_errors: int = 0
    """Failures of triodaemon's own code that one connection, control request or
    handover channel caught: each is logged with its traceback, ends only that
    connection (or request), and is a bug worth reporting."""

    def __repr__(self) -> str:
        # The public names (frames, not _frames), each with its total now.
        names = [field.name.lstrip("_") for field in attrs.fields(Stats) if field.repr]
        return "Stats(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in names) + ")"

    @property
    def frames(self) -> int:
        """Frames decoded (for raw framing: reads)."""
        return self._frames + sum(source.frames for source in self._live)

    @frames.setter
    def frames(self, value: int) -> None:
        self._frames += value - self.frames

    @property
    def bytes_received(self) -> int:
        """Bytes read from peers."""
        return self._bytes_received + sum(source.bytes_in for source in self._live)

    @bytes_received.setter
    def bytes_received(self, value: int) -> None:
        self._bytes_received += value - self.bytes_received

    @property
    def bytes_sent(self) -> int:
        """Bytes written to peers."""
        return self._bytes_sent + sum(source.bytes_out for source in self._live)

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        self._bytes_sent += value - self.bytes_sent

    def follow(self, source: Counting) -> None:
        """Count ``source``'s frames and bytes in the totals from now on."""
        self._live.add(source)

    def fold(self, source: Counting) -> None:
        """``source`` has ended: keep its counts and stop following it."""
        if source in self._live:
            self._live.discard(source)
            self._frames += source.frames
            self._bytes_received += source.bytes_in
            self._bytes_sent += source.bytes_out

    def errors(self) -> dict[str, int]:
        """The error counters by kind: ``framing``, ``incomplete``, ``resets``,
        ``idle timeouts``, ``frame timeouts``, ``handler``, ``accept``, ``proxy header``,
        ``proxy untrusted``, ``internal``."""
        return {
            "framing": self.framing_errors,
            "incomplete": self.incomplete_frames,
            "resets": self.resets,
            "idle timeouts": self.idle_timeouts,
            "frame timeouts": self.frame_timeouts,
            "handler": self.handler_errors,
            "accept": self.accept_errors,
            "proxy header": self.proxy_header_errors,
            "proxy untrusted": self.proxy_untrusted,
            "internal": self.internal_errors,
        }

    def summary(self) -> str:
        """One line for the log: connections, frames, bytes, errors by kind."""
        errors = self.errors()
        return (
            f"{self.connections_active} connection{'' if self.connections_active == 1 else 's'}"
            f" open, {self.connections_accepted} accepted; {self.frames} frames;"
            f" {self.bytes_received} bytes in, {self.bytes_sent} out; errors: "
            + ", ".join(f"{count} {kind}" for kind, count in errors.items())
            + f"; {self.memory_waits} waits for buffer room"
            + (
                f"; {self.connections_taken} connections taken over, "
                f"{self.connections_handed} handed over"
                if self.connections_taken or self.connections_handed
                else ""
            )
        )
