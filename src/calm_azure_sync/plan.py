"""The changes a sync makes, and the plan that lists them.

Every change is a frozen value keyed by the Entra object id (``external_id``);
the planner produces them, a :class:`~calm_azure_sync.store.UserStore` applies
them, and the audit log records them. Nothing here does IO.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .model import Role

if TYPE_CHECKING:
    from .review import AccessTable
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
    "is_removal",
    "removal_slot",
]


@attrs.frozen
class CreateUser:
    """Create a store user for this Azure user."""

    external_id: str
    email: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None


@attrs.frozen
class LinkUser:
    """Adopt store user ``user_id`` (invited by hand, same email) as this Azure user.

    The store records ``external_id`` on it and refreshes its name and email;
    nothing is duplicated.
    """

    external_id: str
    user_id: str
    email: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None


@attrs.frozen
class UpdateUser:
    """The Azure user's name or email changed (or a deactivated user is back in scope).

    Carries the full new values; ``changed`` names the fields that differ
    (``email``, ``display_name``, ``given_name``, ``surname``, ``active``).
    """

    external_id: str
    user_id: str
    email: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None
    reactivate: bool = False
    changed: tuple[str, ...] = ()


@attrs.frozen
class RelinkUser:
    """Store user ``user_id``, synced from Azure object ``previous_external_id``, becomes ``external_id``.

    Planned only when the directory proved the previous object is gone (an
    account deleted and re-created with the same email): the store user keeps
    its id and its manual grants, and takes the new object id, email and names.
    """

    external_id: str
    user_id: str
    previous_external_id: str
    email: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None


@attrs.frozen
class Assign:
    """Grant ``role`` on ``module`` at ``site_id`` (``previous`` set: a role change).

    ``because`` names the mapped group ids that give this role.
    """

    external_id: str
    site_id: str
    module: str
    role: Role
    previous: Role | None = None
    because: tuple[str, ...] = ()

    @property
    def is_downgrade(self) -> bool:
        return self.previous is not None and self.role < self.previous


@attrs.frozen
class Unassign:
    """Remove the synced grant on ``module`` at ``site_id`` (it was ``previous``)."""

    external_id: str
    site_id: str
    module: str
    previous: Role


@attrs.frozen
class DeactivateUser:
    """Mark the user inactive: Azure gives them nothing and no other access is left.

    A store applies it only if the user holds no grant of any source once
    the run's unassignments are applied.
    """

    external_id: str
    user_id: str


@attrs.frozen
class UpsertGroup:
    """Mirror the mapped Azure group ``external_id``: create it, or refresh its name and sites."""

    external_id: str
    display_name: str
    site_ids: tuple[str, ...] = ()


@attrs.frozen
class AddGroupMember:
    """Azure user ``external_id`` is an in-scope member of synced group ``group_external_id``."""

    group_external_id: str
    external_id: str


@attrs.frozen
class RemoveGroupMember:
    """Azure user ``external_id`` is no longer an in-scope member of ``group_external_id`` (a removal)."""

    group_external_id: str
    external_id: str


@attrs.frozen
class RetireGroup:
    """The group's mapping was removed: keep the synced group, mark it retired, clear its members."""

    external_id: str


UserChange = CreateUser | LinkUser | RelinkUser | UpdateUser | Assign | Unassign | DeactivateUser
GroupChange = UpsertGroup | AddGroupMember | RemoveGroupMember | RetireGroup
Change = UserChange | GroupChange

HoldReason = Literal["mass_removal", "partial_read", "group_shrank"]
"""Why removals are held: the one vocabulary (a pending ``Hold`` is ``mass_removal`` or ``group_shrank``;
``partial_read`` is decided afresh every run and never remembered)."""

#: Each hold reason in words, for every text a person reads (reports, the Import Log, a ``Hold``).
HOLD_REASON_TEXT: Mapping[HoldReason, str] = {
    "mass_removal": "the run would remove access from many synced users at once",
    "group_shrank": "a mapped group shrank sharply since its last complete read",
    "partial_read": "a mapped group could not be read completely",
}


@attrs.frozen
class Skip:
    """A directory user the sync left out, and why.

    ``keeps_access``: the user's existing synced access is left exactly as it
    is (an email conflict or a duplicate email needs a person to look);
    otherwise the user is out of scope and loses what the sync gave them.
    """

    external_id: str
    email: str | None
    reason: str
    excluded: bool = False
    keeps_access: bool = False
    conflict: bool = False
    """An email conflict with a store user: a person must look; counted on its own."""


@attrs.frozen
class UserLabel:
    """How a review names a user: Azure's display name and email (either may be missing)."""

    display_name: str | None
    email: str | None

    def __str__(self) -> str:
        if self.display_name and self.email:
            return f"{self.display_name} <{self.email}>"
        return self.display_name or self.email or "?"


_KIND_BY_TYPE: dict[type, str] = {
    CreateUser: "create_user",
    LinkUser: "link_user",
    RelinkUser: "relink_user",
    UpdateUser: "update_user",
    Assign: "assign",
    Unassign: "unassign",
    DeactivateUser: "deactivate_user",
    UpsertGroup: "upsert_group",
    AddGroupMember: "add_group_member",
    RemoveGroupMember: "remove_group_member",
    RetireGroup: "retire_group",
}
_TYPE_BY_KIND: dict[str, type] = {kind: type_ for type_, kind in _KIND_BY_TYPE.items()}


def change_kind(change: Change) -> str:
    """A short snake_case name for the change's type (``"assign"``…)."""
    return _KIND_BY_TYPE[type(change)]


def is_removal(change: Change) -> bool:
    """Whether the change takes access away (unassign, downgrade, deactivate)."""
    kind = type(change)
    if kind is Assign:
        previous = change.previous  # type: ignore[union-attr]
        return previous is not None and change.role._rank < previous._rank  # type: ignore[union-attr]
    return kind is Unassign or kind is DeactivateUser or kind is RemoveGroupMember


def removal_slot(change: Change) -> tuple[str, ...]:
    """What a removal takes away, whatever its details: a hold covers slots.

    A grant (user, site, module), a user's activation, or a group membership.
    A later run that plans a different removal of the same slot (an unassign
    where a downgrade was held) is still covered by the hold.
    """
    if isinstance(change, (Assign, Unassign)):
        return ("grant", change.external_id, change.site_id, change.module)
    if isinstance(change, DeactivateUser):
        return ("active", change.external_id)
    if isinstance(change, RemoveGroupMember):
        return ("member", change.group_external_id, change.external_id)
    raise ValueError(f"{change_kind(change)} is not a removal")


def change_to_dict(change: Change) -> dict[str, Any]:
    """A JSON-safe dict of one change, with its ``kind``."""
    data: dict[str, Any] = {"kind": change_kind(change)}
    for field in attrs.fields(type(change)):
        value = getattr(change, field.name)
        if isinstance(value, Role):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        data[field.name] = value
    return data


def change_from_dict(data: Mapping[str, Any]) -> Change:
    """Read back what :func:`change_to_dict` wrote; ``ValueError`` on anything else."""
    try:
        kind = data["kind"]
        type_ = _TYPE_BY_KIND[kind]
    except (KeyError, TypeError):
        raise ValueError(f"not a change: {data!r:.80}") from None
    values: dict[str, Any] = {}
    for field in attrs.fields(type_):
        if field.name not in data:
            if field.default is attrs.NOTHING:
                raise ValueError(f"{kind}: {field.name} is missing")
            continue
        value = data[field.name]
        if field.name in ("role", "previous") and value is not None:
            value = Role.parse(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[field.name] = value
    return type_(**values)  # type: ignore[no-any-return]


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
    removals held); ``lookups_needed`` the Azure objects whose existence would
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

    @property
    def complete(self) -> bool:
        """Whether every mapped group was read completely."""
        return not self.unreadable_groups

    def summary(self) -> dict[str, int]:
        """Counts of changes by kind (skips are not changes), all kinds present."""
        counts = Counter(change_kind(change) for change in self.changes)
        summary = {kind: counts.get(kind, 0) for kind in _KIND_BY_TYPE.values()}
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
        from . import review  # review renders plans: it imports this module

        return review.plan_repr(self)

    def __str__(self) -> str:
        """The plan for a terminal: headline counts, holds and conflicts, the changes, who was left out."""
        from . import review

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
        from . import review

        return review.plan_records(self)

    def access_table(self, site_id: str | None = None, *, changed_only: bool = False) -> AccessTable:
        """Users by (site, module) with the role after this plan runs and what changed.

        The trust's synced access before the run (``access_before``) with the
        changes applied; held removals keep their role, marked held.
        ``site_id`` keeps one site; ``changed_only`` leaves out unchanged
        roles. Shows as a table in a notebook and in ``str()``; its
        ``to_records()`` gives plain dicts.
        """
        from . import review

        return review.access_table(self, site_id, changed_only=changed_only)


def describe_change(change: Change, plan: Plan | None = None) -> list[str]:
    """One change as a row of text: change, user, email, site, module, role, groups, detail.

    Users and groups are named from ``plan`` (``people``, ``group_names``)
    when given; an empty string where a column does not apply.
    """
    from . import review

    return review.change_cells(change, plan)


def render_plan_html(plan: Plan) -> str:
    """The plan as HTML: summary, held removals and conflicts, changes, who was left out."""
    from . import review

    return review.plan_html(plan)
