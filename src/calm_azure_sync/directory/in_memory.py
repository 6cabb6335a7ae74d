"""A directory held in memory: for tests, notebooks and the demo."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError, DirectoryError, GroupNotFoundError
from ..model import DirectoryGroup, DirectoryUser
from ._search import name_matches

__all__ = ["InMemoryDirectory"]


class InMemoryDirectory:
    """A :class:`~calm_azure_sync.Directory` over plain Python data.

    ``members`` maps a group id to the ids of its direct members: users or
    nested groups (cycles are fine; other ids, such as devices, are ignored).
    It answers exactly as :class:`~calm_azure_sync.GraphDirectory` does over
    the same data, which the directory conformance suite checks.

    >>> import asyncio
    >>> d = InMemoryDirectory.from_dict({
    ...     "users": [{"id": "u1", "mail": "ann@school.org"}],
    ...     "groups": [{"id": "g1"}, {"id": "g2"}],
    ...     "members": {"g1": ["g2"], "g2": ["u1"]},
    ... })
    >>> [u.email for u in asyncio.run(d.group_members("g1"))]
    ['ann@school.org']
    """

    def __init__(
        self,
        users: Iterable[DirectoryUser],
        groups: Iterable[DirectoryGroup],
        members: Mapping[str, Iterable[str]],
        *,
        tenant_id: str | None = None,
    ) -> None:
        self.users: dict[str, DirectoryUser] = {}
        for user in users:
            self.users.setdefault(user.id, user)
        self.groups: dict[str, DirectoryGroup] = {}
        for group in groups:
            self.groups.setdefault(group.id, group)
        self.members: dict[str, tuple[str, ...]] = {
            group_id: tuple(member_ids) for group_id, member_ids in members.items()
        }
        unknown = sorted(set(self.members) - set(self.groups))
        if unknown:
            raise DirectoryError(
                f"members lists groups that are not in groups: {', '.join(map(repr, unknown[:5]))}",
                code="invalid_data",
            )
        self.tenant_id = tenant_id

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, tenant_id: str | None = None) -> InMemoryDirectory:
        """Read the fixture format the fake Graph server also serves::

            {"users": [graph user JSON…], "groups": [graph group JSON…],
             "members": {group_id: [member ids…]}}
        """
        if not isinstance(data, Mapping):
            raise DirectoryError("a directory fixture must be a JSON object", code="invalid_data")
        users = [DirectoryUser.from_graph(item) for item in _list(data, "users")]
        groups = [DirectoryGroup.from_graph(item) for item in _list(data, "groups")]
        members = data.get("members") or {}
        if not isinstance(members, Mapping) or not all(
            isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in members.values()
        ):
            raise DirectoryError(
                "fixture 'members' must map group ids to lists of member ids", code="invalid_data"
            )
        return cls(users, groups, members, tenant_id=tenant_id or data.get("tenant_id"))

    def to_dict(self) -> dict[str, Any]:
        """The fixture form of this directory (see :meth:`from_dict`)."""
        return {
            "users": [user.to_graph() for user in self.users.values()],
            "groups": [group.to_graph() for group in self.groups.values()],
            "members": {group_id: list(ids) for group_id, ids in self.members.items()},
        }

    async def list_groups(self, search: str | None = None) -> Sequence[DirectoryGroup]:
        """Every group, or those whose name ``search`` finds (Graph's tokenized search).

        Each word of ``search`` must start a word of the display name,
        ignoring case, as with :meth:`GraphDirectory.list_groups`.
        """
        if search is not None and not isinstance(search, str):
            raise ConfigError(f"list_groups: search must be a string or None, got {type(search).__name__}")
        if search is None or not search.strip():
            return list(self.groups.values())
        return [group for group in self.groups.values() if name_matches(group.display_name, search)]

    async def group_member_count(self, group_id: str) -> int:
        """How many users the group has, nested groups resolved."""
        return len(await self.group_members(group_id))

    async def group_members(self, group_id: str) -> Sequence[DirectoryUser]:
        if group_id not in self.groups:
            raise GroupNotFoundError(group_id, code="Request_ResourceNotFound")
        return self.transitive_members(group_id)

    async def lookup_users(self, ids: Iterable[str]) -> Mapping[str, DirectoryUser | None]:
        """Each id to its user, ``None`` when no user has it (see :class:`~calm_azure_sync.UserLookup`)."""
        if isinstance(ids, str):
            raise ConfigError("lookup_users: ids must be a collection of object ids, not one string")
        found: dict[str, DirectoryUser | None] = {}
        for user_id in ids:
            if not isinstance(user_id, str):
                raise ConfigError(f"lookup_users: every id must be a string, got {type(user_id).__name__}")
            found[user_id] = self.users.get(user_id)
        return found

    def transitive_members(self, group_id: str) -> list[DirectoryUser]:
        """The users under ``group_id``, breadth first, each once (synchronous)."""
        found: list[DirectoryUser] = []
        seen_users: set[str] = set()
        seen_groups = {group_id}
        pending = [group_id]
        while pending:
            next_level: list[str] = []
            for current in pending:
                for member_id in self.members.get(current, ()):
                    user = self.users.get(member_id)
                    if user is not None:
                        if member_id not in seen_users:
                            seen_users.add(member_id)
                            found.append(user)
                    elif member_id in self.groups and member_id not in seen_groups:
                        seen_groups.add(member_id)
                        next_level.append(member_id)
            pending = next_level
        return found


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise DirectoryError(f"fixture {key!r} must be a list", code="invalid_data")
    return value
