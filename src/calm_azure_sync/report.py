"""The outcome of one import, for hosts and for people."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping
from typing import Any

import attrs

from ._html import html_table
from .audit.events import AuditEvent
from .plan import Change, HoldReason, Plan, change_to_dict

__all__ = ["ImportReport"]


@attrs.frozen(repr=False)
class ImportReport:
    """What one run of :meth:`Reconciler.run` did.

    ``counts`` holds the applied changes by kind (``create_user``, ``assign``…)
    and ``skipped``, ``excluded``, ``failed`` and ``held``; ``errors`` says
    what went wrong, one line each; ``held_removals`` are the removals held
    back (``hold_reason`` says why). ``ok`` is false when anything failed: a
    group that could not be read, a change the store refused, an audit sink
    that was down. A run whose only news is a hold is ``ok``.
    ``unrecorded_events`` are Import Log events the audit sink did not take
    (kept here so the host can still store them).
    """

    run_id: str
    trust_site_id: str
    started_at: dt.datetime
    finished_at: dt.datetime
    counts: Mapping[str, int]
    errors: tuple[str, ...]
    held_removals: tuple[Change, ...]
    ok: bool
    hold_reason: HoldReason | None = None
    plan: Plan | None = attrs.field(default=None, repr=False)
    unrecorded_events: tuple[AuditEvent, ...] = attrs.field(default=(), repr=False)

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the report."""
        return {
            "run_id": self.run_id,
            "trust_site_id": self.trust_site_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "counts": dict(self.counts),
            "errors": list(self.errors),
            "held_removals": [change_to_dict(change) for change in self.held_removals],
            "hold_reason": self.hold_reason,
            "ok": self.ok,
        }

    def __repr__(self) -> str:
        counts = ", ".join(f"{kind}={count}" for kind, count in self.counts.items() if count)
        return (
            f"<ImportReport run={self.run_id} trust={self.trust_site_id!r} ok={self.ok}"
            f"{' (' + counts + ')' if counts else ''}, errors={len(self.errors)}, "
            f"held={len(self.held_removals)}>"
        )

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAILED"
        counts = ", ".join(f"{kind}={count}" for kind, count in self.counts.items() if count)
        lines = [
            f"Import {self.run_id} of trust {self.trust_site_id}: {status} "
            f"in {self.duration_seconds:.1f}s ({counts or 'no changes'})"
        ]
        if self.held_removals:
            lines.append(f"  {len(self.held_removals)} removals held ({self.hold_reason})")
        lines.extend(f"  error: {error}" for error in self.errors[:20])
        if len(self.errors) > 20:
            lines.append(f"  … and {len(self.errors) - 20} more errors")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        status = "ok" if self.ok else "failed"
        errors = "".join(f"<li>{html.escape(error)}</li>" for error in self.errors[:100])
        held = (
            f"<p>{len(self.held_removals)} removals held ({html.escape(str(self.hold_reason))})</p>"
            if self.held_removals
            else ""
        )
        return (
            f"<h4>Import {html.escape(self.run_id)} of trust {html.escape(self.trust_site_id)}: {status}</h4>"
            f"{html_table(['kind', 'count'], self.counts.items())}"
            f"{held}{'<h5>Errors</h5><ul>' + errors + '</ul>' if errors else ''}"
        )
