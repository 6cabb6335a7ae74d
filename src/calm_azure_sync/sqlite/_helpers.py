"""The SQLite user store's host helpers: adding users and manual grants, and the queries a host reads."""

from __future__ import annotations

import sqlite3

from ..model import Role
from ..store.protocol import Grant, StoredUser, SyncedGroup, checked_data_version
from ..store.rules import UserTables, add_user_keys, checked_grant
from ._db import write_transaction
from ._read import GROUP_COLUMNS, USER_COLUMNS, group_from_row, user_from_row
from ._write import UPSERT_GRANT, bump_data_version, write

__all__ = ["add_user", "data_version", "grant", "grants", "group_members", "groups", "set_active", "user", "users"]


def add_user(connection: sqlite3.Connection, email: str, display_name: str, user_id: str | None) -> str:
    with write_transaction(connection):
        tables = UserTables(log=[])
        for row in connection.execute(
            f"SELECT {USER_COLUMNS} FROM users WHERE email_key = ? OR id = ?", add_user_keys(email, user_id)
        ):
            tables.put_user(user_from_row(row))
        new_id = tables.add_user(email, display_name, user_id)
        write(connection, tables.log or [])
    return new_id


def grant(connection: sqlite3.Connection, user_id: str, site_id: str, module: str, role: Role | str) -> None:
    parsed = checked_grant(site_id, module, role)
    with write_transaction(connection):
        if connection.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
            raise KeyError(f"no user with id {user_id!r}")
        connection.execute(UPSERT_GRANT, (user_id, site_id, module, "manual", parsed.value, None))
        bump_data_version(connection)


def grants(connection: sqlite3.Connection, user_id: str) -> set[Grant]:
    user(connection, user_id)
    return {
        Grant(site_id=site_id, module=module, role=Role(role), source=source)
        for site_id, module, role, source in connection.execute(
            "SELECT site_id, module, role, source FROM grants WHERE user_id = ?", (user_id,)
        )
    }


def set_active(connection: sqlite3.Connection, user_id: str, active: bool) -> None:
    with write_transaction(connection):
        cursor = connection.execute(
            "UPDATE users SET active = ?, deactivated_by_sync = 0 WHERE id = ?", (int(active), user_id)
        )
        if cursor.rowcount == 0:
            raise KeyError(user_id)
        bump_data_version(connection)


def data_version(connection: sqlite3.Connection, where: str) -> int:
    return checked_data_version(connection.execute("SELECT version FROM data_version").fetchall(), where)


def user(connection: sqlite3.Connection, user_id: str) -> StoredUser:
    row = connection.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise KeyError(f"no user with id {user_id!r}")
    return user_from_row(row)


def groups(connection: sqlite3.Connection, trust_site_id: str) -> list[SyncedGroup]:
    return [
        group_from_row(trust_site_id, row)
        for row in connection.execute(
            f"SELECT {GROUP_COLUMNS} FROM synced_groups WHERE trust_site_id = ? ORDER BY display_name, external_id",
            (trust_site_id,),
        )
    ]


def group_members(connection: sqlite3.Connection, group_external_id: str, trust_site_id: str | None) -> frozenset[str]:
    connection.execute("BEGIN")
    try:
        trusts = [
            row[0]
            for row in connection.execute(
                "SELECT trust_site_id FROM synced_groups WHERE external_id = ?", (group_external_id,)
            )
            if trust_site_id is None or row[0] == trust_site_id
        ]
        if not trusts:
            where = "any trust" if trust_site_id is None else f"trust {trust_site_id!r}"
            raise KeyError(f"no synced group {group_external_id!r} in {where}")
        return frozenset(
            row[0]
            for trust in trusts
            for row in connection.execute(
                "SELECT users.external_id FROM group_members JOIN users ON users.id = group_members.user_id "
                "WHERE group_members.trust_site_id = ? AND group_members.group_external_id = ? "
                "AND users.external_id IS NOT NULL",
                (trust, group_external_id),
            )
        )
    finally:
        connection.execute("COMMIT")


def users(connection: sqlite3.Connection) -> list[StoredUser]:
    return [
        user_from_row(row) for row in connection.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY rowid")
    ]
