"""Group mirroring: each mapped group as a synced group of the trust, and its in-scope members.

The planner's mirroring step (:func:`calm_azure_sync.core.planner.build_plan`,
when the store mirrors groups): every mapped group is upserted (its display
name, the sites it maps to), its members are diffed against the store's, and
a group whose mapping was removed is emptied and retired. A member removal is
a removal like an unassign, judged by :mod:`calm_azure_sync.core.guards`.
Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..model import DirectorySnapshot
from ..policies.config import SyncConfig
from ..store.protocol import StoreState
from .plan import AddGroupMember, GroupChange, RemoveGroupMember, RetireGroup, UpsertGroup

__all__ = ["group_changes"]


def group_changes(
    config: SyncConfig,
    snapshot: DirectorySnapshot,
    state: StoreState,
    members_now: Mapping[str, frozenset[str]],
    relinked: Mapping[str, str],
) -> list[GroupChange]:
    """Mirror every mapped group: upsert it, diff its in-scope members, retire unmapped ones.

    An unread group keeps its members as they are (nothing is known); its
    upsert still happens so a new mapping shows up at once.
    """
    sites: dict[str, set[str]] = {}
    for mapping in config.mappings.mappings:
        sites.setdefault(mapping.group_id, set()).add(mapping.site_id)
    changes: list[GroupChange] = []
    for group_id in sorted(sites):
        site_ids = tuple(sorted(sites[group_id]))
        name = snapshot.group_names.get(group_id)
        stored = state.groups.get(group_id)
        if name is None:
            name = stored.display_name if stored is not None else group_id
        if stored is None or stored.retired or stored.display_name != name or tuple(stored.site_ids) != site_ids:
            changes.append(UpsertGroup(group_id, name, site_ids))
    stored_members = state.group_members.get
    nobody: frozenset[str] = frozenset()
    for group_id in sorted(members_now):
        if group_id not in sites:
            continue
        had = stored_members(group_id, nobody)
        if relinked:
            had = frozenset(relinked.get(member, member) for member in had)
        now = members_now[group_id]
        if had == now:
            continue
        changes += [AddGroupMember(group_id, member) for member in sorted(now - had if had else now)]
        if had:
            changes += [RemoveGroupMember(group_id, member) for member in sorted(had - now)]
    for group_id in sorted(state.groups):
        if group_id not in sites and not state.groups[group_id].retired:
            # Retiring empties the group: each member's removal passes the gate first, like any other.
            had = state.group_members.get(group_id, frozenset())
            if relinked:
                had = frozenset(relinked.get(member, member) for member in had)
            changes.extend(RemoveGroupMember(group_id, member) for member in sorted(had))
            changes.append(RetireGroup(group_id))
    return changes
