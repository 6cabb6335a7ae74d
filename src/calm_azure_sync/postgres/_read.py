"""The PostgreSQL user store's reads: rows as values, a trust's whole state, and the rows a batch touches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, LiteralString

import attrs
import psycopg

from .._gc import collector_paused
from ..core.plan import Change, RetireGroup
from ..model import Role
from ..store.protocol import Grant, PeopleRows, StoredUser, StoreState, SyncedGroup
from ..store.rules import (
    UserTables,
    batch_group_ids,
    batch_keys,
    batch_member_probes,
    batch_reads_grants,
    batch_reads_user_rows,
)
from ._codec import from_db, from_db_list, from_db_optional, to_db, to_db_list, to_db_optional
from ._write import Query

__all__ = [
    "ROLES", "USER_COLUMNS", "all_users", "grants_of", "group_from_row", "group_members", "groups_of", "load_state",
    "load_tables", "user_by_id", "user_from_row",
]  # fmt: skip

ROLES: Final = {role.value: role for role in Role}

USER_COLUMNS: Final = (
    "id, email, display_name, external_id, given_name, surname, active, deactivated_by_sync, tenant_id"
)


def _each_key(rows: LiteralString, keys: LiteralString = "%b") -> LiteralString:
    """``rows`` (a SELECT naming ``k.v``) for each key of the array parameter ``keys``: ``x.*``.

    One index probe per key: the LATERAL subquery is kept from being
    flattened (OFFSET 0), so the planner cannot turn it into a scan. Asked as
    ``external_id = ANY(%b) OR …``, a batch's user read scanned all 100k users:
    27 ms for 900 keys instead of 5 ms. Not a rule for every read: at 5,000
    keys with several rows each (a person's grants or memberships) a probe per
    key cost as much as the scan or more (measured), so those stay ``= ANY``.
    """
    return "SELECT x.* FROM unnest(" + keys + "::text[]) AS k (v) CROSS JOIN LATERAL (" + rows + " OFFSET 0) AS x"


def _users_by(*columns: LiteralString) -> LiteralString:
    """The ids of the users whose ``columns`` (one array parameter each, in order) hold a key, as an array."""
    probes = [_each_key("SELECT id FROM {schema}.users WHERE " + column + " = k.v") for column in columns]
    return "ARRAY(" + " UNION ALL ".join(probes) + ")"


_SELECT_TOUCHED_USERS: Final = (
    "SELECT id, email, display_name, external_id, given_name, surname, active, deactivated_by_sync, tenant_id "
    "FROM {schema}.users WHERE id = ANY(" + _users_by("external_id", "id", "email_key") + ") ORDER BY id FOR UPDATE"
)
_SELECT_CARRIERS: Final = (
    "SELECT id, external_id FROM {schema}.users WHERE id = ANY(" + _users_by("external_id") + ") ORDER BY id FOR UPDATE"
)
_SELECT_GRANTS_OF: Final = "SELECT user_id, site_id, module, source, role, trust_site_id FROM {schema}.grants WHERE user_id = ANY(%b)"


def user_from_row(row: Sequence[Any]) -> StoredUser:
    user_id, email, display_name, external_id, given_name, surname, active, deactivated_by_sync, tenant_id = row
    return StoredUser(
        user_id=from_db(user_id),
        email=from_db(email),
        display_name=from_db(display_name),
        external_id=from_db_optional(external_id),
        given_name=from_db_optional(given_name),
        surname=from_db_optional(surname),
        active=active,
        deactivated_by_sync=deactivated_by_sync,
        tenant_id=from_db_optional(tenant_id),
    )


def group_from_row(trust_site_id: str, row: Sequence[Any]) -> SyncedGroup:
    external_id, display_name, site_ids, retired = row
    return SyncedGroup(
        external_id=from_db(external_id),
        trust_site_id=trust_site_id,
        display_name=from_db(display_name),
        site_ids=tuple(from_db_list(site_ids)),
        retired=retired,
    )


# -- the host helpers' reads -------------------------------------------------------


async def user_by_id(connection: psycopg.AsyncConnection[Any], q: Query, user_id: str) -> StoredUser:
    """The user with ``user_id``; ``KeyError`` when there is none."""
    cursor = await connection.execute(q(f"SELECT {USER_COLUMNS} FROM {{schema}}.users WHERE id = %s"), (to_db(user_id),))
    row = await cursor.fetchone()
    if row is None:
        raise KeyError(f"no user with id {user_id!r}")
    return user_from_row(row)


async def grants_of(connection: psycopg.AsyncConnection[Any], q: Query, user_id: str) -> set[Grant]:
    """Every grant of ``user_id`` (in the caller's transaction); ``KeyError`` for an unknown user."""
    await user_by_id(connection, q, user_id)
    cursor = await connection.execute(
        q("SELECT site_id, module, role, source FROM {schema}.grants WHERE user_id = %s"), (to_db(user_id),)
    )
    rows = await cursor.fetchall()
    return {
        Grant(site_id=from_db(site_id), module=from_db(module), role=ROLES[role], source=source)
        for site_id, module, role, source in rows
    }


async def groups_of(connection: psycopg.AsyncConnection[Any], q: Query, trust_site_id: str) -> list[SyncedGroup]:
    """The synced groups of ``trust_site_id``, by display name then id (by code point, not collation)."""
    cursor = await connection.execute(
        q("SELECT external_id, display_name, site_ids, retired FROM {schema}.synced_groups WHERE trust_site_id = %s"),
        (to_db(trust_site_id),),
    )
    groups = [group_from_row(trust_site_id, row) for row in await cursor.fetchall()]
    # Sorted here, by code point as the other stores do, not by the database's collation.
    return sorted(groups, key=lambda group: (group.display_name, group.external_id))


async def group_members(
    connection: psycopg.AsyncConnection[Any], q: Query, group_external_id: str, trust_site_id: str | None
) -> frozenset[str]:
    """External ids of the group's members (in the caller's transaction); ``KeyError`` when none mirrors it."""
    cursor = await connection.execute(
        q("SELECT trust_site_id FROM {schema}.synced_groups WHERE external_id = %s"), (to_db(group_external_id),)
    )
    stored = to_db_optional(trust_site_id)
    trusts = [row[0] for row in await cursor.fetchall() if stored in (None, row[0])]
    if not trusts:
        where = "any trust" if trust_site_id is None else f"trust {trust_site_id!r}"
        raise KeyError(f"no synced group {group_external_id!r} in {where}")
    cursor = await connection.execute(
        q(
            "SELECT u.external_id FROM {schema}.group_members m JOIN {schema}.users u ON u.id = m.user_id "
            "WHERE m.trust_site_id = ANY(%s) AND m.group_external_id = %s AND u.external_id IS NOT NULL"
        ),
        (trusts, to_db(group_external_id)),
    )
    return frozenset(from_db(row[0]) for row in await cursor.fetchall())


async def all_users(connection: psycopg.AsyncConnection[Any], q: Query) -> list[StoredUser]:
    """Every user, in the order they were added."""
    cursor = await connection.execute(q(f"SELECT {USER_COLUMNS} FROM {{schema}}.users ORDER BY seq"))
    return [user_from_row(row) for row in await cursor.fetchall()]


# -- a trust's whole state (load) ---------------------------------------------------


@attrs.frozen
class _StateRows:
    """The rows of one ``load``, read in one snapshot; decoded by ``_state_from_rows``."""

    users: list[Any]
    grants: list[Any]
    manual: list[Any]
    other: list[Any]
    groups: list[Any]
    members: list[Any]


async def _fetch(
    connection: psycopg.AsyncConnection[Any], q: Query, template: LiteralString, parameters: tuple[Any, ...] = ()
) -> list[Any]:
    cursor = await connection.execute(q(template), parameters)
    return await cursor.fetchall()


async def _read_state_rows(connection: psycopg.AsyncConnection[Any], q: Query, trust: str) -> _StateRows:
    """Every row ``load`` decodes, in one read-only snapshot (as SQLite's read transaction gives)."""
    async with connection.transaction():
        await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        users = await _fetch(connection, q, f"SELECT {USER_COLUMNS} FROM {{schema}}.users")
        grants = await _fetch(
            connection,
            q,
            "SELECT user_id, site_id, module, role FROM {schema}.grants "
            "WHERE source = 'azure' AND trust_site_id = %s ORDER BY user_id",
            (trust,),
        )
        manual = await _fetch(connection, q, "SELECT DISTINCT user_id FROM {schema}.grants WHERE source = 'manual'")
        # Synced access from other trusts, by the partial index around this trust (as SQLite
        # does), not a scan of every grant; manual access is added to it below.
        other = await _fetch(
            connection,
            q,
            "SELECT DISTINCT user_id FROM {schema}.grants WHERE source = 'azure' "
            "AND (trust_site_id < %s OR trust_site_id > %s OR trust_site_id IS NULL)",
            (trust, trust),
        )
        groups = await _fetch(
            connection,
            q,
            "SELECT external_id, display_name, site_ids, retired FROM {schema}.synced_groups "
            "WHERE trust_site_id = %s",
            (trust,),
        )
        members = await _fetch(
            connection,
            q,
            "SELECT group_external_id, user_id FROM {schema}.group_members WHERE trust_site_id = %s",
            (trust,),
        )
    return _StateRows(users, grants, manual, other, groups, members)


def _synced_access(
    grant_rows: Iterable[Any], stored_users: dict[Any, StoredUser]
) -> dict[str, dict[tuple[str, str], Role]]:
    """The trust's synced grants by external id (rows ordered by user id: one dict lookup per user)."""
    synced: dict[str, dict[tuple[str, str], Role]] = {}
    roles = ROLES
    current_user: str | None = None
    access: dict[tuple[str, str], Role] = {}
    for user_id, site_id, module, role in grant_rows:
        if user_id != current_user:
            current_user = user_id
            external_id = stored_users[user_id].external_id
            access = {} if external_id is None else synced.setdefault(external_id, {})
        access[(from_db(site_id), from_db(module))] = roles[role]
    return synced


def _state_from_rows(trust_site_id: str, rows: _StateRows) -> StoreState:
    with collector_paused():
        # Keyed by the stored id here, so grant and membership rows need no decoding to be matched.
        stored_users = {row[0]: user_from_row(row) for row in rows.users}
        manual = frozenset(from_db(row[0]) for row in rows.manual)
        synced = _synced_access(rows.grants, stored_users)
        groups = {from_db(row[0]): group_from_row(trust_site_id, row) for row in rows.groups}
        members: dict[str, set[str]] = {group_id: set() for group_id in groups}
        for group_id, user_id in rows.members:
            member_external_id = stored_users[user_id].external_id
            if member_external_id is not None:
                members.setdefault(from_db(group_id), set()).add(member_external_id)
        users = {user.user_id: user for user in stored_users.values()}
    return StoreState(
        users=users,
        synced_access=synced,
        manual_access_user_ids=manual,
        other_access_user_ids=manual.union(from_db(row[0]) for row in rows.other),
        groups=groups,
        group_members={group_id: frozenset(held) for group_id, held in members.items()},
    )


async def load_state(connection: psycopg.AsyncConnection[Any], q: Query, trust_site_id: str) -> StoreState:
    """Every user, the synced grants of ``trust_site_id``, and who holds other access (``PostgresUserStore.load``)."""
    rows = await _read_state_rows(connection, q, to_db(trust_site_id))
    return _state_from_rows(trust_site_id, rows)


async def load_people(
    connection: psycopg.AsyncConnection[Any],
    q: Query,
    trust_site_id: str,
    external_ids: Iterable[str],
    email_keys: Iterable[str],
) -> PeopleRows:
    """Some people's rows and the trust's synced-user count, in one snapshot (``PostgresUserStore.load_people``)."""
    trust = to_db(trust_site_id)
    async with connection.transaction():
        await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        users = await _fetch(
            connection, q, f"SELECT {USER_COLUMNS} FROM {{schema}}.users WHERE external_id = ANY(%s) OR email_key = ANY(%s)",
            (to_db_list(sorted(set(external_ids))), to_db_list(sorted(set(email_keys)))),
        )  # fmt: skip
        ids = [row[0] for row in users]
        grants = await _fetch(
            connection, q, "SELECT user_id, site_id, module, role FROM {schema}.grants "
            "WHERE source = 'azure' AND trust_site_id = %s AND user_id = ANY(%s) ORDER BY user_id", (trust, ids),
        )  # fmt: skip
        manual = await _fetch(
            connection, q, "SELECT DISTINCT user_id FROM {schema}.grants WHERE source = 'manual' AND user_id = ANY(%s)",
            (ids,),
        )  # fmt: skip
        other = await _fetch(
            connection, q, "SELECT DISTINCT user_id FROM {schema}.grants WHERE source = 'azure' AND user_id = ANY(%s) "
            "AND trust_site_id IS DISTINCT FROM %s", (ids, trust),
        )  # fmt: skip
        groups = await _fetch(
            connection, q, "SELECT external_id, display_name, site_ids, retired FROM {schema}.synced_groups "
            "WHERE trust_site_id = %s", (trust,),
        )  # fmt: skip
        members = await _fetch(
            connection, q, "SELECT group_external_id, user_id FROM {schema}.group_members "
            "WHERE trust_site_id = %s AND user_id = ANY(%s)", (trust, ids),
        )  # fmt: skip
        # Everyone with a synced grant here, less those without an external id (rare): an index-only scan
        # (Unique, no sort) and an index search; the join of every grant with its user was 4.7x slower at 100k.
        ((synced_users,),) = await _fetch(
            connection, q, "SELECT (SELECT COUNT(*) FROM (SELECT DISTINCT user_id FROM {schema}.grants "
            "WHERE source = 'azure' AND trust_site_id = %s) AS synced) - (SELECT COUNT(DISTINCT g.user_id) "
            "FROM {schema}.users u JOIN {schema}.grants g ON g.user_id = u.id "
            "WHERE u.external_id IS NULL AND g.source = 'azure' AND g.trust_site_id = %s)",
            (trust, trust),
        )  # fmt: skip
    state = _state_from_rows(trust_site_id, _StateRows(users, grants, manual, other, groups, members))
    return PeopleRows(state, int(synced_users))


# -- the rows one batch touches --------------------------------------------------------


async def load_tables(
    connection: psycopg.AsyncConnection[Any],
    q: Query,
    trust_site_id: str,
    changes: Sequence[Change],
) -> UserTables:
    """The rows ``changes`` can read or collide with, locked, as UserTables that log mutations.

    These reads are never prepared: a first import grows the tables from
    nothing within seconds, and a plan cached while they were empty (a
    nested loop over a "tiny" table) made one batch's membership read take
    600 ms at 100k users instead of 20 ms. Planned afresh, each read sees
    the tables' current size. A batch of only group and membership changes
    loads which user carries each external id, not the user rows
    (:func:`~calm_azure_sync.store.rules.batch_reads_user_rows`).
    """
    external_ids, user_ids, email_keys = batch_keys(changes)
    tables = UserTables(log=[])
    if batch_reads_user_rows(changes):
        cursor = await connection.execute(
            q(_SELECT_TOUCHED_USERS),
            (to_db_list(sorted(external_ids)), to_db_list(sorted(user_ids)), to_db_list(sorted(email_keys))),
            prepare=False,
        )
        for row in await cursor.fetchall():
            tables.put_user(user_from_row(row))
    else:
        # Only groups and memberships (most of a first import's batches): which user
        # carries each external id is all the rules read. Locked as the rows would be.
        cursor = await connection.execute(q(_SELECT_CARRIERS), (to_db_list(sorted(external_ids)),), prepare=False)
        for user_id, external_id in await cursor.fetchall():
            tables.put_external_id(from_db(external_id), from_db(user_id))
    # A membership-only batch (most of a first import's) reads no grants.
    if tables.users and batch_reads_grants(changes):
        cursor = await connection.execute(q(_SELECT_GRANTS_OF), (to_db_list(tables.users),), prepare=False)
        for user_id, site_id, module, source, role, trust in await cursor.fetchall():
            tables.put_grant(
                from_db(user_id), (from_db(site_id), from_db(module), source), (ROLES[role], from_db_optional(trust))
            )
    group_ids = batch_group_ids(changes)
    if group_ids:
        await _load_groups(connection, q, trust_site_id, changes, group_ids, tables)
    return tables

async def _load_groups(
    connection: psycopg.AsyncConnection[Any],
    q: Query,
    trust_site_id: str,
    changes: Iterable[Change],
    group_ids: set[str],
    tables: UserTables,
) -> None:
    trust = to_db(trust_site_id)
    cursor = await connection.execute(
        q(
            "SELECT external_id, display_name, site_ids, retired FROM {schema}.synced_groups "
            "WHERE trust_site_id = %s AND external_id = ANY(%s) ORDER BY external_id FOR UPDATE"
        ),
        (trust, to_db_list(sorted(group_ids))),
        prepare=False,
    )
    for row in await cursor.fetchall():
        tables.put_group(group_from_row(trust_site_id, row))
    retiring = to_db_list(sorted({change.external_id for change in changes if type(change) is RetireGroup}))
    rows: list[tuple[str, str]] = []
    # Only the memberships the batch's membership changes can read: (group, user)
    # pairs, each one primary-key probe, with the user a relink earlier in the batch
    # hands the member's id to. (All memberships of the batch's users,
    # "user_id = ANY(...)", cost 180-600 ms a batch at 100k users.) The probe is a
    # LATERAL subquery that OFFSET 0 keeps from being flattened, so it stays one index
    # probe per pair: as a plain join the planner hashed the whole table once it was
    # large (84 ms for 5,000 pairs at 200k memberships against 8 ms, growing with it).
    pairs = sorted(batch_member_probes(changes, tables.by_external_id))
    if pairs:
        cursor = await connection.execute(
            q(
                "SELECT m.g, m.u FROM unnest(%b::text[], %b::text[]) AS p (g, u) CROSS JOIN LATERAL ("
                "SELECT group_external_id AS g, user_id AS u FROM {schema}.group_members "
                "WHERE trust_site_id = %s AND group_external_id = p.g AND user_id = p.u OFFSET 0) AS m"
            ),
            (to_db_list([group for group, _ in pairs]), to_db_list([user for _, user in pairs]), trust),
            prepare=False,
        )
        rows += await cursor.fetchall()
    if retiring:
        cursor = await connection.execute(
            q(
                "SELECT group_external_id, user_id FROM {schema}.group_members WHERE trust_site_id = %s "
                "AND group_external_id = ANY(%s)"
            ),
            (trust, retiring),
            prepare=False,
        )
        rows += await cursor.fetchall()
    for group_id, user_id in rows:
        tables.put_member((trust_site_id, from_db(group_id)), from_db(user_id))
