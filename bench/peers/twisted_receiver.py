"""Peer: Twisted's LineReceiver / Int32StringReceiver on the default (epoll) reactor.

The idiomatic Twisted echo: the receiver cuts frames, and each frame's handler
sends it back with ``sendLine`` / ``sendString``; the transport buffers the
writes. Frames are limited to 1 MiB, like triodaemon in the suite.
"""

from __future__ import annotations

from typing import cast

from _common import parse_args, ready
from twisted.internet import reactor as default_reactor
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import Int32StringReceiver, LineReceiver

MAX_FRAME = 1 << 20


class LineEcho(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_FRAME

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line)


class LengthEcho(Int32StringReceiver):
    MAX_LENGTH = MAX_FRAME

    def stringReceived(self, string: bytes) -> None:
        self.sendString(string)


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
