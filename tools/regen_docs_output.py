"""Regenerate the program output the docs quote, so no page shows stale figures.

A quoted output is a ```` ```text ```` block right after a marker comment::

    <!-- generated-output: demo -->

This script computes each named output by running the code it quotes and
rewrites the block; ``tests/test_docs_output.py`` computes the same and fails
when a page differs (run ids and durations aside). The outputs:

- ``demo``: the end of ``python -m calm_azure_sync.demo`` (docs/getting-started.md);
- ``sample-sync``: ``sample_sync.py`` (the block docs/getting-started.md asks
  you to save) run twice in a fresh folder;
- ``notebook``: the figures of ``examples/first_sync.ipynb`` shown in the
  screenshot ``docs/img/first-sync-notebook.png`` (its progress bars and the
  access table's heading). With ``--screenshot`` the picture is taken again
  first (headless Chromium, ``tests/notebook_render.py``); without it this
  figure is left alone, so the text never disagrees with the picture.

Usage::

    python tools/regen_docs_output.py [--screenshot] [--check]

``--check`` rewrites nothing and exits 1 when a page is stale.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import inspect
import io
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
NOTEBOOK = ROOT / "examples" / "first_sync.ipynb"
MARKER = re.compile(r"^<!-- generated-output: (?P<name>[\w-]+) -->\n```text\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
# What differs from run to run: run ids, durations and times of day.
_VOLATILE = [
    (re.compile(r"\b[0-9a-f]{32}\b"), "<run id>"),
    (re.compile(r"\bin \d+\.\d+s\b"), "in <t>s"),
    (re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00:00"), "<time>"),
]
_BAR = re.compile(r"(?P<stage>read|plan|apply):\s+\d+%\|[^|\n]*\|\s*(?P<done>\d+)/(?P<total>\d+)")


def normalized(text: str) -> str:
    """``text`` with what differs between two runs replaced by placeholders."""
    for pattern, placeholder in _VOLATILE:
        text = pattern.sub(placeholder, text)
    return text.strip()


def _python(*args: str, cwd: Path) -> str:
    finished = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    if finished.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    return finished.stdout


def demo() -> str:
    """The demo's two Start Import sections, cut as docs/getting-started.md quotes them."""
    with tempfile.TemporaryDirectory() as folder:
        lines = _python("-m", "calm_azure_sync.demo", "--out", "out", cwd=Path(folder)).splitlines()
    start = lines.index(next(line for line in lines if line.startswith("== Start Import ==")))
    again = lines.index(next(line for line in lines if line.startswith("== Start Import again")))
    invited = next(line for line in lines[start:] if "Invited by hand" in line)
    return "\n".join([lines[start], lines[start + 1], "", invited, "...", lines[again], lines[again + 1]])


def sample_sync_code() -> str:
    """The ``sample_sync.py`` block of docs/getting-started.md (the first Python block after its name)."""
    text = (ROOT / "docs" / "getting-started.md").read_text("utf-8")
    after = text[text.index("`sample_sync.py`") :]
    return after[after.index("```python\n") + len("```python\n") : after.index("\n```", after.index("```python\n"))]


def sample_sync() -> str:
    """``sample_sync.py`` run twice in a fresh folder, as a terminal shows it."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "sample_sync.py").write_text(sample_sync_code() + "\n", "utf-8")
        first = _python("sample_sync.py", cwd=Path(folder)).rstrip()
        second = _python("sample_sync.py", cwd=Path(folder)).rstrip()
    return f"$ python sample_sync.py\n{first}\n$ python sample_sync.py   # again: nothing changed\n{second}"


def _run_cell(source: str, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop) -> Any:
    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

    def run(code: Any, evaluate: bool) -> Any:
        outcome = eval(code, namespace) if evaluate or code.co_flags & inspect.CO_COROUTINE else exec(code, namespace)
        return loop.run_until_complete(outcome) if inspect.isawaitable(outcome) else outcome

    run(compile(tree, "<cell>", "exec", flags=flags), evaluate=False)
    return None if last is None else run(compile(ast.Expression(last.value), "<cell>", "eval", flags=flags), True)


def notebook() -> str:
    """The notebook's Start Import bars and its access table's heading, as the screenshot shows them."""
    cells = [c for c in json.loads(NOTEBOOK.read_text("utf-8"))["cells"] if c["cell_type"] == "code"]
    namespace: dict[str, Any] = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()
    heading = bars = ""
    try:
        with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
            for cell in cells:
                source = "".join(cell["source"])
                captured = io.StringIO()
                with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(io.StringIO()):
                    value = _run_cell(source, namespace, loop)
                if "access_table(" in source and value is not None:
                    heading = str(value).splitlines()[0]
                if "reconciler.run(" in source and not bars:
                    final = {m["stage"]: f"{m['stage']}: {m['done']}/{m['total']}" for m in _BAR.finditer(captured.getvalue())}
                    bars = "  ".join(final[stage] for stage in ("read", "plan", "apply") if stage in final)
    finally:
        loop.close()
    if not heading or not bars:
        raise RuntimeError(f"the notebook showed no access table or no Start Import bars ({heading!r}, {bars!r})")
    return f"{bars}\n{heading}"


GENERATORS: dict[str, Callable[[], str]] = {"demo": demo, "sample-sync": sample_sync, "notebook": notebook}


def quoted(pages: list[Path] = PAGES) -> list[tuple[Path, str, str]]:
    """Every generated output the pages quote: (page, name, the block's text)."""
    return [(page, m["name"], m["body"].rstrip("\n")) for page in pages for m in MARKER.finditer(page.read_text("utf-8"))]


def regenerate(names: set[str], check: bool) -> list[str]:
    """Rewrite (or, with ``check``, compare) the blocks of ``names``; the stale ones' descriptions."""
    outputs = {name: GENERATORS[name]() for name in sorted(names)}
    stale = []
    for page in PAGES:
        text = page.read_text("utf-8")
        shown = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
        for match in MARKER.finditer(text):
            name = match["name"]
            if name in outputs and normalized(match["body"]) != normalized(outputs[name]):
                stale.append(f"{shown}: {name}")

        def replace(match: re.Match[str]) -> str:
            name = match["name"]
            if name not in outputs:
                return match.group(0)
            return f"<!-- generated-output: {name} -->\n```text\n{outputs[name]}\n```"

        new = MARKER.sub(replace, text)
        if not check and new != text:
            page.write_text(new, "utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the program output the docs quote.")
    parser.add_argument("--screenshot", action="store_true", help="retake the notebook screenshot and its figures")
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 when a page is stale")
    options = parser.parse_args(argv)
    names = {"demo", "sample-sync"}
    if options.screenshot:
        subprocess.run(
            [sys.executable, "-m", "tests.notebook_render", "--screenshot", "docs/img/first-sync-notebook.png"],
            cwd=ROOT, check=True, timeout=600,
        )  # fmt: skip
    if options.screenshot or options.check:
        names.add("notebook")
    stale = regenerate(names, options.check)
    for entry in stale:
        print(("stale: " if options.check else "regenerated: ") + entry)
    return 1 if options.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
