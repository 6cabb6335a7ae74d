"""The names of the users and groups one plan mentions, as every review output shows them.

A user is named by Azure display name and email (``Plan.people``; else what
a change or skip carries; else, and only then, the Entra object id); a group
by its display name (``Plan.group_names``; else what an ``UpsertGroup``
carries). Shared by :mod:`calm_azure_sync.review` and the access table;
:class:`PlanLabels` is the ``Plan.people`` the planner builds, worked out
when asked. Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from .._html import Cell
from ..model import DirectoryUser
from .changes import Change, CreateUser, LinkUser, RelinkUser, UpdateUser, UpsertGroup, UserLabel

if TYPE_CHECKING:  # annotations only: the store's protocol imports the plan, whose reviews import this
    from ..store.protocol import StoredUser, StoreState
    from .plan import Plan

__all__ = ["KnownNames", "PlanLabels", "PlanNames"]


class KnownNames(Mapping[str, UserLabel]):
    """A plan's ``people``, able to name anyone else the run knows: from the read, else from the store.

    Iterating gives the users the plan mentions (``base``), as before; looking
    up any other user (an unchanged row of the access table after a first
    import) finds their Azure name in the directory read, else their stored
    name and email, worked out on first ask: nobody pays for names nobody reads.
    """

    def __init__(
        self, base: Mapping[str, UserLabel], members: Mapping[str, Sequence[DirectoryUser]], state: StoreState
    ) -> None:
        self._base = base
        self._members = members
        self._state = state
        self._azure: dict[str, DirectoryUser] | None = None
        self._stored: dict[str, StoredUser] | None = None

    def _extra(self, external_id: str) -> UserLabel | None:
        if self._azure is None:
            self._azure = {user.id: user for users in self._members.values() for user in users}
        user = self._azure.get(external_id)
        if user is not None:
            return UserLabel(user.display_name, user.email)
        if self._stored is None:
            self._stored = {s.external_id: s for s in self._state.users.values() if s.external_id is not None}
        stored = self._stored.get(external_id)
        return None if stored is None else UserLabel(stored.display_name, stored.email)

    def __getitem__(self, external_id: str) -> UserLabel:
        if external_id in self._base:
            return self._base[external_id]
        label = self._extra(external_id)
        if label is None:
            raise KeyError(external_id)
        return label

    def __contains__(self, external_id: object) -> bool:
        return isinstance(external_id, str) and (external_id in self._base or self._extra(external_id) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<names for {len(self)} users, and any other the run knows>"


class PlanNames:
    """The names of the users and groups one plan mentions."""

    def __init__(self, plan: Plan | None, changes: Sequence[Change] = ()) -> None:
        """The names ``plan`` knows; without a plan, the names ``changes`` carry."""
        self.people: dict[str, UserLabel] = {}
        self.groups: dict[str, str] = {}
        self.sites: Mapping[str, str] = {}
        self._more: Mapping[str, UserLabel] = {}
        if plan is None:
            self._carried(changes)
            return
        self.sites = plan.site_names
        self._more = plan.people
        # What the changes and skips carry is the fallback; the planner's names win.
        self._carried((*plan.changes, *plan.held_removals))
        for skip in plan.skipped:
            self.people.setdefault(skip.external_id, UserLabel(None, skip.email))
        self.people.update(plan.people)
        self.groups.update(plan.group_names)

    def _carried(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if isinstance(change, (CreateUser, LinkUser, RelinkUser, UpdateUser)):
                self.people.setdefault(change.external_id, UserLabel(change.display_name, change.email))
            elif isinstance(change, UpsertGroup):
                self.groups.setdefault(change.external_id, change.display_name)

    def user(self, external_id: str) -> tuple[str, str | None]:
        """A user's name (the object id only when nothing better is known) and email."""
        label = self.people.get(external_id)
        if label is None:
            label = self._more.get(external_id)  # KnownNames: anyone else the run knows
        if label is None:
            return external_id, None
        return label.display_name or label.email or external_id, label.email

    def user_cells(self, external_id: str | None) -> list[object]:
        """The user and email columns of a table: the email is left out when it is the name shown."""
        if external_id is None:
            return [None, None]
        name, email = self.user(external_id)
        return [Cell(name, title=external_id), email if email != name else None]

    def site(self, site_id: str) -> str:
        """A site's name (``Site.name``), else its id."""
        return self.sites.get(site_id) or site_id

    def site_cell(self, site_id: str | None) -> Cell | None:
        return None if site_id is None else Cell(self.site(site_id), title=site_id)

    def group(self, group_id: str) -> str:
        return self.groups.get(group_id) or group_id

    def groups_cell(self, group_ids: Sequence[str]) -> Cell | None:
        if not group_ids:
            return None
        return Cell(", ".join(self.group(group_id) for group_id in group_ids), title=", ".join(group_ids))


class PlanLabels(Mapping[str, UserLabel]):
    """Names for the users a plan mentions, worked out when a review asks (a first import of 100k
    users would otherwise build 100k labels nobody reads): Azure's when it has them, else the store's."""

    def __init__(
        self,
        external_ids: frozenset[str],
        users: Mapping[str, DirectoryUser],
        state: StoreState,
        lookups: Mapping[str, DirectoryUser | None],
    ) -> None:
        self._ids = external_ids
        self._users = users
        self._state = state
        self._lookups = lookups
        self._stored: dict[str, StoredUser] | None = None

    def label(self, external_id: str) -> UserLabel | None:
        """Any user's label, mentioned by the plan or not (``None``: unknown)."""
        try:
            return self._label(external_id)
        except KeyError:
            return None

    def __getitem__(self, external_id: str) -> UserLabel:
        if external_id not in self._ids:
            raise KeyError(external_id)
        return self._label(external_id)

    def _label(self, external_id: str) -> UserLabel:
        user = self._users.get(external_id) or self._lookups.get(external_id)
        if user is not None:
            return UserLabel(user.display_name, user.email)
        if self._stored is None:
            self._stored = {s.external_id: s for s in self._state.users.values() if s.external_id is not None}
        stored = self._stored.get(external_id)
        if stored is None:
            raise KeyError(external_id)
        return UserLabel(stored.display_name, stored.email)

    def __iter__(self) -> Iterator[str]:
        return (external_id for external_id in sorted(self._ids) if external_id in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, external_id: object) -> bool:
        if external_id not in self._ids:
            return False
        assert isinstance(external_id, str)
        if external_id in self._users or self._lookups.get(external_id) is not None:
            return True
        if self._stored is None:
            self._stored = {s.external_id: s for s in self._state.users.values() if s.external_id is not None}
        return external_id in self._stored

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<labels for {len(self._ids)} users>"
