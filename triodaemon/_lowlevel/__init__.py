"""Everything below trio, in one room: the readiness backends, the socket
transport and the compiled module.

Strategy: nothing above this package touches epoll, a raw socket's I/O or the
compiled code. What runs here is chosen once per run, as one
:class:`Lowlevel` (the readiness backend and the scans), which the daemon shows
in ``ctl stats`` and a test can swap:

- :mod:`.readiness`: the backends (epoll, portable) and their socket transports;
- :mod:`.sockets`: a raw socket as a connection's transport, and the compiled
  read-and-echo (the only module that imports it);
- :mod:`.scans`: the decoders' scans, compiled or in Python (the only module that
  imports the compiled scans; only :mod:`triodaemon._decoders` calls them);
- ``_speedups.c``: the compiled code, optional.

The environment has its say: ``TRIODAEMON_READINESS`` names the backend that
``auto`` picks, and ``TRIODAEMON_NO_SPEEDUPS`` (``1``, ``true`` or ``yes``; anything
else is off) runs the Python scans.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import attrs

from . import scans

# The backends import trio, socket and select: loaded when a run chooses one, not
# with the scans, which the sans-I/O framing imports through this package.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .readiness import Readiness, ReadinessName


@attrs.frozen
class Lowlevel:
    """What runs below trio in one run: a readiness backend and the scans."""

    readiness: Readiness
    scans: scans.Scans

    @classmethod
    def choose(cls, readiness: ReadinessName = "auto") -> Lowlevel:
        """The backend called ``readiness`` (``auto``: as :func:`.readiness.open_readiness`
        picks) and the scans in use.

        Raises:
            ValueError: a backend this system lacks.
        """
        from .readiness import open_readiness

        return cls(open_readiness(readiness), scans.ACTIVE)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Make these scans the decoders' inside the block (they are the process's:
        a daemon's run is the block)."""
        with scans.use(self.scans):
            yield
