"""tools/measure_footprint.py measures what docs/getting-started.md quotes, and the import stays light.

The figures themselves vary by machine; what must hold is their shape:
msgraph-sdk is most of the install, and ``import calm_azure_sync`` costs a
fraction of a first GraphDirectory use (msgraph-sdk is imported only then).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.wire
def test_the_footprint_tool_measures_a_light_import_and_a_heavy_sdk() -> None:
    finished = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "measure_footprint.py"), "--repeat", "1", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    figures = json.loads(finished.stdout)
    assert figures["msgraph_sdk_mb"] > 0.5 * figures["install_mb"] > 0
    assert figures["bare_rss_mb"] < figures["import_rss_mb"] < figures["graph_import_rss_mb"] <= figures["first_read_rss_mb"]
    # What `import calm_azure_sync` adds is a fraction of what importing the Graph SDK adds.
    assert figures["import_rss_mb"] - figures["bare_rss_mb"] < 0.5 * (figures["graph_import_rss_mb"] - figures["bare_rss_mb"])


def test_the_getting_started_page_quotes_the_measured_footprint() -> None:
    page = (ROOT / "docs" / "getting-started.md").read_text("utf-8")
    section = page[page.index("### Install footprint") : page.index("## 2. Run the demo")]
    for figure in ("472 MB", "392 MB", "import calm_azure_sync", "tools/measure_footprint.py"):
        assert figure in section, figure
