"""Is the sync healthy, and is anything waiting for an admin? :class:`SyncStatus` and :class:`Attention`. Pure: no IO.

:meth:`Reconciler.status <calm_azure_sync.Reconciler.status>` reads the
trust's sync state and the recent Import Log (never the directory) and hands
them to :func:`sync_status`. A run's end hands what changed to
:func:`attention_after_run`, whose items go to ``on_attention``.

The rules, once:

- **Runs** are told apart by ``run_id``: an ``import_started`` with an
  ``import_completed`` (``ok`` from its detail: ``"ok"`` or
  ``"completed_with_errors"``), an ``import_failed`` (``"failed"``), or an
  ``import_abandoned`` naming it (``"abandoned"``). A run with a start and no
  end is ``"running"`` when it is the newest, else ``"abandoned"`` (its end
  never came). Refusals are not runs; the newest is an attention item when
  no run came after it (``already_running`` excepted: another run was busy).
- **The failure streak** counts the newest runs that did not end ``ok``
  (failed, with errors, abandoned), up to the newest ``ok`` one.
- **Attention**, for what an admin must act on: a pending hold
  (``hold_waiting``), a directory that refused access in the last run
  (``access_revoked``: consent revoked, a permission missing, the
  credential), stale mappings in the last run (``stale_mapping``), a streak
  of :data:`FAILURE_STREAK` or more (``repeated_failures``), runs abandoned
  since the last good one (``run_abandoned``), a refusal
  (``import_refused``).
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from .._html import html_table, visible
from ..audit.events import AuditEvent, AuditKind
from ..core.state import Hold

__all__ = [
    "FAILURE_STREAK",
    "RUN_KINDS",
    "Attention",
    "AttentionKind",
    "RunOutcome",
    "RunSummary",
    "SyncStatus",
    "attention_after_run",
    "failure_streak",
    "hold_attention",
    "runs_from_log",
    "sync_status",
]

#: Failed runs in a row that call for an admin.
FAILURE_STREAK = 3

AttentionKind = Literal[
    "hold_waiting",
    "access_revoked",
    "stale_mapping",
    "repeated_failures",
    "run_abandoned",
    "import_refused",
    "email_conflict",
]
RunOutcome = Literal["ok", "completed_with_errors", "failed", "abandoned", "running"]

#: The Import Log entries a status reads (besides the last run's errors).
RUN_KINDS = (
    AuditKind.IMPORT_STARTED,
    AuditKind.IMPORT_COMPLETED,
    AuditKind.IMPORT_FAILED,
    AuditKind.IMPORT_ABANDONED,
    AuditKind.IMPORT_REFUSED,
)


@attrs.frozen
class Attention:
    """Something an admin must act on: ``kind`` (see :data:`AttentionKind`), a sentence, and since when.

    ``tenant_ids``: in a trust with several tenants, the tenants it concerns
    (a refused tenant to reconnect, a tenant's stale mappings); else empty.
    """

    kind: AttentionKind
    message: str
    since: dt.datetime | None = None
    tenant_ids: tuple[str, ...] = ()

    def __str__(self) -> str:
        return visible(self.message)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind, "message": self.message, "since": self.since.isoformat() if self.since else None,
        }
        if self.tenant_ids:  # a trust with several tenants only: one-tenant payloads stay as they were
            data["tenant_ids"] = list(self.tenant_ids)
        return data


@attrs.frozen
class RunSummary:
    """One import as the Import Log tells it: its id, when it started and ended, how it ended."""

    run_id: str
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    outcome: RunOutcome
    message: str = ""
    conflicts: int = 0
    """Directory users the run left as they are because their email belongs to another store user."""

    @property
    def at(self) -> dt.datetime | None:
        """When it ended, else when it started."""
        return self.finished_at or self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "outcome": self.outcome,
            "message": self.message,
            "conflicts": self.conflicts,
        }


def _age(delta: dt.timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 3600:
        return f"{seconds // 60} minutes"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} hours"
    return f"{seconds // 86400} days"


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "?"


@attrs.frozen(repr=False)
class SyncStatus:
    """A trust's sync at a glance: the last runs, the failure streak, the pending hold, what needs an admin.

    ``log_readable`` is false when the Import Log sink cannot be queried
    (then ``last_run``, ``last_success`` and the streak are unknown, shown as
    ``None`` and 0). ``mode_next`` is the read the next automatic run makes
    (``"full"`` or ``"incremental"``) and ``mode_next_reason`` why.
    ``attention`` is everything an admin must act on, most urgent first.
    """

    trust_site_id: str
    trust_name: str
    checked_at: dt.datetime
    last_run: RunSummary | None
    last_success: RunSummary | None
    consecutive_failures: int
    pending_hold: Hold | None
    stale_mappings: tuple[str, ...]
    mode_next: Literal["full", "incremental"]
    mode_next_reason: str
    attention: tuple[Attention, ...] = ()
    log_readable: bool = True
    group_names: Mapping[str, str] = attrs.field(factory=dict, repr=False)

    @property
    def pending_hold_age(self) -> dt.timedelta | None:
        """How long the pending hold has waited (``None``: no hold)."""
        return None if self.pending_hold is None else self.checked_at - self.pending_hold.created_at

    @property
    def healthy(self) -> bool:
        """Nothing needs an admin."""
        return not self.attention

    def sentences(self) -> list[str]:
        lines = []
        if not self.log_readable:
            lines.append("The Import Log cannot be read back from this sink, so the last runs are unknown.")
        elif self.last_run is None:
            lines.append(f"{self.trust_name} has not been imported yet.")
        else:
            run = self.last_run
            outcome = run.outcome.replace("_", " ")
            lines.append(f"The last import of {self.trust_name} ({_when(run.started_at)}) ended {outcome}.")
            if run.outcome != "ok":
                lines.append(
                    f"The last good one was {_when(self.last_success.at)}." if self.last_success
                    else "No import has ended well yet."
                )
        if self.consecutive_failures:
            lines.append(f"{self.consecutive_failures} imports in a row did not end well.")
        lines.append(f"The next import reads {'only what changed' if self.mode_next == 'incremental' else 'everything'}: "
                     f"{self.mode_next_reason}.")
        if self.attention:
            lines.append("Needs attention: " + " ".join(item.message for item in self.attention))
        else:
            lines.append("Nothing needs attention.")
        return lines

    def __str__(self) -> str:
        return visible(" ".join(self.sentences()))

    def __repr__(self) -> str:
        last = self.last_run.outcome if self.last_run else None
        return (
            f"<SyncStatus trust={self.trust_site_id!r} last_run={last} failures={self.consecutive_failures} "
            f"hold={'yes' if self.pending_hold else 'no'} attention={len(self.attention)}>"
        )

    def _repr_html_(self) -> str:
        parts = [f"<h4>Sync of {html.escape(visible(self.trust_name))}: "
                 f"{'healthy' if self.healthy else 'needs attention'}</h4>"]
        rows: list[list[object]] = [
            ["last import", f"{_when(self.last_run.started_at)}: {self.last_run.outcome}" if self.last_run else "none"],
            ["last good import", _when(self.last_success.at) if self.last_success else "none"],
            ["failures in a row", self.consecutive_failures],
            ["next read", f"{self.mode_next}: {self.mode_next_reason}"],
        ]
        if self.pending_hold is not None:
            age = self.pending_hold_age
            rows.append(["hold waiting", f"since {_when(self.pending_hold.created_at)} ({_age(age) if age else '?'})"])
        parts.append(html_table(["", ""], rows))
        if self.attention:
            parts.append(
                "<h5>Needs attention</h5>"
                + html_table(["what", "since", ""], ([a.kind.replace("_", " "), _when(a.since), a.message] for a in self.attention))
            )
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (ids kept)."""
        age = self.pending_hold_age
        return {
            "trust_site_id": self.trust_site_id,
            "checked_at": self.checked_at.isoformat(),
            "last_run": self.last_run.to_dict() if self.last_run else None,
            "last_success": self.last_success.to_dict() if self.last_success else None,
            "consecutive_failures": self.consecutive_failures,
            "pending_hold": None if self.pending_hold is None else {
                "id": self.pending_hold.id,
                "created_at": self.pending_hold.created_at.isoformat(),
                "age_seconds": age.total_seconds() if age is not None else None,
                "reason": self.pending_hold.reason,
                "removals": len(self.pending_hold.changes),
                "users": len(self.pending_hold.users),
            },
            "stale_mappings": list(self.stale_mappings),
            "mode_next": self.mode_next,
            "mode_next_reason": self.mode_next_reason,
            "attention": [item.to_dict() for item in self.attention],
            "log_readable": self.log_readable,
        }


# --- from the Import Log ------------------------------------------------------------------------------


def _abandoned_id(event: AuditEvent) -> str | None:
    for key in ("abandoned_run_id", "dead_run_id", "run_id"):
        value = event.detail.get(key)
        if isinstance(value, str) and value and value != event.run_id:
            return value
    return event.subject


def runs_from_log(newest_first: Sequence[AuditEvent]) -> list[RunSummary]:
    """The runs the entries tell of, newest first (see the module docstring)."""
    starts: dict[str, AuditEvent] = {}
    ends: dict[str, AuditEvent] = {}
    abandoned: dict[str, AuditEvent] = {}
    order: list[str] = []
    for event in newest_first:
        run_id = event.run_id
        if event.kind == AuditKind.IMPORT_ABANDONED:
            dead = _abandoned_id(event)
            if dead:
                abandoned.setdefault(dead, event)
                if dead not in order:
                    order.append(dead)
            continue
        if run_id is None or event.kind == AuditKind.IMPORT_REFUSED:
            continue
        if run_id not in order:
            order.append(run_id)
        if event.kind == AuditKind.IMPORT_STARTED:
            starts.setdefault(run_id, event)
        elif event.kind in (AuditKind.IMPORT_COMPLETED, AuditKind.IMPORT_FAILED):
            ends.setdefault(run_id, event)
    runs: list[RunSummary] = []
    for index, run_id in enumerate(order):
        start, end = starts.get(run_id), ends.get(run_id)
        started = start.at if start else None
        if end is not None:
            if end.kind == AuditKind.IMPORT_FAILED:
                outcome: RunOutcome = "failed"
            else:
                outcome = "ok" if end.detail.get("ok", True) is True else "completed_with_errors"
            runs.append(RunSummary(run_id, started, end.at, outcome, end.message, _conflicts(end)))
        elif run_id in abandoned:
            note = abandoned[run_id]
            runs.append(RunSummary(run_id, started, None, "abandoned", note.message))
        elif start is not None:
            outcome = "running" if index == 0 else "abandoned"
            runs.append(RunSummary(run_id, started, None, outcome, "no end in the Import Log"))
    return runs


def _conflicts(end: AuditEvent) -> int:
    counts = end.detail.get("counts")
    count = counts.get("conflict") if isinstance(counts, Mapping) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


def failure_streak(runs: Sequence[RunSummary]) -> int:
    """How many of the newest runs (newest first) did not end ``ok``, up to the newest that did."""
    streak = 0
    for run in runs:
        if run.outcome == "ok":
            break
        if run.outcome != "running":
            streak += 1
    return streak


def hold_attention(hold: Hold, now: dt.datetime, *, grown: bool = False) -> Attention:
    """The attention item of a pending hold: how much it holds, for whom, since when, and what confirms it."""
    reason = {"mass_removal": "too many people would lose access at once",
              "group_shrank": "a mapped group lost most of its members at once"}.get(hold.reason, hold.reason)
    verb = "now holds" if grown else "holds"
    return Attention(
        "hold_waiting",
        f"A hold {verb} {len(hold.changes)} removals for {len(hold.users)} people for review ({reason}), "
        f"waiting {_age(now - hold.created_at)}; review it and confirm hold {hold.id} to apply them.",
        hold.created_at,
    )


def _denies_access(message: str) -> bool:
    """Whether an entry's words say the directory refused the app (a 401/403, a token it could not get)."""
    text = message.lower()
    return "access denied" in text or "re-consent" in text or "could not get a token" in text


def _last_run_problems(
    last_run: RunSummary | None, errors: Sequence[AuditEvent], names: Mapping[str, str]
) -> tuple[dict[str, str], list[tuple[str, dt.datetime | None]], dict[str, tuple[str, ...]]]:
    """The newest run's stale mappings (group id -> name), the directory's refusals (message, when),
    and the tenants each of the two concerns (a trust with several tenants: the entries' ``tenant_id``)."""
    stale: dict[str, str] = {}
    denied: list[tuple[str, dt.datetime | None]] = []
    tenants: dict[str, set[str]] = {"stale_mapping": set(), "access_revoked": set()}
    for event in errors:
        group_id = event.detail.get("group_id")
        tenant = event.detail.get("tenant_id")
        if event.detail.get("stale") is True and isinstance(group_id, str):
            stale.setdefault(group_id, str(event.detail.get("group_name") or names.get(group_id) or group_id))
            kind = "stale_mapping"
        elif event.detail.get("access_denied") is True or _denies_access(event.message):
            denied.append((event.message, event.at))
            kind = "access_revoked"
        else:
            continue
        if isinstance(tenant, str):
            tenants[kind].add(tenant)
    if last_run is not None and last_run.outcome == "failed" and _denies_access(last_run.message):
        denied.append((last_run.message, last_run.at))
    return stale, denied, {kind: tuple(sorted(found)) for kind, found in tenants.items()}


def _problem_attention(
    last_run: RunSummary | None, stale: Mapping[str, str], denied: Sequence[tuple[str, dt.datetime | None]],
    tenants: Mapping[str, tuple[str, ...]],
) -> list[Attention]:
    """What the newest run's errors ask of an admin: reconnect the tenant, remove stale mappings."""
    attention: list[Attention] = []
    if denied:
        message, since = denied[0]
        attention.append(Attention(
            "access_revoked",
            "The directory refused access in the last import (consent revoked, a permission missing or the "
            f"credential): {message} Reconnect the tenant or grant the permission.",
            since,
            tenants.get("access_revoked", ()),
        ))
    if stale:
        attention.append(Attention(
            "stale_mapping",
            f"Mapped groups no longer exist in Azure: {', '.join(sorted(stale.values()))}; remove their mappings.",
            last_run.started_at if last_run else None,
            tenants.get("stale_mapping", ()),
        ))
    return attention


def _run_attention(runs: Sequence[RunSummary], last_success: RunSummary | None, streak: int) -> list[Attention]:
    """What the run history asks of an admin: a failure streak, imports that died without an end."""
    attention: list[Attention] = []
    last_run = runs[0] if runs else None
    if streak >= FAILURE_STREAK:
        first_failed = runs[streak - 1] if len(runs) >= streak else None
        attention.append(Attention(
            "repeated_failures",
            f"{streak} imports in a row did not end well; the last: {last_run.message if last_run else '?'}",
            first_failed.started_at if first_failed else None,
        ))
    since_success = runs[: runs.index(last_success)] if last_success in runs else runs
    abandoned = [run for run in since_success if run.outcome == "abandoned"]
    if abandoned:
        attention.append(Attention(
            "run_abandoned",
            f"{len(abandoned)} import(s) stopped without an end (the process died) since the last good one; "
            f"the latest started {_when(abandoned[0].started_at)}.",
            abandoned[-1].started_at,
        ))
    return attention


def sync_status(
    *,
    trust_site_id: str,
    trust_name: str,
    now: dt.datetime,
    hold: Hold | None,
    runs_log: Sequence[AuditEvent] | None,
    last_run_errors: Sequence[AuditEvent] = (),
    mode_next: Literal["full", "incremental"],
    mode_next_reason: str,
    group_names: Mapping[str, str] | None = None,
) -> SyncStatus:
    """Put a status together from the sync state's hold and the recent run entries (newest first).

    ``runs_log`` ``None``: the Import Log cannot be read. ``last_run_errors``:
    the ``error`` entries of the newest run.
    """
    names = dict(group_names or {})
    runs = runs_from_log(runs_log) if runs_log is not None else []
    last_run = runs[0] if runs else None
    last_success = next((run for run in runs if run.outcome == "ok"), None)
    streak = failure_streak(runs)
    stale, denied, tenants = _last_run_problems(last_run, last_run_errors, names)
    attention: list[Attention] = [hold_attention(hold, now)] if hold is not None else []
    attention += _problem_attention(last_run, stale, denied, tenants)
    attention += _run_attention(runs, last_success, streak)
    refusal = _open_refusal(runs_log or (), last_run)
    if refusal is not None:
        attention.append(Attention("import_refused", refusal.message, refusal.at))
    attention += _conflict_attention(runs)
    return SyncStatus(
        trust_site_id=trust_site_id,
        trust_name=trust_name,
        checked_at=now,
        last_run=last_run,
        last_success=last_success,
        consecutive_failures=streak,
        pending_hold=hold,
        stale_mappings=tuple(sorted(stale)),
        mode_next=mode_next,
        mode_next_reason=mode_next_reason,
        attention=tuple(attention),
        log_readable=runs_log is not None,
        group_names={**names, **stale},
    )


def _conflict_attention(runs: Sequence[RunSummary]) -> list[Attention]:
    """The newest run that planned tells who is in an email conflict: their access waits for a person."""
    planned = next((run for run in runs if run.outcome in ("ok", "completed_with_errors")), None)
    if planned is None or not planned.conflicts:
        return []
    return [
        Attention(
            "email_conflict",
            f"{planned.conflicts} Azure user(s) share an email with another CalmCompliance user: the last import "
            "left their access as it is. Its report lists them (conflicts), and explain() tells one person's story.",
            planned.at,
        )
    ]


def _open_refusal(newest_first: Iterable[AuditEvent], last_run: RunSummary | None) -> AuditEvent | None:
    """The newest refusal an admin must see: newer than the last run, not just another run being busy."""
    for event in newest_first:
        if event.kind != AuditKind.IMPORT_REFUSED:
            continue
        if last_run is not None and last_run.started_at is not None and event.at < last_run.started_at:
            return None
        if event.detail.get("reason") == "already_running":
            continue
        return event
    return None


# --- at the end of a run ------------------------------------------------------------------------------


def attention_after_run(
    *,
    now: dt.datetime,
    hold_before: Hold | None,
    hold_after: Hold | None,
    streak: int | None,
    abandoned: Sequence[AuditEvent] = (),
    refusal: str | None = None,
) -> list[Attention]:
    """What is new at the end of a run, for ``on_attention``: a hold created or grown, a refusal, a failure
    streak reaching :data:`FAILURE_STREAK`, runs abandoned and closed by this one, access refused."""
    items: list[Attention] = []
    if hold_after is not None and (hold_before is None or not hold_after.slots <= hold_before.slots):
        items.append(hold_attention(hold_after, now, grown=hold_before is not None))
    if refusal is not None:
        items.append(Attention("import_refused", refusal, now))
    if streak == FAILURE_STREAK:
        items.append(Attention("repeated_failures", f"{streak} imports in a row did not end well.", now))
    for event in abandoned:
        items.append(Attention("run_abandoned", event.message, event.at))
    return items
