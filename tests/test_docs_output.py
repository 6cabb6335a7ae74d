"""The program output the docs quote is what the programs print now (tools/regen_docs_output.py).

Each ```` ```text ```` block after a ``<!-- generated-output: NAME -->`` marker
is recomputed the way the tool makes it (the demo, ``sample_sync.py`` run
twice, the notebook's figures shown in its screenshot) and compared, run ids,
durations and times aside. When this fails, run
``python tools/regen_docs_output.py`` (``--screenshot`` for the notebook's
picture and figures) and commit the pages.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool() -> Any:
    spec = importlib.util.spec_from_file_location("regen_docs_output", ROOT / "tools" / "regen_docs_output.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("regen_docs_output", module)
    spec.loader.exec_module(module)
    return module


TOOL = _tool()
QUOTED = TOOL.quoted()


def test_the_pages_quote_every_generated_output() -> None:
    names = {name for _, name, _ in QUOTED}
    assert names == set(TOOL.GENERATORS), names


@pytest.mark.parametrize(("page", "name", "body"), QUOTED, ids=[f"{p.name}:{n}" for p, n, _ in QUOTED])
def test_quoted_output_is_current(page: Path, name: str, body: str) -> None:
    current = TOOL.GENERATORS[name]()
    assert TOOL.normalized(body) == TOOL.normalized(current), (
        f"{page.relative_to(ROOT)} quotes stale '{name}' output; run python tools/regen_docs_output.py"
        f"{' --screenshot' if name == 'notebook' else ''}\n--- quoted\n{body}\n--- now\n{current}"
    )


def test_the_sample_script_the_page_quotes_is_the_one_it_shows() -> None:
    code = TOOL.sample_sync_code()
    assert code.startswith("import asyncio") and "asyncio.run(main())" in code


def test_a_stale_block_is_found_and_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Intro\n\n<!-- generated-output: demo -->\n```text\nImport 0123456789abcdef0123456789abcdef: ok in 0.1s"
        " (create_user=313)\n```\n\nAfter\n",
        "utf-8",
    )
    monkeypatch.setattr(TOOL, "PAGES", [page])
    now = "Import fedcba9876543210fedcba9876543210: ok in 2.5s (create_user=313)"
    monkeypatch.setattr(TOOL, "GENERATORS", {"demo": lambda: now})
    assert TOOL.regenerate({"demo"}, check=True) == []  # ids and durations differ only
    monkeypatch.setattr(TOOL, "GENERATORS", {"demo": lambda: now.replace("313", "321")})
    stale = TOOL.regenerate({"demo"}, check=True)
    assert len(stale) == 1 and stale[0].endswith(": demo")
    assert "313" in page.read_text("utf-8")  # --check rewrites nothing
    TOOL.regenerate({"demo"}, check=False)
    assert "create_user=321" in page.read_text("utf-8") and page.read_text("utf-8").endswith("```\n\nAfter\n")
