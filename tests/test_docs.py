"""Every Python example in README.md and docs/*.md runs, and so does the example notebook.

How the examples are run (the conventions a docs writer follows):

- Each fenced ```` ```python ```` block is executed. The blocks of one page run
  in order in one namespace, like the cells of a notebook, in a fresh
  temporary working directory (files an example writes land there).
- A block may use top-level ``await``, as in a notebook or the
  ``python -m asyncio`` REPL: it runs on the page's event loop. A block written
  as a script calls ``asyncio.run(...)`` itself. Both work.
- ``<!-- not-tested: REASON -->`` on the line before a block skips it
  (keep these to blocks that need a real tenant). Lines after the reason,
  inside the comment, are a stand-in the test runs instead, so that the
  page's later blocks still have the names the skipped block would define.
- ``<!-- test-setup: ... -->`` on the line before a block runs the code in the
  comment first. It may prepare the world (a file, a server), never define
  a name a block uses: every block must be whole **as rendered**, its names
  defined by itself or by an earlier block of the page
  (``test_every_block_is_whole_as_rendered``). A ``not-tested`` block's
  stand-in may define the names the block itself defines visibly.
- ``pycon``, ``text``, ``sql`` and other blocks are prose; a block tagged
  ``py``, ``python3`` or ``Python`` is an error, so no example escapes.

The notebook ``examples/first_sync.ipynb`` is read as JSON and its code cells
run in order in one namespace, the same way; a cell's last expression is
"displayed" through ``_repr_html_`` when it has one, as Jupyter would. Its
committed outputs must be stripped.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import inspect
import json
import logging
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
NOTEBOOK = ROOT / "examples" / "first_sync.ipynb"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)[^`\n]*$")
_MARKER = re.compile(r"<!--\s*(?P<kind>not-tested|test-setup):(?P<body>.*?)-->\s*$", re.DOTALL)
_PYTHON_LIKE = re.compile(r"^(py|python\d*|ipython\d*)$", re.IGNORECASE)


@attrs.frozen
class Block:
    """One fenced code block of a Markdown page."""

    path: Path
    line: int  # 1-based line of the first code line
    info: str
    code: str
    marker: str | None = None  # "not-tested" or "test-setup"
    marker_body: str = ""
    marker_line: int = 0


def blocks_of(path: Path) -> Iterator[Block]:
    """Every fenced block of the page at ``path``."""
    return blocks_in(path.read_text("utf-8"), path)


def blocks_in(text: str, path: Path) -> Iterator[Block]:
    """Every fenced block of ``text``, with the marker comment right before it, if any."""
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"]
        start = index + 1
        end = start
        while end < len(lines) and not (
            lines[end].strip().startswith(fence) and lines[end].strip().strip(fence[0]) == ""
        ):
            end += 1
        code = "\n".join(
            line[len(indent) :] if line.startswith(indent) else line for line in lines[start:end]
        )
        marker = body = None
        marker_line = 0
        # A marker is an HTML comment ending on the line right before the fence.
        if index > 0 and lines[index - 1].rstrip().endswith("-->"):
            opening = index - 1
            while opening >= 0 and "<!--" not in lines[opening]:
                opening -= 1
            found = _MARKER.search("\n".join(lines[opening:index]).strip())
            if opening >= 0 and found:
                marker, marker_line = found["kind"], opening + 1
                body = textwrap.dedent(found["body"].lstrip(" \t")).rstrip()
        yield Block(path, start + 1, info, code, marker, body or "", marker_line)
        index = end + 1


def python_blocks(path: Path) -> list[Block]:
    return [block for block in blocks_of(path) if block.info == "python"]


def run_source(
    source: str, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop, filename: str, first_line: int
) -> Any:
    """Run ``source`` in ``namespace``; top-level ``await`` runs on ``loop``.

    Returns the value of a final expression statement (``None`` otherwise),
    as a notebook cell would show it.
    """
    # Padding keeps the Markdown file's line numbers in tracebacks.
    tree = ast.parse("\n" * (first_line - 1) + source, filename)
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    body = ast.Module(body=tree.body[:-1] if last else tree.body, type_ignores=[])

    def execute(code: Any, evaluate: bool) -> Any:
        if code.co_flags & inspect.CO_COROUTINE:
            return loop.run_until_complete(eval(code, namespace))
        if evaluate:
            return eval(code, namespace)
        exec(code, namespace)
        return None

    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    execute(compile(body, filename, "exec", flags=flags, dont_inherit=True), evaluate=False)
    if last is None:
        return None
    expression = ast.Expression(body=last.value)
    return execute(compile(expression, filename, "eval", flags=flags, dont_inherit=True), evaluate=True)


def _new_loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


# --------------------------------------------------------------------- Markdown


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=_page_id)
def test_page_examples_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING, logger="calm_azure_sync")
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    loop = _new_loop()
    try:
        for block in python_blocks(page):
            where = f"{_page_id(page)}:{block.line}"
            if block.marker == "not-tested":
                stand_in = block.marker_body.partition("\n")[2]
                if stand_in.strip():
                    run_source(stand_in, namespace, loop, str(page), block.marker_line + 1)
                continue
            if block.marker == "test-setup":
                run_source(block.marker_body, namespace, loop, str(page), block.marker_line)
            try:
                run_source(block.code, namespace, loop, str(page), block.line)
            except Exception as error:
                raise AssertionError(
                    f"the example at {where} failed: {type(error).__name__}: {error}"
                ) from error
    finally:
        _close_leftovers(namespace)
        _close_loop(loop)
    # A swallowed failure (a progress callback, an audit sink) is logged, not raised.
    assert not caplog.records, [record.getMessage() for record in caplog.records]


def _close_leftovers(namespace: dict[str, Any]) -> None:
    """Close the SQLite stores and sinks a page left open (a fragment may not show its close())."""
    for value in list(namespace.values()):
        close = getattr(value, "close", None)
        ours = type(value).__module__.startswith("calm_azure_sync.")
        if ours and callable(close) and not inspect.iscoroutinefunction(close):
            close()


_SOURCE_FLAGS = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def names_defined(tree: ast.AST) -> set[str]:
    """Every name a block binds: assignments, imports, functions, classes, parameters, ``as`` targets."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def names_used(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def undefined_names(page: Path) -> list[str]:
    """``page:line: names`` for each block using a name no visible block of the page defines before it."""
    known = set(dir(builtins)) | {"__name__"}
    problems = []
    for block in python_blocks(page):
        tree = compile(block.code, str(page), "exec", flags=_SOURCE_FLAGS, dont_inherit=True)
        defined = names_defined(tree)
        missing = names_used(tree) - defined - known
        if missing:
            problems.append(f"{_page_id(page)}:{block.line}: {', '.join(sorted(missing))}")
        known |= defined
    return problems


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=_page_id)
def test_every_block_is_whole_as_rendered(page: Path) -> None:
    """A reader copying the page's blocks in order never meets a name only a hidden comment defines."""
    assert not undefined_names(page), "define these names in a visible block: " + "; ".join(undefined_names(page))


def test_the_wholeness_check_finds_a_name_from_hidden_set_up(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- test-setup:\nfixture = {}\n-->\n```python\nimport json\nprint(json.dumps(fixture))\n```\n"
        "```python\nasync def f(x):\n    return [y for y in x]\nawait f(fixture)\n```\n",
        "utf-8",
    )
    assert undefined_names(page) == [f"{_page_id(page)}:5: fixture", f"{_page_id(page)}:9: fixture"]
    page.write_text("```python\nfixture = {}\n```\n```python\nprint(fixture)\n```\n", "utf-8")
    assert undefined_names(page) == []


def test_every_example_is_found() -> None:
    """Guards the parser: a change that silently finds no blocks must fail here."""
    counted = {_page_id(page): len(python_blocks(page)) for page in PAGES}
    assert sum(counted.values()) >= 20, counted
    for page in ("docs/getting-started.md", "docs/host-integration.md", "docs/index.md"):
        assert counted[page] >= 1, page


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_no_python_block_escapes_the_tests(page: Path) -> None:
    for block in blocks_of(page):
        assert not (_PYTHON_LIKE.match(block.info) and block.info != "python"), (
            f"{_page_id(page)}:{block.line}: tag Python examples ```python so that they are executed"
        )


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_opt_outs_give_a_reason(page: Path) -> None:
    for block in python_blocks(page):
        if block.marker == "not-tested":
            reason = block.marker_body.partition("\n")[0].strip()
            assert reason, f"{_page_id(page)}:{block.line}: say why the block is not tested"


def test_marker_parsing() -> None:
    """The conventions above, on a small page."""
    page = (
        "text\n\n<!-- not-tested: needs a real tenant\nx = 1\n-->\n```python\nraise SystemExit\n```\n\n"
        "<!-- test-setup: y = 2 -->\n```python\nassert x + y == 3\nawait asyncio.sleep(0)\n```\n"
        "```pycon\n>>> 1\n```\n"
    )
    blocks = list(blocks_in(page, ROOT / "example.md"))
    assert [b.info for b in blocks] == ["python", "python", "pycon"]
    assert blocks[0].marker == "not-tested"
    assert blocks[0].marker_body.partition("\n")[2].strip() == "x = 1"
    assert blocks[1].marker == "test-setup"
    assert blocks[2].marker is None
    namespace: dict[str, Any] = {"asyncio": asyncio}
    loop = _new_loop()
    try:
        run_source("x = 1", namespace, loop, "<test>", 1)
        run_source(blocks[1].marker_body, namespace, loop, "<test>", 1)
        run_source(blocks[1].code, namespace, loop, "<test>", 1)
        assert run_source("await asyncio.sleep(0, result=5)", namespace, loop, "<test>", 1) == 5
        assert run_source("asyncio.run(asyncio.sleep(0, result=6))", namespace, loop, "<test>", 1) == 6
        with pytest.raises(ZeroDivisionError):
            run_source("1 / 0", namespace, loop, "<test>", 1)
    finally:
        _close_loop(loop)


# --------------------------------------------------------------------- notebook


def _notebook() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(NOTEBOOK.read_text("utf-8"))
    return data


def _cell_source(cell: dict[str, Any]) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def test_notebook_runs_top_to_bottom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING, logger="calm_azure_sync")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    shown: list[str] = []
    loop = _new_loop()
    try:
        for number, cell in enumerate(_notebook()["cells"], start=1):
            if cell["cell_type"] != "code":
                continue
            source = _cell_source(cell)
            assert not re.search(r"^\s*[%!]", source, re.MULTILINE), f"cell {number}: no IPython magics"
            try:
                value = run_source(source, namespace, loop, f"{NOTEBOOK.name}[cell {number}]", 1)
            except Exception as error:
                raise AssertionError(
                    f"notebook cell {number} failed: {type(error).__name__}: {error}"
                ) from error
            if value is not None:
                html_repr = getattr(value, "_repr_html_", None)
                shown.append(html_repr() if html_repr is not None else repr(value))
    finally:
        _close_loop(loop)
    # The library swallows (and logs) a failing progress callback or audit sink: a reader
    # would see a traceback in the notebook, so a logged warning fails the test.
    assert not caplog.records, [record.getMessage() for record in caplog.records]
    page = "\n".join(shown)
    # What a reader sees: the plan, the report and the Import Log as HTML tables.
    assert "<h4>Plan for trust Oak Learning Trust</h4>" in page  # the trust by its name
    assert "<h4>Import " in page
    assert ": ok</h4>" in page
    assert "import_completed" in page
    assert page.count("<table>") >= 4


def test_notebook_is_committed_without_outputs() -> None:
    notebook = _notebook()
    for number, cell in enumerate(notebook["cells"], start=1):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {number} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"cell {number} has an execution count"
    assert notebook["metadata"]["kernelspec"]["language"] == "python"


def test_notebook_is_valid_nbformat() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(NOTEBOOK, as_version=4))


def test_every_public_name_has_a_reference_entry() -> None:
    # mkdocs --strict fails on a cross-reference to a name the reference page
    # does not render, and a name without an entry is undocumented anyway.
    import calm_azure_sync

    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rendered = set(re.findall(r"^::: calm_azure_sync\.(\w+)$", page, flags=re.M))
    missing = sorted(set(calm_azure_sync.__all__) - rendered - {"__version__"})
    assert not missing, f"docs/api.md has no '::: calm_azure_sync.<name>' for {missing}"
