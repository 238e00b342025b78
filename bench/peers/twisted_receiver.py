"""Peer: a Twisted echo server, a plain ``Protocol`` on the default (epoll) reactor.

Not ``LineReceiver`` / ``Int32StringReceiver``: those call a handler per frame, and
``sendLine`` / ``sendString`` concatenate each frame with its delimiter or prefix and
queue it on its own, which is the convenient shape, not the fast one. Like the asyncio
``Protocol`` peer, each ``dataReceived`` echoes the chunk itself when it ends on a frame
boundary (no copy), or its complete frames as one slice when it does not (Twisted's
``write`` takes ``bytes`` only, so that slice is a copy); only the incomplete tail is
held, in a ``bytearray``, and the read that completes it writes the held bytes and
the new ones joined into one ``bytes`` (one copy, then one item in the transport's
queue). The transport reads 256 KiB at a time instead of 64 KiB, as the asyncio
transports do: a 64 KiB read never holds a whole S4 frame. The protocol closes
the connection on EOF only after its replies have been written (half-close), as the
receivers did not. Frames are limited to 1 MiB, like triodaemon in the suite.
"""

from __future__ import annotations

from typing import cast

from _common import HEADER, MAX_FRAME, length_frames_end, parse_args, ready
from twisted.internet import reactor as default_reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.tcp import Connection
from zope.interface import implementer  # type: ignore[import-untyped]

#: Bytes per read: Twisted's default (``bufferSize``) is 64 KiB.
READ_SIZE = 256 * 1024


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """What both framings share: the held tail, the read size and the half-close."""

    connection: Connection  # the transport, as its class (TCP, or Unix: a subclass)

    def __init__(self) -> None:
        self.pending = bytearray()  # an incomplete frame

    def connectionMade(self) -> None:
        self.connection = cast(Connection, self.transport)
        self.connection.bufferSize = READ_SIZE

    def readConnectionLost(self) -> None:
        self.connection.loseConnection()  # after what is queued has been written

    def writeConnectionLost(self) -> None:
        pass


class LineEcho(Echo):
    """Echo ``\\n``-terminated lines."""

    def dataReceived(self, data: bytes) -> None:
        if self.pending:
            self.complete(data)
        elif data[-1] == 10:  # ends on a frame boundary: echo the chunk itself
            self.connection.write(data)
        else:
            end = data.rfind(b"\n") + 1
            if end:
                self.connection.write(data[:end])
            self.hold(memoryview(data)[end:])

    def complete(self, data: bytes) -> None:
        end = data.rfind(b"\n") + 1
        if not end:
            self.hold(data)
            return
        pending = self.pending
        self.pending = bytearray()
        self.connection.write(b"".join((pending, memoryview(data)[:end])))
        if end < len(data):
            self.hold(memoryview(data)[end:])

    def hold(self, tail: bytes | memoryview) -> None:
        self.pending += tail
        if len(self.pending) >= MAX_FRAME:  # no newline yet: the line is too long
            self.connection.abortConnection()


class LengthEcho(Echo):
    """Echo frames with a 4-byte big-endian length prefix."""

    def dataReceived(self, data: bytes) -> None:
        if self.pending:
            self.complete(data)
            return
        end = length_frames_end(data, 0)
        if end == len(data):  # ends on a frame boundary: echo the chunk itself
            self.connection.write(data)
            return
        if end:
            self.connection.write(data[:end])
        self.hold(memoryview(data)[end:])

    def complete(self, data: bytes) -> None:
        pending = self.pending
        taken = 0  # bytes of ``data`` that completed the pending header
        if len(pending) < 4:
            taken = 4 - len(pending)
            pending += data[:taken]
            if len(pending) < 4:
                return
        start = taken + 4 + HEADER.unpack_from(pending)[0] - len(pending)
        if start > len(data):  # still incomplete
            self.hold(memoryview(data)[taken:])
            return
        end = length_frames_end(data, start)
        self.pending = bytearray()
        self.connection.write(b"".join((pending, memoryview(data)[taken:end])))
        if end < len(data):
            self.hold(memoryview(data)[end:])

    def hold(self, tail: bytes | memoryview) -> None:
        pending = self.pending
        pending += tail
        if len(pending) >= 4 and HEADER.unpack_from(pending)[0] > MAX_FRAME:
            self.connection.abortConnection()


def main() -> None:
    args = parse_args(__doc__ or "")
    protocol: type[Protocol] = LineEcho if args.framing == "line" else LengthEcho
    factory = Factory.forProtocol(protocol)
    reactor = cast(PosixReactorBase, default_reactor)  # epoll on Linux
    if args.tcp is not None:
        reactor.listenTCP(args.tcp, factory, backlog=1024, interface="127.0.0.1")
    else:
        reactor.listenUNIX(args.unix, factory, backlog=1024)
    ready()
    reactor.run()


if __name__ == "__main__":
    main()
