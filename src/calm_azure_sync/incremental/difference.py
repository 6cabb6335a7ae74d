"""Planning by difference: an incremental run plans only the people its changes touched. Pure: no IO.

When may a run plan only some people? When the store is exactly as the last
run left it, and that run read incrementally and applied every change it
planned: planning everyone again would then change nothing for anyone the
directory did not change (the planner is a function of its inputs, and
idempotent). That run says so with a record
(:class:`~calm_azure_sync.incremental.settled.Settled`, ``quiet`` false)
whose key digests every plan input but the directory, the store's data
version *after* that run's own writes and the delta cursor it left. This
run plans by difference only when its own inputs give the same key: no
write by anyone since, no settings change, no hold, the same cursor
(:func:`by_difference`). Anything else plans everyone, as before.

Who is touched (:func:`touched_people`): every user whose directory object
the round changed or removed, and for each mapped group that contains a
changed group (at any depth, before or after the round), the users who
entered or left it.

Who is planned (:func:`people_to_plan`): the touched people, and everyone
who shares an email with one of them (in the directory now, as the cache had
it, or in the store), to a fixed point: the identity rules (link, relink,
refresh, conflict, a shared email) compare people by email, never anyone
else. The planner then runs as usual over the trust narrowed to them
(:func:`plan_inputs`), with the trust-wide figures the guards need
(:class:`~calm_azure_sync.core.planner.TrustFigures`), so every removal
still passes the one gate.

What the plan says of everyone else (:func:`merged_plan`): what the last
run's record says (their skips, the count in scope).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..core.plan import Plan
from ..core.planner import TrustFigures
from ..model import DirectorySnapshot, DirectoryUser, email_key
from ..policies.config import SyncConfig
from ..store.protocol import StoredUser, StoreState
from .cache import DeltaCache
from .fold import resolve_members
from .settled import Settled

__all__ = [
    "ALWAYS_NARROW",
    "MAX_SHARE",
    "Difference",
    "PeopleSlice",
    "by_difference",
    "difference_for",
    "merged_plan",
    "people_to_plan",
    "plan_inputs",
    "touched_people",
]

MAX_SHARE = 0.2
"""Above this share of the trust's users touched, a run plans everyone: narrowing would cost more than it saves."""
ALWAYS_NARROW = 50
"""Up to this many people touched, a run plans by difference whatever the trust's size."""


def by_difference(record: Settled | None, key: str | None, *, several_tenants: bool, unread: bool) -> bool:
    """Whether this run may plan by difference: the last run's record stands for this run's inputs (``key``).

    ``key`` is this run's key with the cursor its cache started from
    (``None``: the run can rely on nothing, e.g. a hold is pending). Not for a
    trust with several tenants (an account's tenant is the whole trust's
    question), nor when a mapped group could not be read.
    """
    return record is not None and key is not None and record.key == key and not several_tenants and not unread


def touched_people(
    before: DeltaCache, after: DeltaCache, mapped: Iterable[str], members_after: Mapping[str, Sequence[DirectoryUser]]
) -> set[str]:
    """The object ids whose directory side the round changed: their object, or which mapped groups hold them."""
    was = before.users.get
    touched = {uid for uid, user in after.users.items() if (old := was(uid)) is not user and old != user}
    touched.update(uid for uid in before.users if uid not in after.users)
    had = before.groups.get
    changed = {g for g, members in after.groups.items() if (kept := had(g)) is not members and kept != members}
    changed.update(g for g in before.groups if g not in after.groups)
    if not changed:
        return touched
    affected = _with_ancestors(changed, before.groups) | _with_ancestors(changed, after.groups)
    for group in mapped:
        if group in affected:
            then = {user.id for user in resolve_members(before.groups, before.users, group)}
            touched.update(then.symmetric_difference(user.id for user in members_after.get(group, ())))
    return touched


def _with_ancestors(groups: Iterable[str], direct: Mapping[str, frozenset[str]]) -> set[str]:
    """``groups`` and every group of ``direct`` that contains one of them, at any depth."""
    parents: dict[str, list[str]] = {}
    for group, members in direct.items():
        for member in members:
            if member in direct:
                parents.setdefault(member, []).append(group)
    found = set(groups)
    pending = list(found)
    while pending:
        for parent in parents.get(pending.pop(), ()):
            if parent not in found:
                found.add(parent)
                pending.append(parent)
    return found


@attrs.frozen
class PeopleSlice:
    """Whom a run plans: their object ids, and the store users found by their emails."""

    external_ids: frozenset[str]
    user_ids: frozenset[str]


def people_to_plan(
    touched: Iterable[str], now: Mapping[str, DirectoryUser], before: Mapping[str, DirectoryUser], state: StoreState
) -> PeopleSlice:
    """The touched people and everyone who shares an email with one of them, to a fixed point."""
    in_directory: dict[str, list[str]] = {}
    for user_id, user in now.items():
        if (email := user.email) is not None:
            in_directory.setdefault(email_key(email), []).append(user_id)
    in_store: dict[str, list[StoredUser]] = {}
    synced: dict[str, list[StoredUser]] = {}
    for stored in state.users.values():
        in_store.setdefault(email_key(stored.email), []).append(stored)
        if stored.external_id is not None:
            synced.setdefault(stored.external_id, []).append(stored)
    people = set(touched)
    user_ids: set[str] = set()
    keys_seen: set[str] = set()
    frontier = list(people)
    while frontier:
        keys: set[str] = set()
        for person in frontier:
            for known in (now.get(person), before.get(person)):
                if known is not None and (email := known.email) is not None:
                    keys.add(email_key(email))
            keys.update(email_key(stored.email) for stored in synced.get(person, ()))
        found: set[str] = set()
        for key in keys - keys_seen:
            found.update(in_directory.get(key, ()))
            for stored in in_store.get(key, ()):
                user_ids.add(stored.user_id)
                if stored.external_id is not None:
                    found.add(stored.external_id)
        keys_seen |= keys
        frontier = [person for person in found if person not in people]
        people.update(frontier)
    return PeopleSlice(frozenset(people), frozenset(user_ids))


def plan_inputs(
    people: PeopleSlice, snapshot: DirectorySnapshot, state: StoreState
) -> tuple[DirectorySnapshot, StoreState, TrustFigures]:
    """The snapshot and store narrowed to ``people``, and the whole trust's figures for the guards."""
    ids = people.external_ids
    members = {group: [user for user in users if user.id in ids] for group, users in snapshot.members.items()}
    figures = TrustFigures(
        synced_users=sum(1 for access in state.synced_access.values() if access),
        member_counts={group: len(users) for group, users in snapshot.members.items()},
    )
    return attrs.evolve(snapshot, members=members), state.narrowed(ids, people.user_ids), figures


def merged_plan(
    plan: Plan, record: Settled, people: PeopleSlice, before: Mapping[str, DirectoryUser], state: StoreState
) -> Plan:
    """The plan of some people, with what the last run's record says of everyone else.

    ``before``: the users the last run read (the cache it left), to know who
    of ``people`` it counted in scope; ``state``: the whole store, whose
    synced access the plan's reviews compare with.
    """
    ids = people.external_ids
    left_out = {skip.external_id for skip in record.skipped}
    kept = [skip for skip in record.skipped if skip.external_id not in ids]
    were_in_scope = sum(1 for person in ids if person in before and person not in left_out)
    return attrs.evolve(
        plan,
        skipped=tuple(sorted([*kept, *plan.skipped], key=lambda skip: skip.external_id)),
        users_in_scope=record.users_in_scope - were_in_scope + plan.users_in_scope,
        access_before=state.synced_access,
    )


@attrs.frozen
class Difference:
    """A run that plans by difference: the last run's record, and whom this run plans."""

    record: Settled
    people: PeopleSlice
    before: DeltaCache
    touched: int

    def inputs(self, snapshot: DirectorySnapshot, state: StoreState) -> tuple[DirectorySnapshot, StoreState, TrustFigures]:
        """The planner's inputs: see :func:`plan_inputs`."""
        return plan_inputs(self.people, snapshot, state)

    def merged(self, plan: Plan, state: StoreState) -> Plan:
        """The whole trust's plan: see :func:`merged_plan`."""
        return merged_plan(plan, self.record, self.people, self.before.users, state)


def difference_for(
    folded: tuple[DeltaCache, DeltaCache] | None,
    record: Settled | None,
    key_of: Callable[[Mapping[str, Any]], str | None],
    config: SyncConfig,
    snapshot: DirectorySnapshot,
    state: StoreState,
) -> Difference | None:
    """How this run plans by difference, or ``None``: it plans everyone.

    ``folded``: the delta cache before and after this run's round (``None``:
    the read folded none); ``key_of(cursor)``: this run's key with that cursor.
    """
    if folded is None or record is None:
        return None
    before, after = folded
    several = len(config.tenant_ids) > 1
    if not by_difference(record, key_of(before.cursor), several_tenants=several, unread=bool(snapshot.unreadable)):
        return None
    touched = touched_people(before, after, sorted(config.mappings.group_ids), snapshot.members)
    if len(touched) > max(ALWAYS_NARROW, MAX_SHARE * len(after.users)):
        return None
    return Difference(record, people_to_plan(touched, after.users, before.users, state), before, len(touched))
