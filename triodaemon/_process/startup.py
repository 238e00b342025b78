"""How a process starts serving: where its sockets come from (:class:`Start`), and
the moment it is ready (:class:`Startup`, the ``task_status`` its server reports to)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence

import attrs
import trio

from .._errors import printable
from .._listeners import Address, BoundListener
from .._systemd import Notifier


class Startup(trio.TaskStatus[tuple[Address, ...]]):
    """Where the start is: the ``task_status`` a role's server reports to.

    It prints the readiness lines in the same instant the daemon starts serving
    (a plain ``nursery.start`` returns a scheduling pass later), so a signal is
    always either before readiness (the start stops) or after it (a drain).
    ``outer``: a ``task_status`` to pass the addresses on to (a role started
    in-process by ``nursery.start``).
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        quiet: bool = False,
        outer: trio.TaskStatus[tuple[Address, ...]] | None = None,
    ) -> None:
        self._outer = outer
        self.ready = trio.Event()
        """Set once the daemon serves (and the readiness lines are out)."""
        self.quiet = quiet
        """A worker's: its supervisor prints the readiness lines."""
        self.stopped_by: int | None = None
        """A stop signal that came before the daemon was ready."""
        self._notifier = notifier
        self.labels: list[str] = []
        """What to say of each listener in its readiness line, in listener order."""
        self.taking_over = False
        """An upgrade's new process: silent to systemd until the old one has told it
        that this is the main process now (it sends ``MAINPID=`` and ``READY=1``)."""
        self.control: BoundListener | None = None
        """The control socket, announced before the listeners (it answers first)."""

    def taken_over(self, pid: int, labels: Sequence[str]) -> None:
        """This process takes over from ``pid``: say so in each readiness line, and
        stay silent to systemd until the old process has made this one the main one."""
        self.labels = [
            f"{label}, " * bool(label) + f"taken over from pid {pid}" for label in labels
        ]
        self.taking_over = True

    def started(self, value: tuple[Address, ...] | None = None) -> None:
        if self.stopped_by is not None:
            return  # serve() got this far before its cancellation reached it
        if self.control is not None:
            control = printable(str(self.control.address))
            print(f"triodaemon: control on {control}", file=sys.stderr, flush=True)
        for index, address in enumerate(() if self.quiet else value or ()):
            label = self.labels[index] if index < len(self.labels) else ""
            label = f" ({label})" if label else ""
            line = printable(f"listening on {address}{label}")
            print(f"triodaemon: {line}", file=sys.stderr, flush=True)
        self.ready.set()
        if not self.taking_over:
            self._notifier.send("READY=1", "STATUS=serving")
        if self._outer is not None:
            self._outer.started(value or ())


@attrs.frozen
class Start:
    """How this process starts serving, besides its configuration."""

    argv: Sequence[str]
    """The command line's arguments (for an upgrade's new process)."""
    passed: Sequence[BoundListener]
    """The listening sockets this process was given: systemd's (each labelled with
    its name), or a worker's (inherited from its supervisor)."""
    channel: socket.socket | None = None
    """A worker's end of its supervisor's channel."""
    takeover: str | socket.socket | None = None
    """Take over from a running daemon: its control socket's path, or (an upgrade's
    new process) the channel the old process made; a worker: the handover socket of
    the old worker it succeeds."""
    handover_socket: socket.socket | None = None
    """A worker's: where its successor will ask for its connections."""
