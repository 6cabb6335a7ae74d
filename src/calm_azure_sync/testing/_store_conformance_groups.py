"""The user store conformance checks of synced groups, for stores that say ``mirrors_groups = True``.

A mixin of :class:`~calm_azure_sync.testing.store_conformance.UserStoreConformance`;
a store that does not mirror groups skips these checks. Nothing here does IO.
"""

from __future__ import annotations

import pytest

from ..core.plan import AddGroupMember, Change, RelinkUser, RemoveGroupMember, RetireGroup, UpsertGroup
from ..store.protocol import SyncedGroup
from ._store_conformance_base import (
    ELM_SITE,
    OTHER_SITE,
    OTHER_TRUST,
    SITE,
    TRUST,
    ConformantUserStore,
    GroupHelpers,
    _by_external_id,
    _create,
    _Hooks,
    _outcomes,
    _require_groups,
)

__all__ = ["GroupChecks"]


class GroupChecks(_Hooks):
    """``UpsertGroup``, memberships by external id, ``RetireGroup``, one mirror per trust, the group helpers."""

    @pytest.mark.asyncio
    async def test_upsert_group_creates_then_refreshes_the_synced_group(self, store: ConformantUserStore) -> None:
        _require_groups(store)
        create = UpsertGroup("g1", "Oak Teachers", (OTHER_SITE, SITE))
        assert _outcomes(await store.apply(TRUST, [create, create])) == ["applied", "unchanged"]
        state = await store.load(TRUST)
        assert state.groups == {"g1": SyncedGroup("g1", TRUST, "Oak Teachers", (OTHER_SITE, SITE))}
        assert state.group_members == {"g1": frozenset()}
        renamed = UpsertGroup("g1", "Oak Teaching Staff", (SITE,))
        assert _outcomes(await store.apply(TRUST, [renamed])) == ["applied"]
        assert (await store.load(TRUST)).groups["g1"] == SyncedGroup("g1", TRUST, "Oak Teaching Staff", (SITE,))

    @pytest.mark.asyncio
    async def test_members_are_added_and_removed_by_external_id(self, store: ConformantUserStore) -> None:
        _require_groups(store)
        batch: list[Change] = [
            UpsertGroup("g1", "Oak Teachers", (SITE,)),
            _create("e1"),
            _create("e2"),
            AddGroupMember("g1", "e1"),
            AddGroupMember("g1", "e2"),
        ]
        assert _outcomes(await store.apply(TRUST, batch)) == ["applied"] * 5
        assert (await store.load(TRUST)).group_members == {"g1": frozenset({"e1", "e2"})}
        assert _outcomes(await store.apply(TRUST, batch)) == ["unchanged"] * 5
        removals: list[Change] = [RemoveGroupMember("g1", "e1"), RemoveGroupMember("g1", "e1")]
        assert _outcomes(await store.apply(TRUST, removals)) == ["applied", "unchanged"]
        state = await store.load(TRUST)
        assert state.group_members == {"g1": frozenset({"e2"})}
        assert len(state.users) == 2  # leaving a group touches no user

    @pytest.mark.asyncio
    async def test_membership_changes_that_cannot_apply_fail_alone(self, store: ConformantUserStore) -> None:
        _require_groups(store)
        await self._apply_ok(store, [UpsertGroup("g1", "Oak Teachers"), _create("e1"), UpsertGroup("g2", "Old")])
        await self._apply_ok(store, [RetireGroup("g2")])
        results = await store.apply(
            TRUST,
            [
                AddGroupMember("g1", "nobody"),
                AddGroupMember("no-such-group", "e1"),
                AddGroupMember("g2", "e1"),
                RemoveGroupMember("no-such-group", "e1"),
                RetireGroup("no-such-group"),
                AddGroupMember("g1", "e1"),
                # No user carries the id, so it is no member: what the removal asks.
                RemoveGroupMember("g1", "nobody"),
            ],
        )
        assert _outcomes(results) == ["failed", "failed", "failed", "failed", "failed", "applied", "unchanged"]
        assert (await store.load(TRUST)).group_members == {"g1": frozenset({"e1"}), "g2": frozenset()}

    @pytest.mark.asyncio
    async def test_retire_keeps_the_group_and_clears_its_members(self, store: ConformantUserStore) -> None:
        _require_groups(store)
        await self._apply_ok(
            store,
            [UpsertGroup("g1", "Oak Teachers", (SITE,)), _create("e1"), _create("e2"), AddGroupMember("g1", "e1")],
        )
        await self._apply_ok(store, [AddGroupMember("g1", "e2")])
        assert _outcomes(await store.apply(TRUST, [RetireGroup("g1"), RetireGroup("g1")])) == ["applied", "unchanged"]
        state = await store.load(TRUST)
        assert state.groups == {"g1": SyncedGroup("g1", TRUST, "Oak Teachers", (SITE,), retired=True)}
        assert state.group_members == {"g1": frozenset()}
        assert len(state.users) == 2
        # Mapped again: the group comes back, with no members until they are added.
        assert _outcomes(await store.apply(TRUST, [UpsertGroup("g1", "Oak Teachers", (SITE,))])) == ["applied"]
        state = await store.load(TRUST)
        assert not state.groups["g1"].retired
        assert state.group_members == {"g1": frozenset()}

    @pytest.mark.asyncio
    async def test_each_trust_mirrors_its_own_groups(self, store: ConformantUserStore) -> None:
        _require_groups(store)
        await self._apply_ok(store, [_create("e1"), _create("e2")])
        await self._apply_ok(store, [UpsertGroup("g1", "All Staff", (SITE,)), AddGroupMember("g1", "e1")])
        await self._apply_ok(
            store, [UpsertGroup("g1", "All Staff", (ELM_SITE,)), AddGroupMember("g1", "e2")], trust=OTHER_TRUST
        )
        await self._apply_ok(store, [RetireGroup("g1")], trust=OTHER_TRUST)
        oak, elm = await store.load(TRUST), await store.load(OTHER_TRUST)
        assert oak.groups == {"g1": SyncedGroup("g1", TRUST, "All Staff", (SITE,))}
        assert oak.group_members == {"g1": frozenset({"e1"})}
        assert elm.groups == {"g1": SyncedGroup("g1", OTHER_TRUST, "All Staff", (ELM_SITE,), retired=True)}
        assert elm.group_members == {"g1": frozenset()}
        # A trust that never mirrored the group cannot touch it.
        results = await store.apply("trust-ash", [AddGroupMember("g1", "e2")])
        assert _outcomes(results) == ["failed"]

    @pytest.mark.asyncio
    async def test_memberships_follow_the_user_through_a_relink(self, store: ConformantUserStore) -> None:
        _require_groups(store)
        await self._apply_ok(store, [UpsertGroup("g1", "Oak Teachers"), _create("old"), AddGroupMember("g1", "old")])
        user = _by_external_id(await store.load(TRUST), "old")
        # A plan made before the relink adds the new id and removes the old one: both already so.
        results = await store.apply(
            TRUST,
            [
                RelinkUser("new", user.user_id, "old", user.email, user.display_name),
                AddGroupMember("g1", "new"),
                RemoveGroupMember("g1", "old"),
            ],
        )
        assert _outcomes(results) == ["applied", "unchanged", "unchanged"]
        assert (await store.load(TRUST)).group_members == {"g1": frozenset({"new"})}

    @pytest.mark.asyncio
    async def test_group_host_helpers(self, store: ConformantUserStore) -> None:
        _require_groups(store)
        if not isinstance(store, GroupHelpers):
            pytest.skip(f"{type(store).__name__} has no groups()/group_members() helpers")
        await self._apply_ok(store, [_create("e1"), _create("e2")])
        await self._apply_ok(
            store,
            [
                UpsertGroup("g2", "Birch Teachers", (SITE,)),
                UpsertGroup("g1", "Birch All Staff", (SITE, OTHER_SITE)),
                AddGroupMember("g1", "e1"),
                AddGroupMember("g1", "e2"),
                AddGroupMember("g2", "e1"),
            ],
        )
        await self._apply_ok(store, [UpsertGroup("g1", "All Staff"), AddGroupMember("g1", "e1")], trust=OTHER_TRUST)
        assert [group.external_id for group in await store.groups(TRUST)] == ["g1", "g2"]  # by display name
        assert await store.groups(OTHER_TRUST) == [SyncedGroup("g1", OTHER_TRUST, "All Staff")]
        assert await store.groups("trust-ash") == []
        assert await store.group_members("g1", TRUST) == frozenset({"e1", "e2"})
        assert await store.group_members("g1", OTHER_TRUST) == frozenset({"e1"})
        assert await store.group_members("g1") == frozenset({"e1", "e2"})
        assert await store.group_members("g2") == frozenset({"e1"})
        with pytest.raises(KeyError):
            await store.group_members("g2", OTHER_TRUST)
        with pytest.raises(KeyError):
            await store.group_members("no-such-group")
