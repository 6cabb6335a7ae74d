"""A run that loses its lock stops (API.md §11): its writes are fenced, its Import Log ends with import_failed.

SQLite: the run's lease is taken over by another import while the first one
is still reading. PostgreSQL (in test_postgres_restart.py): the server restarts
under a running import.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from calm_azure_sync import (
    AuditKind,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    Reconciler,
    RunLockLostError,
    SqliteUserStore,
    SyncConfig,
    SyncState,
)
from calm_azure_sync.core.plan import CreateUser
from calm_azure_sync.incremental import cache_write

from .helpers import OAK_TRUST_BIRCH_HIGH as HIERARCHY
from .helpers import SYSTEM, synced_access_of

CONFIG = SyncConfig("oak", [GroupMapping("g-staff", "birch", {"Risk": "Member"})])


def fixture(users: list[str]) -> dict:
    return {
        "users": [{"id": u, "displayName": u, "mail": f"{u}@birch.sch.uk"} for u in users],
        "groups": [{"id": "g-staff"}],
        "members": {"g-staff": users},
    }


class GatedDirectory(InMemoryDirectory):
    """Reads block until ``gate`` opens; ``reading`` is set once a read started."""

    gate: asyncio.Event
    reading: asyncio.Event

    async def group_members(self, group_id):  # type: ignore[no-untyped-def]
        self.reading.set()
        await self.gate.wait()
        return await super().group_members(group_id)


def gated(data: dict) -> GatedDirectory:
    directory = GatedDirectory.from_dict(data)
    directory.gate, directory.reading = asyncio.Event(), asyncio.Event()
    return directory


def expire_lease(path: Path) -> None:
    """The first run's lease runs out (its process was paused for longer than the lease)."""
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE run_locks SET expires_at = '2000-01-01T00:00:00+00:00'")


def own_entries(events, run_id: str):
    """The entries run ``run_id`` recorded itself (not the import_abandoned another run wrote for it)."""
    return [event for event in events if event.run_id == run_id and event.kind is not AuditKind.IMPORT_ABANDONED]


async def test_an_import_whose_sqlite_lease_was_taken_over_writes_and_logs_nothing_more(tmp_path):
    path = tmp_path / "calm.db"
    audit = InMemoryAuditSink()
    later = fixture(["u1", "u2", "u3"])
    async with SqliteUserStore(path) as first_store, SqliteUserStore(path) as second_store:
        directory = gated(fixture(["u1", "u2", "u3", "u4"]))
        first = asyncio.create_task(Reconciler(directory, first_store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM))
        await directory.reading.wait()
        expire_lease(path)
        second = await Reconciler(InMemoryDirectory.from_dict(later), second_store, audit, HIERARCHY).run(
            CONFIG, actor=SYSTEM
        )
        assert second.ok, second.errors
        users_then = await second_store.users()
        state_then = await second_store.load_state("oak")
        directory.gate.set()
        report = await first
    assert not report.ok
    assert any("run lock lost" in error for error in report.errors), report.errors
    # None of the first run's writes landed: u4 was never created, the state is the second run's.
    async with SqliteUserStore(path) as store:
        assert await store.users() == users_then
        assert await store.load_state("oak") == state_then
        assert set(synced_access_of(await store.load("oak"))) == {"u1", "u2", "u3"}
    kinds = [event.kind for event in own_entries(audit.events, report.run_id)]
    assert kinds == [AuditKind.IMPORT_STARTED, AuditKind.IMPORT_FAILED], kinds
    failed = own_entries(audit.events, report.run_id)[-1]
    assert "run lock lost" in failed.message
    # The second run closed the first one, which had not ended when it started.
    closing = [event for event in audit.events if event.kind is AuditKind.IMPORT_ABANDONED]
    assert [event.run_id for event in closing] == [report.run_id]
    assert closing[0].detail["closed_by"] == second.run_id


class UncheckedSqliteStore(SqliteUserStore):
    """A store that never reports a lost lock before writing: only the write transactions' fence can stop the run."""

    async def check_run_lock(self, trust_site_id: str) -> None:
        return None


async def test_the_write_transactions_of_a_run_that_lost_its_lease_are_refused(tmp_path):
    path = tmp_path / "calm.db"
    audit = InMemoryAuditSink()
    async with UncheckedSqliteStore(path) as first_store, SqliteUserStore(path) as second_store:
        directory = gated(fixture(["u1", "u2"]))
        first = asyncio.create_task(Reconciler(directory, first_store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM))
        await directory.reading.wait()
        expire_lease(path)
        async with second_store.run_lock("oak"):  # another import holds the lock now
            directory.gate.set()
            report = await first
            assert await second_store.users() == []
            assert (await second_store.load_state("oak")).running is not None  # only the first run's start mark
    assert not report.ok and any("run lock lost" in error for error in report.errors)
    mine = own_entries(audit.events, report.run_id)
    assert mine[-1].kind is AuditKind.IMPORT_FAILED and "run lock lost" in mine[-1].message
    assert not [event for event in mine if event.kind is AuditKind.ERROR]  # no error per refused change


async def test_every_sqlite_write_of_a_trust_checks_the_lease_inside_its_transaction(tmp_path):
    from calm_azure_sync.testing._store_conformance_delta import sample_cache

    path = tmp_path / "calm.db"
    async with SqliteUserStore(path) as old, SqliteUserStore(path) as new:
        async with old.run_lock("oak"):
            assert [r.ok for r in await old.apply("oak", [CreateUser("u1", "u1@x.org", "U1")])] == [True]
            await old.check_run_lock("oak")
            expire_lease(path)
            async with new.run_lock("oak"):
                with pytest.raises(RunLockLostError):
                    await old.check_run_lock("oak")
                with pytest.raises(RunLockLostError):
                    await old.apply("oak", [CreateUser("u2", "u2@x.org", "U2")])
                with pytest.raises(RunLockLostError):
                    await old.apply_with_state("oak", [CreateUser("u3", "u3@x.org", "U3")], lambda _: SyncState())
                with pytest.raises(RunLockLostError):
                    await old.save_state("oak", SyncState(baselines={"g": 1}))
                with pytest.raises(RunLockLostError):
                    await old.save_delta("oak", cache_write(None, sample_cache(1)))
                with pytest.raises(RunLockLostError):
                    await old.clear_delta("oak")
                # Another trust is not fenced by this one's lock.
                await old.save_state("elm", SyncState(baselines={"g": 2}))
        assert [user.external_id for user in await new.users()] == ["u1"]
        assert await new.load_state("oak") == SyncState()
        assert await new.load_delta("oak") is None


async def test_apply_with_state_commits_the_batch_and_the_state_together_or_neither(tmp_path):
    async with SqliteUserStore(tmp_path / "calm.db") as store:
        def broken(results):
            raise RuntimeError("state_after failed")

        with pytest.raises(RuntimeError):
            await store.apply_with_state("oak", [CreateUser("u1", "u1@x.org", "U1")], broken)
        assert await store.users() == [] and await store.load_state("oak") == SyncState()
        seen = []

        def remember(results):
            seen.append([r.outcome for r in results])
            return SyncState(left_scope={"u9": True})

        results = await store.apply_with_state("oak", [CreateUser("u1", "u1@x.org", "U1")], remember)
        assert [r.outcome for r in results] == ["applied"] and seen == [["applied"]]
        assert await store.load_state("oak") == SyncState(left_scope={"u9": True})
        assert [user.external_id for user in await store.users()] == ["u1"]
