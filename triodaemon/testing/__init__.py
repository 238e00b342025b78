"""The framing test harness: chunkings, a scripted stream, assertions, an echo server.

Nothing here imports pytest; hypothesis strategies live in
:mod:`triodaemon.testing.strategies` and the pytest fixtures in
:mod:`triodaemon.testing.pytest_plugin` (loaded automatically by pytest).
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
