"""An in-process echo daemon for tests: started in a nursery, drained at the end.

Strategy: a thin async context manager over the library entry point, on a Unix
socket in a fresh temporary directory and an ephemeral loopback TCP port. On
exit it drains and raises :class:`UncleanDrain` if any connection had to be
cancelled at the deadline, so a test that leaves work half-done is told so.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import trio

from .._config import DaemonConfig
from .._daemon import Daemon
from .._errors import TriodaemonError
from .._framing import Framing
from .._handlers import FrameHandler
from .._listeners import Address, TcpAddress, UnixAddress, connect
from ._client import echo_frames

Transport = Literal["unix", "tcp"]


class UncleanDrain(TriodaemonError):
    """The echo server's drain had to cancel connections at its deadline."""


@attrs.frozen
class EchoServer:
    """A running in-process daemon and how to reach it."""

    daemon: Daemon
    """The daemon itself: ``stats``, ``drain()``."""
    unix: UnixAddress
    """Its Unix socket."""
    tcp: TcpAddress
    """Its loopback TCP address."""

    @property
    def framing(self) -> Framing:
        """The framing it serves."""
        return self.daemon.config.framing

    def address(self, transport: Transport = "unix") -> UnixAddress | TcpAddress:
        """The address for ``transport``."""
        return self.unix if transport == "unix" else self.tcp

    async def open_stream(self, transport: Transport = "unix") -> trio.SocketStream:
        """A new connection to the server."""
        return await connect(self.address(transport))

    async def echo(self, frames: Iterable[bytes], transport: Transport = "unix") -> list[bytes]:
        """Send ``frames`` on a new connection and return the replies."""
        return await echo_frames(self.address(transport), frames, framing=self.framing)


@asynccontextmanager
async def echo_server(
    framing: Framing | None = None,
    *,
    handler: FrameHandler | None = None,
    drain_timeout: float = 5.0,
    **config: Any,
) -> AsyncIterator[EchoServer]:
    """Run an echo daemon for the duration of the ``async with`` block.

    Args:
        framing: the framing to serve (line framing by default).
        handler: the frame handler; ``None`` (the default) is the daemon's echo.
        drain_timeout: the drain deadline at exit.
        **config: further :class:`~triodaemon.DaemonConfig` fields
            (``max_connections``, ``idle_timeout``, ...).

    Raises:
        UncleanDrain: at exit, if connections were cancelled at the drain deadline.
    """
    with tempfile.TemporaryDirectory(prefix="td-") as directory:
        listen: list[Address] = [UnixAddress(f"{directory}/echo.sock"), TcpAddress("127.0.0.1", 0)]
        daemon = Daemon(
            DaemonConfig(listen, framing or Framing(), drain_timeout=drain_timeout, **config),
            handler=handler,
        )
        async with trio.open_nursery() as nursery:
            unix, tcp = await nursery.start(daemon.serve)
            try:
                yield EchoServer(daemon, unix, tcp)
            finally:
                daemon.drain()
    summary = daemon.summary
    if summary is not None and summary.aborted:
        raise UncleanDrain(
            f"the echo server's drain was not clean: {summary.aborted} connection(s) were "
            f"still busy after {drain_timeout:g}s (a client left a frame unfinished or "
            "stopped reading)"
        )
