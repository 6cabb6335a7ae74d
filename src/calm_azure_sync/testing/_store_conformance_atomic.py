"""The user store conformance checks of the optional crash-safety protocols: ``StateWithChanges`` and ``FencedStore``.

A mixin of :class:`~calm_azure_sync.testing.store_conformance.UserStoreConformance`;
a store that does not implement a protocol skips its checks. What they check
is what the reconciler relies on: a batch and the sync state it leaves are
committed together or not at all, and ``check_run_lock`` answers at once
while the lock is held and outside a ``run_lock`` block. Losing a lock is
store-specific (a dead connection, a lease taken over), so the shipped stores'
own tests cover that half (``tests/test_run_lock_fencing.py``,
``tests/test_postgres_restart.py``). Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ..core.plan import Assign, Change
from ..core.state import SyncState, SyncStateStore
from ..errors import ConfigError
from ..model import Role
from ..store.protocol import ChangeResult, FencedStore, StateWithChanges
from ._store_conformance_base import SITE, TRUST, ConformantUserStore, _by_external_id, _create, _Hooks

__all__ = ["AtomicStateChecks"]


class AtomicStateChecks(_Hooks):
    """A batch and its sync state land together or not at all; the run lock's check answers while it is held."""

    def _atomic(self, store: ConformantUserStore) -> tuple[StateWithChanges, SyncStateStore]:
        if not isinstance(store, StateWithChanges):
            pytest.skip(f"{type(store).__name__} is not a StateWithChanges store")
        if not isinstance(store, SyncStateStore):
            pytest.skip(f"{type(store).__name__} keeps no sync state")
        return store, store

    @pytest.mark.asyncio
    async def test_apply_with_state_applies_the_batch_and_saves_the_state_of_its_results(
        self, store: ConformantUserStore
    ) -> None:
        atomic, states = self._atomic(store)
        changes: list[Change] = [_create("e1"), Assign("e1", SITE, "risk", Role.MEMBER, because=("g1",))]
        seen: list[Sequence[ChangeResult]] = []

        def state_after(results: Sequence[ChangeResult]) -> SyncState:
            seen.append(results)
            return SyncState(baselines={"g1": sum(result.ok for result in results)})

        results = await atomic.apply_with_state(TRUST, changes, state_after)
        assert [result.change for result in results] == changes
        assert all(result.ok for result in results)
        assert len(seen) == 1  # called once, with the batch's own results
        assert [result.change for result in seen[0]] == changes
        assert await states.load_state(TRUST) == SyncState(baselines={"g1": 2})
        loaded = await store.load(TRUST)
        assert _by_external_id(loaded, "e1").active
        assert loaded.synced_access.get("e1") == {(SITE, "risk"): Role.MEMBER}

    @pytest.mark.asyncio
    async def test_apply_with_state_commits_nothing_when_the_state_cannot_be_made(
        self, store: ConformantUserStore
    ) -> None:
        atomic, states = self._atomic(store)
        before = SyncState(baselines={"g1": 7})
        await states.save_state(TRUST, before)

        def state_after(results: Sequence[ChangeResult]) -> SyncState:
            raise RuntimeError("the run's memory could not be worked out")

        with pytest.raises(RuntimeError, match="memory"):
            await atomic.apply_with_state(TRUST, [_create("e1")], state_after)
        assert not [user for user in (await store.load(TRUST)).users.values() if user.external_id == "e1"]
        assert await states.load_state(TRUST) == before

    @pytest.mark.asyncio
    async def test_apply_with_state_commits_nothing_when_the_state_cannot_be_stored(
        self, store: ConformantUserStore
    ) -> None:
        atomic, states = self._atomic(store)
        before = SyncState(baselines={"g1": 7})
        await states.save_state(TRUST, before)
        with pytest.raises(ConfigError):
            await atomic.apply_with_state(TRUST, [_create("e1")], lambda results: SyncState(delta={"x": object()}))
        assert not [user for user in (await store.load(TRUST)).users.values() if user.external_id == "e1"]
        assert await states.load_state(TRUST) == before

    @pytest.mark.asyncio
    async def test_check_run_lock_answers_at_once_while_the_lock_is_held_and_outside_it(
        self, store: ConformantUserStore
    ) -> None:
        if not isinstance(store, FencedStore):
            pytest.skip(f"{type(store).__name__} is not a FencedStore")
        await store.check_run_lock(TRUST)  # outside a run_lock block: at once
        async with store.run_lock(TRUST):
            await store.check_run_lock(TRUST)
            await self._apply_ok(store, [_create("e1")])  # writes under a held lock go through
        await store.check_run_lock(TRUST)
