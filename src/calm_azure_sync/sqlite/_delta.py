"""The SQLite store's delta cache tables: one trust's cache read and written as rows (schema version 5).

``delta_meta`` (one row per trust: format version, cursor, mapped group ids,
last full read), ``delta_groups`` (tracked group ids), ``delta_members``
(direct memberships) and ``delta_users`` (a column per cached user field).
A write touches only the rows a :class:`~calm_azure_sync.DeltaCacheWrite`
names, in one transaction; a no-change run rewrites the meta row alone.
Rows that cannot be read back make the cache count as missing (the run reads
in full and replaces them), logged without the cursor: delta links carry
tokens.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

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
from ._db import Fence, write_transaction
from ._read import among

__all__ = [
    "DELTA_INDEXES",
    "DELTA_TABLES",
    "clear_delta",
    "load_delta",
    "load_delta_head",
    "load_delta_rows",
    "save_delta",
]

logger = logging.getLogger("calm_azure_sync.store._sqlite_delta")  # its name before the move

_T = TypeVar("_T")

DELTA_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS delta_meta (
    trust_site_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    cursor TEXT NOT NULL,
    mapped TEXT NOT NULL,
    full_read_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS delta_groups (
    trust_site_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    PRIMARY KEY (trust_site_id, group_id)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS delta_members (
    trust_site_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (trust_site_id, group_id, member_id)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS delta_users (
    trust_site_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    display_name TEXT,
    mail TEXT,
    user_principal_name TEXT,
    given_name TEXT,
    surname TEXT,
    account_enabled INTEGER NOT NULL,
    user_type TEXT NOT NULL,
    assigned_license_count INTEGER,
    on_premises_sync_enabled INTEGER,
    creation_type TEXT,
    PRIMARY KEY (trust_site_id, user_id)
) WITHOUT ROWID""",
)

# A member's groups, for reading some rows of a cache (load_delta_rows): an index, no schema version of its own.
DELTA_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS delta_members_by_member ON delta_members (trust_site_id, member_id)",
)

_TABLES: Final = ("delta_meta", "delta_groups", "delta_members", "delta_users")
_USER_LIST: Final = ", ".join(USER_COLUMNS)
_UPSERT_USER: Final = (
    f"INSERT INTO delta_users (trust_site_id, {_USER_LIST}) VALUES (?{', ?' * len(USER_COLUMNS)}) "
    "ON CONFLICT (trust_site_id, user_id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in USER_COLUMNS[1:])
)


def load_delta(connection: sqlite3.Connection, trust_site_id: str, where: str) -> DeltaCache | None:
    """The trust's cache, or ``None`` when it has none or its rows cannot be read."""

    def build(meta: tuple[Any, ...]) -> DeltaCache:
        with collector_paused():
            return cache_from_rows(
                meta,
                connection.execute("SELECT group_id FROM delta_groups WHERE trust_site_id = ?", (trust_site_id,)),
                connection.execute(
                    "SELECT group_id, member_id FROM delta_members WHERE trust_site_id = ?", (trust_site_id,)
                ),
                connection.execute(f"SELECT {_USER_LIST} FROM delta_users WHERE trust_site_id = ?", (trust_site_id,)),
            )

    return _read(connection, trust_site_id, where, build)


def load_delta_head(connection: sqlite3.Connection, trust_site_id: str, where: str) -> DeltaHead | None:
    """The trust's cache head (the meta row and the tracked group ids), or ``None``."""

    def build(meta: tuple[Any, ...]) -> DeltaHead:
        groups = connection.execute("SELECT group_id FROM delta_groups WHERE trust_site_id = ?", (trust_site_id,))
        return head_from_rows(meta, groups)

    return _read(connection, trust_site_id, where, build)


def load_delta_rows(connection: sqlite3.Connection, trust_site_id: str, member_ids: Iterable[str]) -> DeltaRows:
    """The direct groups and cached users of ``member_ids`` (empty rows when the trust has no cache).

    Raises :class:`UnreadableCache` when a row cannot be read (the caller
    then reads the whole cache, which answers "none").
    """
    members, parameters = among(member_ids)
    connection.execute("BEGIN")  # one snapshot of both tables
    try:
        held = connection.execute(
            f"SELECT member_id, group_id FROM delta_members WHERE trust_site_id = ? AND member_id IN {members}",
            (trust_site_id, *parameters),
        )
        users = connection.execute(
            f"SELECT {_USER_LIST} FROM delta_users WHERE trust_site_id = ? AND user_id IN {members}",
            (trust_site_id, *parameters),
        )
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM delta_users WHERE trust_site_id = ?", (trust_site_id,)
        ).fetchone()
        return delta_rows(held, users, count)
    finally:
        connection.execute("COMMIT")


def _read(
    connection: sqlite3.Connection, trust_site_id: str, where: str, build: Callable[[tuple[Any, ...]], _T]
) -> _T | None:
    """``build(meta row)`` in one read transaction; ``None`` without a meta row or when the rows are unreadable."""
    connection.execute("BEGIN")  # one snapshot of the four tables
    try:
        meta = connection.execute(
            "SELECT version, cursor, mapped, full_read_at FROM delta_meta WHERE trust_site_id = ?", (trust_site_id,)
        ).fetchone()
        if meta is None:
            return None
        try:
            return build(meta)
        except UnreadableCache as error:
            logger.warning("%s cannot be read (%s); the next run reads in full and rebuilds it", where, error)
            return None
    finally:
        connection.execute("COMMIT")


def save_delta(
    connection: sqlite3.Connection, trust_site_id: str, write: DeltaCacheWrite, fence: Fence | None = None
) -> None:
    """Apply ``write`` to the trust's rows in one transaction (``fence``: see ``write_transaction``)."""
    trust = trust_site_id
    # In DeltaCacheWrite.applied_to's order: removals first, then what was added. The rows are generators:
    # a first write has a row per direct membership and per user (400k at 100k users), and lists of them
    # beside the cache were the top of a first import's memory.
    removals: list[tuple[str, Iterable[tuple[Any, ...]]]] = [
        ("DELETE FROM delta_members WHERE trust_site_id = ? AND group_id = ? AND member_id = ?",
         ((trust, group, member) for group, member in write.removed_members)),
        ("DELETE FROM delta_members WHERE trust_site_id = ? AND group_id = ?",
         ((trust, group) for group in write.removed_groups)),
        ("DELETE FROM delta_groups WHERE trust_site_id = ? AND group_id = ?",
         ((trust, group) for group in write.removed_groups)),
        ("DELETE FROM delta_users WHERE trust_site_id = ? AND user_id = ?",
         ((trust, user_id) for user_id in write.removed_users)),
    ]
    additions: list[tuple[str, Iterable[tuple[Any, ...]]]] = [
        ("INSERT OR IGNORE INTO delta_groups (trust_site_id, group_id) VALUES (?, ?)",
         ((trust, group) for group in groups_to_track(write))),
        ("INSERT OR IGNORE INTO delta_members (trust_site_id, group_id, member_id) VALUES (?, ?, ?)",
         ((trust, group, member) for group, member in write.added_members)),
        (_UPSERT_USER, ((trust, *user_row(user)) for user in write.users)),
    ]
    with write_transaction(connection, fence):
        if write.replace:
            _delete_all(connection, trust)
        else:
            for statement, rows in removals:
                connection.executemany(statement, rows)
        for statement, rows in additions:
            connection.executemany(statement, rows)
        connection.execute(
            "INSERT INTO delta_meta (trust_site_id, version, cursor, mapped, full_read_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (trust_site_id) DO UPDATE SET version = excluded.version, cursor = excluded.cursor, "
            "mapped = excluded.mapped, full_read_at = excluded.full_read_at",
            (trust, *meta_row(write.cursor, write.mapped, write.full_read_at)),
        )


def clear_delta(connection: sqlite3.Connection, trust_site_id: str, fence: Fence | None = None) -> None:
    """Drop the trust's cache rows."""
    with write_transaction(connection, fence):
        _delete_all(connection, trust_site_id)


def _delete_all(connection: sqlite3.Connection, trust_site_id: str) -> None:
    for table in _TABLES:
        connection.execute(f"DELETE FROM {table} WHERE trust_site_id = ?", (trust_site_id,))
