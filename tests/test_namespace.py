"""The public namespaces: the root holds the server, framing and errors; the harness
is in triodaemon.testing, and what moved there still loads from the root, with a
warning, for one release."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import triodaemon
import triodaemon.testing

#: The harness's names that were in the root namespace until 0.1.0.
MOVED = [
    "BenchResult",
    "CheckReport",
    "SCENARIOS",
    "ScenarioResult",
    "echo_frames",
    "exchange",
    "run_bench",
    "run_check",
]

_TESTING = Path(triodaemon.testing.__file__).parent


def _python_prints(code: str) -> str:
    """What a fresh interpreter running ``code`` prints."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, timeout=60
    )
    return result.stdout.decode().strip()


def test_the_moved_names_are_the_ones_the_root_forwards() -> None:
    assert sorted(triodaemon._MOVED) == MOVED


@pytest.mark.parametrize("name", MOVED)
def test_a_moved_name_still_loads_from_the_root_with_a_warning(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"use triodaemon\.testing\.{name}$") as record:
        value = getattr(triodaemon, name)
    assert value is getattr(triodaemon.testing, name)
    # The warning points at the line that used the old name, not at triodaemon.
    assert [warning.filename for warning in record] == [__file__]


def test_from_triodaemon_import_a_moved_name_warns() -> None:
    with pytest.warns(DeprecationWarning, match=r"use triodaemon\.testing\.echo_frames$") as record:
        from triodaemon import echo_frames
    assert echo_frames is triodaemon.testing.echo_frames
    # (The import system looks a name up twice, to see whether it is a submodule
    # first: each look-up warns, at the same line, which the default filter shows once.)
    assert {warning.filename for warning in record} == {__file__}


def test_every_use_of_a_moved_name_warns() -> None:
    """It is never cached in the root, where a second use would pass silently."""
    for _ in range(2):
        with pytest.warns(DeprecationWarning, match="triodaemon.testing.run_check"):
            triodaemon.run_check  # noqa: B018
    assert "run_check" not in vars(triodaemon)


def test_the_root_no_longer_lists_the_moved_names() -> None:
    assert not set(MOVED) & set(triodaemon.__all__)
    assert not set(MOVED) & set(dir(triodaemon))
    assert set(MOVED) <= set(triodaemon.testing.__all__)
    assert set(MOVED) <= set(dir(triodaemon.testing))


def test_import_star_from_the_root_does_not_warn() -> None:
    namespace: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec("from triodaemon import *", namespace)
    assert not set(MOVED) & set(namespace)
    assert namespace["Daemon"] is triodaemon.Daemon


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'run_checks'"):
        triodaemon.run_checks  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'run_checks'"):
        triodaemon.testing.run_checks  # noqa: B018


def test_the_lazy_testing_names_and_the_type_checkers_names_agree() -> None:
    """Each name the type checkers see in ``testing/__init__`` under TYPE_CHECKING
    loads from the same module at run time."""
    tree = ast.parse((_TESTING / "__init__.py").read_text())
    checking = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    seen = {
        alias.asname or alias.name: f".{node.module}"
        for node in ast.walk(checking)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        for alias in node.names
    }
    assert seen == triodaemon.testing._LAZY


def test_the_pytest_plugin_loads_neither_the_checker_nor_the_bench() -> None:
    """The plugin is loaded in every pytest run where triodaemon is installed."""
    code = (
        "import sys\n"
        "import triodaemon.testing.pytest_plugin\n"
        "heavy = ('triodaemon.testing.check', 'triodaemon.testing._bench')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
        "from triodaemon.testing import run_bench, run_check\n"
        "assert run_check is sys.modules['triodaemon.testing.check'].run_check\n"
        "assert run_bench is sys.modules['triodaemon.testing._bench'].run_bench\n"
    )
    assert _python_prints(code) == "[]"
