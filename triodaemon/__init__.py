"""triodaemon: a framed echo daemon and library on trio, and a framing test harness."""

from __future__ import annotations

__version__ = "0.1.0"

from ._bench import BenchResult as BenchResult
from ._bench import run_bench as run_bench
from ._check import SCENARIOS as SCENARIOS
from ._check import CheckReport as CheckReport
from ._check import ScenarioResult as ScenarioResult
from ._check import run_check as run_check
from ._client import connect as connect
from ._client import echo_frames as echo_frames
from ._client import exchange as exchange
from ._config import DaemonConfig as DaemonConfig
from ._connection import Connection as Connection
from ._connection import ConnectionInfo as ConnectionInfo
from ._connection import FrameHandler as FrameHandler
from ._connection import echo as echo
from ._daemon import Daemon as Daemon
from ._daemon import DrainSummary as DrainSummary
from ._errors import AddressError as AddressError
from ._errors import ClientError as ClientError
from ._errors import FrameTooLarge as FrameTooLarge
from ._errors import FramingError as FramingError
from ._errors import IncompleteFrame as IncompleteFrame
from ._errors import MalformedHeader as MalformedHeader
from ._errors import TriodaemonError as TriodaemonError
from ._framing import Decoder as Decoder
from ._framing import DelimiterDecoder as DelimiterDecoder
from ._framing import FixedSizeDecoder as FixedSizeDecoder
from ._framing import Framing as Framing
from ._framing import LengthPrefixDecoder as LengthPrefixDecoder
from ._framing import RawDecoder as RawDecoder
from ._framing import VarintDecoder as VarintDecoder
from ._framing import parse_delimiter as parse_delimiter
from ._listeners import BoundListener as BoundListener
from ._listeners import TcpAddress as TcpAddress
from ._listeners import UnixAddress as UnixAddress
from ._listeners import open_listeners as open_listeners
from ._listeners import parse_tcp_address as parse_tcp_address
from ._listeners import stream_for as stream_for
from ._stats import Stats as Stats
