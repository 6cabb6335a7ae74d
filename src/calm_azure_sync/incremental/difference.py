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
(:func:`may_narrow`, :func:`narrowing_for`). Anything else plans everyone, as before.

Who is touched (:func:`touched_people`): every user whose directory object
the round changed or removed, and for each mapped group that contains a
changed group (at any depth, before or after the round), the users who
entered or left it.

Who is planned (:class:`PeopleSearch`): the touched people, and everyone
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

from collections.abc import Iterable, Mapping, Sequence

import attrs

from .._gc import without_collector
from ..core.plan import Plan, Skip
from ..core.planner import TrustFigures
from ..model import DirectorySnapshot, DirectoryUser, email_key
from ..policies.config import SyncConfig
from ..store.protocol import PeopleRows, StoreState
from .cache import DeltaCache
from .fold import resolve_members
from .partial import ALWAYS_NARROW, MAX_SHARE, RoundPart, too_many
from .settled import Settled

__all__ = [
    "ALWAYS_NARROW",
    "MAX_SHARE",
    "Narrowing",
    "PeopleSearch",
    "PeopleSlice",
    "may_narrow",
    "merged_plan",
    "narrowing_for",
    "narrowing_from",
    "plan_inputs",
    "touched_people",
]


@without_collector  # hundreds of thousands of small objects: see _gc.py
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


class PeopleSearch:
    """Who a run plans, found by rounds of store look-ups: decides what to look up, never looks (no IO).

    Start from the touched people; :meth:`wanted` names the object ids and
    email keys to load (``None``: done), :meth:`found` takes the store's rows
    for them, until no round finds anyone new. An email key is a person's in
    the directory now, in the cache as it was, or in the store. Whoever else
    takes part in an email comparison without being touched is either
    synced (the store holds their email as the last run left it) or was
    left out for sharing one (the last run's record lists them, ``shared``):
    so the store and the record are the whole index, and the directory is
    never scanned.
    """

    def __init__(
        self,
        touched: Iterable[str],
        now: Mapping[str, DirectoryUser],
        before: Mapping[str, DirectoryUser],
        shared: Iterable[Skip],
    ) -> None:
        self._now, self._before = now, before
        self._shared: dict[str, list[str]] = {}
        for skip in shared:
            if skip.keeps_access and not skip.conflict and skip.email is not None:
                self._shared.setdefault(email_key(skip.email), []).append(skip.external_id)
        self.people: set[str] = set()
        self.keys: set[str] = set()
        self.user_ids: set[str] = set()
        self._asked: tuple[frozenset[str], frozenset[str]] | None = None
        self._add(touched, ())

    def _add(self, people: Iterable[str], keys: Iterable[str]) -> None:
        new_keys = set(keys)
        for person in people:
            if person in self.people:
                continue
            self.people.add(person)
            for known in (self._now.get(person), self._before.get(person)):
                if known is not None and (email := known.email) is not None:
                    new_keys.add(email_key(email))
        for key in new_keys - self.keys:
            self.keys.add(key)
            self._add(self._shared.get(key, ()), ())

    def known(self, users: Mapping[str, DirectoryUser]) -> None:
        """Users whose rows were loaded after they joined the search (read from part of the cache): their emails join it."""
        self._add(
            (),
            (
                email_key(user.email)
                for user in users.values()
                if user.id in self.people and user.email is not None
            ),
        )

    def wanted(self) -> tuple[frozenset[str], frozenset[str]] | None:
        """The object ids and email keys to load now, or ``None`` when the last rows found no one new."""
        asking = (frozenset(self.people), frozenset(self.keys))
        if asking == self._asked:
            return None
        self._asked = asking
        return asking

    def found(self, state: StoreState) -> None:
        """The store's rows for what :meth:`wanted` named: their people and emails join the search."""
        users = state.users.values()
        self.user_ids.update(stored.user_id for stored in users)
        self._add(
            (stored.external_id for stored in users if stored.external_id is not None),
            (email_key(stored.email) for stored in users),
        )

    @property
    def slice(self) -> PeopleSlice:
        return PeopleSlice(frozenset(self.people), frozenset(self.user_ids))


@without_collector  # hundreds of thousands of small objects: see _gc.py
def plan_inputs(
    people: PeopleSlice, snapshot: DirectorySnapshot, rows: PeopleRows, sizes: Mapping[str, int] | None = None
) -> tuple[DirectorySnapshot, StoreState, TrustFigures]:
    """The snapshot narrowed to ``people``, their store rows, and the whole trust's figures for the guards.

    ``sizes``: each mapped group's user count, when ``snapshot`` holds only
    some people already (read from part of the cache); else its own counts.
    """
    ids = people.external_ids
    members = {group: [user for user in users if user.id in ids] for group, users in snapshot.members.items()}
    figures = TrustFigures(
        synced_users=rows.synced_users,
        member_counts=dict(sizes)
        if sizes is not None
        else {group: len(users) for group, users in snapshot.members.items()},
    )
    return attrs.evolve(snapshot, members=members), rows.state.narrowed(ids, people.user_ids), figures


def merged_plan(plan: Plan, record: Settled, people: PeopleSlice, before: Mapping[str, DirectoryUser]) -> Plan:
    """The plan of some people, with what the last run's record says of everyone else.

    ``before``: the users the last run read (the cache it left), to know who
    of ``people`` it counted in scope. The plan's ``access_before`` is the
    planned people's (every change is theirs): its access table lists them.
    """
    ids = people.external_ids
    left_out = {skip.external_id for skip in record.skipped}
    kept = [skip for skip in record.skipped if skip.external_id not in ids]
    were_in_scope = sum(1 for person in ids if person in before and person not in left_out)
    return attrs.evolve(
        plan,
        skipped=tuple(sorted([*kept, *plan.skipped], key=lambda skip: skip.external_id)),
        users_in_scope=record.users_in_scope - were_in_scope + plan.users_in_scope,
    )


@attrs.frozen
class Narrowing:
    """A run that plans by difference: the last run's record, the users around the round, and who it touched.

    ``now`` and ``before``: the directory's users after the round and as the
    cache had them (the whole cache's, or those a
    :class:`~calm_azure_sync.incremental.partial.RoundPart` loaded so far,
    which it adds to as the search names people: ``part``).
    """

    record: Settled
    now: Mapping[str, DirectoryUser]
    before: Mapping[str, DirectoryUser]
    touched: frozenset[str]
    part: RoundPart | None = None

    def search(self) -> PeopleSearch:
        """The search for everyone this run plans (the caller loads the rows it names)."""
        return PeopleSearch(self.touched, self.now, self.before, self.record.skipped)

    def merged(self, plan: Plan, people: PeopleSlice) -> Plan:
        """The whole trust's plan: see :func:`merged_plan`."""
        return merged_plan(plan, self.record, people, self.before)


def narrowing_from(part: RoundPart, record: Settled) -> Narrowing:
    """The narrowing of a round read from part of the cache (its users grow as the search names people)."""
    return Narrowing(record, part.now, part.before, part.touched, part)


def may_narrow(record: Settled | None, key: str | None, config: SyncConfig) -> bool:
    """Whether the last run's ``record`` stands for this run's inputs (``key``, with the cursor the cache started from).

    ``key`` is ``None`` when the run can rely on nothing (a hold is pending, a
    confirmation). Never for a trust with several tenants (an account's
    tenant is the whole trust's question).
    """
    return record is not None and key is not None and record.key == key and len(config.tenant_ids) <= 1


def narrowing_for(
    folded: tuple[DeltaCache, DeltaCache] | None,
    record: Settled | None,
    config: SyncConfig,
    snapshot: DirectorySnapshot,
) -> Narrowing | None:
    """How this run plans by difference, or ``None``: it plans everyone.

    ``folded``: the delta cache before and after this run's round (``None``:
    the read folded none); ``record``: the last run's record when it stands
    for this run's inputs (:func:`may_narrow`, with the cursor the cache
    started from), else ``None``. Everyone is planned too when a mapped group
    could not be read, and when the round touched more than
    :data:`MAX_SHARE` of the users (and more than :data:`ALWAYS_NARROW`).
    """
    if folded is None or record is None or snapshot.unreadable:
        return None
    before, after = folded
    touched = touched_people(before, after, sorted(config.mappings.group_ids), snapshot.members)
    if too_many(len(touched), len(after.users)):
        return None
    return Narrowing(record, after.users, before.users, frozenset(touched))
