"""SQLite store: the first import of N users and their grants, and a no-change re-run that writes nothing.

Run: ``python -m benchmarks.bench_store [--size 100000] [--repeats 3]``.

The changes are the planner's own: ``build_plan`` over the synthetic tenant
(``generate_tenant(size, max(20, size // 50) groups)``) against an empty
store that mirrors groups (users, grants, the synced groups and their
memberships). They go to the store in batches of 500 changes (the reconciler's default
``batch_size``), never splitting a user, and in batches of 5,000 side by
side, timed around the ``apply`` calls only: each ``apply`` is one durable
transaction, so the batch count is the fsync count.
``InMemoryUserStore`` applies the same batches side by side (the same rules
without SQL) as a floor. Each measurement runs in a fresh process.

The re-run is a whole ``Reconciler.run`` (in-memory directory and audit
sink) over the imported database. That it writes nothing is counted two
ways: triggers on ``users``, ``grants``, ``synced_groups`` and
``group_members`` (installed after the first import) count every row written by any connection, and the store
connection's ``total_changes`` counts every row it changed, run lock
included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks._common import child_json, median, peak_rss_mb, print_table
from calm_azure_sync import Actor as _Actor
from calm_azure_sync._import_run import _batches  # the one batching rule, as the reconciler applies

SYSTEM = _Actor.system("tests")

MODULE = "benchmarks.bench_store"
BATCH_SIZE = 500

_WRITE_TRIGGERS = """
CREATE TABLE IF NOT EXISTS bench_writes (n INTEGER NOT NULL);
INSERT INTO bench_writes (n) VALUES (0);
""" + "".join(
    f"CREATE TRIGGER bench_{table}_{event.lower()} AFTER {event} ON {table} "
    f"BEGIN UPDATE bench_writes SET n = n + 1; END;\n"
    for table in ("users", "grants", "synced_groups", "group_members")
    for event in ("INSERT", "UPDATE", "DELETE")
)


async def apply_in_batches(store: Any, trust: str, changes: Sequence[Any], batch_size: int) -> int:
    """Apply ``changes`` as the reconciler batches them (about ``batch_size``, never splitting a user's).

    Returns the number of batches; raises when any change failed.
    """
    batches = 0
    for batch in _batches(changes, batch_size):
        batches += 1
        results = await store.apply(trust, batch)
        failed = [result for result in results if not result.ok]
        if failed:
            raise RuntimeError(f"{len(failed)} changes failed, first: {failed[0]}")
    return batches


async def _measure(kind: str, size: int, batch_size: int) -> dict[str, Any]:
    from calm_azure_sync import (
        InMemoryAuditSink,
        InMemoryDirectory,
        InMemoryUserStore,
        Reconciler,
        StoreState,
    )
    from calm_azure_sync.core.plan import AddGroupMember, Assign, CreateUser
    from calm_azure_sync.core.planner import DirectorySnapshot, PlanContext, build_plan
    from calm_azure_sync.store.sqlite import SqliteUserStore
    from calm_azure_sync.testing.synthetic import generate_tenant

    tenant = generate_tenant(users=size, groups=max(20, size // 50))
    directory = InMemoryDirectory.from_dict(tenant.fixture)
    members = {g: await directory.group_members(g) for g in sorted(tenant.config.mappings.group_ids)}
    # The changes a first run plans for a store that mirrors groups (both shipped ones do).
    context = PlanContext(mirror_groups=getattr(SqliteUserStore, "mirrors_groups", False))
    lookup = getattr(directory, "lookup_groups", None)  # the names a run reads, so the re-run renames nothing
    found = await lookup(sorted(members)) if lookup is not None else {}
    names = {gid: group.display_name for gid, group in found.items() if group is not None and group.display_name}
    snapshot = DirectorySnapshot(members=members, group_names=names)
    changes = build_plan(tenant.config, snapshot, StoreState(), context).changes
    users = sum(1 for change in changes if isinstance(change, CreateUser))
    grants = sum(1 for change in changes if isinstance(change, Assign))
    memberships = sum(1 for change in changes if isinstance(change, AddGroupMember))

    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "calm.db")
    store: Any = SqliteUserStore(path) if kind == "sqlite" else InMemoryUserStore()
    trust = tenant.config.trust_site_id
    cpu, started = time.process_time(), time.perf_counter()
    batches = await apply_in_batches(store, trust, changes, batch_size)
    first_wall, first_cpu = time.perf_counter() - started, time.process_time() - cpu

    started = time.perf_counter()
    state = await store.load(trust)
    load_wall = time.perf_counter() - started
    if (
        len(state.users) != users
        or sum(len(a) for a in state.synced_access.values()) != grants
        or sum(len(m) for m in state.group_members.values()) != memberships
    ):
        raise RuntimeError("the store does not hold what was imported")

    if kind == "sqlite":
        with sqlite3.connect(path) as side:
            side.executescript(_WRITE_TRIGGERS)
        side.close()
        changes_before = await store._db.run(lambda connection: connection.total_changes)
    reconciler = Reconciler(directory, store, InMemoryAuditSink(), tenant.hierarchy, batch_size=batch_size)
    started = time.perf_counter()
    report = await reconciler.run(tenant.config, actor=SYSTEM)
    rerun_wall = time.perf_counter() - started
    assert report.plan is not None
    row_writes = connection_changes = -1
    if kind == "sqlite":
        connection_changes = await store._db.run(lambda connection: connection.total_changes) - changes_before
        with sqlite3.connect(path) as side:
            (row_writes,) = side.execute("SELECT n FROM bench_writes").fetchone()
        side.close()
        store.close()
    return {
        "kind": kind,
        "batch_size": batch_size,
        "batches": batches,
        "users": users,
        "grants": grants,
        "memberships": memberships,
        "first_wall": first_wall,
        "first_cpu": first_cpu,
        "load_wall": load_wall,
        "rerun_wall": rerun_wall,
        "rerun_changes": len(report.plan.changes),
        "rerun_ok": report.ok,
        "row_writes": row_writes,
        "connection_changes": connection_changes,
        "peak_rss_mb": peak_rss_mb(),
    }


def run(size: int, repeats: int, batch_sizes: list[int]) -> None:
    variants = [("sqlite", batch) for batch in batch_sizes] + [("memory", batch_sizes[0])]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {variant: [] for variant in variants}
    for _ in range(repeats):
        for kind, batch in variants:
            results[kind, batch].append(
                child_json(MODULE, "--child", kind, "--size", str(size), "--batch-size", str(batch))
            )
    rows: list[list[object]] = []
    for (kind, batch), runs in results.items():
        for run_ in runs:
            if run_["rerun_changes"] != 0 or not run_["rerun_ok"] or run_["row_writes"] > 0:
                raise RuntimeError(f"the no-change re-run was not clean: {run_}")
        med = {key: median([r[key] for r in runs]) for key in runs[0] if key != "kind"}
        rows.append([
            "SqliteUserStore" if kind == "sqlite" else "InMemoryUserStore",
            f"{batch:,}",
            f"{med['batches']:,.0f}",
            f"{med['users']:,.0f}",
            f"{med['grants']:,.0f}",
            f"{med['memberships']:,.0f}",
            f"{med['first_wall']:.2f}",
            f"{med['first_cpu']:.2f}",
            f"{med['load_wall']:.2f}",
            f"{med['rerun_wall']:.2f}",
            f"{med['rerun_changes']:.0f}",
            f"{med['row_writes']:.0f}" if kind == "sqlite" else "-",
            f"{med['connection_changes']:.0f}" if kind == "sqlite" else "-",
            f"{med['peak_rss_mb']:.0f}",
        ])  # fmt: skip
    sqlite_first = median([r["first_wall"] for r in results["sqlite", batch_sizes[0]]])
    memory_first = median([r["first_wall"] for r in results["memory", batch_sizes[0]]])
    print_table(
        f"SQLite store: first import and no-change re-run; median of {repeats} "
        f"(SQLite / in-memory first import, batches of {batch_sizes[0]}: {sqlite_first / memory_first:.2f}x; "
        "target: SQLite first import of 100k users <= 10 s, re-run 0 writes)",
        ["store", "batch size (changes)", "batches", "users", "grants", "memberships", "first import s", "first import CPU s", "load() s", "no-change re-run s",
         "re-run changes", "rows written (users, grants, groups)", "connection total_changes", "peak RSS MB"],
        rows,
        command=f"python -m benchmarks.bench_store --size {size} --repeats {repeats} "
        f"--batch-size {' '.join(map(str, batch_sizes))}",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="users (default 100000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=[BATCH_SIZE, 5_000],
        help="changes per apply() call; the first is the reconciler's default (default: 500 5000)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run that only checks it works")
    parser.add_argument("--child", choices=["sqlite", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.repeats, args.batch_size = min(args.size, 500), 1, [100, 1000]
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.child, args.size, args.batch_size[0]))))
        return
    run(args.size, args.repeats, args.batch_size)


if __name__ == "__main__":
    main()
