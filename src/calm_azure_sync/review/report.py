"""The outcome of one import, for hosts and for people."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import attrs

from .. import review
from ..audit.events import AuditEvent
from ..core.plan import Change, HoldReason, Plan, change_to_dict

__all__ = ["ImportReport"]


@attrs.frozen(repr=False)
class ImportReport:
    """What one run of :meth:`Reconciler.run` did.

    ``counts`` holds the applied changes by kind (``create_user``, ``assign``…)
    and ``skipped`` (out of scope), ``excluded`` (exclusion policy),
    ``conflict`` (email conflicts), ``failed`` and ``held``; its text and HTML
    take those three skip counts from the plan, so they read like the plan's.
    ``errors`` says what went wrong, one line each; ``held_removals`` are the
    removals held back (``hold_reason`` says why; ``hold_id`` is the pending hold an admin
    confirms with ``run(..., confirm_hold=hold_id)``). ``mode`` is the read
    the run made (``"full"`` or ``"incremental"``) and ``mode_reason`` why. ``ok`` is false when anything failed: a
    group that could not be read, a change the store refused, an audit sink
    that was down. A run whose only news is a hold is ``ok``.
    ``unrecorded_events`` are Import Log events the audit sink did not take
    (kept here so the host can still store them).
    ``group_users`` maps each mapped group read completely to its user
    count (a settled run: as the run that settled the trust read them),
    what the run's one ``discovery`` entry in the Import Log lists.
    ``people_planned``: an incremental run that planned by difference
    planned only the people its changes touched (and those sharing an email
    with them): how many; ``None`` when it planned everyone (or, settled,
    no one).
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
    hold_id: str | None = None
    mode: str = "full"
    mode_reason: str | None = None
    group_users: Mapping[str, int] = attrs.field(factory=dict, repr=False)
    people_planned: int | None = None

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
            "group_users": dict(self.group_users),
        }

    def plan_for_review(self) -> Plan:
        """The plan a review of this report shows: the run's plan, the report having the last word on the hold.

        A run refused or failed before it planned has no plan: then a plan of
        what the report itself says (its held removals and hold).
        """
        if self.plan is None:
            return Plan(
                self.trust_site_id,
                held_removals=self.held_removals,
                hold_reason=self.hold_reason,
                hold_id=self.hold_id,
            )
        if self.hold_id is not None and self.hold_id != self.plan.hold_id:
            return attrs.evolve(self.plan, hold_id=self.hold_id)
        return self.plan

    def to_records(self) -> list[dict[str, object]]:
        """The run's planned changes and held removals as plain dicts, for ``pandas.DataFrame``.

        What :meth:`Plan.to_records` gives, each with this run's ``run_id``
        first; empty when the run stopped before it planned.
        """
        return review.report_records(self)

    def __repr__(self) -> str:
        return review.report_repr(self)

    def __str__(self) -> str:
        """Outcome, duration and counts; then held removals (with the hold id), stale groups, conflicts, errors."""
        return review.report_text(self)

    def _repr_html_(self) -> str:
        return review.report_html(self)
