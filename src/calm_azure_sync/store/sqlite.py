"""The SQLite user store: the embedded default for hosts without their own users table.

Standard-library :mod:`sqlite3` in WAL mode with foreign keys on. The schema
(see docs/stores.md) is created on first use and versioned in
``calm_store_schema``.

How ``apply`` stays fast and safe
---------------------------------
One ``apply`` call is one ``BEGIN IMMEDIATE`` transaction. Inside it the store
loads just the rows the batch touches (the users named by external id, user
id or email, their grants when a rule reads them, and the synced groups it
names with those users' memberships) into a
:class:`~calm_azure_sync.store.rules.UserTables`, applies the batch there
with the same rules as the in-memory store, and writes back the logged
mutations with ``executemany``: user rows first, in order, then grant rows,
group rows and membership rows, each in order. A change those rules reject writes nothing. If the database still
refuses a write (a host's trigger or constraint), the batch's writes are
rolled back to a savepoint and the batch is replayed one change at a time,
each user's changes under a savepoint and each change under a nested one, so
only the refused change fails. The transaction commits once: a crash anywhere
in the batch leaves none of it, so no user is ever half-written.
``apply_with_state`` saves the sync state in the same transaction, and while
this object holds the trust's run lock every write checks the lease first,
inside its transaction (see :meth:`SqliteUserStore.run_lock`). Database
failures are :class:`~calm_azure_sync.StoreError`.

The connection is used from worker threads (:func:`asyncio.to_thread`) under a
lock, so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, ClassVar, Final, TypeVar

import attrs

from .._async_closing import AsyncClosing
from .._gc import collector_paused
from .._query_args import checked_id, checked_optional_id
from .._sqlite import Fence, ThreadedConnection, write_transaction
from .._text import clean_text
from ..errors import StoreError
from ..incremental import DeltaCache, DeltaCacheWrite, DeltaHead
from ..model import Role, email_key
from ..plan import Change, RetireGroup
from ..state import SyncState
from . import _sqlite_delta
from ._sqlite_delta import DELTA_TABLES

# The run lock lives in its own module; its names stay importable from here,
# where this module's callers and fault-injecting tests look them up.
from ._sqlite_lock import acquire_lock as _acquire_lock
from ._sqlite_lock import check_holder as _check_holder
from ._sqlite_lock import fence as _lock_fence
from ._sqlite_lock import pid_alive as pid_alive
from ._sqlite_lock import process_host as _process_host  # noqa: F401 - the old private name
from ._sqlite_lock import release_lock as _release_lock
from ._sqlite_lock import renew_lock as _renew_lock
from ._sqlite_state import SYNC_STATE_TABLE as _SYNC_STATE_TABLE
from ._sqlite_state import load_sync_state as _load_sync_state
from ._sqlite_state import save_sync_state as _save_sync_state
from ._sqlite_state import write_sync_state as _write_sync_state
from .protocol import ChangeResult, Grant, StoredUser, StoreState, SyncedGroup, checked_data_version
from .rules import (
    GrantWrite,
    GroupWrite,
    MemberWrite,
    Mutation,
    UserTables,
    UserWrite,
    add_user_keys,
    batch_group_ids,
    batch_keys,
    batch_reads_grants,
    batch_reads_user_rows,
    checked_grant,
)

__all__ = ["SqliteUserStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

StateAfter = Callable[[Sequence[ChangeResult]], SyncState]

SCHEMA_VERSION: Final = 5

_GROUP_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS synced_groups (
    trust_site_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    site_ids TEXT NOT NULL DEFAULT '[]',
    retired INTEGER NOT NULL DEFAULT 0 CHECK (retired IN (0, 1)),
    PRIMARY KEY (trust_site_id, external_id)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS group_members (
    trust_site_id TEXT NOT NULL,
    group_external_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id),
    PRIMARY KEY (trust_site_id, group_external_id, user_id),
    FOREIGN KEY (trust_site_id, group_external_id) REFERENCES synced_groups (trust_site_id, external_id)
) WITHOUT ROWID""",
)

# One row: a number every write of users, grants and groups changes (data_version()).
_DATA_VERSION_TABLE: Final = "CREATE TABLE IF NOT EXISTS data_version (version INTEGER NOT NULL)"

# Version -> the statements that bring a store of that version to the next.
_MIGRATIONS: Final = {
    1: (
        "ALTER TABLE users ADD COLUMN deactivated_by_sync INTEGER NOT NULL DEFAULT 0 "
        "CHECK (deactivated_by_sync IN (0, 1))",
    ),
    2: (_SYNC_STATE_TABLE,),
    3: _GROUP_TABLES,
    4: (*DELTA_TABLES, _DATA_VERSION_TABLE),
}

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS calm_store_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    email_key TEXT NOT NULL,
    display_name TEXT NOT NULL,
    given_name TEXT,
    surname TEXT,
    external_id TEXT,
    active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    deactivated_by_sync INTEGER NOT NULL DEFAULT 0 CHECK (deactivated_by_sync IN (0, 1))
);
CREATE UNIQUE INDEX IF NOT EXISTS users_by_email_key ON users (email_key);
CREATE UNIQUE INDEX IF NOT EXISTS users_by_external_id ON users (external_id);
CREATE TABLE IF NOT EXISTS grants (
    user_id TEXT NOT NULL REFERENCES users (id),
    site_id TEXT NOT NULL,
    module TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('Member', 'Manager', 'Admin')),
    source TEXT NOT NULL CHECK (source IN ('manual', 'azure')),
    trust_site_id TEXT,
    PRIMARY KEY (user_id, site_id, module, source)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grants_synced_by_trust ON grants (trust_site_id) WHERE source = 'azure';
CREATE INDEX IF NOT EXISTS grants_manual_by_user ON grants (user_id) WHERE source = 'manual';
{_SYNC_STATE_TABLE};
{_GROUP_TABLES[0]};
{_GROUP_TABLES[1]};
{DELTA_TABLES[0]};
{DELTA_TABLES[1]};
{DELTA_TABLES[2]};
{DELTA_TABLES[3]};
{_DATA_VERSION_TABLE};
INSERT INTO data_version (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM data_version);
CREATE TABLE IF NOT EXISTS run_locks (
    trust_site_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
"""

_ROLES: Final = {role.value: role for role in Role}

_USER_COLUMNS: Final = "id, email, display_name, external_id, given_name, surname, active, deactivated_by_sync"
_INSERT_USER: Final = (
    "INSERT INTO users (id, email, email_key, display_name, given_name, surname, external_id, active, "
    "deactivated_by_sync) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_USER: Final = (
    "UPDATE users SET email = ?, email_key = ?, display_name = ?, given_name = ?, surname = ?, "
    "external_id = ?, active = ?, deactivated_by_sync = ? WHERE id = ?"
)
_UPSERT_GRANT: Final = (
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
_GROUP_COLUMNS: Final = "external_id, display_name, site_ids, retired"


def _setup_store(connection: sqlite3.Connection) -> None:
    with write_transaction(connection):
        connection.execute("CREATE TABLE IF NOT EXISTS calm_store_schema (version INTEGER NOT NULL)")
        row = connection.execute("SELECT version FROM calm_store_schema").fetchone()
        version = SCHEMA_VERSION if row is None else row[0]
        if version > SCHEMA_VERSION or (version < SCHEMA_VERSION and version not in _MIGRATIONS):
            # Refused before anything is written: a newer library's file is never misread.
            raise RuntimeError(
                f"the user store schema is version {version}; this calm-azure-sync reads version {SCHEMA_VERSION}"
            )
        while version < SCHEMA_VERSION:
            for statement in _MIGRATIONS[version]:
                connection.execute(statement)
            version += 1
        # Every table and index, IF NOT EXISTS: a new file gets them all, a
        # migrated one whatever its old version lacked.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                connection.execute(statement)
        if row is None:
            connection.execute("INSERT INTO calm_store_schema (version) VALUES (?)", (version,))
        elif row[0] != version:
            connection.execute("UPDATE calm_store_schema SET version = ?", (version,))


def _user_from_row(row: sqlite3.Row | tuple[Any, ...]) -> StoredUser:
    user_id, email, display_name, external_id, given_name, surname, active, deactivated_by_sync = row
    return StoredUser(
        user_id=user_id,
        email=email,
        display_name=display_name,
        external_id=external_id,
        given_name=given_name,
        surname=surname,
        active=bool(active),
        deactivated_by_sync=bool(deactivated_by_sync),
    )


def _among(values: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    """``(SQL, parameters)`` of a subquery listing ``values``, for ``column IN <SQL>``.

    One JSON parameter read by ``json_each``, except for text holding U+0000:
    ``json_each`` cuts a string at its first NUL (SQLite 3.40), so such values
    are bound one by one (they are rare; a batch names at most a few
    thousand keys, far below SQLite's limit of parameters).
    """
    unique = sorted(set(values))
    nul = [value for value in unique if "\x00" in value]
    if not nul:
        return "(SELECT value FROM json_each(?))", (json.dumps(unique),)
    plain = [value for value in unique if "\x00" not in value]
    return (
        "(SELECT value FROM json_each(?) UNION ALL VALUES " + ", ".join("(?)" for _ in nul) + ")",
        (json.dumps(plain), *nul),
    )


def _group_from_row(trust_site_id: str, row: tuple[Any, ...]) -> SyncedGroup:
    external_id, display_name, site_ids, retired = row
    return SyncedGroup(
        external_id=external_id,
        trust_site_id=trust_site_id,
        display_name=display_name,
        site_ids=tuple(json.loads(site_ids)),
        retired=bool(retired),
    )


def _load_tables(connection: sqlite3.Connection, trust_site_id: str, changes: Sequence[Change]) -> UserTables:
    """The rows ``changes`` can read or collide with, as UserTables that log mutations.

    Every user whose external id, id or email key a change names is loaded,
    with all its grants when a rule of the batch reads grants, so email
    uniqueness and "no grant left" are decided on complete facts. The synced
    groups the batch names are loaded with their memberships of those users
    (all of them for a group the batch retires).
    """
    external_ids, user_ids, email_keys = batch_keys(changes)
    tables = UserTables(log=[])
    by_external_id, by_id, by_email_key = _among(external_ids), _among(user_ids), _among(email_keys)
    if batch_reads_user_rows(changes):
        rows = connection.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE external_id IN {by_external_id[0]} "
            f"OR id IN {by_id[0]} OR email_key IN {by_email_key[0]}",
            (*by_external_id[1], *by_id[1], *by_email_key[1]),
        )
        for row in rows:
            tables.put_user(_user_from_row(row))
    else:
        # Only groups and memberships (most of a first import's batches):
        # which user carries each external id is all the rules read.
        for user_id, external_id in connection.execute(
            f"SELECT id, external_id FROM users WHERE external_id IN {by_external_id[0]}", by_external_id[1]
        ):
            tables.put_external_id(external_id, user_id)
    # A membership-only batch (most of a first import's) reads no grants.
    if tables.users and batch_reads_grants(changes):
        loaded = _among(tables.users)
        grant_rows = connection.execute(
            "SELECT user_id, site_id, module, source, role, trust_site_id FROM grants "
            f"WHERE user_id IN {loaded[0]}",
            loaded[1],
        )
        for user_id, site_id, module, source, role, trust in grant_rows:
            tables.put_grant(user_id, (site_id, module, source), (_ROLES[role], trust))
    group_ids = batch_group_ids(changes)
    if group_ids:
        _load_groups(connection, trust_site_id, changes, group_ids, tables)
    return tables


def _load_groups(
    connection: sqlite3.Connection,
    trust_site_id: str,
    changes: Sequence[Change],
    group_ids: set[str],
    tables: UserTables,
) -> None:
    named = _among(group_ids)
    for row in connection.execute(
        f"SELECT {_GROUP_COLUMNS} FROM synced_groups WHERE trust_site_id = ? AND external_id IN {named[0]}",
        (trust_site_id, *named[1]),
    ):
        tables.put_group(_group_from_row(trust_site_id, row))
    retiring = {change.external_id for change in changes if type(change) is RetireGroup}
    # Every key column is matched (an IN list each), so these are primary-key lookups.
    member_rows: list[tuple[str, str]] = []
    user_ids = tables.by_external_id.values()
    if user_ids:
        kept, members = _among(group_ids - retiring), _among(user_ids)
        member_rows += connection.execute(
            "SELECT group_external_id, user_id FROM group_members WHERE trust_site_id = ? "
            f"AND group_external_id IN {kept[0]} AND user_id IN {members[0]}",
            (trust_site_id, *kept[1], *members[1]),
        ).fetchall()
    if retiring:
        retired = _among(retiring)
        member_rows += connection.execute(
            "SELECT group_external_id, user_id FROM group_members WHERE trust_site_id = ? "
            f"AND group_external_id IN {retired[0]}",
            (trust_site_id, *retired[1]),
        ).fetchall()
    for group_id, user_id in member_rows:
        tables.put_member((trust_site_id, group_id), user_id)


def _bump_data_version(connection: sqlite3.Connection) -> None:
    """Count a write of user data (in the writing transaction): see ``SqliteUserStore.data_version``."""
    connection.execute("UPDATE data_version SET version = version + 1")


def _write(connection: sqlite3.Connection, mutations: Sequence[Mutation]) -> None:
    """Write logged mutations: user rows, then grant rows, group rows and membership rows, each in order.

    User rows go first so every grant's and membership's user exists; within each kind the
    order is kept, because an email freed by one update may be taken by the
    next row. Consecutive rows of one statement go through one executemany.
    """
    if mutations:
        _bump_data_version(connection)
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []

    def add(statement: str, parameters: tuple[Any, ...]) -> None:
        if runs and runs[-1][0] == statement:
            runs[-1][1].append(parameters)
        else:
            runs.append((statement, [parameters]))

    for mutation in mutations:
        if isinstance(mutation, UserWrite):
            user = mutation.user
            row = (email_key(user.email), user.display_name, user.given_name, user.surname, user.external_id)
            if mutation.new:
                add(_INSERT_USER, (user.user_id, user.email, *row, int(user.active), int(user.deactivated_by_sync)))
            else:
                add(_UPDATE_USER, (user.email, *row, int(user.active), int(user.deactivated_by_sync), user.user_id))
    for mutation in mutations:
        if isinstance(mutation, GrantWrite):
            site_id, module, source = mutation.key
            if mutation.value is None:
                add(_DELETE_GRANT, (mutation.user_id, site_id, module, source))
            else:
                role, trust_site_id = mutation.value
                add(_UPSERT_GRANT, (mutation.user_id, site_id, module, source, role.value, trust_site_id))
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


def _apply_batch(
    connection: sqlite3.Connection,
    trust_site_id: str,
    changes: Sequence[Change],
    fence: Fence | None = None,
    state_after: tuple[StateAfter, str] | None = None,
) -> list[ChangeResult]:
    """One batch in one transaction; with ``state_after`` (the function and its label) the sync state too."""
    with write_transaction(connection, fence):
        connection.execute("SAVEPOINT calm_batch")
        try:
            tables = _load_tables(connection, trust_site_id, changes)
            results = tables.apply(trust_site_id, changes)
            assert tables.log is not None
            _write(connection, tables.log)
        except (sqlite3.IntegrityError, UnicodeEncodeError):
            # UnicodeEncodeError: text the rules let through that UTF-8
            # cannot encode (they replace or refuse all they know of).
            connection.execute("ROLLBACK TO calm_batch")
            connection.execute("RELEASE calm_batch")
            results = _apply_one_by_one(connection, trust_site_id, changes)
        else:
            connection.execute("RELEASE calm_batch")
        if state_after is not None:
            # In the batch's transaction: the memory commits with the effects it accounts for.
            state_of, where = state_after
            _write_sync_state(connection, trust_site_id, state_of(results), where)
        return results


def _apply_one_by_one(
    connection: sqlite3.Connection, trust_site_id: str, changes: Sequence[Change]
) -> list[ChangeResult]:
    """The slow path, when the database refused a write the rules allowed.

    Each user's changes (consecutive changes with one external id) run under a
    savepoint, each change under a nested one, re-reading its rows first, so a
    refused change is rolled back alone and reported; the others apply.
    """
    results: list[ChangeResult] = []
    for _external_id, group in itertools.groupby(changes, key=lambda change: change.external_id):
        connection.execute("SAVEPOINT calm_user")
        for change in group:
            connection.execute("SAVEPOINT calm_change")
            try:
                tables = _load_tables(connection, trust_site_id, [change])
                result = tables.apply_one(trust_site_id, change)
                assert tables.log is not None
                _write(connection, tables.log)
            except (sqlite3.IntegrityError, UnicodeEncodeError) as exc:
                connection.execute("ROLLBACK TO calm_change")
                result = ChangeResult(change, f"the database refused the change: {clean_text(str(exc))}")
            connection.execute("RELEASE calm_change")
            results.append(result)
        connection.execute("RELEASE calm_user")
    return results


def _load_state(connection: sqlite3.Connection, trust_site_id: str) -> StoreState:
    # One read transaction, so the users and grants are one consistent snapshot.
    connection.execute("BEGIN")
    with collector_paused():
        try:
            users = {
                row[0]: _user_from_row(row)
                for row in connection.execute(f"SELECT {_USER_COLUMNS} FROM users")
            }
            synced = _load_synced_access(connection, trust_site_id, users)
            manual = frozenset(
                row[0]
                for row in connection.execute("SELECT DISTINCT user_id FROM grants WHERE source = 'manual'")
            )
            other_trusts = _load_other_trusts_users(connection, trust_site_id)
            groups = {
                row[0]: _group_from_row(trust_site_id, row)
                for row in connection.execute(
                    f"SELECT {_GROUP_COLUMNS} FROM synced_groups WHERE trust_site_id = ?", (trust_site_id,)
                )
            }
            members = _load_members(connection, trust_site_id, users, groups)
        finally:
            connection.execute("COMMIT")
    return StoreState(
        users=users,
        synced_access=synced,
        manual_access_user_ids=manual,
        other_access_user_ids=manual | other_trusts,
        groups=groups,
        group_members={group_id: frozenset(held) for group_id, held in members.items()},
    )


def _load_synced_access(
    connection: sqlite3.Connection, trust_site_id: str, users: dict[str, StoredUser]
) -> dict[str, dict[tuple[str, str], Role]]:
    """The trust's synced grants, by external id (one step of ``_load_state``)."""
    # No join: the users are in memory already, and mapping user id to
    # external id here is cheaper than SQLite looking each user up.
    # The partial index on trust_site_id holds the primary key after
    # it, so ORDER BY user_id costs no sort and each user's grants
    # arrive together: one dict lookup per user, not per grant
    # (a fifth less CPU in load() for 100k users and 450k grants).
    synced: dict[str, dict[tuple[str, str], Role]] = {}
    roles = _ROLES
    current_user: str | None = None
    access: dict[tuple[str, str], Role] = {}
    for user_id, site_id, module, role in connection.execute(
        "SELECT user_id, site_id, module, role FROM grants WHERE source = 'azure' AND trust_site_id = ? "
        "ORDER BY user_id",
        (trust_site_id,),
    ):
        if user_id != current_user:
            current_user = user_id
            external_id = users[user_id].external_id
            # Grants of a user without an external id are not synced access; collect and drop.
            access = {} if external_id is None else synced.setdefault(external_id, {})
        access[(site_id, module)] = roles[role]
    return synced


def _load_other_trusts_users(connection: sqlite3.Connection, trust_site_id: str) -> set[str]:
    """The user ids with synced access from another trust (one step of ``_load_state``)."""
    # Three index searches around this trust, not "<>" (a scan of
    # every grant): with one trust in the file they read nothing.
    return {
        row[0]
        for row in connection.execute(
            " UNION ALL ".join(
                f"SELECT user_id FROM grants WHERE source = 'azure' AND trust_site_id {test}"
                for test in ("< ?1", "> ?1", "IS NULL")
            ),
            (trust_site_id,),
        )
    }


def _load_members(
    connection: sqlite3.Connection,
    trust_site_id: str,
    users: dict[str, StoredUser],
    groups: dict[str, SyncedGroup],
) -> dict[str, set[str]]:
    """Each mirrored group's members, by external id (one step of ``_load_state``)."""
    members: dict[str, set[str]] = {group_id: set() for group_id in groups}
    # The primary key's order: each group's rows arrive together.
    current_group: str | None = None
    held: set[str] = set()
    for group_id, user_id in connection.execute(
        "SELECT group_external_id, user_id FROM group_members WHERE trust_site_id = ?", (trust_site_id,)
    ):
        if group_id != current_group:
            current_group, held = group_id, members.setdefault(group_id, set())
        external_id = users[user_id].external_id
        if external_id is not None:
            held.add(external_id)
    return members


def _add_user(connection: sqlite3.Connection, email: str, display_name: str, user_id: str | None) -> str:
    with write_transaction(connection):
        tables = UserTables(log=[])
        for row in connection.execute(
            f"SELECT {_USER_COLUMNS} FROM users WHERE email_key = ? OR id = ?", add_user_keys(email, user_id)
        ):
            tables.put_user(_user_from_row(row))
        new_id = tables.add_user(email, display_name, user_id)
        _write(connection, tables.log or [])
    return new_id


def _grant(connection: sqlite3.Connection, user_id: str, site_id: str, module: str, role: Role | str) -> None:
    parsed = checked_grant(site_id, module, role)
    with write_transaction(connection):
        if connection.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
            raise KeyError(f"no user with id {user_id!r}")
        connection.execute(_UPSERT_GRANT, (user_id, site_id, module, "manual", parsed.value, None))
        _bump_data_version(connection)


def _grants(connection: sqlite3.Connection, user_id: str) -> set[Grant]:
    _user(connection, user_id)
    return {
        Grant(site_id=site_id, module=module, role=Role(role), source=source)
        for site_id, module, role, source in connection.execute(
            "SELECT site_id, module, role, source FROM grants WHERE user_id = ?", (user_id,)
        )
    }


def _set_active(connection: sqlite3.Connection, user_id: str, active: bool) -> None:
    with write_transaction(connection):
        cursor = connection.execute(
            "UPDATE users SET active = ?, deactivated_by_sync = 0 WHERE id = ?", (int(active), user_id)
        )
        if cursor.rowcount == 0:
            raise KeyError(user_id)
        _bump_data_version(connection)


def _data_version(connection: sqlite3.Connection, where: str) -> int:
    return checked_data_version(connection.execute("SELECT version FROM data_version").fetchall(), where)


def _user(connection: sqlite3.Connection, user_id: str) -> StoredUser:
    row = connection.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        raise KeyError(f"no user with id {user_id!r}")
    return _user_from_row(row)


def _groups(connection: sqlite3.Connection, trust_site_id: str) -> list[SyncedGroup]:
    return [
        _group_from_row(trust_site_id, row)
        for row in connection.execute(
            f"SELECT {_GROUP_COLUMNS} FROM synced_groups WHERE trust_site_id = ? ORDER BY display_name, external_id",
            (trust_site_id,),
        )
    ]


def _group_members(connection: sqlite3.Connection, group_external_id: str, trust_site_id: str | None) -> frozenset[str]:
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


def _users(connection: sqlite3.Connection) -> list[StoredUser]:
    return [
        _user_from_row(row) for row in connection.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY rowid")
    ]


@attrs.define
class SqliteUserStore(AsyncClosing):
    """A :class:`~calm_azure_sync.UserStore` in one SQLite file, usable from several processes.

    ``SqliteUserStore("calm.db")`` creates the file and its schema on first
    use. Each :meth:`apply` is one transaction: a crash mid-import leaves no
    half-written user. ``busy_timeout_ms`` is how long a call waits for
    another process's write to finish. ``lock_lease`` is how long the run
    lock outlives a holder that stops renewing it (the holder renews it every
    quarter lease while it runs; see :meth:`run_lock`).

    Offers the same host helpers as :class:`~calm_azure_sync.InMemoryUserStore`,
    and is a :class:`~calm_azure_sync.SyncStateStore` (table ``sync_state``
    in the same file) and a :class:`~calm_azure_sync.DeltaCacheStore`
    (tables ``delta_meta``, ``delta_groups``, ``delta_members``, ``delta_users``).
    Close it when done: ``async with``, ``await store.aclose()``, or the
    synchronous :meth:`close`.
    """

    mirrors_groups: ClassVar[bool] = True
    """It persists synced groups and memberships, so the reconciler plans group changes for it."""

    path: str | os.PathLike[str]
    busy_timeout_ms: int = 30_000
    lock_lease: dt.timedelta = dt.timedelta(minutes=2)
    _db: ThreadedConnection = attrs.field(init=False)
    # trust -> the holder token of the run lock this object holds: every write of that trust checks it.
    _held: dict[str, str] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._db = ThreadedConnection(self.path, _setup_store, self.busy_timeout_ms)

    async def aclose(self) -> None:
        """Close the database connection, in a worker thread (it waits for a call in progress)."""
        await asyncio.to_thread(self._db.close)

    def close(self) -> None:
        """Close the database connection (synchronous: blocks until a call in progress ends)."""
        self._db.close()

    async def _run(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(connection, *args)`` in the worker thread; a database failure as a :class:`StoreError`."""
        try:
            return await self._db.run(fn, *args)
        except sqlite3.Error as error:
            raise StoreError(
                f"the SQLite user store {os.fspath(self.path)!r} failed to {what}: {clean_text(str(error))}"
            ) from error

    def _fence(self, trust_site_id: str) -> Fence | None:
        holder = self._held.get(trust_site_id)
        return None if holder is None else _lock_fence(trust_site_id, holder)

    async def load(self, trust_site_id: str) -> StoreState:
        """Every user, the synced grants of ``trust_site_id``, and who holds manual grants."""
        return await self._run(f"load trust {trust_site_id!r}", _load_state, checked_id("trust_site_id", trust_site_id))

    async def apply(self, trust_site_id: str, changes: Sequence[Change]) -> Sequence[ChangeResult]:
        """Apply ``changes`` in one transaction; one :class:`ChangeResult` per change, in order."""
        if not changes:
            return []
        return await self._run(
            f"apply changes to trust {trust_site_id!r}", _apply_batch, trust_site_id, changes,
            self._fence(trust_site_id),
        )

    async def apply_with_state(
        self, trust_site_id: str, changes: Sequence[Change], state_after: StateAfter
    ) -> Sequence[ChangeResult]:
        """Apply ``changes`` and save ``state_after(results)`` in one transaction (a :class:`~calm_azure_sync.StateWithChanges`)."""
        return await self._run(
            f"apply changes to trust {trust_site_id!r}", _apply_batch, trust_site_id, changes,
            self._fence(trust_site_id), (state_after, self._state_label(trust_site_id)),
        )

    async def check_run_lock(self, trust_site_id: str) -> None:
        """Raise :class:`~calm_azure_sync.RunLockLostError` if another import took this object's lock over.

        One primary-key read (a :class:`~calm_azure_sync.FencedStore`); at once outside a ``run_lock`` block.
        """
        holder = self._held.get(trust_site_id)
        if holder is not None:
            await self._run(f"check the run lock of trust {trust_site_id!r}", _check_holder, trust_site_id, holder)

    async def data_version(self) -> int:
        """A number every write of users, grants and groups through this store changes, in any process.

        It makes the store a :class:`~calm_azure_sync.VersionedStore`; writes
        to the sync state and the delta cache leave it as it is.
        """
        return await self._run("read the data version", _data_version, os.fspath(self.path))

    async def load_state(self, trust_site_id: str) -> SyncState:
        """The trust's saved :class:`~calm_azure_sync.SyncState` (``SyncState()`` when none was saved).

        Raises :class:`~calm_azure_sync.ConfigError` when the stored row cannot
        be read (corrupt, or written by a newer calm-azure-sync): never a reset.
        """
        return await self._run(
            f"load the sync state of trust {trust_site_id!r}", _load_sync_state, trust_site_id,
            self._state_label(trust_site_id),
        )

    async def save_state(self, trust_site_id: str, state: SyncState) -> None:
        """Replace the trust's state in one transaction (row ``sync_state``); ConfigError if it cannot be stored."""
        await self._run(
            f"save the sync state of trust {trust_site_id!r}", _save_sync_state, trust_site_id, state,
            self._state_label(trust_site_id), self._fence(trust_site_id),
        )

    async def load_delta(self, trust_site_id: str) -> DeltaCache | None:
        """The trust's delta cache, or ``None`` (none saved; rows unreadable or of another version: logged)."""
        where = f"the delta cache of trust {trust_site_id!r} in {os.fspath(self.path)}"
        return await self._run(f"load {where}", _sqlite_delta.load_delta, trust_site_id, where)

    async def load_delta_head(self, trust_site_id: str) -> DeltaHead | None:
        """The trust's delta cache head (meta row and tracked group ids): what a round needs to start."""
        where = f"the delta cache of trust {trust_site_id!r} in {os.fspath(self.path)}"
        return await self._run(f"load {where}", _sqlite_delta.load_delta_head, trust_site_id, where)

    async def save_delta(self, trust_site_id: str, write: DeltaCacheWrite) -> None:
        """Apply ``write`` to the trust's delta cache rows in one transaction."""
        await self._run(
            f"save the delta cache of trust {trust_site_id!r}", _sqlite_delta.save_delta, trust_site_id, write,
            self._fence(trust_site_id),
        )

    async def clear_delta(self, trust_site_id: str) -> None:
        """Drop the trust's delta cache rows."""
        await self._run(
            f"clear the delta cache of trust {trust_site_id!r}", _sqlite_delta.clear_delta, trust_site_id,
            self._fence(trust_site_id),
        )

    def _state_label(self, trust_site_id: str) -> str:
        return f"the sync state of trust {trust_site_id!r} in {os.fspath(self.path)}"

    @contextlib.asynccontextmanager
    async def run_lock(self, trust_site_id: str) -> AsyncIterator[None]:
        """Hold the import lock of ``trust_site_id`` across every process using this file.

        The lock is a row in ``run_locks`` naming its holder (a random token,
        the pid and the hostname) and a lease end. While held, the lease is
        renewed every quarter ``lock_lease``. Another holder gets
        :class:`~calm_azure_sync.ImportAlreadyRunningError` at once, unless
        the row's lease has ended or its pid is gone on this same host: then
        the lock is taken over (a crashed import never blocks the next one
        for longer than the lease). Released on exit. While held, this
        object's writes of the trust check the row inside their transaction:
        once another import took the lease over they raise
        :class:`~calm_azure_sync.RunLockLostError` and write nothing.
        """
        holder = uuid.uuid4().hex
        await self._run(f"take the run lock of trust {trust_site_id!r}", _acquire_lock, trust_site_id, holder, self.lock_lease)
        self._held[trust_site_id] = holder
        renewing = asyncio.create_task(self._keep_renewing(trust_site_id, holder))
        try:
            yield
        finally:
            self._held.pop(trust_site_id, None)
            renewing.cancel()
            # Releasing must never mask how the import ended: if it fails, the
            # lease lets the next import take the lock over.
            try:
                await renewing
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.warning("renewing the run lock of %s failed", trust_site_id, exc_info=True)
            try:
                await self._db.run(_release_lock, trust_site_id, holder)
            except Exception:
                logger.warning(
                    "releasing the run lock of %s failed; it expires with its lease", trust_site_id, exc_info=True
                )

    async def _keep_renewing(self, trust_site_id: str, holder: str) -> None:
        while True:
            await asyncio.sleep(self.lock_lease.total_seconds() / 4)
            try:
                still_ours = await self._db.run(_renew_lock, trust_site_id, holder, self.lock_lease)
            except sqlite3.Error as exc:
                # A busy database can delay one renewal; the next one may pass
                # well within the lease.
                logger.warning("could not renew the run lock of trust %r: %s", trust_site_id, exc)
                continue
            if not still_ours:
                logger.error("the run lock of trust %r was taken over by another import", trust_site_id)
                return

    async def add_user(self, email: str, display_name: str, *, user_id: str | None = None) -> str:
        """Add a manually invited user and return its id.

        Raises ``ValueError`` when another user has the email (in any case) or
        the id is taken.
        """
        return await self._run("add a user", _add_user, email, display_name, user_id)

    async def grant(self, user_id: str, site_id: str, module: str, role: Role | str) -> None:
        """Give ``user_id`` a manual grant; ``role`` may be a string (``"manager"``).

        Raises ``KeyError`` for an unknown user and ``ConfigError`` for an unknown role.
        """
        await self._run("grant access", _grant, user_id, site_id, module, role)

    async def grants(self, user_id: str) -> set[Grant]:
        """Every grant of ``user_id``, manual and azure. Raises ``KeyError`` for an unknown user."""
        return await self._run("read grants", _grants, checked_id("user_id", user_id))

    async def set_active(self, user_id: str, active: bool) -> None:
        """A person (not the sync) activates or deactivates ``user_id``; the sync never undoes it.

        Raises ``KeyError`` for an unknown user.
        """
        await self._run("change a user's activation", _set_active, user_id, active)

    async def user(self, user_id: str) -> StoredUser:
        """The user with ``user_id``. Raises ``KeyError`` when there is none."""
        return await self._run("read a user", _user, checked_id("user_id", user_id))

    async def users(self) -> list[StoredUser]:
        """Every user, in the order they were added."""
        return await self._run("read users", _users)

    async def groups(self, trust_site_id: str) -> list[SyncedGroup]:
        """The synced groups of ``trust_site_id`` (retired ones too), by display name."""
        return await self._run("read synced groups", _groups, checked_id("trust_site_id", trust_site_id))

    async def group_members(self, group_external_id: str, trust_site_id: str | None = None) -> frozenset[str]:
        """External ids of the synced group's members.

        A group id names one Azure group, but each trust mirrors its mapped
        groups on its own (their members are that trust's in-scope users):
        give ``trust_site_id`` for one trust's view; ``None`` joins every
        trust mirroring the group. Raises ``KeyError`` when none does.
        """
        return await self._run(
            "read group members",
            _group_members,
            checked_id("group_external_id", group_external_id),
            checked_optional_id("trust_site_id", trust_site_id),
        )
