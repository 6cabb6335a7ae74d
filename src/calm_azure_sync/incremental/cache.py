"""The delta cache, its head and its writes, the stores that keep it, and choosing the read mode. Pure.

A :class:`DeltaCache` is what an incremental run keeps from the last one:
the directory's cursor, the **direct** memberships of every tracked group,
the cached users, the mapped groups it was made for and when the directory
was last read in full. A :class:`DeltaHead` is its cheap part (enough to
choose the mode and ask for changes). A :class:`DeltaCacheWrite` moves a
stored cache to the next (:func:`cache_write`); a :class:`DeltaCacheStore`
keeps it in tables of its own. :func:`choose_mode` decides, from the head,
whether a run reads in full or from changes, and why.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from .._gc import without_collector
from ..errors import DirectoryError
from ..model import DirectoryUser

__all__ = [
    "CACHE_VERSION",
    "DeltaCache",
    "DeltaCacheStore",
    "DeltaCacheWrite",
    "DeltaHead",
    "Memberships",
    "DeltaHeadStore",
    "ReadMode",
    "added_groups",
    "cache_write",
    "choose_mode",
]

CACHE_VERSION = 1

ReadMode = Literal["full", "incremental", "auto"]


@attrs.frozen
class DeltaCache:
    """What an incremental run needs from the last one.

    ``cursor``: the directory's opaque delta cursor; ``groups``: tracked group
    id -> direct member ids (users and groups); ``users``: the cached users of
    the tracked groups; ``mapped``: the mapped group ids the cache was made
    for; ``full_read_at``: when the directory was last read in full.
    """

    cursor: Mapping[str, Any]
    groups: Mapping[str, frozenset[str]]
    users: Mapping[str, DirectoryUser]
    mapped: frozenset[str]
    full_read_at: dt.datetime

    @property
    def head(self) -> DeltaHead:
        """The cache without its memberships and users: what a round needs to start."""
        return DeltaHead(self.cursor, self.mapped, self.full_read_at, frozenset(self.groups))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION,
            "cursor": dict(self.cursor),
            "groups": {group: sorted(members) for group, members in sorted(self.groups.items())},
            "users": [self.users[user_id].to_graph() for user_id in sorted(self.users)],
            "mapped": sorted(self.mapped),
            "full_read_at": self.full_read_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeltaCache | None:
        """The cache, or ``None`` when ``data`` is empty, of another version, or unreadable (read in full)."""
        if not data or data.get("version") != CACHE_VERSION:
            return None
        try:
            at = dt.datetime.fromisoformat(data["full_read_at"])
            if at.tzinfo is None:
                return None
            return cls(
                cursor=dict(data["cursor"]),
                groups={str(group): frozenset(map(str, members)) for group, members in data["groups"].items()},
                users={user.id: user for user in map(DirectoryUser.from_graph, data["users"])},
                mapped=frozenset(map(str, data["mapped"])),
                full_read_at=at,
            )
        except (KeyError, TypeError, ValueError, AttributeError, DirectoryError):
            return None


@attrs.frozen
class DeltaHead:
    """The cheap part of a cache: the cursor, the mapped and tracked group ids, the last full read.

    Enough to choose the mode and ask for changes; the memberships and users
    are loaded only when the round brings any (or a mapping changed).
    """

    cursor: Mapping[str, Any]
    mapped: frozenset[str]
    full_read_at: dt.datetime
    tracked: frozenset[str]


def choose_mode(
    requested: ReadMode,
    *,
    cache: DeltaCache | DeltaHead | None,
    mapped: frozenset[str],
    supports_delta: bool,
    now: dt.datetime,
    full_resync_interval: dt.timedelta,
) -> tuple[Literal["full", "incremental"], str]:
    """The read this run makes, and why (for the report and the Import Log)."""
    if requested == "full":
        return "full", "full read requested"
    if not supports_delta:
        return "full", "the directory cannot read changes (no delta support)"
    if cache is None:
        return "full", "no usable delta state yet"
    if requested == "auto" and now - cache.full_read_at >= full_resync_interval:
        return "full", f"the last full read is older than {full_resync_interval}"
    added, removed = added_groups(cache, mapped), cache.mapped - mapped
    if added or removed:
        parts = [f"{len(added)} mapped group(s) added: read in full"] if added else []
        parts += [f"{len(removed)} mapping(s) removed: dropped from the cache"] if removed else []
        return "incremental", "the mapped groups changed since the last read; " + "; ".join(parts) + (
            "; the rest read from changes"
        )
    return "incremental", "reading only what changed since the last run"


def added_groups(cache: DeltaCache | DeltaHead, mapped: Iterable[str]) -> frozenset[str]:
    """Mapped groups the cache was not made for: an incremental run reads these in full."""
    return frozenset(mapped) - cache.mapped


class Memberships(AbstractSet[tuple[str, str]]):
    """Every ``(group id, member id)`` pair of a cache's groups, as a set that is never built.

    A first write lists every direct membership (300k at 100k users): holding
    them as a frozenset of tuples beside the cache they come from was the top
    of a first import's memory. Compares, iterates and answers ``in`` like
    the frozenset it stands for.
    """

    __slots__ = ("_count", "_groups")

    def __init__(self, groups: Mapping[str, frozenset[str]]) -> None:
        self._groups = groups
        self._count = sum(len(members) for members in groups.values())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for group, members in self._groups.items():
            for member in members:
                yield group, member

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        return item[1] in self._groups.get(item[0], ())

    def __hash__(self) -> int:
        return self._hash()

    def __repr__(self) -> str:
        return f"Memberships({self._count} pairs in {len(self._groups)} groups)"


@attrs.frozen
class DeltaCacheWrite:
    """The rows that move a stored cache from the last run's to this run's: what a table store writes.

    ``replace``: drop whatever the trust has stored first (the first cache, or
    a rebuild); then every group, membership and user of the cache is in the
    ``added`` parts. Otherwise only what changed is: group ids started or no
    longer tracked, ``(group id, member id)`` rows added and removed, users
    added or changed (whole) and user ids gone. ``cursor``, ``mapped`` and
    ``full_read_at`` are always the new cache's.
    """

    cursor: Mapping[str, Any]
    mapped: frozenset[str]
    full_read_at: dt.datetime
    replace: bool
    added_groups: frozenset[str] = frozenset()
    removed_groups: frozenset[str] = frozenset()
    added_members: AbstractSet[tuple[str, str]] = frozenset()
    removed_members: frozenset[tuple[str, str]] = frozenset()
    users: tuple[DirectoryUser, ...] = ()
    removed_users: frozenset[str] = frozenset()

    @property
    def rows(self) -> int:
        """How many rows the write touches (for logs and benchmarks)."""
        return (
            len(self.added_groups) + len(self.removed_groups) + len(self.added_members)
            + len(self.removed_members) + len(self.users) + len(self.removed_users)
        )

    def applied_to(self, stored: DeltaCache | None) -> DeltaCache:
        """The cache after this write, from the one stored before it (what a store must load next)."""
        groups: dict[str, set[str]] = {}
        users: dict[str, DirectoryUser] = {}
        if stored is not None and not self.replace:
            groups = {group: set(members) for group, members in stored.groups.items()}
            users = dict(stored.users)
        for group in self.removed_groups:
            groups.pop(group, None)
        for group in self.added_groups:
            groups.setdefault(group, set())
        for group, member in self.removed_members:
            groups.get(group, set()).discard(member)
        for group, member in self.added_members:
            groups.setdefault(group, set()).add(member)
        for user_id in self.removed_users:
            users.pop(user_id, None)
        users.update((user.id, user) for user in self.users)
        return DeltaCache(
            dict(self.cursor),
            {group: frozenset(members) for group, members in groups.items()},
            users,
            self.mapped,
            self.full_read_at,
        )


@without_collector  # hundreds of thousands of small objects: see _gc.py
def cache_write(previous: DeltaCache | None, cache: DeltaCache) -> DeltaCacheWrite:
    """The write that turns the stored ``previous`` into ``cache`` (all of it when ``previous`` is ``None``)."""
    cursor, mapped, at = dict(cache.cursor), cache.mapped, cache.full_read_at
    if previous is None:
        return DeltaCacheWrite(
            cursor, mapped, at,
            replace=True,
            added_groups=frozenset(cache.groups),
            added_members=Memberships(cache.groups),
            users=tuple(cache.users[user_id] for user_id in sorted(cache.users)),
        )
    before, after = previous.groups, cache.groups
    added_members: set[tuple[str, str]] = set()
    removed_members: set[tuple[str, str]] = set()
    for group, members in after.items():
        was = before.get(group, frozenset())
        if members is not was and members != was:
            added_members.update((group, m) for m in members - was)
            removed_members.update((group, m) for m in was - members)
    for group, was in before.items():
        if group not in after:
            removed_members.update((group, m) for m in was)
    old_users = previous.users
    changed = tuple(
        user for user_id, user in sorted(cache.users.items())
        if (old := old_users.get(user_id)) is not user and old != user
    )
    return DeltaCacheWrite(
        cursor, mapped, at,
        replace=False,
        added_groups=frozenset(after.keys() - before.keys()),
        removed_groups=frozenset(before.keys() - after.keys()),
        added_members=frozenset(added_members),
        removed_members=frozenset(removed_members),
        users=changed,
        removed_users=frozenset(old_users.keys() - cache.users.keys()),
    )


@runtime_checkable
class DeltaCacheStore(Protocol):
    """Keeps each trust's :class:`DeltaCache` in tables of its own. Implemented by both shipped user stores.

    The reconciler calls these only while it holds the trust's run lock.
    ``load_delta`` returns ``None`` when the trust has no cache, or when what
    is stored cannot be read or is of another :data:`CACHE_VERSION` (the run
    then reads in full and replaces it: a cache is never a reason to fail).
    ``save_delta`` applies a :class:`DeltaCacheWrite` atomically, all or
    nothing; afterwards ``load_delta`` returns ``write.applied_to(before)``.
    ``clear_delta`` drops the trust's cache.
    """

    async def load_delta(self, trust_site_id: str) -> DeltaCache | None:
        """The trust's cache, or ``None`` (none, unreadable, another version)."""
        ...

    async def save_delta(self, trust_site_id: str, write: DeltaCacheWrite) -> None:
        """Apply ``write`` to the trust's stored cache, atomically."""
        ...

    async def clear_delta(self, trust_site_id: str) -> None:
        """Drop the trust's cache (the next incremental-capable run reads in full)."""
        ...


@runtime_checkable
class DeltaHeadStore(Protocol):
    """A :class:`DeltaCacheStore` that can load a cache's :class:`DeltaHead` alone (a few rows).

    Optional: without it the reconciler loads the whole cache and takes its
    ``head``. ``load_delta_head`` answers ``None`` exactly when
    ``load_delta`` would for the meta row (none, another version); rows it
    does not read are checked when the whole cache is loaded.
    """

    async def load_delta_head(self, trust_site_id: str) -> DeltaHead | None:
        """The trust's cache head, or ``None``."""
        ...
