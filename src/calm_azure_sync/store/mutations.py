"""The mutation records :class:`~calm_azure_sync.store.rules.UserTables` logs, for a store to write back.

A database-backed store writes them in order: user rows, then grant rows,
then group rows, then memberships. Nothing here does IO.
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

from ..model import Role
from .protocol import GrantSource, StoredUser, SyncedGroup

__all__ = ["GrantKey", "GrantValue", "GrantWrite", "GroupKey", "GroupWrite", "MemberWrite", "Mutation", "UserWrite"]

GrantKey: TypeAlias = tuple[str, str, GrantSource]
"""(site_id, module, source): a user holds at most one grant per key."""

GrantValue: TypeAlias = tuple[Role, str | None]
"""(role, trust_site_id the grant was applied under; ``None`` for manual grants)."""


# The mutation records are NamedTuples, not attrs classes: a first import
# logs 400k of them, and a tuple is several times cheaper to build.
class UserWrite(NamedTuple):
    """A logged mutation: ``user`` was inserted (``new``) or its row replaced."""

    user: StoredUser
    new: bool


class GrantWrite(NamedTuple):
    """A logged mutation: the grant ``key`` of ``user_id`` was set to ``value`` (``None``: deleted)."""

    user_id: str
    key: GrantKey
    value: GrantValue | None


GroupKey: TypeAlias = tuple[str, str]
"""(trust_site_id, group external id): each trust mirrors its mapped groups on its own."""


class GroupWrite(NamedTuple):
    """A logged mutation: ``group`` was inserted (``new``) or its row replaced."""

    group: SyncedGroup
    new: bool


class MemberWrite(NamedTuple):
    """A logged mutation: store user ``user_id`` joined (``member``) or left the group ``key``."""

    key: GroupKey
    user_id: str
    member: bool


Mutation: TypeAlias = UserWrite | GrantWrite | GroupWrite | MemberWrite
