"""One soak worker process: reads import jobs as JSON lines on stdin, runs each, answers a JSON line.

Started by :mod:`tests.soak_harness` (``python tests/soak_worker.py``), which
SIGKILLs it at random points and starts another. Each job is one
``Reconciler.run`` of one trust against the PostgreSQL store and Import Log
and the trust's fake Graph server (a real ``GraphDirectory`` over HTTP on
127.0.0.1), exactly as a host's job would run it: the worker opens the store,
the sink and the directory for the job and closes them after, so a PostgreSQL
restart between jobs costs nothing and one during a job is the run's problem.

The actor of every run is ``Actor.system("soak-job-<N>")``, so the harness can
tell from the Import Log alone which job wrote what (a killed job never
answers).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from typing import Any

from calm_azure_sync import (
    Actor,
    CalmAzureSyncError,
    GraphDirectory,
    HoldMismatchError,
    ImportAlreadyRunningError,
    Reconciler,
    Site,
    SyncConfig,
    TrustHierarchy,
)
from calm_azure_sync.directory.graph import RetryPolicy
from calm_azure_sync.postgres import PostgresAuditSink, PostgresUserStore

# Retries short enough that a storm ends a run (ok=False) rather than stalling it for minutes.
RETRY = RetryPolicy(max_attempts=4, base_delay=0.05, max_delay=0.5, total_budget_seconds=4.0)


class _Token:
    """The fake Graph's token (never a real credential)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("soak-token", int(time.time()) + 3600)

    async def close(self) -> None:
        return None


def _progress(job: dict[str, Any]) -> Any:
    """With ``pause_after_apply``: once the last batch is applied, touch ``marker`` and stop (to be SIGKILLed)."""
    pause = float(job.get("pause_after_apply") or 0)
    if not pause:
        return None

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage == "apply" and total and done == total:
            with open(job["marker"], "w", encoding="utf-8") as marker:
                marker.write("applied\n")
            time.sleep(pause)  # blocks the run on purpose: the harness kills us here

    return progress


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    config = SyncConfig.from_dict(job["config"])
    hierarchy = TrustHierarchy([Site(s["id"], s["name"], s.get("parent_id")) for s in job["sites"]])
    directory = GraphDirectory.from_credential(_Token(), base_url=job["graph"], retry=RETRY, timeout=10.0)  # type: ignore[arg-type]
    try:
        async with PostgresUserStore(job["conninfo"], schema=job["schema"], pool_size=2) as store, PostgresAuditSink(
            job["conninfo"], schema=job["schema"], pool_size=1
        ) as sink:
            reconciler = Reconciler(
                directory, store, sink, hierarchy, batch_size=int(job.get("batch_size", 8)), progress=_progress(job)
            )
            report = await reconciler.run(
                config, actor=Actor.system(f"soak-job-{job['job']}"), confirm_hold=job.get("confirm"),
                mode=job.get("mode", "auto"),
            )  # fmt: skip
    finally:
        await directory.aclose()
    return {
        "outcome": "ok" if report.ok else "not_ok",
        "run_id": report.run_id,
        "counts": dict(report.counts),
        "errors": [str(error)[:300] for error in report.errors[:5]],
        "held": len(report.held_removals),
    }


def answer(job: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    try:
        result = asyncio.run(asyncio.wait_for(run_job(job), timeout=float(job.get("timeout", 90))))
    except ImportAlreadyRunningError:
        result = {"outcome": "refused", "why": "already_running"}
    except HoldMismatchError:
        result = {"outcome": "refused", "why": "hold_mismatch"}
    except TimeoutError:
        result = {"outcome": "timeout"}
    except Exception as error:
        result = {
            "outcome": "exception",
            "exception": f"{type(error).__module__}.{type(error).__qualname__}",
            "message": str(error)[:300],
            "typed": isinstance(error, CalmAzureSyncError),
            "traceback": traceback.format_exc()[-1500:],
        }
    return {"job": job["job"], "seconds": round(time.time() - started, 3), **result}


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        print(json.dumps(answer(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
