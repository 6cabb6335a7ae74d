"""Folding a delta round into the kept direct memberships, and resolving a snapshot from them. Pure.

:func:`apply_delta` folds one :class:`~calm_azure_sync.directory.delta.DirectoryDelta`
into the kept memberships and users and prunes what no mapped group reaches;
:func:`snapshot_members` resolves each mapped group's users from them exactly
as a full read resolves nesting (breadth first, cycles allowed, each user
once); :func:`tracked_groups` names the kept groups a mapped group reaches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from .._gc import without_collector
from ..directory.delta import DirectoryDelta
from ..model import DirectoryUser, transitive_users

__all__ = ["Applied", "apply_delta", "resolve_members", "snapshot_members", "tracked_groups"]


def resolve_members(
    groups: Mapping[str, frozenset[str]], users: Mapping[str, DirectoryUser], group_id: str
) -> list[DirectoryUser]:
    """The users under ``group_id``, resolved from the kept direct memberships exactly as a full read would."""
    return transitive_users(group_id, groups, users, groups)


def _reachable(groups: Mapping[str, frozenset[str]], roots: Iterable[str]) -> tuple[set[str], set[str]]:
    """Group and member ids reachable from ``roots`` through the kept memberships."""
    seen_groups: set[str] = set()
    members: set[str] = set()
    pending = [root for root in roots if root in groups]
    while pending:
        current = pending.pop()
        if current in seen_groups:
            continue
        seen_groups.add(current)
        for member_id in groups.get(current, ()):
            members.add(member_id)
            if member_id in groups:
                pending.append(member_id)
    return seen_groups, members


@attrs.frozen
class Applied:
    """A delta folded into the cache, and what is still unknown."""

    groups: dict[str, frozenset[str]]
    users: dict[str, DirectoryUser]
    new_groups: frozenset[str]  # nested groups seen for the first time: read them from their start
    missing_users: frozenset[str]  # member ids with no cached fields: look them up


@without_collector  # hundreds of thousands of small objects: see _gc.py
def apply_delta(
    groups: Mapping[str, frozenset[str]],
    users: Mapping[str, DirectoryUser],
    delta: DirectoryDelta,
    mapped: Iterable[str],
) -> Applied:
    """Fold ``delta`` into the kept memberships and users; prune what no tracked group reaches."""
    kept_groups = dict(groups)
    removed_users = {removed.id for removed in delta.removed_users}
    for change in delta.groups:
        kept_groups[change.group_id] = change.apply(kept_groups.get(change.group_id, frozenset())) - removed_users
    for group_id in delta.removed_groups:
        kept_groups.pop(group_id, None)
    if removed_users:
        kept_groups = {group: members - removed_users for group, members in kept_groups.items()}
    added_groups = {member for change in delta.groups for member in change.added_groups}
    new_groups = frozenset(group for group in added_groups if group not in kept_groups and group not in delta.removed_groups)
    for group_id in new_groups:
        kept_groups[group_id] = frozenset()  # tracked from now on; its chain starts in the next round
    reachable_groups, members = _reachable(kept_groups, mapped)
    kept_groups = {group: ids for group, ids in kept_groups.items() if group in reachable_groups or group in new_groups}
    kept_users = {user_id: user for user_id, user in users.items() if user_id in members}
    for user in delta.users:
        if user.id in members:
            kept_users[user.id] = user
    for user_id in removed_users:
        kept_users.pop(user_id, None)
    missing = frozenset(m for m in members if m not in kept_users and m not in kept_groups and m not in removed_users)
    return Applied(kept_groups, kept_users, new_groups, missing)


@without_collector  # hundreds of thousands of small objects: see _gc.py
def snapshot_members(
    groups: Mapping[str, frozenset[str]], users: Mapping[str, DirectoryUser], mapped: Sequence[str]
) -> dict[str, list[DirectoryUser]]:
    """Each mapped group's users, resolved from the kept memberships."""
    return {group_id: resolve_members(groups, users, group_id) for group_id in mapped if group_id in groups}


def tracked_groups(groups: Mapping[str, frozenset[str]], mapped: Iterable[str]) -> set[str]:
    """The kept groups a mapped group reaches (a mapping removed leaves its groups untracked)."""
    return _reachable(groups, mapped)[0]
