"""Exception boundaries: what happens when our own code fails inside one connection.

Strategy: every task that serves one party — a client connection, a control
connection and each of its requests, a handover channel, a supervisor's pipe to
a worker — ends in a boundary that catches ``Exception`` (never ``Cancelled``,
``KeyboardInterrupt`` or a group holding them: those are ``BaseException``),
logs it here with its traceback, counts it in ``Stats.internal_errors``, and
closes that one party's connection. Nothing a peer sends can end the process:
the worst it can do is find a bug that ends its own connection.

Parsers of what peers send bound size and depth before they parse, so that
inputs such as 1,000 nested JSON arrays are refused with an error reply
instead of reaching the boundary at all (:func:`loads`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from ._stats import Stats

log = logging.getLogger("triodaemon")

#: The deepest JSON any peer may send us (control requests, handover messages,
#: a worker's replies): ours are 4 levels deep at most. Python's parser recurses
#: once per level and fails with RecursionError near 1,000.
MAX_JSON_DEPTH = 32

# One JSON string (whole, or cut off at the end of the text), or one bracket:
# brackets inside strings do not nest. Every alternative starts with a different
# character, so the scan is linear however the text is made.
_JSON_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*"?|([\[{])|([\]}])', re.DOTALL)


def fault(stats: Stats | None, what: str, exc: BaseException) -> None:
    """Log a failure of our own code that the boundary of ``what`` caught (with its
    traceback) and count it; the caller closes ``what`` and serves on."""
    if stats is not None:
        stats.internal_errors += 1
    log.error(
        "%s: internal error, closed it (the daemon serves on): %s: %s",
        what,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )


def loads(data: bytes | bytearray | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON from a peer, refusing nesting deeper than ``max_depth`` before
    parsing, and ``NaN``, ``Infinity`` and numbers too large for a float (``1e999``),
    which JSON cannot carry back.

    Raises:
        ValueError: not UTF-8, not JSON, or too deep (the message says which).
    """
    text = data if isinstance(data, str) else bytes(data).decode()
    depth = 0
    for match in _JSON_STRUCTURE.finditer(text):
        if match.lastindex == 1:  # an opening bracket
            depth += 1
            if depth > max_depth:
                raise ValueError(f"nested more than {max_depth} levels deep")
        elif match.lastindex == 2:
            depth -= 1
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: what JSON cannot carry back
        raise ValueError(f"{text[:20]} is not a finite number")
    return value
