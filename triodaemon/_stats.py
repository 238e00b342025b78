"""Counters of what the daemon has done, for logs now and a control socket later."""

from __future__ import annotations

import attrs


@attrs.define
class Stats:
    """Running counters for one daemon. Plain integers: trio runs one task at a time."""

    connections_accepted: int = 0
    """Connections accepted since start."""
    connections_active: int = 0
    """Connections open now."""
    frames: int = 0
    """Frames decoded (for raw framing: reads)."""
    bytes_received: int = 0
    """Bytes read from peers."""
    bytes_sent: int = 0
    """Bytes written to peers."""
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

    def errors(self) -> dict[str, int]:
        """The error counters by kind: ``framing``, ``incomplete``, ``resets``,
        ``idle timeouts``, ``frame timeouts``, ``handler``, ``accept``."""
        return {
            "framing": self.framing_errors,
            "incomplete": self.incomplete_frames,
            "resets": self.resets,
            "idle timeouts": self.idle_timeouts,
            "frame timeouts": self.frame_timeouts,
            "handler": self.handler_errors,
            "accept": self.accept_errors,
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
        )
