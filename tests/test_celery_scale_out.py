"""Many trusts on several Celery workers (examples/celery/), against the shipped fake Graph server.

Real processes all the way: ``celery worker`` processes (prefork pool) take
import tasks from a real Redis, read a real (fake) Graph server over HTTP and
write to a real PostgreSQL. Every trust is enqueued several times, and one
worker is SIGKILLed (its whole process group) while it holds a trust's run
lock. Then:

- every trust converges (its synced access is what the mapping gives);
- no two runs of one trust ever overlapped, judged from the Import Log alone
  (each run's interval runs from its ``import_started`` to its last event);
- no user is duplicated;
- the killed worker's task was redelivered and its trust still converged.

3 workers of concurrency 2, 20 trusts each enqueued 3 times: about 20 s, so
CI runs it as it is.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from calm_azure_sync import AuditKind, InMemoryDirectory, SyncConfig
from calm_azure_sync.testing import FakeGraphServer

from .helpers import expected_access, synced_access_of

pytest.importorskip("celery", reason="the Celery example's dependencies are not installed (pip install celery redis)")
psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from calm_azure_sync.postgres import PostgresAuditSink, PostgresUserStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "celery"


def _trusts(count: int, users: int, seed: int = 7) -> tuple[dict[str, Any], dict[str, Any]]:
    """``count`` trusts of ``users`` staff each, in one Graph fixture (distinct ids, groups and domains)."""
    rng = random.Random(seed)
    fixture: dict[str, Any] = {"users": [], "groups": [], "members": {}}
    catalog: dict[str, Any] = {}
    for number in range(count):
        trust = f"trust-{number:02d}"
        schools = [f"{trust}-school-{index}" for index in range(2)]
        groups = [f"{trust}-g{index}" for index in range(4)]
        for group in groups:
            fixture["groups"].append({"id": group, "displayName": f"Group {group}"})
            fixture["members"][group] = []
        for index in range(users):
            user_id = f"{trust}-u{index:04d}"
            fixture["users"].append(
                {
                    "id": user_id,
                    "displayName": f"Staff {index} of {trust}",
                    "mail": f"staff{index}@{trust}.sch.uk",
                    "userPrincipalName": f"staff{index}@{trust}.sch.uk",
                    "accountEnabled": True,
                    "userType": "Member",
                }
            )
            for group in rng.sample(groups, 2):
                fixture["members"][group].append(user_id)
        mappings = [
            {"group_id": group, "site_id": schools[index % 2], "roles": {"Risk": ("Member", "Manager")[index % 2]}}
            for index, group in enumerate(groups)
        ]
        catalog[trust] = {
            "sites": [{"id": trust, "name": f"Trust {number}"}]
            + [{"id": school, "name": school, "parent_id": trust} for school in schools],
            "config": {"trust_site_id": trust, "mappings": mappings},
        }
    return fixture, catalog


def _run_intervals(events: list[Any]) -> list[tuple[Any, Any, str, bool]]:
    """Each run's (start, end, run id, finished) from its Import Log events."""
    runs: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        if event.run_id:
            runs[event.run_id].append(event)
    intervals = []
    for run_id, run_events in runs.items():
        kinds = {event.kind for event in run_events}
        if AuditKind.IMPORT_STARTED not in kinds:
            continue  # refused before it started: it never held the lock
        started = min(event.at for event in run_events if event.kind == AuditKind.IMPORT_STARTED)
        finished = bool(kinds & {AuditKind.IMPORT_COMPLETED, AuditKind.IMPORT_FAILED})
        intervals.append((started, max(event.at for event in run_events), run_id, finished))
    return sorted(intervals)


class Workers:
    """``celery worker`` processes, each the leader of its own process group."""

    def __init__(self, count: int, concurrency: int, env: dict[str, str], log_dir: Path) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        for index in range(count):
            log = open(log_dir / f"worker-{index}.log", "wb")  # noqa: SIM115 - closed with the process
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "calm_worker", "worker", "--pool", "prefork",
                     "--concurrency", str(concurrency), "-Q", env["CALM_QUEUE"], "-n", f"w{index}@%h",
                     "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=EXAMPLE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )  # fmt: skip
            log.close()

    def kill_group_of(self, pid: int) -> bool:
        """SIGKILL the worker whose process group holds ``pid``; True when one was killed."""
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return False
        for process in self.processes:
            if process.pid == group and process.poll() is None:
                os.killpg(group, signal.SIGKILL)
                process.wait(timeout=30)
                return True
        return False

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _lock_holders(conninfo: str) -> list[tuple[int, str]]:
    """(worker pid, application name) of every connection holding an advisory lock now."""
    with psycopg.connect(conninfo, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'calm_worker pid=%'"
        ).fetchall()
    return [(int(name.split("=", 1)[1]), name) for (name,) in rows]


def _scale_out(
    tmp_path: Path, postgres_url: str, schema: str, redis_url: str, *, workers: int, trusts: int, enqueues: int
) -> None:
    from celery import Celery

    fixture, catalog = _trusts(trusts, users=60)
    trusts_file = tmp_path / "trusts.json"
    trusts_file.write_text(json.dumps({"trusts": catalog}))
    queue = f"calm-test-{uuid.uuid4().hex[:8]}"
    # Latency per Graph request, so an import lasts long enough to be caught mid-flight.
    with FakeGraphServer(fixture, page_cap=20, latency=0.02) as graph:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(EXAMPLE)]),
            "CALM_BROKER_URL": redis_url,
            "CALM_QUEUE": queue,
            "CALM_POSTGRES": postgres_url,
            "CALM_SCHEMA": schema,
            "CALM_TRUSTS_FILE": str(trusts_file),
            "CALM_GRAPH_BASE_URL": graph.base_url,
            "CALM_VISIBILITY_TIMEOUT": "8",
            "CALM_RESTORE_INTERVAL": "1",
            "CALM_BATCH_SIZE": "30",
        }
        asyncio.run(_migrate(postgres_url, schema))
        pool = Workers(workers, concurrency=2, env=env, log_dir=tmp_path)
        producer = Celery("producer", broker=redis_url)
        try:
            for _round in range(enqueues):
                for trust in catalog:
                    producer.send_task("calm_worker.import_trust", args=[trust], queue=queue)
            _kill_one_worker_mid_import(pool, postgres_url, schema)
            _wait_until_every_trust_ran(postgres_url, schema, catalog, enqueues, pool, tmp_path)
        finally:
            pool.stop()
            producer.close()
        asyncio.run(_check(postgres_url, schema, fixture, catalog))


async def _migrate(postgres_url: str, schema: str) -> None:
    async with PostgresUserStore(postgres_url, schema=schema) as store, PostgresAuditSink(
        postgres_url, schema=schema
    ) as sink:
        await store.migrate()
        await sink.migrate()


def _kill_one_worker_mid_import(pool: Workers, postgres_url: str, schema: str) -> None:
    """Wait for a worker process to hold a run lock mid-import, then SIGKILL its whole worker."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if _trust_running_in(postgres_url, schema) is not None:
            for pid, _name in _lock_holders(postgres_url):
                if pool.kill_group_of(pid):
                    return
        time.sleep(0.05)
    raise AssertionError("no worker was ever seen holding a run lock")


def _trust_running_in(postgres_url: str, schema: str) -> str | None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        row = connection.execute(
            f'SELECT trust_site_id FROM "{schema}".audit_events e WHERE kind = %s AND NOT EXISTS '
            f'(SELECT 1 FROM "{schema}".audit_events f WHERE f.run_id = e.run_id AND f.kind IN (%s, %s)) '
            "ORDER BY seq DESC LIMIT 1",
            ("import_started", "import_completed", "import_failed"),
        ).fetchone()
    return None if row is None else str(row[0])


def _wait_until_every_trust_ran(
    postgres_url: str, schema: str, catalog: dict[str, Any], enqueues: int, pool: Workers, logs: Path
) -> None:
    deadline = time.monotonic() + 240
    while True:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            done = dict(
                connection.execute(
                    f'SELECT trust_site_id, count(*) FROM "{schema}".audit_events WHERE kind = %s GROUP BY 1',
                    ("import_completed",),
                ).fetchall()
            )
        if all(done.get(trust, 0) >= enqueues for trust in catalog):
            return
        if time.monotonic() > deadline or all(process.poll() is not None for process in pool.processes):
            tails = "\n".join(path.read_text(errors="replace")[-2000:] for path in sorted(logs.glob("worker-*.log")))
            raise AssertionError(f"not every trust finished {enqueues} runs: {done}\n{tails}")
        time.sleep(0.25)


async def _check(postgres_url: str, schema: str, fixture: dict[str, Any], catalog: dict[str, Any]) -> None:
    directory = InMemoryDirectory.from_dict(fixture)
    async with PostgresUserStore(postgres_url, schema=schema) as store, PostgresAuditSink(
        postgres_url, schema=schema
    ) as sink:
        users = await store.users()
        assert len(users) == len({user.external_id for user in users}) == len(fixture["users"]), "duplicate users"
        killed_runs = 0
        for trust, entry in catalog.items():
            config = SyncConfig.from_dict(entry["config"])
            assert synced_access_of(await store.load(trust)) == expected_access(directory, config), trust
            intervals = _run_intervals(await sink.query(trust, limit=None))
            # Sorted by start, any overlap shows between neighbours.
            for (_start, end, run_id, _done), (next_start, _e, next_run, _d) in itertools.pairwise(intervals):
                assert end < next_start, f"runs {run_id} and {next_run} of {trust} overlapped"
            for start, _end, run_id, finished in intervals:
                if finished:
                    continue
                # A run that never ended was the killed worker's: its task came back and ran again.
                killed_runs += 1
                assert any(done and later > start for later, _e, _r, done in intervals), (
                    f"the killed run {run_id} of {trust} was never followed by a finished run"
                )
        assert killed_runs >= 1, "no run was cut short by the kill"


@pytest.mark.wire
def test_three_workers_import_twenty_trusts_three_times_and_survive_a_killed_worker(
    tmp_path: Path, postgres_url: str, postgres_schema: str, redis_url: str
) -> None:
    _scale_out(tmp_path, postgres_url, postgres_schema, redis_url, workers=3, trusts=20, enqueues=3)
