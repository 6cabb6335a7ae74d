"""A v0.3 store migrates in place to tenant-qualified identity (API §13).

The SQLite file (schema version 5) and the PostgreSQL schema (migrations 1
to 5) as v0.3 left them, with synced users, grants, a linked user, a hand
invited one, a synced group and its members: the migration adds
``users.tenant_id``, keeps every user and grant (``tenant_id`` ``None``, no
user duplicated), and the next run's ``UpdateUser`` carrying the tenant
qualifies a user without touching anything else.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from calm_azure_sync import (
    AddGroupMember,
    Assign,
    CreateUser,
    LinkUser,
    Role,
    SqliteUserStore,
    UpdateUser,
    UpsertGroup,
)
from calm_azure_sync.sqlite import _schema as sqlite_schema
from calm_azure_sync.store.protocol import Grant, StoreState

TRUST = "trust-oak"
SITE = "oak-primary"
TENANT = "0a0a0a0a-1111-4111-8111-aaaaaaaaaaaa"


def _qualify(state: StoreState, external_id: str, tenant_id: str | None) -> UpdateUser:
    """The UpdateUser a run sends for ``external_id`` when only its tenant is new."""
    (user,) = [user for user in state.users.values() if user.external_id == external_id]
    return UpdateUser(
        external_id, user.user_id, user.email, user.display_name, user.given_name, user.surname,
        changed=("tenant_id",), tenant_id=tenant_id,
    )  # fmt: skip


def _columns(connection: sqlite3.Connection) -> list[str]:
    return [row[1] for row in connection.execute("PRAGMA table_info(users)")]


async def _v5_file(path: Path) -> StoreState:
    """A SQLite file as v0.3 (schema version 5) left it; returns what it held."""
    async with SqliteUserStore(path) as store:
        invited = await store.add_user("bob@oak.example", "Bob")
        await store.grant(invited, SITE, "policies", Role.MEMBER)
        results = await store.apply(
            TRUST,
            [
                CreateUser("e1", "ann@oak.example", "Ann", "Ann", "Lee"),
                CreateUser("e2", "cy@oak.example", "Cy"),
                LinkUser("e3", invited, "bob@oak.example", "Bob Stone"),
                Assign("e1", SITE, "risk", Role.ADMIN),
                Assign("e2", SITE, "risk", Role.MEMBER),
                Assign("e3", SITE, "risk", Role.MANAGER),
                UpsertGroup("g1", "Staff", (SITE,)),
                AddGroupMember("g1", "e1"),
                AddGroupMember("g1", "e3"),
            ],
        )
        assert all(result.ok for result in results)
        before = await store.load(TRUST)
    with sqlite3.connect(path) as connection:
        # Version 5 had no tenant column: take away the one this version made.
        connection.execute("ALTER TABLE users DROP COLUMN tenant_id")
        connection.execute("UPDATE calm_store_schema SET version = 5")
        assert "tenant_id" not in _columns(connection)
    connection.close()
    return before


async def test_a_version_5_sqlite_file_migrates_keeping_every_user_and_grant(tmp_path: Path) -> None:
    path = tmp_path / "v5.sqlite"
    before = await _v5_file(path)
    async with SqliteUserStore(path) as store:
        after = await store.load(TRUST)
        assert after == before  # every user (tenant None), grant, group and member as it was
        assert len(after.users) == 3
        assert all(user.tenant_id is None for user in after.users.values())
        invited = next(user.user_id for user in after.users.values() if user.external_id == "e3")
        assert await store.grants(invited) == {
            Grant(SITE, "risk", Role.MANAGER, "azure"),
            Grant(SITE, "policies", Role.MEMBER, "manual"),
        }
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM calm_store_schema").fetchall() == [
            (sqlite_schema.SCHEMA_VERSION,)
        ]
        assert sqlite_schema.SCHEMA_VERSION == 6
        assert _columns(connection)[-1] == "tenant_id"
        assert connection.execute("SELECT count(*), count(tenant_id) FROM users").fetchone() == (3, 0)
    connection.close()


async def test_the_next_run_qualifies_a_migrated_sqlite_user_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v5.sqlite"
    before = await _v5_file(path)
    async with SqliteUserStore(path) as store:
        results = await store.apply(TRUST, [_qualify(before, "e1", TENANT), _qualify(before, "e2", None)])
        assert [result.outcome for result in results] == ["applied", "unchanged"]
    async with SqliteUserStore(path) as store:  # kept in the file
        after = await store.load(TRUST)
    assert {user.external_id: user.tenant_id for user in after.users.values()} == {
        "e1": TENANT,
        "e2": None,
        "e3": None,
    }
    assert set(after.users) == set(before.users)  # the same users, none duplicated
    assert after.synced_access == before.synced_access
    assert after.group_members == before.group_members


# -- PostgreSQL ------------------------------------------------------------------------


def _pg(postgres_url: str, statement: str, *parameters: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        cursor = connection.execute(statement.encode(), parameters or None)
        return cursor.fetchall() if cursor.description else []


async def _v5_schema(postgres_url: str, schema_name: str) -> None:
    """A PostgreSQL schema as v0.3 left it: migrations 1 to 5, with users, grants and a group."""
    from calm_azure_sync.postgres._db import Database
    from calm_azure_sync.postgres._schema import MIGRATIONS

    old = Database(
        postgres_url, schema=schema_name, component="user_store",
        migrations={version: MIGRATIONS[version] for version in range(1, 6)}, pool_size=1,
    )  # fmt: skip
    try:
        assert await old.migrate() == 5
    finally:
        await old.close()
    schema = f'"{schema_name}"'
    for statement in (
        f"INSERT INTO {schema}.users (id, email, email_key, display_name, given_name, surname, external_id) VALUES "
        "('u1', 'Ann@oak.example', 'ann@oak.example', 'Ann', 'Ann', 'Lee', 'e1'), "
        "('u2', 'cy@oak.example', 'cy@oak.example', 'Cy', NULL, NULL, 'e2'), "
        "('u3', 'bob@oak.example', 'bob@oak.example', 'Bob', NULL, NULL, NULL)",
        f"INSERT INTO {schema}.grants VALUES ('u1', '{SITE}', 'risk', 'azure', 'Admin', '{TRUST}'), "
        f"('u2', '{SITE}', 'risk', 'azure', 'Member', '{TRUST}'), ('u3', '{SITE}', 'risk', 'manual', 'Member', NULL)",
        f"INSERT INTO {schema}.synced_groups (trust_site_id, external_id, display_name, site_ids) "
        f"VALUES ('{TRUST}', 'g1', 'Staff', ARRAY['{SITE}'])",
        f"INSERT INTO {schema}.group_members VALUES ('{TRUST}', 'g1', 'u1'), ('{TRUST}', 'g1', 'u2')",
    ):
        _pg(postgres_url, statement)


async def test_a_version_5_postgres_schema_migrates_and_the_next_run_qualifies_its_users(
    postgres_url: str, postgres_schema: str
) -> None:
    from calm_azure_sync.postgres import PostgresUserStore
    from calm_azure_sync.postgres._schema import SCHEMA_VERSION

    await _v5_schema(postgres_url, postgres_schema)
    async with PostgresUserStore(postgres_url, schema=postgres_schema) as store:
        before = await store.load(TRUST)  # migrates on first use
        assert await store.migrate() == SCHEMA_VERSION == 8  # 6: the tenant column; 7: an index (below); 8: key checks
        assert set(before.users) == {"u1", "u2", "u3"}
        assert all(user.tenant_id is None for user in before.users.values())
        assert before.synced_access == {"e1": {(SITE, "risk"): Role.ADMIN}, "e2": {(SITE, "risk"): Role.MEMBER}}
        assert before.manual_access_user_ids == frozenset({"u3"})
        assert before.group_members == {"g1": frozenset({"e1", "e2"})}
        results = await store.apply(TRUST, [_qualify(before, "e1", TENANT), _qualify(before, "e2", None)])
        assert [result.outcome for result in results] == ["applied", "unchanged"]
    async with PostgresUserStore(postgres_url, schema=postgres_schema) as store:  # kept in the database
        after = await store.load(TRUST)
    assert {user.user_id: user.tenant_id for user in after.users.values()} == {"u1": TENANT, "u2": None, "u3": None}
    assert after.synced_access == before.synced_access
    assert after.group_members == before.group_members
    schema = f'"{postgres_schema}"'
    assert _pg(postgres_url, f"SELECT count(*), count(tenant_id) FROM {schema}.users") == [(3, 1)]
    assert _pg(
        postgres_url,
        f"SELECT indexname FROM pg_indexes WHERE schemaname = '{postgres_schema}' AND tablename = 'delta_members'"
        " AND indexname = 'delta_members_by_member'",
    ) == [("delta_members_by_member",)]  # migration 7: load_delta_rows reads a member's groups by it
