"""The example notebook, executed in a real kernel and opened in headless Chromium, reads right.

The rendering and the checks live in ``tests/notebook_render.py`` (also
``nox -s notebook``); the render runs once, in a subprocess (a Jupyter kernel
and a browser are no business of this test process's warnings filter).
Without Chromium or the notebook packages the ``browser`` tests skip, except
in CI, where ``.ci/run`` installs Chromium and a skip would hide a broken set-up.
The checks themselves are tested here on hand-made pages, with no browser.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from . import notebook_render as render

IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing() -> str | None:
    if render.find_chromium() is None:
        return "headless Chromium is not installed (apt-get install chromium, or set $CHROMIUM)"
    for module in ("nbclient", "nbconvert", "ipykernel"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = _missing()
    if missing is not None:
        if IN_CI:
            pytest.fail(f"{missing}; in CI .ci/run installs Chromium and nox the test extra, so this is a broken CI set-up")
        pytest.skip(f"{missing}: the notebook render test needs it (it runs in CI)")
    out = tmp_path_factory.mktemp("notebook")
    summary_path = out / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.notebook_render", "--out", str(out), "--json", str(summary_path)],
        cwd=render.ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert summary_path.exists(), (
        f"render failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    summary: dict[str, Any] = json.loads(summary_path.read_text("utf-8"))
    summary["exit"] = result.returncode
    return summary


@pytest.mark.browser
def test_rendered_notebook_has_no_problems(rendered: dict[str, Any]) -> None:
    assert rendered["problems"] == []
    assert rendered["exit"] == 0


@pytest.mark.browser
def test_rendered_notebook_shows_the_access_table_with_user_names(rendered: dict[str, Any]) -> None:
    table = rendered["access_table"]
    assert table is not None, "no access table in the page Chromium built"
    assert table["heading"].startswith("Access after the run (trust Oak Learning Trust, site Birch High School)")
    assert table["columns"] == ["user", "email", "Incidents", "Policies", "Risk"]
    rows = table["rows"]
    # The heading counts the users; the browser shows every one of them.
    assert f": {len(rows)} users;" in table["heading"]
    known = render.sample_directory_users()
    assert len(rows) > 100
    assert all((row[0], row[1].lower()) in known for row in rows)
    # Names are not unique in the sample (two Alfie Morrises): each row is one user, by mail.
    assert len({row[1] for row in rows}) == len(rows)


@pytest.mark.browser
def test_rendered_notebook_leaves_no_progress_bar_unfinished(rendered: dict[str, Any]) -> None:
    bars = [bar for text in rendered["stderr"] for bar in render._BAR.finditer(text)]
    stages = {bar["stage"].strip() for bar in bars}
    # The bars are drawn (the check is not vacuous) and each one a reader sees is at its end.
    assert {"read", "plan", "apply"} <= stages
    assert all(bar["done"] == bar["total"] and bar["percent"] == "100" for bar in bars)


@pytest.mark.browser
def test_screenshot_shows_something(rendered: dict[str, Any]) -> None:
    png = Path(rendered["screenshot"]).read_bytes()
    assert png.startswith(b"\x89PNG")
    assert rendered["screenshot_ink"] > 0.01


# ------------------------------------------------- the checks, on hand-made pages


def _page(*cells: list[tuple[str, str]]) -> str:
    """A page shaped like nbconvert's lab template: code cells of (mime type, inner HTML) outputs."""
    parts = ["<html><body><main>"]
    for outputs in cells:
        parts.append('<div class="jp-Cell jp-CodeCell jp-Notebook-cell"><div class="jp-OutputArea">')
        for mime, inner in outputs:
            parts.append(f'<div class="jp-OutputArea-child"><div data-mime-type="{mime}">{inner}</div></div>')
        parts.append("</div></div>")
    return "".join(parts) + "</main></body></html>"


USERS = {("Ada Lovelace", "ada@birch.sch.uk"), ("Alan Turing", "alan@birch.sch.uk")}
ACCESS = (
    "text/html",
    "<h5>Access after the run (trust t, site s): 2 users; 2 added</h5><div><table>"
    "<thead><tr><th>user</th><th>email</th><th>Risk</th></tr></thead><tbody>"
    "<tr><td>Ada Lovelace</td><td>ada@birch.sch.uk</td><td>Member (added)</td></tr>"
    "<tr><td>Alan Turing</td><td>ALAN@birch.sch.uk</td><td>Admin (added)</td></tr></tbody></table></div>",
)
DONE = ("application/vnd.jupyter.stderr", "<pre>apply: 100%|██████████| 10/10 [00:00&lt;00:00]</pre>")


def test_check_passes_a_good_page() -> None:
    page = _page([DONE, ACCESS], [])
    assert render.page_problems(page, USERS) == []
    table = render.access_table(render.rendered_outputs(page))
    assert table is not None and table["rows"][1] == ["Alan Turing", "ALAN@birch.sch.uk", "Admin (added)"]


def test_check_finds_an_unfinished_bar() -> None:
    stuck = ("application/vnd.jupyter.stderr", "<pre>apply:  40%|████      | 4/10 [00:00&lt;00:01]</pre>")
    problems = render.page_problems(_page([stuck, ACCESS], []), USERS)
    assert len(problems) == 1 and "unfinished progress bar 'apply:  40%" in problems[0]


def test_check_finds_a_missing_or_empty_access_table() -> None:
    assert any("no access table" in p for p in render.page_problems(_page([DONE], []), USERS))
    empty = (
        "text/html",
        "<h5>Access after the run: 0 users</h5><table><tr><th>user</th><th>email</th></tr></table>",
    )
    assert any("no user rows" in p for p in render.page_problems(_page([empty], []), USERS))


def test_check_finds_a_stranger_in_the_access_table() -> None:
    problems = render.page_problems(_page([ACCESS], []), {("Ada Lovelace", "ada@birch.sch.uk")})
    assert problems == ["access table row 'Alan Turing' is no user of the sample directory"]
    wrong_mail = {("Ada Lovelace", "ada@elm.sch.uk"), ("Alan Turing", "alan@birch.sch.uk")}
    assert render.page_problems(_page([ACCESS], []), wrong_mail) == [
        "access table row 'Ada Lovelace' shows 'ada@birch.sch.uk', no such user's mail"
    ]


def test_check_finds_a_widget_a_warning_and_a_bar_drawn_into_the_last_cell() -> None:
    widget = ("application/vnd.jupyter.widget-view+json", "")
    warning = ("application/vnd.jupyter.stderr", "<pre>TqdmWarning: IProgress not found.</pre>")
    problems = render.page_problems(_page([ACCESS, widget, warning], [DONE]), USERS)
    assert [re.sub(r":.*", "", p) for p in problems] == [
        "code cell 1",
        "code cell 1",
        "the last code cell shows output (a bar closed late?)",
    ]


class _Node(dict[str, Any]):
    """Just enough of an nbformat node: attribute access to keys."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


def _notebook(*stderr: str) -> _Node:
    cells = [
        _Node(cell_type="code", outputs=[_Node(output_type="stream", name="stderr", text=text)])
        for text in stderr
    ]
    return _Node(cells=cells)


def test_notebook_check_finds_a_bar_still_open_when_its_cell_ends() -> None:
    closed = "\rread: 100%|██████████| 11/11 [00:00<00:00]\n"
    open_bar = "\rapply:  50%|█████     | 5/10 [00:00<00:00]"
    assert render.notebook_problems(_notebook(closed, closed)) == []
    assert render.notebook_problems(_notebook(closed, open_bar)) == [
        "code cell 2: a progress bar is still open when the cell ends"
    ]


def _png(width: int, height: int, pixel: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + pixel * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_png_ink_tells_a_blank_page_from_a_drawn_one() -> None:
    assert render.png_ink(_png(40, 30, b"\xff\xff\xff")) < 0.05
    assert render.png_ink(_png(40, 30, b"\x20\x60\xa0")) > 0.9
    assert render.png_ink(b"not a png") == 0.0
