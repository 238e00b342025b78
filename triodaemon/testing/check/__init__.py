"""``triodaemon check`` from Python: a conformance battery for any echo server.

:func:`run_check` runs the scenarios of :data:`SCENARIOS` against a server and
returns a :class:`CheckReport`; :func:`replay` runs one saved case again, and
:func:`cases_from_file` reads the cases out of a ``check --json`` report. The
server is only ever talked to over a socket: this package imports the daemon's
framing and addresses, never its serving side.

The modules, one concern each: ``_scenarios`` (what each scenario sends),
``_engine`` (connect, write while reading, judge one exchange), ``_diagnosis``
(name the bug from what came back), ``_edits`` (an echo as an edit script of what
was sent) and ``_edit_kinds`` (the edits named), all three sans-I/O, ``_case`` (an
exchange as data, and shrinking it, sans-I/O), ``_shrinking`` (the run's shrinking
budget and its tries), ``_liveness`` (does the server still answer after a
scenario), ``_report`` (results, reports, saved cases) and ``_check`` (the run).
"""

from __future__ import annotations

from ._case import Case as Case
from ._check import DEFAULT_SHRINK_TIME as DEFAULT_SHRINK_TIME
from ._check import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from ._check import replay as replay
from ._check import run_check as run_check
from ._diagnosis import KINDS as KINDS
from ._report import CheckReport as CheckReport
from ._report import MinimalCase as MinimalCase
from ._report import ScenarioResult as ScenarioResult
from ._report import cases_from_file as cases_from_file
from ._scenarios import SCENARIOS as SCENARIOS
