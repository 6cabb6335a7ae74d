"""The access table: a trust's synced access after a run, user by (site, module).

``Plan.access_table()`` (through :mod:`calm_azure_sync.review`, which
re-exports these names) takes the trust's synced access before the run
(``Plan.access_before``) and applies the planned changes; a held removal
keeps the role it would have taken away, marked held. Nothing here does IO.
"""

from __future__ import annotations

import html
import itertools
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Literal

import attrs

from .._html import Cell, html_table, text_table, visible
from ..core._plan_names import PlanNames
from ..core.changes import Assign, Unassign
from ..model import Role

if TYPE_CHECKING:  # annotations only: Plan renders its access table through this module
    from ..core.plan import Plan

__all__ = ["AccessChange", "AccessRow", "AccessTable", "access_table"]

AccessChange = Literal["unchanged", "added", "changed", "removed", "held"]


@attrs.frozen
class AccessRow:
    """One user's synced role on one module at one site, after the run.

    ``role`` is the role after the run (``None``: no synced access left),
    ``before`` the role before it, ``change`` what the run does to it. A
    ``held`` row keeps ``role == before``; ``planned`` is what the held
    removal would leave (``None``: nothing). ``groups`` names the groups that
    give a new role.
    """

    external_id: str
    name: str
    email: str | None
    site_id: str
    module: str
    role: Role | None
    before: Role | None
    change: AccessChange
    planned: Role | None = None
    groups: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """What changed, in words: ``added``, ``changed from Admin``, ``removed (was Member)``, ``held: …``."""
        if self.change == "added":
            return "added"
        if self.change == "changed":
            return f"changed from {_role(self.before)}"
        if self.change == "removed":
            return f"removed (was {_role(self.before)})"
        if self.change == "held":
            return (
                "held: would be removed"
                if self.planned is None
                else f"held: would change to {self.planned.value}"
            )
        return ""

    def cell(self) -> str:
        """The pivot table's cell: the role after the run and, when it changed, how."""
        if self.change == "unchanged":
            return _role(self.role)
        if self.change == "removed":
            return self.status
        return f"{_role(self.role)} ({self.status})"

    def to_record(self) -> dict[str, object]:
        """A plain dict: ids, names, roles as strings (``None``: no access)."""
        return {
            "external_id": self.external_id,
            "name": self.name,
            "email": self.email,
            "site_id": self.site_id,
            "module": self.module,
            "role": self.role.value if self.role is not None else None,
            "before": self.before.value if self.before is not None else None,
            "change": self.change,
            "status": self.status,
            "groups": ", ".join(self.groups) or None,
        }


def _role(role: Role | None) -> str:
    return role.value if role is not None else "none"


@attrs.frozen
class AccessTable:
    """Users by (site, module) with the role after the run and what changed (``Plan.access_table()``).

    Shows as a pivot table in a notebook (one row a user, one column a site
    and module) and in ``str()``; :meth:`to_records` gives one plain dict per
    user and slot, for ``pandas.DataFrame``. Iterating gives the
    :class:`AccessRow` s, sorted by user name, site and module.
    """

    trust_site_id: str
    site_id: str | None
    rows: tuple[AccessRow, ...]
    site_names: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)

    def _site(self, site_id: str) -> str:
        return self.site_names.get(site_id) or site_id

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[AccessRow]:
        return iter(self.rows)

    def counts(self) -> dict[str, int]:
        """Rows by change: ``unchanged``, ``added``, ``changed``, ``removed``, ``held`` (all present)."""
        counted = Counter(row.change for row in self.rows)
        return {
            change: counted.get(change, 0) for change in ("unchanged", "added", "changed", "removed", "held")
        }

    def to_records(self) -> list[dict[str, object]]:
        """One plain dict per row (:meth:`AccessRow.to_record`), all with the same keys."""
        return [row.to_record() for row in self.rows]

    def _pivot(self) -> tuple[list[str], Iterator[list[object]]]:
        """The column headers and a lazy row per user (rows are sorted, so one user's slots are adjacent)."""
        slots = sorted({(row.site_id, row.module) for row in self.rows})
        column = {slot: index for index, slot in enumerate(slots)}
        headers = ["user", "email"] + [
            module if self.site_id else f"{self._site(site)} / {module}" for site, module in slots
        ]

        def users() -> Iterator[list[object]]:
            for _, slots_of_user in itertools.groupby(self.rows, key=lambda row: row.external_id):
                first = next(slots_of_user)
                cells: list[object] = [Cell(first.name, title=first.external_id)]
                cells += [first.email if first.email != first.name else None] + [None] * len(slots)
                for row in (first, *slots_of_user):
                    cells[2 + column[(row.site_id, row.module)]] = row.cell()
                yield cells

        return headers, users()

    def _users(self) -> int:
        return len({row.external_id for row in self.rows})

    def _headline(self) -> str:
        where = f"trust {self._site(self.trust_site_id)}" + (f", site {self._site(self.site_id)}" if self.site_id else "")
        counts = ", ".join(f"{count} {change}" for change, count in self.counts().items() if count)
        return f"Access after the run ({where}): {self._users()} users" + (f"; {counts}" if counts else "")

    def __str__(self) -> str:
        headers, rows = self._pivot()
        table = text_table(headers, rows, total=self._users())
        return "\n".join([visible(self._headline()), *(f"  {line}" for line in table)])

    def _repr_html_(self) -> str:
        headers, rows = self._pivot()
        return f"<h5>{html.escape(self._headline())}</h5>" + html_table(headers, rows, total=self._users())


_SlotChange = tuple[AccessChange, Role | None, tuple[str, ...]]


def _slot_changes(
    plan: Plan, before: dict[tuple[str, str, str], Role], names: PlanNames
) -> dict[tuple[str, str, str], _SlotChange]:
    """What the plan does to each (user, site, module) it touches; fills ``before`` from changes' ``previous``."""
    changed: dict[tuple[str, str, str], _SlotChange] = {}
    group_names: dict[tuple[str, ...], tuple[str, ...]] = {}
    for held, changes in ((False, plan.changes), (True, plan.held_removals)):
        for change in changes:
            if not isinstance(change, (Assign, Unassign)):
                continue
            slot = (change.external_id, change.site_id, change.module)
            if change.previous is not None:
                before.setdefault(slot, change.previous)
            new_role: Role | None = None
            groups: tuple[str, ...] = ()
            if isinstance(change, Assign):
                new_role = change.role
                # Most grants share a few sets of groups: name each set once.
                found = group_names.get(change.because)
                if found is None:
                    found = group_names[change.because] = tuple(
                        names.group(group) for group in change.because
                    )
                groups = found
            if held:
                changed[slot] = ("held", new_role, ())
            elif new_role is None:
                changed[slot] = ("removed", None, ())
            elif before.get(slot) is None:
                changed[slot] = ("added", new_role, groups)
            elif before[slot] != new_role:
                changed[slot] = ("changed", new_role, groups)
    return changed


def access_table(plan: Plan, site_id: str | None = None, *, changed_only: bool = False) -> AccessTable:
    """Users by (site, module): ``plan.access_before`` with the plan's changes applied.

    Held removals keep the role they would take away, marked ``held``.
    ``site_id`` keeps one site's columns; ``changed_only`` leaves out what the
    run does not change. When ``access_before`` lacks a slot a change
    touches, the change's ``previous`` role stands in for it.
    """
    before: dict[tuple[str, str, str], Role] = {
        (external_id, site, module): role
        for external_id, access in plan.access_before.items()
        for (site, module), role in access.items()
    }
    names = PlanNames(plan)
    changed = _slot_changes(plan, before, names)
    rows: list[AccessRow] = []
    user_order: dict[str, tuple[str, str, str]] = {}
    for slot in set(before) | set(changed):
        external_id, site, module = slot
        if site_id is not None and site != site_id:
            continue
        what, planned, groups = changed.get(slot, ("unchanged", None, ()))
        if changed_only and what == "unchanged":
            continue
        role_before = before.get(slot)
        # Added and changed slots take the planned role, removed ones none; held and unchanged keep theirs.
        role_after = planned if what in ("added", "changed") else None if what == "removed" else role_before
        name, email = names.user(external_id)
        if external_id not in user_order:
            user_order[external_id] = (name.casefold(), email or "", external_id)
        held_as = planned if what == "held" else None
        rows.append(
            AccessRow(external_id, name, email, site, module, role_after, role_before, what, held_as, groups)
        )
    rows.sort(key=lambda row: (user_order[row.external_id], row.site_id, row.module))
    return AccessTable(plan.trust_site_id, site_id, tuple(rows), plan.site_names)
