"""Render ``examples/first_sync.ipynb`` as a reader sees it, in headless Chromium, and check the page.

``nox -s notebook`` runs this module (``python -m tests.notebook_render``);
``tests/test_notebook_render.py`` runs it too. The steps:

1. Execute the notebook in a real Jupyter kernel (nbclient + ipykernel), in a
   fresh working directory, with stream outputs merged and carriage returns
   applied the way JupyterLab shows them (so a finished tqdm bar shows as one
   line at 100%, not as every frame it drew).
2. Export it to HTML with nbconvert (the lab template), minus the two
   ``<script src="https://...">`` tags (require.js and MathJax): the page
   must render offline, and the browser must not try the network.
3. Open it in headless Chromium twice: ``--dump-dom`` gives the page as the
   browser built it, ``--screenshot`` a PNG scrolled to the access table.
4. Check what a reader would see: the access table (``Plan.access_table()``)
   is there as an HTML table whose users are the sample's users, by name and
   email; no progress bar is left unfinished (a tqdm line short of its
   total), none was drawn into a later cell, no widget output and no
   ``IProgress`` warning.

Usage::

    python -m tests.notebook_render [--out DIR] [--screenshot PNG] [--json FILE]

It exits 1 and lists the problems when a check fails, 2 when Chromium or
nbconvert is missing. Chromium is ``$CHROMIUM`` or ``chromium`` on ``PATH``
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "first_sync.ipynb"
DOCS_SCREENSHOT = ROOT / "docs" / "img" / "first-sync-notebook.png"
# The Markdown heading right above the access table cell (nbconvert makes its id).
ACCESS_ANCHOR = "Who-will-have-what"
ACCESS_HEADING = "Access after the run"

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The page is a local file: resolve no host name at all, so nothing leaves the machine.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--hide-scrollbars",
]
WINDOW = (1100, 900)

# A tqdm text bar with a known total: "apply:  40%|████      | 4/10 [00:00<...]".
_BAR = re.compile(r"(?P<stage>[\w .-]+?):\s+(?P<percent>\d+)%\|[^|\n]*\|\s*(?P<done>\d+)/(?P<total>\d+)")
_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>", re.IGNORECASE)
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class MissingTool(RuntimeError):
    """Chromium or the notebook packages are not installed."""


def find_chromium() -> str | None:
    """``$CHROMIUM``, else ``chromium`` (Debian's package) on ``PATH``; None when neither is there."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    return shutil.which("chromium")


# ------------------------------------------------------------------ execute + export


def execute(notebook: Path, workdir: Path) -> Any:
    """Run every cell in a python3 kernel in ``workdir``; the executed notebook (nbformat node)."""
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as error:
        raise MissingTool(f"{error.name} is missing: pip install -e '.[test]'") from error
    node = nbformat.read(notebook, as_version=4)
    # The kernel imports calm_azure_sync as the caller does (an editable install, or PYTHONPATH=src).
    client = NotebookClient(
        node,
        timeout=120,
        kernel_name="python3",
        coalesce_streams=True,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return node


def export_html(node: Any) -> str:
    """The lab-template HTML page of an executed notebook, without remote scripts."""
    try:
        from nbconvert import HTMLExporter
    except ImportError as error:
        raise MissingTool(f"{error.name} is missing: pip install -e '.[test]'") from error
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(node)
    return str(_REMOTE_SCRIPT.sub("", page))


# ------------------------------------------------------------------------- chromium


def _chromium(chromium: str, *arguments: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="calm-chromium-") as profile:
        return subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            stdin=subprocess.DEVNULL,
        )


def dump_dom(chromium: str, page: Path) -> str:
    """The page's DOM as the browser built it, serialized."""
    return _chromium(chromium, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()).stdout


def screenshot(chromium: str, page: Path, png: Path, anchor: str = ACCESS_ANCHOR) -> None:
    """A PNG of the browser window showing the page from the cell holding element ``anchor`` on.

    Headless Chromium paints nothing once the page is scrolled (nor for a
    ``#fragment`` URL), so a copy of the page drops the cells above that one.
    """
    cropped = page.with_name(page.stem + ".from-" + anchor + ".html")
    script = (
        "<script>addEventListener('DOMContentLoaded', () => {"
        f" let cell = document.getElementById({json.dumps(anchor)}).closest('.jp-Cell');"
        " while (cell.previousElementSibling) cell.previousElementSibling.remove(); });</script>"
    )
    cropped.write_text(page.read_text("utf-8").replace("</body>", script + "</body>", 1), "utf-8")
    png.parent.mkdir(parents=True, exist_ok=True)
    _chromium(
        chromium,
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=3000",
        "--run-all-compositor-stages-before-draw",
        f"--screenshot={png}",
        cropped.as_uri(),
    )


def png_ink(png: bytes) -> float:
    """The share of a PNG's filtered pixel bytes that are neither 0 nor 255: ~0 for a blank page."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        return 0.0
    data, offset = b"", 8
    while offset < len(png):
        length = int.from_bytes(png[offset : offset + 4], "big")
        kind = png[offset + 4 : offset + 8]
        if kind == b"IDAT":
            data += png[offset + 8 : offset + 8 + length]
        offset += 12 + length
    raw = zlib.decompress(data)
    return sum(1 for byte in raw if byte not in (0, 255)) / max(1, len(raw))


# --------------------------------------------------------------------------- checks


class _Outputs(HTMLParser):
    """The rendered outputs of a notebook page: per code cell, each output's mime type, text, heading, tables."""

    _VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: list[list[dict[str, Any]]] = []
        self._stack: list[str] = []
        self._output_depth: int | None = None
        self._row: list[str] | None = None
        self._cell_text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._VOID:
            return
        self._stack.append(tag)
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "div" and "jp-CodeCell" in classes:
            self.cells.append([])
        mime = attributes.get("data-mime-type")
        if mime is not None and self.cells and self._output_depth is None:
            self._output_depth = len(self._stack)
            self.cells[-1].append({"mime": mime, "text": "", "heading": "", "tables": []})
        if self._output_depth is None:
            return
        output = self.cells[-1][-1]
        if tag == "table":
            output["tables"].append([])
        elif tag == "tr" and output["tables"]:
            self._row = []
            output["tables"][-1].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell_text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self._VOID or not self._stack:
            return
        if tag in ("td", "th") and self._row is not None and self._cell_text is not None:
            self._row.append("".join(self._cell_text).strip())
            self._cell_text = None
        elif tag == "tr":
            self._row = None
        while self._stack:  # tolerate an unclosed element inside
            opened = self._stack.pop()
            if self._output_depth is not None and len(self._stack) < self._output_depth:
                self._output_depth = None
            if opened == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._output_depth is None or not self.cells:
            return
        output = self.cells[-1][-1]
        output["text"] += data
        if not output["tables"]:  # the words above an output's first table: its heading
            output["heading"] += data
        if self._cell_text is not None:
            self._cell_text.append(data)


def rendered_outputs(dom: str) -> list[list[dict[str, Any]]]:
    """Per code cell of the page, its outputs: ``{"mime", "text", "heading", "tables"}``.

    ``heading`` is the text above the output's first table; a table is its rows, each a list of cell texts.
    """
    parser = _Outputs()
    parser.feed(dom)
    parser.close()
    return parser.cells


def access_table(cells: list[list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The access table output (heading, column names, rows), or None when the page has none."""
    for outputs in cells:
        for output in outputs:
            if output["mime"] == "text/html" and output["heading"].strip().startswith(ACCESS_HEADING):
                table = output["tables"][0] if output["tables"] else []
                return {
                    "heading": output["heading"].strip(),
                    "columns": table[0] if table else [],
                    "rows": table[1:],
                }
    return None


def page_problems(dom: str, directory_users: set[tuple[str, str]]) -> list[str]:
    """What is wrong with the rendered page; ``directory_users`` holds each user's (display name, mail)."""
    problems: list[str] = []
    cells = rendered_outputs(dom)
    if not cells:
        return ["the page has no code cells: is this an nbconvert page?"]
    table = access_table(cells)
    if table is None:
        problems.append(f"no access table: no HTML output starts with {ACCESS_HEADING!r}")
    elif table["columns"][:2] != ["user", "email"] or not table["rows"]:
        problems.append(f"the access table has no user rows (columns {table['columns']!r})")
    else:
        names = {name for name, _ in directory_users}
        for row in table["rows"]:
            name, email = row[0], row[1].lower()
            if name not in names:
                problems.append(f"access table row {name!r} is no user of the sample directory")
            elif (name, email) not in directory_users:
                problems.append(f"access table row {name!r} shows {email!r}, no such user's mail")
    for number, outputs in enumerate(cells, start=1):
        for output in outputs:
            if output["mime"] == _WIDGET_MIME:
                problems.append(
                    f"code cell {number}: a progress widget output (ipywidgets) is left in the page"
                )
            if "IProgress not found" in output["text"]:
                problems.append(f"code cell {number}: tqdm's IProgress warning is shown")
            for bar in _BAR.finditer(output["text"]):
                if bar["done"] != bar["total"] or bar["percent"] != "100":
                    problems.append(f"code cell {number}: unfinished progress bar {bar.group(0).strip()!r}")
    last = cells[-1]
    if any(output["text"].strip() for output in last):
        problems.append(
            f"the last code cell shows output (a bar closed late?): {last[0]['text'].strip()[:80]!r}"
        )
    return problems


def notebook_problems(node: Any) -> list[str]:
    """Bars left open, read from the executed notebook: a cell's stderr that does not end its last line.

    tqdm ends a bar's line when the bar is closed; a bar still open when its
    cell finished would be finished (or closed) by a later cell, drawing into it.
    """
    problems: list[str] = []
    code_cells = [cell for cell in node.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        for output in cell.outputs:
            if output.output_type == "error":
                problems.append(f"code cell {number} raised {output.ename}: {output.evalue}")
            if output.output_type == "stream" and output.name == "stderr":
                text = output.text
                if _BAR.search(text) and not text.endswith("\n"):
                    problems.append(f"code cell {number}: a progress bar is still open when the cell ends")
    return problems


def sample_directory_users() -> set[tuple[str, str]]:
    """The bundled sample's users as (display name, mail in lower case) (names are not unique)."""
    from calm_azure_sync.demo import load_sample

    users = load_sample().raw["directory"]["users"]
    return {(user["displayName"], (user["mail"] or "").lower()) for user in users}


# ----------------------------------------------------------------------------- main


def render_and_check(out: Path, png: Path | None = None) -> dict[str, Any]:
    """Run all the steps into ``out``; a summary with ``problems`` (empty when the page is right)."""
    chromium = find_chromium()
    if chromium is None:
        raise MissingTool("headless Chromium is missing: apt-get install chromium (or set $CHROMIUM)")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=out))
    node = execute(NOTEBOOK, workdir)
    timings["execute"] = time.perf_counter() - started
    page = out / "first_sync.html"
    page.write_text(export_html(node), "utf-8")
    timings["export"] = time.perf_counter() - started - timings["execute"]
    mark = time.perf_counter()
    dom = dump_dom(chromium, page)
    png = png or out / "first_sync.png"
    screenshot(chromium, page, png)
    timings["chromium"] = time.perf_counter() - mark
    problems = notebook_problems(node) + page_problems(dom, sample_directory_users())
    ink = png_ink(png.read_bytes())
    if ink < 0.01:
        problems.append(f"the screenshot {png} is blank ({ink:.4f} of its bytes are ink)")
    cells = rendered_outputs(dom)
    table = access_table(cells)
    return {
        "page": str(page),
        "screenshot": str(png),
        "screenshot_ink": round(ink, 4),
        "access_table": table,
        "stderr": [o["text"] for outputs in cells for o in outputs if o["mime"].endswith("stderr")],
        "problems": problems,
        "seconds": {name: round(value, 2) for name, value in timings.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.notebook_render", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, help="folder for the page and the screenshot (default: a temporary one)"
    )
    parser.add_argument(
        "--screenshot", type=Path, help=f"write the PNG here (e.g. {DOCS_SCREENSHOT.relative_to(ROOT)})"
    )
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    options = parser.parse_args(argv)
    out = options.out or Path(tempfile.mkdtemp(prefix="calm-notebook-render-"))
    try:
        summary = render_and_check(out, options.screenshot)
    except MissingTool as error:
        print(f"notebook render: {error}", file=sys.stderr)
        return 2
    if options.json:
        options.json.write_text(json.dumps(summary, indent=1), "utf-8")
    table = summary["access_table"]
    rows = len(table["rows"]) if table else 0
    print(f"page {summary['page']}\nscreenshot {summary['screenshot']}")
    print(f"access table: {rows} users; seconds {summary['seconds']}")
    for problem in summary["problems"]:
        print(f"PROBLEM: {html.unescape(problem)}", file=sys.stderr)
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
