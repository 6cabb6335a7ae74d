"""Import Log events."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["AuditEvent", "AuditKind", "utc_now"]


class AuditKind(enum.StrEnum):
    """What an Import Log entry records."""

    DISCOVERY = "discovery"
    IMPORT_STARTED = "import_started"
    IMPORT_COMPLETED = "import_completed"
    IMPORT_FAILED = "import_failed"
    USER_CREATED = "user_created"
    USER_LINKED = "user_linked"
    USER_UPDATED = "user_updated"
    USER_DEACTIVATED = "user_deactivated"
    ASSIGNMENT_ADDED = "assignment_added"
    ASSIGNMENT_CHANGED = "assignment_changed"
    ASSIGNMENT_REMOVED = "assignment_removed"
    USER_EXCLUDED = "user_excluded"
    USER_SKIPPED = "user_skipped"
    REMOVALS_HELD = "removals_held"
    ERROR = "error"
    IMPORT_REFUSED = "import_refused"
    USER_RELINKED = "user_relinked"
    HOLD_CLEARED = "hold_cleared"
    GROUP_CREATED = "group_created"
    GROUP_UPDATED = "group_updated"
    GROUP_RETIRED = "group_retired"
    GROUP_MEMBER_ADDED = "group_member_added"
    GROUP_MEMBER_REMOVED = "group_member_removed"
    REMOVALS_DEFERRED = "removals_deferred"  # held by a partial read this run, naming the unread groups
    IMPORT_ABANDONED = "import_abandoned"  # a run that died without an end, closed by the next run
    HOLD_CONFIRMED = "hold_confirmed"

    def __str__(self) -> str:
        return self.value


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _aware_utc(value: dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise ValueError(f"AuditEvent.at must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(dt.UTC)


def _plain_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    return dict(detail)


@attrs.frozen(hash=False)
class AuditEvent:
    """One Import Log entry.

    ``subject`` is what the event is about (an Entra object id, a group id);
    ``detail`` holds JSON-safe specifics. Never a secret.
    """

    at: dt.datetime = attrs.field(converter=_aware_utc)
    trust_site_id: str
    kind: AuditKind = attrs.field(converter=AuditKind)
    message: str
    run_id: str | None = None
    actor_id: str | None = None
    subject: str | None = None
    detail: dict[str, Any] = attrs.field(factory=dict, converter=_plain_detail)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``at`` as ISO 8601)."""
        return {
            "at": self.at.isoformat(),
            "trust_site_id": self.trust_site_id,
            "kind": self.kind.value,
            "message": self.message,
            "run_id": self.run_id,
            "actor_id": self.actor_id,
            "subject": self.subject,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """Read back what :meth:`to_dict` wrote."""
        return cls(
            at=dt.datetime.fromisoformat(data["at"]),
            trust_site_id=data["trust_site_id"],
            kind=AuditKind(data["kind"]),
            message=data["message"],
            run_id=data.get("run_id"),
            actor_id=data.get("actor_id"),
            subject=data.get("subject"),
            detail=data.get("detail") or {},
        )
