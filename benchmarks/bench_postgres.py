"""PostgreSQL store beside SQLite: the first import of N users and their grants, and a no-change re-run.

Run: ``python -m benchmarks.bench_postgres [--size 100000] [--repeats 3]``
(uses ``CALM_TEST_POSTGRES`` if set, else starts the throwaway server of
``.ci/services.sh``).

The changes are the planner's own: ``build_plan`` over
``generate_tenant(size, max(20, size // 50) groups)`` against an empty store,
sent in the reconciler's batches (default 5,000 changes, never splitting a
user), timed around the ``apply`` calls only. Both stores commit durably:
SQLite with ``synchronous=FULL``, Postgres with ``synchronous_commit=on`` set
on the benchmark's connections (whatever the server's default). Each
measurement runs in a fresh process; SQLite and Postgres alternate.

The re-run is a whole ``Reconciler.run`` over the imported store; rows it
writes to ``users``, ``grants``, ``synced_groups`` and ``group_members`` are counted by row triggers installed
after the first import (they see ``COPY`` rows too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
import uuid
from typing import Any

from benchmarks._common import child_json, median, peak_rss_mb, print_table
from benchmarks.bench_store import _WRITE_TRIGGERS, apply_in_batches

MODULE = "benchmarks.bench_postgres"
BATCH_SIZE = 5_000

_PG_TRIGGERS = """
CREATE TABLE {s}.bench_writes (n bigint NOT NULL);
INSERT INTO {s}.bench_writes VALUES (0);
CREATE FUNCTION {s}.bench_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN UPDATE {s}.bench_writes SET n = n + 1; RETURN NULL; END $$;
CREATE TRIGGER bench_users AFTER INSERT OR UPDATE OR DELETE ON {s}.users FOR EACH ROW EXECUTE FUNCTION {s}.bench_count();
CREATE TRIGGER bench_grants AFTER INSERT OR UPDATE OR DELETE ON {s}.grants FOR EACH ROW EXECUTE FUNCTION {s}.bench_count();
CREATE TRIGGER bench_groups AFTER INSERT OR UPDATE OR DELETE ON {s}.synced_groups FOR EACH ROW EXECUTE FUNCTION {s}.bench_count();
CREATE TRIGGER bench_members AFTER INSERT OR UPDATE OR DELETE ON {s}.group_members FOR EACH ROW EXECUTE FUNCTION {s}.bench_count();
"""


async def _measure(kind: str, size: int, batch_size: int, conninfo: str) -> dict[str, Any]:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from calm_azure_sync import Actor, InMemoryAuditSink, InMemoryDirectory, Reconciler, StoreState
    from calm_azure_sync.core.plan import Assign, CreateUser
    from calm_azure_sync.core.planner import DirectorySnapshot, PlanContext, build_plan
    from calm_azure_sync.postgres import PostgresUserStore
    from calm_azure_sync.store.sqlite import SqliteUserStore
    from calm_azure_sync.testing.synthetic import generate_tenant

    tenant = generate_tenant(users=size, groups=max(20, size // 50))
    directory = InMemoryDirectory.from_dict(tenant.fixture)
    members = {g: await directory.group_members(g) for g in sorted(tenant.config.mappings.group_ids)}
    # What a first run plans for a store that mirrors groups (both do), as bench_store does.
    lookup = getattr(directory, "lookup_groups", None)  # the names a run reads, so the re-run renames nothing
    found = await lookup(sorted(members)) if lookup is not None else {}
    names = {gid: group.display_name for gid, group in found.items() if group is not None and group.display_name}
    snapshot = DirectorySnapshot(members=members, group_names=names)
    changes = build_plan(tenant.config, snapshot, StoreState(), PlanContext(mirror_groups=True)).changes
    users = sum(1 for change in changes if isinstance(change, CreateUser))
    grants = sum(1 for change in changes if isinstance(change, Assign))
    trust = tenant.config.trust_site_id
    durable = make_conninfo(conninfo, options="-c synchronous_commit=on")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "calm.db")
    store: Any = PostgresUserStore(durable, schema=schema) if kind == "postgres" else SqliteUserStore(path)
    try:
        if kind == "postgres":
            await store.migrate()
        started = time.perf_counter()
        batches = await apply_in_batches(store, trust, changes, batch_size)
        first_wall = time.perf_counter() - started

        started = time.perf_counter()
        state = await store.load(trust)
        load_wall = time.perf_counter() - started
        if len(state.users) != users or sum(len(a) for a in state.synced_access.values()) != grants:
            raise RuntimeError("the store does not hold what was imported")

        if kind == "postgres":
            with psycopg.connect(conninfo, autocommit=True) as side:
                side.execute(_PG_TRIGGERS.replace("{s}", f'"{schema}"'))
        else:
            with sqlite3.connect(path) as side:
                side.executescript(_WRITE_TRIGGERS)
            side.close()
        reconciler = Reconciler(directory, store, InMemoryAuditSink(), tenant.hierarchy, batch_size=batch_size)
        started = time.perf_counter()
        report = await reconciler.run(tenant.config, actor=Actor.system("benchmark"))
        rerun_wall = time.perf_counter() - started
        assert report.plan is not None
        if kind == "postgres":
            with psycopg.connect(conninfo, autocommit=True) as side:
                (row_writes,) = side.execute(f'SELECT n FROM "{schema}".bench_writes').fetchone() or (-1,)
        else:
            with sqlite3.connect(path) as side:
                (row_writes,) = side.execute("SELECT n FROM bench_writes").fetchone()
            side.close()
    finally:
        if kind == "postgres":
            await store.close()
            with psycopg.connect(conninfo, autocommit=True) as side:
                side.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        else:
            store.close()
    return {
        "kind": kind,
        "batches": batches,
        "users": users,
        "grants": grants,
        "first_wall": first_wall,
        "load_wall": load_wall,
        "rerun_wall": rerun_wall,
        "rerun_changes": len(report.plan.changes),
        "rerun_ok": report.ok,
        "row_writes": row_writes,
        "peak_rss_mb": peak_rss_mb(),
    }


def run(size: int, repeats: int, batch_size: int) -> None:
    from benchmarks._services import services

    with services() as servers:
        results: dict[str, list[dict[str, Any]]] = {"postgres": [], "sqlite": []}
        for _ in range(repeats):
            for kind in results:
                results[kind].append(
                    child_json(MODULE, "--child", kind, "--size", str(size), "--batch-size", str(batch_size),
                               "--conninfo", servers["postgres"])
                )  # fmt: skip
    rows: list[list[object]] = []
    for kind, runs in results.items():
        for run_ in runs:
            if run_["rerun_changes"] != 0 or not run_["rerun_ok"] or run_["row_writes"] != 0:
                raise RuntimeError(f"the no-change re-run was not clean: {run_}")
        med = {key: median([r[key] for r in runs]) for key in runs[0] if key != "kind"}
        rows.append([
            "PostgresUserStore" if kind == "postgres" else "SqliteUserStore",
            f"{batch_size:,}", f"{med['batches']:,.0f}", f"{med['users']:,.0f}", f"{med['grants']:,.0f}",
            f"{med['first_wall']:.2f}", f"{med['load_wall']:.2f}", f"{med['rerun_wall']:.2f}",
            f"{med['rerun_changes']:.0f}", f"{med['row_writes']:.0f}", f"{med['peak_rss_mb']:.0f}",
        ])  # fmt: skip
    print_table(
        f"PostgreSQL and SQLite stores: first import and no-change re-run; median of {repeats} "
        "(target: Postgres first import of 100k users <= 10 s, re-run 0 rows written)",
        ["store", "batch size (changes)", "batches", "users", "grants", "first import s", "load() s",
         "no-change re-run s", "re-run changes", "rows written by re-run", "peak RSS MB"],
        rows,
        command=f"python -m benchmarks.bench_postgres --size {size} --repeats {repeats} --batch-size {batch_size}",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="users (default 100000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="changes per apply() (default 5000)")
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run that only checks it works")
    parser.add_argument("--child", choices=["postgres", "sqlite"], help=argparse.SUPPRESS)
    parser.add_argument("--conninfo", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.repeats, args.batch_size = min(args.size, 300), 1, 200
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.child, args.size, args.batch_size, args.conninfo))))
        return
    run(args.size, args.repeats, args.batch_size)


if __name__ == "__main__":
    main()
