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

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, LiteralString

import attrs
import psycopg

from ..model import Role, email_key
from ..store.protocol import StoredUser
from ..store.rules import GrantWrite, GroupWrite, MemberWrite, UserTables, UserWrite
from ._codec import to_db, to_db_list, to_db_rows

__all__ = ["BatchWrites", "Loaded", "columns"]

Query = Callable[[LiteralString], Any]
"""Turns a statement template with ``{schema}`` into the store's composed query."""

# A user row's columns: those of _USER_FIELDS, then email_key (the rows of _user_rows).
_UPDATE_USER: Final = (
    "UPDATE {schema}.users SET email = %s, display_name = %s, given_name = %s, surname = %s, external_id = %s, "
    "active = %s, deactivated_by_sync = %s, tenant_id = %s, email_key = %s WHERE id = %s"
)
_COPY_USERS: Final = (
    "COPY {schema}.users (id, email, display_name, given_name, surname, external_id, active, "
    "deactivated_by_sync, tenant_id, email_key) FROM STDIN"
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
_USER_FIELDS: Final = operator.attrgetter(
    "user_id", "email", "display_name", "given_name", "surname", "external_id", "active", "deactivated_by_sync",
    "tenant_id",
)
_USER_TEXTS: Final = (0, 1, 2, 3, 4, 5, 8, 9)


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
    """Users as rows in ``_COPY_USERS``' column order, every text as stored."""
    fields = _USER_FIELDS
    rows = [(*fields(user), email_key(user.email)) for user in users]
    return to_db_rows(rows, _USER_TEXTS)


@attrs.frozen
class BatchWrites:
    """The rows of every statement a batch sends, built before the first is sent. Pure.

    The store builds them in the same step as it decides the batch, with the
    cycle collector paused (``_gc.py``): a first import's batch allocates tens
    of thousands of tuples here and frees none until it is sent, and the
    collector, rescanning the run's whole heap (its plan included), cost 3.5 s
    of a 100k import's 9.5 s of client CPU.
    """

    user_updates: list[tuple[Any, ...]]
    new_users: list[tuple[Any, ...]]
    grant_deletes: list[tuple[Any, ...]]
    grant_upserts: list[tuple[Any, ...]]
    grant_inserts: list[tuple[Any, ...]]
    groups: list[GroupWrite]
    member_leaves: list[tuple[Any, ...]]
    member_joins: list[tuple[Any, ...]]
    joins_absent: bool
    """The batch loaded the memberships it touches, so its joins are plain inserts (COPY)."""
    logged: bool
    """The rules logged a mutation: the batch writes (and moves the data version)."""

    @classmethod
    def of(cls, tables: UserTables, loaded: Loaded | None) -> BatchWrites:
        """What ``tables.log`` writes; ``loaded``: the rows the batch found (``None``: unknown, upsert all)."""
        folded = _Folded.of(tables.log or ())
        updates = [(*values, stored_id) for stored_id, *values in _user_rows(folded.updates)]
        new_users = _user_rows(tables.users[user_id] for user_id in folded.new_users)
        deletes, upserts, inserts = _grant_rows(folded, loaded)
        leaves, joins = _member_rows(folded, loaded)
        return cls(
            updates, new_users, deletes, upserts, inserts, folded.groups, leaves, joins, loaded is not None,
            logged=bool(tables.log),
        )  # fmt: skip

    async def send(self, connection: psycopg.AsyncConnection[Any], q: Query) -> None:
        """Write it all, inside the caller's transaction: users first (grants and memberships name
        them), then grants, groups, memberships."""
        if self.logged:
            async with connection.cursor() as cursor:
                await self._send(cursor, q)

    async def _send(self, cursor: Any, q: Query) -> None:
        if self.user_updates:
            await cursor.executemany(q(_UPDATE_USER), self.user_updates)
        await _copy(cursor, q(_COPY_USERS), self.new_users)
        if self.grant_deletes:
            await cursor.execute(q(_DELETE_GRANTS), columns(self.grant_deletes, 4))
        if self.grant_upserts:
            await cursor.execute(q(_UPSERT_GRANTS), columns(self.grant_upserts, 6))
        await _copy(cursor, q(_COPY_GRANTS), self.grant_inserts)
        await _write_groups(cursor, q, self.groups)
        if self.member_leaves:
            await cursor.execute(q(_LEAVE_GROUPS), columns(self.member_leaves, 3))
        if self.member_joins and not self.joins_absent:
            await cursor.execute(q(_JOIN_GROUPS), columns(self.member_joins, 3))
        elif self.member_joins:
            await _copy(cursor, q(_COPY_MEMBERS), self.member_joins)


async def _copy(cursor: Any, statement: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    if rows:
        async with cursor.copy(statement) as copy:
            for row in rows:
                await copy.write_row(row)


def _grant_rows(
    folded: _Folded, loaded: Loaded | None
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The batch's grant rows as stored: deleted (keys), upserted, and inserted (absent when loaded: COPY)."""
    deletes: list[tuple[Any, ...]] = []
    upserts: list[tuple[Any, ...]] = []
    inserts: list[tuple[Any, ...]] = []
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
    return (
        to_db_rows(deletes, _GRANT_KEY_TEXTS),
        to_db_rows(upserts, _GRANT_TEXTS),
        to_db_rows(inserts, _GRANT_TEXTS),
    )


async def _write_groups(cursor: Any, q: Query, groups: Sequence[GroupWrite]) -> None:
    """Groups after users (memberships reference both), each group's rows in log order."""
    for write in groups:
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


def _member_rows(folded: _Folded, loaded: Loaded | None) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The batch's membership rows as stored: leaves and joins.

    The batch loaded every membership of its users in the groups it names
    (under their row locks), so a join absent then is a plain insert: COPY.
    Without that snapshot (the slow path), ON CONFLICT.
    """
    joins: list[tuple[Any, ...]] = []
    leaves: list[tuple[Any, ...]] = []
    for (key, user_id), member in folded.members.items():
        was = None if loaded is None else (key, user_id) in loaded.members
        if member and was is not True:
            joins.append((key[0], key[1], user_id))
        elif not member and was is not False:
            leaves.append((key[0], key[1], user_id))
    return to_db_rows(leaves, _MEMBER_TEXTS), to_db_rows(joins, _MEMBER_TEXTS)
