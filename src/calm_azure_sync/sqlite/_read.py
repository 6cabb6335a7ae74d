"""The SQLite user store's reads: rows as values, the rows a batch touches, and a trust's whole state."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Final

from .._gc import collector_paused
from ..core.plan import Change, RetireGroup
from ..model import Role
from ..store.protocol import PeopleRows, StoredUser, StoreState, SyncedGroup
from ..store.rules import UserTables, batch_group_ids, batch_keys, batch_reads_grants, batch_reads_user_rows

__all__ = [
    "GROUP_COLUMNS",
    "USER_COLUMNS",
    "among",
    "group_from_row",
    "load_people",
    "load_state",
    "load_tables",
    "user_from_row",
]

_ROLES: Final = {role.value: role for role in Role}

USER_COLUMNS: Final = "id, email, display_name, external_id, given_name, surname, active, deactivated_by_sync, tenant_id"
GROUP_COLUMNS: Final = "external_id, display_name, site_ids, retired"


def user_from_row(row: sqlite3.Row | tuple[Any, ...]) -> StoredUser:
    user_id, email, display_name, external_id, given_name, surname, active, deactivated_by_sync, tenant_id = row
    return StoredUser(
        user_id=user_id,
        email=email,
        display_name=display_name,
        external_id=external_id,
        given_name=given_name,
        surname=surname,
        active=bool(active),
        deactivated_by_sync=bool(deactivated_by_sync),
        tenant_id=tenant_id,
    )


def among(values: Iterable[str]) -> tuple[str, tuple[str, ...]]:
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


def group_from_row(trust_site_id: str, row: tuple[Any, ...]) -> SyncedGroup:
    external_id, display_name, site_ids, retired = row
    return SyncedGroup(
        external_id=external_id,
        trust_site_id=trust_site_id,
        display_name=display_name,
        site_ids=tuple(json.loads(site_ids)),
        retired=bool(retired),
    )


def load_tables(connection: sqlite3.Connection, trust_site_id: str, changes: Sequence[Change]) -> UserTables:
    """The rows ``changes`` can read or collide with, as UserTables that log mutations.

    Every user whose external id, id or email key a change names is loaded,
    with all its grants when a rule of the batch reads grants, so email
    uniqueness and "no grant left" are decided on complete facts. The synced
    groups the batch names are loaded with their memberships of those users
    (all of them for a group the batch retires).
    """
    external_ids, user_ids, email_keys = batch_keys(changes)
    tables = UserTables(log=[])
    by_external_id, by_id, by_email_key = among(external_ids), among(user_ids), among(email_keys)
    if batch_reads_user_rows(changes):
        rows = connection.execute(
            f"SELECT {USER_COLUMNS} FROM users WHERE external_id IN {by_external_id[0]} "
            f"OR id IN {by_id[0]} OR email_key IN {by_email_key[0]}",
            (*by_external_id[1], *by_id[1], *by_email_key[1]),
        )
        for row in rows:
            tables.put_user(user_from_row(row))
    else:
        # Only groups and memberships (most of a first import's batches):
        # which user carries each external id is all the rules read.
        for user_id, external_id in connection.execute(
            f"SELECT id, external_id FROM users WHERE external_id IN {by_external_id[0]}", by_external_id[1]
        ):
            tables.put_external_id(external_id, user_id)
    # A membership-only batch (most of a first import's) reads no grants.
    if tables.users and batch_reads_grants(changes):
        loaded = among(tables.users)
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
    named = among(group_ids)
    for row in connection.execute(
        f"SELECT {GROUP_COLUMNS} FROM synced_groups WHERE trust_site_id = ? AND external_id IN {named[0]}",
        (trust_site_id, *named[1]),
    ):
        tables.put_group(group_from_row(trust_site_id, row))
    retiring = {change.external_id for change in changes if type(change) is RetireGroup}
    # Every key column is matched (an IN list each), so these are primary-key lookups.
    member_rows: list[tuple[str, str]] = []
    user_ids = tables.by_external_id.values()
    if user_ids:
        kept, members = among(group_ids - retiring), among(user_ids)
        member_rows += connection.execute(
            "SELECT group_external_id, user_id FROM group_members WHERE trust_site_id = ? "
            f"AND group_external_id IN {kept[0]} AND user_id IN {members[0]}",
            (trust_site_id, *kept[1], *members[1]),
        ).fetchall()
    if retiring:
        retired = among(retiring)
        member_rows += connection.execute(
            "SELECT group_external_id, user_id FROM group_members WHERE trust_site_id = ? "
            f"AND group_external_id IN {retired[0]}",
            (trust_site_id, *retired[1]),
        ).fetchall()
    for group_id, user_id in member_rows:
        tables.put_member((trust_site_id, group_id), user_id)


def load_state(connection: sqlite3.Connection, trust_site_id: str) -> StoreState:
    # One read transaction, so the users and grants are one consistent snapshot.
    connection.execute("BEGIN")
    with collector_paused():
        try:
            users = {
                row[0]: user_from_row(row)
                for row in connection.execute(f"SELECT {USER_COLUMNS} FROM users")
            }
            synced = _load_synced_access(connection, trust_site_id, users)
            manual = frozenset(
                row[0]
                for row in connection.execute("SELECT DISTINCT user_id FROM grants WHERE source = 'manual'")
            )
            other_trusts = _load_other_trusts_users(connection, trust_site_id)
            groups = {
                row[0]: group_from_row(trust_site_id, row)
                for row in connection.execute(
                    f"SELECT {GROUP_COLUMNS} FROM synced_groups WHERE trust_site_id = ?", (trust_site_id,)
                )
            }
            members = _load_members(connection, trust_site_id, users, groups)
        finally:
            connection.execute("COMMIT")
    return _state(users, synced, manual, other_trusts, groups, members)


def _state(
    users: dict[str, StoredUser],
    synced: dict[str, dict[tuple[str, str], Role]],
    manual: Iterable[str],
    other_trusts: Iterable[str],
    groups: dict[str, SyncedGroup],
    members: dict[str, set[str]],
) -> StoreState:
    """The state ``load`` and ``load_people`` return: other access is manual grants and other trusts' grants."""
    manual = frozenset(manual)
    return StoreState(
        users=users,
        synced_access=synced,
        manual_access_user_ids=manual,
        other_access_user_ids=manual.union(other_trusts),
        groups=groups,
        group_members={group_id: frozenset(held) for group_id, held in members.items()},
    )


def _load_synced_access(
    connection: sqlite3.Connection, trust_site_id: str, users: dict[str, StoredUser]
) -> dict[str, dict[tuple[str, str], Role]]:
    """The trust's synced grants, by external id (one step of ``load_state``)."""
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
    """The user ids with synced access from another trust (one step of ``load_state``)."""
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
    """Each mirrored group's members, by external id (one step of ``load_state``)."""
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



def load_people(
    connection: sqlite3.Connection, trust_site_id: str, external_ids: Iterable[str], email_keys: Iterable[str]
) -> PeopleRows:
    """Some people's rows and the trust's synced-user count, in one read transaction (``load_people``).

    Each read is an index search: users by their unique external id and
    email key, grants and memberships by primary key (every key column
    matched by an IN list), the count on the partial index of synced grants.
    """
    connection.execute("BEGIN")
    try:
        by_external, by_key = among(external_ids), among(email_keys)
        users = {
            row[0]: user_from_row(row)
            for row in connection.execute(
                f"SELECT {USER_COLUMNS} FROM users WHERE external_id IN {by_external[0]} OR email_key IN {by_key[0]}",
                (*by_external[1], *by_key[1]),
            )
        }
        ids = among(users)
        synced, manual, other = _people_grants(connection, trust_site_id, users, ids)
        groups = {
            row[0]: group_from_row(trust_site_id, row)
            for row in connection.execute(
                f"SELECT {GROUP_COLUMNS} FROM synced_groups WHERE trust_site_id = ?", (trust_site_id,)
            )
        }
        members: dict[str, set[str]] = {group_id: set() for group_id in groups}
        named = among(groups)
        for group_id, user_id in connection.execute(
            "SELECT group_external_id, user_id FROM group_members WHERE trust_site_id = ? "
            f"AND group_external_id IN {named[0]} AND user_id IN {ids[0]}",
            (trust_site_id, *named[1], *ids[1]),
        ):
            if (external_id := users[user_id].external_id) is not None:
                members[group_id].add(external_id)
        # Everyone with a synced grant here, less those without an external id (rare): two index searches.
        (synced_users,) = connection.execute(
            "SELECT (SELECT COUNT(DISTINCT user_id) FROM grants WHERE source = 'azure' AND trust_site_id = ?1) - "
            "(SELECT COUNT(DISTINCT g.user_id) FROM users u JOIN grants g ON g.user_id = u.id "
            "WHERE u.external_id IS NULL AND g.source = 'azure' AND g.trust_site_id = ?1)",
            (trust_site_id,),
        ).fetchone()
    finally:
        connection.execute("COMMIT")
    return PeopleRows(_state(users, synced, manual, other, groups, members), synced_users)


def _people_grants(
    connection: sqlite3.Connection, trust_site_id: str, users: dict[str, StoredUser], ids: tuple[str, tuple[str, ...]]
) -> tuple[dict[str, dict[tuple[str, str], Role]], set[str], set[str]]:
    """These users' synced access in the trust, and who of them holds manual or another trust's grants."""
    synced: dict[str, dict[tuple[str, str], Role]] = {}
    manual: set[str] = set()
    other: set[str] = set()
    for user_id, site_id, module, source, role, trust in connection.execute(
        f"SELECT user_id, site_id, module, source, role, trust_site_id FROM grants WHERE user_id IN {ids[0]}", ids[1]
    ):
        external_id = users[user_id].external_id
        if source == "manual":
            manual.add(user_id)
        elif trust != trust_site_id:
            other.add(user_id)
        elif external_id is not None:
            synced.setdefault(external_id, {})[(site_id, module)] = _ROLES[role]
    return synced, manual, other
