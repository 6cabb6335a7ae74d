"""The user store conformance checks of some people's rows, for stores that are also ``PeopleStore`` s.

A mixin of :class:`~calm_azure_sync.testing.store_conformance.UserStoreConformance`;
a store that is not a :class:`~calm_azure_sync.PeopleStore` skips these
checks. ``load_people`` must answer exactly what the whole load narrowed to
those people answers (:func:`~calm_azure_sync.store.protocol.people_rows`),
for any mix of object ids and email keys, known or not. Nothing here does IO.
"""

from __future__ import annotations

import pytest

from ..core.plan import AddGroupMember, Assign, Change, UpsertGroup
from ..model import Role, email_key
from ..store.protocol import PeopleStore, VersionedStore, people_rows
from ._store_conformance_base import (
    OTHER_SITE,
    OTHER_TRUST,
    SITE,
    TRUST,
    ConformantUserStore,
    _create,
    _Hooks,
)

__all__ = ["PeopleChecks"]


class PeopleChecks(_Hooks):
    """``load_people`` is the whole load narrowed to those people, in one read."""

    def _people(self, store: ConformantUserStore) -> PeopleStore:
        if not isinstance(store, PeopleStore):
            pytest.skip(f"{type(store).__name__} is not a PeopleStore")
        return store

    async def _a_trust(self, store: ConformantUserStore) -> None:
        """Synced users with grants here and in another trust, a manual grant, a hand-invited user, memberships."""
        changes: list[Change] = [
            _create("e1", "Ana@Oak.example"),
            Assign("e1", SITE, "risk", Role.MANAGER),
            Assign("e1", OTHER_SITE, "policies", Role.MEMBER),
            _create("e2"),
            Assign("e2", SITE, "risk", Role.MEMBER),
            _create("e3"),
            _create("e4"),
            Assign("e4", SITE, "risk", Role.ADMIN),
        ]
        if getattr(store, "mirrors_groups", False) is True:
            changes += [UpsertGroup("g1", "Oak Teachers", (SITE,)), AddGroupMember("g1", "e1"), AddGroupMember("g1", "e3")]
        await self._apply_ok(store, changes)
        await self._apply_ok(store, [Assign("e3", SITE, "risk", Role.MEMBER)], OTHER_TRUST)
        invited = await store.add_user("Visitor@oak.example", "Visitor")
        await store.grant(invited, SITE, "policies", Role.MEMBER)
        state = await store.load(TRUST)
        e2 = next(user for user in state.users.values() if user.external_id == "e2")
        await store.grant(e2.user_id, SITE, "policies", Role.ADMIN)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("external_ids", "email_keys"),
        [
            ((), ()),
            (("e1",), ()),
            (("e2", "e3", "nobody"), ()),
            ((), (email_key("ANA@oak.example"), email_key("visitor@OAK.example"))),
            (("e4",), (email_key("e1@oak.example"), "nobody@oak.example")),
            (("e1", "e2", "e3", "e4"), (email_key("visitor@oak.example"),)),
        ],
    )
    async def test_load_people_is_the_whole_load_narrowed(
        self, store: ConformantUserStore, external_ids: tuple[str, ...], email_keys: tuple[str, ...]
    ) -> None:
        people = self._people(store)
        await self._a_trust(store)
        expected = people_rows(await store.load(TRUST), external_ids, email_keys)
        assert await people.load_people(TRUST, external_ids, email_keys) == expected
        assert expected.synced_users == 3  # e1, e2, e4: e3's grant is another trust's, the visitor's manual

    @pytest.mark.asyncio
    async def test_an_apply_that_writes_moves_the_data_version_by_exactly_one(self, store: ConformantUserStore) -> None:
        # Planning by difference counts the batches a run wrote: another move means another writer.
        people = self._people(store)
        if not isinstance(people, VersionedStore):
            pytest.skip(f"{type(store).__name__} is not a VersionedStore")
        before = await people.data_version()
        await self._apply_ok(store, [_create("e1"), Assign("e1", SITE, "risk", Role.MEMBER)])
        assert await people.data_version() == before + 1
        await self._apply_ok(store, [Assign("e1", SITE, "risk", Role.ADMIN)])
        assert await people.data_version() == before + 2
