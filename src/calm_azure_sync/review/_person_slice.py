"""One person's slice of a trust: the read, store state and memory an explanation plans over. Pure: no IO.

An explanation answers "what would the next run do for this person" by
running the planner itself over a world narrowed to them: each mapped group
with them in it or not (:func:`person_snapshot`), their store users and only
their access (:func:`person_state`), and the trust's pending hold with their
leaver entry (:func:`person_sync_state`). :func:`nesting_paths` names how a
mapped group reaches them; :func:`stored_user_for` finds whom ``who`` names.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from ..core.state import SyncState
from ..model import DirectorySnapshot, DirectoryUser, email_key
from ..policies.config import SyncConfig
from ..store.protocol import PeopleIndex, StoredUser, StoreState

__all__ = ["nesting_paths", "person_snapshot", "person_state", "person_sync_state", "stored_user_for"]


def nesting_paths(
    direct: Iterable[str], parents: Mapping[str, Sequence[str]], targets: Iterable[str]
) -> dict[str, tuple[str, ...]]:
    """For each target group reachable upward from the ``direct`` groups, the shortest path to it.

    ``parents`` maps a group to the groups it is directly in (as far as it
    was read). A path runs from the target down to a direct group
    (``(target, …, direct)``); a target reached by no known path is left out.
    """
    wanted = set(targets)
    came_from: dict[str, str | None] = {}
    queue: deque[str] = deque()
    for group in sorted(set(direct)):
        came_from[group] = None
        queue.append(group)
    while queue:
        current = queue.popleft()
        for parent in sorted(parents.get(current, ())):
            if parent not in came_from:
                came_from[parent] = current
                queue.append(parent)
    paths: dict[str, tuple[str, ...]] = {}
    for target in sorted(wanted):
        if target not in came_from:
            continue
        path = [target]
        step = came_from[target]
        while step is not None:
            path.append(step)
            step = came_from[step]
        paths[target] = tuple(path)
    return paths


def person_snapshot(
    config: SyncConfig,
    user: DirectoryUser | None,
    member_of: Iterable[str],
    *,
    unreadable: Mapping[str, str] | None = None,
    stale: Iterable[str] = (),
    group_names: Mapping[str, str] | None = None,
) -> DirectorySnapshot:
    """The snapshot a run would read, as far as one person goes: each mapped group with them or without.

    ``member_of``: the mapped groups that contain ``user`` (nesting
    resolved); ``unreadable``: mapped groups that could not be read.
    """
    unread = dict(unreadable or {})
    inside = set(member_of)
    members: dict[str, Sequence[DirectoryUser]] = {}
    for group_id in sorted(config.mappings.group_ids):
        if group_id in unread:
            continue
        members[group_id] = [user] if user is not None and group_id in inside else []
    return DirectorySnapshot(
        members=members, unreadable=unread, stale=frozenset(stale), group_names=dict(group_names or {})
    )


def person_state(state: StoreState, external_ids: Iterable[str], email: str | None) -> StoreState:
    """The store as far as one person goes: their store users (by object id or email) and only their access."""
    return PeopleIndex(state).rows(external_ids, [email_key(email)] if email else []).state


def person_sync_state(sync_state: SyncState, external_ids: Iterable[str]) -> SyncState:
    """The trust's memory as far as one person goes: the pending hold (so it covers their removals), their leaver entry.

    Baselines are left out: a group read for one person is no measure of its size.
    """
    ids = set(external_ids)
    return SyncState(
        hold=sync_state.hold, left_scope={ext: v for ext, v in sync_state.left_scope.items() if ext in ids}
    )


def stored_user_for(state: StoreState, who: str) -> StoredUser | None:
    """The store user ``who`` names: a store user id, else the user synced from that object id, else by email."""
    if who in state.users:
        return state.users[who]
    by_external = [user for user in state.users.values() if user.external_id is not None and user.external_id == who]
    if by_external:
        return by_external[0]
    if "@" in who:
        key = email_key(who)
        for user in sorted(state.users.values(), key=lambda stored: stored.user_id):
            if email_key(user.email) == key:
                return user
    return None
