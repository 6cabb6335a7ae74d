"""Where users and groups come from."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from ..errors import ConfigError
from ..model import DirectoryGroup, DirectoryUser

__all__ = ["Directory", "GroupDiscovery", "PersonLookup", "UserLookup", "lookup_ids"]


@runtime_checkable
class Directory(Protocol):
    """A read-only view of an Entra ID tenant. Implemented by
    :class:`~calm_azure_sync.GraphDirectory` (Microsoft Graph) and
    :class:`~calm_azure_sync.InMemoryDirectory` (tests, notebooks, demos).

    A directory may also carry a ``tenant_id`` attribute (``str | None``): the
    reconciler refuses one whose tenant differs from ``SyncConfig.tenant_id``.
    """

    async def list_groups(self) -> Sequence[DirectoryGroup]:
        """Every group, for the Group Mapping screen (discovery)."""
        ...

    async def group_members(self, group_id: str) -> Sequence[DirectoryUser]:
        """The group's user members, nested groups resolved, each user once.

        An unknown group raises :class:`~calm_azure_sync.GroupNotFoundError`;
        a failed read raises :class:`~calm_azure_sync.DirectoryError`.
        """
        ...


@runtime_checkable
class UserLookup(Protocol):
    """An optional capability of a :class:`Directory`: reading users by object id.

    The reconciler uses it when the directory has it (``isinstance(directory,
    UserLookup)``) to heal email conflicts: when the previous holder of a
    contested email is gone from the directory, the store user is relinked
    to the new object; when it exists with another email, the stored email is
    refreshed. A directory without it leaves such conflicts standing.
    Both shipped directories implement it.
    """

    async def lookup_users(self, ids: Iterable[str]) -> Mapping[str, DirectoryUser | None]:
        """Each id to its user, or to ``None`` when no user has that id (deleted, or a group's id).

        Every id given is a key of the answer, each once. A user Graph sends
        without its properties (no ``User.Read.All``) raises
        :class:`~calm_azure_sync.DirectoryAccessError` (``users_not_readable``);
        a failed read raises :class:`~calm_azure_sync.DirectoryError`. It never
        answers ``None`` for a user it could not read.
        """
        ...


@runtime_checkable
class GroupDiscovery(Protocol):
    """An optional capability of a :class:`Directory`: discovery for a large tenant's mapping screen.

    ``list_groups(search=...)`` narrows the list on the server, and
    ``group_member_count`` counts a group's users in one request, so a screen
    can show sizes without reading every member. A caller checks
    ``isinstance(directory, GroupDiscovery)`` before passing ``search``.
    Both shipped directories implement it.
    """

    async def list_groups(self, search: str | None = None) -> Sequence[DirectoryGroup]:
        """Every group, or those whose display name ``search`` finds.

        Graph's search is tokenized: each word of ``search`` must start a
        word of the name, ignoring case. ``None`` or a blank string lists
        every group.
        """
        ...

    async def group_member_count(self, group_id: str) -> int:
        """The group's users, nested groups resolved (may lag a change slightly on Graph).

        An unknown group raises :class:`~calm_azure_sync.GroupNotFoundError`.
        """
        ...


@runtime_checkable
class PersonLookup(Protocol):
    """An optional capability of a :class:`Directory`: one person and their groups, for ``explain``.

    :meth:`~calm_azure_sync.Reconciler.explain` uses it (with
    :class:`UserLookup` for an object id) to read the directory for one
    person only: on Graph a handful of requests whatever the tenant's size
    (``/users?$filter=mail eq …``, ``/users/{id}/transitiveMemberOf``,
    ``/users/{id}/memberOf``, ``/groups/{id}/memberOf``). A directory
    without it is read the way a run reads it: every mapped group.
    Both shipped directories implement it.
    """

    async def users_by_email(self, email: str) -> Sequence[DirectoryUser]:
        """The users whose ``mail`` (else ``userPrincipalName``) is ``email``, ignoring case; usually one."""
        ...

    async def user_groups(self, user_id: str, *, transitive: bool) -> Sequence[DirectoryGroup]:
        """The groups user ``user_id`` is in: directly, or (``transitive``) through nesting too.

        An unknown user raises :class:`~calm_azure_sync.DirectoryError` (code ``not_found``).
        """
        ...

    async def group_parents(self, group_id: str) -> Sequence[DirectoryGroup]:
        """The groups ``group_id`` is a direct member of (its parents; one step of a nesting path).

        An unknown group raises :class:`~calm_azure_sync.GroupNotFoundError`.
        """
        ...


def lookup_ids(ids: Iterable[str], noun: str = "user") -> list[str]:
    """The ids a ``lookup_users`` / ``lookup_groups`` answers for: each once, in the order given.

    Refuses one string (a common slip: it would be read as its characters)
    and anything but strings, with a :class:`~calm_azure_sync.ConfigError`.
    """
    if isinstance(ids, str):
        raise ConfigError(f"lookup_{noun}s: ids must be a collection of object ids, not one string")
    wanted: dict[str, None] = {}
    for object_id in ids:
        if not isinstance(object_id, str):
            raise ConfigError(f"lookup_{noun}s: every id must be a string, got {type(object_id).__name__}")
        wanted.setdefault(object_id, None)
    return list(wanted)
