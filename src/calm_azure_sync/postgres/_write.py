"""How a PostgreSQL batch writes the mutations the apply rules logged.

The rules (:class:`~calm_azure_sync.store.rules.UserTables`) log every
mutation of a batch; here they are folded to their final state per row and
written in bulk: users (updates, then new users by ``COPY``), grants (deletes,
upserts, and by ``COPY`` the inserts of rows the batch saw absent), groups in
log order, then memberships (leaves, and joins by ``COPY`` when the batch
loaded the memberships it touches, ``ON CONFLICT`` otherwise). Users go first
because grants and memberships reference them.

Every text value is written as :func:`~calm_azure_sync.postgres._codec.to_db`
gives it (NUL and lone surrogates escaped), so what SQLite stores, this store
stores too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, LiteralString

import attrs
import psycopg

from ..model import Role, email_key
from ..store.protocol import StoredUser
from ..store.rules import GrantWrite, GroupWrite, MemberWrite, UserTables, UserWrite
from ._codec import to_db, to_db_list, to_db_rows

__all__ = ["Loaded", "columns", "write_mutations"]

Query = Callable[[LiteralString], Any]
"""Turns a statement template with ``{schema}`` into the store's composed query."""

_UPDATE_USER: Final = (
    "UPDATE {schema}.users SET email = %s, email_key = %s, display_name = %s, given_name = %s, surname = %s, "
    "external_id = %s, active = %s, deactivated_by_sync = %s, tenant_id = %s WHERE id = %s"
)
_COPY_USERS: Final = (
    "COPY {schema}.users (id, email, email_key, display_name, given_name, surname, external_id, active, "
    "deactivated_by_sync, tenant_id) FROM STDIN"
)
_COPY_GRANTS: Final = (
    "COPY {schema}.grants (user_id, site_id, module, source, role, trust_site_id) FROM STDIN"
)
_COPY_MEMBERS: Final = "COPY {schema}.group_members (trust_site_id, group_external_id, user_id) FROM STDIN"
# Bulk forms: one statement for a whole batch's rows, the columns sent as arrays.
# Rows are collapsed to one per key first, so no statement touches a row twice.
_UPSERT_GRANTS: Final = (
    "INSERT INTO {schema}.grants (user_id, site_id, module, source, role, trust_site_id) "
    "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[]) "
    "ON CONFLICT (user_id, site_id, module, source) "
    "DO UPDATE SET role = excluded.role, trust_site_id = excluded.trust_site_id"
)
_DELETE_GRANTS: Final = (
    "DELETE FROM {schema}.grants g USING unnest(%b::text[], %b::text[], %b::text[], %b::text[]) "
    "AS d (user_id, site_id, module, source) WHERE g.user_id = d.user_id AND g.site_id = d.site_id "
    "AND g.module = d.module AND g.source = d.source"
)
_JOIN_GROUPS: Final = (
    "INSERT INTO {schema}.group_members (trust_site_id, group_external_id, user_id) "
    "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[]) ON CONFLICT DO NOTHING"
)
_LEAVE_GROUPS: Final = (
    "DELETE FROM {schema}.group_members m USING unnest(%b::text[], %b::text[], %b::text[]) "
    "AS d (trust_site_id, group_external_id, user_id) WHERE m.trust_site_id = d.trust_site_id "
    "AND m.group_external_id = d.group_external_id AND m.user_id = d.user_id"
)


# The text columns of each kind of row (the codec's to_db_rows); role and source are fixed words.
_GRANT_KEY_TEXTS: Final = (0, 1, 2)
_GRANT_TEXTS: Final = (0, 1, 2, 5)
_MEMBER_TEXTS: Final = (0, 1, 2)
_USER_TEXTS: Final = (0, 1, 2, 3, 4, 5, 6, 9)


def columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as ``width`` column lists, for ``unnest(%b::text[], ...)``."""
    return [[row[index] for row in rows] for index in range(width)] if rows else [[] for _ in range(width)]


@attrs.frozen
class Loaded:
    """Which grant and membership rows a batch found when it loaded (before applying)."""

    grants: frozenset[tuple[str, tuple[str, str, str]]] | None
    members: frozenset[tuple[tuple[str, str], str]]

    @classmethod
    def of(cls, tables: UserTables, *, grants_read: bool) -> Loaded:
        return cls(
            grants=frozenset((user_id, key) for user_id, held in tables.grants.items() for key in held)
            if grants_read
            else None,
            members=frozenset((key, user_id) for key, user_ids in tables.members.items() for user_id in user_ids),
        )


@attrs.define
class _Folded:
    """A batch's mutations, one final state per row."""

    new_users: dict[str, None] = attrs.field(factory=dict)
    updates: list[StoredUser] = attrs.field(factory=list)
    grants: dict[tuple[str, tuple[str, str, str]], tuple[Role, str | None] | None] = attrs.field(factory=dict)
    groups: list[GroupWrite] = attrs.field(factory=list)
    members: dict[tuple[tuple[str, str], str], bool] = attrs.field(factory=dict)

    @classmethod
    def of(cls, log: Sequence[Any]) -> _Folded:
        folded = cls()
        new_users, grants, members = folded.new_users, folded.grants, folded.members
        # By exact type, the most frequent first: a first import logs ~1M of these.
        for mutation in log:
            kind = type(mutation)
            if kind is GrantWrite:
                grants[(mutation.user_id, mutation.key)] = mutation.value
            elif kind is MemberWrite:
                members[(mutation.key, mutation.user_id)] = mutation.member
            elif kind is UserWrite:
                if mutation.new:
                    new_users[mutation.user.user_id] = None
                elif mutation.user.user_id not in new_users:
                    folded.updates.append(mutation.user)
            elif kind is GroupWrite:
                folded.groups.append(mutation)
        return folded


def _user_rows(users: Iterable[StoredUser]) -> list[tuple[Any, ...]]:
    """Users as ``users`` rows in ``_COPY_USERS``' column order, every text as stored."""
    rows = [
        (
            user.user_id,
            user.email,
            email_key(user.email),
            user.display_name,
            user.given_name,
            user.surname,
            user.external_id,
            user.active,
            user.deactivated_by_sync,
            user.tenant_id,
        )
        for user in users
    ]
    return to_db_rows(rows, _USER_TEXTS)


async def write_mutations(
    connection: psycopg.AsyncConnection[Any], q: Query, tables: UserTables, loaded: Loaded | None
) -> None:
    """Write ``tables.log`` in one go, inside the caller's transaction."""
    if not tables.log:
        return
    folded = _Folded.of(tables.log)
    async with connection.cursor() as cursor:
        await _write_users(cursor, q, tables, folded)
        await _write_grants(cursor, q, folded, loaded)
        await _write_groups(cursor, q, folded)
        await _write_members(cursor, q, folded, loaded)


async def _write_users(cursor: Any, q: Query, tables: UserTables, folded: _Folded) -> None:
    if folded.updates:
        rows = [(*values, stored_id) for stored_id, *values in _user_rows(folded.updates)]
        await cursor.executemany(q(_UPDATE_USER), rows)
    if folded.new_users:
        # A user created in this batch is written once, as it ended.
        async with cursor.copy(q(_COPY_USERS)) as copy:
            for user_row in _user_rows(tables.users[user_id] for user_id in folded.new_users):
                await copy.write_row(user_row)


async def _write_grants(cursor: Any, q: Query, folded: _Folded, loaded: Loaded | None) -> None:
    deletes: list[tuple[str, str, str, str]] = []
    upserts: list[tuple[str, str, str, str, str, str | None]] = []
    inserts: list[tuple[str, str, str, str, str, str | None]] = []
    for (user_id, (site_id, module, source)), value in folded.grants.items():
        if value is None:
            if user_id not in folded.new_users:
                deletes.append((user_id, site_id, module, source))
            continue
        row = (user_id, site_id, module, source, value[0].value, value[1])
        # Absent when the batch loaded this user's grants: a plain insert (COPY).
        absent = user_id in folded.new_users or (
            loaded is not None and loaded.grants is not None and (user_id, (site_id, module, source)) not in loaded.grants
        )
        (inserts if absent else upserts).append(row)
    if deletes:
        await cursor.execute(q(_DELETE_GRANTS), columns(to_db_rows(deletes, _GRANT_KEY_TEXTS), 4))
    if upserts:
        await cursor.execute(q(_UPSERT_GRANTS), columns(to_db_rows(upserts, _GRANT_TEXTS), 6))
    if inserts:
        async with cursor.copy(q(_COPY_GRANTS)) as copy:
            for grant_row in to_db_rows(inserts, _GRANT_TEXTS):
                await copy.write_row(grant_row)


async def _write_groups(cursor: Any, q: Query, folded: _Folded) -> None:
    """Groups after users (memberships reference both), each group's rows in log order."""
    for write in folded.groups:
        group = write.group
        trust, external_id, name, sites = (
            to_db(group.trust_site_id),
            to_db(group.external_id),
            to_db(group.display_name),
            to_db_list(group.site_ids),
        )
        if write.new:
            await cursor.execute(
                q(
                    "INSERT INTO {schema}.synced_groups (trust_site_id, external_id, display_name, site_ids, "
                    "retired) VALUES (%s, %s, %s, %s, %s)"
                ),
                (trust, external_id, name, sites, group.retired),
            )
        else:
            await cursor.execute(
                q(
                    "UPDATE {schema}.synced_groups SET display_name = %s, site_ids = %s, retired = %s "
                    "WHERE trust_site_id = %s AND external_id = %s"
                ),
                (name, sites, group.retired, trust, external_id),
            )


async def _write_members(cursor: Any, q: Query, folded: _Folded, loaded: Loaded | None) -> None:
    """The batch loaded every membership of its users in the groups it names (under their row
    locks), so a join absent then is a plain insert: COPY. Without that snapshot (the slow path),
    ON CONFLICT."""
    joins: list[tuple[str, str, str]] = []
    leaves: list[tuple[str, str, str]] = []
    for (key, user_id), member in folded.members.items():
        was = None if loaded is None else (key, user_id) in loaded.members
        if member and was is not True:
            joins.append((key[0], key[1], user_id))
        elif not member and was is not False:
            leaves.append((key[0], key[1], user_id))
    joins, leaves = to_db_rows(joins, _MEMBER_TEXTS), to_db_rows(leaves, _MEMBER_TEXTS)
    if leaves:
        await cursor.execute(q(_LEAVE_GROUPS), columns(leaves, 3))
    if joins and loaded is None:
        await cursor.execute(q(_JOIN_GROUPS), columns(joins, 3))
    elif joins:
        async with cursor.copy(q(_COPY_MEMBERS)) as copy:
            for member_row in joins:
                await copy.write_row(member_row)
