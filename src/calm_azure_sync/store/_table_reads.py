"""What a store reads back out of :class:`~calm_azure_sync.store.rules.UserTables`: a trust's ``StoreState``,
its synced groups and their members, a user's grants. Pure: no IO.

A base of ``UserTables``, which holds the tables and the apply rules; kept
apart so the rules module is the rules.
"""

from __future__ import annotations

from .._gc import collector_paused
from ..model import Role
from .mutations import GrantKey, GrantValue, GroupKey
from .protocol import Grant, StoredUser, StoreState, SyncedGroup

__all__ = ["TableReads"]


class TableReads:
    """The reads of ``UserTables`` (its tables are declared here for the type checker, and filled there)."""

    __slots__ = ()

    users: dict[str, StoredUser]
    grants: dict[str, dict[GrantKey, GrantValue]]
    groups: dict[GroupKey, SyncedGroup]
    members: dict[GroupKey, set[str]]

    def grants_of(self, user_id: str) -> set[Grant]:
        """Every grant ``user_id`` holds, of both sources."""
        if user_id not in self.users:
            raise KeyError(f"no user with id {user_id!r}")
        return {
            Grant(site_id=site_id, module=module, role=role, source=source)
            for (site_id, module, source), (role, _trust) in self.grants.get(user_id, {}).items()
        }

    def state(self, trust_site_id: str) -> StoreState:
        """What :meth:`UserStore.load` returns for ``trust_site_id``."""
        with collector_paused():
            return self._state(trust_site_id)

    def _state(self, trust_site_id: str) -> StoreState:
        synced: dict[str, dict[tuple[str, str], Role]] = {}
        manual: set[str] = set()
        other_trusts: set[str] = set()
        for user_id, held in self.grants.items():
            for (site_id, module, source), (role, trust) in held.items():
                if source == "manual":
                    manual.add(user_id)
                elif trust == trust_site_id:
                    external_id = self.users[user_id].external_id
                    if external_id is not None:
                        synced.setdefault(external_id, {})[(site_id, module)] = role
                else:
                    other_trusts.add(user_id)
        groups = {key[1]: group for key, group in self.groups.items() if key[0] == trust_site_id}
        users = self.users
        group_members = {
            group_id: frozenset(
                external_id
                for user_id in self.members.get((trust_site_id, group_id), ())
                if (external_id := users[user_id].external_id) is not None
            )
            for group_id in groups
        }
        return StoreState(
            users=dict(self.users),
            synced_access=synced,
            manual_access_user_ids=frozenset(manual),
            other_access_user_ids=frozenset(manual | other_trusts),
            groups=groups,
            group_members=group_members,
        )

    def groups_of(self, trust_site_id: str) -> list[SyncedGroup]:
        """The trust's synced groups (retired ones too), by display name."""
        return sorted(
            (group for (trust, _id), group in self.groups.items() if trust == trust_site_id),
            key=lambda group: (group.display_name, group.external_id),
        )

    def members_of(self, group_external_id: str, trust_site_id: str | None = None) -> frozenset[str]:
        """Member external ids of the group in ``trust_site_id`` (``None``: every trust mirroring it).

        Raises ``KeyError`` when no trust (or not that trust) mirrors the group.
        """
        keys = [
            key
            for key in self.groups
            if key[1] == group_external_id and (trust_site_id is None or key[0] == trust_site_id)
        ]
        if not keys:
            where = "any trust" if trust_site_id is None else f"trust {trust_site_id!r}"
            raise KeyError(f"no synced group {group_external_id!r} in {where}")
        return frozenset(
            external_id
            for key in keys
            for user_id in self.members.get(key, ())
            if (external_id := self.users[user_id].external_id) is not None
        )
