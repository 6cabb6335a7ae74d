"""Throughput of the Celery set-up of examples/celery/: trusts imported per minute with 1, 2 and 3 workers.

Run: ``python -m benchmarks.bench_celery [--trusts 24] [--size 300] [--workers 1 2 3]``
(uses ``CALM_TEST_POSTGRES`` / ``CALM_TEST_REDIS`` if set, else starts the
throwaway servers of ``.ci/services.sh``).

Each round starts the given number of ``celery worker`` processes (prefork,
concurrency 2 each), enqueues every trust once into a fresh schema, and times
from the first enqueue to the last ``import_completed`` in the Import Log.
The fake Graph server (in this process) answers with ``--latency`` seconds of
round-trip time per request. The workers run in ``full`` mode: all trusts share
the one fake tenant, so ``auto`` mode's first-run delta seeding (``users/delta``
over the whole tenant) would read every trust's users in every import. Workers are started and warmed (one trust each)
before the clock starts. CPU is the workers' user+system time during the
timed window (worker processes and their pool children, from /proc), so "CPU / (wall x cores)" says how close the round came
to saturating the machine (the fake Graph server and PostgreSQL use CPU too,
not counted here).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._common import REPO_ROOT, print_table

EXAMPLE = Path(REPO_ROOT) / "examples" / "celery"


def _group_cpu(groups: set[int]) -> float:
    """User+system seconds so far of every live process in the given process groups (Linux /proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state ppid pgrp ... utime (14th field) stime (15th).
        if int(fields[2]) in groups:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _completed(conninfo: str, schema: str) -> int:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as connection:
        row = connection.execute(
            f'SELECT count(*) FROM "{schema}".audit_events WHERE kind = %s', ("import_completed",)
        ).fetchone()
    return int(row[0]) if row else 0


def _round(servers: dict[str, str], workers: int, trusts: int, size: int, latency: float) -> dict[str, Any]:
    import asyncio

    from celery import Celery
    from tests.test_celery_scale_out import Workers, _migrate, _trusts

    from calm_azure_sync.testing import FakeGraphServer

    fixture, catalog = _trusts(trusts + workers * 2, users=size)
    names = list(catalog)
    warm, timed = names[: workers * 2], names[workers * 2 :]
    folder = Path(tempfile.mkdtemp())
    (folder / "trusts.json").write_text(json.dumps({"trusts": catalog}))
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    queue = f"calm-bench-{uuid.uuid4().hex[:8]}"
    with FakeGraphServer(fixture, latency=latency) as graph:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(Path(REPO_ROOT) / "src"), str(EXAMPLE)]),
            "CALM_BROKER_URL": servers["redis"],
            "CALM_QUEUE": queue,
            "CALM_POSTGRES": servers["postgres"],
            "CALM_SCHEMA": schema,
            "CALM_TRUSTS_FILE": str(folder / "trusts.json"),
            "CALM_GRAPH_BASE_URL": graph.base_url,
            # Every trust here lives in one fake tenant; in "auto" mode each
            # first run would seed users/delta by reading all of them (every
            # trust's users), where a real trust has a tenant of its own.
            "CALM_SYNC_MODE": "full",
        }
        asyncio.run(_migrate(servers["postgres"], schema))
        pool = Workers(workers, concurrency=2, env=env, log_dir=folder)
        groups = {process.pid for process in pool.processes}
        producer = Celery("bench", broker=servers["redis"])
        try:
            for trust in warm:
                producer.send_task("calm_worker.import_trust", args=[trust], queue=queue)
            while _completed(servers["postgres"], schema) < len(warm):
                time.sleep(0.1)
            started, cpu_before = time.perf_counter(), _group_cpu(groups)
            for trust in timed:
                producer.send_task("calm_worker.import_trust", args=[trust], queue=queue)
            while _completed(servers["postgres"], schema) < len(names):
                time.sleep(0.05)
            wall, cpu = time.perf_counter() - started, _group_cpu(groups) - cpu_before
        finally:
            pool.stop()
            producer.close()
    return {"workers": workers, "trusts": len(timed), "wall": wall, "cpu": cpu}


def run(workers: list[int], trusts: int, size: int, latency: float) -> None:
    from benchmarks._services import services

    with services() as servers:
        results = [_round(servers, count, trusts, size, latency) for count in workers]
    cores = os.cpu_count() or 1
    rows = [
        [
            f"{r['workers']} x 2", r["trusts"], size, f"{r['wall']:.1f}", f"{r['trusts'] / r['wall'] * 60:.0f}",
            f"{r['cpu']:.1f}", f"{r['cpu'] / (r['wall'] * cores):.0%}",
        ]
        for r in results
    ]  # fmt: skip
    print_table(
        f"Celery workers (examples/celery): trusts imported per minute, {trusts} trusts of {size} users, "
        f"Graph latency {latency * 1000:.0f} ms",
        ["workers x concurrency", "trusts", "users per trust", "wall s", "trusts / minute", "worker CPU s",
         "CPU / (wall x cores)"],
        rows,
        command=f"python -m benchmarks.bench_celery --trusts {trusts} --size {size} --latency {latency} "
        f"--workers {' '.join(map(str, workers))}",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trusts", type=int, default=24)
    parser.add_argument("--size", type=int, default=300, help="users per trust (default 300)")
    parser.add_argument("--latency", type=float, default=0.05, help="Graph round trip, seconds (default 0.05)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, help=argparse.SUPPRESS)  # one round per worker count
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run that only checks it works")
    args = parser.parse_args(argv)
    if args.smoke:
        args.trusts, args.size, args.workers = 2, 20, [1]
    run(args.workers, args.trusts, args.size, args.latency)


if __name__ == "__main__":
    main()
