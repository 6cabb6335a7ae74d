"""tools/measure_footprint.py measures what docs/getting-started.md quotes, the import stays light, and a run
leaves nothing for the cyclic collector.

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


async def test_a_run_leaves_no_reference_cycle_behind():
    """A cycle through a run (its store reader held a bound method of it) kept the run's whole read, two delta
    caches at 100k users, alive until a full collection, which then cost 0.75 s of the next run's CPU."""
    import gc

    from calm_azure_sync import InMemoryAuditSink, InMemoryDirectory, InMemoryUserStore, Reconciler
    from calm_azure_sync.testing.synthetic import generate_tenant

    from .helpers import SYSTEM

    tenant = generate_tenant(users=300, groups=6, seed=3)
    directory = InMemoryDirectory.from_dict(tenant.fixture)
    reconciler = Reconciler(directory, InMemoryUserStore(), InMemoryAuditSink(), tenant.hierarchy)
    for _ in range(2):  # a full read, then an incremental one that leaves the record
        await reconciler.run(tenant.config, actor=SYSTEM)
    group = sorted(tenant.config.mappings.group_ids)[0]
    newcomer = next(user["id"] for user in tenant.fixture["users"] if user["id"] not in directory.members[group])
    directory.add_member(group, newcomer)
    gc.collect()
    gc.disable()
    try:
        narrowed = await reconciler.run(tenant.config, actor=SYSTEM)  # planned by difference
        everyone = await reconciler.run(tenant.config, actor=SYSTEM, mode="full")
        left = gc.collect()
    finally:
        gc.enable()
    assert narrowed.people_planned is not None and everyone.people_planned is None
    assert left == 0, f"{left} objects were only reachable through reference cycles"
