"""The user store conformance checks of the data version, for stores that are also ``VersionedStore`` s.

A mixin of :class:`~calm_azure_sync.testing.store_conformance.UserStoreConformance`;
a store that is not a :class:`~calm_azure_sync.VersionedStore` skips these
checks. Every write of users, grants or groups changes the version, through
any handle; reads and writes of the sync state and the delta cache do not
(else no run could ever be settled). Nothing here does IO.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ..core.state import SyncState, SyncStateStore
from ..incremental import DeltaCacheStore, cache_write
from ..model import Role
from ..store.protocol import VersionedStore
from ._store_conformance_base import SITE, TRUST, ConformantUserStore, _create, _Hooks
from ._store_conformance_delta import sample_cache

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["DataVersionChecks"]


class DataVersionChecks(_Hooks):
    """``data_version()`` moves with every write of user data and with nothing else."""

    def _versioned(self, store: ConformantUserStore) -> VersionedStore:
        if not isinstance(store, VersionedStore):
            pytest.skip(f"{type(store).__name__} is not a VersionedStore")
        return store

    @pytest.mark.asyncio
    async def test_every_write_of_user_data_changes_the_data_version(self, store: ConformantUserStore) -> None:
        versions = self._versioned(store)
        seen = [await versions.data_version()]

        async def changed() -> None:
            now = await versions.data_version()
            assert now not in seen, f"the data version stayed {now} after a write"
            seen.append(now)

        await self._apply_ok(store, [_create("e1")])
        await changed()
        user_id = await store.add_user("visitor@oak.sch.uk", "Visitor")
        await changed()
        await store.grant(user_id, SITE, "risk", Role.MEMBER)
        await changed()
        set_active = getattr(store, "set_active", None)  # a host helper the shipped stores have
        if set_active is not None:
            await set_active(user_id, False)
            await changed()

    @pytest.mark.asyncio
    async def test_reads_and_the_sync_memory_leave_the_data_version_alone(self, store: ConformantUserStore) -> None:
        versions = self._versioned(store)
        await self._apply_ok(store, [_create("e1")])
        before = await versions.data_version()
        await store.load(TRUST)
        await store.apply(TRUST, [])
        if isinstance(store, SyncStateStore):
            await store.save_state(TRUST, SyncState(baselines={"g1": 3}))
            await store.load_state(TRUST)
        if isinstance(store, DeltaCacheStore):
            await store.save_delta(TRUST, cache_write(None, sample_cache(1)))
            await store.load_delta(TRUST)
            await store.clear_delta(TRUST)
        assert await versions.data_version() == before

    @pytest.mark.asyncio
    async def test_the_data_version_is_seen_by_another_handle(self, store: ConformantUserStore, tmp_path: Path) -> None:
        self._versioned(store)
        other = await self.open_again(store, tmp_path)
        try:
            before = await self._versioned(other).data_version()
            await self._apply_ok(store, [_create("e1")])
            assert await self._versioned(other).data_version() != before
        finally:
            if other is not store:
                await self.close_store(other)
