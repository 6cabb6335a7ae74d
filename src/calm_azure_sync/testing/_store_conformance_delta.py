"""The user store conformance checks of the delta cache, for stores that are also ``DeltaCacheStore`` s.

A mixin of :class:`~calm_azure_sync.testing.store_conformance.UserStoreConformance`;
a store that is not a :class:`~calm_azure_sync.DeltaCacheStore` skips these
checks. The checks write caches as the reconciler does (:func:`cache_write`
from the last one loaded) and expect to load exactly what was written,
per trust and across handles. Nothing here does IO.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import TYPE_CHECKING

import pytest

from ..incremental import DeltaCache, DeltaCacheStore, DeltaCacheWrite, DeltaRowsStore, cache_write
from ..incremental.partial import rows_of
from ..model import DirectoryUser
from ._store_conformance_base import OTHER_TRUST, TRUST, ConformantUserStore, _Hooks

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["DeltaCacheChecks", "sample_cache"]

_AT = dt.datetime(2026, 12, 1, 7, 30, tzinfo=dt.UTC)


def _user(index: int, *, generation: int = 0) -> DirectoryUser:
    # Every field set (and some unset), unicode included: a store keeps each as it was.
    return DirectoryUser(
        f"user-{index}",
        display_name=f"Zoë O'Brien {index}.{generation}" if index % 3 else None,
        mail=f"u{index}.{generation}@oak.sch.uk" if index % 4 else None,
        user_principal_name=f"u{index}@oak.sch.uk",
        given_name="Zoë" if index % 2 else None,
        surname=f"O'Brien-{generation}",
        account_enabled=index % 5 != 0,
        user_type="Guest" if index % 7 == 0 else "Member",
        assigned_license_count=None if index % 6 == 0 else index % 3,
        on_premises_sync_enabled=None if index % 2 else bool(index % 4),
        creation_type="Invitation" if index % 7 == 0 else None,
    )


def sample_cache(seed: int = 0, *, users: int = 30, groups: int = 6) -> DeltaCache:
    """A cache of ``groups`` tracked groups (one nested, one empty) over ``users`` users, varied by ``seed``."""
    rng = random.Random(seed)
    group_ids = [f"group-{i}" for i in range(groups)]
    members: dict[str, frozenset[str]] = {}
    for position, group_id in enumerate(group_ids):
        if position == groups - 1:
            members[group_id] = frozenset()  # tracked, no members (yet)
            continue
        chosen = {f"user-{i}" for i in range(users) if rng.random() < 0.3}
        if position == 0 and groups > 1:
            chosen.add(group_ids[1])  # a nested group
        members[group_id] = frozenset(chosen)
    reached = {m for ids in members.values() for m in ids if m.startswith("user-")}
    cached = {}
    for user_id in sorted(reached):
        index = int(user_id.split("-")[1])
        cached[user_id] = _user(index, generation=rng.randrange(3))
    cursor = {"version": 1, "kind": "test", "users": f"https://graph.example/users/delta?token=é{seed}",
              "groups": [{"ids": group_ids[:3], "link": "https://graph.example/groups/delta?$deltatoken=x%27y"}]}
    return DeltaCache(cursor, members, cached, frozenset(group_ids[:2]), _AT + dt.timedelta(hours=seed))


class DeltaCacheChecks(_Hooks):
    """A written cache loads back exactly, written whole or as a difference; per trust; across handles."""

    def _delta_store(self, store: ConformantUserStore) -> DeltaCacheStore:
        if not isinstance(store, DeltaCacheStore):
            pytest.skip(f"{type(store).__name__} is not a DeltaCacheStore")
        return store

    @pytest.mark.asyncio
    async def test_delta_cache_of_a_trust_never_saved_is_none(self, store: ConformantUserStore) -> None:
        assert await self._delta_store(store).load_delta(TRUST) is None

    @pytest.mark.asyncio
    async def test_delta_cache_written_whole_loads_back_exactly(self, store: ConformantUserStore) -> None:
        caches = self._delta_store(store)
        cache = sample_cache(1)
        await caches.save_delta(TRUST, cache_write(None, cache))
        assert await caches.load_delta(TRUST) == cache

    @pytest.mark.asyncio
    async def test_delta_cache_written_as_differences_loads_what_each_run_kept(
        self, store: ConformantUserStore
    ) -> None:
        caches = self._delta_store(store)
        previous = None
        for seed in range(2, 9):  # joins, leaves, changed users, groups started and dropped
            cache = sample_cache(seed, users=25 + seed, groups=4 + seed % 3)
            await caches.save_delta(TRUST, cache_write(previous, cache))
            loaded = await caches.load_delta(TRUST)
            assert loaded == cache, f"after write {seed}"
            previous = loaded

    @pytest.mark.asyncio
    async def test_a_no_change_write_touches_no_rows_and_keeps_the_new_cursor(
        self, store: ConformantUserStore
    ) -> None:
        caches = self._delta_store(store)
        cache = sample_cache(3)
        await caches.save_delta(TRUST, cache_write(None, cache))
        moved = DeltaCache({"version": 1, "next": "token-2"}, cache.groups, cache.users, cache.mapped, cache.full_read_at)
        write = cache_write(cache, moved)
        assert write.rows == 0
        await caches.save_delta(TRUST, write)
        assert await caches.load_delta(TRUST) == moved

    @pytest.mark.asyncio
    async def test_any_write_loads_back_as_applied_to_says(self, store: ConformantUserStore) -> None:
        # DeltaCacheWrite.applied_to is the reference: a membership tracks its group even when the
        # write does not list the group among its new ones (cache_write always does; a host may not).
        caches = self._delta_store(store)
        cursor = {"version": 1, "users": "link"}
        first = DeltaCacheWrite(cursor, frozenset({"g-a"}), _AT, replace=True,
                                added_members=frozenset({("g-a", "user-1")}), users=(_user(1),))
        await caches.save_delta(TRUST, first)
        assert await caches.load_delta(TRUST) == first.applied_to(None)
        second = DeltaCacheWrite(cursor, frozenset({"g-a"}), _AT, replace=False,
                                 added_members=frozenset({("g-b", "user-2")}), users=(_user(2),))
        await caches.save_delta(TRUST, second)
        assert await caches.load_delta(TRUST) == second.applied_to(first.applied_to(None))

    @pytest.mark.asyncio
    async def test_a_whole_write_replaces_what_was_stored(self, store: ConformantUserStore) -> None:
        caches = self._delta_store(store)
        await caches.save_delta(TRUST, cache_write(None, sample_cache(4, users=40, groups=8)))
        smaller = sample_cache(5, users=10, groups=3)
        await caches.save_delta(TRUST, cache_write(None, smaller))
        assert await caches.load_delta(TRUST) == smaller

    @pytest.mark.asyncio
    async def test_delta_caches_are_per_trust_and_clear_drops_one(self, store: ConformantUserStore) -> None:
        caches = self._delta_store(store)
        oak, elm = sample_cache(6), sample_cache(7)
        await caches.save_delta(TRUST, cache_write(None, oak))
        await caches.save_delta(OTHER_TRUST, cache_write(None, elm))
        assert await caches.load_delta(TRUST) == oak
        assert await caches.load_delta(OTHER_TRUST) == elm
        await caches.clear_delta(TRUST)
        await caches.clear_delta(TRUST)  # clearing twice is fine
        assert await caches.load_delta(TRUST) is None
        assert await caches.load_delta(OTHER_TRUST) == elm

    @pytest.mark.asyncio
    async def test_delta_cache_is_seen_by_another_handle(self, store: ConformantUserStore, tmp_path: Path) -> None:
        caches = self._delta_store(store)
        first, second = sample_cache(8), sample_cache(9)
        await caches.save_delta(TRUST, cache_write(None, first))
        await caches.save_delta(TRUST, cache_write(first, second))
        other = await self.open_again(store, tmp_path)
        try:
            assert await self._delta_store(other).load_delta(TRUST) == second
        finally:
            if other is not store:
                await self.close_store(other)

    @pytest.mark.asyncio
    async def test_some_rows_of_a_cache_are_what_the_whole_cache_says_of_those_ids(
        self, store: ConformantUserStore
    ) -> None:
        # DeltaRowsStore (optional): a member's direct groups and cached user, and the cache's user count.
        caches = self._delta_store(store)
        if not isinstance(caches, DeltaRowsStore):
            pytest.skip(f"{type(store).__name__} is not a DeltaRowsStore")
        assert await caches.load_delta_rows(TRUST, ["user-1"]) == rows_of({}, {}, ())  # no cache yet
        cache, other = sample_cache(10, users=40, groups=7), sample_cache(11)
        await caches.save_delta(TRUST, cache_write(None, cache))
        await caches.save_delta(OTHER_TRUST, cache_write(None, other))
        users = sorted(cache.users)
        for ids in (
            users[:3], ["group-1", users[-1]], [*cache.groups], ["user-999", "group-99"], [], users,
            [f"user-{i}" for i in range(45)],  # some cached, some in no group
        ):
            rows = await caches.load_delta_rows(TRUST, ids)
            assert rows == rows_of(cache.groups, cache.users, ids), ids
            assert rows.user_count == len(cache.users)
