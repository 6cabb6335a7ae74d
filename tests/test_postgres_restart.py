"""PostgreSQL restarts under a running import (API.md §11: a run that loses its lock stops).

On a throwaway server of this module's own (``.ci/services.sh start``; the
shared test server is never restarted): the first import is reading the
directory when the server restarts with ``pg_ctl restart -m immediate``,
which frees its advisory lock; a second import of the same trust takes the
lock and completes. When the first one wakes up it must write nothing and
log nothing but its own ``import_failed`` ("run lock lost"), and the second
must have closed it with ``import_abandoned``. Also: database failures reach
the host as :class:`~calm_azure_sync.StoreError`, never as psycopg's own.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from calm_azure_sync import (
    AuditKind,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    Reconciler,
    StoreError,
    SyncConfig,
)

from .helpers import OAK_TRUST_BIRCH_HIGH as HIERARCHY
from .helpers import SYSTEM, synced_access_of
from .test_run_lock_fencing import fixture, gated, own_entries

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from calm_azure_sync.postgres import PostgresUserStore  # noqa: E402

CONFIG = SyncConfig("oak", [GroupMapping("g-staff", "birch", {"Risk": "Member"})])
SERVICES = Path(__file__).resolve().parent.parent / ".ci" / "services.sh"


def _pg_bin() -> str | None:
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(os.path.realpath(initdb))
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return found[-1] if found else None


class OwnServer:
    """A PostgreSQL server of this test module's own, which it may restart."""

    def __init__(self) -> None:
        # synchronous_commit on, as in production: an immediate restart must not lose a committed write.
        started = subprocess.run(
            [str(SERVICES), "start"], capture_output=True, text=True, timeout=180, check=True,
            env={**os.environ, "CALM_PG_SYNCHRONOUS_COMMIT": "on"},
        )
        values = dict(
            line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if "=" in line
        )
        self.dir = values["CALM_SERVICES_DIR"]
        self.url = values["CALM_TEST_POSTGRES"]

    def _pg_ctl(self, *args: str) -> None:
        command = [os.path.join(_pg_bin() or "", "pg_ctl"), *args, f"--pgdata={self.dir}/pg/data"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, capture_output=True, timeout=120, check=True)

    def restart(self) -> None:
        """An immediate restart: every connection dies at once, as in a crash."""
        self._pg_ctl("restart", "--mode=immediate", "--wait", f"--log={self.dir}/pg/server.log")

    def stop(self) -> None:
        subprocess.run([str(SERVICES), "stop", self.dir], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def own_server() -> Iterator[OwnServer]:
    if _pg_bin() is None or shutil.which("redis-server") is None:
        pytest.skip("PostgreSQL binaries (or redis-server, which .ci/services.sh also starts) are not installed")
    server = OwnServer()
    try:
        yield server
    finally:
        server.stop()


async def _reconnect(store: PostgresUserStore) -> None:
    """Let the store's pool replace every connection the restart broke (as a busy worker's would).

    Each broken connection fails one call and is dropped; the pool holds at
    most ``pool_size`` (4) of them, so four calls in a row that pass mean none is left.
    """
    passed = 0
    for _ in range(20):
        try:
            await asyncio.gather(*(store.users() for _ in range(4)))
            passed += 1
            if passed == 2:
                return
        except Exception:  # psycopg's error before the fix, a StoreError after
            await asyncio.sleep(0.1)
    raise AssertionError("the pool did not reconnect")


async def test_an_import_that_lost_its_lock_to_a_server_restart_writes_and_logs_nothing_more(own_server):
    audit = InMemoryAuditSink()
    schema = "restart_fencing"
    async with PostgresUserStore(own_server.url, schema=schema) as first_store:
        await first_store.migrate()
        directory = gated(fixture(["u1", "u2", "u3", "u4"]))
        first = asyncio.create_task(Reconciler(directory, first_store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM))
        await directory.reading.wait()
        await asyncio.to_thread(own_server.restart)
        async with PostgresUserStore(own_server.url, schema=schema) as second_store:
            second = await Reconciler(
                InMemoryDirectory.from_dict(fixture(["u1", "u2", "u3"])), second_store, audit, HIERARCHY
            ).run(CONFIG, actor=SYSTEM)
            assert second.ok, second.errors
            users_then = await second_store.users()
            state_then = await second_store.load_state("oak")
            await _reconnect(first_store)
            directory.gate.set()
            report = await first
            assert await second_store.users() == users_then
            assert await second_store.load_state("oak") == state_then
            assert set(synced_access_of(await second_store.load("oak"))) == {"u1", "u2", "u3"}
    assert not report.ok and any("run lock lost" in error for error in report.errors), report.errors
    mine = own_entries(audit.events, report.run_id)
    assert [event.kind for event in mine] == [AuditKind.IMPORT_STARTED, AuditKind.IMPORT_FAILED], mine
    assert "run lock lost" in mine[-1].message
    closing = [event for event in audit.events if event.kind is AuditKind.IMPORT_ABANDONED]
    assert [(event.run_id, event.detail["closed_by"]) for event in closing] == [(report.run_id, second.run_id)]


async def test_a_database_failure_is_a_store_error_with_the_driver_error_as_its_cause(own_server):
    # A server that is down: every call is a StoreError saying what failed, with no password in it.
    url = own_server.url.replace("postgres@", "postgres:s3cret-pw@")
    async with PostgresUserStore(url, schema="down_store") as store:
        await store.migrate()
        await asyncio.to_thread(own_server._pg_ctl, "stop", "--mode=immediate", "--wait")
        try:
            # (One pooled call only: the next would wait for the pool's timeout, then fail the same way.)
            with pytest.raises(StoreError) as raised:
                await store.load("oak")
            assert isinstance(raised.value.__cause__, psycopg.Error)
            assert "s3cret-pw" not in str(raised.value)
            assert "could not load trust 'oak'" in str(raised.value)
            with pytest.raises(StoreError) as raised:
                async with store.run_lock("oak"):
                    pass
            assert isinstance(raised.value.__cause__, psycopg.Error) and "s3cret-pw" not in str(raised.value)
            audit = InMemoryAuditSink()
            with pytest.raises(StoreError) as raised:
                await Reconciler(InMemoryDirectory.from_dict(fixture(["u1"])), store, audit, HIERARCHY).run(
                    CONFIG, actor=SYSTEM
                )
            (refused,) = audit.events
            assert refused.kind is AuditKind.IMPORT_REFUSED and refused.detail["reason"] == "store_failed"
            assert "OperationalError" not in refused.message and "s3cret-pw" not in refused.message
        finally:
            # restart (not start): it starts the server again with the options it last ran with.
            await asyncio.to_thread(own_server.restart)


# -- on the shared test server (nothing is restarted there) ---------------------------------


async def test_the_next_holder_waits_for_a_write_checked_under_the_lost_lock(postgres_url, postgres_schema):
    """The fence: a write that passed its lock check commits before the next run begins, or never."""
    from calm_azure_sync import RunLockLostError, SyncState

    async with PostgresUserStore(postgres_url, schema=postgres_schema) as old, PostgresUserStore(
        postgres_url, schema=postgres_schema
    ) as new:
        async with old.run_lock("oak"):
            held = old._held["oak"]
            async with old._db.connection() as connection:
                async with connection.transaction():
                    await old._check_lock(connection, "oak")  # passes: the lock is still held
                    with psycopg.connect(postgres_url, autocommit=True) as admin:
                        admin.execute("SELECT pg_terminate_backend(%s)", (held.backend_pid,))
                    next_run = new.run_lock("oak")
                    taking = asyncio.ensure_future(next_run.__aenter__())
                    await asyncio.sleep(0.5)
                    assert not taking.done(), "the next holder did not wait for the checked write"
                    await old._write_state_text(connection, "oak", '{"version": 1}')
                await asyncio.wait_for(taking, 10)  # the write committed: now the next run begins
            with pytest.raises(RunLockLostError):
                await old.save_state("oak", SyncState(baselines={"g": 1}))
            with pytest.raises(RunLockLostError):
                await old.check_run_lock("oak")
        await new.check_run_lock("oak")
        await next_run.__aexit__(None, None, None)
        assert await new.load_state("oak") == SyncState()


@pytest.mark.parametrize("fails", [False, True])
async def test_postgres_apply_with_state_commits_the_batch_and_the_state_together_or_neither(
    postgres_url, postgres_schema, fails
):
    from calm_azure_sync import SyncState
    from calm_azure_sync.core.plan import CreateUser

    def state_after(results):
        if fails:
            raise RuntimeError("state_after failed")
        return SyncState(left_scope={"u9": [r.outcome for r in results] == ["applied"]})

    async with PostgresUserStore(postgres_url, schema=postgres_schema) as store, store.run_lock("oak"):
        if fails:
            with pytest.raises(RuntimeError):
                await store.apply_with_state("oak", [CreateUser("u1", "u1@x.org", "U1")], state_after)
            assert await store.users() == [] and await store.load_state("oak") == SyncState()
        else:
            await store.apply_with_state("oak", [CreateUser("u1", "u1@x.org", "U1")], state_after)
            assert [user.external_id for user in await store.users()] == ["u1"]
            assert await store.load_state("oak") == SyncState(left_scope={"u9": True})


async def test_a_pooled_connection_the_server_dropped_is_replaced_not_failed(postgres_url, postgres_schema):
    # After a restart (or a DBA's pg_terminate_backend, or an idle timeout) the pool holds a dead
    # connection: the next call must get a live one, not a StoreError.
    store = PostgresUserStore(postgres_url, schema=postgres_schema)
    try:
        await store.load("oak")
        pool = await store._db.pool()
        async with pool.connection() as connection:
            pid = connection.info.backend_pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
            for _ in range(50):  # the backend goes away asynchronously
                if admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() == (0,):
                    break
                await asyncio.sleep(0.05)
        state = await store.load("oak")
        assert state.users == {}
    finally:
        await store.close()
