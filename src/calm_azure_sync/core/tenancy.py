"""Which tenant each Azure user comes from, for a trust with several (API §13).

Identity is (tenant, object id). A user's tenant is the tenant of the mapped
groups it was read from (``SyncConfig.tenant_of``): the read never needs to
carry it, and a user kept in the delta cache keeps it too. Entra object ids
are GUIDs, so the planner keeps keying users by object id; the one case that
needs a decision is the same object id arriving from two tenants. It is a
reported conflict, never merged: the tenant the store already recorded for
that account keeps it (else the first of ``SyncConfig.tenants``), so the
answer never flips between runs, and the other tenant's memberships of that
id give nothing. Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs

from ..model import DirectoryUser
from ..policies.config import SyncConfig
from ..store.protocol import StoredUser
from .changes import Skip

__all__ = ["Tenancy", "tenancy", "tenant_of_anyone", "tenants_named"]


@attrs.frozen
class Tenancy:
    """The snapshot's members with each user in one tenant, and that tenant per user."""

    members: Mapping[str, Sequence[DirectoryUser]]
    single: str | None  # every user's tenant when the trust has at most one
    by_user: Mapping[str, str] = attrs.field(factory=dict)
    conflicts: tuple[Skip, ...] = ()

    def tenant_of(self, external_id: str) -> str | None:
        """The tenant user ``external_id`` was read from (``None``: the trust records no tenant)."""
        return self.by_user.get(external_id, self.single)


def tenancy(
    members: Mapping[str, Sequence[DirectoryUser]], config: SyncConfig, by_external: Mapping[str, StoredUser]
) -> Tenancy:
    """Each user's tenant; an object id read from two tenants stays with one (see the module docstring)."""
    tenants = config.tenant_ids
    if len(tenants) <= 1:  # the usual trust: nothing to decide, and nothing to spend per user
        return Tenancy(members, tenants[0] if tenants else None)
    order = {tenant: index for index, tenant in enumerate(tenants)}
    seen: dict[str, set[str]] = {}
    for group_id in sorted(members):
        tenant = config.tenant_of(group_id)
        if tenant is None:
            continue
        for user in members[group_id]:
            seen.setdefault(user.id, set()).add(tenant)
    by_user: dict[str, str] = {}
    conflicts: list[Skip] = []
    for user_id, found in seen.items():
        keeper = min(found, key=order.__getitem__)
        stored = by_external.get(user_id)
        if stored is not None and stored.tenant_id is not None:
            keeper = next((tenant for tenant in found if tenant.lower() == stored.tenant_id.lower()), keeper)
        by_user[user_id] = keeper
        if len(found) > 1:
            others = sorted(found - {keeper}, key=order.__getitem__)
            conflicts.append(_crossed(user_id, keeper, others, config))
    if not conflicts:
        return Tenancy(members, None, by_user)
    kept = {
        group_id: [user for user in users if by_user[user.id] == config.tenant_of(group_id)]
        for group_id, users in members.items()
    }
    return Tenancy(kept, None, by_user, tuple(conflicts))


def _crossed(user_id: str, keeper: str, others: Sequence[str], config: SyncConfig) -> Skip:
    named = ", ".join(str(config.tenant_label(tenant)) for tenant in others)
    return Skip(
        user_id,
        None,
        f"object id conflict: Azure object {user_id} is read from tenant {config.tenant_label(keeper)} and from "
        f"{named}; kept as tenant {config.tenant_label(keeper)}'s account, never merged",
        keeps_access=True,
        conflict=True,
    )


def tenant_of_anyone(tenants: Tenancy, by_external: Mapping[str, StoredUser]) -> Callable[[str], str | None]:
    """The tenant of an account this plan read, else of one the store holds (a leaver's), else the trust's one."""

    def tenant_of(external_id: str) -> str | None:
        found = tenants.by_user.get(external_id)
        if found is None and (stored := by_external.get(external_id)) is not None:
            found = stored.tenant_id
        return found or tenants.single

    return tenant_of


def tenants_named(
    config: SyncConfig, tenant_of: Callable[[str], str | None], by_external: Mapping[str, StoredUser],
    users: Mapping[str, DirectoryUser],
) -> dict[str, str]:
    """``Plan.tenants``: every account's tenant, for a trust with several (empty for one: nothing to tell apart)."""
    if len(config.tenant_ids) <= 1:
        return {}
    return {external_id: tenant for external_id in {*by_external, *users} if (tenant := tenant_of(external_id))}
