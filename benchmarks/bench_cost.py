"""What a run costs against what changed: every row of issue 21's table, side by side in one run.

Run: ``python -m benchmarks --only cost [--scale 1.0]`` or
``python -m benchmarks.bench_cost [--scale 1.0] [--repeats 3]``.

``--scale 1`` is the issue's trust: 100,000 users in 2,000 mapped groups
(``generate_tenant(users, users // 50)``, about 400k transitive
memberships); ``--scale 0.1`` is a tenth of every size (the change counts
stay 10 and 1,000, capped at 5 % of the users so a small trust trips no
mass-removal hold). Every measurement runs
in a fresh process (``child_json``); CPU is ``process_time`` of that
process, so the SQLite connection's thread is counted and the machine's
other load is not.

- **Runs by what changed** (``Reconciler.run``, ``InMemoryDirectory`` into a
  ``SqliteUserStore`` with a ``SqliteAuditSink`` in the same file, mode
  ``"auto"``): the first import (which seeds the delta state), a full
  no-change re-run (``mode="full"``), a no-change incremental run that plans
  everyone (after a full-mode run no record says the store is as a run left
  it) and leaves that record, an incremental run after 10 membership
  changes and one after 1,000 (both planned by difference), a no-change
  incremental run (planned by difference: no one), the settled run after it
  (it skips the store and the planner), and last 10 more changes after a
  store write by someone else, so that run plans everyone: the same
  changes both ways, side by side. Half the changes add a user to a mapped
  group, half remove a direct member. The same at 5% and 50% of the users
  gives the growth row.
- **Import Log rows** written by the no-change run that plans and by the
  settled run (``audit_events`` rows of that run id).
- **PostgreSQL vs SQLite first import**: ``bench_postgres``'s measurement
  (the planner's changes in batches of 5,000); and the runs by what changed
  again at the full size into a ``PostgresUserStore`` (a schema of its own,
  the Import Log still in SQLite). Needs ``CALM_TEST_POSTGRES``; without it
  the row says so.
- **Planner vs a bare dict pass**: ``bench_planner``'s measurement in CPU
  seconds, first plan and no-change re-plan, with and without group mirroring.
- **Graph read vs bare httpx + json**: ``bench_graph_read``'s readers over
  the fake Graph server (in its own process), 20 groups.
- **CPU by phase** of the run after 10 changes at the three sizes
  (``bench_cost_phases``): where what is left goes.
- **Peak RSS of a first import**: ``ru_maxrss`` of a process that builds the
  tenant and runs the first import (the line also gives the RSS before the
  import started).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sqlite3
import tempfile
import time
from typing import Any

from benchmarks import bench_cost_phases
from benchmarks._common import child_json, median, peak_rss_mb, print_table

MODULE = "benchmarks.bench_cost"
FULL_USERS = 100_000


def _groups_for(users: int) -> int:
    return max(20, users // 50)


# -- runs by what changed, in a child process ------------------------------------------------------


def _membership_changes(directory: Any, fixture: dict[str, Any], count: int, rng: random.Random) -> None:
    """``count`` membership changes: half adds of a user new to a mapped group, half removals of a direct member."""
    users = [user["id"] for user in fixture["users"]]
    groups = sorted(fixture["members"])
    for index in range(count):
        group = rng.choice(groups)
        members = directory.members.get(group, ())
        direct_users = [member for member in members if member in directory.users]
        if index % 2 == 0 or not direct_users:
            user = rng.choice(users)
            while user in members:
                user = rng.choice(users)
            directory.add_member(group, user)
        else:
            directory.remove_member(group, rng.choice(direct_users))


async def _runs(users: int, changes: list[int], seed: int, conninfo: str | None = None) -> dict[str, Any]:
    """The scenario's runs; into a ``PostgresUserStore`` (a schema of its own, dropped after) with ``conninfo``."""
    from calm_azure_sync import Actor, InMemoryDirectory, Reconciler, SqliteAuditSink, SqliteUserStore
    from calm_azure_sync.testing.synthetic import generate_tenant

    tenant = generate_tenant(users=users, groups=_groups_for(users), seed=seed)
    directory = InMemoryDirectory.from_dict(tenant.fixture)
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "calm.db")
    audit = SqliteAuditSink(path)  # the Import Log in SQLite either way: its rows are counted there
    schema = f"bench_cost_{os.getpid()}"
    if conninfo is None:
        store: Any = SqliteUserStore(path)
    else:
        from calm_azure_sync.postgres import PostgresUserStore

        store = PostgresUserStore(conninfo, schema=schema)
        await store.migrate()
    reconciler = Reconciler(directory, store, audit, tenant.hierarchy)
    actor = Actor.system("benchmark")
    rng = random.Random(seed)
    out: dict[str, Any] = {"users": users, "groups": _groups_for(users), "memberships": tenant.memberships}

    async def timed(label: str, mode: str = "auto") -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        report = await reconciler.run(tenant.config, actor=actor, mode=mode)  # type: ignore[arg-type]
        out[label] = {
            "cpu": time.process_time() - cpu,
            "wall": time.perf_counter() - wall,
            "mode": report.mode,
            "reason": report.mode_reason or "",
            "changes": len(report.plan.changes) if report.plan is not None else -1,
            "ok": report.ok,
            "errors": list(report.errors[:3]),
            "log_rows": _log_rows(path, report.run_id),
            "people": report.people_planned,
        }
        if not report.ok:
            raise RuntimeError(f"{label}: the run failed: {report.errors[:3]}")
        return report

    try:
        await timed("first")
        await timed("full", mode="full")
        # An incremental run after a full-mode one plans everyone (no run left a record of the store
        # since), and leaves the record the runs below plan by difference from.
        await timed("plans_everyone")
        for requested in changes:
            # At most 5 % of the users: more would trip the mass-removal hold of a small trust.
            count = min(requested, max(1, users // 20))
            _membership_changes(directory, tenant.fixture, count, rng)
            report = await timed(f"changed_{requested}")
            out[f"changed_{requested}"]["count"] = count
            if report.mode != "incremental":
                raise RuntimeError(f"the run after {count} changes read in {report.mode} mode: {report.mode_reason}")
        await timed("no_change")
        settled = await timed("settled")
        if not (settled.mode_reason or "").startswith("nothing changed"):
            raise RuntimeError(f"the quiet run did not settle: {settled.mode_reason}")
        # The same ten changes' worth, side by side, when the run must plan everyone: a write to the
        # store by anyone else (here a person re-activating an active user: nothing changes but the
        # store's data version) means the store may no longer be as the last run left it.
        count = min(changes[0], max(1, users // 20))
        _membership_changes(directory, tenant.fixture, count, rng)
        anyone = next(iter((await store.load(tenant.config.trust_site_id)).users.values()))
        await store.set_active(anyone.user_id, anyone.active)
        await timed(f"everyone_{changes[0]}")
        out[f"everyone_{changes[0]}"]["count"] = count
    finally:
        audit.close()
        if conninfo is None:
            store.close()
        else:
            import psycopg

            await store.close()
            with psycopg.connect(conninfo, autocommit=True) as side:
                side.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _log_rows(path: str, run_id: str) -> int:
    with sqlite3.connect(path) as side:
        (rows,) = side.execute("SELECT COUNT(*) FROM audit_events WHERE run_id = ?", (run_id,)).fetchone()
    side.close()
    return int(rows)


async def _first_import_rss(users: int, seed: int) -> dict[str, Any]:
    from calm_azure_sync import Actor, InMemoryDirectory, Reconciler, SqliteAuditSink, SqliteUserStore
    from calm_azure_sync.testing.synthetic import generate_tenant

    tenant = generate_tenant(users=users, groups=_groups_for(users), seed=seed)
    directory = InMemoryDirectory.from_dict(tenant.fixture)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = os.path.join(tempfile.mkdtemp(), "calm.db")
    store, audit = SqliteUserStore(path), SqliteAuditSink(path)
    try:
        cpu = time.process_time()
        report = await Reconciler(directory, store, audit, tenant.hierarchy).run(
            tenant.config, actor=Actor.system("benchmark")
        )
        cpu = time.process_time() - cpu
    finally:
        store.close()
        audit.close()
    if not report.ok:
        raise RuntimeError(f"the first import failed: {report.errors[:3]}")
    return {"before_mb": before, "peak_rss_mb": peak_rss_mb(), "cpu": cpu, "changes": len(report.plan.changes)}


# -- the driver ------------------------------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "-"


def _scaled(scale: float, users: int) -> int:
    return max(200, round(users * scale))


def run(scale: float, repeats: int, seed: int = 1) -> list[list[object]]:
    big = _scaled(scale, FULL_USERS)
    changes = [10, 1_000]
    change_args = [str(count) for count in changes]
    rows: list[list[object]] = []

    # 1-3: runs by what changed, at the full size and for the growth row at 5% and 50% of it.
    runs = {
        users: child_json(MODULE, "--child", "runs", "--size", str(users), "--changes", *change_args, "--seed", str(seed))
        for users in dict.fromkeys([big, _scaled(scale, 5_000), _scaled(scale, 50_000)])
    }  # fmt: skip
    main_run = runs[big]
    small, large, everyone = f"changed_{changes[0]}", f"changed_{changes[1]}", f"everyone_{changes[0]}"
    few, many = main_run[small]["count"], main_run[f"changed_{changes[1]}"]["count"]
    where = f"{big:,} users / {main_run['groups']:,} groups, {main_run['memberships']:,} direct memberships (SQLite)"
    rows.append([
        f"incremental run after {few} membership changes, {where}: CPU s",
        f"{main_run[small]['cpu']:.2f}",
        f"planning everyone after {few} changes {main_run[everyone]['cpu']:.2f}; after {many:,} changes "
        f"{main_run[large]['cpu']:.2f}; no-change {main_run['no_change']['cpu']:.2f} (planning everyone "
        f"{main_run['plans_everyone']['cpu']:.2f}); settled {main_run['settled']['cpu']:.2f}; full re-run "
        f"{main_run['full']['cpu']:.2f}; first import {main_run['first']['cpu']:.2f}",
        f"{_ratio(main_run[small]['cpu'], main_run[everyone]['cpu'])} of planning everyone; "
        f"{_ratio(main_run[small]['cpu'], main_run['full']['cpu'])} of a full re-run",
        "≤ 0.5 s CPU",
    ])  # fmt: skip
    low, high = _scaled(scale, 5_000), _scaled(scale, 50_000)
    if low != high:
        grow = runs[high][small]["cpu"] / max(runs[low][small]["cpu"], 1e-9)
        rows.append([
            f"the same, growth {low:,} → {high:,} users: CPU s",
            f"{runs[low][small]['cpu']:.2f} → {runs[high][small]['cpu']:.2f}",
            f"full re-run at {high:,}: {runs[high]['full']['cpu']:.2f}",
            f"{grow:.1f}x for {high / low:.0f}x the users; "
            f"{_ratio(runs[high][small]['cpu'], runs[high]['full']['cpu'])} of the full re-run",
            "≤ 2x for 10x the users; never more than a full re-run",
        ])  # fmt: skip
    rows.append([
        f"Import Log rows written by a no-change run, {main_run['groups']:,} mapped groups",
        f"{main_run['no_change']['log_rows']:,} (plans), {main_run['settled']['log_rows']:,} (settled)",
        f"after {few} changes {main_run[small]['log_rows']:,}; full re-run {main_run['full']['log_rows']:,}",
        f"{main_run['no_change']['log_rows'] / main_run['groups']:.2f} / "
        f"{main_run['settled']['log_rows'] / main_run['groups']:.3f} per group",
        "≤ 20 whatever the number of groups",
    ])  # fmt: skip

    # 4: PostgreSQL beside SQLite, first import.
    runs_by_store: dict[str, dict[str, Any]] = {}
    conninfo = os.environ.get("CALM_TEST_POSTGRES")
    if conninfo:
        measured: dict[str, list[dict[str, Any]]] = {"postgres": [], "sqlite": []}
        for _ in range(repeats):
            for kind in measured:
                measured[kind].append(child_json(
                    "benchmarks.bench_postgres", "--child", kind, "--size", str(big), "--batch-size", "5000",
                    "--conninfo", conninfo,
                ))  # fmt: skip
        pg = median([r["first_wall"] for r in measured["postgres"]])
        lite = median([r["first_wall"] for r in measured["sqlite"]])
        first = measured["postgres"][0]
        rows.append([
            f"PostgreSQL first import, {first['users']:,} users + {first['grants']:,} grants (+ memberships): wall s",
            f"{pg:.2f}",
            f"SQLite {lite:.2f}",
            f"{_ratio(pg, lite)} of SQLite",
            "≤ 10 s, and ≤ SQLite in the same run",
        ])  # fmt: skip
        # The same runs by what changed into PostgreSQL: planning by difference reads some rows there too.
        pg_runs = child_json(
            MODULE, "--child", "runs", "--size", str(big), "--changes", *change_args, "--seed", str(seed),
            "--conninfo", conninfo,
        )  # fmt: skip
        runs_by_store["PostgreSQL"] = pg_runs
        rows.append([
            f"incremental run after {few} membership changes, {big:,} users (PostgreSQL): CPU s",
            f"{pg_runs[small]['cpu']:.2f} (wall {pg_runs[small]['wall']:.2f})",
            f"planning everyone after {few} changes {pg_runs[everyone]['cpu']:.2f} (wall "
            f"{pg_runs[everyone]['wall']:.2f}); full re-run {pg_runs['full']['cpu']:.2f}; SQLite "
            f"{main_run[small]['cpu']:.2f}",
            f"{_ratio(pg_runs[small]['cpu'], pg_runs[everyone]['cpu'])} of planning everyone; "
            f"{_ratio(pg_runs[small]['cpu'], main_run[small]['cpu'])} of SQLite",
            "≤ 0.5 s CPU (the issue names SQLite)",
        ])  # fmt: skip
    else:
        rows.append(["PostgreSQL first import", "skipped", "CALM_TEST_POSTGRES is not set", "-",
                     "≤ 10 s, and ≤ SQLite in the same run"])  # fmt: skip

    # 5: the planner against a bare dict pass, CPU.
    for mirror in (False, True):
        results = {}
        for kind in ("first", "rerun"):
            extra = ["--mirror-groups"] if mirror else []
            results[kind] = child_json(
                "benchmarks.bench_planner", "--child", kind, "--size", str(big), "--repeats", str(repeats), *extra
            )
        first, rerun = results["first"], results["rerun"]
        rows.append([
            f"planner{' with group mirroring' if mirror else ''}, {big:,} users / {first['groups']:,} groups / "
            f"{first['memberships']:,} memberships: CPU s, first / re-plan",
            f"{first['plan_cpu']:.2f} / {rerun['plan_cpu']:.2f}",
            f"bare dict pass {first['floor_cpu']:.2f} / {rerun['floor_cpu']:.2f}",
            f"{_ratio(first['plan_cpu'], first['floor_cpu'])} / {_ratio(rerun['plan_cpu'], rerun['floor_cpu'])}",
            "≤ 2x both, mirroring included",
        ])  # fmt: skip

    # 6: the Graph read against bare httpx + json.
    from benchmarks import bench_graph_read

    graph_args = argparse.Namespace(size=big, groups=20, concurrency=8, repeat=repeats, latency=0.0, small_group_size=0)
    medians, _ = bench_graph_read.measure(graph_args, ["graph", "httpx"])
    graph, bare = medians["graph"], medians["httpx"]
    rows.append([
        f"Graph read of {int(graph['users']):,} users (20 groups) vs bare httpx + json: CPU s",
        f"{graph['cpu']:.2f}",
        f"httpx + json {bare['cpu']:.2f}",
        _ratio(graph["cpu"], bare["cpu"]),
        "≤ 1.1x",
    ])  # fmt: skip

    # 7: peak RSS of a first import.
    rss = [child_json(MODULE, "--child", "rss", "--size", str(big), "--seed", str(seed)) for _ in range(repeats)]
    rows.append([
        f"peak RSS, {big:,}-user first import (SQLite, {rss[0]['changes']:,} changes): MB",
        f"{median([r['peak_rss_mb'] for r in rss]):.0f}",
        f"{median([r['before_mb'] for r in rss]):.0f} before the import (tenant and directory built)",
        "-",
        "≤ 400 MB",
    ])  # fmt: skip
    print_table(
        f"Cost: issue 21's table at scale {scale:g} ({big:,} users); CPU in fresh processes, medians of {repeats} "
        "where repeated (the runs by change: one each)",
        ["measure", "figure", "beside it (same run)", "ratio", "goal"],
        rows,
        command=f"python -m benchmarks.bench_cost --scale {scale:g} --repeats {repeats}",
    )
    # Where the run after 10 changes spends its CPU, by phase, at the three sizes (bench_cost_phases).
    phases = [
        child_json("benchmarks.bench_cost_phases", "--size", str(users), "--seed", str(seed), "--json")
        for users in dict.fromkeys([_scaled(scale, 5_000), _scaled(scale, 50_000), big])
    ]
    bench_cost_phases.print_phases(phases, "python -m benchmarks.bench_cost_phases --size N (N = each size)")
    _print_runs({
        **{f"{users:,}": result for users, result in runs.items()},
        **{f"{big:,} ({store})": result for store, result in runs_by_store.items()},
    })  # fmt: skip
    return rows


def _print_runs(runs: dict[str, dict[str, Any]]) -> None:
    rows: list[list[object]] = []
    for users, result in runs.items():
        for label, run_ in result.items():
            if not isinstance(run_, dict):
                continue
            name = f"after {run_['count']:,} changes" if "count" in run_ else label.replace("_", " ")
            if label.startswith("everyone_"):
                name += ", a store write since"
            people = run_.get("people")
            rows.append([
                users, name,
                run_["mode"], f"{run_['cpu']:.2f}", f"{run_['wall']:.2f}", f"{run_['changes']:,}", run_["log_rows"],
                ("no one (settled)" if run_["reason"].startswith("nothing changed") else "everyone")
                if people is None else f"{people:,}",
                run_["reason"][:60],
            ])  # fmt: skip
    print_table(
        "Cost: each run of the scenario (one process per size, runs in this order)",
        ["users", "run", "read", "CPU s", "wall s", "changes planned", "Import Log rows", "people planned", "why this read"],
        rows,
        command="(the same run)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="of the issue's 100k users / 2k groups (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the repeated measurements (default 3)")
    parser.add_argument("--size", type=int, help="users at scale 1 instead of 100000 (the runner's --size)")
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run that only checks it works")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", choices=["runs", "rss"], help=argparse.SUPPRESS)
    parser.add_argument("--conninfo", help=argparse.SUPPRESS)  # the runs into PostgreSQL
    parser.add_argument("--changes", type=int, nargs="+", default=[10, 1_000], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "runs":
        print(json.dumps(asyncio.run(_runs(args.size, args.changes, args.seed, args.conninfo))))
        return
    if args.child == "rss":
        print(json.dumps(asyncio.run(_first_import_rss(args.size, args.seed))))
        return
    if args.smoke:
        args.scale, args.repeats = 0.004, 1
    elif args.size:
        args.scale = args.size / FULL_USERS
    run(args.scale, args.repeats, args.seed)


if __name__ == "__main__":
    main()
