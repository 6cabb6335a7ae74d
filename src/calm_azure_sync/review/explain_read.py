"""Explain's directory read: one person, the mapped groups that contain them, and how (nesting paths).

With a :class:`~calm_azure_sync.directory.protocol.PersonLookup` directory
(both shipped ones) the read is bounded by the person, never the tenant:

1. the person: ``lookup_users([id])`` for an object id (one ``GET
   /users/{id}``), ``users_by_email`` for an email (``$filter`` on ``mail``,
   then ``userPrincipalName``);
2. their groups, nesting resolved: ``user_groups(id, transitive=True)``
   (``/users/{id}/transitiveMemberOf``, pages of 999), and the mapped groups'
   names and existence (``lookup_groups``: one request, or ``$batch`` of 20);
3. the nesting paths, only when a mapped group contains them through
   nesting: their direct groups (``/users/{id}/memberOf``), then the direct
   parents (``/groups/{id}/memberOf``) of groups on the way up, breadth
   first, only groups among their transitive groups (no other group can be
   on a path), stopping once every mapped group of theirs is reached, and
   after at most :data:`MAX_PARENT_READS` groups (a path not traced by then
   is shown as the mapped group alone, marked incomplete).

So a person in *g* groups nested *d* deep costs about 3 + ⌈mapped/20⌉ + (the
groups on their paths) requests, whatever the tenant's size.

A directory without that capability is read as a run reads it: every mapped
group in full (:meth:`DirectoryReader.read_all`); the person is found among
the members, and a path is the mapped group alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs

from ..directory.protocol import Directory, PersonLookup, UserLookup
from ..errors import DirectoryError
from ..incremental.reader import DirectoryReader
from ..model import DirectoryGroup, DirectoryUser, email_key
from ..policies.config import SyncConfig
from ..store.protocol import StoredUser
from .explain import GroupPath, nesting_paths

__all__ = ["MAX_PARENT_READS", "PersonRead", "read_person"]

logger = logging.getLogger(__name__)

#: The most groups whose parents are read to trace nesting paths for one person.
MAX_PARENT_READS = 50


@attrs.frozen
class PersonRead:
    """What the directory said about one person, as far as the mapping goes."""

    user: DirectoryUser | None
    groups: tuple[GroupPath, ...] = ()
    group_names: Mapping[str, str] = attrs.field(factory=dict)
    unreadable: Mapping[str, str] = attrs.field(factory=dict)
    stale: frozenset[str] = frozenset()
    how: Literal["person", "mapped_groups"] = "person"
    notes: tuple[str, ...] = ()
    not_found_reason: str | None = None

    @property
    def member_of(self) -> frozenset[str]:
        return frozenset(group.group_id for group in self.groups)


def _pick(users: Sequence[DirectoryUser], stored: StoredUser | None) -> tuple[DirectoryUser | None, tuple[str, ...]]:
    if not users:
        return None, ()
    chosen = sorted(users, key=lambda user: (stored is None or user.id != stored.external_id, user.id))
    notes: tuple[str, ...] = ()
    if len(users) > 1:
        names = ", ".join(user.display_name or user.email or user.id for user in chosen)
        notes = (f"Note: {len(users)} accounts in the directory have this email ({names}); this explains the first.",)
    return chosen[0], notes


async def _find(
    directory: Directory, who: str, stored: StoredUser | None
) -> tuple[DirectoryUser | None, tuple[str, ...], str | None]:
    """The person's directory account, notes, and why none was found."""
    assert isinstance(directory, PersonLookup)
    object_id = stored.external_id if stored is not None else (None if "@" in who else who)
    email = stored.email if stored is not None else (who if "@" in who else None)
    if object_id is not None and isinstance(directory, UserLookup):
        found = (await directory.lookup_users([object_id])).get(object_id)
        if found is not None:
            return found, (), None
        if email is None:
            return None, (), "no user in the directory has this object id"
        users = await directory.users_by_email(email)
        user, notes = _pick(users, None)
        if user is not None and stored is not None:
            notes = (*notes, "Note: the Azure account they were synced from no longer exists; "
                     "another account has their email now.")
        return user, notes, None if user else "their Azure account no longer exists and no account has their email"
    if email is None:
        return None, (), "no user in the directory has this object id"
    users = await directory.users_by_email(email)
    user, notes = _pick(users, stored)
    return user, notes, None if user else "no user in the directory has this email"


async def _mapped_groups(directory: Directory, config: SyncConfig) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """The mapped groups' names, and which no longer exist (stale), when the directory can look groups up."""
    lookup = getattr(directory, "lookup_groups", None)
    mapped = sorted(config.mappings.group_ids)
    if lookup is None or not mapped:
        return {}, {}, set()
    try:
        found: Mapping[str, DirectoryGroup | None] = await lookup(mapped)
    except DirectoryError as error:
        return {}, dict.fromkeys(mapped, f"could not be read: {error}"), set()
    names = {group: item.display_name for group, item in found.items() if item is not None and item.display_name}
    stale = {group for group, item in found.items() if item is None}
    unreadable = dict.fromkeys(stale, "stale mapping: the group no longer exists in Azure")
    return names, unreadable, stale


async def _paths(
    directory: PersonLookup,
    user_id: str,
    transitive: Mapping[str, DirectoryGroup],
    mapped_in: set[str],
    concurrency: int,
) -> dict[str, tuple[str, ...]]:
    """Trace, breadth first and bounded, how the person is in each of ``mapped_in`` (see the module docstring)."""
    direct = [group.id for group in await directory.user_groups(user_id, transitive=False)]
    parents: dict[str, list[str]] = {}
    reached = set(direct)
    frontier = [group for group in direct if group in transitive]
    read = 0
    limit = asyncio.Semaphore(concurrency)

    async def parents_of(group_id: str) -> tuple[str, list[str]]:
        async with limit:
            found = await directory.group_parents(group_id)
        return group_id, [parent.id for parent in found if parent.id in transitive]

    while frontier and not mapped_in <= reached and read < MAX_PARENT_READS:
        batch = frontier[: MAX_PARENT_READS - read]
        read += len(batch)
        answers = await asyncio.gather(*(parents_of(group_id) for group_id in batch))
        following: list[str] = []
        for group_id, found in answers:
            parents[group_id] = found
            for parent in found:
                if parent not in reached:
                    reached.add(parent)
                    following.append(parent)
        frontier = following
    return nesting_paths(direct, parents, mapped_in)


async def read_person(
    directory: Directory,
    config: SyncConfig,
    who: str,
    stored: StoredUser | None,
    reader: DirectoryReader,
    concurrency: int = 8,
) -> PersonRead:
    """Read the directory for one person (see the module docstring for what is read)."""
    if not isinstance(directory, PersonLookup):
        return await _read_mapped_groups(config, who, stored, reader)
    user, notes, why = await _find(directory, who, stored)
    names, unreadable, stale = await _mapped_groups(directory, config)
    if user is None:
        return PersonRead(None, (), names, unreadable, frozenset(stale), "person", notes, why)
    transitive = {group.id: group for group in await directory.user_groups(user.id, transitive=True)}
    for group in transitive.values():
        if group.display_name:
            names.setdefault(group.id, group.display_name)
    mapped_in = {group for group in config.mappings.group_ids if group in transitive}
    paths = await _paths(directory, user.id, transitive, mapped_in, concurrency) if mapped_in else {}
    groups = []
    for group_id in sorted(mapped_in, key=lambda group: ((names.get(group) or group).casefold(), group)):
        path_ids = paths.get(group_id)
        complete = path_ids is not None
        path_ids = path_ids or (group_id,)
        groups.append(
            GroupPath(group_id, names.get(group_id, group_id), tuple(names.get(g, g) for g in path_ids), path_ids, complete)
        )
    return PersonRead(user, tuple(groups), names, unreadable, frozenset(stale), "person", notes)


async def _read_mapped_groups(config: SyncConfig, who: str, stored: StoredUser | None, reader: DirectoryReader) -> PersonRead:
    """The fallback: every mapped group read in full, the person found among their members."""
    snapshot = await reader.read_all(config)
    object_id = stored.external_id if stored is not None else (None if "@" in who else who)
    key = email_key(stored.email if stored is not None else who) if (stored is not None or "@" in who) else None
    user: DirectoryUser | None = None
    inside: list[str] = []
    for group_id in sorted(snapshot.members):
        for member in snapshot.members[group_id]:
            if member.id == object_id or (object_id is None and key is not None and member.email and email_key(member.email) == key):
                user = user or member
                inside.append(group_id)
                break
    names = dict(snapshot.group_names)
    groups = tuple(
        GroupPath(group_id, names.get(group_id, group_id), (names.get(group_id, group_id),), (group_id,), complete=False)
        for group_id in inside
    )
    notes = ("Note: this directory cannot read one person, so every mapped group was read and nesting is not traced.",)
    why = None if user is not None else "not a member of any mapped group (this directory cannot look one person up)"
    return PersonRead(
        user, groups, names, dict(snapshot.unreadable), snapshot.stale, "mapped_groups", notes, why
    )
