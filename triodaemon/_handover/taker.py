"""The new process's side of a handover.

Strategy: :func:`request_takeover` asks the old process (over its control
socket, or the channel it made), says hello and adopts the listening sockets,
before this process serves; :func:`take_connections`, once it serves, says
``ready`` and adopts every connection the old one sends, until it is done. The
socket files become this process's only once the old one has let them go.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import attrs
import trio

from .._control import ControlClient, ControlError
from .._errors import ClientError
from .._framing import Framing
from .._listeners import BoundListener, UnixAddress
from .._peers import ConnectionState
from .host import Adopter
from .wire import (
    HANDOVER_VERSIONS,
    CalledOff,
    Channel,
    HandoverError,
    ListenerRecord,
    connection_from_json,
    pending_size,
    pid_of,
)


@attrs.frozen
class Taken:
    """What a taker got before serving: the listeners (their labels with them), the
    control socket, and who gave them."""

    listeners: list[BoundListener]
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
    workers: bool = False,
    proxy_protocol: dict[str, object] | None = None,
) -> tuple[Channel, Taken]:
    """The taker's first half: ask, say hello, adopt the listening sockets.

    ``proxy_protocol``: the PROXY header this process requires
    (:func:`~triodaemon._config.requirement_of`), which must be the giver's.
    ``migrate``: whether this process takes connections itself; ``workers``:
    whether its workers take over those of a supervisor it succeeds (each from the
    old worker of its number). The giver keeps what neither takes, to finish there.

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
    giver = pid_of(answer)
    channel = Channel(stream.socket, f"the old process (pid {giver})")
    await channel.send(
        {
            "type": "hello",
            "pid": os.getpid(),
            "framing": framing.to_json(),
            "handler": handler,
            "migrate": migrate,
            "workers": workers,
            "proxy_protocol": proxy_protocol,
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
            (BoundListener.from_socket(sock, path=record.path, label=record.label), record)
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
            states = _states(records, blob, channel.where)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        for sock, state in zip(socks, states, strict=True):
            daemon.adopt(sock, state)
        adopted += len(socks)
        await channel.send({"type": "adopted", "count": len(socks)})


def _states(records: list[Any], blob: bytes, where: str) -> list[ConnectionState]:
    """The connections of a ``connections`` message, each with its unframed bytes.

    Raises:
        HandoverError: a record that is not one, or bytes that do not add up.
    """
    sizes = [pending_size(record) for record in records]
    if sum(sizes) != len(blob):
        raise HandoverError(f"{where} sent unframed bytes that do not add up")
    states = []
    offset = 0
    for record, size in zip(records, sizes, strict=True):
        states.append(connection_from_json(record, blob[offset : offset + size]))
        offset += size
    return states
