"""How a plan and an import report read to a person: text, HTML, records and the access table.

:class:`~calm_azure_sync.core.plan.Plan` and
:class:`~calm_azure_sync.review.report.ImportReport` hand their ``__str__``,
``_repr_html_``, ``to_records()`` and ``access_table()`` to the functions
here, so every way of showing a change says the same thing. Nothing here
does IO. The rules, written once:

- **People by name.** A user is shown by Azure display name and email
  (``Plan.people``; else the name and email a change or skip carries; else,
  and only then, the Entra object id). The object id stays available: the
  HTML cell's title, the records' ``external_id``.
- **Groups by name.** A group is shown by its display name
  (``Plan.group_names``; else the name an ``UpsertGroup`` carries), its id as
  the cell's title and in the records' ``group_ids``.
- **One vocabulary for who was left out**, the same in the plan and the
  report: ``skipped`` (out of scope: disabled, guest, no email, an email
  shared with another Azure user), ``excluded`` (the exclusion policy) and
  ``conflict`` (the email already belongs to another store user; a person
  must look). ``Skip.category`` decides; nothing else counts skips.
- **Text from Azure is shown as text.** HTML escapes every cell
  (:func:`~calm_azure_sync._html.html_table`); plain text spells out control
  and bidi-override characters (``\\n``, ``\\x1b``, ``\\u202e``), in HTML
  too, so a display name cannot break a table, move a terminal's cursor or
  reverse a line.
- **The access table** is the trust's synced access before the run
  (``Plan.access_before``) with the planned changes applied; a held removal
  keeps the role it would have taken away, marked held.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from .._html import Cell, html_table, text_table, visible
from ..core._plan_names import PlanNames as _Names
from ..core.changes import (
    CHANGE_KINDS,
    HOLD_REASON_TEXT,
    SKIP_CATEGORIES,
    AddGroupMember,
    Assign,
    Change,
    CreateUser,
    DeactivateUser,
    LinkUser,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Skip,
    SkipCategory,
    Unassign,
    UpdateUser,
    UpsertGroup,
    change_kind,
    skip_counts,
)
from ..model import Role
from ._access_table import AccessChange, AccessRow, AccessTable, access_table

if TYPE_CHECKING:
    from ..core.plan import Plan
    from .report import ImportReport

__all__ = [
    "HOLD_REASONS",
    "SKIP_CATEGORIES",
    "AccessChange",
    "AccessRow",
    "AccessTable",
    "SkipCategory",
    "access_table",
    "change_cells",
    "plan_html",
    "plan_records",
    "plan_repr",
    "people_first",
    "plan_text",
    "report_counts",
    "report_html",
    "report_records",
    "report_repr",
    "report_text",
    "skip_category",
    "skip_counts",
]


#: Why removals are held, in words, by ``Plan.hold_reason`` (kept beside the vocabulary, in core/changes.py).
HOLD_REASONS: Mapping[str, str] = {str(reason): text for reason, text in HOLD_REASON_TEXT.items()}

_CHANGE_HEADERS = ("change", "user", "email", "site", "module", "role", "groups", "detail")
_SKIP_HEADERS = ("user", "email", "reason")
_SKIP_TITLES: Mapping[SkipCategory, str] = {
    "conflict": "Conflicts (the email belongs to another store user; access left as it is)",
    "skipped": "Skipped (out of scope)",
    "excluded": "Excluded (exclusion policy)",
}


def skip_category(skip: Skip) -> SkipCategory:
    """``skip.category``: which of the three words names this skip (kept for v0.3 callers)."""
    return skip.category


# --- one change, described once --------------------------------------------------------------------


@attrs.frozen
class _Row:
    """One change as every output shows it."""

    kind: str
    external_id: str | None  # the user's; None for a change to a group alone
    site_id: str | None = None
    module: str | None = None
    role: Role | None = None
    previous: Role | None = None
    group_ids: tuple[str, ...] = ()
    detail: str = ""


def _row(change: Change, site: Callable[[str], str] = str) -> _Row:
    kind = change_kind(change)
    if isinstance(change, Assign):
        detail = f"was {change.previous.value}" if change.previous is not None else ""
        return _Row(
            kind,
            change.external_id,
            change.site_id,
            change.module,
            change.role,
            change.previous,
            change.because,
            detail,
        )
    if isinstance(change, Unassign):
        return _Row(
            kind,
            change.external_id,
            change.site_id,
            change.module,
            None,
            change.previous,
            detail=f"was {change.previous.value}",
        )
    if isinstance(change, CreateUser):
        return _Row(kind, change.external_id)
    if isinstance(change, LinkUser):
        return _Row(kind, change.external_id, detail=f"adopts store user {change.user_id} (invited by hand)")
    if isinstance(change, RelinkUser):
        return _Row(
            kind,
            change.external_id,
            detail=f"store user {change.user_id} moves over from deleted Azure account "
            f"{change.previous_external_id}",
        )
    if isinstance(change, UpdateUser):
        parts = [f"changed {', '.join(change.changed)}"] if change.changed else []
        if change.reactivate:
            parts.append("reactivated")
        return _Row(kind, change.external_id, detail="; ".join(parts))
    if isinstance(change, DeactivateUser):
        return _Row(kind, change.external_id, detail="no access left")
    if isinstance(change, UpsertGroup):
        sites = f"maps to {', '.join(map(site, change.site_ids))}" if change.site_ids else ""
        return _Row(kind, None, group_ids=(change.external_id,), detail=sites)
    if isinstance(change, (AddGroupMember, RemoveGroupMember)):
        return _Row(kind, change.external_id, group_ids=(change.group_external_id,))
    if isinstance(change, RetireGroup):
        return _Row(
            kind, None, group_ids=(change.external_id,), detail="mapping removed: kept, members cleared"
        )
    raise TypeError(f"not a change: {type(change).__name__}")  # pragma: no cover - the union is closed


def _cells(row: _Row, names: _Names) -> list[object]:
    return [
        row.kind,
        *names.user_cells(row.external_id),
        names.site_cell(row.site_id),
        row.module,
        row.role.value if row.role is not None else None,
        names.groups_cell(row.group_ids),
        row.detail or None,
    ]


_GROUP_ONLY = (UpsertGroup, RetireGroup)


def people_first(changes: Sequence[Change]) -> Iterator[Change]:
    """The changes with people's first: changes to a group alone (upsert, retire) come last.

    A plan applies group upserts first; a person reviewing it wants the
    people. Lazy, so a table of a long plan still reads only its first rows.
    """
    yield from (change for change in changes if not isinstance(change, _GROUP_ONLY))
    yield from (change for change in changes if isinstance(change, _GROUP_ONLY))


def _change_rows(changes: Sequence[Change], names: _Names) -> Iterator[list[object]]:
    # Lazy: a table shows the first rows of a long plan and only counts the rest.
    return (_cells(_row(change, names.site), names) for change in people_first(changes))


def change_cells(change: Change, plan: Plan | None = None) -> list[str]:
    """One change as a row of text: change, user, email, site, module, role, groups, detail.

    Names come from ``plan`` when given, else from what the change carries;
    an empty string where a column does not apply.
    """
    names = _Names(plan, changes=(change,))
    return [
        "" if cell is None else str(cell.text if isinstance(cell, Cell) else cell)
        for cell in _cells(_row(change, names.site), names)
    ]


def _record(row: _Row, names: _Names, *, held: bool) -> dict[str, object]:
    name, email = names.user(row.external_id) if row.external_id is not None else (None, None)
    return {
        "kind": row.kind,
        "external_id": row.external_id,
        "name": name,
        "email": email,
        "site_id": row.site_id,
        "module": row.module,
        "role": row.role.value if row.role is not None else None,
        "previous": row.previous.value if row.previous is not None else None,
        "groups": ", ".join(names.group(group_id) for group_id in row.group_ids) or None,
        "group_ids": ", ".join(row.group_ids) or None,
        "held": held,
        "detail": row.detail or None,
    }


def plan_records(plan: Plan) -> list[dict[str, object]]:
    """One plain dict per change (people's first, see :func:`people_first`), then per held removal
    (``held`` true): what ``pandas.DataFrame`` takes.

    Every dict has the same keys (``kind``, ``external_id``, ``name``,
    ``email``, ``site_id``, ``module``, ``role``, ``previous``, ``groups``,
    ``group_ids``, ``held``, ``detail``) and only ``str``, ``bool`` or
    ``None`` values.
    """
    names = _Names(plan)
    records = [_record(_row(change, names.site), names, held=False) for change in people_first(plan.changes)]
    records += [_record(_row(change, names.site), names, held=True) for change in plan.held_removals]
    return records


# --- plain text --------------------------------------------------------------------------------------


def _indent(lines: Iterable[str]) -> list[str]:
    return [f"  {line}" for line in lines]


def _indented(title: str, lines: Iterable[str]) -> list[str]:
    return [title, *_indent(lines)]


def _nonzero(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{kind}={count}" for kind, count in counts.items() if count)


def _change_counts(plan: Plan) -> dict[str, int]:
    return {kind: count for kind, count in plan.summary().items() if kind not in SKIP_CATEGORIES}


def _hold_lines(plan: Plan, held: Sequence[Change], names: _Names) -> list[str]:
    """What a hold is, what confirms it, and what it holds (text)."""
    reason = plan.hold_reason or "unknown"
    lines = [f"Held removals ({len(held)}): {reason}: {HOLD_REASONS.get(reason, 'see the Import Log')}"]
    if plan.held_groups:
        lines.append("  groups: " + ", ".join(visible(names.group(group)) for group in plan.held_groups))
    lines.append(f"  {_confirmation(plan)}")
    lines += _indent(text_table(_CHANGE_HEADERS, _change_rows(held, names), total=len(held)))
    return lines


def _confirmation(plan: Plan) -> str:
    if plan.hold_id is not None:
        return f"To apply them once reviewed: run(config, actor=..., confirm_hold={plan.hold_id!r})"
    return "They wait for a run that reads every mapped group completely"


def _cleared(hold_id: str) -> str:
    return f"Hold {hold_id!r} is cleared: none of its removals is held any more (confirmed, or no longer planned)"


def _stale_rows(plan: Plan, names: _Names) -> Iterator[list[object]]:
    for group_id, count in plan.stale_groups.items():
        yield [Cell(names.group(group_id), title=group_id), group_id, count]


def _unreadable_rows(plan: Plan, names: _Names) -> Iterator[list[object]]:
    for group_id, reason in plan.unreadable_groups.items():
        yield [Cell(names.group(group_id), title=group_id), group_id, reason]


def _skip_rows(skipped: Iterable[Skip], category: SkipCategory, names: _Names) -> list[list[object]]:
    return [
        [*names.user_cells(skip.external_id), skip.reason]
        for skip in skipped
        if skip_category(skip) == category
    ]


_STALE_HEADERS = ("group", "group id", "removals held")
_STALE_TITLE = "Stale mappings (the group no longer exists in Azure; remove the mapping)"
_UNREAD_HEADERS = ("group", "group id", "reason")
_UNREAD_TITLE = "Groups not read completely (nothing is removed or downgraded)"


def _review_sections(plan: Plan, names: _Names) -> list[str]:
    """The parts of a plan a person must look at: holds, stale and unread groups, conflicts (text)."""
    lines: list[str] = []
    if plan.held_removals:
        lines += _hold_lines(plan, plan.held_removals, names)
    if plan.hold_cleared is not None:
        lines.append(_cleared(plan.hold_cleared))
    if plan.stale_groups:
        lines += _indented(_STALE_TITLE, text_table(_STALE_HEADERS, _stale_rows(plan, names)))
    if plan.unreadable_groups:
        lines += _indented(_UNREAD_TITLE, text_table(_UNREAD_HEADERS, _unreadable_rows(plan, names)))
    conflicts = _skip_rows(plan.skipped, "conflict", names)
    if conflicts:
        lines += _indented(
            f"{_SKIP_TITLES['conflict']}: {len(conflicts)}", text_table(_SKIP_HEADERS, conflicts)
        )
    return lines


def plan_repr(plan: Plan) -> str:
    """``<Plan trust=… changes=N (kind=count…), skipped=N[, excluded=N][, conflict=N][, held=N (reason)]>``."""
    kinds = _nonzero(_change_counts(plan))
    skips = skip_counts(plan.skipped)
    left_out = f"skipped={skips['skipped']}" + "".join(
        f", {category}={skips[category]}" for category in ("excluded", "conflict") if skips[category]
    )
    held = f", held={len(plan.held_removals)} ({plan.hold_reason})" if plan.held_removals else ""
    return (
        f"<Plan trust={plan.trust_site_id!r} changes={len(plan.changes)}"
        f"{' (' + kinds + ')' if kinds else ''}, {left_out}{held}>"
    )


def _trust(plan: Plan) -> str:
    """How a review names the plan's trust: its name, else its id."""
    return plan.site_names.get(plan.trust_site_id) or plan.trust_site_id


def _plan_headline(plan: Plan) -> str:
    kinds = _nonzero(_change_counts(plan))
    skips = ", ".join(f"{category}={count}" for category, count in skip_counts(plan.skipped).items())
    held = f", held={len(plan.held_removals)}" if plan.held_removals else ""
    return (
        f"Plan for trust {visible(_trust(plan))}: {len(plan.changes)} changes"
        f"{' (' + kinds + ')' if kinds else ''}; {skips}{held}"
    )


def plan_text(plan: Plan) -> str:
    """The plan for a terminal: a headline, what needs a person, the changes, who was left out."""
    names = _Names(plan)
    lines = [_plan_headline(plan)]
    lines += _review_sections(plan, names)
    if plan.changes:
        lines += _indented(
            f"Changes ({len(plan.changes)})",
            text_table(_CHANGE_HEADERS, _change_rows(plan.changes, names), total=len(plan.changes)),
        )
    for category in ("skipped", "excluded"):
        rows = _skip_rows(plan.skipped, category, names)
        if rows:
            lines += _indented(f"{_SKIP_TITLES[category]}: {len(rows)}", text_table(_SKIP_HEADERS, rows))
    return "\n".join(lines)


# --- HTML --------------------------------------------------------------------------------------------


def _h(text: object) -> str:
    return html.escape(str(text))


def _hold_html(plan: Plan, held: Sequence[Change], names: _Names) -> str:
    reason = plan.hold_reason or "unknown"
    parts = [
        f"<h5>Held removals ({len(held)})</h5>"
        f"<p>{_h(reason)}: {_h(HOLD_REASONS.get(reason, 'see the Import Log'))}. {_h(_confirmation(plan))}.</p>"
    ]
    if plan.held_groups:
        parts.append("<p>Groups: " + _h(", ".join(names.group(group) for group in plan.held_groups)) + "</p>")
    parts.append(html_table(_CHANGE_HEADERS, _change_rows(held, names), total=len(held)))
    return "".join(parts)


def _review_html(plan: Plan, names: _Names) -> str:
    parts: list[str] = []
    if plan.held_removals:
        parts.append(_hold_html(plan, plan.held_removals, names))
    if plan.hold_cleared is not None:
        parts.append(f"<p>{_h(_cleared(plan.hold_cleared))}</p>")
    if plan.stale_groups:
        parts.append(f"<h5>{_h(_STALE_TITLE)}</h5>" + html_table(_STALE_HEADERS, _stale_rows(plan, names)))
    if plan.unreadable_groups:
        parts.append(
            f"<h5>{_h(_UNREAD_TITLE)}</h5>" + html_table(_UNREAD_HEADERS, _unreadable_rows(plan, names))
        )
    conflicts = _skip_rows(plan.skipped, "conflict", names)
    if conflicts:
        parts.append(
            f"<h5>{_h(_SKIP_TITLES['conflict'])}: {len(conflicts)}</h5>"
            + html_table(_SKIP_HEADERS, conflicts)
        )
    return "".join(parts)


def _counts_table(changes: Mapping[str, int], others: Mapping[str, int]) -> str:
    rows = [[kind, count] for kind, count in changes.items() if count]
    if not rows:
        rows = [["no changes", 0]]
    rows += [[kind, count] for kind, count in others.items()]
    return html_table(["", "count"], rows)


def plan_html(plan: Plan) -> str:
    """The plan as HTML for a notebook: summary, what needs a person, changes, who was left out."""
    names = _Names(plan)
    others: dict[str, int] = skip_counts(plan.skipped)
    if plan.held_removals:
        others["held"] = len(plan.held_removals)
    parts = [f"<h4>Plan for trust {_h(_trust(plan))}</h4>"]
    if not plan.complete:
        parts.append("<p>Not every mapped group was read completely: nothing is removed or downgraded.</p>")
    parts.append(_counts_table(_change_counts(plan), others))
    parts.append(_review_html(plan, names))
    if plan.changes:
        parts.append(
            f"<h5>Changes ({len(plan.changes)})</h5>"
            + html_table(_CHANGE_HEADERS, _change_rows(plan.changes, names), total=len(plan.changes))
        )
    for category in ("skipped", "excluded"):
        rows = _skip_rows(plan.skipped, category, names)
        if rows:
            parts.append(
                f"<h5>{_h(_SKIP_TITLES[category])}: {len(rows)}</h5>" + html_table(_SKIP_HEADERS, rows)
            )
    return "".join(parts)


# --- the import report ---------------------------------------------------------------------------------


def report_counts(report: ImportReport) -> tuple[dict[str, int], dict[str, int]]:
    """The report's counts as two parts: applied changes by kind, then everything else.

    The second part starts with ``skipped``, ``excluded`` and ``conflict``,
    counted from the run's plan by :func:`skip_category` when the report has
    it (so the report and the plan use one vocabulary), then the report's
    other counts (``unchanged``, ``failed``, ``held``…) in their order.
    """
    changes = {kind: count for kind, count in report.counts.items() if kind in CHANGE_KINDS}
    others: dict[str, int] = {category: report.counts.get(category, 0) for category in SKIP_CATEGORIES}
    if report.plan is not None:
        others.update(skip_counts(report.plan.skipped))
    others.update(
        (kind, count)
        for kind, count in report.counts.items()
        if kind not in CHANGE_KINDS and kind not in others
    )
    return changes, others


def report_repr(report: ImportReport) -> str:
    """``<ImportReport run=… trust=… ok=… (count=…), errors=N, held=N>``."""
    changes, others = report_counts(report)
    counts = ", ".join(part for part in (_nonzero(changes), _nonzero(others)) if part)
    return (
        f"<ImportReport run={report.run_id} trust={report.trust_site_id!r} ok={report.ok}"
        f"{' (' + counts + ')' if counts else ''}, errors={len(report.errors)}, "
        f"held={len(report.held_removals)}>"
    )


def report_text(report: ImportReport) -> str:
    """The report for a terminal: outcome, duration and counts, then holds, conflicts and errors."""
    status = "ok" if report.ok else "FAILED"
    changes, others = report_counts(report)
    left_out = ", ".join(f"{kind}={others[kind]}" for kind in SKIP_CATEGORIES)
    # The held count is spelled out with the changes ("held 349 removals for …"), not repeated as held=N.
    shown = (*SKIP_CATEGORIES, "held") if report.held_removals else SKIP_CATEGORIES
    rest = _nonzero({kind: count for kind, count in others.items() if kind not in shown})
    plan = report.plan_for_review()
    lines = [
        f"Import {visible(report.run_id)} of trust {visible(_trust(plan))}: {status} "
        f"in {report.duration_seconds:.1f}s ({_applied(changes, report)}; {left_out}"
        f"{', ' + rest if rest else ''})"
    ]
    names = _Names(plan)
    if report.held_removals:
        lines += _hold_lines(plan, report.held_removals, names)
    lines += _review_sections(attrs.evolve(plan, held_removals=()), names)
    lines += [f"error: {visible(error)}" for error in report.errors[:20]]
    if len(report.errors) > 20:
        lines.append(f"… and {len(report.errors) - 20} more errors")
    return lines[0] + "".join(f"\n  {line}" for line in lines[1:])


def _applied(changes: Mapping[str, int], report: ImportReport) -> str:
    """What the run changed, and what it held: a held run never reads as "no changes" alone."""
    applied = _nonzero(changes)
    held = len(report.held_removals)
    if not held:
        return applied or "no changes"
    users = len({change.external_id for change in report.held_removals})
    holding = f"held {held} removals for {users} people for review"
    return f"{applied}; {holding}" if applied else f"no changes applied; {holding}"


def report_html(report: ImportReport) -> str:
    """The report as HTML for a notebook: outcome, duration, counts, holds, conflicts, errors, changes."""
    status = "ok" if report.ok else "failed"
    changes, others = report_counts(report)
    plan = report.plan_for_review()
    names = _Names(plan)
    parts = [
        f"<h4>Import {_h(report.run_id)} of trust {_h(_trust(plan))}: {status}</h4>"
        f"<p>Started {_h(report.started_at.isoformat(timespec='seconds'))}, "
        f"took {report.duration_seconds:.1f} s.</p>",
        _counts_table(changes, others),
    ]
    if report.held_removals:
        parts.append(_hold_html(plan, report.held_removals, names))
    parts.append(_review_html(attrs.evolve(plan, held_removals=()), names))
    if report.errors:
        parts.append(
            f"<h5>Errors ({len(report.errors)})</h5>" + html_table(["error"], ([e] for e in report.errors))
        )
    if plan.changes:
        parts.append(
            f"<details><summary>Planned changes ({len(plan.changes)})</summary>"
            + html_table(_CHANGE_HEADERS, _change_rows(plan.changes, names), total=len(plan.changes))
            + "</details>"
        )
    return "".join(parts)


def report_records(report: ImportReport) -> list[dict[str, object]]:
    """The run's changes and held removals as :func:`plan_records` gives them, each with the ``run_id``."""
    if report.plan is None:
        return []
    return [{"run_id": report.run_id, **record} for record in plan_records(report.plan)]
