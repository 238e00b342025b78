"""A raw non-blocking socket as a connection's transport: everything but the waits.

Strategy: bytes go straight between the socket and the caller's buffer
(``recv_into``, ``send``), with no trio stream in between; the waits are the
readiness backend's (:mod:`.readiness`), whose per-socket objects are these
transports, so an idle connection carries one object for its socket, not two.
Where the compiled module was built and the compiled scans are chosen, a read of
the echo is one call that reads and, when the read is whole frames, sends it
back (:meth:`SocketTransport.receive_echo`); this module is the only one that
imports that call.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from .._transport import Transport
from . import scans

#: The ioctl that tells how many bytes we sent are not yet acknowledged by the
#: peer (TCP) or not yet read by it (a Unix socket): Linux's SIOCOUTQ.
_SIOCOUTQ: int | None = None
if sys.platform.startswith("linux"):
    import termios

    _SIOCOUTQ = termios.TIOCOUTQ

_recv_echo: Callable[[int, bytearray, int, scans.Shape], tuple[int, int, int] | None] | None
try:
    from ._speedups import recv_echo as _recv_echo
except ImportError:  # not built: every read goes through Python
    _recv_echo = None

#: What trio's ``SocketStream`` sets on every TCP socket, and why we set it too:
#: replies go out at once (no Nagle delay on a small reply after a large one),
#: and the kernel takes only this much not yet sent ahead of what it is
#: sending, so a bulk echo's replies wait in our buffer (which we reuse) rather
#: than in a send buffer that grows to megabytes (S4 of bench/run.py over TCP:
#: about twice the frames per CPU-second; docs/performance.md).
TCP_NOTSENT_LOWAT = 16384

if TYPE_CHECKING:
    from .._framing import Framing


def _echo_shape(framing: Framing) -> scans.Shape | None:
    if framing.kind in ("line", "delimiter") and len(framing.delimiter) == 1:
        return scans.delimiter_shape(framing.delimiter[0], framing.max_frame)
    if framing.kind == "length":
        return scans.length_shape(
            framing.length_bytes,
            framing.byte_order == "big",
            framing.length_includes_header,
            framing.max_frame,
        )
    return None


class SocketTransport(Transport):
    """A connection's non-blocking socket; the readiness backend adds the waits.

    Made by ``Readiness.transport(sock)``; TCP sockets get ``TCP_NODELAY`` and
    ``TCP_NOTSENT_LOWAT`` (see :data:`TCP_NOTSENT_LOWAT`).
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        if sock.family != socket.AF_UNIX:
            _tune_tcp(sock)
        self._sock = sock

    def receive_into(self, buf: bytearray, size: int) -> int | None:
        # (The BlockingIOError never passes through a connection's coroutine: a
        # traceback through a coroutine gives it a frame object for the rest of its
        # life, ~300 B per idle connection.)
        try:
            return self._sock.recv_into(buf, size)
        except BlockingIOError:
            return None

    def echo_shape(self, framing: Framing) -> scans.Shape | None:
        """None where the compiled read-and-echo cannot serve ``framing``: not built,
        the compiled scans not chosen, or a kind other than a one-byte delimiter or
        length headers."""
        if _recv_echo is None or not scans.ACTIVE.compiled:
            return None
        return _echo_shape(framing)

    def receive_echo(
        self, buf: bytearray, size: int, shape: scans.Shape
    ) -> tuple[int, int, int] | None:
        assert _recv_echo is not None  # (echo_shape() gave a shape)
        return _recv_echo(self._sock.fileno(), buf, size, shape)

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self._sock.send(data)
        except BlockingIOError:
            return 0

    def wait_writable(self) -> Awaitable[None]:
        return trio.lowlevel.wait_writable(self._sock)  # noqa: ASYNC105 (awaited by the caller)

    async def shutdown_write(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)

    def unacknowledged(self) -> int | None:
        if _SIOCOUTQ is None:
            return None
        try:
            answer = fcntl.ioctl(self._sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return None
        return int(struct.unpack("i", answer)[0])

    async def close(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()


def _tune_tcp(sock: socket.socket) -> None:
    """``TCP_NODELAY`` and ``TCP_NOTSENT_LOWAT`` on an accepted TCP socket, where there are."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if lowat is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, lowat, TCP_NOTSENT_LOWAT)
