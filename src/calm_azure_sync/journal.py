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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .audit.events import AuditEvent, AuditKind
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
    Unassign,
    UpdateUser,
    UpsertGroup,
    change_kind,
    change_to_dict,
)
from .store.protocol import ChangeResult

__all__ = ["Journal", "RefusalReason", "describe_counts"]

Label = Callable[[str], str]
"""Names a user by external id (their email when known)."""

RefusalReason = str
"""``not_authorized``, ``child_site``, ``invalid_config``, ``already_running``,
``tenant_mismatch``, ``hold_mismatch`` or ``unreadable_state``."""


def _assign(change: Assign, who: Label, group: Label) -> tuple[AuditKind, str]:
    where = f"{change.module} at {change.site_id}"
    because = f" (groups: {', '.join(map(group, change.because))})" if change.because else ""
    if change.previous is None:
        return AuditKind.ASSIGNMENT_ADDED, f"Gave {who(change.external_id)} {change.role.value} on {where}{because}"
    return (
        AuditKind.ASSIGNMENT_CHANGED,
        f"Changed {who(change.external_id)} on {where} from {change.previous.value} to {change.role.value}{because}",
    )


# The one table: change type -> (Import Log kind, message) for an applied change.
_ENTRIES: Mapping[type, Callable[[Any, Label, Label], tuple[AuditKind, str]]] = {
    CreateUser: lambda c, who, group: (AuditKind.USER_CREATED, f"Created user {c.email} ({c.display_name})"),
    LinkUser: lambda c, who, group: (AuditKind.USER_LINKED, f"Linked invited user {c.email} to Azure"),
    RelinkUser: lambda c, who, group: (
        AuditKind.USER_RELINKED,
        f"Relinked user {c.email} to Azure account {c.external_id}: account {c.previous_external_id} no longer exists",
    ),
    UpdateUser: lambda c, who, group: (AuditKind.USER_UPDATED, f"Updated user {c.email}: {', '.join(c.changed)}"),
    DeactivateUser: lambda c, who, group: (
        AuditKind.USER_DEACTIVATED, f"Deactivated user {who(c.external_id)}: no access left"
    ),
    Assign: _assign,
    Unassign: lambda c, who, group: (
        AuditKind.ASSIGNMENT_REMOVED,
        f"Removed {who(c.external_id)}'s {c.previous.value} on {c.module} at {c.site_id}",
    ),
    UpsertGroup: lambda c, who, group: (
        AuditKind.GROUP_UPDATED, f"Synced group {c.display_name} (sites: {', '.join(c.site_ids) or 'none'})"
    ),
    AddGroupMember: lambda c, who, group: (
        AuditKind.GROUP_MEMBER_ADDED, f"Added {who(c.external_id)} to group {group(c.group_external_id)}"
    ),
    RemoveGroupMember: lambda c, who, group: (
        AuditKind.GROUP_MEMBER_REMOVED, f"Removed {who(c.external_id)} from group {group(c.group_external_id)}"
    ),
    RetireGroup: lambda c, who, group: (
        AuditKind.GROUP_RETIRED, f"Retired group {group(c.external_id)}: its mapping was removed"
    ),
}


def describe_counts(counts: Mapping[str, int]) -> str:
    shown = [f"{count} {kind.replace('_', ' ')}" for kind, count in counts.items() if count]
    return ", ".join(shown) if shown else "nothing to change"


def _held_entry(change: Change) -> dict[str, Any]:
    entry = change_to_dict(change)
    entry["subject"] = change.external_id
    return entry


@attrs.frozen
class Journal:
    """The Import Log entries of one trust's run (or of a discovery), with who acted."""

    trust_site_id: str
    clock: Callable[[], dt.datetime]
    run_id: str | None = None
    actor_id: str | None = None

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
            detail=dict(detail or {}),
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
    ) -> AuditEvent:
        """The one ``discovery`` entry of a read: how, why, and every mapped group's figures in ``detail``.

        ``detail["groups"]`` maps each mapped group that was read to its user
        count; ``detail["unreadable"]`` lists the mapped groups that were not
        read completely (each also gets its own ``error`` entry, see
        :meth:`read_errors`). One entry whatever the number of groups: the
        Import Log of a quiet run stays a few rows. ``settled_by`` (a settled
        run) names the run whose figures these are, and ``left_out`` counts
        the users that run left out (``skipped``, ``excluded``), which a
        settled run does not log one by one again.
        """
        read = {group_id: group_users[group_id] for group_id in group_ids if group_id in group_users}
        failed = [group_id for group_id in group_ids if group_id not in read and group_id in unreadable]
        users = sum(read.values())
        how = "" if mode is None else f"Read the directory {'incrementally' if mode == 'incremental' else 'in full'}"
        parts = [f"{how}: {why}" if how and why else how] if how else []
        figures = f"{len(read)} of {len(group_ids)} mapped groups read, {users} group members"
        if failed:
            figures += f"; {len(failed)} not read completely ({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''})"
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
        message = "; ".join(parts)
        return self.event(AuditKind.DISCOVERY, message[:1].upper() + message[1:], detail=detail)

    def discovered(self, groups: int) -> AuditEvent:
        return self.event(AuditKind.DISCOVERY, f"Discovered {groups} Azure groups", detail={"groups": groups})

    def read_errors(
        self, unreadable: Mapping[str, str], group_ids: Sequence[str], *, stale: frozenset[str] = frozenset()
    ) -> list[AuditEvent]:
        """An ``error`` entry per mapped group that could not be read completely (failures only).

        A stale mapping (``stale``) gets its error from :meth:`plan_events`,
        which can say how many removals it keeps held.
        """
        return [
            self.event(
                AuditKind.ERROR,
                f"Group {group_id} {unreadable[group_id]}",
                subject=group_id,
                detail={"group_id": group_id, "stage": "read"},
            )
            for group_id in group_ids
            if group_id in unreadable and group_id not in stale
        ]

    def plan_events(self, plan: Plan, *, confirmed: str | None = None) -> list[AuditEvent]:
        """Who was left out, what is held and why, what stale mappings keep held, what was cleared."""
        events = []
        for skip in plan.skipped:
            kind = AuditKind.USER_EXCLUDED if skip.excluded else AuditKind.USER_SKIPPED
            verb = "Excluded" if skip.excluded else ("Conflict for" if skip.conflict else "Skipped")
            events.append(
                self.event(
                    kind,
                    f"{verb} {skip.email or skip.external_id}: {skip.reason}",
                    subject=skip.external_id,
                    detail={
                        "email": skip.email,
                        "reason": skip.reason,
                        "keeps_access": skip.keeps_access,
                        "conflict": skip.conflict,
                    },
                )
            )
        for group_id, held in plan.stale_groups.items():
            events.append(
                self.event(
                    AuditKind.ERROR,
                    f"Stale mapping: group {group_id} no longer exists in Azure; it keeps {held} removals held "
                    "until the mapping is removed",
                    subject=group_id,
                    detail={"group_id": group_id, "stage": "read", "stale": True, "removals_held": held},
                )
            )
        if plan.held_removals:
            events.append(self._held(plan))
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

    def _held(self, plan: Plan) -> AuditEvent:
        users = len({change.external_id for change in plan.held_removals})
        if plan.hold_reason == "partial_read":
            why = "not every mapped group could be read completely"
        elif plan.hold_reason == "group_shrank":
            why = f"mapped groups lost most of their members at once ({', '.join(plan.held_groups)})"
        else:
            why = f"they would remove access from {users} of {plan.synced_users} synced users"
        confirm = f"; review and confirm hold {plan.hold_id} to apply them" if plan.hold_id else ""
        return self.event(
            AuditKind.REMOVALS_HELD,
            f"Held {len(plan.held_removals)} removals for {users} users: {why}{confirm}",
            detail={
                "reason": plan.hold_reason,
                "hold_id": plan.hold_id,
                "group_ids": list(plan.held_groups),
                "removals": len(plan.held_removals),
                "users": users,
                "changes": [_held_entry(change) for change in plan.held_removals],
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
        if result.outcome == "failed":
            message = f"{change_kind(change)} for {who(change.external_id)} failed: {result.error}"
            return self.event(
                AuditKind.ERROR,
                message,
                subject=change.external_id,
                detail={"change": change_to_dict(change), "error": result.error},
            )
        kind, message = _ENTRIES[type(change)](change, who, group)
        if isinstance(change, UpsertGroup) and change.external_id not in existing_groups:
            kind, message = AuditKind.GROUP_CREATED, message.replace("Synced group", "Created group", 1)
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
