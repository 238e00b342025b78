"""The framing test harness: chunkings, a scripted stream, assertions, an echo server;
and the tools that talk to any server from outside: the conformance battery
(``triodaemon check``), the load generator (``triodaemon bench``) and the client.

Nothing here imports pytest; hypothesis strategies live in
:mod:`triodaemon.testing.strategies` and the pytest fixtures in
:mod:`triodaemon.testing.pytest_plugin` (loaded automatically by pytest).

The checker, the bench and the client load on first use (PEP 562), not when the
package is imported: the pytest plugin imports this package in every pytest run
of an environment where triodaemon is installed, and needs none of them.
``from triodaemon.testing import run_check`` works as usual.
"""

from __future__ import annotations

from ._assertions import FramingMismatch as FramingMismatch
from ._assertions import assert_decodes as assert_decodes
from ._assertions import decode_chunks as decode_chunks
from ._chunkings import CHUNKERS as CHUNKERS
from ._chunkings import Chunking as Chunking
from ._chunkings import all_chunkings as all_chunkings
from ._chunkings import boundary_offsets as boundary_offsets
from ._chunkings import boundary_splits as boundary_splits
from ._chunkings import byte_at_a_time as byte_at_a_time
from ._chunkings import coalesced as coalesced
from ._chunkings import random_chunkings as random_chunkings
from ._chunkings import splits_at as splits_at
from ._chunkings import two_way_splits as two_way_splits
from ._chunkings import whole as whole
from ._server import EchoServer as EchoServer
from ._server import UncleanDrain as UncleanDrain
from ._server import echo_server as echo_server
from ._stream import ScriptedStream as ScriptedStream
from ._stream import scripted_stream_pair as scripted_stream_pair

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._bench import BenchResult as BenchResult
    from ._bench import run_bench as run_bench
    from ._client import echo_frames as echo_frames
    from ._client import exchange as exchange
    from .check import SCENARIOS as SCENARIOS
    from .check import CheckReport as CheckReport
    from .check import ScenarioResult as ScenarioResult
    from .check import run_check as run_check

#: Each name that loads on first use, and the module that defines it.
_LAZY = {
    "BenchResult": "._bench",
    "run_bench": "._bench",
    "echo_frames": "._client",
    "exchange": "._client",
    "SCENARIOS": ".check",
    "CheckReport": ".check",
    "ScenarioResult": ".check",
    "run_check": ".check",
}
__all__ = [
    "FramingMismatch",
    "assert_decodes",
    "decode_chunks",
    "CHUNKERS",
    "Chunking",
    "all_chunkings",
    "boundary_offsets",
    "boundary_splits",
    "byte_at_a_time",
    "coalesced",
    "random_chunkings",
    "splits_at",
    "two_way_splits",
    "whole",
    "EchoServer",
    "UncleanDrain",
    "echo_server",
    "ScriptedStream",
    "scripted_stream_pair",
    *_LAZY,
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
