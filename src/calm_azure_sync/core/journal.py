"""What the Import Log says, as values. Pure: builds :class:`AuditEvent` objects, records nothing.

The Import Log is the one place an admin sees what the sync did, so it
reports outcomes, never intentions: an applied change gets the entry of the
table below, a change the store left ``unchanged`` gets none (no
``user_deactivated`` for a user who stays active, one ``user_created`` per
user), and a failed one an ``error``. Every refusal is an ``import_refused``
entry with its reason and actor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from ..audit.events import AuditEvent, AuditKind
from ..store.protocol import ChangeResult
from .plan import (
    AddGroupMember,
    Assign,
    Change,
    CreateUser,
    DeactivateUser,
    LinkUser,
    Plan,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Skip,
    Unassign,
    UpdateUser,
    UpsertGroup,
    change_kind,
    change_to_dict,
)
from .state import Hold, HoldScope

__all__ = ["Journal", "RefusalReason", "describe_counts", "skip_digest", "skips_to_remember"]

Label = Callable[[str], str]
"""Names a user by external id (their email when known)."""

RefusalReason = Literal[
    "not_authorized", "child_site", "invalid_config", "already_running", "tenant_mismatch", "hold_mismatch",
    "unreadable_state", "store_failed",
]
"""Why an import was refused before it started (the ``reason`` of an ``import_refused`` entry)."""


def _assign(change: Assign, who: Label, group: Label, site: Label) -> tuple[AuditKind, str]:
    where = f"{change.module} at {site(change.site_id)}"
    because = f" (groups: {', '.join(map(group, change.because))})" if change.because else ""
    if change.previous is None:
        return AuditKind.ASSIGNMENT_ADDED, f"Gave {who(change.external_id)} {change.role.value} on {where}{because}"
    return (
        AuditKind.ASSIGNMENT_CHANGED,
        f"Changed {who(change.external_id)} on {where} from {change.previous.value} to {change.role.value}{because}",
    )


class _NewGroup:
    """The row of :data:`_ENTRIES` for an ``UpsertGroup`` that created the group."""


# The one table: change type -> (Import Log kind, message) for an applied change, given how to
# name a user, a group and a site.
_ENTRIES: Mapping[type, Callable[[Any, Label, Label, Label], tuple[AuditKind, str]]] = {
    CreateUser: lambda c, who, group, site: (AuditKind.USER_CREATED, f"Created user {c.email} ({c.display_name})"),
    LinkUser: lambda c, who, group, site: (AuditKind.USER_LINKED, f"Linked invited user {c.email} to Azure"),
    RelinkUser: lambda c, who, group, site: (
        AuditKind.USER_RELINKED,
        f"Relinked user {c.email} to Azure account {c.external_id}: account {c.previous_external_id} no longer exists",
    ),
    UpdateUser: lambda c, who, group, site: (AuditKind.USER_UPDATED, f"Updated user {c.email}: {', '.join(c.changed)}"),
    DeactivateUser: lambda c, who, group, site: (
        AuditKind.USER_DEACTIVATED, f"Deactivated user {who(c.external_id)}: no access left"
    ),
    Assign: _assign,
    Unassign: lambda c, who, group, site: (
        AuditKind.ASSIGNMENT_REMOVED,
        f"Removed {who(c.external_id)}'s {c.previous.value} on {c.module} at {site(c.site_id)}",
    ),
    UpsertGroup: lambda c, who, group, site: (
        AuditKind.GROUP_UPDATED, f"Synced group {c.display_name} (sites: {', '.join(map(site, c.site_ids)) or 'none'})"
    ),
    # An upsert of a group the store did not have yet: looked up by change_entry, not by type.
    _NewGroup: lambda c, who, group, site: (
        AuditKind.GROUP_CREATED, f"Created group {c.display_name} (sites: {', '.join(map(site, c.site_ids)) or 'none'})"
    ),
    AddGroupMember: lambda c, who, group, site: (
        AuditKind.GROUP_MEMBER_ADDED, f"Added {who(c.external_id)} to group {group(c.group_external_id)}"
    ),
    RemoveGroupMember: lambda c, who, group, site: (
        AuditKind.GROUP_MEMBER_REMOVED, f"Removed {who(c.external_id)} from group {group(c.group_external_id)}"
    ),
    RetireGroup: lambda c, who, group, site: (
        AuditKind.GROUP_RETIRED, f"Retired group {group(c.external_id)}: its mapping was removed"
    ),
}


def describe_counts(counts: Mapping[str, int]) -> str:
    shown = [f"{count} {kind.replace('_', ' ')}" for kind, count in counts.items() if count]
    return ", ".join(shown) if shown else "nothing to change"


def _held_entry(change: Change, hold: Hold | None) -> dict[str, Any]:
    entry = change_to_dict(change)
    entry["subject"] = change.external_id
    if hold is not None:
        entry["user_id"] = hold.owners.get(change.external_id)
        entry["text"] = hold.describe_change(change)
    return entry


@attrs.frozen
class Journal:
    """The Import Log entries of one trust's run (or of a discovery), with who acted."""

    trust_site_id: str
    clock: Callable[[], dt.datetime]
    run_id: str | None = None
    actor_id: str | None = None
    site_names: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    """Site id -> ``Site.name``: messages name sites as people know them."""
    tenant_of: Callable[[str], str | None] | None = attrs.field(default=None, repr=False)
    """A trust with several tenants (API §13): an entry's subject (a group or an account) -> its tenant,
    carried as ``detail["tenant_id"]`` by every entry (``None`` for the trust's own entries)."""
    tenant_label: Callable[[str | None], str | None] = attrs.field(default=lambda tenant: tenant, repr=False)
    """How messages name a tenant: its ``tenant_names`` entry, else its id."""

    def tenant_words(self, subject: str) -> str:
        """`` (tenant <name>)`` after a group or an account, when the trust has several tenants."""
        if self.tenant_of is None or (tenant := self.tenant_of(subject)) is None:
            return ""
        return f" (tenant {self.tenant_label(tenant)})"

    def site(self, site_id: str) -> str:
        """How a message names a site: its name, else its id."""
        return self.site_names.get(site_id) or site_id

    def event(
        self, kind: AuditKind, message: str, *, subject: str | None = None, detail: Mapping[str, Any] | None = None
    ) -> AuditEvent:
        return AuditEvent(
            at=self.clock(),
            trust_site_id=self.trust_site_id,
            kind=kind,
            message=message,
            run_id=self.run_id,
            actor_id=self.actor_id,
            subject=subject,
            detail=(
                dict(detail or {}) if self.tenant_of is None
                else {**(detail or {}), "tenant_id": self.tenant_of(subject) if subject is not None else None}
            ),
        )

    def refused(self, reason: RefusalReason, error: BaseException) -> AuditEvent:
        return self.event(
            AuditKind.IMPORT_REFUSED,
            f"Import refused ({reason.replace('_', ' ')}): {error}",
            detail={"reason": reason, "actor_id": self.actor_id, "error": type(error).__name__},
        )

    def started(self, mapped_groups: int) -> AuditEvent:
        by = f" by {self.actor_id}" if self.actor_id else ""
        return self.event(AuditKind.IMPORT_STARTED, f"Import started{by}", detail={"mapped_groups": mapped_groups})

    def abandoned(self, run_id: str, started_at: dt.datetime) -> AuditEvent:
        """The end of run ``run_id``, which stopped without recording one; this run (``closed_by``) records it.

        The entry carries the dead run's ``run_id``, so that run's entries end with it.
        """
        return attrs.evolve(self, run_id=run_id).event(
            AuditKind.IMPORT_ABANDONED,
            f"Import {run_id}, started {started_at.isoformat()}, did not finish: it stopped without recording "
            f"its end (killed, or its lock or database was lost); closed by import {self.run_id}",
            detail={"run_id": run_id, "started_at": started_at.isoformat(), "closed_by": self.run_id},
        )

    def read_summary(
        self,
        group_users: Mapping[str, int],
        unreadable: Mapping[str, str],
        group_ids: Sequence[str],
        *,
        mode: str | None = None,
        why: str | None = None,
        settled_by: str | None = None,
        left_out: Mapping[str, int] | None = None,
        group_names: Mapping[str, str] | None = None,
        people_planned: int | None = None,
    ) -> AuditEvent:
        """The one ``discovery`` entry of a read: how, why, and every mapped group's figures in ``detail``.

        ``detail["groups"]`` maps each mapped group that was read to its user
        count; ``detail["unreadable"]`` lists the mapped groups that were not
        read completely (each also gets its own ``error`` entry, see
        :meth:`read_errors`). One entry whatever the number of groups: the
        Import Log of a quiet run stays a few rows. ``settled_by`` (a settled
        run) names the run whose figures these are, and ``left_out`` counts
        the users that run left out (``skipped``, ``excluded``), which a
        settled run does not log one by one again. ``group_names`` names the
        groups in the message (ids stay in ``detail``). ``people_planned``: the
        run planned by difference, that many people (``detail["people_planned"]``).
        """
        read = {group_id: group_users[group_id] for group_id in group_ids if group_id in group_users}
        failed = [group_id for group_id in group_ids if group_id not in read and group_id in unreadable]
        users = sum(read.values())
        how = "" if mode is None else f"Read the directory {'incrementally' if mode == 'incremental' else 'in full'}"
        parts = [f"{how}: {why}" if how and why else how] if how else []
        figures = f"{len(read)} of {len(group_ids)} mapped groups read, {users} group members"
        if failed:
            names = [(group_names or {}).get(group_id) or group_id for group_id in failed]
            figures += f"; {len(failed)} not read completely ({', '.join(names[:5])}{', ...' if len(failed) > 5 else ''})"
        parts.append(figures)
        detail: dict[str, Any] = {"groups": read, "unreadable": failed, "users": users}
        if mode is not None:
            detail.update(mode=mode, why=why)
        if settled_by is not None:
            detail["settled_by"] = settled_by
            shown = {kind: count for kind, count in (left_out or {}).items() if count}
            detail["left_out"] = dict(left_out or {})
            if shown:
                parts.append(
                    "left out as that run did: " + ", ".join(f"{count} {kind}" for kind, count in shown.items())
                )
        if people_planned is not None:
            detail["people_planned"] = people_planned
            parts.append(f"planned only the {people_planned} people the changes touched")
        message = "; ".join(parts)
        return self.event(AuditKind.DISCOVERY, message[:1].upper() + message[1:], detail=detail)

    def discovered(self, groups: int) -> AuditEvent:
        return self.event(AuditKind.DISCOVERY, f"Discovered {groups} Azure groups", detail={"groups": groups})

    def read_errors(
        self,
        unreadable: Mapping[str, str],
        group_ids: Sequence[str],
        *,
        stale: frozenset[str] = frozenset(),
        group_names: Mapping[str, str] | None = None,
    ) -> list[AuditEvent]:
        """An ``error`` entry per mapped group that could not be read completely (failures only).

        A stale mapping (``stale``) gets its error from :meth:`plan_events`,
        which can say how many removals it keeps held. ``group_names`` name
        the groups in messages (the ids stay in ``subject`` and ``detail``).
        """
        names = group_names or {}
        return [
            self.event(
                AuditKind.ERROR,
                # A plan's group names carry the tenant already; an id alone gets it here.
                f"Group {names.get(group_id) or group_id + self.tenant_words(group_id)} {unreadable[group_id]}",
                subject=group_id,
                detail={
                    "group_id": group_id,
                    "stage": "read",
                    "access_denied": unreadable[group_id].startswith("access denied"),
                },
            )
            for group_id in group_ids
            if group_id in unreadable and group_id not in stale
        ]

    def _skip_events(self, skipped: Sequence[Skip], told: Mapping[str, str]) -> list[AuditEvent]:
        """A ``user_skipped`` / ``user_excluded`` entry per skip the Import Log has not told yet."""
        events = []
        for skip in skipped:
            if told.get(skip.external_id) == skip_digest(skip):
                continue
            kind = AuditKind.USER_EXCLUDED if skip.excluded else AuditKind.USER_SKIPPED
            verb = "Excluded" if skip.excluded else ("Conflict for" if skip.conflict else "Skipped")
            events.append(
                self.event(
                    kind,
                    f"{verb} {skip.email or skip.external_id}{self.tenant_words(skip.external_id)}: {skip.reason}",
                    subject=skip.external_id,
                    detail={
                        "email": skip.email,
                        "reason": skip.reason,
                        "keeps_access": skip.keeps_access,
                        "conflict": skip.conflict,
                    },
                )
            )
        return events

    def plan_events(
        self,
        plan: Plan,
        *,
        confirmed: str | None = None,
        scope: HoldScope | None = None,
        skips_logged: Mapping[str, str] | None = None,
    ) -> list[AuditEvent]:
        """Who was left out, what is held and why, what stale mappings keep held, what was cleared.

        ``skips_logged`` (``SyncState.skips_logged``): the skips the Import Log
        already told about; a skip is logged again only when it is new or its
        category or reason changed (:func:`skips_to_remember`).
        """
        events = self._skip_events(plan.skipped, skips_logged or {})
        for group_id, held in plan.stale_groups.items():
            name = plan.group_names.get(group_id) or group_id
            events.append(
                self.event(
                    AuditKind.ERROR,
                    f"Stale mapping: group {name} no longer exists in Azure; it keeps {held} removals held "
                    "until the mapping is removed",
                    subject=group_id,
                    detail={
                        "group_id": group_id, "group_name": name, "stage": "read", "stale": True,
                        "removals_held": held,
                    },
                )
            )
        if confirmed is not None and (plan.confirmed_removals or plan.hold_cleared == confirmed or scope):
            events.append(self._confirmed(plan, confirmed, scope))
        if plan.hold is not None:
            events.append(self._held(plan.hold, plan.synced_users))
        if plan.deferred_removals:
            events.append(self._deferred(plan))
        if plan.hold_cleared is not None:
            events.append(
                self.event(
                    AuditKind.HOLD_CLEARED,
                    f"Hold {plan.hold_cleared} cleared: "
                    + ("confirmed by an admin" if confirmed == plan.hold_cleared else
                       "Azure no longer implies its removals"),
                    detail={"hold_id": plan.hold_cleared, "confirmed": confirmed == plan.hold_cleared},
                )
            )
        return events

    def _held(self, hold: Hold, synced_users: int) -> AuditEvent:
        """The pending hold, exactly: its removals and users, nothing a partial read defers."""
        users = len({hold.owners.get(change.external_id, change.external_id) for change in hold.changes})
        groups = ", ".join(hold.group_names.get(group, group) for group in hold.group_ids)
        why = {
            "group_shrank": f"mapped groups lost most of their members at once ({groups})",
            "mass_removal": f"they would remove access from {users} of {synced_users} synced users",
        }[hold.reason]
        return self.event(
            AuditKind.REMOVALS_HELD,
            f"Held {len(hold.changes)} removals for {users} users: {why}; "
            f"review and confirm hold {hold.id} to apply them",
            detail={
                "reason": hold.reason,
                "hold_id": hold.id,
                "group_ids": list(hold.group_ids),
                "removals": len(hold.changes),
                "users": users,
                "changes": [_held_entry(change, hold) for change in hold.changes],
            },
        )

    def _deferred(self, plan: Plan) -> AuditEvent:
        """Removals a partial read holds this run: not in any hold, decided again by the next complete read."""
        changes = plan.deferred_removals
        users = len({change.external_id for change in changes})
        unread = sorted(plan.unreadable_groups)
        names = ", ".join(plan.group_names.get(group, group) for group in unread)
        return self.event(
            AuditKind.REMOVALS_DEFERRED,
            f"Deferred {len(changes)} removals for {users} users: these groups could not be read completely "
            f"({names}); the next complete read decides them",
            detail={
                "group_ids": unread,
                "group_names": [plan.group_names.get(group, group) for group in unread],
                "removals": len(changes),
                "users": users,
                "changes": [_held_entry(change, None) for change in changes],
            },
        )

    def _confirmed(self, plan: Plan, hold_id: str, scope: HoldScope | None) -> AuditEvent:
        """Who confirmed which held removals (all of a hold, or the part inside ``scope``)."""
        by = f" by {self.actor_id}" if self.actor_id else ""
        part = f" within {scope.describe()}" if scope is not None else ""
        rest = (
            f"; the other {len(plan.hold.changes)} stay held as hold {plan.hold.id}"
            if scope is not None and plan.hold is not None and plan.hold.id != hold_id else ""
        )
        return self.event(
            AuditKind.HOLD_CONFIRMED,
            f"Hold {hold_id} confirmed{by}{part}: applying {len(plan.confirmed_removals)} removals{rest}",
            detail={
                "hold_id": hold_id,
                "confirmed": len(plan.confirmed_removals),
                "scope": None if scope is None else {
                    "group_ids": scope.group_ids, "site_ids": scope.site_ids, "user_ids": scope.user_ids,
                },
                "new_hold_id": plan.hold.id if plan.hold is not None else None,
                "changes": [_held_entry(change, plan.hold) for change in plan.confirmed_removals],
            },
        )

    def change_entry(
        self, result: ChangeResult, who: Label, group: Label, *, existing_groups: frozenset[str] = frozenset()
    ) -> AuditEvent | None:
        """The entry for one change's outcome (``None``: the store left everything as it was).

        ``existing_groups``: the synced groups the store had before the run, so
        an upsert reads as ``group_created`` or ``group_updated``.
        """
        change = result.change
        if result.outcome == "unchanged":
            return None
        if result.outcome != "failed" and isinstance(change, UpdateUser) and change.changed == ("tenant_id",):
            return None  # an account synced before tenants were recorded, qualified once: counted, not told one by one
        if result.outcome == "failed":
            message = f"{change_kind(change)} for {who(change.external_id)} failed: {result.error}"
            return self.event(
                AuditKind.ERROR,
                message,
                subject=change.external_id,
                detail={"change": change_to_dict(change), "error": result.error},
            )
        row: type = type(change)
        if row is UpsertGroup and change.external_id not in existing_groups:
            row = _NewGroup
        kind, message = _ENTRIES[row](change, who, group, self.site)
        return self.event(kind, message, subject=change.external_id, detail=change_to_dict(change))

    def finished(
        self, *, completed: bool, ok: bool, counts: Mapping[str, int], errors: Sequence[str], why: str | None = None
    ) -> AuditEvent:
        if completed:
            return self.event(
                AuditKind.IMPORT_COMPLETED,
                f"Import completed: {describe_counts(counts)}",
                detail={"ok": ok, "counts": dict(counts), "errors": len(errors)},
            )
        reason = why or (errors[-1] if errors else "unknown error")
        return self.event(
            AuditKind.IMPORT_FAILED,
            f"Import failed: {reason}",
            detail={"ok": False, "counts": dict(counts), "errors": list(errors[:20])},
        )


def skip_digest(skip: Skip) -> str:
    """What the Import Log told about a skip, as a short digest: its category and reason."""
    return hashlib.blake2b(f"{skip.category}\0{skip.reason}".encode(), digest_size=6).hexdigest()


def skips_to_remember(skipped: Iterable[Skip]) -> dict[str, str]:
    """``SyncState.skips_logged`` after a run that logged ``skipped``: exactly this run's skips."""
    return {skip.external_id: skip_digest(skip) for skip in skipped}
