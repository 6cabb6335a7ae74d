"""The changes a sync makes: frozen values the planner produces and a store applies.

Every change is keyed by the Entra object id (``external_id``); a
:class:`~calm_azure_sync.store.UserStore` applies them and the Import Log
records them. The hold vocabulary (``HoldReason`` and its sentences) and
``Skip`` live here too, beside the changes they qualify. This module imports
nothing of the plan or its reviews, so the review layer can depend on it
while ``Plan`` renders itself through the reviews.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from ..model import Role

__all__ = [
    "CHANGE_KINDS",
    "HOLD_REASON_TEXT",
    "AddGroupMember",
    "Assign",
    "Change",
    "CreateUser",
    "DeactivateUser",
    "GroupChange",
    "HoldReason",
    "LinkUser",
    "RelinkUser",
    "RemoveGroupMember",
    "RetireGroup",
    "SKIP_CATEGORIES",
    "Skip",
    "SkipCategory",
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
class CreateUser:
    """Create a store user for this Azure user.

    ``tenant_id`` (here and on ``LinkUser``, ``RelinkUser`` and ``UpdateUser``)
    is the Entra tenant the account lives in (API §13): identity is (tenant,
    object id). ``None``: the trust records no tenant (on ``UpdateUser``: the
    stored tenant stays).
    """

    external_id: str
    email: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None
    tenant_id: str | None = None


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
    tenant_id: str | None = None


@attrs.frozen
class UpdateUser:
    """The Azure user's name or email changed (or a deactivated user is back in scope).

    Carries the full new values; ``changed`` names the fields that differ
    (``email``, ``display_name``, ``given_name``, ``surname``, ``active``,
    ``tenant_id``).
    """

    external_id: str
    user_id: str
    email: str
    display_name: str
    given_name: str | None = None
    surname: str | None = None
    reactivate: bool = False
    changed: tuple[str, ...] = ()
    tenant_id: str | None = None


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
    tenant_id: str | None = None


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

    @property
    def category(self) -> SkipCategory:
        """Which of the three words counts and names this skip: ``conflict``, ``excluded`` or ``skipped``."""
        if self.conflict:
            return "conflict"
        if self.excluded:
            return "excluded"
        return "skipped"


SkipCategory = Literal["skipped", "excluded", "conflict"]
#: The skip categories, in the order counts and reviews list them.
SKIP_CATEGORIES: tuple[SkipCategory, ...] = ("skipped", "excluded", "conflict")


def skip_counts(skipped: Iterable[Skip]) -> dict[str, int]:
    """How many users were skipped, excluded and in conflict: all three keys, in that order."""
    counts: dict[str, int] = dict.fromkeys(SKIP_CATEGORIES, 0)
    for skip in skipped:
        counts[skip.category] += 1
    return counts


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

#: Every change kind, in the order they apply (the keys of ``Plan.summary()`` before its skip counts).
CHANGE_KINDS: tuple[str, ...] = tuple(_KIND_BY_TYPE.values())


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
