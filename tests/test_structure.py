"""The shape of the package, as the design promises it (docs/design.md).

The import contracts (``lint-imports``, ``[tool.importlinter]`` in pyproject.toml)
check the import graph; the tests here check what that graph cannot show: who
imports the compiled module (no node of it), and what importing a module really
loads, its parent packages' ``__init__`` and the names loaded on first use
included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "triodaemon"


def _modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(PACKAGE)): ast.parse(path.read_text())
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _importers(name: str) -> list[str]:
    """The modules that import ``name`` from the compiled module."""
    found = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").endswith("_speedups")
                and any(alias.name == name for alias in node.names)
            ):
                found.append(module)
    return found


def _users(name: str) -> list[str]:
    """The modules that mention ``name`` as an attribute or a name."""
    found = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == name) or (
                isinstance(node, ast.Name) and node.id == name
            ):
                found.append(module)
                break
    return found


def test_each_compiled_function_is_imported_by_exactly_one_module() -> None:
    assert _importers("count_byte") == ["_lowlevel/scans.py"]
    assert _importers("walk_lengths") == ["_lowlevel/scans.py"]
    assert _importers("whole_frames") == ["_lowlevel/scans.py"]
    assert _importers("recv_echo") == ["_lowlevel/sockets.py"]
    everything = [
        module
        for module, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom | ast.Import) and "_speedups" in ast.unparse(node)
    ]
    assert sorted(everything) == ["_lowlevel/scans.py", "_lowlevel/sockets.py"]


def test_the_scans_are_called_by_the_decoders_only() -> None:
    for scan in ("count_byte", "walk_lengths", "whole_frames"):
        assert _users(scan) == ["_decoders.py", "_lowlevel/scans.py"], scan


def test_nothing_above_the_low_level_touches_epoll_or_a_raw_socket_read() -> None:
    low = {"epoll", "EPOLLIN", "recv_into", "ioctl", "TIOCOUTQ"}
    for module, tree in _modules().items():
        if module.startswith("_lowlevel/"):
            continue
        used = {
            node.attr if isinstance(node, ast.Attribute) else node.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute | ast.Name)
        }
        assert not used & low, (module, used & low)


def test_no_hook_raises_not_implemented() -> None:
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                assert "NotImplementedError" not in ast.unparse(node.exc), module


def test_one_connection_class() -> None:
    classes = [
        (module, node.name)
        for module, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name.endswith("Connection")
    ]
    assert classes == [("_connection.py", "Connection")]


def _loaded_by(code: str, packages: tuple[str, ...]) -> list[str]:
    """The modules of ``packages`` (each, or inside it) that a fresh interpreter has
    loaded after running ``code``."""
    script = (
        f"import sys\n{code}\n"
        f"print([m for m in sorted(sys.modules) if any(m == p or m.startswith(p + '.') "
        f"for p in {packages!r})])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, timeout=60
    )
    loaded: list[str] = ast.literal_eval(result.stdout.decode())
    return loaded


def test_the_framing_loads_no_io_module() -> None:
    """Sans-I/O for real: importing ``triodaemon._framing`` also runs the ``__init__``
    of ``triodaemon._lowlevel``, an import the contracts' graph does not have."""
    code = "from triodaemon._framing import Framing\nFraming('length').decoder().feed(b'x')"
    io = ("trio", "socket", "select", "selectors", "asyncio")
    # attrs, the framing's one dependency, loads some on its own on some Pythons
    # (3.10: attr._compat imports platform, which imports subprocess): not ours.
    assert set(_loaded_by(code, io)) <= set(_loaded_by("import attrs", io))
    assert _loaded_by(code, ("trio", "socket", "asyncio")) == []


def test_no_name_of_the_root_namespace_loads_the_harness() -> None:
    """The root loads its names with importlib (on first use), which the contracts'
    graph does not see: every one of them, loaded, leaves the harness out."""
    code = "import triodaemon\nfor name in triodaemon.__all__:\n    getattr(triodaemon, name)"
    assert _loaded_by(code, ("triodaemon.testing",)) == []


#: A room this size holds a second concern: look for it (STYLE.md, issue 26).
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80


def test_no_room_is_too_big() -> None:
    sizes = {module: len((PACKAGE / module).read_text().splitlines()) for module in _modules()}
    assert {module: lines for module, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}
    long = [
        f"{module}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
