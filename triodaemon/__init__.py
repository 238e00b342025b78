"""triodaemon: a framed echo daemon and library on trio, and a framing test harness.

The names below load on first use (PEP 562), not when the package is imported:
the command line imports ``triodaemon`` before anything else and must be able
to hold signals before trio is imported (see :mod:`triodaemon.__main__`).
``from triodaemon import Daemon`` and ``triodaemon.Daemon`` work as usual.

This namespace holds the server, framing and errors; the harness that talks to
servers from outside (``run_check``, ``run_bench``, ``echo_frames``, ...) is in
:mod:`triodaemon.testing`.
"""

from __future__ import annotations

from ._version import __version__ as __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._config import DaemonConfig as DaemonConfig
    from ._config import ProxyProtocol as ProxyProtocol
    from ._connection import Connection as Connection
    from ._daemon import Daemon as Daemon
    from ._daemon import DrainSummary as DrainSummary
    from ._decoders import Decoder as Decoder
    from ._decoders import DelimiterDecoder as DelimiterDecoder
    from ._decoders import FixedSizeDecoder as FixedSizeDecoder
    from ._decoders import LengthPrefixDecoder as LengthPrefixDecoder
    from ._decoders import RawDecoder as RawDecoder
    from ._decoders import VarintDecoder as VarintDecoder
    from ._errors import AddressError as AddressError
    from ._errors import ClientError as ClientError
    from ._errors import FrameTooLarge as FrameTooLarge
    from ._errors import FramingError as FramingError
    from ._errors import IncompleteFrame as IncompleteFrame
    from ._errors import MalformedHeader as MalformedHeader
    from ._errors import TriodaemonError as TriodaemonError
    from ._framing import Framing as Framing
    from ._framing import parse_delimiter as parse_delimiter
    from ._handlers import FrameHandler as FrameHandler
    from ._handlers import echo as echo
    from ._handover.giver import Giver as Giver
    from ._listeners import BoundListener as BoundListener
    from ._listeners import TcpAddress as TcpAddress
    from ._listeners import UnixAddress as UnixAddress
    from ._listeners import connect as connect
    from ._listeners import open_listeners as open_listeners
    from ._listeners import parse_tcp_address as parse_tcp_address
    from ._listeners import stream_for as stream_for
    from ._peers import ConnectionInfo as ConnectionInfo
    from ._proxyproto import ProxyHeaderError as ProxyHeaderError
    from ._stats import Stats as Stats

#: Each public name and the private module that defines it.
_EXPORTS = {
    "DaemonConfig": "._config",
    "ProxyProtocol": "._config",
    "Connection": "._connection",
    "ConnectionInfo": "._peers",
    "FrameHandler": "._handlers",
    "echo": "._handlers",
    "Daemon": "._daemon",
    "DrainSummary": "._daemon",
    "AddressError": "._errors",
    "ClientError": "._errors",
    "FrameTooLarge": "._errors",
    "FramingError": "._errors",
    "IncompleteFrame": "._errors",
    "MalformedHeader": "._errors",
    "TriodaemonError": "._errors",
    "ProxyHeaderError": "._proxyproto",
    "Decoder": "._decoders",
    "DelimiterDecoder": "._decoders",
    "FixedSizeDecoder": "._decoders",
    "Framing": "._framing",
    "LengthPrefixDecoder": "._decoders",
    "RawDecoder": "._decoders",
    "VarintDecoder": "._decoders",
    "parse_delimiter": "._framing",
    "Giver": "._handover.giver",
    "BoundListener": "._listeners",
    "TcpAddress": "._listeners",
    "UnixAddress": "._listeners",
    "connect": "._listeners",
    "open_listeners": "._listeners",
    "parse_tcp_address": "._listeners",
    "stream_for": "._listeners",
    "Stats": "._stats",
}
__all__ = ["__version__", *_EXPORTS]

#: Names of the harness that were here until 0.1.0 and live in triodaemon.testing
#: now: the server's namespace holds the server, framing and errors. Each still
#: loads from here, with a DeprecationWarning, until the next release removes it.
#: Not in __all__ or dir(), so ``from triodaemon import *`` does not warn.
_MOVED = frozenset(
    {
        "BenchResult",
        "CheckReport",
        "SCENARIOS",
        "ScenarioResult",
        "echo_frames",
        "exchange",
        "run_bench",
        "run_check",
    }
)


def __getattr__(name: str) -> object:
    import importlib

    module = _EXPORTS.get(name)
    if module is None:
        if name in _MOVED:
            return _moved(name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def _moved(name: str) -> object:
    """A name that moved to :mod:`triodaemon.testing`, with a warning on every use
    (so it is never cached here)."""
    import importlib
    import warnings

    warnings.warn(
        f"triodaemon.{name} is deprecated and goes in the next release: "
        f"use triodaemon.testing.{name}",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(".testing", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
