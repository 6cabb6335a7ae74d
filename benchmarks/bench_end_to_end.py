"""End to end: a trust imported from the fake Graph server into SQLite, per group-read concurrency.

Run: ``python -m benchmarks.bench_end_to_end [--size 10000] [--repeats 3]``.

The fake Graph server runs in its own process and serves a synthetic tenant
(``generate_tenant(size, size // 50 groups)``, every group mapped). Each
import runs in a fresh process: ``Reconciler.run`` with a ``GraphDirectory``
(over the SDK pipeline, retries on) into a ``SqliteUserStore`` with a
``SqliteAuditSink`` in the same file, ``max_concurrent_reads`` and the
directory's ``max_concurrency`` both set to the concurrency measured.

Scenario A (the issue's): 50-100 ms per round trip, drawn per request, and a
429 with ``Retry-After: 0.5`` every 100 group requests. Per concurrency: the
first import into an empty database, then a re-run with nothing changed.

Scenario B (the target's): 100 ms per round trip, no 429s; the no-change
re-run only, at the two highest concurrencies.

Scenario C (incremental sync): at 100 ms, alternated in one database, a
no-change re-run read in full (``mode="full"``) against one read from
changes (``"auto"``, which plans); then, the trust being settled, quiet
re-runs that skip planning.

Wall time is split by the reconciler's progress callback into read, plan
and apply (apply includes the audit writes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from typing import Any

from benchmarks._common import BenchCredential, child_json, median, print_table
from benchmarks._graph_server import GraphServerProcess
from calm_azure_sync import Actor as _Actor

SYSTEM = _Actor.system("tests")

MODULE = "benchmarks.bench_end_to_end"


# -- one import, in a child process -------------------------------------------------------


async def _import_once(args: argparse.Namespace) -> dict[str, Any]:
    from calm_azure_sync import GraphDirectory, Reconciler, SqliteAuditSink, SqliteUserStore
    from calm_azure_sync.testing.synthetic import generate_tenant

    tenant = generate_tenant(users=args.size, groups=args.groups, seed=args.seed)
    stages: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        marks = stages.setdefault(stage, [now, now])
        marks[1] = now

    store = SqliteUserStore(args.db)
    audit = SqliteAuditSink(args.db)
    try:
        async with GraphDirectory.from_credential(
            BenchCredential(), base_url=args.base_url, max_concurrency=args.concurrency
        ) as directory:
            reconciler = Reconciler(
                directory, store, audit, tenant.hierarchy, progress=progress, max_concurrent_reads=args.concurrency
            )
            cpu, started = time.process_time(), time.perf_counter()
            report = await reconciler.run(tenant.config, actor=SYSTEM, mode=args.mode)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        store.close()
        audit.close()
    plan = report.plan
    return {
        "wall": wall,
        "cpu": cpu,
        "read": _span(stages, "read"),
        "plan": _span(stages, "plan"),
        "apply": _span(stages, "apply"),
        "changes": len(plan.changes) if plan else -1,
        "mode": report.mode,
        "reason": report.mode_reason or "",
        "ok": report.ok,
        "errors": list(report.errors[:3]),
    }


def _span(stages: dict[str, list[float]], stage: str) -> float:
    marks = stages.get(stage)
    return marks[1] - marks[0] if marks else 0.0


# -- the driver ---------------------------------------------------------------------------


def _run(
    server: GraphServerProcess, args: argparse.Namespace, concurrency: int, db: str, mode: str = "full"
) -> dict[str, Any]:
    server.call("clear")
    if args.throttle_every:
        server.call(
            "throttle", every=args.throttle_every, count=1000, retry_after=args.retry_after, path="/groups/*"
        )
    result: dict[str, Any] = child_json(
        MODULE, "--child", "--base-url", server.base_url, "--db", db, "--concurrency", str(concurrency),
        "--size", str(args.size), "--groups", str(args.groups), "--seed", str(args.seed), "--mode", mode,
    )  # fmt: skip
    stats = server.call("stats")
    result["requests"] = stats["requests"]
    result["throttled"] = stats["statuses"].get("429", 0)
    result["peak_concurrency"] = stats["peak_concurrency"]
    if not result["ok"]:
        raise RuntimeError(f"import failed at concurrency {concurrency}: {result['errors']}")
    return result


def run(args: argparse.Namespace) -> None:
    command = (
        f"python -m benchmarks.bench_end_to_end --size {args.size} --groups {args.groups} --repeats {args.repeats} "
        f"--concurrency {' '.join(map(str, args.concurrency))}"
    )
    low, high = args.latency
    with GraphServerProcess(users=args.size, groups=args.groups, seed=args.seed) as server:
        # Scenario A: jittered latency and occasional 429s; first import and no-change re-run.
        server.call("latency", low=low, high=high)
        rows: list[list[object]] = []
        a_runs: dict[int, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for _ in range(args.repeats):
            for concurrency in args.concurrency:
                with tempfile.TemporaryDirectory() as folder:
                    db = os.path.join(folder, "calm.db")
                    first = _run(server, args, concurrency, db)
                    rerun = _run(server, args, concurrency, db)
                if rerun["changes"] != 0:
                    raise RuntimeError(f"the no-change re-run planned {rerun['changes']} changes")
                a_runs.setdefault(concurrency, []).append((first, rerun))
        for concurrency, pairs in a_runs.items():
            firsts, reruns = [p[0] for p in pairs], [p[1] for p in pairs]
            rows.append([
                concurrency,
                f"{median([r['wall'] for r in firsts]):.2f}",
                f"{median([r['read'] for r in firsts]):.2f}",
                f"{median([r['apply'] for r in firsts]):.2f}",
                f"{median([r['changes'] for r in firsts]):,.0f}",
                f"{median([r['wall'] for r in reruns]):.2f}",
                f"{median([r['read'] for r in reruns]):.2f}",
                f"{median([r['plan'] for r in reruns]):.2f}",
                f"{median([r['requests'] for r in reruns]):.0f}",
                f"{median([r['throttled'] for r in reruns]):.0f}",
                f"{median([r['peak_concurrency'] for r in reruns]):.0f}",
            ])  # fmt: skip
        print_table(
            f"End to end A: {args.size:,} users, {args.groups} mapped groups, {low * 1000:.0f}-{high * 1000:.0f} ms "
            f"per request, a 429 (Retry-After {args.retry_after} s) every {args.throttle_every} group requests; "
            f"median of {args.repeats}",
            ["concurrency", "first import s", "first: read s", "first: apply s", "first: changes",
             "re-run s", "re-run: read s", "re-run: plan s", "re-run: requests", "re-run: 429s",
             "server peak in flight"],
            rows,
            command=command,
        )  # fmt: skip

        # Scenario B: the target's flat 100 ms, no 429s, no-change re-run only.
        server.call("latency", low=args.target_latency, high=args.target_latency)
        throttle_every, args.throttle_every = args.throttle_every, 0
        b_rows: list[list[object]] = []
        b_runs: dict[int, list[dict[str, Any]]] = {}
        top = sorted(args.concurrency)[-2:]
        with tempfile.TemporaryDirectory() as folder:
            db = os.path.join(folder, "calm.db")
            _run(server, args, top[-1], db)  # the first import, to have something to re-run over
            for _ in range(args.repeats):
                for concurrency in top:
                    b_runs.setdefault(concurrency, []).append(_run(server, args, concurrency, db))
        for concurrency, runs in b_runs.items():
            b_rows.append([
                concurrency,
                f"{median([r['wall'] for r in runs]):.2f}",
                f"{median([r['read'] for r in runs]):.2f}",
                f"{median([r['plan'] for r in runs]):.2f}",
                f"{median([r['cpu'] for r in runs]):.2f}",
                f"{median([r['requests'] for r in runs]):.0f}",
                f"{median([r['changes'] for r in runs]):.0f}",
            ])  # fmt: skip
        print_table(
            f"End to end B: no-change re-run, {args.size:,} users, {args.groups} mapped groups, "
            f"{args.target_latency * 1000:.0f} ms per request, no 429s; median of {args.repeats} "
            "(target ≤ 3 s)",
            ["concurrency", "re-run wall s", "read s", "plan s", "client CPU s", "requests", "changes"],
            b_rows,
            command=command,
        )

        # Scenario C: the same no-change re-run, a full read against an incremental one, side by side.
        c_runs: dict[str, list[dict[str, Any]]] = {"full": [], "incremental": [], "incremental, settled": []}
        concurrency = sorted(args.concurrency)[-1]
        with tempfile.TemporaryDirectory() as folder:
            db = os.path.join(folder, "calm.db")
            _run(server, args, concurrency, db, mode="auto")  # the first import seeds the delta state
            for _ in range(args.repeats):
                c_runs["full"].append(_run(server, args, concurrency, db, mode="full"))
                incremental = _run(server, args, concurrency, db, mode="auto")
                if incremental["mode"] != "incremental":
                    raise RuntimeError(f"the auto re-run read in {incremental['mode']} mode")
                c_runs["incremental"].append(incremental)
            # The last incremental run planned nothing, so the trust is settled: the next quiet
            # runs skip the store load and the planner (docs/reconciler.md, "Settled trusts").
            for _ in range(args.repeats):
                settled = _run(server, args, concurrency, db, mode="auto")
                if not settled["reason"].startswith("nothing changed"):
                    raise RuntimeError(f"the quiet re-run did not settle: {settled['reason']}")
                c_runs["incremental, settled"].append(settled)
        args.throttle_every = throttle_every
        c_rows = [
            [
                mode,
                f"{median([r['wall'] for r in runs]):.2f}",
                f"{median([r['read'] for r in runs]):.2f}",
                f"{median([r['cpu'] for r in runs]):.2f}",
                f"{median([r['requests'] for r in runs]):.0f}",
                f"{median([r['changes'] for r in runs]):.0f}",
            ]
            for mode, runs in c_runs.items()
        ]
        full_wall = median([r["wall"] for r in c_runs["full"]])
        incremental_wall = median([r["wall"] for r in c_runs["incremental"]])
        print_table(
            f"End to end C: no-change re-run, full read vs incremental (delta), {args.size:,} users, "
            f"{args.groups} mapped groups, {args.target_latency * 1000:.0f} ms per request, concurrency "
            f"{concurrency}; median of {args.repeats}, alternated (incremental / full wall: "
            f"{incremental_wall / full_wall:.2f})",
            ["read", "re-run wall s", "read s", "client CPU s", "requests", "changes"],
            c_rows,
            command=command,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000, help="users (default 10000)")
    parser.add_argument("--groups", type=int, help="mapped groups (default size // 50, at least 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--latency", type=float, nargs=2, default=[0.05, 0.1], metavar=("LOW", "HIGH"))
    parser.add_argument("--target-latency", type=float, default=0.1)
    parser.add_argument("--throttle-every", type=int, default=100)
    parser.add_argument("--retry-after", default="0.5")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run that only checks it works")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.repeats, args.concurrency = min(args.size, 300), 1, [4]
        args.latency, args.target_latency = [0.002, 0.005], 0.005
        args.throttle_every, args.retry_after = 5, "0.05"
    args.groups = args.groups or max(4, args.size // 50)
    if args.child:
        (args.concurrency,) = args.concurrency
        print(json.dumps(asyncio.run(_import_once(args))))
        return
    run(args)


if __name__ == "__main__":
    main()
