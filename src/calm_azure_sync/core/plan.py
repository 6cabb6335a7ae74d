"""The plan of one import: the changes it makes, in order, and who it leaves out.

The changes themselves, ``Skip`` and the hold vocabulary are values of
:mod:`calm_azure_sync.core.changes` (re-exported here, their documented import
path). ``Plan`` renders itself through :mod:`calm_azure_sync.review`, which
it imports inside its methods; the review layer imports the changes, never
this module, so the two do not import each other. Nothing here does IO.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ..model import Role
from .changes import (
    CHANGE_KINDS,
    HOLD_REASON_TEXT,
    AddGroupMember,
    Assign,
    Change,
    CreateUser,
    DeactivateUser,
    GroupChange,
    HoldReason,
    LinkUser,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Skip,
    Unassign,
    UpdateUser,
    UpsertGroup,
    UserChange,
    UserLabel,
    change_from_dict,
    change_kind,
    change_to_dict,
    is_removal,
    removal_slot,
    skip_counts,
)

if TYPE_CHECKING:
    from ..review import AccessTable
    from .state import Hold

__all__ = [
    "AddGroupMember",
    "Assign",
    "Change",
    "CreateUser",
    "DeactivateUser",
    "GroupChange",
    "HOLD_REASON_TEXT",
    "HoldReason",
    "LinkUser",
    "Plan",
    "RelinkUser",
    "RemoveGroupMember",
    "RetireGroup",
    "Skip",
    "Unassign",
    "UpdateUser",
    "UpsertGroup",
    "UserChange",
    "UserLabel",
    "change_from_dict",
    "change_kind",
    "change_to_dict",
    "is_removal",
    "removal_slot",
    "skip_counts",
]


@attrs.frozen
class Plan:
    """What one import would do: the changes, in the order they apply, and who is left out.

    ``held_removals`` are removals the run will not apply (``hold_reason``
    says why: ``mass_removal``, ``group_shrank`` or ``partial_read``);
    ``hold_id`` is the id of the pending hold they join (what an admin
    confirms; ``None`` when only a partial read holds them), ``held_groups``
    the groups whose shrink tripped the guard, and ``stale_groups`` maps a
    mapped group that no longer exists in Azure to the number of removals it
    keeps held. ``unreadable_groups`` maps a mapped group id that could not be
    read completely to the reason.

    ``hold`` is the pending hold this plan leaves (the full value the sync
    state keeps), ``hold_cleared`` the id of a hold it clears; ``left_scope``
    lists the users this plan takes out of scope for good (none of their
    grant removals held; a held deactivation does not keep them in); ``lookups_needed`` the Azure objects whose existence would
    settle an email conflict (the reconciler looks them up and plans again).
    ``confirmed_removals`` are the held removals a confirmation applies in
    this plan; ``deferred_removals`` the removals held only by a partial read
    (not part of the hold); ``disputed_groups`` the shrunk groups whose read
    the next run must not adopt as their baseline.

    For reviews: ``people`` names the users the plan mentions (external id ->
    :class:`UserLabel`), ``group_names`` the mapped groups, ``site_names``
    the sites (``Site.name``, set by the reconciler from its hierarchy), and
    ``access_before`` is the trust's synced access before the plan.
    """

    trust_site_id: str
    changes: tuple[Change, ...] = ()
    skipped: tuple[Skip, ...] = ()
    held_removals: tuple[Change, ...] = ()
    hold_reason: HoldReason | None = None
    unreadable_groups: Mapping[str, str] = attrs.field(factory=dict)
    users_in_scope: int = 0
    synced_users: int = 0
    hold_id: str | None = None
    held_groups: tuple[str, ...] = ()
    stale_groups: Mapping[str, int] = attrs.field(factory=dict)
    people: Mapping[str, UserLabel] = attrs.field(factory=dict, repr=False)
    group_names: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    access_before: Mapping[str, Mapping[tuple[str, str], Role]] = attrs.field(factory=dict, repr=False)
    hold: Hold | None = attrs.field(default=None, repr=False)
    hold_cleared: str | None = None
    left_scope: tuple[str, ...] = attrs.field(default=(), repr=False)
    in_scope_ids: frozenset[str] = attrs.field(default=frozenset(), repr=False)
    lookups_needed: frozenset[str] = attrs.field(default=frozenset(), repr=False)
    confirmed_removals: tuple[Change, ...] = attrs.field(default=(), repr=False)
    deferred_removals: tuple[Change, ...] = attrs.field(default=(), repr=False)
    disputed_groups: tuple[str, ...] = attrs.field(default=(), repr=False)
    site_names: Mapping[str, str] = attrs.field(factory=dict, repr=False, eq=False)
    tenants: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    """A trust with several tenants: each Azure account's tenant (read now, else as stored); else empty."""

    @property
    def complete(self) -> bool:
        """Whether every mapped group was read completely."""
        return not self.unreadable_groups

    def summary(self) -> dict[str, int]:
        """Counts of changes by kind (skips are not changes), all kinds present."""
        counts = Counter(change_kind(change) for change in self.changes)
        summary = {kind: counts.get(kind, 0) for kind in CHANGE_KINDS}
        summary["conflict"] = sum(1 for skip in self.skipped if skip.conflict)
        return summary

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the whole plan."""
        return {
            "trust_site_id": self.trust_site_id,
            "summary": self.summary(),
            "changes": [change_to_dict(change) for change in self.changes],
            "skipped": [attrs.asdict(skip) for skip in self.skipped],
            "held_removals": [change_to_dict(change) for change in self.held_removals],
            "hold_reason": self.hold_reason,
            "unreadable_groups": dict(self.unreadable_groups),
            "users_in_scope": self.users_in_scope,
            "synced_users": self.synced_users,
        }

    def __repr__(self) -> str:
        from .. import review  # review renders plans: it imports this module

        return review.plan_repr(self)

    def __str__(self) -> str:
        """The plan for a terminal: headline counts, holds and conflicts, the changes, who was left out."""
        from .. import review

        return review.plan_text(self)

    def _repr_html_(self) -> str:
        return render_plan_html(self)

    def to_records(self) -> list[dict[str, object]]:
        """One plain dict per change, then per held removal, for ``pandas.DataFrame(plan.to_records())``.

        Keys (the same in every dict): ``kind``, ``external_id`` (the user's),
        ``name``, ``email``, ``site_id``, ``module``, ``role``, ``previous``,
        ``groups`` (names), ``group_ids``, ``held``, ``detail``; values are
        ``str``, ``bool`` or ``None``.
        """
        from .. import review

        return review.plan_records(self)

    def access_table(self, site_id: str | None = None, *, changed_only: bool = False) -> AccessTable:
        """Users by (site, module) with the role after this plan runs and what changed.

        The trust's synced access before the run (``access_before``) with the
        changes applied; held removals keep their role, marked held.
        ``site_id`` keeps one site; ``changed_only`` leaves out unchanged
        roles. Shows as a table in a notebook and in ``str()``; its
        ``to_records()`` gives plain dicts.
        """
        from .. import review

        return review.access_table(self, site_id, changed_only=changed_only)


def describe_change(change: Change, plan: Plan | None = None) -> list[str]:
    """One change as a row of text: change, user, email, site, module, role, groups, detail.

    Users and groups are named from ``plan`` (``people``, ``group_names``)
    when given; an empty string where a column does not apply.
    """
    from .. import review

    return review.change_cells(change, plan)


def render_plan_html(plan: Plan) -> str:
    """The plan as HTML: summary, held removals and conflicts, changes, who was left out."""
    from .. import review

    return review.plan_html(plan)
