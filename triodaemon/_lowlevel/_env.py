"""The environment's say in what the low level runs."""

from __future__ import annotations

import os

#: Switched on, the compiled module is not used (the pure-Python scans run).
SPEEDUPS_OFF_ENV = "TRIODAEMON_NO_SPEEDUPS"
#: A readiness backend's name: overrides what ``auto`` picks.
READINESS_ENV = "TRIODAEMON_READINESS"

_ON = frozenset({"1", "true", "yes"})


def switched_on(name: str) -> bool:
    """Whether the environment switch ``name`` is on: ``1``, ``true`` or ``yes`` (in any
    case, spaces around ignored); anything else, or unset, is off."""
    return os.environ.get(name, "").strip().lower() in _ON
