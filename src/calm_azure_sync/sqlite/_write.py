"""How the SQLite user store writes the mutations its rules logged, and counts every write of user data."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from ..model import email_key
from ..store.rules import GrantWrite, GroupWrite, MemberWrite, Mutation, UserWrite

__all__ = ["UPSERT_GRANT", "bump_data_version", "write"]

_INSERT_USER: Final = (
    "INSERT INTO users (id, email, email_key, display_name, given_name, surname, external_id, active, "
    "deactivated_by_sync, tenant_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_USER: Final = (
    "UPDATE users SET email = ?, email_key = ?, display_name = ?, given_name = ?, surname = ?, "
    "external_id = ?, active = ?, deactivated_by_sync = ?, tenant_id = ? WHERE id = ?"
)
UPSERT_GRANT: Final = (
    "INSERT INTO grants (user_id, site_id, module, source, role, trust_site_id) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (user_id, site_id, module, source) "
    "DO UPDATE SET role = excluded.role, trust_site_id = excluded.trust_site_id"
)
_DELETE_GRANT: Final = "DELETE FROM grants WHERE user_id = ? AND site_id = ? AND module = ? AND source = ?"
_INSERT_GROUP: Final = (
    "INSERT INTO synced_groups (trust_site_id, external_id, display_name, site_ids, retired) VALUES (?, ?, ?, ?, ?)"
)
_UPDATE_GROUP: Final = (
    "UPDATE synced_groups SET display_name = ?, site_ids = ?, retired = ? WHERE trust_site_id = ? AND external_id = ?"
)
_INSERT_MEMBER: Final = "INSERT INTO group_members (trust_site_id, group_external_id, user_id) VALUES (?, ?, ?)"
_DELETE_MEMBER: Final = (
    "DELETE FROM group_members WHERE trust_site_id = ? AND group_external_id = ? AND user_id = ?"
)


def bump_data_version(connection: sqlite3.Connection) -> None:
    """Count a write of user data (in the writing transaction): see ``SqliteUserStore.data_version``."""
    connection.execute("UPDATE data_version SET version = version + 1")


def write(connection: sqlite3.Connection, mutations: Sequence[Mutation]) -> None:
    """Write logged mutations: user rows, then grant rows, group rows and membership rows, each in order.

    User rows go first so every grant's and membership's user exists; within each kind the
    order is kept, because an email freed by one update may be taken by the
    next row. Consecutive rows of one statement go through one executemany.
    """
    if mutations:
        bump_data_version(connection)
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []

    def add(statement: str, parameters: tuple[Any, ...]) -> None:
        if runs and runs[-1][0] == statement:
            runs[-1][1].append(parameters)
        else:
            runs.append((statement, [parameters]))

    for mutation in mutations:
        if isinstance(mutation, UserWrite):
            user = mutation.user
            row = (
                email_key(user.email),
                user.display_name,
                user.given_name,
                user.surname,
                user.external_id,
                int(user.active),
                int(user.deactivated_by_sync),
                user.tenant_id,
            )
            if mutation.new:
                add(_INSERT_USER, (user.user_id, user.email, *row))
            else:
                add(_UPDATE_USER, (user.email, *row, user.user_id))
    for mutation in mutations:
        if isinstance(mutation, GrantWrite):
            site_id, module, source = mutation.key
            if mutation.value is None:
                add(_DELETE_GRANT, (mutation.user_id, site_id, module, source))
            else:
                role, trust_site_id = mutation.value
                add(UPSERT_GRANT, (mutation.user_id, site_id, module, source, role.value, trust_site_id))
    # Groups after users and grants, memberships last: each row's parents exist.
    for mutation in mutations:
        if isinstance(mutation, GroupWrite):
            group = mutation.group
            site_ids = json.dumps(list(group.site_ids))
            if mutation.new:
                add(_INSERT_GROUP, (group.trust_site_id, group.external_id, group.display_name, site_ids, int(group.retired)))
            else:
                add(_UPDATE_GROUP, (group.display_name, site_ids, int(group.retired), group.trust_site_id, group.external_id))
    for mutation in mutations:
        if isinstance(mutation, MemberWrite):
            trust, group_id = mutation.key
            add(_INSERT_MEMBER if mutation.member else _DELETE_MEMBER, (trust, group_id, mutation.user_id))
    for statement, rows in runs:
        connection.executemany(statement, rows)
