"""PostgreSQL migration 8: the foreign keys of grants and group_members, checked once per statement.

Migration 8 replaces the three foreign keys (a trigger per inserted row) by
statement triggers over the statement's new rows (docs/stores.md,
"Referential checks"). These tests hold them to what the foreign keys did:
a row naming a missing user or group is refused with SQLSTATE 23503
(``psycopg.errors.ForeignKeyViolation``, an ``IntegrityError``) by
``INSERT``, ``COPY`` and ``UPDATE``; a referenced user or group cannot be
deleted or renamed; and the referenced rows are locked ``FOR KEY SHARE``
until the writer commits, so a delete racing an insert waits and then fails.
A schema migrated from version 7 with rows in it keeps them.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

TRUST = "trust-oak"

pytestmark = pytest.mark.usefixtures("postgres_url")


def _run(postgres_url: str, statement: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        cursor = connection.execute(statement.encode())
        return cursor.fetchall() if cursor.description else []


def _refused(postgres_url: str, statement: str) -> str:
    """The message of the ForeignKeyViolation ``statement`` raises (it must raise one)."""
    import psycopg

    with pytest.raises(psycopg.errors.ForeignKeyViolation) as refused:
        _run(postgres_url, statement)
    assert refused.value.sqlstate == "23503"
    return refused.value.diag.message_primary or ""


def _waits_for_commit(waiter: Any, statement: str, holder: Any) -> BaseException | None:
    """Run ``statement`` on ``waiter`` in a thread; it must block until ``holder`` commits.

    Returns the error it then raised (``None`` if it succeeded).
    """
    import psycopg

    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            waiter.execute(statement.encode())
            outcome.append(None)
        except psycopg.Error as error:
            outcome.append(error)

    waiting = threading.Thread(target=run)
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive(), "the statement did not wait for the other transaction's lock"
    holder.commit()
    waiting.join(10)
    assert len(outcome) == 1
    return outcome[0]


@pytest.fixture
def schema(postgres_url: str, postgres_schema: str) -> str:
    """A schema at version 7 holding two users, a group, a grant and a membership, then migrated to 8."""
    import asyncio

    from calm_azure_sync.postgres._db import Database
    from calm_azure_sync.postgres._schema import MIGRATIONS, SCHEMA_VERSION

    async def migrate(versions: range) -> int:
        database = Database(
            postgres_url, schema=postgres_schema, component="user_store",
            migrations={version: MIGRATIONS[version] for version in versions}, pool_size=1,
        )  # fmt: skip
        try:
            return await database.migrate()
        finally:
            await database.close()

    assert asyncio.run(migrate(range(1, 8))) == 7
    quoted = f'"{postgres_schema}"'
    _run(postgres_url, f"INSERT INTO {quoted}.users (id, email, email_key, display_name, external_id) VALUES "
                       "('u1', 'ann@oak.example', 'ann@oak.example', 'Ann', 'e1'), "
                       "('u2', 'cy@oak.example', 'cy@oak.example', 'Cy', 'e2')")  # fmt: skip
    _run(postgres_url, f"INSERT INTO {quoted}.synced_groups (trust_site_id, external_id, display_name) "
                       f"VALUES ('{TRUST}', 'g1', 'Staff')")  # fmt: skip
    _run(postgres_url, f"INSERT INTO {quoted}.grants VALUES ('u1', 'oak', 'risk', 'azure', 'Admin', '{TRUST}')")
    _run(postgres_url, f"INSERT INTO {quoted}.group_members VALUES ('{TRUST}', 'g1', 'u1')")
    assert asyncio.run(migrate(range(1, SCHEMA_VERSION + 1))) == SCHEMA_VERSION == 8
    return quoted


def test_migration_8_keeps_the_rows_and_drops_the_per_row_foreign_keys(postgres_url: str, schema: str) -> None:
    assert _run(postgres_url, f"SELECT user_id, role FROM {schema}.grants") == [("u1", "Admin")]
    assert _run(postgres_url, f"SELECT user_id FROM {schema}.group_members") == [("u1",)]
    name = schema.strip('"')
    assert _run(
        postgres_url,
        "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        f"WHERE n.nspname = '{name}' AND c.contype = 'f'",
    ) == [(0,)]


def test_a_grant_or_membership_naming_a_missing_user_or_group_is_refused(postgres_url: str, schema: str) -> None:
    assert "grants" in _refused(
        postgres_url, f"INSERT INTO {schema}.grants VALUES ('nobody', 'oak', 'risk', 'azure', 'Member', '{TRUST}')"
    )
    # One bad row among good ones refuses the whole statement, as the foreign key did.
    assert "user" in _refused(
        postgres_url,
        f"INSERT INTO {schema}.group_members VALUES ('{TRUST}', 'g1', 'u2'), ('{TRUST}', 'g1', 'nobody')",
    )
    assert "group" in _refused(postgres_url, f"INSERT INTO {schema}.group_members VALUES ('{TRUST}', 'g9', 'u2')")
    assert "group" in _refused(postgres_url, f"INSERT INTO {schema}.group_members VALUES ('trust-elm', 'g1', 'u2')")
    _refused(postgres_url, f"UPDATE {schema}.grants SET user_id = 'nobody'")
    _refused(postgres_url, f"UPDATE {schema}.group_members SET group_external_id = 'g9'")
    # Nothing refused was kept; rows naming what exists are written, upserts included.
    _run(postgres_url, f"INSERT INTO {schema}.group_members VALUES ('{TRUST}', 'g1', 'u2')")
    _run(
        postgres_url,
        f"INSERT INTO {schema}.grants VALUES ('u1', 'oak', 'risk', 'azure', 'Member', '{TRUST}') "
        "ON CONFLICT (user_id, site_id, module, source) DO UPDATE SET role = excluded.role",
    )
    assert _run(postgres_url, f"SELECT user_id, role FROM {schema}.grants") == [("u1", "Member")]
    assert sorted(_run(postgres_url, f"SELECT user_id FROM {schema}.group_members")) == [("u1",), ("u2",)]


def test_copy_is_checked_too(postgres_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url) as connection:
        copying = f"COPY {schema}.grants (user_id, site_id, module, source, role, trust_site_id) FROM STDIN"

        def copy_rows() -> None:
            with connection.cursor().copy(copying.encode()) as copy:
                for user_id in ("u1", "u2", "nobody"):
                    copy.write_row((user_id, "elm", "risk", "azure", "Member", TRUST))

        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            copy_rows()
        connection.rollback()
    assert _run(postgres_url, f"SELECT count(*) FROM {schema}.grants") == [(1,)]


def test_a_referenced_user_or_group_cannot_be_removed_or_renamed(postgres_url: str, schema: str) -> None:
    _refused(postgres_url, f"DELETE FROM {schema}.users WHERE id = 'u1'")
    _refused(postgres_url, f"UPDATE {schema}.users SET id = 'u9' WHERE id = 'u1'")
    _refused(postgres_url, f"DELETE FROM {schema}.synced_groups WHERE external_id = 'g1'")
    _refused(postgres_url, f"UPDATE {schema}.synced_groups SET external_id = 'g9'")
    # Other columns change freely, and an unreferenced user can go or be renamed.
    _run(postgres_url, f"UPDATE {schema}.users SET display_name = 'Ann Lee' WHERE id = 'u1'")
    _run(postgres_url, f"UPDATE {schema}.users SET id = 'u7' WHERE id = 'u2'")
    _run(postgres_url, f"DELETE FROM {schema}.users WHERE id = 'u7'")
    assert _run(postgres_url, f"SELECT id, display_name FROM {schema}.users") == [("u1", "Ann Lee")]


def test_a_delete_racing_an_uncommitted_grant_waits_for_it_then_is_refused(postgres_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url) as writer, psycopg.connect(postgres_url, autocommit=True) as deleter:
        writer.execute(f"INSERT INTO {schema}.grants VALUES ('u2', 'oak', 'risk', 'azure', 'Member', '{TRUST}')".encode())
        # The writer holds u2 FOR KEY SHARE until it commits: a delete cannot take the row meanwhile.
        deleter.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            deleter.execute(f"DELETE FROM {schema}.users WHERE id = 'u2'".encode())
        deleter.execute("SET lock_timeout = 0")
        outcome = _waits_for_commit(deleter, f"DELETE FROM {schema}.users WHERE id = 'u2'", writer)
    assert isinstance(outcome, psycopg.errors.ForeignKeyViolation)
    assert _run(postgres_url, f"SELECT id FROM {schema}.users ORDER BY id") == [("u1",), ("u2",)]


def test_an_insert_racing_an_uncommitted_delete_is_refused_once_the_delete_commits(
    postgres_url: str, schema: str
) -> None:
    import psycopg

    with psycopg.connect(postgres_url) as deleter, psycopg.connect(postgres_url, autocommit=True) as writer:
        deleter.execute(f"DELETE FROM {schema}.users WHERE id = 'u2'".encode())
        inserting = f"INSERT INTO {schema}.grants VALUES ('u2', 'oak', 'risk', 'azure', 'Member', '{TRUST}')"
        outcome = _waits_for_commit(writer, inserting, deleter)  # the check's lock waits for the delete
    assert isinstance(outcome, psycopg.errors.ForeignKeyViolation)
    assert _run(postgres_url, f"SELECT count(*) FROM {schema}.grants WHERE user_id = 'u2'") == [(0,)]


def test_truncating_a_referenced_table_alone_is_refused_and_with_its_referrers_allowed(
    postgres_url: str, schema: str
) -> None:
    assert "users" in _refused(postgres_url, f"TRUNCATE {schema}.users")
    assert "users" in _refused(postgres_url, f"TRUNCATE {schema}.users CASCADE")  # no foreign key to cascade by
    assert "synced_groups" in _refused(postgres_url, f"TRUNCATE {schema}.synced_groups")
    assert "users" in _refused(postgres_url, f"TRUNCATE {schema}.users, {schema}.grants")  # memberships left
    assert _run(postgres_url, f"SELECT count(*) FROM {schema}.users") == [(2,)]  # nothing was truncated
    _run(postgres_url, f"TRUNCATE {schema}.users, {schema}.grants, {schema}.group_members, {schema}.synced_groups")
    assert _run(postgres_url, f"SELECT count(*) FROM {schema}.users") == [(0,)]
