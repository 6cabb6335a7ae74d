"""Where a run after 10 changes spends its CPU: process CPU by phase, one run planned by difference.

Run: ``python -m benchmarks.bench_cost_phases [--size 100000] [--changes 10]``
(``bench_cost`` runs it too, at its sizes). The scenario is ``bench_cost``'s:
``InMemoryDirectory`` into a ``SqliteUserStore`` with its Import Log in the
same file; a first import, a second run (it leaves the record the next plans
by difference from), then ``--changes`` membership changes and the measured
run. Each phase is the process's CPU (``process_time``, the SQLite thread
included) while a call of it was pending, summed over its calls; phases nest
(the state saves are inside the batch applied with the memory), so they do
not add up to the run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import tempfile
import time
from collections import defaultdict
from typing import Any

from benchmarks._common import print_table

# (owner module, attribute path, label): what is timed.
PHASES = [
    ("calm_azure_sync.sqlite.store", "SqliteUserStore.load_people",
     "the people's rows (load_people, with the trust's synced-user count)"),
    ("calm_azure_sync.sqlite.store", "SqliteUserStore.load_delta_rows", "rows of the delta cache (load_delta_rows)"),
    ("calm_azure_sync.incremental.reader", "DirectoryReader._round", "the directory's delta round"),
    ("calm_azure_sync.incremental.reader", "DirectoryReader.read_for_run", "the whole read"),
    ("calm_azure_sync.reconciler", "Reconciler._build_plan", "the planner"),
    ("calm_azure_sync.sqlite._state", "state_to_json", "the sync state encoded (each save)"),
    ("calm_azure_sync.sqlite.store", "SqliteUserStore.save_state", "the sync state saved alone (the run's marks)"),
    ("calm_azure_sync.sqlite.store", "SqliteUserStore.apply_with_state", "the batch applied with the memory"),
    ("calm_azure_sync.incremental.settled", "Settled.from_state", "the last run's record read"),
]  # fmt: skip


def _timed(spent: dict[str, float], label: str, function: Any) -> Any:
    if asyncio.iscoroutinefunction(function):

        @functools.wraps(function)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return await function(*args, **kwargs)
            finally:
                spent[label] += time.process_time() - started

        return timed_async

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] += time.process_time() - started

    return timed


def _instrument(spent: dict[str, float]) -> None:
    import importlib

    for module_name, path, label in PHASES:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, name, _timed(spent, label, getattr(owner, name)))


async def measure(users: int, changes: int, seed: int = 1) -> dict[str, Any]:
    """The phases of one run after ``changes`` membership changes, planned by difference."""
    from benchmarks.bench_cost import _groups_for, _membership_changes
    from calm_azure_sync import Actor, InMemoryDirectory, Reconciler, SqliteAuditSink, SqliteUserStore
    from calm_azure_sync.testing.synthetic import generate_tenant

    spent: dict[str, float] = defaultdict(float)
    tenant = generate_tenant(users=users, groups=_groups_for(users), seed=seed)
    directory = InMemoryDirectory.from_dict(tenant.fixture)
    path = os.path.join(tempfile.mkdtemp(), "calm.db")
    store, audit = SqliteUserStore(path), SqliteAuditSink(path)
    reconciler = Reconciler(directory, store, audit, tenant.hierarchy)
    actor = Actor.system("benchmark")
    try:
        await reconciler.run(tenant.config, actor=actor)
        await reconciler.run(tenant.config, actor=actor)  # leaves the record the next run plans by difference from
        _membership_changes(directory, tenant.fixture, min(changes, max(1, users // 20)), random.Random(seed))
        _instrument(spent)
        spent.clear()
        started = time.process_time()
        report = await reconciler.run(tenant.config, actor=actor)
        total = time.process_time() - started
    finally:
        store.close()
        audit.close()
    if not report.ok or report.people_planned is None:
        raise RuntimeError(f"the measured run did not plan by difference: {report.mode_reason} {report.errors[:3]}")
    return {"users": users, "total": total, "people": report.people_planned, "phases": dict(spent)}


def print_phases(results: list[dict[str, Any]], command: str) -> None:
    labels = [label for _, _, label in PHASES]
    rows: list[list[object]] = [["the whole run", *(f"{r['total']:.3f}" for r in results)]]
    rows += [[label, *(f"{r['phases'].get(label, 0.0):.3f}" for r in results)] for label in labels]
    print_table(
        "Cost: CPU s by phase of a run after 10 changes, planned by difference (phases nest)",
        ["phase", *(f"{r['users']:,} users ({r['people']} planned)" for r in results)],
        rows,
        command=command,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="users (default 100000)")
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the result as JSON (a child process)")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.size, args.changes, args.seed))
    if args.json:
        print(json.dumps(result))
        return
    print_phases([result], f"python -m benchmarks.bench_cost_phases --size {args.size} --changes {args.changes}")


if __name__ == "__main__":
    main()
