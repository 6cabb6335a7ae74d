"""Batch loading hints: which rows a batch of changes can read, so a store loads only those.

A database-backed store loads these rows into a
:class:`~calm_azure_sync.store.rules.UserTables` before applying a batch
(docs/stores.md, "The rules as a library"). Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .._text import clean_text, is_clean
from ..core.plan import (
    AddGroupMember,
    Assign,
    Change,
    CreateUser,
    DeactivateUser,
    LinkUser,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Unassign,
    UpdateUser,
    UpsertGroup,
)
from ..model import email_key

__all__ = [
    "BatchKeys",
    "add_user_keys",
    "batch_group_ids",
    "batch_keys",
    "batch_member_probes",
    "batch_reads_grants",
    "batch_reads_user_rows",
]


class BatchKeys(NamedTuple):
    """What a batch can read or collide with: load these rows (and every grant of those users)."""

    external_ids: set[str]
    user_ids: set[str]
    email_keys: set[str]


# Which change types name a store user id, and which carry an email: the rows
# a batch reads besides the users named by external id.
_NAMES_USER_ID: frozenset[type] = frozenset({LinkUser, RelinkUser, UpdateUser, DeactivateUser})
_CARRIES_EMAIL: frozenset[type] = frozenset({CreateUser, LinkUser, RelinkUser, UpdateUser})
# Group changes whose ``external_id`` is a group's, not a user's.
_NAMES_GROUP_AS_ITSELF: frozenset[type] = frozenset({UpsertGroup, RetireGroup})
_NAMES_MEMBERSHIP: frozenset[type] = frozenset({AddGroupMember, RemoveGroupMember})
_GROUP_RULES: frozenset[type] = _NAMES_GROUP_AS_ITSELF | _NAMES_MEMBERSHIP
# The only rules that read a user's grants.
_READS_GRANTS: frozenset[type] = frozenset({Assign, Unassign, DeactivateUser})


def batch_keys(changes: Iterable[Change]) -> BatchKeys:
    """The users ``changes`` can read or collide with, by external id, user id and email key.

    A store that loads exactly these users, with all their grants, into a
    :class:`UserTables` decides email uniqueness and "no grant left" on
    complete facts.
    """
    keys = BatchKeys(set(), set(), set())
    for change in changes:
        kind = type(change)
        if kind in _NAMES_GROUP_AS_ITSELF:
            continue
        _add_storable(keys.external_ids, change.external_id)
        if kind in _NAMES_USER_ID:
            _add_storable(keys.user_ids, change.user_id)  # type: ignore[union-attr]
        if kind in _CARRIES_EMAIL:
            keys.email_keys.add(email_key(clean_text(change.email)))  # type: ignore[union-attr]
    return keys


def _add_storable(keys: set[str], value: str) -> None:
    # An id that cannot be encoded names no stored row (the change carrying it fails alone in
    # the rules): looking it up would only make the database's driver raise for the whole batch.
    if is_clean(value):
        keys.add(value)


def add_user_keys(email: str, user_id: str | None) -> tuple[str, str | None]:
    """The email key and user id a store looks up before :meth:`UserTables.add_user` judges them.

    Both made storable: an id that cannot be encoded is looked up as ``None``
    (no row carries it), so the rules, not the database driver, refuse it.
    """
    return email_key(clean_text(email)), user_id if user_id is None or is_clean(user_id) else None


def batch_group_ids(changes: Iterable[Change]) -> set[str]:
    """The synced groups ``changes`` name (load them, in the batch's trust, with :meth:`UserTables.put_group`).

    Load each one's memberships of the users :func:`batch_keys` names too;
    for a group a ``RetireGroup`` names, load every membership (it clears them).
    """
    groups: set[str] = set()
    for change in changes:
        kind = type(change)
        if kind in _NAMES_GROUP_AS_ITSELF:
            _add_storable(groups, change.external_id)
        elif kind in _NAMES_MEMBERSHIP:
            _add_storable(groups, change.group_external_id)  # type: ignore[union-attr]
    return groups


def batch_member_probes(changes: Iterable[Change], holders: Mapping[str, str]) -> set[tuple[str, str]]:
    """The ``(group id, user id)`` memberships the membership rules of ``changes`` can read.

    ``holders`` maps external id to the store user carrying it when the batch
    loaded (:attr:`UserTables.by_external_id`). A membership change names its
    member by external id, and within a batch that id can move: a
    ``LinkUser`` or ``RelinkUser`` before it gives it to that change's user.
    So each membership change probes the loaded holder and every user an
    earlier link or relink of the batch hands the id to. A store that loads
    only these memberships (not every membership of the batch's users) then
    decides as one that loaded them all.
    """
    takers: dict[str, set[str]] = {}
    probes: set[tuple[str, str]] = set()
    for change in changes:
        kind = type(change)
        if kind is LinkUser or kind is RelinkUser:
            takers.setdefault(change.external_id, set()).add(change.user_id)  # type: ignore[union-attr]
        elif kind in _NAMES_MEMBERSHIP:
            group_id: str = change.group_external_id  # type: ignore[union-attr]
            holder = holders.get(change.external_id)
            if holder is not None:
                probes.add((group_id, holder))
            probes.update((group_id, user_id) for user_id in takers.get(change.external_id, ()))
    return probes


def batch_reads_user_rows(changes: Iterable[Change]) -> bool:
    """Whether any rule of ``changes`` reads a user's row; if not, the user ids suffice.

    Group and membership rules need only which store user carries an
    external id (:meth:`UserTables.put_external_id`), so a store may load just
    that for a batch of them.
    """
    return any(type(change) not in _GROUP_RULES for change in changes)


def batch_reads_grants(changes: Iterable[Change]) -> bool:
    """Whether any rule of ``changes`` reads grants; if not, a store may skip loading them.

    Membership batches (a first import has one per member of every mapped
    group) then read users only.
    """
    return any(type(change) in _READS_GRANTS for change in changes)
