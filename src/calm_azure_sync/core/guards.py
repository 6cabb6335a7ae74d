"""The removal guards: which planned removals a run holds back, and what the next run remembers. Pure.

Theory of operation
===================

A removal is an unassign, a downgrade, a deactivation or a group-member
removal. Each takes away one *slot* (a grant, an activation, a membership; see
:func:`~calm_azure_sync.core.plan.removal_slot`). Additions are never held.

The guards, in the order they are applied to one plan's removals:

1. **Pending hold** (remembered). Every removal whose slot the trust's pending
   :class:`~calm_azure_sync.Hold` covers is held again, whatever today's
   ratios say, unless the run confirms that hold by its id: then the removals
   that are exactly what the admin reviewed (and inside ``confirm_only``, when
   the confirmation is partial) are applied, and the rest stays held under a
   new id. Slots are keyed by *store user* (:func:`~calm_azure_sync.core.state.removal_key`),
   so a relinked or re-created account keeps its removals held. A held removal
   this run does not plan is carried in the hold unchanged, unless the plan
   shows Azure implies that access again: its user was in scope and decided
   (and, for a membership, its group was read completely). So a run in
   ``keep`` mode, a mode switch, an email conflict or an unread group forgets
   nothing; only a confirmation does. A hold left empty is cleared.
2. **Partial read** (decided afresh every run, never persisted). A mapped
   group that could not be read completely (an outage, a 404 stale mapping)
   holds the removals it could explain: unassigns and downgrades on the
   (site, module) pairs it maps to, its own member removals, and every
   deactivation. A user missing from an unread group is no evidence they left.
3. **Group shrank** (against remembered baselines). A mapped group read
   completely but with more than ``max_group_shrink_ratio`` of its baseline
   gone (baseline at least ``min_group_baseline``; any group that had members
   and reads empty) holds the new removals on its pairs and its member
   removals: Graph's advanced queries read an eventually consistent index.
4. **Mass removal**. When the new removals, together with the pending ones,
   would take access from more than ``max_removal_ratio`` of the trust's
   synced users and from at least ``min_removals_to_hold`` of them, or from
   every synced user of a trust of two or more, every new removal is held.

A user's deactivation is held whenever any other removal of theirs is held:
it only follows from them. Removals held only by a partial read are
*deferred*: they are not part of the hold (nothing to confirm), the next
complete read decides them again. Newly held removals join the pending hold; its id
changes whenever the held set grows (a confirmation names exactly what was
reviewed) and stays when removals drop out.

What the next run remembers (:func:`next_sync_state`): the hold; each mapped
group's baseline, refreshed from a complete read unless a guard disputes that
read (the group is in the pending hold's ``group_ids``, whatever the hold's
reason, or it shrank in a run that held removals: a shrink first held as a
partial read is judged again next run, not adopted as the new normal); and
who left scope (so ``deactivate`` mode converges
for users who left before it was switched on, and never re-deactivates a user
a person re-activated).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..policies.config import SyncConfig
from ..store.protocol import ChangeResult
from .plan import (
    Assign,
    Change,
    DeactivateUser,
    HoldReason,
    RemoveGroupMember,
    Unassign,
    UserLabel,
)
from .state import Hold, HoldKind, HoldScope, SyncState, new_hold_id, removal_key

__all__ = ["GuardInput", "GuardOutcome", "apply_guards", "next_sync_state"]

Pair = tuple[str, str]


def _no_owner(external_id: str) -> str | None:
    return None


def _no_label(external_id: str) -> UserLabel | None:
    return None


def _always(change: Change) -> bool:
    return True


@attrs.frozen
class GuardInput:
    """What the guards judge: one plan's removals and the facts around them.

    ``owner_of`` names the store user an external id belongs to in this plan
    (a relinked account's new id included); ``decided`` are the external ids
    whose access the plan decided (in scope, not a conflict); ``in_store``
    whether the slot a removal takes away is still there in the store
    (a removal already applied protects nothing any more). ``label_of``,
    ``group_names`` and ``site_names`` are how a new hold names what it holds.
    ``tenant_of`` gives the tenant of an external id: in a trust with several
    tenants, a group that could not be read or shrank explains only the
    removals of its own tenant's identities (API §13).
    """

    config: SyncConfig
    removals: Sequence[Change]
    pending: Hold | None
    confirm_hold: str | None
    unreadable_groups: Mapping[str, str]
    stale_groups: frozenset[str]
    member_counts: Mapping[str, int]  # complete reads only: group id -> users read
    baselines: Mapping[str, int]
    synced_users: int
    run_id: str
    now: dt.datetime
    confirm_only: HoldScope | None = None
    owner_of: Callable[[str], str | None] = _no_owner
    decided: frozenset[str] = frozenset()
    in_store: Callable[[Change], bool] = _always
    label_of: Callable[[str], UserLabel | None] = _no_label
    group_names: Mapping[str, str] = attrs.field(factory=dict)
    site_names: Mapping[str, str] = attrs.field(factory=dict)
    tenant_of: Callable[[str], str | None] = _no_owner


@attrs.frozen
class GuardOutcome:
    """The guards' verdict.

    ``held`` are the planned removals not applied (in plan order); ``reason``
    the main reason; ``hold`` the pending hold after this run (``None``:
    nothing is pending); ``hold_cleared`` the id of a hold this run cleared;
    ``confirmed`` the held removals a confirmation releases in this run;
    ``deferred`` the removals held only by a partial read (not in the hold);
    ``shrunk_groups`` the groups that tripped the shrink guard;
    ``stale_held`` the removals each stale mapping keeps held.
    """

    held: tuple[Change, ...]
    reason: HoldReason | None
    hold: Hold | None
    hold_cleared: str | None
    shrunk_groups: tuple[str, ...]
    stale_held: Mapping[str, int]
    confirmed: tuple[Change, ...] = ()
    deferred: tuple[Change, ...] = ()


def pairs_by_group(config: SyncConfig) -> dict[str, set[Pair]]:
    """Each mapped group's (site, module) pairs."""
    pairs: dict[str, set[Pair]] = {}
    for mapping in config.mappings.mappings:
        pairs.setdefault(mapping.group_id, set()).update((mapping.site_id, module) for module in mapping.roles)
    return pairs


def _explained_by(change: Change, pairs: set[Pair], groups: Iterable[str]) -> bool:
    """Whether an unread or shrunk group could explain this removal."""
    if isinstance(change, (Assign, Unassign)):
        return (change.site_id, change.module) in pairs
    if isinstance(change, RemoveGroupMember):
        return change.group_external_id in groups
    return False


@attrs.define
class _Owners:
    """Store-user keys of external ids, for this plan and the pending hold."""

    owner_of: Callable[[str], str | None]
    remembered: Mapping[str, str]
    cache: dict[str, str | None] = attrs.field(factory=dict)

    def owner(self, external_id: str) -> str | None:
        if external_id not in self.cache:
            found = self.owner_of(external_id)
            self.cache[external_id] = found if found is not None else self.remembered.get(external_id)
        return self.cache[external_id]

    def key(self, change: Change) -> tuple[str, ...]:
        owner = self.owner(change.external_id)
        return removal_key(change, {change.external_id: owner} if owner is not None else {})

    def same(self, held: Change, now: Change) -> bool:
        """The same removal, whichever Entra object id the store user has now."""
        if held == now:
            return True
        if type(held) is not type(now) or self.key(held) != self.key(now):
            return False
        return attrs.evolve(held, external_id=now.external_id) == now


def apply_guards(facts: GuardInput) -> GuardOutcome:
    """Judge ``facts.removals``; see the module docstring for the rules (numbered as there)."""
    pending = facts.pending
    # keep mode removes nothing: a confirmation applies nothing and forgets nothing then.
    keep = facts.config.removal.mode == "keep"
    confirmed = pending is not None and facts.confirm_hold == pending.id and not keep
    owners = _Owners(facts.owner_of, pending.owners if pending is not None else {})
    pairs = pairs_by_group(facts.config)
    partial, stale_held = _partial_read(facts, pairs)
    judged = _against_pending(facts, partial, confirmed, owners, keep)
    shrunk, newly_held = _group_shrank(facts, pairs, judged.new)
    pending_now = [*judged.kept, *judged.released]
    _mass_removal(facts, judged.new, pending_now, judged.carried, newly_held, owners)
    _hold_deactivations_with_their_removals(facts, judged, {*partial, *judged.kept}, newly_held)

    hold = _next_hold(facts, confirmed, judged, newly_held, shrunk, owners, pairs)
    held_indexes = {*partial, *judged.kept, *newly_held}
    held = tuple(facts.removals[index] for index in sorted(held_indexes))
    in_hold = {*judged.kept, *newly_held}
    reason: HoldReason | None = None
    if hold is not None and (judged.kept or newly_held):
        reason = hold.reason
    elif partial:
        reason = "partial_read"
    return GuardOutcome(
        held=held,
        reason=reason,
        hold=hold,
        hold_cleared=pending.id if pending is not None and hold is None else None,
        shrunk_groups=tuple(shrunk),
        stale_held=stale_held,
        confirmed=tuple(facts.removals[index] for index in sorted(judged.released)),
        deferred=tuple(facts.removals[index] for index in sorted(partial - in_hold)),
    )


def _explained_in_tenant(
    facts: GuardInput, change: Change, pairs: Mapping[str, set[Pair]], groups: Sequence[str], union: set[Pair]
) -> bool:
    """Whether the groups could explain ``change`` (any of them a deactivation): those of its user's tenant
    only, when the trust has several; an account of no known tenant may be explained by any, to be safe."""
    if len(facts.config.tenant_ids) > 1 and (tenant := facts.tenant_of(change.external_id)) is not None:
        groups = [group for group in groups if facts.config.tenant_of(group) == tenant]
        union = _union_of_pairs(pairs, groups)
    return bool(groups) if isinstance(change, DeactivateUser) else _explained_by(change, union, groups)


def _union_of_pairs(pairs: Mapping[str, set[Pair]], groups: Iterable[str]) -> set[Pair]:
    found: set[Pair] = set()
    for group in groups:
        found |= pairs.get(group, set())
    return found


def _partial_read(facts: GuardInput, pairs: Mapping[str, set[Pair]]) -> tuple[set[int], dict[str, int]]:
    """2. What an unread group could explain (and every deactivation); per stale mapping, how many."""
    unread = set(facts.unreadable_groups)
    stale_held = dict.fromkeys(sorted(facts.stale_groups), 0)
    partial: set[int] = set()
    if not unread:
        return partial, stale_held
    unread_pairs = _union_of_pairs(pairs, unread)
    unread_groups = sorted(unread)
    for index, change in enumerate(facts.removals):
        if _explained_in_tenant(facts, change, pairs, unread_groups, unread_pairs):
            partial.add(index)
        for group in facts.stale_groups:
            if _explained_by(change, pairs.get(group, set()), (group,)):
                stale_held[group] += 1
    return partial, stale_held


@attrs.define
class _Judged:
    """The planned removals against the pending hold (indexes into ``removals``)."""

    kept: dict[int, Change] = attrs.field(factory=dict)  # stay in the hold
    released: set[int] = attrs.field(factory=set)  # confirmed: applied now
    new: list[int] = attrs.field(factory=list)  # not covered, not held by a partial read
    carried: list[Change] = attrs.field(factory=list)  # held, not planned now, not shown to be over
    grown: bool = False  # a held slot now plans a different removal
    forgot: bool = False  # a confirmation let go of held removals this run does not plan


def _against_pending(
    facts: GuardInput, partial: set[int], confirmed: bool, owners: _Owners, keep: bool
) -> _Judged:
    """1. The pending hold: re-held, released by a confirmation of exactly what was reviewed, or carried."""
    judged = _Judged()
    pending = facts.pending
    if pending is None:
        judged.new = [index for index in range(len(facts.removals)) if index not in partial]
        return judged
    scope = facts.confirm_only

    def confirms(change: Change) -> bool:
        return confirmed and (scope is None or pending.in_scope(change, scope))

    pending_by_key = {owners.key(change): change for change in pending.changes}
    planned: set[tuple[str, ...]] = set()
    for index, change in enumerate(facts.removals):
        key = owners.key(change)
        planned.add(key)
        held_change = pending_by_key.get(key)
        if held_change is None:
            if index not in partial:
                judged.new.append(index)
        elif owners.same(held_change, change) and index not in partial and confirms(held_change):
            judged.released.add(index)
        else:
            judged.kept[index] = change
            judged.grown = judged.grown or not owners.same(held_change, change)
    unplanned = [change for key, change in pending_by_key.items() if key not in planned]
    if unplanned:
        over = _shown_over(facts, owners, keep)
        for change in unplanned:
            if over(change):
                continue  # Azure implies this access again: it drops out
            if confirms(change):
                judged.forgot = True  # confirmed, but nothing to apply now
                continue
            judged.carried.append(change)
    return judged


def _shown_over(facts: GuardInput, owners: _Owners, keep: bool) -> Callable[[Change], bool]:
    """Whether this run shows that a held removal it does not plan is over: gone from the store,
    or no longer implied by Azure (its user decided in scope; a membership's group read completely)."""
    if keep:
        return lambda change: not facts.in_store(change)
    decided = {owners.owner(external_id) or f"azure:{external_id}" for external_id in facts.decided}

    def over(change: Change) -> bool:
        if not facts.in_store(change):
            return True  # already gone from the store (applied, say, before a crash): nothing to protect
        if (owners.owner(change.external_id) or f"azure:{change.external_id}") not in decided:
            return False
        if isinstance(change, RemoveGroupMember):
            return change.group_external_id in facts.member_counts
        return True

    return over


def _group_shrank(
    facts: GuardInput, pairs: Mapping[str, set[Pair]], new: Sequence[int]
) -> tuple[list[str], dict[int, HoldKind]]:
    """3. The groups that shrank against their baselines, and the new removals they explain."""
    policy = facts.config.removal
    shrunk = sorted(
        group for group, count in facts.member_counts.items() if policy.group_shrank(facts.baselines.get(group), count)
    )
    newly_held: dict[int, HoldKind] = {}
    if shrunk:
        shrunk_pairs = _union_of_pairs(pairs, shrunk)
        for index in new:
            change = facts.removals[index]
            if not isinstance(change, DeactivateUser) and _explained_in_tenant(facts, change, pairs, shrunk, shrunk_pairs):
                newly_held[index] = "group_shrank"
    return shrunk, newly_held


def _mass_removal(
    facts: GuardInput,
    new: Sequence[int],
    pending: Sequence[int],
    carried: Sequence[Change],
    newly_held: dict[int, HoldKind],
    owners: _Owners,
) -> None:
    """4. The new removals judged together with the pending ones; when they trip, all new ones are held."""
    if not new:
        return
    changes = [*(facts.removals[index] for index in (*new, *pending)), *carried]
    losing = {owners.owner(change.external_id) or change.external_id for change in changes}
    if facts.config.removal.should_hold(len(losing), facts.synced_users):
        for index in new:
            newly_held.setdefault(index, "mass_removal")


def _hold_deactivations_with_their_removals(
    facts: GuardInput, judged: _Judged, held: set[int], newly_held: dict[int, HoldKind]
) -> None:
    """A deactivation follows from the user's other removals: held whenever one of them is."""
    held_users = {facts.removals[index].external_id for index in (*held, *newly_held)}
    held_users.update(change.external_id for change in judged.carried)
    reason: HoldKind = facts.pending.reason if facts.pending is not None else "mass_removal"
    for index in judged.new:
        change = facts.removals[index]
        if isinstance(change, DeactivateUser) and change.external_id in held_users:
            newly_held.setdefault(index, reason)


def _next_hold(
    facts: GuardInput,
    confirmed: bool,
    judged: _Judged,
    newly_held: Mapping[int, HoldKind],
    shrunk: Sequence[str],
    owners: _Owners,
    pairs: Mapping[str, set[Pair]],
) -> Hold | None:
    """The hold this run leaves pending."""
    pending = facts.pending
    indexes = sorted({*judged.kept, *newly_held})
    changes = (*(facts.removals[index] for index in indexes), *judged.carried)
    if not changes:
        return None
    from_pending = bool(judged.kept or judged.carried)
    if pending is not None and from_pending:
        reason: HoldKind = pending.reason
    else:
        reason = "group_shrank" if "group_shrank" in newly_held.values() else "mass_removal"
    group_ids = (*(pending.group_ids if pending is not None and from_pending else ()), *shrunk)
    described = _described(facts, changes, pending, owners, pairs, group_ids)
    if pending is not None and not confirmed and not newly_held and not judged.grown:
        # Only drop-outs (or nothing) since the admin last saw it: the same hold.
        return attrs.evolve(pending, changes=changes, **described)
    return Hold(
        id=new_hold_id(),
        trust_site_id=facts.config.trust_site_id,
        reason=reason,
        changes=changes,
        created_at=facts.now,
        run_id=facts.run_id,
        group_ids=group_ids,
        **described,
    )


def _described(
    facts: GuardInput,
    changes: Sequence[Change],
    pending: Hold | None,
    owners: _Owners,
    pairs: Mapping[str, set[Pair]],
    group_ids: Sequence[str],
) -> dict[str, Any]:
    """What a hold keeps to key and name its removals: store owners, people, groups, sites, the mapping."""
    known_people = pending.people if pending is not None else {}
    owner_map: dict[str, str] = {}
    people: dict[str, UserLabel] = {}
    for change in changes:
        external_id = change.external_id
        owner = owners.owner(external_id)
        if owner is not None:
            owner_map[external_id] = owner
        label = facts.label_of(external_id) or known_people.get(external_id)
        if label is not None:
            people[external_id] = label
    grant_pairs = {(c.site_id, c.module) for c in changes if isinstance(c, (Assign, Unassign))}
    member_groups = {c.group_external_id for c in changes if isinstance(c, RemoveGroupMember)}
    mapped = {
        group: tuple(sorted(group_pairs))
        for group, group_pairs in pairs.items()
        if group in member_groups or group_pairs & grant_pairs
    }
    for group, group_pairs in (pending.mapped.items() if pending is not None else ()):
        mapped.setdefault(group, group_pairs)
    involved = {*mapped, *group_ids}
    known_groups = pending.group_names if pending is not None else {}
    group_names = {
        group: facts.group_names.get(group) or known_groups.get(group) or group for group in sorted(involved)
    }
    sites = {site for group_pairs in mapped.values() for site, _ in group_pairs} | {site for site, _ in grant_pairs}
    known_sites = pending.site_names if pending is not None else {}
    site_names = {
        site: facts.site_names.get(site) or known_sites.get(site) or site for site in sorted(sites)
    }
    return {"owners": owner_map, "people": people, "group_names": group_names, "site_names": site_names,
            "mapped": mapped}


def next_sync_state(
    previous: SyncState,
    *,
    config: SyncConfig,
    hold: Hold | None,
    member_counts: Mapping[str, int],
    in_scope: Iterable[str],
    results: Sequence[ChangeResult],
    left_now: Iterable[str],
    disputed: Iterable[str] = (),
    skips_logged: Mapping[str, str] | None = None,
) -> SyncState:
    """What the trust remembers after a run that applied ``results``.

    ``member_counts``: the groups read completely and their sizes;
    ``in_scope``: the external ids the plan decided access for (back in
    scope); ``left_now``: external ids whose every synced grant this plan
    removed because they left scope; ``disputed``: groups whose read this
    run's guards disputed (they shrank and the run held removals), whose
    baselines therefore stay. ``skips_logged``: the skips this run's Import
    Log told (``None``: the memory of them stays as it was).
    """
    mapped = config.mappings.group_ids
    disputed = {*disputed, *(hold.group_ids if hold is not None else ())}
    baselines = {group: count for group, count in previous.baselines.items() if group in mapped}
    for group, count in member_counts.items():
        if group not in disputed:
            baselines[group] = count

    left_scope = dict(previous.left_scope)
    for external_id in in_scope:
        left_scope.pop(external_id, None)
    unassigned_ok: dict[str, bool] = {}
    deactivated: set[str] = set()
    for result in results:
        change = result.change
        if isinstance(change, Unassign):
            unassigned_ok[change.external_id] = unassigned_ok.get(change.external_id, True) and result.ok
        elif isinstance(change, DeactivateUser) and result.outcome == "applied":
            deactivated.add(change.external_id)
    for external_id in left_now:
        if unassigned_ok.get(external_id, False):
            left_scope.setdefault(external_id, False)
    for external_id in deactivated:
        left_scope[external_id] = True
    told = previous.skips_logged if skips_logged is None else skips_logged
    return attrs.evolve(previous, hold=hold, baselines=baselines, left_scope=left_scope, skips_logged=told)
