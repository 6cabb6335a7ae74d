"""The SQLite store's delta cache tables: migrated in, unreadable rows mean "read in full", never a failure."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from calm_azure_sync import DeltaCacheStore, SqliteUserStore
from calm_azure_sync.incremental import cache_write
from calm_azure_sync.store import sqlite as sqlite_module
from calm_azure_sync.testing._store_conformance_delta import sample_cache

TRUST = "oak"


async def test_the_sqlite_store_keeps_the_delta_cache_in_tables_not_a_blob(tmp_path):
    path = tmp_path / "calm.db"
    cache = sample_cache(1, users=40, groups=5)
    async with SqliteUserStore(path) as store:
        assert isinstance(store, DeltaCacheStore)
        await store.save_delta(TRUST, cache_write(None, cache))
    with sqlite3.connect(path) as connection:
        members = sum(len(ids) for ids in cache.groups.values())
        assert connection.execute("SELECT count(*) FROM delta_users").fetchone() == (len(cache.users),)
        assert connection.execute("SELECT count(*) FROM delta_members").fetchone() == (members,)
        assert connection.execute("SELECT count(*) FROM delta_groups").fetchone() == (len(cache.groups),)
        assert connection.execute("SELECT state FROM sync_state").fetchall() == []


async def test_a_version_4_store_gets_the_delta_tables_in_place(tmp_path):
    path = tmp_path / "calm.db"
    async with SqliteUserStore(path) as store:
        user = await store.add_user("ann@oak.sch.uk", "Ann")
    with sqlite3.connect(path) as connection:
        for table in ("delta_meta", "delta_groups", "delta_members", "delta_users"):
            connection.execute(f"DROP TABLE {table}")
        connection.execute("ALTER TABLE users DROP COLUMN tenant_id")  # version 6's, not 4's
        connection.execute("UPDATE calm_store_schema SET version = 4")
    async with SqliteUserStore(path) as store:
        assert (await store.user(user)).email == "ann@oak.sch.uk"
        assert await store.load_delta(TRUST) is None
        cache = sample_cache(2)
        await store.save_delta(TRUST, cache_write(None, cache))
        assert await store.load_delta(TRUST) == cache
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM calm_store_schema").fetchone() == (sqlite_module.SCHEMA_VERSION,)


CORRUPTIONS = {
    "another version": "UPDATE delta_meta SET version = 99",
    "cursor not an object": "UPDATE delta_meta SET cursor = '[1, 2]'",
    "cursor not JSON": "UPDATE delta_meta SET cursor = 'token=secret-ish{'",
    "naive full read time": "UPDATE delta_meta SET full_read_at = '2026-12-01T07:00:00'",
    "membership of an untracked group": "INSERT INTO delta_members VALUES ('oak', 'ghost', 'user-1')",
    "a user value of the wrong type": "UPDATE delta_users SET account_enabled = 'yes' WHERE user_id = "
    "(SELECT min(user_id) FROM delta_users)",
    "a negative licence count": "UPDATE delta_users SET assigned_license_count = -3",
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
async def test_unreadable_delta_rows_are_no_cache_logged_without_the_cursor_and_rebuilt(tmp_path, caplog, corruption):
    path = tmp_path / "calm.db"
    cache = sample_cache(3)
    async with SqliteUserStore(path) as store:
        await store.save_delta(TRUST, cache_write(None, cache))
    statement = CORRUPTIONS[corruption]
    with sqlite3.connect(path) as connection:
        connection.execute(statement)
    caplog.set_level(logging.WARNING)
    async with SqliteUserStore(path) as store:
        assert await store.load_delta(TRUST) is None
        assert "reads in full" in caplog.text
        assert "token" not in caplog.text and "graph.example" not in caplog.text
        rebuilt = sample_cache(4)
        await store.save_delta(TRUST, cache_write(None, rebuilt))
        assert await store.load_delta(TRUST) == rebuilt


async def test_a_no_change_write_rewrites_only_the_meta_row(tmp_path):
    path = tmp_path / "calm.db"
    cache = sample_cache(5, users=200, groups=6)
    async with SqliteUserStore(path) as store:
        await store.save_delta(TRUST, cache_write(None, cache))
        moved = cache_write(cache, type(cache)({"next": 1}, cache.groups, cache.users, cache.mapped, cache.full_read_at))
        assert moved.rows == 0
        statements = []
        store._db._call(lambda connection: connection.set_trace_callback(statements.append))
        await store.save_delta(TRUST, moved)
        store._db._call(lambda connection: connection.set_trace_callback(None))
    writes = [s for s in statements if s.split()[0].upper() in {"INSERT", "UPDATE", "DELETE"}]
    assert len(writes) == 1 and writes[0].startswith("INSERT INTO delta_meta"), writes
