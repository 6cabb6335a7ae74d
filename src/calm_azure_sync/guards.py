"""The removal guards: which planned removals a run holds back, and what the next run remembers. Pure.

Theory of operation
===================

A removal is an unassign, a downgrade, a deactivation or a group-member
removal. Each takes away one *slot* (a grant, an activation, a membership; see
:func:`~calm_azure_sync.plan.removal_slot`). Additions are never held.

The guards, in the order they are applied to one plan's removals:

1. **Pending hold** (remembered). Every removal whose slot the trust's pending
   :class:`~calm_azure_sync.Hold` covers is held again, whatever today's
   ratios say, unless the run confirms that hold by its id: then the removals
   that are exactly what the admin reviewed are applied. A held slot whose
   removal Azure no longer implies drops out; a hold left empty is cleared.
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
it only follows from them. Newly held removals join the pending hold; its id
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
from collections.abc import Iterable, Mapping, Sequence

import attrs

from .config import SyncConfig
from .plan import (
    Assign,
    Change,
    DeactivateUser,
    RemoveGroupMember,
    Unassign,
    removal_slot,
)
from .state import Hold, HoldKind, SyncState, new_hold_id
from .store.protocol import ChangeResult

__all__ = ["GuardInput", "GuardOutcome", "apply_guards", "next_sync_state"]

Slot = tuple[str, ...]


@attrs.frozen
class GuardInput:
    """What the guards judge: one plan's removals and the facts around them."""

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


@attrs.frozen
class GuardOutcome:
    """The guards' verdict.

    ``held`` are the removals not applied (in plan order); ``reason`` the main
    reason; ``hold`` the pending hold after this run (``None``: nothing is
    pending); ``hold_cleared`` the id of a hold this run cleared;
    ``shrunk_groups`` the groups that tripped the shrink guard;
    ``stale_held`` the removals each stale mapping keeps held.
    """

    held: tuple[Change, ...]
    reason: str | None
    hold: Hold | None
    hold_cleared: str | None
    shrunk_groups: tuple[str, ...]
    stale_held: Mapping[str, int]


def _pairs_by_group(config: SyncConfig) -> dict[str, set[tuple[str, str]]]:
    pairs: dict[str, set[tuple[str, str]]] = {}
    for mapping in config.mappings.mappings:
        pairs.setdefault(mapping.group_id, set()).update((mapping.site_id, module) for module in mapping.roles)
    return pairs


def _explained_by(change: Change, pairs: set[tuple[str, str]], groups: Iterable[str]) -> bool:
    """Whether an unread or shrunk group could explain this removal."""
    if isinstance(change, (Assign, Unassign)):
        return (change.site_id, change.module) in pairs
    if isinstance(change, RemoveGroupMember):
        return change.group_external_id in groups
    return False


def apply_guards(facts: GuardInput) -> GuardOutcome:
    """Judge ``facts.removals``; see the module docstring for the rules (numbered as there)."""
    pending = facts.pending
    confirmed = pending is not None and facts.confirm_hold == pending.id
    pairs = _pairs_by_group(facts.config)
    partial, stale_held = _partial_read(facts, pairs)
    kept, released, new, grown = _against_pending(facts, partial, confirmed)
    shrunk, newly_held = _group_shrank(facts, pairs, new)
    _mass_removal(facts, new, [*kept, *released], newly_held)
    _hold_deactivations_with_their_removals(facts, new, {*partial, *kept}, newly_held)

    hold = _next_hold(facts, pending, confirmed, kept, newly_held, grown, shrunk)
    held = tuple(facts.removals[index] for index in sorted({*partial, *kept, *newly_held}))
    reason: str | None = None
    if hold is not None and (kept or newly_held):
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
    )


def _union_of_pairs(pairs: Mapping[str, set[tuple[str, str]]], groups: Iterable[str]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for group in groups:
        found |= pairs.get(group, set())
    return found


def _partial_read(
    facts: GuardInput, pairs: Mapping[str, set[tuple[str, str]]]
) -> tuple[set[int], dict[str, int]]:
    """2. What an unread group could explain (and every deactivation); per stale mapping, how many."""
    unread = set(facts.unreadable_groups)
    stale_held = dict.fromkeys(sorted(facts.stale_groups), 0)
    partial: set[int] = set()
    if not unread:
        return partial, stale_held
    unread_pairs = _union_of_pairs(pairs, unread)
    for index, change in enumerate(facts.removals):
        if isinstance(change, DeactivateUser) or _explained_by(change, unread_pairs, unread):
            partial.add(index)
        for group in facts.stale_groups:
            if _explained_by(change, pairs.get(group, set()), (group,)):
                stale_held[group] += 1
    return partial, stale_held


def _against_pending(
    facts: GuardInput, partial: set[int], confirmed: bool
) -> tuple[dict[int, Change], set[int], list[int], bool]:
    """1. The pending hold: re-held, or released by a confirmation of exactly what was reviewed.

    Returns the removals that stay in the hold, those released, the new ones
    (not covered by the hold, not held by a partial read), and whether a held
    slot now plans a different removal (the hold grows).
    """
    pending = facts.pending
    pending_by_slot = {removal_slot(change): change for change in pending.changes} if pending else {}
    kept: dict[int, Change] = {}
    released: set[int] = set()
    new: list[int] = []
    grown = False
    for index, change in enumerate(facts.removals):
        held_change = pending_by_slot.get(removal_slot(change))
        if held_change is None:
            if index not in partial:
                new.append(index)
        elif confirmed and held_change == change and index not in partial:
            released.add(index)
        else:
            kept[index] = change
            grown = grown or held_change != change
    return kept, released, new, grown


def _group_shrank(
    facts: GuardInput, pairs: Mapping[str, set[tuple[str, str]]], new: Sequence[int]
) -> tuple[list[str], dict[int, str]]:
    """3. The groups that shrank against their baselines, and the new removals they explain."""
    policy = facts.config.removal
    shrunk = sorted(
        group for group, count in facts.member_counts.items() if policy.group_shrank(facts.baselines.get(group), count)
    )
    newly_held: dict[int, str] = {}
    if shrunk:
        shrunk_pairs = _union_of_pairs(pairs, shrunk)
        for index in new:
            if _explained_by(facts.removals[index], shrunk_pairs, shrunk):
                newly_held[index] = "group_shrank"
    return shrunk, newly_held


def _mass_removal(facts: GuardInput, new: Sequence[int], pending: Sequence[int], newly_held: dict[int, str]) -> None:
    """4. The new removals judged together with the pending ones; when they trip, all new ones are held."""
    losing = {facts.removals[index].external_id for index in (*new, *pending)}
    if new and facts.config.removal.should_hold(len(losing), facts.synced_users):
        for index in new:
            newly_held.setdefault(index, "mass_removal")


def _hold_deactivations_with_their_removals(
    facts: GuardInput, new: Sequence[int], held: set[int], newly_held: dict[int, str]
) -> None:
    """A deactivation follows from the user's other removals: held whenever one of them is."""
    held_users = {facts.removals[index].external_id for index in (*held, *newly_held)}
    reason = facts.pending.reason if facts.pending is not None else "mass_removal"
    for index in new:
        change = facts.removals[index]
        if isinstance(change, DeactivateUser) and change.external_id in held_users:
            newly_held.setdefault(index, reason)


def _next_hold(
    facts: GuardInput,
    pending: Hold | None,
    confirmed: bool,
    kept: Mapping[int, Change],
    newly_held: Mapping[int, str],
    grown: bool,
    shrunk: Sequence[str],
) -> Hold | None:
    """The hold this run leaves pending."""
    indexes = sorted({*kept, *newly_held})
    if not indexes:
        return None
    changes = tuple(facts.removals[index] for index in indexes)
    reasons = {newly_held[index] for index in newly_held}
    if pending is not None and not confirmed:
        reason: HoldKind = pending.reason
    else:
        reason = "group_shrank" if "group_shrank" in reasons else "mass_removal"
    group_ids = (*(pending.group_ids if pending is not None and not confirmed else ()), *shrunk)
    if pending is not None and not confirmed and not newly_held and not grown:
        # Only drop-outs (or nothing) since the admin last saw it: the same hold.
        return attrs.evolve(pending, changes=changes)
    return Hold(
        id=new_hold_id(),
        trust_site_id=facts.config.trust_site_id,
        reason=reason,
        changes=changes,
        created_at=facts.now,
        run_id=facts.run_id,
        group_ids=group_ids,
    )


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
) -> SyncState:
    """What the trust remembers after a run that applied ``results``.

    ``member_counts``: the groups read completely and their sizes;
    ``in_scope``: the external ids the plan decided access for (back in
    scope); ``left_now``: external ids whose every synced grant this plan
    removed because they left scope; ``disputed``: groups whose read this
    run's guards disputed (they shrank and the run held removals), whose
    baselines therefore stay.
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
    return attrs.evolve(previous, hold=hold, baselines=baselines, left_scope=left_scope)
