"""One worker process as the supervisor sees it: its slot, its channel, its
log lines relayed, its reports summed, and where its successor finds it.

The lifecycle (start, readiness, restart with backoff, drain) is the
supervisor's (:mod:`._supervisor`); what is here is about one worker at a time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from ._control import ControlClient, ControlError
from ._errors import ClientError
from ._listeners import BoundListener, UnixAddress
from ._program import python_program
from ._socketfile import UNIX_PATH_MAX
from ._stats import Stats

log = logging.getLogger("triodaemon")

#: Seconds a worker may take to answer the supervisor before it is skipped.
ASK_TIMEOUT = 5.0

#: The longest line of a worker's stderr that is relayed whole; past it, the line
#: is cut (a worker printing without newlines must not fill the supervisor's memory).
MAX_RELAYED_LINE = 65536

#: A worker's log line as its formatter writes it: time, name, level, message.
_LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} triodaemon (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)"
)


_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}


def handover_directory() -> str | None:
    """A new private directory (mode 0700) for the workers' handover sockets."""
    try:
        return tempfile.mkdtemp(prefix="triodaemon-")
    except OSError as exc:
        log.warning("no directory for the workers' handover sockets: %s", exc)
        return None


def shares(total: int, count: int) -> list[int]:
    """``total`` connections split among ``count`` workers as evenly as whole numbers
    go (the first ones get one more): ``shares(10, 3) == [4, 3, 3]``."""
    return [total // count + (number < total % count) for number in range(count)]


@attrs.define(eq=False)
class WorkerProcess:
    """One worker slot as the supervisor sees it: the process in it now, its
    channel, and what the supervisor remembers of it across restarts."""

    number: int
    process: trio.Process | None = None
    channel: ControlClient | None = None
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    ready: bool = False
    state: str = "starting"  # when it does not answer for itself
    started: float = math.nan  # time.monotonic() of the last start
    served_from: float = math.nan  # time.monotonic() when it last became ready
    restarts: int = 0
    failures: int = 0  # deaths at start in a row
    last_words: list[str] = attrs.field(factory=list)
    level: int = logging.WARNING  # of its last log line: the level of the lines after it
    stats: dict[str, Any] | None = None  # the last stats it reported
    handover_path: str | None = None  # where its successor asks it for its connections
    predecessor: str | None = None  # the old worker's handover socket, while it serves

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def ask(self, command: str, **args: Any) -> Any:
        """One request to this worker; ``ClientError`` if it cannot answer in time."""
        channel = self.channel
        if channel is None or not self.ready:
            raise ClientError(f"worker {self.number} is not serving")
        async with self.lock:
            with trio.move_on_after(ASK_TIMEOUT):
                return await channel.request(command, **args)
        raise ClientError(f"worker {self.number} did not answer within {ASK_TIMEOUT:g}s")

    def row(self, answer: dict[str, Any] | None) -> dict[str, Any]:
        """This worker in the supervisor's ``stats``: ``answer`` is its ``stats`` reply
        now (``None``: it did not answer)."""
        last = self.stats if self.ready else None
        return {
            "worker": self.number,
            "pid": self.pid,
            "state": answer["state"] if answer else "not answering" if self.ready else self.state,
            "uptime": time.monotonic() - self.started,
            "restarts": self.restarts,
            "connections": last["connections"]["open"] if last else 0,
            "frames": last["frames"] if last else 0,
        }

    async def set_level(self, level: str) -> None:
        """Pass ``ctl log-level`` on (one that is starting gets the level in force
        on its command line)."""
        with contextlib.suppress(ClientError, ControlError):
            await self.ask("log-level", level=level)


def worker_command(
    worker: WorkerProcess, argv: Sequence[str], share: int, listeners: Sequence[BoundListener]
) -> list[str]:
    """How to start ``worker``: the supervisor's ``argv`` and, after them (the last
    wins), the log level in force now (``ctl log-level`` may have changed it), its
    ``share`` of the connections, its number, and the listening sockets it inherits
    (a Unix socket with the path it serves)."""
    level = logging.getLevelName(log.getEffectiveLevel()).lower()
    command = [*python_program(), *argv, "--log-level", level]
    command += ["--max-connections", str(share), "--worker", str(worker.number)]
    for listener in listeners:
        inherit = str(listener.sock.fileno())
        if isinstance(listener.address, UnixAddress):
            inherit += f":{listener.address.path}"
        command += ["--inherit", inherit]
    return command


def handover_socket(
    directory: str | None, worker: WorkerProcess
) -> tuple[socket.socket | None, str | None]:
    """A listening socket of the worker's own, in our private directory: where,
    when we are upgraded, its successor asks it for its connections (and where
    nobody else can reach it). ``(None, None)`` if there cannot be one: the
    worker's connections then drain at an upgrade instead of moving."""
    if directory is None:
        return None, None
    path = os.path.join(directory, f"w{worker.number}.{worker.restarts}")
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        return None, None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        log.warning("no handover socket for worker %d: %s", worker.number, exc)
        return None, None
    return sock, path


async def relay_lines(worker: WorkerProcess, stderr: trio.abc.ReceiveStream) -> None:
    """Log the worker's stderr lines again, whole, at their level, with its name,
    until its EOF: a line with no newline for ``MAX_RELAYED_LINE`` bytes is cut there.
    Raises what the stream raises."""
    assert worker.process is not None
    pid = worker.process.pid
    buffer = b""
    while chunk := await stderr.receive_some():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        if len(buffer) > MAX_RELAYED_LINE:  # no newline for that long: cut it
            lines.append(buffer[:MAX_RELAYED_LINE] + b" [cut]")
            buffer = b""
        for line in lines:
            relay_line(worker, pid, line.decode(errors="replace"))
    if buffer:
        relay_line(worker, pid, buffer.decode(errors="replace"))


def relay_line(worker: WorkerProcess, pid: int, line: str) -> None:
    """Log one line of the worker's stderr again, at its level, with its name."""
    if not line:
        return
    found = _LOG_LINE.fullmatch(line)
    if found:
        worker.level, message = _LEVELS[found[1]], found[2]
    else:  # the next line of a record (a traceback, at its level), or not a log line
        message = line
    worker.last_words = [*worker.last_words[-4:], message]
    log.log(worker.level, "worker %d (pid %d): %s", worker.number, pid, message)


def add_report(total: Stats, report: Any) -> None:
    """Add the counters of a worker's ``stats`` report to ``total`` (but for the
    connections open now, which only a worker's latest report tells).

    Raises:
        Exception: ``report`` is not a ``stats`` report (KeyError, TypeError).
    """
    connections, errors = report["connections"], report["errors"]
    counts: list[tuple[str, Any]] = [
        ("connections_accepted", connections["total"]),
        ("connections_taken", connections.get("taken_over", 0)),
        ("connections_handed", connections.get("handed_over", 0)),
        ("frames", report["frames"]),
        ("bytes_received", report["bytes_in"]),
        ("bytes_sent", report["bytes_out"]),
        ("memory_waits", report["memory_waits"]),
        ("framing_errors", errors["framing"]),
        ("incomplete_frames", errors["incomplete"]),
        ("resets", errors["resets"]),
        ("idle_timeouts", errors["idle timeouts"]),
        ("frame_timeouts", errors["frame timeouts"]),
        ("handler_errors", errors["handler"]),
        ("accept_errors", errors["accept"]),
        ("internal_errors", errors.get("internal", 0)),  # (a worker of an older release)
        ("proxy_header_errors", errors.get("proxy header", 0)),  # (likewise)
        ("proxy_untrusted", errors.get("proxy untrusted", 0)),
        ("proxy_local", report.get("proxy_local", 0)),
    ]
    if not isinstance(connections["open"], int) or any(
        not isinstance(count, int) for _, count in counts
    ):
        raise TypeError("a count that is not an integer")
    for name, count in counts:
        setattr(total, name, getattr(total, name) + count)
