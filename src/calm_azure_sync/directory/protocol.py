"""Where users and groups come from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..model import DirectoryGroup, DirectoryUser

__all__ = ["Directory"]


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
