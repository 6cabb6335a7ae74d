"""A round read from some rows of the delta cache, never the whole cache: planning by difference's read. Pure.

Planning by difference (:mod:`~calm_azure_sync.incremental.difference`)
plans only the people a round touched, but folding the round into the whole
cache and resolving every mapped group still cost the whole trust (at 100k
users, most of such a run). For a **simple** round (:func:`is_simple`: users
changed, and users added to or removed from tracked groups; no nesting
changed, no chain started, no group removed, the mapped groups as the cache
has them) the round's effect is worked out from a few rows instead
(:class:`RoundPart`):

- the cache's nesting: which tracked groups hold each tracked group (a
  :class:`DeltaRows` of the tracked group ids), which a simple round never
  changes, so every group reaches the same mapped groups before and after;
- for each person the round names, the tracked groups that held them
  directly and their cached user (a :class:`DeltaRows` of their ids).

A person is in a mapped group's resolved members exactly when a group
holding them directly is, or is nested at any depth in, that mapped group,
and their user is cached (what :func:`~calm_azure_sync.model.transitive_users`
resolves). So their mapped groups before and after the round follow from
their direct groups; each mapped group's size after is the last run's
record's (``Settled.group_users``, of this very cache) plus who entered
minus who left; and the cache write is the round's own rows
(:meth:`RoundPart.write`), equal to what :func:`~calm_azure_sync.incremental.cache.cache_write`
would give after a whole fold. Who is touched is exactly what
:func:`~calm_azure_sync.incremental.difference.touched_people` finds from
the whole cache. Anyone else a run plans (who shares an email) is
unchanged: their rows are loaded as the search names them (:meth:`RoundPart.learn`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

import attrs

from ..directory.delta import DirectoryDelta
from ..model import DirectorySnapshot, DirectoryUser
from .cache import DeltaCacheWrite, DeltaHead

__all__ = ["ALWAYS_NARROW", "MAX_SHARE", "DeltaRows", "DeltaRowsStore", "RoundPart", "is_simple", "rows_of", "too_many"]

MAX_SHARE = 0.2
"""Above this share of the trust's users touched, a run plans everyone: narrowing would cost more than it saves."""
ALWAYS_NARROW = 50
"""Up to this many people touched, a run plans by difference whatever the trust's size."""


def too_many(touched: int, users: int) -> bool:
    """Whether a round touched too many people to plan by difference (see :data:`MAX_SHARE`)."""
    return touched > max(ALWAYS_NARROW, MAX_SHARE * users)


@attrs.frozen
class DeltaRows:
    """Some rows of a trust's stored delta cache, for the member ids asked.

    ``groups_of``: member id -> the tracked groups holding it directly (an
    id held by none is absent); ``users``: the cached users among the ids;
    ``user_count``: how many users the whole cache holds.
    """

    groups_of: Mapping[str, frozenset[str]]
    users: Mapping[str, DirectoryUser]
    user_count: int


@runtime_checkable
class DeltaRowsStore(Protocol):
    """A :class:`~calm_azure_sync.DeltaCacheStore` that reads some rows of a cache: optional.

    ``load_delta_rows(trust_site_id, member_ids)`` answers, in one read,
    what the whole cache says of those ids (:func:`rows_of` the cache
    ``load_delta`` returns; no cache: no rows). Without it a run planned by difference loads the whole
    cache and folds the round into it.
    """

    async def load_delta_rows(self, trust_site_id: str, member_ids: Iterable[str]) -> DeltaRows:
        """The direct groups and cached users of ``member_ids`` in the trust's cache."""
        ...


def rows_of(
    groups: Mapping[str, frozenset[str]], users: Mapping[str, DirectoryUser], member_ids: Iterable[str]
) -> DeltaRows:
    """What :meth:`DeltaRowsStore.load_delta_rows` answers, from a whole cache's memberships and users."""
    wanted = set(member_ids)
    groups_of: dict[str, set[str]] = {}
    for group, members in groups.items():
        for member in wanted.intersection(members):
            groups_of.setdefault(member, set()).add(group)
    return DeltaRows(
        {member: frozenset(held) for member, held in groups_of.items()},
        {user_id: users[user_id] for user_id in wanted if user_id in users},
        len(users),
    )


def is_simple(delta: DirectoryDelta, head: DeltaHead, mapped: frozenset[str]) -> bool:
    """Whether ``delta`` changes only users and the user members of tracked groups (see the module)."""
    return (
        head.mapped == mapped
        and not delta.removed_groups
        and not delta.users_complete
        and all(
            change.group_id in head.tracked
            and not change.complete
            and not change.added_groups
            and not change.removed_groups
            for change in delta.groups
        )
    )


class RoundPart:
    """A simple round's effect, from the rows of the people it names: who it touched, sizes, the cache write.

    Build it from the round, the nesting (``nesting``: rows of the tracked
    group ids) and the rows of :meth:`named` people; ``found`` are the users
    a look-up returned for the members :meth:`missing` named (``None``: gone).
    """

    def __init__(
        self,
        head: DeltaHead,
        delta: DirectoryDelta,
        mapped: Iterable[str],
        nesting: DeltaRows,
        rows: DeltaRows,
        found: Mapping[str, DirectoryUser | None] | None = None,
    ) -> None:
        self.head, self._mapped = head, frozenset(mapped)
        self._parents = nesting.groups_of
        self._up: dict[str, frozenset[str]] = {}
        self.before: dict[str, DirectoryUser] = dict(rows.users)  # cached users of everyone known
        self.now: dict[str, DirectoryUser] = dict(rows.users)  # their users after the round
        self._direct: dict[str, frozenset[str]] = dict(rows.groups_of)  # direct groups after the round
        self._was: dict[str, frozenset[str]] = {}  # direct groups before, of the people the round names
        self._cached_count = rows.user_count
        removed = {gone.id for gone in delta.removed_users}
        described = {user.id: user for user in delta.users}
        moves: dict[str, tuple[set[str], set[str]]] = {}
        for change in delta.groups:
            for user_id in change.added_users:
                moves.setdefault(user_id, (set(), set()))[0].add(change.group_id)
            for user_id in change.removed_users:
                moves.setdefault(user_id, (set(), set()))[1].add(change.group_id)
        found = found or {}
        for person in sorted(removed | described.keys() | moves.keys()):
            was = rows.groups_of.get(person, frozenset())
            added, taken = moves.get(person, (set(), set()))
            direct = frozenset() if person in removed else (was - taken) | added
            user = described.get(person) or rows.users.get(person)
            if user is None and direct and person in found:
                user = found[person]
            if user is None or not direct:
                direct, user = frozenset(), None  # gone, or held by no tracked group: pruned
            self._was[person], self._direct[person] = was, direct
            if user is None:
                self.now.pop(person, None)
            else:
                self.now[person] = user

    @staticmethod
    def missing(delta: DirectoryDelta, rows: DeltaRows) -> list[str]:
        """Members the round added whose fields neither the round nor the cache has: look them up."""
        described = {user.id for user in delta.users} | {gone.id for gone in delta.removed_users}
        added = {user_id for change in delta.groups for user_id in change.added_users}
        return sorted(added - described - rows.users.keys())

    @staticmethod
    def named(delta: DirectoryDelta) -> set[str]:
        """The ids the round names: users described or removed, members added or removed."""
        named = {user.id for user in delta.users} | {gone.id for gone in delta.removed_users}
        for change in delta.groups:
            named.update(change.added_users, change.removed_users)
        return named

    # ------------------------------------------------------------------ nesting

    def _mapped_above(self, groups: Iterable[str]) -> frozenset[str]:
        """The mapped groups that hold any of ``groups`` at any depth (themselves included)."""
        found: set[str] = set()
        for group in groups:
            above = self._up.get(group)
            if above is None:
                above = self._up[group] = self._climb(group)
            found.update(above)
        return frozenset(found)

    def _climb(self, group: str) -> frozenset[str]:
        seen, pending = {group}, [group]
        while pending:
            for parent in self._parents.get(pending.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    pending.append(parent)
        return frozenset(seen & self._mapped)

    def _groups_before(self, person: str) -> frozenset[str]:
        if person not in self.before:
            return frozenset()
        return self._mapped_above(self._was.get(person, self._direct.get(person, ())))

    def _groups_after(self, person: str) -> frozenset[str]:
        return self._mapped_above(self._direct.get(person, ())) if person in self.now else frozenset()

    # ------------------------------------------------------------------ what the round did

    @functools.cached_property
    def touched(self) -> frozenset[str]:
        """Whose user changed, appeared or went, or whose mapped groups changed."""
        return frozenset(
            person
            for person in self._was
            if self.now.get(person) != self.before.get(person)
            or self._groups_before(person) != self._groups_after(person)
        )

    @property
    def user_count(self) -> int:
        """How many users the cache holds after the round."""
        return self._cached_count + sum(
            (person in self.now) - (person in self.before) for person in self._was
        )

    def sizes(self, before: Mapping[str, int]) -> dict[str, int]:
        """Each mapped group's user count after the round, from ``before`` (the last run's, of this cache)."""
        sizes = {group: before[group] for group in sorted(self._mapped)}
        for person in self._was:
            for group in self._groups_after(person) - self._groups_before(person):
                sizes[group] += 1
            for group in self._groups_before(person) - self._groups_after(person):
                sizes[group] -= 1
        return sizes

    def write(self, cursor: Mapping[str, object]) -> DeltaCacheWrite:
        """The cache write of this round: its memberships and users, the new ``cursor``."""
        added: set[tuple[str, str]] = set()
        removed: set[tuple[str, str]] = set()
        for person, was in self._was.items():
            direct = self._direct[person]
            added.update((group, person) for group in direct - was)
            removed.update((group, person) for group in was - direct)
        return DeltaCacheWrite(
            dict(cursor),
            self.head.mapped,
            self.head.full_read_at,
            replace=False,
            added_members=frozenset(added),
            removed_members=frozenset(removed),
            users=tuple(
                self.now[p] for p in sorted(self._was) if p in self.now and self.now[p] != self.before.get(p)
            ),
            removed_users=frozenset(p for p in self._was if p in self.before and p not in self.now),
        )

    # ------------------------------------------------------------------ everyone else a run plans

    def unknown(self, people: Iterable[str]) -> list[str]:
        """Of ``people``, those whose rows are not loaded yet."""
        return sorted(person for person in people if person not in self._direct)  # everyone named is in it

    def learn(self, rows: DeltaRows, people: Iterable[str]) -> None:
        """The rows of ``people`` the round did not name (unchanged by it: before and after alike)."""
        for person in people:
            if person in self._was:
                continue
            self._direct.setdefault(person, rows.groups_of.get(person, frozenset()))
            user = rows.users.get(person)
            if user is not None:
                self.before.setdefault(person, user)
                self.now.setdefault(person, user)

    def snapshot(
        self, people: Iterable[str], group_names: Mapping[str, str] | None = None
    ) -> DirectorySnapshot:
        """The mapped groups' users among ``people`` after the round (every mapped group, maybe empty)."""
        members: dict[str, list[DirectoryUser]] = {group: [] for group in sorted(self._mapped)}
        for person in sorted(people):
            user = self.now.get(person)
            if user is not None:
                for group in self._groups_after(person):
                    members[group].append(user)
        return DirectorySnapshot(members, group_names=dict(group_names or {}))
