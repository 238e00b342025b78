"""Configuration records: what to listen on, how to frame, which limits hold.

Strategy: frozen attrs records, validated on construction with ``ValueError``,
so a bad value is caught where it is made (the CLI turns that into one line).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable

import attrs

from ._framing import Framing
from ._listeners import DEFAULT_BACKLOG, Address, BoundListener, TcpAddress, UnixAddress
from ._lowlevel.readiness import READINESS_NAMES, ReadinessName
from ._proxyproto import MAX_HEADER, V1_MAX
from ._socketfile import canonical_path, resolve_group

#: Bytes asked of the kernel per read by a ``Connection`` by default: trio's own
#: default, large enough that a read of pipelined small frames amortises its
#: per-call cost.
DEFAULT_RECEIVE_SIZE = 65536
#: Bytes asked per read on a Unix socket by the daemon: two 64 KiB frames per call
#: instead of one frame in two calls. Larger is slower: a reply as large as the read
#: no longer fits the socket's send buffer (``wmem_default``, 208 KiB) in one call.
#: S4 of bench/run.py (frames per CPU-s, medians of 4-5 interleaved runs with
#: bench/.build/loadgen): 36.6k at 64 KiB, 41-43k at 128 KiB, 37k at 192 KiB.
UNIX_RECEIVE_SIZE = 131072
#: Bytes asked per read on TCP, where every call through the TCP stack costs
#: more and its send buffer grows on demand: S4 at 64 KiB 15.7k, at 256 KiB 23.9k.
TCP_RECEIVE_SIZE = 262144


#: Default bound on how long a process taking over (an upgrade's new one) may take
#: to be ready, every listener adopted and accepting, before it is called off.
DEFAULT_UPGRADE_TIMEOUT = 30.0

#: Default bound on how long a frame may take from its first byte to its last.
#: Generous for any honest peer (a 1 MiB frame at 35 KiB/s), and what stops a
#: peer that trickles one byte a second from holding a connection slot forever.
DEFAULT_FRAME_TIMEOUT = 30.0

#: Default bound on the bytes all connections hold in partial frames together:
#: 64 frames of the default 1 MiB limit at once, where 1024 connections each
#: holding one could otherwise pin a GiB.
DEFAULT_MAX_BUFFERED = 64 * 1024 * 1024


def _group(
    instance: object, attribute: attrs.Attribute[str | int | None], value: str | int | None
) -> None:
    """A socket file's group: ``None``, or a group that exists (a name or an id)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{attribute.name} is a group name or id, not {value!r}")
    try:
        resolve_group(value)
    except ValueError as exc:
        raise ValueError(f"{attribute.name}: {exc}") from None


def _to_addresses(value: Iterable[Address]) -> tuple[Address, ...]:
    addresses = tuple(value)
    seen: dict[object, Address] = {}
    for address in addresses:
        if not isinstance(address, (TcpAddress, UnixAddress)):
            raise TypeError(f"not a listen address: {address!r}")
        first = seen.setdefault(_same(address), address)
        if first is not address:
            also = "" if first == address else f" (as {first})"
            raise ValueError(f"{address} is given twice{also}")
    return addresses


def _same(address: Address) -> object:
    """What two spellings of one address have in common: a socket path as the kernel
    resolves it (``./e.sock`` is ``e.sock``; ``link/../e.sock`` is in the directory
    above the one ``link`` points to)."""
    if isinstance(address, UnixAddress) and not address.path.startswith("\0"):
        return canonical_path(address.path)
    return address


#: Default bound on how long a balancer may take to send a connection's PROXY
#: header, from the accept: balancers send it at once, as the connection opens;
#: a peer that trickles it holds a connection slot no longer than this.
DEFAULT_PROXY_TIMEOUT = 5.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _to_networks(value: Iterable[str | Network]) -> tuple[Network, ...]:
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ValueError(
                f"{item!r} is not an address or network (127.0.0.1, 10.0.0.0/8, ::1): {exc}"
            ) from None
    return tuple(networks)


def _to_listeners(value: Iterable[Address] | None) -> tuple[Address, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen
class ProxyProtocol:
    """Listeners behind a load balancer that speaks the PROXY protocol (nginx's
    ``proxy_protocol on``, HAProxy's ``send-proxy-v2``): every connection on them must
    begin with a version 1 or 2 header, which names the client. The header is
    required: were it optional, any client could name itself any address.

    A connection whose header is missing, malformed, too long, incomplete when the
    peer closes, or not complete within :attr:`timeout` is closed, with one log line
    and ``stats.proxy_header_errors``. One from an address not in :attr:`trusted` is
    closed before a byte is read (``stats.proxy_untrusted``).
    """

    timeout: float = attrs.field(default=DEFAULT_PROXY_TIMEOUT, validator=attrs.validators.gt(0))
    """Seconds from the accept by which the header must be whole (never reset by
    bytes that trickle in)."""
    trusted: tuple[Network, ...] = attrs.field(default=(), converter=_to_networks)
    """The balancers' addresses or networks allowed to connect over TCP; empty: any.
    (A Unix socket's file permissions say who may connect to it.)"""
    listeners: tuple[Address, ...] | None = attrs.field(default=None, converter=_to_listeners)
    """The listeners it applies to (as given to :attr:`DaemonConfig.listen`, or the
    address of a socket systemd passes); ``None``: every listener."""
    max_header: int = attrs.field(default=MAX_HEADER, validator=attrs.validators.ge(V1_MAX))
    """The longest header accepted: a version 2 header announcing more is refused on
    its 16th byte."""

    def requirement(self) -> dict[str, object]:
        """What a process that takes this one's sockets over must require the same
        (``--takeover``, an upgrade): which listeners need a header, and from whom;
        for :func:`requirement_of`."""
        listeners = None if self.listeners is None else sorted(map(str, self.listeners))
        return {"listeners": listeners, "trusted": sorted(map(str, self.trusted))}

    def covers(self, listener: BoundListener) -> bool:
        """Whether connections on ``listener`` must begin with a header."""
        return self.listeners is None or any(map(listener.serves, self.listeners))

    def trusts(self, peer: object) -> bool:
        """Whether ``peer`` (an address ``accept()`` gave) may send a header."""
        if not self.trusted or not isinstance(peer, tuple):
            return True
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener's IPv4 peer
        return any(address in network for network in self.trusted)


def requirement_of(policy: ProxyProtocol | None) -> dict[str, object] | None:
    """:meth:`ProxyProtocol.requirement`, ``None`` where no header is required."""
    return None if policy is None else policy.requirement()


@attrs.frozen
class DaemonConfig:
    """Everything the daemon needs to know to serve."""

    listen: tuple[Address, ...] = attrs.field(converter=_to_addresses)
    """The addresses to listen on (``TcpAddress`` and ``UnixAddress``, mixed freely)."""
    framing: Framing = attrs.field(factory=Framing, validator=attrs.validators.instance_of(Framing))
    """How every connection's byte stream is cut into frames."""
    max_connections: int = attrs.field(default=1024, validator=attrs.validators.gt(0))
    """At this many open connections, stop accepting until one ends."""
    idle_timeout: float = attrs.field(default=300.0, validator=attrs.validators.ge(0))
    """Close a connection after this many seconds with no progress either way; 0 disables."""
    drain_timeout: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    """On shutdown, how long connections may take to finish before they are cancelled."""
    sock_mode: int = attrs.field(
        default=0o600, validator=[attrs.validators.ge(0), attrs.validators.le(0o777)]
    )
    """Permission bits of Unix socket files."""
    sock_group: str | int | None = attrs.field(default=None, validator=_group)
    """Group (name or id) of Unix socket files; ``None`` keeps the process's group."""
    receive_size: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    """Bytes asked for per read; ``None``: 256 KiB on TCP, 128 KiB on Unix sockets."""
    backlog: int = attrs.field(default=DEFAULT_BACKLOG, validator=attrs.validators.gt(0))
    """The listen backlog of every listener we bind."""
    frame_timeout: float = attrs.field(
        default=DEFAULT_FRAME_TIMEOUT, validator=attrs.validators.ge(0)
    )
    """Close a connection whose frame is not complete this many seconds after its first
    byte arrived; 0 disables."""
    max_buffered: int = attrs.field(
        default=attrs.Factory(
            lambda self: max(DEFAULT_MAX_BUFFERED, self.framing.max_frame), takes_self=True
        ),
        validator=attrs.validators.ge(0),
    )
    """Bytes all connections may hold in partial frames together before connections
    holding one are not read until room frees (never closed for it); 0 disables.
    At least the framing's ``max_frame`` (``ValueError`` otherwise); by default
    ``DEFAULT_MAX_BUFFERED``, or ``max_frame`` if that is larger."""
    readiness: ReadinessName = attrs.field(
        default="auto", validator=attrs.validators.in_(READINESS_NAMES)
    )
    """How connections wait for their sockets: ``epoll`` (Linux), ``portable`` (any
    system), or ``auto``: epoll where there is one (``$TRIODAEMON_READINESS`` overrides)."""
    proxy_protocol: ProxyProtocol | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(ProxyProtocol)),
    )
    """Listeners behind a balancer that sends a PROXY protocol header; ``None``: none."""

    def __attrs_post_init__(self) -> None:
        if self.max_buffered and self.framing.max_frame > self.max_buffered:
            raise ValueError(
                f"the frame limit ({self.framing.max_frame} bytes) is above the limit of "
                f"what all connections may hold in partial frames ({self.max_buffered} "
                "bytes: --max-buffered): one frame would not fit; raise that, or set it to 0"
            )

    @property
    def idle_seconds(self) -> float:
        """The idle timeout as a duration: ``inf`` when disabled."""
        return self.idle_timeout if self.idle_timeout > 0 else math.inf

    @property
    def frame_seconds(self) -> float:
        """The frame timeout as a duration: ``inf`` when disabled."""
        return self.frame_timeout if self.frame_timeout > 0 else math.inf


def _not_a_listener(control: UnixAddress | None, listen: Iterable[Address]) -> None:
    if control is not None and _same(control) in map(_same, listen):
        raise ValueError(f"{control} is both a listener and the control socket")


@attrs.frozen
class ProcessConfig:
    """What one triodaemon process is given beyond what its daemon serves: its
    control socket, and how it hands over to a process that takes it over (an
    upgrade). The command line builds one for the process role it runs
    (:mod:`triodaemon._process`); a :class:`DaemonConfig` says what is served."""

    daemon: DaemonConfig = attrs.field(validator=attrs.validators.instance_of(DaemonConfig))
    """What the process serves."""
    control: UnixAddress | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(UnixAddress))
    )
    """A Unix socket for the control protocol (``stats``, ``connections``, ``drain``,
    ``upgrade``, ``takeover``, ...; see :mod:`triodaemon._control`); ``None``: none."""
    control_mode: int = attrs.field(
        default=0o600, validator=[attrs.validators.ge(0), attrs.validators.le(0o777)]
    )
    """Permission bits of the control socket file: only its owner by default."""
    control_group: str | int | None = attrs.field(default=None, validator=_group)
    """Group (name or id) of the control socket file; ``None`` keeps the process's group."""
    migrate: bool = True
    """When another process takes over (an upgrade), hand it the open connections
    too; ``False``: they finish here, as in a drain, while it accepts the new ones."""
    upgrade_timeout: float = attrs.field(
        default=DEFAULT_UPGRADE_TIMEOUT, validator=attrs.validators.gt(0)
    )
    """Seconds a process taking over may take to be ready (every listener adopted and
    accepting) before the takeover is called off and this one serves on."""
    agent: TcpAddress | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(TcpAddress))
    )
    """A TCP address to answer HAProxy's agent check on (:mod:`triodaemon._agent`):
    ``ready 100%`` while serving, ``drain`` once a drain is coming; ``None``: none."""
    drain_delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    """Seconds between a drain's request (a stop signal, ``ctl drain``) and its start,
    while the agent says ``drain`` and the daemon serves on, accepting: the time the
    balancer needs to see it (its ``agent-inter``, and a margin). Needs :attr:`agent`."""

    def __attrs_post_init__(self) -> None:
        _not_a_listener(self.control, self.daemon.listen)
        if self.drain_delay and self.agent is None:
            raise ValueError(
                "--drain-delay announces the drain to the balancer on the agent port: "
                "give --agent [HOST]:PORT too"
            )
