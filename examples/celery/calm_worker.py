"""A Celery worker that imports CalmCompliance trusts from Entra ID: one task per trust import.

Run it (from this folder, after ``pip install -e '.[celery,postgres]'`` in a
checkout, or ``pip install 'calm-azure-sync[celery,postgres]'``)::

    export CALM_BROKER_URL=redis://127.0.0.1:6379/0
    export CALM_POSTGRES=postgresql://calm@db.internal/calm
    export CALM_TRUSTS_FILE=/etc/calm/trusts.json
    celery -A calm_worker worker --concurrency 2 --loglevel INFO

and enqueue imports from anywhere (a scheduler, the "Start Import" button)::

    from calm_worker import import_trust
    import_trust.delay("oak-trust")

Why it is safe to run many workers on many machines, and to enqueue a trust
as often as you like:

- every import of a trust takes the trust's run lock in Postgres (an advisory
  lock, held across machines); a task that finds the lock taken retries later
  with backoff (``ImportAlreadyRunningError``), it never waits or piles up;
- an import is idempotent: running it again with nothing changed in Azure
  changes nothing, so a duplicate or a redelivered task costs one no-op run;
- ``acks_late``: the broker keeps a task until it finished, so a worker that
  dies mid-import (SIGKILL, a lost machine) has its task redelivered; the dead
  worker's database connections die with it, which frees its run lock, and the
  batches it did not commit are simply redone by the next run;
- outages (Postgres or Graph unreachable, a run that ends ``ok=False``) are
  retried with exponential backoff, a bounded number of times.

Nothing here is part of the library: the library knows nothing of Celery.
What a real host replaces is marked HOST below: where a trust's
configuration and hierarchy come from, and the Graph credential.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from functools import cache
from typing import Any

import psycopg
from celery import Celery
from celery.signals import after_setup_logger
from psycopg.conninfo import make_conninfo

from calm_azure_sync import (
    Actor,
    DirectoryError,
    GraphDirectory,
    ImportAlreadyRunningError,
    Reconciler,
    Site,
    StoreError,
    SyncConfig,
    TrustHierarchy,
)
from calm_azure_sync.postgres import PostgresAuditSink, PostgresUserStore

logger = logging.getLogger("calm_worker")

BROKER_URL = os.environ.get("CALM_BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("CALM_QUEUE", "calm-imports")
SCHEMA = os.environ.get("CALM_SCHEMA", "calm_azure_sync")
# How long the broker waits for a task it handed out before handing it to
# another worker: above the longest import you expect (a redelivery while the
# first run still runs is harmless, it only costs a retry).
VISIBILITY_TIMEOUT = int(os.environ.get("CALM_VISIBILITY_TIMEOUT", "3600"))
# How often a worker looks for tasks whose worker vanished (kombu's default
# sweep is every 100 s; a sweep is one cheap Redis call).
RESTORE_INTERVAL = int(os.environ.get("CALM_RESTORE_INTERVAL", "10"))
LOCK_RETRIES = int(os.environ.get("CALM_LOCK_RETRIES", "50"))
OUTAGE_RETRIES = int(os.environ.get("CALM_OUTAGE_RETRIES", "8"))
BATCH_SIZE = int(os.environ.get("CALM_BATCH_SIZE", "5000"))
# "auto" (incremental when the trust's delta links are fresh), "full" or "incremental".
SYNC_MODE = os.environ.get("CALM_SYNC_MODE", "auto")
# Where task results go (e.g. redis://127.0.0.1:6379/1); unset: results are not kept.
RESULT_BACKEND = os.environ.get("CALM_RESULT_BACKEND") or None

app = Celery("calm_worker", broker=BROKER_URL, backend=RESULT_BACKEND)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,  # a worker process that dies: requeue at once
    worker_prefetch_multiplier=1,  # a long import must not sit behind another on one worker
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=RESULT_BACKEND is None,
    result_expires=3600,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": RESTORE_INTERVAL,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
)


# -- logging -----------------------------------------------------------------------------
#
# `--loglevel INFO` shows one line per import (trust, mode, counts, duration,
# from the task below) and the library's own INFO lines (Graph retries: method
# and path only). httpx logs every request at INFO with its full URL, and a
# Graph delta or next link carries a $deltatoken / $skiptoken that reads the
# tenant's changes: those lines stay out of the worker's log.
QUIET_LOGGERS = ("httpx", "httpcore")


def quiet_http_logging() -> None:
    """Keep httpx's and httpcore's request lines (full URLs, tokens in them) out of the log."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@after_setup_logger.connect
def _after_setup_logger(logger: logging.Logger, *args: Any, **kwargs: Any) -> None:
    quiet_http_logging()


quiet_http_logging()


# -- HOST: where a trust's configuration comes from --------------------------------


@cache
def _catalog() -> dict[str, Any]:
    with open(os.environ["CALM_TRUSTS_FILE"], encoding="utf-8") as handle:
        return dict(json.load(handle)["trusts"])


def load_trust(trust_site_id: str) -> tuple[SyncConfig, TrustHierarchy]:
    """The trust's saved configuration and site tree (a real host reads its own database)."""
    entry = _catalog()[trust_site_id]
    sites = [Site(site["id"], site["name"], site.get("parent_id")) for site in entry["sites"]]
    return SyncConfig.from_dict(entry["config"]), TrustHierarchy(sites)


def graph_directory(config: SyncConfig) -> GraphDirectory:
    """The trust's directory: the app's credential in the tenant the trust connected to."""
    base_url = os.environ.get("CALM_GRAPH_BASE_URL")
    if base_url:
        from calm_azure_sync.testing import FakeCredential

        return GraphDirectory.from_credential(FakeCredential(), base_url=base_url)
    from azure.identity.aio import ClientSecretCredential

    credential = ClientSecretCredential(
        tenant_id=config.tenant_id or "organizations",
        client_id=os.environ["CALM_CLIENT_ID"],
        client_secret=os.environ["CALM_CLIENT_SECRET"],
    )
    return GraphDirectory.from_credential(credential, tenant_id=config.tenant_id)


def conninfo() -> str:
    # application_name shows in pg_stat_activity which worker process holds what.
    return make_conninfo(os.environ["CALM_POSTGRES"], application_name=f"calm_worker pid={os.getpid()}")


# -- the import -----------------------------------------------------------------------


async def run_import(trust_site_id: str) -> dict[str, Any]:
    """One import of one trust, start to finish, in its own event loop."""
    config, hierarchy = load_trust(trust_site_id)
    async with graph_directory(config) as directory, PostgresUserStore(
        conninfo(), schema=SCHEMA, pool_size=2
    ) as store, PostgresAuditSink(conninfo(), schema=SCHEMA, pool_size=1) as sink:
        reconciler = Reconciler(directory, store, sink, hierarchy, batch_size=BATCH_SIZE)
        report = await reconciler.run(config, actor=Actor.system("celery"), mode=SYNC_MODE)  # type: ignore[arg-type]
    return {
        "trust_site_id": trust_site_id,
        "run_id": report.run_id,
        "ok": report.ok,
        "mode": report.mode,
        "counts": {name: count for name, count in report.counts.items() if count},
        "seconds": round((report.finished_at - report.started_at).total_seconds(), 3),
        "errors": list(report.errors)[:5],
    }


class ImportIncompleteError(Exception):
    """The run ended ``ok=False`` (an outage mid-read, a store that refused a batch): try again later."""


def _backoff(retries: int, base: float = 2.0, cap: float = 300.0) -> float:
    # Full jitter, so workers that failed together do not come back together.
    return random.uniform(0, min(cap, base * 2**retries))


@app.task(bind=True, name="calm_worker.import_trust", acks_late=True, reject_on_worker_lost=True)
def import_trust(self: Any, trust_site_id: str) -> dict[str, Any]:
    """Import one trust; retried with backoff while another import of it runs, and on outages."""
    try:
        result = asyncio.run(run_import(trust_site_id))
    except ImportAlreadyRunningError as error:
        # Someone else is importing this trust right now; their run may have
        # read Azure before the change that made us enqueue, so run again after it.
        raise self.retry(
            exc=error, countdown=_backoff(self.request.retries, base=0.5, cap=30), max_retries=LOCK_RETRIES
        ) from None
    except (StoreError, psycopg.OperationalError, OSError, DirectoryError) as error:
        # StoreError: the user store's database failed (psycopg's error is its __cause__).
        logger.warning("import of %s failed before it started: %s", trust_site_id, error)
        raise self.retry(exc=error, countdown=_backoff(self.request.retries), max_retries=OUTAGE_RETRIES) from None
    if not result["ok"]:
        logger.warning("import of %s ended with errors: %s", trust_site_id, result["errors"])
        raise self.retry(
            exc=ImportIncompleteError(f"{trust_site_id}: {result['errors']}"),
            countdown=_backoff(self.request.retries),
            max_retries=OUTAGE_RETRIES,
        ) from None
    counts = " ".join(f"{name}={count}" for name, count in sorted(result["counts"].items())) or "no changes"
    logger.info(
        "imported %s: run %s, %s, %s, in %.2f s",
        trust_site_id, result["run_id"], result["mode"], counts, result["seconds"],
    )  # fmt: skip
    return result
