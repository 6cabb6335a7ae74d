"""The PostgreSQL store's delta cache tables: one trust's cache read and written as rows (schema version 3).

``delta_meta`` (one row per trust: format version, cursor, mapped group ids,
last full read), ``delta_groups`` (tracked group ids), ``delta_members``
(direct memberships) and ``delta_users`` (a column per cached user field),
encoded and checked by the codec both table stores share
(:mod:`calm_azure_sync.incremental._rows`), every text value stored through the
PostgreSQL text codec (:mod:`calm_azure_sync.postgres._codec`): a NUL in a
user's name is kept, as SQLite keeps it.

A load is one ``REPEATABLE READ`` snapshot of the four tables. A write is one
transaction and costs what changed, not the trust's size: a whole write
(``replace``) deletes the trust's rows and sends the new ones by ``COPY``; a
difference is at most one statement per kind of change, its rows sent as
arrays (``unnest``); a no-change write is the meta row's upsert alone. Rows
that cannot be read back make the cache count as missing (the run reads in
full and replaces them), logged without the cursor: delta links carry tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, LiteralString, TypeVar

import psycopg

from .._gc import collector_paused
from ..incremental import DeltaCache, DeltaCacheWrite, DeltaHead
from ..incremental._rows import (
    USER_COLUMNS,
    UnreadableCache,
    cache_from_rows,
    delta_rows,
    groups_to_track,
    head_from_rows,
    meta_row,
    user_row,
)
from ..incremental.partial import DeltaRows
from ..model import DirectoryUser
from ._codec import from_db_row, to_db, to_db_list, to_db_optional
from ._write import columns

__all__ = ["DELTA_TABLES", "clear_delta", "load_delta", "load_delta_head", "load_delta_rows", "save_delta"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

Query = Callable[[LiteralString], Any]
"""Turns a statement template with ``{schema}`` into the store's composed query."""

DELTA_TABLES: Final = ("delta_meta", "delta_groups", "delta_members", "delta_users")

# USER_COLUMNS spelled out, so every statement is a literal; tests check the two agree.
_USER_LIST: Final = (
    "user_id, display_name, mail, user_principal_name, given_name, surname, account_enabled, user_type, "
    "assigned_license_count, on_premises_sync_enabled, creation_type"
)
_USER_TYPES: Final = (
    "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::boolean[], %b::text[], "
    "%b::integer[], %b::boolean[], %b::text[]"
)

_SELECT_META: Final = (
    "SELECT version, cursor, mapped, full_read_at FROM {schema}.delta_meta WHERE trust_site_id = %s"
)
_SELECT_GROUPS: Final = "SELECT group_id FROM {schema}.delta_groups WHERE trust_site_id = %s"
_SELECT_MEMBERS: Final = "SELECT group_id, member_id FROM {schema}.delta_members WHERE trust_site_id = %s"
_SELECT_USERS: Final = "SELECT " + _USER_LIST + " FROM {schema}.delta_users WHERE trust_site_id = %s"

_SELECT_HELD: Final = "SELECT member_id, group_id FROM {schema}.delta_members WHERE trust_site_id = %s AND member_id = ANY(%b::text[])"
_SELECT_SOME_USERS: Final = (
    "SELECT "
    + _USER_LIST
    + " FROM {schema}.delta_users WHERE trust_site_id = %s AND user_id = ANY(%b::text[])"
)
_COUNT_USERS: Final = "SELECT count(*)::integer FROM {schema}.delta_users WHERE trust_site_id = %s"

_DELETE_ALL: Final[tuple[LiteralString, ...]] = (
    "DELETE FROM {schema}.delta_meta WHERE trust_site_id = %s",
    "DELETE FROM {schema}.delta_groups WHERE trust_site_id = %s",
    "DELETE FROM {schema}.delta_members WHERE trust_site_id = %s",
    "DELETE FROM {schema}.delta_users WHERE trust_site_id = %s",
)
_DELETE_GROUP_MEMBERS: Final = (
    "DELETE FROM {schema}.delta_members WHERE trust_site_id = %s AND group_id = ANY(%b::text[])"
)
_DELETE_GROUPS: Final = "DELETE FROM {schema}.delta_groups WHERE trust_site_id = %s AND group_id = ANY(%b::text[])"
_DELETE_MEMBERS: Final = (
    "DELETE FROM {schema}.delta_members m USING unnest(%b::text[], %b::text[]) AS d (group_id, member_id) "
    "WHERE m.trust_site_id = %s AND m.group_id = d.group_id AND m.member_id = d.member_id"
)
_DELETE_USERS: Final = "DELETE FROM {schema}.delta_users WHERE trust_site_id = %s AND user_id = ANY(%b::text[])"
_INSERT_GROUPS: Final = (
    "INSERT INTO {schema}.delta_groups (trust_site_id, group_id) SELECT %s, g FROM unnest(%b::text[]) AS g "
    "ON CONFLICT DO NOTHING"
)
_INSERT_MEMBERS: Final = (
    "INSERT INTO {schema}.delta_members (trust_site_id, group_id, member_id) "
    "SELECT %s, g, m FROM unnest(%b::text[], %b::text[]) AS a (g, m) ON CONFLICT DO NOTHING"
)
_UPSERT_USERS: Final = (
    "INSERT INTO {schema}.delta_users (trust_site_id, " + _USER_LIST + ") "
    "SELECT %s, * FROM unnest(" + _USER_TYPES + ") "
    "ON CONFLICT (trust_site_id, user_id) DO UPDATE SET display_name = excluded.display_name, "
    "mail = excluded.mail, user_principal_name = excluded.user_principal_name, given_name = excluded.given_name, "
    "surname = excluded.surname, account_enabled = excluded.account_enabled, user_type = excluded.user_type, "
    "assigned_license_count = excluded.assigned_license_count, "
    "on_premises_sync_enabled = excluded.on_premises_sync_enabled, creation_type = excluded.creation_type"
)
_COPY_GROUPS: Final = "COPY {schema}.delta_groups (trust_site_id, group_id) FROM STDIN"
_COPY_MEMBERS: Final = "COPY {schema}.delta_members (trust_site_id, group_id, member_id) FROM STDIN"
_COPY_USERS: Final = "COPY {schema}.delta_users (trust_site_id, " + _USER_LIST + ") FROM STDIN"
_UPSERT_META: Final = (
    "INSERT INTO {schema}.delta_meta (trust_site_id, version, cursor, mapped, full_read_at) "
    "VALUES (%s, %s, %s, %s, %s::timestamptz) ON CONFLICT (trust_site_id) DO UPDATE SET "
    "version = excluded.version, cursor = excluded.cursor, mapped = excluded.mapped, "
    "full_read_at = excluded.full_read_at"
)


async def load_delta(
    connection: psycopg.AsyncConnection[Any], q: Query, trust_site_id: str, where: str
) -> DeltaCache | None:
    """The trust's cache, or ``None`` when it has none or its rows cannot be read (logged, without the cursor)."""
    rows = await _rows(connection, q, trust_site_id, (_SELECT_GROUPS, _SELECT_MEMBERS, _SELECT_USERS))
    if rows is None:
        return None
    meta, (groups, members, users) = rows
    with collector_paused():
        return _decoded(
            where,
            lambda: cache_from_rows(
                from_db_row(meta), map(from_db_row, groups), map(from_db_row, members), map(from_db_row, users)
            ),
        )


async def load_delta_head(
    connection: psycopg.AsyncConnection[Any], q: Query, trust_site_id: str, where: str
) -> DeltaHead | None:
    """The trust's cache head (the meta row and the tracked group ids), or ``None``."""
    rows = await _rows(connection, q, trust_site_id, (_SELECT_GROUPS,))
    if rows is None:
        return None
    meta, (groups,) = rows
    return _decoded(where, lambda: head_from_rows(from_db_row(meta), map(from_db_row, groups)))


async def load_delta_rows(
    connection: psycopg.AsyncConnection[Any], q: Query, trust_site_id: str, member_ids: Iterable[str]
) -> DeltaRows:
    """The direct groups and cached users of ``member_ids``, in one snapshot (empty rows without a cache).

    Raises :class:`UnreadableCache` when a row cannot be read (the caller
    then reads the whole cache, which answers "none").
    """
    trust, ids = to_db(trust_site_id), to_db_list(sorted(set(member_ids)))
    async with connection.transaction():
        await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        held = await (await connection.execute(q(_SELECT_HELD), (trust, ids), prepare=False)).fetchall()
        users = await (
            await connection.execute(q(_SELECT_SOME_USERS), (trust, ids), prepare=False)
        ).fetchall()
        row = await (await connection.execute(q(_COUNT_USERS), (trust,))).fetchone()
    return delta_rows(map(from_db_row, held), map(from_db_row, users), row[0] if row else 0)


async def _rows(
    connection: psycopg.AsyncConnection[Any], q: Query, trust_site_id: str, selects: tuple[LiteralString, ...]
) -> tuple[Any, list[list[Any]]] | None:
    """The meta row and each select's rows, in one snapshot; ``None`` without a meta row."""
    trust = (to_db(trust_site_id),)
    async with connection.transaction():
        # One snapshot of the four tables: a write committing between two reads is never half seen.
        await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        meta = await (await connection.execute(q(_SELECT_META), trust)).fetchone()
        if meta is None:
            return None
        # Never prepared: the tables grow from nothing at a trust's first run (see _load_tables).
        found = [await (await connection.execute(q(select), trust, prepare=False)).fetchall() for select in selects]
    return meta, found


def _decoded(where: str, decode: Callable[[], _T]) -> _T | None:
    try:
        return decode()
    except UnreadableCache as error:
        # The codec's messages name columns and ids, never the cursor's contents.
        logger.warning("%s cannot be read (%s); the next run reads in full and rebuilds it", where, error)
        return None


async def save_delta(
    connection: psycopg.AsyncConnection[Any], q: Query, trust_site_id: str, write: DeltaCacheWrite
) -> None:
    """Apply ``write`` to the trust's rows. Call inside the transaction that makes it atomic."""
    trust = to_db(trust_site_id)
    added_groups = to_db_list(groups_to_track(write))
    added_members = [(to_db(group), to_db(member)) for group, member in sorted(write.added_members)]
    users = [_stored_user_row(user) for user in _unique(write.users)]
    async with connection.cursor() as cursor:
        if write.replace:
            # The trust has no rows left, so nothing can conflict: plain COPY.
            for statement in _DELETE_ALL[1:]:
                await cursor.execute(q(statement), (trust,))
            await _copy(cursor, q(_COPY_GROUPS), ((trust, group) for group in added_groups))
            await _copy(cursor, q(_COPY_MEMBERS), ((trust, group, member) for group, member in added_members))
            await _copy(cursor, q(_COPY_USERS), ((trust, *row) for row in users))
        else:
            # In DeltaCacheWrite.applied_to's order: removals first, then what was added.
            if write.removed_groups:
                removed = to_db_list(sorted(write.removed_groups))
                await cursor.execute(q(_DELETE_GROUP_MEMBERS), (trust, removed))
                await cursor.execute(q(_DELETE_GROUPS), (trust, removed))
            if write.removed_members:
                gone = [(to_db(group), to_db(member)) for group, member in sorted(write.removed_members)]
                await cursor.execute(q(_DELETE_MEMBERS), (*columns(gone, 2), trust))
            if write.removed_users:
                await cursor.execute(q(_DELETE_USERS), (trust, to_db_list(sorted(write.removed_users))))
            if added_groups:
                await cursor.execute(q(_INSERT_GROUPS), (trust, added_groups))
            if added_members:
                await cursor.execute(q(_INSERT_MEMBERS), (trust, *columns(added_members, 2)))
            if users:
                await cursor.execute(q(_UPSERT_USERS), (trust, *columns(users, len(USER_COLUMNS))))
        version, cursor_json, mapped_json, at = meta_row(write.cursor, write.mapped, write.full_read_at)
        await cursor.execute(q(_UPSERT_META), (trust, version, to_db(cursor_json), to_db(mapped_json), at))


async def clear_delta(connection: psycopg.AsyncConnection[Any], q: Query, trust_site_id: str) -> None:
    """Delete the trust's rows in the four tables. Call inside a transaction."""
    async with connection.cursor() as cursor:
        for statement in _DELETE_ALL:
            await cursor.execute(q(statement), (to_db(trust_site_id),))


def _stored_user_row(user: DirectoryUser) -> tuple[Any, ...]:
    """:func:`user_row` with its text as stored."""
    return tuple(to_db_optional(value) if value is None or type(value) is str else value for value in user_row(user))


def _unique(users: Iterable[DirectoryUser]) -> list[DirectoryUser]:
    """One user per id, the last given winning (as ``applied_to``); one statement cannot upsert a row twice."""
    return list({user.id: user for user in users}.values())


async def _copy(cursor: Any, statement: Any, rows: Iterable[tuple[Any, ...]]) -> None:
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return
    async with cursor.copy(statement) as copy:
        await copy.write_row(first)
        for row in iterator:
            await copy.write_row(row)
