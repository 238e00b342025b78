"""A successor's part: take the sockets over before serving, the connections after.

Strategy: :func:`take_over` connects to the process to succeed (its control
socket, ``--takeover PATH``; or the channel an upgrade made, ``--handover-fd``)
and adopts its listening sockets before this process serves; once it serves,
:func:`finish_takeover` tells the old process so and adopts the connections it
hands over, then speaks to systemd (the old process has made this one the main
one). If the old process calls it off, it serves on and this one stops.
"""

from __future__ import annotations

import logging
import socket
from typing import Protocol

import trio

from .._config import ProcessConfig, requirement_of
from .._daemon import Daemon
from .._errors import ClientError
from .._faults import fault
from .._handover.giver import Giver
from .._handover.taker import Taken, request_takeover, take_connections
from .._handover.wire import CalledOff, Channel, HandoverError
from .._listeners import UnixAddress, connect
from .._supervisor import Supervisor
from .._systemd import Notifier
from .startup import Startup

log = logging.getLogger("triodaemon")


class Successor(Protocol):
    """A role taking over (see :mod:`.roles`)."""

    config: ProcessConfig
    notifier: Notifier
    failure: str | None

    @property
    def server(self) -> Daemon | Supervisor: ...

    @property
    def giver(self) -> Giver: ...

    async def wait_to_take_connections(self) -> None: ...

    async def takeover_done(self, count: int | None) -> None: ...


async def take_over(
    target: str | socket.socket, config: ProcessConfig, *, adopts: bool, workers: bool
) -> tuple[Channel, Taken]:
    """Connect to the process to take over from (its control socket's path, or the
    channel it made) and take its listening sockets. ``adopts``: whether this
    process can carry connections on itself (a supervisor cannot); ``workers``:
    whether its workers take over the old workers' connections.

    Raises:
        HandoverError: it refused, or failed; the message says why.
    """
    if isinstance(target, str):
        try:
            stream = await connect(UnixAddress(target))
        except ClientError as exc:
            raise HandoverError(
                f"cannot take over: {exc} (is a daemon running with --control {target}?)"
            ) from None
        where = f"the daemon at {target}"
    else:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(target))
        where = "the old process"
    try:
        with trio.move_on_after(config.upgrade_timeout):
            return await request_takeover(
                stream,
                where,
                framing=config.daemon.framing,
                proxy_protocol=requirement_of(config.daemon.proxy_protocol),
                migrate=config.migrate and adopts,
                workers=workers,
            )
        raise HandoverError(
            f"{where} did not hand its sockets over within {config.upgrade_timeout:g}s "
            "(--upgrade-timeout)"
        )
    except BaseException as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, HandoverError):
            raise HandoverError(f"cannot take over: {exc}") from None
        raise


async def finish_takeover(
    channel: Channel, taken: Taken, role: Successor, startup: Startup
) -> None:
    """Once serving: tell the old process, and adopt the connections it hands over
    (after the role's word: a worker waits for its supervisor's); then run
    systemd's notifications."""
    server = role.server
    count: int | None = None
    try:
        await startup.ready.wait()
        await role.wait_to_take_connections()
        count = await take_connections(channel, server, taken)
    except CalledOff as exc:
        if not server.draining:  # the old process called it off: it serves on, we stop
            role.failure = f"cannot take over: {exc}"
            server.drain()
        else:
            log.warning("took over, but %s", exc)
        await channel.aclose()
        return
    except HandoverError as exc:
        log.warning("took over, but the connections' handover ended early: %s", exc)
    except Exception as exc:  # the boundary of the handover channel: serve on
        fault(role.giver.faults, "taking the connections over", exc)
    finally:
        await channel.aclose()
    await role.takeover_done(count)
    await role.notifier.run(server, role.config.daemon.drain_timeout)
