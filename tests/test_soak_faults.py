"""The fault soak (``nox -s soak``): ≥ 20 trusts under SIGKILLs, PostgreSQL restarts and Graph fault storms.

Marked ``slow``: ``pytest -m slow --run-slow tests/test_soak_faults.py`` runs a
smoke budget (40 s of chaos, 3 workers); with ``CALM_SOAK=1`` (``nox -s
soak``) it is 5 minutes of chaos on 4 workers. ``CALM_SOAK_SECONDS``,
``CALM_SOAK_TRUSTS``, ``CALM_SOAK_WORKERS``, ``CALM_SOAK_USERS``,
``CALM_SOAK_SEED``, ``CALM_SOAK_KILL_EVERY`` (imports between kills), ``CALM_SOAK_RESTART_EVERY``
and ``CALM_SOAK_EPISODE_EVERY`` (seconds)
override the budget; ``CALM_SOAK_FIGURES=path.json`` keeps the figures (else
they go to the test's temporary folder; either way the path is printed).

It starts its own PostgreSQL and Redis (``.ci/services.sh``), never the shared
ones, because it restarts PostgreSQL. See :mod:`tests.soak_harness` for what
the chaos does and :mod:`tests.soak_checks` for what is checked; the test fails
when any check fails, listing a few examples of each failure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .conftest import SOAK, Figures

pytest.importorskip("psycopg", reason="the postgres extra is not installed")
pytest.importorskip("httpx")

from . import soak_harness

pytestmark = [pytest.mark.slow, pytest.mark.wire]


def _can_run_services() -> str | None:
    if shutil.which("redis-server") is None and os.geteuid() != 0:
        return "redis-server is missing"
    if shutil.which("initdb") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        return "PostgreSQL binaries are missing"
    return None


def test_every_trust_survives_sigkills_postgres_restarts_and_graph_storms(tmp_path: Path, figures: Figures) -> None:
    missing = _can_run_services()
    if missing:
        pytest.skip(f"the soak starts its own servers: {missing}")
    plan = soak_harness.budget(SOAK)
    target = Path(os.environ.get("CALM_SOAK_FIGURES") or tmp_path / "soak-figures.json")
    # The Import Log, worker logs and markers go next to the figures (import-log.jsonl, worker-N.log).
    logs = target.parent / (target.stem + "-logs")
    logs.mkdir(parents=True, exist_ok=True)
    print(f"soak: {plan}")
    with soak_harness.own_services() as services:
        soak = soak_harness.Soak(plan, services, logs)
        try:
            soak.chaos()
            soak.settle()
            results = soak.check()
            numbers = soak.figures(results)
        finally:
            soak.close()
    target.write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    print(f"soak figures: {target}; Import Log and worker logs: {logs}")
    print(json.dumps({k: v for k, v in numbers.items() if k != "checks"}, indent=2, default=str))
    failed = {name: result for name, result in results.items() if result.failed}
    for name, result in results.items():
        print(f"  {'FAIL' if result.failed else 'ok  '} {name}: {result.passed} passed, {result.failed} failed")
        for example in result.examples:
            print(f"       - {example}")
    removal_checks = ("no held removal applied unconfirmed", "keep mode removes nothing",
                      "every synced grant is what the mapping implies")  # fmt: skip
    for trust, tenant in soak.tenants.items():
        with figures.case("Soak: workers SIGKILLed, PostgreSQL restarted, Graph storms (per trust)") as case:
            case.wrongful_removals = sum(results[name].failed_by[trust] for name in removal_checks if name in results)
            case.data_lost = sum(
                count for key, count in results["no duplicate user"].failed_by.items() if key.endswith(tenant.domain)
            )
    assert numbers["trusts"] >= 20 or os.environ.get("CALM_SOAK_TRUSTS"), "the soak needs at least 20 trusts"
    assert not failed, "soak checks failed: " + "; ".join(
        f"{name}: {result.failed} ({result.examples[:2]})" for name, result in failed.items()
    )
