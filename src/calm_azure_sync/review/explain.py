"""Why one person has the access they have: :class:`Explanation`, built from one person's read. Pure: no IO.

:meth:`Reconciler.explain <calm_azure_sync.Reconciler.explain>` reads the
directory for one person (:mod:`calm_azure_sync.review.explain_read`) and the
store, and hands the facts to :func:`explain_person`. Nothing here decides
anything afresh; every answer comes from the rule that decides it for a run:

- **in the directory, and in scope?** :func:`~calm_azure_sync.core.planner.skip_reason`
  (disabled, guest, no usable email, the exclusion policy's pattern or id);
- **which role, from which group?** :meth:`MappingPolicy.access_with_reasons
  <calm_azure_sync.MappingPolicy.access_with_reasons>` gives the winning role
  and the groups that give it; every other mapped group of theirs that gives
  a role there is listed beside it, not winning;
- **what the next run changes for them** is :func:`~calm_azure_sync.core.planner.build_plan`
  over a snapshot and a store state restricted to that person
  (:func:`person_snapshot`, :func:`person_state`), with the trust's pending
  hold: so a removal that hold covers shows as held. Tenant-wide guards
  (a mass removal, a group that shrank) are judged by the run itself, over
  everyone; an explanation cannot see them coming.

The nesting path of a mapped group runs from the mapped group down to the
group the person is directly in (``("Birch All Staff", "Birch Teachers")``:
Birch Teachers, which they are in, is a member of Birch All Staff).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from .._html import html_table, visible
from ..core.plan import (
    AddGroupMember,
    Assign,
    Change,
    CreateUser,
    DeactivateUser,
    HoldReason,
    LinkUser,
    Plan,
    RelinkUser,
    RemoveGroupMember,
    Unassign,
    UpdateUser,
    change_to_dict,
    is_removal,
)
from ..core.planner import skip_reason
from ..core.state import Hold
from ..model import DirectoryUser, Role
from ..policies.config import SyncConfig
from ..store.protocol import Grant, StoredUser
from ._person_slice import nesting_paths, person_snapshot, person_state, person_sync_state, stored_user_for

__all__ = [
    "AccessExplained",
    "Explanation",
    "GrantExplained",
    "GroupPath",
    "PersonStatus",
    "RoleSource",
    "describe_change",
    "explain_person",
    "nesting_paths",
    "person_snapshot",
    "person_state",
    "person_sync_state",
    "stored_user_for",
]

PersonStatus = Literal["found", "not_found", "disabled", "guest", "excluded", "skipped"]


@attrs.frozen
class GroupPath:
    """A mapped group that contains the person, and how.

    ``path`` names the groups from the mapped group down to the group they
    are directly in (one name: directly in the mapped group); ``path_ids``
    the same by object id. ``complete`` is false when the path could not be
    traced (see :mod:`calm_azure_sync.review.explain_read`): ``path`` is then the
    mapped group alone.
    """

    group_id: str
    name: str
    path: tuple[str, ...]
    path_ids: tuple[str, ...]
    complete: bool = True

    @property
    def nested(self) -> bool:
        return len(self.path_ids) > 1


@attrs.frozen
class RoleSource:
    """One mapped group of the person that gives ``role`` at a (site, module); ``winner``: it decides."""

    group_id: str
    group_name: str
    role: Role
    winner: bool


@attrs.frozen
class AccessExplained:
    """The role the mapping gives the person on ``module`` at ``site_id``, and every group that gives one."""

    site_id: str
    site_name: str
    module: str
    role: Role
    sources: tuple[RoleSource, ...]

    @property
    def winners(self) -> tuple[RoleSource, ...]:
        return tuple(source for source in self.sources if source.winner)


@attrs.frozen
class GrantExplained:
    """A grant the person holds in the store: ``source`` ``"manual"`` or ``"azure"`` (``trust``: whose sync)."""

    site_id: str
    site_name: str
    module: str
    role: Role
    source: str
    trust_site_id: str | None = None
    trust_name: str | None = None


def _sentence_list(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


@attrs.frozen(repr=False)
class Explanation:
    """Why one person has (or lacks) access from one trust's sync, and what the next run changes for them.

    ``status``: ``found`` (in the directory and in scope), ``not_found``,
    ``disabled``, ``guest``, ``excluded`` (``reason`` names the pattern or
    id) or ``skipped`` (``reason`` says why: no usable email, an email shared
    or already held by another account). ``groups``: each mapped group that
    contains them, with its nesting path; ``access``: per (site, module) the
    role the mapping gives, every group that gives one and the winner;
    ``synced``, ``manual_grants`` and ``other_trusts``: what the store holds
    for them now; ``planned``: the changes the next run would make for them;
    ``held``: their removals a hold keeps back (``hold_id``, ``hold_reason``;
    ``hold_id`` ``None`` with held removals: a partial read holds them);
    ``unread_groups``: mapped groups that could not be read for them.
    ``tenant_id`` / ``tenant_name``: the Microsoft tenant their account is in,
    for a trust with several (API §13; ``None`` otherwise).

    ``str()`` is a paragraph a school admin can read, ``_repr_html_`` the
    same with tables, ``to_dict()`` keeps every id.
    """

    who: str
    trust_site_id: str
    trust_name: str
    status: PersonStatus
    reason: str | None = None
    external_id: str | None = None
    display_name: str | None = None
    email: str | None = None
    store_user_id: str | None = None
    store_active: bool | None = None
    groups: tuple[GroupPath, ...] = ()
    access: tuple[AccessExplained, ...] = ()
    synced: tuple[GrantExplained, ...] = ()
    manual_grants: tuple[GrantExplained, ...] = ()
    other_trusts: tuple[GrantExplained, ...] = ()
    grants_known: bool = True
    planned: tuple[Change, ...] = ()
    held: tuple[Change, ...] = ()
    hold_id: str | None = None
    hold_reason: str | None = None
    unread_groups: Mapping[str, str] = attrs.field(factory=dict)
    directory_read: Literal["person", "mapped_groups"] = "person"
    notes: tuple[str, ...] = ()
    site_names: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    group_names: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    tenant_id: str | None = None
    tenant_name: str | None = None

    # -- names --------------------------------------------------------------------

    @property
    def name(self) -> str:
        """How the person is named to an admin: display name, else email, else what was asked."""
        return self.display_name or self.email or self.who

    def _site(self, site_id: str) -> str:
        return self.site_names.get(site_id) or site_id

    def _group(self, group_id: str) -> str:
        return self.group_names.get(group_id) or group_id

    # -- text -----------------------------------------------------------------------

    def sentences(self) -> list[str]:
        """The explanation as sentences, in the order ``str()`` joins them."""
        name = self.name
        lines: list[str] = []
        who = f"{name} <{self.email}>" if self.email and self.email != name else name
        if self.status == "not_found":
            lines.append(f"{who} is not in the directory: {self.reason or 'no account matches'}.")
        elif self.status == "found":
            lines.append(f"{who} is in the directory and in scope of {self.trust_name}'s sync.")
        else:
            lines.append(f"{who} is in the directory but is not synced ({self.status}): {self.reason}.")
        if self.status != "not_found":
            if self.groups:
                parts = []
                for group in self.groups:
                    if group.nested:
                        parts.append(f"{group.name} (through {' > '.join(group.path)})")
                    else:
                        parts.append(f"{group.name} ({'directly' if group.complete else 'nesting not traced'})")
                count = len(self.groups)
                lines.append(f"{name} is in {count} mapped group{'s' if count != 1 else ''}: {_sentence_list(parts)}.")
            else:
                lines.append(f"{name} is in no mapped group, so the mapping gives them nothing.")
        for access in self.access:
            winners = [source.group_name for source in access.winners]
            others = [
                f"{source.group_name} gives {source.role.value}" for source in access.sources if not source.winner
            ]
            verb = "gets" if self.status == "found" else "would get"
            sentence = (
                f"{name} {verb} {access.role.value} on {access.module} at {access.site_name} "
                f"because they are in {_sentence_list(winners)}"
            )
            if others:
                sentence += f" (the highest role wins: {_sentence_list(others)})"
            lines.append(sentence + ".")
        if self.manual_grants:
            grants = [f"{g.role.value} on {g.module} at {g.site_name}" for g in self.manual_grants]
            lines.append(f"Granted by hand (the sync never changes these): {_sentence_list(grants)}.")
        if self.other_trusts:
            grants = [f"{g.role.value} on {g.module} at {g.site_name} (from {g.trust_name})" for g in self.other_trusts]
            lines.append(f"From other trusts' syncs: {_sentence_list(grants)}.")
        if self.planned:
            described = [describe_change(change, self._site, self._group) for change in self.planned]
            lines.append(f"The next run would {_sentence_list(described)}.")
        elif self.status != "not_found" or self.store_user_id is not None:
            lines.append("The next run changes nothing for them.")
        return lines + self._notes()

    def _notes(self) -> list[str]:
        """What holds their changes back, what could not be read, and other notes (the last sentences)."""
        lines: list[str] = []
        if self.tenant_id is not None:
            lines.append(f"Their account is in tenant {self.tenant_name or self.tenant_id}.")
        if any(is_removal(change) for change in self.planned):
            lines.append(
                "The run may still hold a removal for review if many people would lose access at once or a "
                "mapped group shrank sharply (judged over everyone when it runs)."
            )
        if self.held:
            described = [describe_change(change, self._site, self._group) for change in self.held]
            if self.hold_id is not None:
                why = f"held for review in hold {self.hold_id} ({(self.hold_reason or '').replace('_', ' ')})"
            else:
                why = "held until every mapped group can be read completely"
            lines.append(f"Not applied, {why}: {_sentence_list(described)}.")
        if self.unread_groups:
            unread = [self._group(group_id) for group_id in self.unread_groups]
            lines.append(f"Not read for this answer: {_sentence_list(unread)}.")
        if not self.grants_known and self.store_user_id is not None:
            lines.append("The store cannot list their grants, so manual and other trusts' access is not shown.")
        lines.extend(self.notes)
        return lines

    def __str__(self) -> str:
        return visible(" ".join(self.sentences()))

    def __repr__(self) -> str:
        return (
            f"<Explanation {self.who!r} trust={self.trust_site_id!r} status={self.status} "
            f"groups={len(self.groups)} planned={len(self.planned)} held={len(self.held)}>"
        )

    def _repr_html_(self) -> str:
        parts = [f"<h4>{html.escape(visible(self.name))}: {html.escape(self.status.replace('_', ' '))}</h4>"]
        parts.append("<p>" + html.escape(visible(" ".join(self.sentences()[:2]))) + "</p>")
        if self.groups:
            rows = [[group.name, " > ".join(group.path) if group.nested else "directly"] for group in self.groups]
            parts.append("<h5>Mapped groups</h5>" + html_table(["group", "through"], rows))
        if self.access:
            rows = [
                [access.site_name, access.module, source.group_name, source.role.value, "wins" if source.winner else ""]
                for access in self.access
                for source in access.sources
            ]
            parts.append("<h5>Access the mapping gives</h5>" + html_table(["site", "module", "group", "role", ""], rows))
        grants = [*self.synced, *self.manual_grants, *self.other_trusts]
        if grants:
            rows = [
                [g.site_name, g.module, g.role.value, "by hand" if g.source == "manual" else f"sync of {g.trust_name}"]
                for g in grants
            ]
            parts.append("<h5>Held in CalmCompliance now</h5>" + html_table(["site", "module", "role", "from"], rows))
        changes = [(change, "") for change in self.planned] + [(change, "held") for change in self.held]
        if changes:
            rows = [[describe_change(change, self._site, self._group), note] for change, note in changes]
            parts.append("<h5>The next run</h5>" + html_table(["change", ""], rows))
        notes = self._notes()
        if notes:
            parts.append("<p>" + html.escape(visible(" ".join(notes))) + "</p>")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict with every id (object ids, store user id, site and group ids)."""

        def grant(g: GrantExplained) -> dict[str, Any]:
            return {
                "site_id": g.site_id, "site_name": g.site_name, "module": g.module, "role": g.role.value,
                "source": g.source, "trust_site_id": g.trust_site_id,
            }

        return {
            "who": self.who,
            "trust_site_id": self.trust_site_id,
            "status": self.status,
            "reason": self.reason,
            "external_id": self.external_id,
            "display_name": self.display_name,
            "email": self.email,
            "store_user_id": self.store_user_id,
            "store_active": self.store_active,
            "tenant_id": self.tenant_id,
            "groups": [
                {"group_id": g.group_id, "name": g.name, "path": list(g.path), "path_ids": list(g.path_ids),
                 "complete": g.complete}
                for g in self.groups
            ],
            "access": [
                {
                    "site_id": a.site_id, "site_name": a.site_name, "module": a.module, "role": a.role.value,
                    "sources": [
                        {"group_id": s.group_id, "group_name": s.group_name, "role": s.role.value, "winner": s.winner}
                        for s in a.sources
                    ],
                }
                for a in self.access
            ],
            "synced": [grant(g) for g in self.synced],
            "manual_grants": [grant(g) for g in self.manual_grants],
            "other_trusts": [grant(g) for g in self.other_trusts],
            "planned": [change_to_dict(change) for change in self.planned],
            "held": [change_to_dict(change) for change in self.held],
            "hold_id": self.hold_id,
            "hold_reason": self.hold_reason,
            "unread_groups": dict(self.unread_groups),
            "directory_read": self.directory_read,
            "notes": list(self.notes),
        }


def describe_change(change: Change, site: Callable[[str], str] = str, group: Callable[[str], str] = str) -> str:
    """One change to a person, in words: ``give Manager on Risk at Birch High``, ``remove them from Birch SLT``."""
    if isinstance(change, Assign):
        where = f"{change.module} at {site(change.site_id)}"
        if change.previous is None:
            return f"give {change.role.value} on {where}"
        return f"change {where} from {change.previous.value} to {change.role.value}"
    if isinstance(change, Unassign):
        return f"remove {change.previous.value} on {change.module} at {site(change.site_id)}"
    if isinstance(change, CreateUser):
        return "create their CalmCompliance account"
    if isinstance(change, LinkUser):
        return "link their invited CalmCompliance account to Azure"
    if isinstance(change, RelinkUser):
        return "move their CalmCompliance account over from a deleted Azure account"
    if isinstance(change, UpdateUser):
        what = ", ".join(field.replace("_", " ") for field in change.changed) or "details"
        return "reactivate their account" if change.reactivate else f"update their {what}"
    if isinstance(change, DeactivateUser):
        return "deactivate their account (no access left)"
    if isinstance(change, AddGroupMember):
        return f"add them to group {group(change.group_external_id)}"
    if isinstance(change, RemoveGroupMember):
        return f"remove them from group {group(change.group_external_id)}"
    return type(change).__name__  # pragma: no cover - group-only changes are never a person's


def _status(user: DirectoryUser | None, config: SyncConfig, plan: Plan | None) -> tuple[PersonStatus, str | None]:
    if user is None:
        return "not_found", None
    skip = skip_reason(user, config)
    if skip is not None:
        if skip.excluded:
            return "excluded", skip.reason
        if not user.account_enabled:
            return "disabled", skip.reason
        if user.is_guest and not config.include_guests:
            return "guest", skip.reason
        return "skipped", skip.reason
    if plan is not None:
        for other in plan.skipped:
            if other.external_id == user.id:
                return "skipped", other.reason
    return "found", None


def _change_user(change: Change) -> set[str]:
    ids = {change.external_id}
    if isinstance(change, RelinkUser):
        ids.add(change.previous_external_id)
    return ids


def _access_explained(
    config: SyncConfig, groups: Sequence[GroupPath], names: Mapping[str, str], site_names: Mapping[str, str]
) -> tuple[AccessExplained, ...]:
    """Per site and module, the winning role and every mapped group of theirs that gives one there."""
    access: list[AccessExplained] = []
    winners = config.mappings.access_with_reasons(group.group_id for group in groups)
    mine = {group.group_id for group in groups}
    for (site_id, module), (role, because) in sorted(winners.items()):
        sources: list[RoleSource] = []
        for mapping in config.mappings.mappings:
            given = mapping.roles.get(module)
            if mapping.group_id not in mine or mapping.site_id != site_id or given is None:
                continue
            winner = given is role and mapping.group_id in because
            sources.append(RoleSource(mapping.group_id, names.get(mapping.group_id) or mapping.group_id, given, winner))
        sources.sort(key=lambda source: (not source.winner, -source.role._rank, source.group_name.casefold()))
        access.append(AccessExplained(site_id, site_names.get(site_id) or site_id, module, role, tuple(sources)))
    return tuple(access)


def _grants_explained(
    config: SyncConfig,
    trust_name: str,
    site_names: Mapping[str, str],
    trust_of_site: Mapping[str, tuple[str, str]],
    grants: Iterable[Grant],
    synced_access: Mapping[tuple[str, str], Role],
) -> tuple[tuple[GrantExplained, ...], tuple[GrantExplained, ...], tuple[GrantExplained, ...]]:
    """Their access by where it comes from: synced by this trust, granted by hand, synced by other trusts."""

    def explained(grant: Grant, source: str, trust: tuple[str, str] | None = None) -> GrantExplained:
        return GrantExplained(
            grant.site_id, site_names.get(grant.site_id) or grant.site_id, grant.module, grant.role, source,
            trust[0] if trust else None, trust[1] if trust else None,
        )

    synced = tuple(
        GrantExplained(site_id, site_names.get(site_id) or site_id, module, role, "azure", config.trust_site_id, trust_name)
        for (site_id, module), role in sorted(synced_access.items())
    )
    manual: list[GrantExplained] = []
    others: list[GrantExplained] = []
    for grant in sorted(grants, key=lambda g: (g.site_id, g.module)):
        if grant.source == "manual":
            manual.append(explained(grant, "manual"))
            continue
        trust = trust_of_site.get(grant.site_id)
        if trust is not None and trust[0] != config.trust_site_id:
            others.append(explained(grant, "azure", trust))
    return synced, tuple(manual), tuple(others)


def _changes_for(
    plan: Plan | None, pending: Hold | None, person_ids: set[str]
) -> tuple[tuple[Change, ...], tuple[Change, ...], str | None, HoldReason | None]:
    """The plan's changes and held removals for this person, and the hold (id, reason) holding them."""
    if plan is None:
        return (), (), None, None
    planned = tuple(change for change in plan.changes if _change_user(change) & person_ids)
    held = tuple(change for change in plan.held_removals if _change_user(change) & person_ids)
    if not held:
        return planned, held, None, None
    if plan.hold_reason == "partial_read":  # deferred, not part of any hold: nothing to confirm
        return planned, held, None, plan.hold_reason
    hold_id = plan.hold_id
    if hold_id is None and pending is not None and any(change.external_id in pending.users for change in held):
        hold_id = pending.id
    return planned, held, hold_id, plan.hold_reason


def _identity(user: DirectoryUser | None, stored: StoredUser | None) -> dict[str, Any]:
    """Who they are: Azure's word first, the store's where Azure has none."""
    return {
        "external_id": user.id if user is not None else (stored.external_id if stored else None),
        "display_name": (user.display_name if user else None) or (stored.display_name if stored else None),
        "email": (user.email if user is not None else None) or (stored.email if stored else None),
        "store_user_id": stored.user_id if stored else None,
        "store_active": stored.active if stored else None,
    }


def explain_person(
    *,
    who: str,
    config: SyncConfig,
    trust_name: str,
    site_names: Mapping[str, str],
    trust_of_site: Mapping[str, tuple[str, str]],
    user: DirectoryUser | None,
    stored: StoredUser | None,
    groups: Sequence[GroupPath],
    group_names: Mapping[str, str],
    grants: Sequence[Grant] | None,
    synced_access: Mapping[tuple[str, str], Role],
    plan: Plan | None,
    pending: Hold | None,
    unread_groups: Mapping[str, str],
    directory_read: Literal["person", "mapped_groups"],
    not_found_reason: str | None = None,
    notes: Sequence[str] = (),
) -> Explanation:
    """Put one person's facts together (see the module docstring for where each answer comes from).

    ``trust_of_site``: site id -> (trust id, trust name), for grants from
    other trusts; ``grants``: every grant the store holds for them
    (``None``: the store cannot list them).
    """
    status, reason = _status(user, config, plan)
    if status == "not_found":
        reason = not_found_reason
    names = {**group_names, **{group.group_id: group.name for group in groups}}
    synced, manual, others = _grants_explained(
        config, trust_name, site_names, trust_of_site, grants or (), synced_access
    )
    person_ids = {ext for ext in (user.id if user else None, stored.external_id if stored else None) if ext}
    planned, held, hold_id, hold_reason = _changes_for(plan, pending, person_ids)
    tenant = _tenant(config, user, stored, groups, plan)
    return Explanation(
        who=who,
        trust_site_id=config.trust_site_id,
        trust_name=trust_name,
        status=status,
        reason=reason,
        **_identity(user, stored),
        groups=tuple(groups),
        access=_access_explained(config, groups, names, site_names),
        synced=synced,
        manual_grants=manual,
        other_trusts=others,
        grants_known=grants is not None,
        planned=planned,
        held=held,
        hold_id=hold_id,
        hold_reason=hold_reason,
        unread_groups=dict(unread_groups),
        directory_read=directory_read,
        notes=tuple(notes),
        site_names=dict(site_names),
        group_names=names,
        tenant_id=tenant, tenant_name=config.tenant_label(tenant),
    )


def _tenant(
    config: SyncConfig, user: DirectoryUser | None, stored: StoredUser | None, groups: Sequence[GroupPath],
    plan: Plan | None,
) -> str | None:
    """The person's tenant, for a trust with several: as the plan read it, else as stored, else their groups'."""
    if len(config.tenant_ids) <= 1:
        return None
    ids = [ext for ext in (user.id if user else None, stored.external_id if stored else None) if ext]
    tenant = next((plan.tenants[ext] for ext in ids if plan is not None and ext in plan.tenants), None)
    tenant = tenant or (stored.tenant_id if stored else None)
    return tenant or next((config.tenant_of(g.group_id) for g in groups if config.tenant_of(g.group_id)), None)
