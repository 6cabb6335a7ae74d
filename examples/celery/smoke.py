"""Run the Celery example end to end once: a worker, two tasks, their results, the worker's log.

CI runs it in a fresh virtual environment made with only
``pip install -e '.[celery,postgres]'`` (see .ci/run), against the Redis and
PostgreSQL servers .ci/services.sh starts::

    python examples/celery/smoke.py --postgres "$CALM_TEST_POSTGRES" --redis "$CALM_TEST_REDIS"

It serves the bundled sample trust from the fake Graph server, starts one
``celery worker --loglevel INFO`` of ``calm_worker``, sends ``import_trust``
twice (a full first import, then an incremental no-change re-run) and checks
each result, the Import Log and the worker's log: one INFO line per task
naming the trust, the mode, the counts and the duration, and no Graph delta
or skip token anywhere. Every wait is bounded; any failure exits 1 with the
worker's log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TRUST = "oak-trust"
# The worker's line for one finished task (calm_worker.import_trust).
TASK_LINE = re.compile(
    r"INFO.*imported (?P<trust>\S+): run (?P<run>\S+), (?P<mode>full|incremental)\w*, "
    r"(?P<counts>.+), in (?P<seconds>[\d.]+) s"
)
TOKENS = ("$deltatoken", "$skiptoken", "%24deltatoken", "%24skiptoken", "deltatoken=", "skiptoken=")


class SmokeFailure(Exception):
    """The example did not do what it should."""


async def _migrate(postgres: str, schema: str) -> None:
    from calm_azure_sync.postgres import PostgresAuditSink, PostgresUserStore

    async with PostgresUserStore(postgres, schema=schema) as store, PostgresAuditSink(postgres, schema=schema) as sink:
        await store.migrate()
        await sink.migrate()


async def _import_log_kinds(postgres: str, schema: str, run_id: str) -> list[str]:
    from calm_azure_sync.postgres import PostgresAuditSink

    async with PostgresAuditSink(postgres, schema=schema) as sink:
        return [event.kind.value for event in await sink.query(TRUST, run_id=run_id, limit=None)]


async def _drop_schema(postgres: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(postgres, autocommit=True) as connection:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _start_worker(env: dict[str, str], log: Path, queue: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "calm_worker", "worker", "--loglevel", "INFO",
             "--concurrency", "1", "--pool", "solo", "-Q", queue, "-n", f"smoke-{queue}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)


def _run_task(deadline: float, worker: subprocess.Popen[bytes]) -> dict[str, Any]:
    from calm_worker import import_trust  # the example's own task, enqueued as a host does

    result = import_trust.delay(TRUST)
    while not result.ready():
        if worker.poll() is not None:
            raise SmokeFailure(f"the worker exited with {worker.returncode} before the task finished")
        if time.monotonic() > deadline:
            raise SmokeFailure("out of time waiting for the task's result")
        time.sleep(0.1)
    value: dict[str, Any] = result.get(timeout=5)
    return value


def _check_result(result: dict[str, Any], mode: str) -> None:
    if not result.get("ok"):
        raise SmokeFailure(f"the import was not ok: {result}")
    if result.get("trust_site_id") != TRUST or not result.get("run_id"):
        raise SmokeFailure(f"unexpected result: {result}")
    if not str(result.get("mode", "")).startswith(mode):
        raise SmokeFailure(f"expected a {mode} run, got {result.get('mode')!r}: {result}")


def check_log(text: str, results: list[dict[str, Any]]) -> list[str]:
    """The worker log's task lines, after checking them and that no token leaked (SmokeFailure if not)."""
    leaked = [token for token in TOKENS if token in text]
    if leaked or "/delta" in text:
        raise SmokeFailure(f"the worker's log shows Graph delta or skip tokens ({leaked or '/delta'}):\n{text[-6000:]}")
    found = [(line, TASK_LINE.search(line)) for line in text.splitlines()]
    lines = [(line, match) for line, match in found if match]
    if [match["run"] for _, match in lines] != [result["run_id"] for result in results]:
        runs = [result["run_id"] for result in results]
        raise SmokeFailure(f"expected one INFO line per task, for runs {runs}:\n{text[-6000:]}")
    for (line, match), result in zip(lines, results, strict=True):
        if match["trust"] != TRUST or not result["mode"].startswith(match["mode"]):
            raise SmokeFailure(f"the task line does not say the trust and mode: {line}")
        expected = " ".join(f"{name}={count}" for name, count in sorted(result["counts"].items())) or "no changes"
        if match["counts"] != expected:
            raise SmokeFailure(f"the task line does not give the counts ({expected}): {line}")
    return [line.strip() for line, _ in lines]


def smoke(postgres: str, redis: str, budget: float) -> None:
    started = time.monotonic()
    deadline = started + budget
    sys.path.insert(0, str(HERE))
    from calm_azure_sync.demo import load_sample
    from calm_azure_sync.testing import FakeGraphServer

    sample = load_sample()
    schema = f"calm_smoke_{uuid.uuid4().hex[:8]}"
    queue = f"calm-smoke-{uuid.uuid4().hex[:8]}"
    results = urllib.parse.urlsplit(redis)._replace(path="/1").geturl()  # db 1 for results, beside the broker's
    with tempfile.TemporaryDirectory(prefix="calm-celery-smoke-") as folder, FakeGraphServer(
        sample.graph_fixture
    ) as graph:
        trusts = Path(folder) / "trusts.json"
        sites = [{"id": s.id, "name": s.name, "parent_id": s.parent_id} for s in sample.hierarchy.sites]
        trust = sample.config.trust_site_id
        trusts.write_text(json.dumps({"trusts": {trust: {"sites": sites, "config": sample.config.to_dict()}}}))
        settings = {
            "CALM_BROKER_URL": redis,
            "CALM_RESULT_BACKEND": results,
            "CALM_QUEUE": queue,
            "CALM_POSTGRES": postgres,
            "CALM_SCHEMA": schema,
            "CALM_TRUSTS_FILE": str(trusts),
            "CALM_GRAPH_BASE_URL": graph.base_url,
            "CALM_OUTAGE_RETRIES": "0",
        }
        os.environ.update(settings)  # the producer side (import_trust.delay) reads the same settings
        asyncio.run(_migrate(postgres, schema))
        log = Path(folder) / "worker.log"
        worker = _start_worker({**os.environ}, log, queue)
        try:
            first = _run_task(deadline, worker)
            _check_result(first, "full")
            if not first["counts"].get("create_user"):
                raise SmokeFailure(f"the first import created nobody: {first}")
            second = _run_task(deadline, worker)
            _check_result(second, "incremental")
            kinds = asyncio.run(_import_log_kinds(postgres, schema, first["run_id"]))
            if "import_completed" not in kinds:
                raise SmokeFailure(f"the Import Log of run {first['run_id']} has no import_completed: {kinds}")
            _stop_worker(worker)
            lines = check_log(log.read_text(errors="replace"), [first, second])
        except BaseException:
            _stop_worker(worker)
            print(log.read_text(errors="replace")[-6000:], file=sys.stderr)
            raise
        finally:
            asyncio.run(_drop_schema(postgres, schema))
    print(f"celery example: 2 tasks ok in {time.monotonic() - started:.1f} s; the worker's task lines:")
    for line in lines:
        print("  " + line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Celery example once, end to end.")
    parser.add_argument("--postgres", default=os.environ.get("CALM_TEST_POSTGRES"), help="PostgreSQL conninfo")
    parser.add_argument("--redis", default=os.environ.get("CALM_TEST_REDIS"), help="Redis URL (db 0: the broker)")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds for the whole run (default 90)")
    args = parser.parse_args(argv)
    if not args.postgres or not args.redis:
        parser.error("--postgres and --redis (or CALM_TEST_POSTGRES and CALM_TEST_REDIS) are required")
    try:
        smoke(args.postgres, args.redis, args.budget)
    except SmokeFailure as failure:
        print(f"celery example FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
