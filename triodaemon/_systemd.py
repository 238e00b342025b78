"""systemd: socket activation, and the notify protocol (readiness, status, stopping,
drain extensions, watchdog).

Socket activation is ``sd_listen_fds(3)``: when ``$LISTEN_PID`` is this process,
descriptors 3 to 3 + ``$LISTEN_FDS`` - 1 are listening sockets systemd bound
for us, named by ``$LISTEN_FDNAMES``. :func:`activated_sockets` adopts them,
checks that each is a listening stream socket, and removes the variables so
nothing the daemon starts takes them for its own. systemd owns those sockets'
files: a Unix socket adopted this way is never chmod-ed or unlinked by us.

The notify protocol is what ``sd_notify(3)`` does, in a few lines: each message is one
datagram of ``KEY=value`` lines sent to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). No
dependency is needed for that (libsystemd's own ``sd_notify`` sends the same
datagram; the ``systemd`` Python bindings would bring a C library for it), and
sending never blocks or fails the daemon: a message the socket cannot take is
dropped, as systemd's is.

:class:`Notifier` reads the environment once (and removes what it read, so
nothing the daemon starts inherits it) and runs one task in the daemon's
nursery, from the event loop, so a wedged loop stops the watchdog pings:

- ``READY=1`` when every listener accepts (the command line sends it with its
  readiness lines);
- ``STATUS=`` a short live line (connections, frames per second) every few
  seconds;
- ``STOPPING=1`` when a drain starts, then ``EXTEND_TIMEOUT_USEC=`` while the
  drain is within its deadline, so a ``TimeoutStopSec=`` shorter than
  ``--drain-timeout`` does not kill a drain that is on time;
- ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC`` when it is set for this process
  (``$WATCHDOG_PID`` unset or ours).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import MutableMapping
from typing import Protocol

import trio

from ._errors import AddressError, printable
from ._stats import Stats

#: The shortest interval between two watchdog pings, whatever ``$WATCHDOG_USEC`` says.
MIN_WATCHDOG_PING = 0.01


class Served(Protocol):
    """What the notifier reports on: a :class:`~triodaemon.Daemon`, or a supervisor of workers."""

    @property
    def stats(self) -> Stats: ...

    @property
    def connections(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    async def wait_draining(self) -> None: ...


log = logging.getLogger("triodaemon")

#: How often the ``STATUS=`` line is refreshed.
STATUS_INTERVAL = 2.0
#: How often, during a drain, its deadline is extended (each extension covers
#: this and a margin, so systemd never sees the extension run out first).
EXTEND_INTERVAL = 1.0
_EXTEND_MARGIN = 2.0

_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_ACTIVATION = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

#: The first descriptor systemd passes (after stdin, stdout and stderr).
SD_LISTEN_FDS_START = 3


def activated_sockets(
    environ: MutableMapping[str, str] | None = None,
) -> list[tuple[socket.socket, str]]:
    """The listening sockets systemd passed to this process, with their names.

    Empty unless ``$LISTEN_PID`` is this process. The variables are removed
    either way. Each socket is made non-blocking and not inherited.

    Raises:
        AddressError: ``$LISTEN_FDS`` is not a count, or a passed descriptor is
            not a listening stream socket (one line, naming it).
    """
    env = os.environ if environ is None else environ
    pid, count, names = (env.pop(name, None) for name in _ACTIVATION)
    if not count or pid != str(os.getpid()):
        return []
    if not count.isdigit():
        raise AddressError(f"LISTEN_FDS={count!r} from systemd is not a number of sockets")
    labels = [printable(name) for name in names.split(":")] if names else []
    adopted: list[tuple[socket.socket, str]] = []
    try:
        for index in range(int(count)):
            fd = SD_LISTEN_FDS_START + index
            label = labels[index] if index < len(labels) and labels[index] else f"fd {fd}"
            adopted.append((_adopt(fd, label), label))
    except BaseException:
        for sock, _ in adopted:
            sock.close()
        raise
    return adopted


def _adopt(fd: int, label: str) -> socket.socket:
    which = label if label == f"fd {fd}" else f"{label} (fd {fd})"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise AddressError(
            f"systemd socket {which} is not a socket: {exc.strerror or exc}"
        ) from exc
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.close()
        raise AddressError(
            f"systemd socket {which} is not a listening stream socket: "
            "use ListenStream= in the .socket unit"
        )
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


class Notifier:
    """Sends notify messages to systemd, if systemd asked for them; else does nothing.

    Args:
        address: the notify socket: a path, or ``@name`` (abstract); ``None``: none.
        watchdog: the watchdog interval in seconds, or ``None``.
    """

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        self._sock: socket.socket | None = None
        self._target: str | bytes = ""
        if address:
            self._target = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read ``$NOTIFY_SOCKET`` and the watchdog variables, and remove them."""
        env = os.environ if environ is None else environ
        values = {name: env.pop(name, None) for name in _ENVIRONMENT}
        watchdog = None
        usec, pid = values["WATCHDOG_USEC"], values["WATCHDOG_PID"]
        if usec and (not pid or pid == str(os.getpid())):
            try:
                watchdog = int(usec) / 1e6
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec)
            else:
                watchdog = watchdog if watchdog > 0 else None
        return cls(values["NOTIFY_SOCKET"] or None, watchdog)

    @property
    def enabled(self) -> bool:
        """Whether there is a notify socket to send to."""
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """Send one message of ``KEY=value`` fields; a failure is logged, never raised."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._target)
        except OSError as exc:
            log.debug("notify %s: %s", ", ".join(fields), exc.strerror or exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run(self, daemon: Served, drain_timeout: float) -> None:
        """Refresh the status, ping the watchdog, and tell systemd about a drain, until cancelled."""
        if not self.enabled:
            return
        async with trio.open_nursery() as nursery:
            if self.watchdog is not None:
                # Half the interval, but not a busy loop for an absurd WATCHDOG_USEC=1.
                nursery.start_soon(self._watchdog, max(self.watchdog / 2, MIN_WATCHDOG_PING))
            nursery.start_soon(self._status, daemon)
            await daemon.wait_draining()
            self.send("STOPPING=1", f"STATUS=draining {_connections(daemon.connections)}")
            deadline = trio.current_time() + drain_timeout
            while (left := deadline - trio.current_time()) > 0:
                usec = int((min(left, EXTEND_INTERVAL) + _EXTEND_MARGIN) * 1e6)
                self.send(f"EXTEND_TIMEOUT_USEC={usec}")
                await trio.sleep(min(left, EXTEND_INTERVAL))

    async def _watchdog(self, every: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(every)

    async def _status(self, daemon: Served) -> None:
        frames = daemon.stats.frames
        at = trio.current_time()
        while True:
            await trio.sleep(STATUS_INTERVAL)
            now = trio.current_time()
            rate = (daemon.stats.frames - frames) / (now - at) if now > at else math.nan
            frames, at = daemon.stats.frames, now
            state = "draining" if daemon.draining else "serving"
            self.send(f"STATUS={state} {_connections(daemon.connections)}, {rate:,.0f} frames/s")


def _connections(count: int) -> str:
    return f"{count} connection{'' if count == 1 else 's'}"
