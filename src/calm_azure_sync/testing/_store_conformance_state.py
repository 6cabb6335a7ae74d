"""The user store conformance checks of the sync state, for stores that are also ``SyncStateStore`` s.

A mixin of :class:`~calm_azure_sync.testing.store_conformance.UserStoreConformance`;
a store that is not a :class:`~calm_azure_sync.SyncStateStore` skips these
checks. Nothing here does IO.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from ..core.plan import Assign, DeactivateUser, Unassign, change_to_dict
from ..core.state import STATE_FORMAT_VERSION, Hold, SyncState, SyncStateStore
from ..errors import ConfigError
from ..model import Role
from ._store_conformance_base import OTHER_TRUST, SITE, TRUST, ConformantUserStore, _Hooks

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["SyncStateChecks"]


def _sample_state() -> SyncState:
    # Built from its JSON form, as a store reads it back.
    hold = Hold.from_dict(
        {
            "id": "hold-1",
            "trust_site_id": TRUST,
            "reason": "group_shrank",
            "changes": [
                change_to_dict(Unassign("e1", SITE, "risk", previous=Role.MANAGER)),
                change_to_dict(Assign("e2", SITE, "risk", Role.MEMBER, previous=Role.ADMIN, because=("g1",))),
                change_to_dict(DeactivateUser("e3", "user-3")),
            ],
            "created_at": "2026-11-30T07:00:00+00:00",
            "run_id": "run-1",
            "group_ids": ["g1"],
        }
    )
    return SyncState(
        hold=hold,
        baselines={"g1": 40, "g2": 0},
        left_scope={"e3": False, "e4": True},
        delta={"links": {"g1": "https://graph.example/delta?token=\u00e9"}},
    )


class SyncStateChecks(_Hooks):
    """The state round-trips whole, per trust, across handles; what cannot be stored or read is refused."""

    def _state_store(self, store: ConformantUserStore) -> SyncStateStore:
        if not isinstance(store, SyncStateStore):
            pytest.skip(f"{type(store).__name__} is not a SyncStateStore")
        return store

    @pytest.mark.asyncio
    async def test_sync_state_of_a_trust_never_saved_is_empty(self, store: ConformantUserStore) -> None:
        assert await self._state_store(store).load_state(TRUST) == SyncState()

    @pytest.mark.asyncio
    async def test_sync_state_round_trips(self, store: ConformantUserStore) -> None:
        states = self._state_store(store)
        state = _sample_state()
        await states.save_state(TRUST, state)
        assert await states.load_state(TRUST) == state

    @pytest.mark.asyncio
    async def test_save_state_replaces_the_whole_state(self, store: ConformantUserStore) -> None:
        states = self._state_store(store)
        await states.save_state(TRUST, _sample_state())
        second = SyncState(baselines={"g-other": 3})
        await states.save_state(TRUST, second)
        assert await states.load_state(TRUST) == second

    @pytest.mark.asyncio
    async def test_a_saved_state_is_a_copy(self, store: ConformantUserStore) -> None:
        states = self._state_store(store)
        delta: dict[str, object] = {"links": {"g1": "https://graph.example/delta?token=1"}}
        await states.save_state(TRUST, SyncState(delta=delta))
        delta["links"] = {}
        assert (await states.load_state(TRUST)).delta == {"links": {"g1": "https://graph.example/delta?token=1"}}

    @pytest.mark.asyncio
    async def test_a_state_that_cannot_be_stored_is_refused_and_the_old_one_kept(
        self, store: ConformantUserStore
    ) -> None:
        states = self._state_store(store)
        first = _sample_state()
        await states.save_state(TRUST, first)
        with pytest.raises(ConfigError):
            await states.save_state(TRUST, SyncState(delta={"cursor": object()}))
        with pytest.raises(ConfigError, match="version"):
            await states.save_state(TRUST, SyncState(version=STATE_FORMAT_VERSION + 1))
        assert await states.load_state(TRUST) == first

    @pytest.mark.asyncio
    async def test_sync_state_is_kept_per_trust(self, store: ConformantUserStore) -> None:
        states = self._state_store(store)
        await states.save_state(TRUST, _sample_state())
        assert await states.load_state(OTHER_TRUST) == SyncState()
        await states.save_state(OTHER_TRUST, SyncState(left_scope={"e9": False}))
        assert await states.load_state(TRUST) == _sample_state()
        assert (await states.load_state(OTHER_TRUST)).left_scope == {"e9": False}

    @pytest.mark.asyncio
    async def test_sync_state_is_seen_by_another_handle(self, store: ConformantUserStore, tmp_path: Path) -> None:
        await self._state_store(store).save_state(TRUST, _sample_state())
        other = await self.open_again(store, tmp_path)
        try:
            assert await self._state_store(other).load_state(TRUST) == _sample_state()
        finally:
            if other is not store:
                await self.close_store(other)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("{not json", "JSON"),
            (json.dumps({**SyncState().to_dict(), "version": STATE_FORMAT_VERSION + 1}), "version"),
            ('{"version": 1, "baselines": {"g1": -4}}', "baselines"),
            ('{"version": 1, "hold": {"id": "h1"}}', "hold|trust_site_id|reason"),
            ("[]", "object"),
        ],
        ids=["not-json", "future-version", "bad-baseline", "bad-hold", "not-an-object"],
    )
    async def test_a_stored_state_that_cannot_be_read_is_refused_not_reset(
        self, store: ConformantUserStore, text: str, says: str
    ) -> None:
        states = self._state_store(store)
        await states.save_state(TRUST, _sample_state())
        await self.write_raw_state(store, TRUST, text)
        with pytest.raises(ConfigError, match=says):
            await states.load_state(TRUST)
        with pytest.raises(ConfigError):  # every time, not just once
            await states.load_state(TRUST)
        assert await states.load_state(OTHER_TRUST) == SyncState()
