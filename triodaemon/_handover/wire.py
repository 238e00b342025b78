"""The handover's messages, their limits, and the channel that carries them.

Each message is a 4-byte length, a JSON header, and ``header["blob"]`` raw
bytes, its descriptors riding on its first byte; the sides speak strictly in
turn (see :mod:`triodaemon._handover` for the conversation). Everything read
from the other side is checked here before anything is kept: the header's and
the blob's sizes, every record's fields.
"""

from __future__ import annotations

import array
import json
import math
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from .._errors import TriodaemonError
from .._faults import loads
from .._peers import ConnectionState, peer_credentials

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


def connection_to_json(state: ConnectionState) -> dict[str, Any]:
    """A connection's record in a ``connections`` message; its unframed bytes go in
    the message's blob (``pending`` says how many), its socket beside it."""
    return {
        "peer": state.peer,
        "proxy": state.proxy,
        "listener": state.listener,
        "pending": len(state.pending),
        "idle_left": _finite_or_none(state.idle_left),
        "frame_left": _finite_or_none(state.frame_left),
    }


def pending_size(record: Any) -> int:
    """How many bytes of the blob a connection's record says are its own.

    Raises:
        HandoverError: the record is not an object, or the count is not one.
    """
    if not isinstance(record, dict):
        raise HandoverError(f"a connection record is an object, not {record!r}")
    pending = record.get("pending")
    if not isinstance(pending, int) or isinstance(pending, bool) or pending < 0:
        raise HandoverError(f"bad pending byte count {pending!r}")
    return pending


def connection_from_json(record: Any, pending: bytes) -> ConnectionState:
    """The state :func:`connection_to_json` wrote, with its unframed bytes (the
    ``pending_size(record)`` bytes of the blob that are this record's: the caller
    has checked and cut them).

    Raises:
        HandoverError: a field that is not what it should be.
    """
    return ConnectionState(
        str(record.get("peer", "?")),
        str(record.get("listener", "?")),
        pending,
        _seconds(record.get("idle_left")),
        _seconds(record.get("frame_left")),
        proxy=str(record.get("proxy", "")),  # (a process of an older release: none)
    )


def _finite_or_none(value: float) -> float | None:
    """``value``, or ``None`` for an infinite one (JSON has no infinity)."""
    return value if math.isfinite(value) else None


def _seconds(value: Any) -> float:
    """A deadline of a connection record, in seconds from now (``None``: none, ``inf``)."""
    if value is None:
        return math.inf
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


def not_our_user(stream: trio.SocketStream) -> str | None:
    """Why the process at the other end of ``stream`` may not take this daemon over:
    only its own user (or root) may, whoever else may connect to the control socket
    (``--control-mode 0660`` to let a group watch ``stats`` lets it take no client's
    connection). ``None``: it may (or the system cannot tell who it is)."""
    credentials = peer_credentials(stream.socket)
    if credentials is None:
        return None
    uid = credentials[1]
    if uid in (0, os.geteuid()):
        return None
    return f"uid {uid} may not take this daemon over: only uid {os.geteuid()} (its own) or root"


def peer_pid(sock: trio.socket.SocketType) -> int:
    """The pid of the process at the other end of a Unix socket (0 if unknown)."""
    credentials = peer_credentials(sock)
    if credentials is None:
        return 0
    pid = credentials[0]
    return 0 if pid == os.getpid() else pid  # (a socketpair of ours: the kernel cannot say)


def pid_of(message: dict[str, Any]) -> int:
    """The ``pid`` a message names (0 if it names none)."""
    pid = message.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else 0


def _versions(versions: Sequence[int]) -> str:
    return "version " + ", ".join(map(str, versions)) if versions else "none"
