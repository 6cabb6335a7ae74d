"""Several tenants' directories read as one trust's directory (API §13).

A Trust that connects several Microsoft tenants gives the reconciler one
:class:`~calm_azure_sync.Directory` per tenant. :func:`tenant_directories`
puts them behind the one ``Directory`` a run reads, so the read, the delta
cache and the planner stay as they are for one tenant:

- a mapped group is read from the tenant its mapping names
  (``SyncConfig.tenant_of``); a nested group from the tenant it was found in;
- listings (discovery, one person's groups) are the tenants' listings, each
  group marked with its ``tenant_id``;
- a user is gone (``lookup_users`` answers ``None``) only when *every* tenant
  says so, so its own tenant's word is always among them: another tenant's
  404 is never proof that an account is gone. A tenant that cannot answer
  makes the lookup fail (no proof at all), never a ``None``;
- a delta round asks each tenant for its own groups with its own cursor: the
  combined cursor keeps one cursor per tenant (``{"tenants": {id: cursor},
  "groups": {group id: tenant}}``). A round that fails in one tenant fails
  as a whole with :class:`TenantRoundFailed`, and the run reads every group
  in full instead (see ``incremental.reader.after_failed_read``): the failing
  tenant's groups are then unreadable, a partial read of its own groups only,
  while the other tenants' changes apply.

The combined directory has a capability (``UserLookup``, ``GroupDiscovery``,
``PersonLookup``, ``DeltaDirectory``) only when every tenant's directory has
it, so the reconciler's ``isinstance`` checks keep telling the truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

import attrs

from ..errors import ConfigError, DeltaExpiredError, DirectoryError, GroupNotFoundError, TenantMismatchError
from ..model import DirectoryGroup, DirectoryUser
from ..policies.config import SyncConfig
from .delta import (
    DeltaCursor,
    DeltaDirectory,
    DeltaStart,
    DirectoryDelta,
    RemovedUser,
    build_delta,
    round_group_ids,
)
from .protocol import Directory, GroupDiscovery, PersonLookup, UserLookup, lookup_ids

__all__ = ["TenantRoundFailed", "directory_for_listing", "directory_for_trust", "tenant_directories"]


class TenantRoundFailed(DirectoryError):
    """One tenant's delta round failed: the run reads every tenant in full instead (its groups unreadable)."""

    def __init__(self, tenant_id: str, error: Exception) -> None:
        self.tenant_id = tenant_id
        code = getattr(error, "code", None)
        super().__init__(f"tenant {tenant_id}: {error}", code=code if isinstance(code, str) else None)


def _marked(groups: Iterable[DirectoryGroup], tenant_id: str) -> list[DirectoryGroup]:
    return [group if group.tenant_id == tenant_id else attrs.evolve(group, tenant_id=tenant_id) for group in groups]


class _Tenants:
    """The base: every tenant's :class:`Directory`, and which tenant holds which group."""

    def __init__(self, directories: Mapping[str, Directory], config: SyncConfig | None) -> None:
        self.directories = dict(directories)
        self.config = config

    tenant_id = None  # several tenants: the reconciler checked each directory against its own

    @property
    def tenant_ids(self) -> tuple[str, ...]:
        return tuple(self.directories)

    def __repr__(self) -> str:
        return f"TenantDirectories({', '.join(f'{t}={d!r}' for t, d in self.directories.items())})"

    def _owner(self, group_id: str) -> str | None:
        return self.config.tenant_of(group_id) if self.config is not None else None

    async def _each(self, group_id: str, call: Any) -> Any:
        """``call(directory)`` on the group's tenant, or on each tenant in turn until one knows the group."""
        owner = self._owner(group_id)
        if owner is not None:
            return await call(self.directories[owner]), owner
        for tenant, directory in self.directories.items():
            try:
                return await call(directory), tenant
            except GroupNotFoundError:
                continue
        raise GroupNotFoundError(group_id)

    async def list_groups(self, search: str | None = None) -> Sequence[DirectoryGroup]:
        """Every tenant's groups (or those ``search`` finds), each marked with its tenant."""
        listed: list[DirectoryGroup] = []
        for tenant, directory in self.directories.items():
            if search is None:
                found = await directory.list_groups()
            else:
                found = await directory.list_groups(search=search)  # type: ignore[call-arg]
            listed.extend(_marked(found, tenant))
        return listed

    async def group_members(self, group_id: str) -> Sequence[DirectoryUser]:
        members, _ = await self._each(group_id, lambda directory: directory.group_members(group_id))
        return members  # type: ignore[no-any-return]


class _Lookup:
    directories: dict[str, Any]
    _owner: Any
    _each: Any

    async def lookup_users(self, ids: Iterable[str]) -> Mapping[str, DirectoryUser | None]:
        """Each id to its user in whichever tenant has it; ``None`` only when every tenant says so."""
        wanted = lookup_ids(ids, "user")
        answers = await asyncio.gather(*(d.lookup_users(wanted) for d in self.directories.values()))
        return {user_id: next((a[user_id] for a in answers if a.get(user_id) is not None), None) for user_id in wanted}

    async def lookup_groups(self, ids: Iterable[str]) -> Mapping[str, DirectoryGroup | None]:
        """Each id to its group (marked with its tenant), ``None`` when no tenant has it."""
        wanted = lookup_ids(ids, "group")
        found: dict[str, DirectoryGroup | None] = dict.fromkeys(wanted)
        for tenant, directory in self.directories.items():
            lookup = getattr(directory, "lookup_groups", None)
            if lookup is None:
                continue
            asked = [gid for gid in wanted if found[gid] is None and self._owner(gid) in (None, tenant)]
            if asked:
                answer = await lookup(asked)
                found.update((gid, _marked([group], tenant)[0]) for gid, group in answer.items() if group is not None)
        return found


class _Discovery:
    _each: Any

    async def group_member_count(self, group_id: str) -> int:
        count, _ = await self._each(group_id, lambda directory: directory.group_member_count(group_id))
        return count  # type: ignore[no-any-return]


class _Person:
    directories: dict[str, Any]
    _each: Any

    async def users_by_email(self, email: str) -> Sequence[DirectoryUser]:
        """Every tenant's users with this email (one each at most, usually one in all)."""
        found: list[DirectoryUser] = []
        for directory in self.directories.values():
            found.extend(await directory.users_by_email(email))
        return found

    async def user_groups(self, user_id: str, *, transitive: bool) -> Sequence[DirectoryGroup]:
        """The user's groups in the tenant that has the user (object ids are unique across tenants)."""
        for tenant, directory in self.directories.items():
            try:
                return _marked(await directory.user_groups(user_id, transitive=transitive), tenant)
            except DirectoryError as error:
                if error.code != "not_found":
                    raise
        raise DirectoryError(f"user {user_id!r} does not exist in any of the trust's tenants", code="not_found", status=404)

    async def group_parents(self, group_id: str) -> Sequence[DirectoryGroup]:
        parents, tenant = await self._each(group_id, lambda directory: directory.group_parents(group_id))
        return _marked(parents, tenant)


class _Delta:
    directories: dict[str, Any]
    _owner: Any

    async def changes(
        self, cursor: Mapping[str, Any] | None, group_ids: Iterable[str], *, start: DeltaStart = "initial"
    ) -> tuple[DirectoryDelta, DeltaCursor]:
        """One round per tenant, each with its own cursor and groups; all or nothing, as one round is."""
        wanted = round_group_ids(group_ids, start)
        cursors, owners = _read_cursor(cursor, self.directories)
        per_tenant: dict[str, list[str]] = {tenant: [] for tenant in self.directories}
        for group_id in wanted:
            owner = self._owner(group_id) or owners.get(group_id)
            if owner is None or owner not in per_tenant:
                raise DeltaExpiredError(f"the delta cursor does not say which tenant group {group_id} is in")
            per_tenant[owner].append(group_id)
        users: dict[str, DirectoryUser | RemovedUser] = {}
        groups: dict[str, Any] = {}
        removed: set[str] = set()
        next_cursor: DeltaCursor = {"tenants": {}, "groups": {}}
        complete = True
        for tenant, directory in self.directories.items():
            try:
                delta, tenant_cursor = await directory.changes(cursors.get(tenant), per_tenant[tenant], start=start)
            except DeltaExpiredError:
                raise
            except Exception as error:
                raise TenantRoundFailed(tenant, error) from error
            next_cursor["tenants"][tenant] = tenant_cursor
            for group_id in per_tenant[tenant]:
                next_cursor["groups"][group_id] = tenant
            for group in delta.groups:
                groups[group.group_id] = group
                for nested in group.added_groups:
                    next_cursor["groups"].setdefault(nested, tenant)
            # An object id in two tenants (Entra's GUIDs make it all but impossible): the delta cache is keyed
            # by object id, so the earlier tenant's copy is the one kept in this round (full reads tell both apart).
            earlier = set(users)  # the ids earlier tenants reported in this round
            for changed in (*delta.removed_users, *delta.users):
                if changed.id not in earlier:
                    users[changed.id] = changed
            removed.update(delta.removed_groups)
            complete = complete and delta.users_complete
        return build_delta(users, groups, removed, users_complete=complete), next_cursor


def _read_cursor(
    cursor: Mapping[str, Any] | None, directories: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The per-tenant cursors and the group owners a combined cursor keeps; a foreign cursor has expired."""
    if cursor is None:
        return {}, {}
    tenants, owners = cursor.get("tenants"), cursor.get("groups")
    if not isinstance(tenants, Mapping) or not isinstance(owners, Mapping) or set(tenants) - set(directories):
        raise DeltaExpiredError("the delta cursor was not made for this trust's tenants", code="tenants_changed")
    return dict(tenants), {str(group): str(tenant) for group, tenant in owners.items()}


_CAPABILITIES: tuple[tuple[type, type], ...] = (
    (UserLookup, _Lookup),
    (GroupDiscovery, _Discovery),
    (PersonLookup, _Person),
    (DeltaDirectory, _Delta),
)


@cache
def _combined_type(mixins: tuple[type, ...]) -> type:
    return type("TenantDirectories", (*mixins, _Tenants), {"__module__": __name__})


def tenant_directories(directories: Mapping[str, Directory], config: SyncConfig | None) -> Directory:
    """One :class:`Directory` over each tenant's, with the capabilities every one of them has."""
    mixins = tuple(
        mixin for capability, mixin in _CAPABILITIES if all(isinstance(d, capability) for d in directories.values())
    )
    combined: Directory = _combined_type(mixins)(directories, config)
    return combined


def _is_directory_map(directory: object) -> bool:
    return isinstance(directory, Mapping) and not isinstance(directory, Directory)


def directory_for_trust(given: Directory | Mapping[str, Directory], config: SyncConfig | None) -> Directory:
    """The directory a trust's run reads: its one tenant's, or its tenants' read as one.

    ``given`` is what the host passed the reconciler: one directory, or
    ``{tenant_id: Directory}``. A trust connected to a tenant is only ever
    synced from that tenant, and a directory that cannot say which tenant it
    reads is refused too: the check must not pass because the answer is
    unknown (:class:`~calm_azure_sync.TenantMismatchError`). A trust with
    several tenants needs a directory for each (else a
    :class:`~calm_azure_sync.ConfigError` before anything starts).
    ``config=None`` asks for every directory given (what the status reads).
    """
    if config is None:
        if not _is_directory_map(given):
            return given  # type: ignore[return-value]
        every: Mapping[str, Directory] = given  # type: ignore[assignment]
        return tenant_directories(every, None) if len(every) != 1 else next(iter(every.values()))
    tenants, trust = config.tenant_ids, config.trust_site_id
    if not _is_directory_map(given):
        directory: Directory = given  # type: ignore[assignment]
        if len(tenants) > 1:
            raise ConfigError(
                f"directory: trust {trust!r} connects {len(tenants)} tenants ({', '.join(tenants)}); "
                "pass the Reconciler a mapping of tenant id to Directory"
            )
        if tenants:
            _check_directory_tenant(trust, tenants[0], directory)
        return directory
    directories: Mapping[str, Directory] = given  # type: ignore[assignment]
    if not tenants:
        if len(directories) != 1:
            raise ConfigError(
                f"tenants: trust {trust!r} names no tenant, and the Reconciler has directories "
                f"for {len(directories)}; set tenant_id (one tenant) or tenants (several)"
            )
        return next(iter(directories.values()))
    return _choose(directories, tenants, config, trust=trust, path="directory", whose=f" of trust {trust!r}")


def directory_for_listing(
    given: Directory | Mapping[str, Directory], trust_site_id: str, tenant_ids: Iterable[str] | None,
    *, lenient: bool = False,
) -> Directory:
    """The directory a trust's group listing reads (discovery, the settings check): its own tenants only.

    With several directories the trust's ``tenant_ids`` must be named, so an
    admin never sees another trust's groups; each must have a directory, and
    each directory must say it reads its key. ``lenient`` (the settings check
    of a configuration already found wrong) lists the named tenants that do
    have a directory instead of refusing.
    """
    if isinstance(tenant_ids, str):
        raise ConfigError(f"tenant_ids: expected a list of tenant ids, not one string (write [{tenant_ids!r}])")
    wanted = None if tenant_ids is None else [str(tenant) for tenant in tenant_ids]
    if not _is_directory_map(given):
        directory: Directory = given  # type: ignore[assignment]
        actual = getattr(directory, "tenant_id", None)
        if wanted and actual and not lenient and str(actual).lower() not in {t.lower() for t in wanted}:
            raise TenantMismatchError(
                f"the directory reads tenant {actual!r}, not {', '.join(map(repr, wanted))}", expected=wanted[0],
                actual=str(actual),
            )
        return directory
    directories: Mapping[str, Directory] = given  # type: ignore[assignment]
    if wanted is None:
        if len(directories) == 1:
            return next(iter(directories.values()))
        raise ConfigError(
            f"tenant_ids: this Reconciler reads {len(directories)} tenants; name the trust's own "
            "(SyncConfig.tenant_ids), so its admin sees only its groups"
        )
    return _choose(directories, wanted, None, trust=trust_site_id, path="tenant_ids", whose="", lenient=lenient)


def _choose(
    directories: Mapping[str, Directory], tenants: Sequence[str], config: SyncConfig | None, *,
    trust: str, path: str, whose: str, lenient: bool = False,
) -> Directory:
    """Each of ``tenants``' directory, checked against its key (tenant ids match in any case): one, or all as one.

    ``whose`` follows a tenant's id in the error about its missing directory. ``lenient``: leave out a
    tenant without a directory, and check nothing (a listing for a configuration already found wrong).
    """
    by_key = {str(key).lower(): value for key, value in directories.items()}
    missing = [tenant for tenant in tenants if tenant.lower() not in by_key]
    if missing and not lenient:
        raise ConfigError([f"{path}: tenant {tenant!r}{whose} has no directory" for tenant in missing])
    chosen = {tenant: by_key[tenant.lower()] for tenant in tenants if tenant.lower() in by_key}
    if not chosen:
        raise ConfigError(f"{path}: none of the trust's tenants has a directory")
    if not lenient:
        for tenant, directory in chosen.items():
            _check_directory_tenant(trust, tenant, directory)
    return next(iter(chosen.values())) if len(chosen) == 1 else tenant_directories(chosen, config)


def _check_directory_tenant(trust: str, tenant: str, directory: Directory) -> None:
    """The directory for ``tenant`` must say it reads that tenant."""
    actual = getattr(directory, "tenant_id", None)
    if not actual:
        raise TenantMismatchError(
            f"trust {trust!r} is connected to tenant {tenant!r}, "
            "but the directory does not say which tenant it reads; pass tenant_id to the directory",
            expected=tenant, actual=None,
        )
    if tenant.lower() != str(actual).lower():
        raise TenantMismatchError(
            f"trust {trust!r} is connected to tenant {tenant!r}, "
            f"but the directory reads tenant {actual!r}; refusing to sync another organisation",
            expected=tenant, actual=str(actual),
        )
