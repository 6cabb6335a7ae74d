"""Incremental sync: the delta cache, choosing the read mode, and a snapshot from kept memberships. Pure.

Graph has no delta of transitive members, so an incremental run keeps, in the
trust's sync state, the **direct** memberships of every tracked group (the
mapped groups and the groups nested in them) and the selected fields of the
users in them. A round of :meth:`DeltaDirectory.changes
<calm_azure_sync.directory.delta.DeltaDirectory.changes>` updates that cache;
the snapshot the planner sees is then resolved from it exactly as a full read
resolves nesting (breadth first, cycles allowed, each user once), so an
incremental plan equals a full one on the same directory, and the guards judge
it the same way.

When a run reads in full (:func:`choose_mode`): ``mode="full"``; no usable
cache (none yet, unreadable, of another version, another directory kind); the
mapped groups changed since the cache was made; the last full read is older
than ``full_resync_interval`` (a periodic full read heals drift, as Entra's own
provisioning does); or the directory cannot do deltas. The reason is in the
report and the Import Log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from .directory.delta import DirectoryDelta
from .errors import DirectoryError
from .model import DirectoryUser, transitive_users

__all__ = ["CACHE_VERSION", "DeltaCache", "ReadMode", "apply_delta", "choose_mode", "resolve_members"]

CACHE_VERSION = 1

ReadMode = Literal["full", "incremental", "auto"]


@attrs.frozen
class DeltaCache:
    """What an incremental run needs from the last one.

    ``cursor``: the directory's opaque delta cursor; ``groups``: tracked group
    id -> direct member ids (users and groups); ``users``: the cached users of
    the tracked groups; ``mapped``: the mapped group ids the cache was made
    for; ``full_read_at``: when the directory was last read in full.
    """

    cursor: Mapping[str, Any]
    groups: Mapping[str, frozenset[str]]
    users: Mapping[str, DirectoryUser]
    mapped: frozenset[str]
    full_read_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION,
            "cursor": dict(self.cursor),
            "groups": {group: sorted(members) for group, members in sorted(self.groups.items())},
            "users": [self.users[user_id].to_graph() for user_id in sorted(self.users)],
            "mapped": sorted(self.mapped),
            "full_read_at": self.full_read_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeltaCache | None:
        """The cache, or ``None`` when ``data`` is empty, of another version, or unreadable (read in full)."""
        if not data or data.get("version") != CACHE_VERSION:
            return None
        try:
            at = dt.datetime.fromisoformat(data["full_read_at"])
            if at.tzinfo is None:
                return None
            return cls(
                cursor=dict(data["cursor"]),
                groups={str(group): frozenset(map(str, members)) for group, members in data["groups"].items()},
                users={user.id: user for user in map(DirectoryUser.from_graph, data["users"])},
                mapped=frozenset(map(str, data["mapped"])),
                full_read_at=at,
            )
        except (KeyError, TypeError, ValueError, AttributeError, DirectoryError):
            return None


def choose_mode(
    requested: ReadMode,
    *,
    cache: DeltaCache | None,
    mapped: frozenset[str],
    supports_delta: bool,
    now: dt.datetime,
    full_resync_interval: dt.timedelta,
) -> tuple[Literal["full", "incremental"], str]:
    """The read this run makes, and why (for the report and the Import Log)."""
    if requested == "full":
        return "full", "full read requested"
    if not supports_delta:
        return "full", "the directory cannot read changes (no delta support)"
    if cache is None:
        return "full", "no usable delta state yet"
    if cache.mapped != mapped:
        return "full", "the mapped groups changed since the last read"
    if requested == "auto" and now - cache.full_read_at >= full_resync_interval:
        return "full", f"the last full read is older than {full_resync_interval}"
    return "incremental", "reading only what changed since the last run"


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
    """A delta folded into the cache: what is still unknown, and which groups went away."""

    groups: dict[str, frozenset[str]]
    users: dict[str, DirectoryUser]
    new_groups: frozenset[str]  # nested groups seen for the first time: read them from their start
    missing_users: frozenset[str]  # member ids with no cached fields: look them up
    removed_groups: frozenset[str]


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
    return Applied(kept_groups, kept_users, new_groups, missing, frozenset(delta.removed_groups))


def snapshot_members(
    groups: Mapping[str, frozenset[str]], users: Mapping[str, DirectoryUser], mapped: Sequence[str]
) -> dict[str, list[DirectoryUser]]:
    """Each mapped group's users, resolved from the kept memberships."""
    return {group_id: resolve_members(groups, users, group_id) for group_id in mapped if group_id in groups}
