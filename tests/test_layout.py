"""docs/layout.md names every module, and the modules it calls *no IO* import no IO.

The check is static (the modules' import statements, read with ``ast``):
a module marked *no IO* imports none of the IO libraries below, calls no
built-in ``open``, and imports (at run time, ``TYPE_CHECKING`` blocks aside)
only modules of the package that are marked *no IO* too, so the pure core
cannot reach a database, a socket or a file by a side door.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "calm_azure_sync"
PAGE = ROOT / "docs" / "layout.md"

# The libraries (or their IO parts) that reach outside the process: a name or a dotted prefix.
IO_LIBRARIES = frozenset(
    {
        "sqlite3", "socket", "socketserver", "ssl", "http.client", "http.server", "urllib.request", "httpx",
        "requests", "subprocess", "shutil", "tempfile", "pathlib", "io", "psycopg", "psycopg_pool", "msgraph",
        "msgraph_core", "kiota_abstractions", "kiota_http", "kiota_authentication_azure", "azure", "tqdm",
    }
)  # fmt: skip
# A no-IO module may use an IO library's values without doing IO; each exception says why.
ALLOWED = {
    # httpx.Request / httpx.Response / httpx.MockTransport: the fake answers values, opens no socket.
    "testing/_graph_model.py": {"httpx"},
    "testing/_graph_delta.py": {"httpx"},
    "testing/_graph_shapes.py": {"httpx"},
    # Path only annotates the tmp_path pytest hands to the host's make_store / make_sink.
    "testing/store_conformance.py": {"pathlib"},
    "testing/audit_conformance.py": {"pathlib"},
}


def _io_library(name: str) -> str | None:
    """The entry of IO_LIBRARIES that the imported ``name`` is or is inside, if any."""
    for library in IO_LIBRARIES:
        if name == library or name.startswith(library + "."):
            return library
    return None

_ROW = re.compile(r"^\|\s*`(?P<module>[^`]+\.py)`\s*\|\s*(?P<io>IO|no IO)\s*\|\s*(?P<owns>[^|]*\S)\s*\|\s*$")


def _rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in PAGE.read_text("utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            assert match["module"] not in rows, f"docs/layout.md lists {match['module']} twice"
            rows[match["module"]] = match["io"]
    return rows


def _modules() -> list[str]:
    return sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py"))


def test_every_module_has_its_row_in_docs_layout() -> None:
    rows = _rows()
    missing = [module for module in _modules() if module not in rows]
    gone = [module for module in rows if module not in _modules()]
    assert not missing, f"add a row for each new module to the table in docs/layout.md: {missing}"
    assert not gone, f"docs/layout.md lists modules that no longer exist: {gone}"


def _runtime_imports(tree: ast.Module, module: str) -> list[tuple[str, int]]:
    """(dotted name, line) of every import outside ``if TYPE_CHECKING:``, relative ones resolved."""
    package = ["calm_azure_sync", *module.removesuffix(".py").split("/")[:-1]]
    if module.endswith("__init__.py"):
        package = ["calm_azure_sync", *module.split("/")[:-1]]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.append((target, node.lineno))
            # "from . import review" imports the module review.
            found.extend((f"{target}.{alias.name}", node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _module_of(dotted: str) -> str | None:
    """The package file a dotted ``calm_azure_sync...`` name is, or None (not a module of the package)."""
    parts = dotted.split(".")[1:]
    if parts and PACKAGE.joinpath(*parts).with_suffix(".py").is_file():
        return "/".join(parts) + ".py"
    if PACKAGE.joinpath(*parts, "__init__.py").is_file():
        return "/".join([*parts, "__init__.py"])
    return None


@pytest.mark.parametrize("module", sorted(m for m, io in _rows().items() if io == "no IO"))
def test_a_no_io_module_reaches_no_io(module: str) -> None:
    rows = _rows()
    tree = ast.parse((PACKAGE / module).read_text("utf-8"))
    problems = []
    for name, line in _runtime_imports(tree, module):
        top = name.split(".")[0]
        library = _io_library(name)
        if library is not None and library not in ALLOWED.get(module, set()):
            problems.append(f"line {line}: imports {name}")
        if top == "calm_azure_sync":
            target = _module_of(name)
            if target is not None and rows.get(target) == "IO":
                problems.append(f"line {line}: imports {target}, which docs/layout.md marks IO")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            problems.append(f"line {node.lineno}: calls open()")
    assert not problems, f"{module} is marked 'no IO' in docs/layout.md, but: {problems}"


def test_the_check_catches_an_io_import() -> None:
    tree = ast.parse("import sqlite3\nfrom ..store import sqlite as s\nfrom typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from pathlib import Path\n")  # fmt: skip
    names = [name for name, _ in _runtime_imports(tree, "audit/events.py")]
    assert "sqlite3" in names and "calm_azure_sync.store.sqlite" in names
    assert not any(name.startswith("pathlib") for name in names)
    assert _module_of("calm_azure_sync.store.sqlite") == "store/sqlite.py"
    assert _module_of("calm_azure_sync.store") == "store/__init__.py"
    assert _module_of("calm_azure_sync.store.sqlite.SqliteUserStore") is None
    assert _io_library("urllib.request") == "urllib.request" and _io_library("urllib.parse") is None
    assert _io_library("psycopg.rows") == "psycopg" and _io_library("psycopgx") is None


# ---------------------------------------------------------------------- import cycles

def _imported_modules(module: str) -> set[str]:
    """The package modules ``module`` imports at run time, in functions too (``TYPE_CHECKING`` aside).

    ``from .x import name`` imports ``x`` (or ``x.name`` when that is a module);
    the packages above an imported module are not counted (they are imported
    first, but import nothing back by that).
    """
    package = ["calm_azure_sync", *module.removesuffix(".py").split("/")[:-1]]
    found: set[str] = set()

    def add(dotted: str) -> None:
        target = _module_of(dotted) if dotted.split(".")[0] == "calm_azure_sync" else None
        if target is not None and target != module:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                if _module_of(f"{target}.{alias.name}") is not None:
                    add(f"{target}.{alias.name}")
                else:
                    add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse((PACKAGE / module).read_text("utf-8")))
    return found


def _import_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected parts of ``graph`` with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[frozenset[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.add(top)
                if top == node:
                    break
            if len(part) > 1:
                cycles.append(frozenset(part))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(cycles, key=sorted)


def _library_cycles() -> list[frozenset[str]]:
    return _import_cycles({module: _imported_modules(module) for module in _modules()})


def test_no_module_imports_another_in_a_cycle() -> None:
    # Imports inside functions count: a display method importing its renderer still makes a cycle.
    cycles = [sorted(cycle) for cycle in _library_cycles()]
    assert not cycles, f"library modules that import each other in a cycle: {cycles}"


def test_the_cycle_check_sees_imports_in_functions_and_not_type_checking_ones() -> None:
    assert _import_cycles({"a.py": {"b.py"}, "b.py": {"c.py"}, "c.py": {"a.py"}, "d.py": {"a.py"}}) == [
        frozenset({"a.py", "b.py", "c.py"})
    ]
    assert _import_cycles({"a.py": {"b.py"}, "b.py": set()}) == []
    # core/plan.py imports review only inside its methods, and state only under TYPE_CHECKING.
    assert "review/__init__.py" in _imported_modules("core/plan.py")
    assert "core/state.py" not in _imported_modules("core/plan.py")
    # "from . import review" is the module review, not the package; "from .incremental import X" the package.
    assert "__init__.py" not in _imported_modules("core/plan.py")
    assert "incremental/__init__.py" in _imported_modules("__init__.py")


def test_the_directory_read_does_not_import_the_planner() -> None:
    reached: set[str] = set()
    pending = ["incremental/reader.py"]
    while pending:
        module = pending.pop()
        if module not in reached:
            reached.add(module)
            pending.extend(_imported_modules(module))
    assert "core/planner.py" not in reached and "core/guards.py" not in reached, sorted(reached)


# ---------------------------------------------------------------------- the rooms import one way

# What each room may import outside itself (docs/layout.md, "The rooms"); a path ending in "/" is a room.
_PLUMBING = frozenset({"model.py", "errors.py", "_text.py", "_html.py", "_gc.py"})
_ROOM_IMPORTS: dict[str, frozenset[str]] = {
    "policies": _PLUMBING,
    "core": _PLUMBING | {"policies/", "store/protocol.py", "audit/events.py"},
    "review": _PLUMBING
    | {"policies/", "core/", "store/protocol.py", "audit/events.py", "directory/protocol.py", "incremental/reader.py"},
}
# Plan's display methods import review inside the method; review imports core/changes.py, never core/plan.py.
_AGAINST_THE_FLOW = frozenset({("core/plan.py", "review/__init__.py")})


def _room_violations(imports: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported_modules in sorted(imports.items()):
        room = module.split("/")[0]
        allowed = _ROOM_IMPORTS.get(room)
        if allowed is None or "/" not in module:
            continue
        for imported in sorted(imported_modules):
            if imported.startswith(f"{room}/") or (module, imported) in _AGAINST_THE_FLOW:
                continue
            if imported in allowed or any(entry.endswith("/") and imported.startswith(entry) for entry in allowed):
                continue
            wrong.append(f"{module} -> {imported}")
    return wrong


def test_the_rooms_import_one_way() -> None:
    imports = {
        path.relative_to(PACKAGE).as_posix(): _imported_modules(path.relative_to(PACKAGE).as_posix())
        for path in sorted(PACKAGE.glob("*/*.py"))
    }
    wrong = _room_violations(imports)
    assert not wrong, f"imports against the rooms' one-way flow (see docs/layout.md, 'The rooms'): {wrong}"


def test_the_room_check_finds_an_import_against_the_flow() -> None:
    assert _room_violations({"policies/config.py": {"core/state.py", "model.py"}}) == [
        "policies/config.py -> core/state.py"
    ]
    assert _room_violations({"core/guards.py": {"reconciler.py", "policies/config.py"}}) == [
        "core/guards.py -> reconciler.py"
    ]
    assert _room_violations({"core/plan.py": {"review/__init__.py"}, "review/status.py": {"core/state.py"}}) == []


# ---------------------------------------------------------------------- sizes

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60


def _library_sources() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in ("testing", "demo")
    ]


def test_no_library_module_is_over_600_lines_and_no_function_over_60() -> None:
    too_long = []
    for path in _library_sources():
        module = path.relative_to(PACKAGE).as_posix()
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{module}: {text.count(chr(10))} lines")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    owner = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                    name = f"{module}::{owner}{child.name}"
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        too_long.append(f"{name}: {length} lines")
    assert not too_long, f"split these by concept or by step (docs/layout.md): {too_long}"
