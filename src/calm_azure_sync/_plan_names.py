"""The names of the users and groups one plan mentions, as every review output shows them.

A user is named by Azure display name and email (``Plan.people``; else what
a change or skip carries; else, and only then, the Entra object id); a group
by its display name (``Plan.group_names``; else what an ``UpsertGroup``
carries). Shared by :mod:`calm_azure_sync.review` and the access table.
Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._html import Cell
from .plan import CreateUser, LinkUser, Plan, RelinkUser, UpdateUser, UpsertGroup, UserLabel

__all__ = ["PlanNames"]


class PlanNames:
    """The names of the users and groups one plan mentions."""

    def __init__(self, plan: Plan | None) -> None:
        self.people: dict[str, UserLabel] = {}
        self.groups: dict[str, str] = {}
        if plan is None:
            return
        # What the changes and skips carry is the fallback; the planner's names win.
        for change in (*plan.changes, *plan.held_removals):
            if isinstance(change, (CreateUser, LinkUser, RelinkUser, UpdateUser)):
                self.people.setdefault(change.external_id, UserLabel(change.display_name, change.email))
            elif isinstance(change, UpsertGroup):
                self.groups.setdefault(change.external_id, change.display_name)
        for skip in plan.skipped:
            self.people.setdefault(skip.external_id, UserLabel(None, skip.email))
        self.people.update(plan.people)
        self.groups.update(plan.group_names)

    def user(self, external_id: str) -> tuple[str, str | None]:
        """A user's name (the object id only when nothing better is known) and email."""
        label = self.people.get(external_id)
        if label is None:
            return external_id, None
        return label.display_name or label.email or external_id, label.email

    def user_cells(self, external_id: str | None) -> list[object]:
        """The user and email columns of a table: the email is left out when it is the name shown."""
        if external_id is None:
            return [None, None]
        name, email = self.user(external_id)
        return [Cell(name, title=external_id), email if email != name else None]

    def group(self, group_id: str) -> str:
        return self.groups.get(group_id) or group_id

    def groups_cell(self, group_ids: Sequence[str]) -> Cell | None:
        if not group_ids:
            return None
        return Cell(", ".join(self.group(group_id) for group_id in group_ids), title=", ".join(group_ids))
