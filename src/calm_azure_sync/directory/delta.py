"""Incremental reads: what changed in the directory since a cursor (API §8).

A :class:`DeltaDirectory` answers ``changes(cursor, group_ids)`` with a
:class:`DirectoryDelta` and a new cursor. The cursor is opaque, JSON-safe
data (a ``dict`` of strings, lists and numbers) that the caller keeps in its
sync state and passes back next time; only the directory that made it reads
it. :class:`~calm_azure_sync.GraphDirectory` implements the protocol with
Graph's ``groups/delta`` and ``users/delta``,
:class:`~calm_azure_sync.InMemoryDirectory` from its own change log.

What a delta holds, and how to apply it:

- ``users``: users created, changed or restored, with every selected field
  (the same fields ``group_members`` reads); ``removed_users``: users
  deleted, with Graph's reason (``"changed"``: soft-deleted, restorable for
  30 days; ``"deleted"``: gone for good). User changes are tenant-wide: Graph
  cannot filter ``users/delta`` by more than 50 ids.
- ``groups``: per tracked group, the **direct** members added and removed,
  users and nested groups apart (devices and other kinds are dropped).
  Graph has no delta of transitive members: the caller keeps the direct
  memberships and resolves nesting itself, and must track a nested group
  that appears in ``added_groups`` (pass its id in ``group_ids`` next time).
- ``removed_groups``: tracked groups that were deleted, or that did not
  appear at all in the first round of their chain (no such group).
- ``complete`` flags say when a delta is a *whole* listing rather than a
  change list: a chain read from its start lists everything it tracks, so
  what it does not list does not exist (``GroupDelta.complete``: the group's
  additions are its whole direct membership; ``users_complete``: ``users``
  is every user). Chains started with ``start="latest"`` list nothing at
  first and then only what changed.

A round is all or nothing: if any request fails, ``changes`` raises and
returns no cursor, so the caller keeps the old one (and treats the run as a
partial read). An expired or unusable cursor raises
:class:`~calm_azure_sync.DeltaExpiredError`: read in full, then start again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from ..errors import ConfigError
from ..model import DirectoryUser

__all__ = [
    "DeltaCursor",
    "DeltaDirectory",
    "DeltaStart",
    "DirectoryDelta",
    "GroupDelta",
    "RemovedUser",
    "round_group_ids",
]

DeltaCursor = dict[str, Any]
"""Opaque, JSON-safe state of a delta read: keep it, store it, pass it back unchanged."""

DeltaStart = Literal["initial", "latest"]
"""How a new chain starts: ``"initial"`` lists everything it tracks; ``"latest"`` starts from now."""


@attrs.frozen
class RemovedUser:
    """A user gone from the directory: ``reason`` ``"changed"`` (soft-deleted) or ``"deleted"`` (for good)."""

    id: str
    reason: str = "deleted"


@attrs.frozen
class GroupDelta:
    """The direct-membership changes of one tracked group in one round.

    ``complete``: this round read the group's chain from its start, so the
    additions are its whole direct membership and the removals are empty.
    """

    group_id: str
    added_users: frozenset[str] = frozenset()
    removed_users: frozenset[str] = frozenset()
    added_groups: frozenset[str] = frozenset()
    removed_groups: frozenset[str] = frozenset()
    complete: bool = False

    @property
    def changed(self) -> bool:
        """Whether the round changed anything in this group."""
        return bool(self.added_users or self.removed_users or self.added_groups or self.removed_groups)

    def apply(self, members: Iterable[str]) -> frozenset[str]:
        """The group's direct member ids after this delta, from the ids before it."""
        if self.complete:
            return self.added_users | self.added_groups
        return (frozenset(members) - self.removed_users - self.removed_groups) | self.added_users | self.added_groups


@attrs.frozen
class DirectoryDelta:
    """What changed since a cursor: users, removed users, direct memberships, removed groups.

    Everything is sorted by id, so two deltas of the same changes compare equal.
    """

    users: tuple[DirectoryUser, ...] = ()
    removed_users: tuple[RemovedUser, ...] = ()
    groups: tuple[GroupDelta, ...] = ()
    removed_groups: frozenset[str] = frozenset()
    users_complete: bool = False

    @property
    def complete(self) -> bool:
        """Whether this delta lists the whole state of everything it tracks (a full read)."""
        return self.users_complete and all(group.complete for group in self.groups)

    @property
    def empty(self) -> bool:
        """Whether nothing changed: no user, no removal, and no group listed at all.

        A group listed without member changes still counts: it is one the
        round says exists (created, or restored after a deletion, perhaps
        with no members), which the caller may have dropped as deleted.
        """
        return not (self.users or self.removed_users or self.removed_groups or self.groups)

    def group(self, group_id: str) -> GroupDelta | None:
        """The changes of one group, or ``None`` when it has no entry."""
        for group in self.groups:
            if group.group_id == group_id:
                return group
        return None


@runtime_checkable
class DeltaDirectory(Protocol):
    """A :class:`~calm_azure_sync.Directory` that can say what changed since a cursor."""

    async def changes(
        self,
        cursor: Mapping[str, Any] | None,
        group_ids: Iterable[str],
        *,
        start: DeltaStart = "initial",
    ) -> tuple[DirectoryDelta, DeltaCursor]:
        """The changes since ``cursor`` for ``group_ids`` and the tenant's users, and the next cursor.

        ``cursor=None`` starts every chain. A group in ``group_ids`` that the
        cursor does not track starts its own chain (``start``); a group the
        cursor tracks but ``group_ids`` leaves out is dropped from the new
        cursor, so tracking it again later starts its chain afresh (its whole
        membership is listed again). Raises :class:`~calm_azure_sync.DeltaExpiredError` when the
        cursor can no longer be used, and any other
        :class:`~calm_azure_sync.DirectoryError` when the round failed; in
        both cases there is no new cursor.
        """
        ...


def round_group_ids(group_ids: Iterable[str], start: str) -> list[str]:
    """The group ids a round of :meth:`DeltaDirectory.changes` tracks, each once in order; bad arguments refused.

    Raises :class:`~calm_azure_sync.ConfigError` for a ``start`` other than
    ``"initial"`` / ``"latest"``, one string instead of a collection, or an
    id that is not a non-empty string.
    """
    if start not in ("initial", "latest"):
        raise ConfigError(f"changes: start must be 'initial' or 'latest', got {start!r}")
    if isinstance(group_ids, str):
        raise ConfigError("changes: group_ids must be a collection of group ids, not one string")
    wanted: dict[str, None] = {}
    for group_id in group_ids:
        if not isinstance(group_id, str) or not group_id.strip():
            raise ConfigError(f"changes: every group id must be a non-empty string, got {group_id!r}")
        wanted.setdefault(group_id, None)
    return list(wanted)


def build_delta(
    users: Mapping[str, DirectoryUser | RemovedUser],
    groups: Mapping[str, GroupDelta],
    removed_groups: Iterable[str],
    *,
    users_complete: bool,
) -> DirectoryDelta:
    """A :class:`DirectoryDelta` from merged per-id results (the last word on each id wins)."""
    changed = tuple(sorted((u for u in users.values() if isinstance(u, DirectoryUser)), key=lambda u: u.id))
    removed = tuple(sorted((u for u in users.values() if isinstance(u, RemovedUser)), key=lambda u: u.id))
    gone = frozenset(removed_groups)
    kept = tuple(groups[group_id] for group_id in sorted(groups) if group_id not in gone)
    return DirectoryDelta(changed, removed, kept, gone, users_complete)
