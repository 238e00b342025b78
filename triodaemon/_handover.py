"""Handing a daemon's listening sockets and live connections to a new process.

A new process (the *taker*) takes over from a running one (the *giver*): the
listening sockets move over a Unix stream socket as ``SCM_RIGHTS`` descriptors
(the same sockets, so their accept queues and Unix socket files never go
away), then every connection that owes its client nothing moves too, with the
bytes it had read but not yet framed, so its conversation carries on in the
new process. The giver exits once it has nothing left.

The channel is a control connection (``triodaemon --takeover PATH`` connects to
the giver's control socket) or a socketpair the giver made when it started its
successor itself (SIGHUP, ``ctl upgrade``). It begins as the control protocol:
the taker asks ``{"command": "takeover", "versions": [1]}`` and the giver
answers with the version both speak, or an error (no common version, a drain
or another upgrade under way). From there on it carries messages of this
module, strictly in turn (each side waits for the other's answer), which is
what ties the descriptors to their message: each message is a 4-byte length,
a JSON header, and ``header["blob"]`` raw bytes, its descriptors riding on its
first byte. Version 1::

    taker                                   giver
      | hello {pid, framing, handler,  -->    |
      |        migrate}                       |
      |  <-- listeners {pid, listeners,       | the taker adopts them and accepts
      |            workers} + fds             |
      | ready {}                       -->    | the giver stops accepting; the
      |                                       | socket files are the taker's now
      |  <-- connections {[...]} + fds + blob | (repeated: batches of connections
      | adopted {count}                -->    |  at a frame boundary)
      |  <-- done {handed, left}              | the giver drains what is left, exits

Either side may send ``error {error}`` instead of its next message: the handover
is called off. Before ``ready`` it can fail without a trace: the giver never
stopped accepting, and the socket files stay its own. A batch belongs to the
giver until the taker answers ``adopted``: if the taker dies first, those
connections carry on in the giver (nothing was read from them in between),
which accepts again. A supervisor (``--workers``) hands over no connection
itself: its ``workers`` say where each of its workers hands its own over.
"""

from __future__ import annotations

import abc
import array
import contextlib
import json
import logging
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

from ._config import DaemonConfig
from ._control import Command, Commands, ControlClient, ControlError, Session, no_arguments
from ._errors import ClientError, TriodaemonError
from ._faults import fault, loads
from ._framing import Framing
from ._listeners import AcceptGate, BoundListener, UnixAddress
from ._stats import Stats

log = logging.getLogger("triodaemon")

#: The versions of the handover protocol this release speaks, oldest first. A
#: version is added (never changed) when the messages change; a giver picks the
#: newest one both sides speak, and refuses a taker it shares none with.
HANDOVER_VERSIONS = (1,)
#: The largest message header, in bytes (a batch of connection records).
MAX_HEADER = 1 << 20
#: The largest blob of one message (the unframed bytes of a batch of connections),
#: a sanity bound only: a batch holds at most ``BATCH_BYTES`` and one partial frame
#: more, which the framing both sides share bounds.
MAX_BLOB = 1 << 32
#: Descriptors per message at most (Linux takes 253 per ``SCM_RIGHTS``).
MAX_FDS = 200
#: A batch of connections ends at this many connections or this many unframed bytes.
BATCH_CONNECTIONS = 64
BATCH_BYTES = 4 << 20
#: Seconds a taker that said ``ready`` may take to adopt a batch (it takes
#: milliseconds) before it counts as stalled (at most the upgrade timeout): the
#: giver then accepts again, so a wedged taker cannot keep the service down.
ADOPT_TIMEOUT = 5.0

_LENGTH = struct.Struct(">I")
_RECV_FLAGS = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class HandoverError(TriodaemonError):
    """A handover that cannot go on: the other side refused, broke the protocol, or left."""


class CalledOff(HandoverError):
    """The other side called the handover off (an ``error`` message), and serves on."""


class Stalled(HandoverError):
    """The taker did not adopt a batch in time: it may have them, or not."""


class Channel:
    """The handover's messages over a connected ``AF_UNIX`` stream socket.

    Args:
        sock: the connected socket (a trio socket); closed by :meth:`aclose`.
        where: who is on the other end, for error messages.
    """

    def __init__(self, sock: trio.socket.SocketType, where: str) -> None:
        self.sock = sock
        self.where = where

    async def send(
        self, header: dict[str, Any], blob: bytes | bytearray = b"", fds: Sequence[int] = ()
    ) -> None:
        """Send one message: ``header`` (JSON), ``blob``, and ``fds`` (``SCM_RIGHTS``).

        Raises:
            HandoverError: the other side is gone.
        """
        encoded = json.dumps({**header, "blob": len(blob)}, separators=(",", ":")).encode()
        data = memoryview(_LENGTH.pack(len(encoded)) + encoded + blob)
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            sent = await self.sock.sendmsg([data], ancillary)
            while sent < len(data):
                sent += await self.sock.send(data[sent:])
        except OSError as exc:
            raise HandoverError(f"{self.where}: connection lost: {exc.strerror or exc}") from None

    async def receive(self, *kinds: str) -> tuple[dict[str, Any], bytes, list[socket.socket]]:
        """The next message, which must be one of ``kinds``: its header, blob and sockets.

        The sockets are the caller's to close (every descriptor received is
        closed here if the message is refused).

        Raises:
            HandoverError: the other side left, sent something else, or an error message.
        """
        received: list[socket.socket] = []
        try:
            size = _LENGTH.unpack(await self._exactly(_LENGTH.size, received))[0]
            if size > MAX_HEADER:
                raise HandoverError(
                    f"{self.where} sent a {size}-byte header (at most {MAX_HEADER})"
                )
            try:
                header = loads(await self._exactly(size, received))
            except ValueError as exc:
                raise HandoverError(f"{self.where} sent a header that is not JSON: {exc}") from None
            if not isinstance(header, dict):
                raise HandoverError(f"{self.where} sent a header that is not an object")
            blob_size = header.get("blob", 0)
            if not isinstance(blob_size, int) or not 0 <= blob_size <= MAX_BLOB:
                raise HandoverError(f"{self.where} sent a blob of {blob_size!r} bytes")
            blob = await self._exactly(blob_size, received) if blob_size else b""
            kind = header.get("type")
            if kind == "error" and "error" not in kinds:
                raise CalledOff(f"{self.where} called it off: {header.get('error')}")
            if kind not in kinds:
                raise HandoverError(
                    f"{self.where} sent {kind!r} where {' or '.join(kinds)} was due"
                )
        except BaseException:
            for sock in received:
                sock.close()
            raise
        return header, blob, received

    async def _exactly(self, size: int, received: list[socket.socket]) -> bytes:
        """Read exactly ``size`` bytes (never more: the next message is not ours yet),
        collecting any descriptors that came with them."""
        parts: list[bytes] = []
        left = size
        while left:
            try:
                data, ancillary, flags, _ = await self.sock.recvmsg(
                    min(left, 1 << 20), socket.CMSG_SPACE(MAX_FDS * 4), _RECV_FLAGS
                )
            except OSError as exc:
                raise HandoverError(
                    f"{self.where}: connection lost: {exc.strerror or exc}"
                ) from None
            received.extend(_sockets(ancillary))
            if flags & getattr(socket, "MSG_CTRUNC", 0):
                raise HandoverError(
                    f"could not take every descriptor {self.where} sent: this process's "
                    "open-file limit (ulimit -n), or more than one message carries"
                )
            if not data:
                raise HandoverError(f"{self.where} closed the connection")
            parts.append(data)
            left -= len(data)
        return b"".join(parts)

    async def aclose(self) -> None:
        self.sock.close()
        await trio.lowlevel.checkpoint()


def _sockets(ancillary: list[tuple[int, int, bytes]]) -> list[socket.socket]:
    """The sockets of the ``SCM_RIGHTS`` descriptors in ``ancillary`` (others closed)."""
    found: list[socket.socket] = []
    for level, kind, data in ancillary:
        if level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS:
            continue
        fds = array.array("i")
        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        for fd in fds:
            try:
                found.append(socket.socket(fileno=fd))
            except OSError:
                os.close(fd)  # not a socket: nothing we asked for
    return found


def handler_name(handler: object) -> str:
    """What the ``hello`` says of a frame handler: ``echo`` for the built-in echo
    (``None``), else the handler's module and qualified name. A giver hands its
    connections only to a taker whose handler is the same."""
    if handler is None:
        return "echo"
    module = getattr(handler, "__module__", "?")
    return f"{module}.{getattr(handler, '__qualname__', type(handler).__qualname__)}"


@attrs.frozen
class ListenerRecord:
    """One listening socket as the handover describes it."""

    address: str
    """As the giver reported it (``tcp://127.0.0.1:8000``), for logs."""
    path: str | None
    """A Unix socket's path (what it was bound to may be another name: see
    :mod:`._socketfile`); ``None`` for TCP."""
    control: bool
    """Whether it is the control socket."""
    identity: tuple[int, int] | None
    """For a Unix socket file the giver made, its ``(st_dev, st_ino)``: the taker
    removes the file at its final shutdown if it is still that one."""
    label: str
    """Where it came from, for the readiness line (``systemd socket NAME``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "path": self.path,
            "control": self.control,
            "identity": list(self.identity) if self.identity is not None else None,
            "label": self.label,
        }

    @classmethod
    def from_json(cls, record: Any) -> ListenerRecord:
        if not isinstance(record, dict):
            raise HandoverError(f"a listener record is an object, not {record!r}")
        identity = record.get("identity")
        if identity is not None:
            if not (
                isinstance(identity, list)
                and len(identity) == 2
                and all(isinstance(part, int) for part in identity)
            ):
                raise HandoverError(f"bad socket file identity {identity!r}")
            identity = (identity[0], identity[1])
        path = record.get("path")
        if path is not None and not isinstance(path, str):
            raise HandoverError(f"bad socket path {path!r}")
        return cls(
            str(record.get("address", "?")),
            path,
            bool(record.get("control", False)),
            identity,
            str(record.get("label", "")),
        )


@attrs.frozen
class ConnectionRecord:
    """One connection as the handover describes it; its socket travels beside it."""

    peer: str
    listener: str
    pending: int
    """Bytes read but not yet framed (a partial frame), in the message's blob."""
    idle_left: float | None
    """Seconds until the connection's next deadline (idle, or its frame's); ``None``: none."""
    frame_left: float | None
    """Seconds until its partial frame must be complete; ``None``: no such deadline."""

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, record: Any) -> ConnectionRecord:
        if not isinstance(record, dict):
            raise HandoverError(f"a connection record is an object, not {record!r}")
        pending, idle_left, frame_left = (
            record.get("pending"),
            record.get("idle_left"),
            record.get("frame_left"),
        )
        if not isinstance(pending, int) or pending < 0:
            raise HandoverError(f"bad pending byte count {pending!r}")
        return cls(
            str(record.get("peer", "?")),
            str(record.get("listener", "?")),
            pending,
            _seconds_or_none(idle_left),
            _seconds_or_none(frame_left),
        )


def _seconds_or_none(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HandoverError(f"bad deadline in a connection record: {value!r}")
    return max(0.0, float(value))


def choose_version(offered: Any) -> int:
    """The newest version both sides speak.

    Raises:
        HandoverError: none in common (the message says what each side speaks).
    """
    ours = set(HANDOVER_VERSIONS)
    theirs = (
        {v for v in offered if type(v) is int and abs(v) < 2**31}  # (not True: a bool)
        if isinstance(offered, list)
        else set()
    )
    common = ours & theirs
    if not common:
        raise HandoverError(
            f"no handover version in common: this daemon (pid {os.getpid()}) speaks "
            f"{_versions(sorted(ours))}, the new process {_versions(sorted(theirs)[-8:])}; "
            "restart it instead (stop, then start)"
        )
    return max(common)


def _not_our_user(stream: trio.SocketStream) -> str | None:
    """Why the process at the other end of ``stream`` may not take this daemon over:
    only its own user (or root) may, whoever else may connect to the control socket
    (``--control-mode 0660`` to let a group watch ``stats`` lets it take no client's
    connection). ``None``: it may (or the system cannot tell who it is)."""
    creds = getattr(socket, "SO_PEERCRED", None)
    if creds is None:
        return None
    try:
        data = stream.socket.getsockopt(socket.SOL_SOCKET, creds, struct.calcsize("3i"))
    except OSError:
        return None
    uid = struct.unpack("3i", data)[1]
    if uid in (0, os.geteuid()):
        return None
    return f"uid {uid} may not take this daemon over: only uid {os.geteuid()} (its own) or root"


def _peer_pid(sock: trio.socket.SocketType) -> int:
    """The pid of the process at the other end of a Unix socket (0 if unknown)."""
    creds = getattr(socket, "SO_PEERCRED", None)
    if creds is None:
        return 0
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, creds, struct.calcsize("3i"))
    except OSError:
        return 0
    pid = int(struct.unpack("3i", data)[0])
    return 0 if pid == os.getpid() else pid  # (a socketpair of ours: the kernel cannot say)


def _pid(message: dict[str, Any]) -> int:
    """The ``pid`` a message names (0 if it names none)."""
    pid = message.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else 0


def _versions(versions: Sequence[int]) -> str:
    return "version " + ", ".join(map(str, versions)) if versions else "none"


def finite_or_none(value: float) -> float | None:
    """``value``, or ``None`` for an infinite one (JSON has no infinity)."""
    return value if math.isfinite(value) else None


#: How a new process (an upgrade's, a worker) starts: triodaemon's entry point as
#: installed, not ``-m triodaemon``, which would look for it first in the working
#: directory (a ``triodaemon.py`` there would run as the daemon's user).
_BOOTSTRAP = (
    "import sys\n"
    "if sys.path and sys.path[0] == '':\n"
    "    del sys.path[0]\n"
    "from triodaemon.__main__ import main_entry\n"
    "main_entry()\n"
)


def python_program() -> list[str]:
    """How to start triodaemon again: this interpreter, triodaemon's entry point (the
    program on disk now, so an upgrade runs a newer one), never code that happens to
    be in the working directory."""
    return [sys.executable, "-c", _BOOTSTRAP]


# -- the two sides -------------------------------------------------------------------


@attrs.frozen
class Given:
    """What a handover did, as the giver saw it."""

    pid: int
    """The process that took over."""
    listeners: int
    """Listening sockets it took (the control socket among them)."""
    handed: int
    """Connections it took."""
    left: int
    """Connections that finish in the giver (owed replies, a different framing, or
    ``migrate`` off)."""
    workers: int = 0
    """A supervisor's: its workers, which hand their connections over each to its
    successor, after this."""


@attrs.define(eq=False)
class Handing:
    """One handover from this daemon, from the request until it is given or called off."""

    who: str
    """What asked for it, for logs: ``SIGHUP``, ``ctl upgrade``, ``--takeover from pid 42``."""
    ready_by: float
    """When (trio's clock) the new process must be ready, or the handover is called off."""
    kill: Callable[[], Awaitable[bool]] | None = None
    """How to end the taker, if it is ours (an upgrade's child): whether it is gone.
    A stalled taker that is gone had no connection it did not adopt."""
    taker: int = 0
    """The taker's pid, where we know it better than the kernel can say (a socketpair
    we made reports our own pid as its peer's)."""
    committed: bool = False
    """The taker is ready and this daemon has stopped accepting: no way back but
    the taker's failure."""
    scope: trio.CancelScope | None = None
    """Around the handover until it is committed: a drain that begins cancels it."""
    given: Given | None = None
    failure: str | None = None
    finished: trio.Event = attrs.field(factory=trio.Event)

    def fail(self, why: str) -> None:
        if not self.finished.is_set():
            self.failure = why
            self.finished.set()

    def succeed(self, given: Given) -> None:
        self.given = given
        self.finished.set()


class Giver(abc.ABC):
    """What can hand its sockets to a new process: a :class:`~triodaemon.Daemon`, or a
    supervisor of workers (whose workers then hand their connections over each to
    its successor). The handover's bookkeeping is here; the subclass says what it
    hands over and how it stops, starts again, and retires."""

    config: DaemonConfig
    notify: Callable[..., None]
    upgrade: Callable[[str], Awaitable[dict[str, Any]]] | None
    listener_labels: list[str]
    handler_name: str
    """Who answers frames here (:func:`handler_name`): connections move only to a
    taker that says the same."""
    _draining: bool
    _handing: Handing | None
    _listeners: Sequence[BoundListener]
    _control: BoundListener | None
    _gate: AcceptGate
    _given_up: list[tuple[BoundListener, tuple[int, int]]]
    _faults: Stats
    """Where this process counts its own internal errors (see :mod:`._faults`)."""

    @property
    @abc.abstractmethod
    def connections(self) -> int:
        """How many connections are open."""

    @abc.abstractmethod
    async def wait_draining(self) -> None:
        """Wait until a shutdown begins."""

    def _handover_listeners(self) -> list[tuple[ListenerRecord, int]]:
        """Every listening socket (the control socket last), described, with its descriptor."""
        labels = [*self.listener_labels, *[""] * len(self._listeners)]
        found = [
            (listener, False, label)
            for listener, label in zip(self._listeners, labels[: len(self._listeners)], strict=True)
        ]
        if self._control is not None:
            found.append((self._control, True, ""))
        return [
            (
                ListenerRecord(
                    str(listener.address),
                    listener.address.path if isinstance(listener.address, UnixAddress) else None,
                    control,
                    listener.unix_identity,
                    label,
                ),
                listener.sock.fileno(),
            )
            for listener, control, label in found
            if listener.sock.fileno() >= 0
        ]

    def _stop_accepting(self, taker: int) -> None:
        """The taker (pid) accepts now: stop, and leave it the socket files."""
        self.notify(f"MAINPID={taker}", "READY=1", f"STATUS=handing over to pid {taker}")
        self._gate.close()
        everything = [*self._listeners, *([self._control] if self._control else [])]
        for listener in everything:
            identity = listener.disown()
            if identity is not None:
                self._given_up.append((listener, identity))

    def _accept_again(self) -> None:
        """The taker failed after all: accept again, and own the socket files again."""
        for listener, identity in self._given_up:
            listener.unix_identity = identity
        self._given_up.clear()
        self._gate.open()
        self.notify(f"MAINPID={os.getpid()}", "READY=1", "STATUS=serving (the upgrade failed)")

    def _handover_extras(self) -> dict[str, Any]:
        """More for the ``listeners`` message (a supervisor: its workers)."""
        return {}

    @abc.abstractmethod
    async def _migrate(
        self, channel: Channel, kill: Callable[[], Awaitable[bool]] | None
    ) -> tuple[int, int]:
        """Hand the connections over: how many were, and how many stay. ``kill``
        ends a stalled taker, if it is ours (see :attr:`Handing.kill`)."""

    @abc.abstractmethod
    def _handed_over(self, given: Given) -> None:
        """The handover is done: finish what is left, and exit."""

    def begin_handover(self, who: str) -> Handing:
        """Reserve this daemon for one handover, asked for by ``who``.

        Raises:
            HandoverError: a drain or another handover is under way.
        """
        if self._draining:
            raise HandoverError("the daemon is draining; an upgrade cannot start now")
        if self._handing is not None:
            raise HandoverError(f"an upgrade is already under way ({self._handing.who})")
        ready_by = trio.current_time() + self.config.upgrade_timeout
        handing = self._handing = Handing(who, ready_by)
        self.notify(
            "RELOADING=1",
            f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
            f"STATUS=upgrading ({who})",
        )
        return handing

    def end_handover(self, handing: Handing, why: str) -> None:
        """Call off ``handing`` (before it began, or after it failed): serve on."""
        if self._handing is handing:
            self._handing = None
            if not handing.finished.is_set():
                self.notify("READY=1", "STATUS=serving (the upgrade failed)")
        handing.fail(why)

    def takeover_command(
        self, expected: Handing | None = None, who: str = "a takeover on the control socket"
    ) -> Command:
        """The ``takeover`` command: a new process asks for this daemon's sockets.

        ``expected``: the handover it belongs to (an upgrade that started the new
        process); ``None``: a process that came by itself (``--takeover``), which
        the log calls ``who``.
        """

        async def takeover(args: dict[str, Any]) -> Session:
            versions = args.pop("versions", None)
            no_arguments(args)
            try:
                version = choose_version(versions)
                if expected is None:
                    handing = self.begin_handover(who)
                elif expected is self._handing and not expected.finished.is_set():
                    handing = expected
                else:
                    raise HandoverError("this upgrade is over; start another")
            except HandoverError as exc:
                log.warning("takeover refused: %s", exc)
                raise ControlError(str(exc)) from None

            async def run(stream: trio.SocketStream) -> None:
                await self._give(handing, Channel(stream.socket, "the new process"))

            return Session(
                {"version": version, "pid": os.getpid()},
                run,
                lambda: self.end_handover(handing, "refused, or not answered"),
                _not_our_user,
            )

        return takeover

    def _add_handover_commands(self, commands: Commands, source: str) -> None:
        """``takeover`` (for a new process), and ``upgrade`` if :attr:`upgrade` is set."""
        commands.add(
            "takeover",
            self.takeover_command(),
            "takeover versions=[1]",
            "a new process takes the sockets over (triodaemon --takeover)",
        )
        upgrade = self.upgrade
        if upgrade is not None:

            async def run_upgrade(args: dict[str, Any]) -> dict[str, Any]:
                no_arguments(args)
                return await upgrade(f"ctl upgrade {source}")

            commands.add(
                "upgrade",
                run_upgrade,
                "upgrade",
                "start a new copy that takes over every socket and connection (as SIGHUP does)",
            )

    def _call_off_for_a_drain(self) -> None:
        """A drain begins: a handover not yet committed is called off (a committed
        one finishes: the new process serves already)."""
        handing = self._handing
        if handing is not None and not handing.committed and handing.scope is not None:
            handing.scope.cancel()

    async def _give(self, handing: Handing, channel: Channel) -> None:
        """Run one handover over ``channel``; serve on if it fails, retire if not."""
        try:
            with trio.CancelScope() as handing.scope:
                given = await give(self, channel, handing)
            if handing.scope.cancelled_caught:
                raise HandoverError("a drain began")
        except Exception as exc:  # the boundary of one handover channel
            if not isinstance(exc, HandoverError):
                fault(self._faults, f"upgrade ({handing.who})", exc)
                exc = HandoverError(f"internal error ({type(exc).__name__})")
                if self._gate.shut:  # (it failed after this daemon stopped accepting)
                    self._accept_again()
            log.error(
                "upgrade (%s) called off: %s; %s",
                handing.who,
                exc,
                "draining" if self._draining else "serving on",
            )
            self.end_handover(handing, str(exc))
            # Tell it, if it listens: a taker that serves already then stops.
            with trio.move_on_after(1), contextlib.suppress(HandoverError):
                await channel.send({"type": "error", "error": str(exc)})
            return
        finally:
            handing.scope = None
            await channel.aclose()
        handing.succeed(given)
        log.info(
            "handed over to pid %d (%s): %d listener%s, %d connection%s; "
            "%d connection%s finish%s here",
            given.pid,
            handing.who,
            given.listeners,
            "" if given.listeners == 1 else "s",
            given.handed,
            "" if given.handed == 1 else "s",
            given.left,
            "" if given.left == 1 else "s",
            "es" if given.left == 1 else "",
        )
        self._handed_over(given)


async def give(daemon: Giver, channel: Channel, handing: Handing) -> Given:
    """The giver's side, once the ``takeover`` request is answered.

    Until the taker is ready (by ``handing.ready_by``, trio's clock) nothing
    changes here; then this daemon stops accepting and its socket files become
    the taker's; then its connections move in batches. If the taker fails before
    it is ready, or while connections move, the daemon accepts again and
    serves whatever it still holds.

    Raises:
        HandoverError: why the handover was called off.
    """
    config = daemon.config
    pid = handing.taker or _peer_pid(channel.sock)  # (not the taker's own word)
    with trio.move_on_at(handing.ready_by) as scope:
        hello, _, stray = await channel.receive("hello")
        for sock in stray:
            sock.close()
        pid = pid or _pid(hello)
        channel.where = f"the new process (pid {pid})"
        if hello.get("framing") != config.framing.to_json():
            raise HandoverError(
                f"the new process (pid {pid}) frames differently from this daemon "
                f"({config.framing.describe()}): the clients of these sockets would meet "
                "another protocol; give it the same framing flags, or restart instead"
            )
        listeners = daemon._handover_listeners()
        extras = daemon._handover_extras()
        await channel.send(
            {
                "type": "listeners",
                "pid": os.getpid(),
                "listeners": [record.to_json() for record, _ in listeners],
                **extras,
            },
            fds=[fd for _, fd in listeners],
        )
        await channel.receive("ready")
    if scope.cancelled_caught:
        raise HandoverError(
            f"the new process{f' (pid {pid})' if pid else ''} was not ready within "
            f"{config.upgrade_timeout:g}s"
        )
    handing.committed = True
    daemon._stop_accepting(pid)
    log.info(
        "upgrade (%s): pid %d serves; this process accepts no more and hands over what it has",
        handing.who,
        pid,
    )
    migrate = config.migrate and hello.get("migrate") is True
    if migrate and hello.get("handler", "echo") != daemon.handler_name:
        log.warning(
            "the new process (pid %d) runs another frame handler (%s, not %s); connections "
            "finish here instead of moving",
            pid,
            hello.get("handler"),
            daemon.handler_name,
        )
        migrate = False
    handed, left = 0, daemon.connections
    if migrate:
        try:
            handed, left = await daemon._migrate(channel, handing.kill)
        except BaseException:  # the taker failed (or we are cancelled): serve on
            daemon._accept_again()
            raise
    # (If it is gone now, it has everything it adopted; the rest finishes here either way.)
    with contextlib.suppress(HandoverError):
        await channel.send({"type": "done", "handed": handed, "left": left})
    return Given(pid, len(listeners), handed, left, len(extras.get("workers", ())))


async def send_batch(
    channel: Channel,
    batch: Sequence[tuple[ConnectionRecord, bytes, int]],
    timeout: float = ADOPT_TIMEOUT,
) -> None:
    """Hand one batch of connections over; return once the taker has adopted them.

    Raises:
        HandoverError: the taker did not adopt them (they are still ours).
    """
    await channel.send(
        {"type": "connections", "connections": [record.to_json() for record, _, _ in batch]},
        b"".join(pending for _, pending, _ in batch),
        [fd for _, _, fd in batch],
    )
    with trio.move_on_after(timeout):
        answer, _, stray = await channel.receive("adopted")
        for sock in stray:
            sock.close()
        if answer.get("count") == len(batch):
            return
        raise HandoverError(
            f"{channel.where} adopted {answer.get('count')!r} of {len(batch)} connections"
        )
    raise Stalled(f"{channel.where} did not adopt connections within {timeout:g}s")


@attrs.frozen
class Taken:
    """What a taker got before serving: the listeners (and their labels), the control
    socket, and who gave them."""

    listeners: list[BoundListener]
    labels: list[str]
    control: BoundListener | None
    pid: int
    workers: dict[int, str]
    """A supervisor's: each of its workers' handover socket, by worker number."""
    owned: list[tuple[BoundListener, tuple[int, int]]]
    """The socket files the giver made, which become ours (to remove at our final
    shutdown) once it has stopped accepting."""


async def request_takeover(
    stream: trio.SocketStream,
    where: str,
    *,
    framing: Framing,
    migrate: bool,
    handler: str = "echo",
) -> tuple[Channel, Taken]:
    """The taker's first half: ask, say hello, adopt the listening sockets.

    Raises:
        HandoverError: refused (no common version, a drain or another upgrade
            under way), or the giver left or broke the protocol.
    """
    client = ControlClient(stream, where)
    try:
        answer = await client.request("takeover", versions=list(HANDOVER_VERSIONS))
    except (ClientError, ControlError) as exc:
        raise HandoverError(str(exc)) from None
    if not isinstance(answer, dict) or answer.get("version") not in HANDOVER_VERSIONS:
        raise HandoverError(f"{where} chose handover version {answer!r}, which this one lacks")
    giver = _pid(answer)
    channel = Channel(stream.socket, f"the old process (pid {giver})")
    await channel.send(
        {
            "type": "hello",
            "pid": os.getpid(),
            "framing": framing.to_json(),
            "handler": handler,
            "migrate": migrate,
        }
    )
    header, _, socks = await channel.receive("listeners")
    records = header.get("listeners")
    try:
        if not isinstance(records, list) or len(records) != len(socks):
            raise HandoverError(
                f"{channel.where} sent {len(socks)} sockets for "
                f"{len(records) if isinstance(records, list) else '?'} listeners"
            )
        parsed = [ListenerRecord.from_json(record) for record in records]
        # Not ours to remove until the giver has stopped (take_connections): if we
        # fail before, the files are still the giver's, and serve on.
        adopted = [
            (BoundListener.from_socket(sock, path=record.path), record)
            for sock, record in zip(socks, parsed, strict=True)
        ]
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    owned = [
        (listener, identity)
        for listener, record in adopted
        if (identity := _still(listener, record.identity)) is not None
    ]
    controls = [listener for listener, record in adopted if record.control]
    serving = [(listener, record) for listener, record in adopted if not record.control]
    for extra in controls[1:]:
        extra.close()
    return channel, Taken(
        [listener for listener, _ in serving],
        [record.label for _, record in serving],
        controls[0] if controls else None,
        giver,
        _workers(header.get("workers")),
        owned,
    )


def _still(listener: BoundListener, identity: tuple[int, int] | None) -> tuple[int, int] | None:
    """``identity``, if the listener's socket file is still that file (else ``None``)."""
    if identity is None or not isinstance(listener.address, UnixAddress):
        return None
    try:
        st = os.stat(listener.address.path)
    except OSError:
        return None
    return identity if (st.st_dev, st.st_ino) == identity else None


def _workers(records: Any) -> dict[int, str]:
    """The ``workers`` of a ``listeners`` message: number to handover socket path."""
    found: dict[int, str] = {}
    for record in records if isinstance(records, list) else []:
        if isinstance(record, dict):
            number, path = record.get("number"), record.get("path")
            if isinstance(number, int) and isinstance(path, str):
                found[number] = path
    return found


def _own(taken: Taken) -> None:
    for listener, identity in taken.owned:
        listener.unix_identity = identity


class Adopter(Protocol):
    """What takes connections over: a daemon (or a supervisor, which has none to take)."""

    @property
    def draining(self) -> bool: ...

    def adopt(self, sock: socket.socket, record: ConnectionRecord, pending: bytes) -> None: ...


async def take_connections(channel: Channel, daemon: Adopter, taken: Taken) -> int:
    """The taker's second half, once it serves: say so, adopt every connection the
    giver sends, until it is done. Returns how many were adopted.

    The socket files become ours once the handover is done, or if the giver is
    gone; not if it called the takeover off (it serves on), nor while a batch
    could still be refused. A taker that begins to stop (a drain) refuses the
    next batch: those connections stay with the giver, which accepts again.

    Raises:
        CalledOff: the giver called it off and serves on (this process should
            stop), or this process is stopping and called it off itself.
        HandoverError: the giver left or broke the protocol (this process serves on).
    """
    await channel.send({"type": "ready"})
    adopted = 0
    while True:
        try:
            header, blob, socks = await channel.receive("connections", "done")
        except CalledOff:
            raise
        except HandoverError:
            _own(taken)  # the giver is gone: nobody else will remove them
            raise
        if header["type"] == "done":
            for sock in socks:
                sock.close()
            _own(taken)
            return adopted
        records = header.get("connections")
        try:
            if daemon.draining:
                why = "the new process is stopping"
                with contextlib.suppress(HandoverError):
                    await channel.send({"type": "error", "error": why})
                raise CalledOff(f"{why} (a drain began): the rest stays with {channel.where}")
            if not isinstance(records, list) or len(records) != len(socks):
                raise HandoverError(f"{channel.where} sent connections without their sockets")
            parsed = [ConnectionRecord.from_json(record) for record in records]
            if sum(record.pending for record in parsed) != len(blob):
                raise HandoverError(f"{channel.where} sent unframed bytes that do not add up")
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        offset = 0
        for sock, record in zip(socks, parsed, strict=True):
            pending = blob[offset : offset + record.pending]
            offset += record.pending
            daemon.adopt(sock, record, pending)
        adopted += len(socks)
        await channel.send({"type": "adopted", "count": len(socks)})


#: The options that say where this process takes over from, and the shortest
#: abbreviation argparse takes for each: never passed on to another process.
_TAKEOVER_OPTIONS = {"--takeover": "--ta", "--handover-fd": "--handover-f"}


def without_options(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--takeover`` and ``--handover-fd`` (spelled out, abbreviated,
    or ``=VALUE``): what a process passes on to its successor or its workers, which
    take over from somewhere else (or nowhere)."""
    kept: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
            continue
        name, equals, _ = argument.partition("=")
        if any(
            len(name) >= len(shortest) and option.startswith(name)
            for option, shortest in _TAKEOVER_OPTIONS.items()
        ):
            skip = not equals
            continue
        kept.append(argument)
    return kept
