"""The user store conformance checks of tenant-qualified identity (API §13).

A mixin of :class:`~calm_azure_sync.testing.store_conformance.UserStoreConformance`.
A synced user's identity is (tenant, object id): ``CreateUser``, ``LinkUser``
and ``RelinkUser`` give the stored user the change's ``tenant_id``;
``UpdateUser`` gives it its own when it names one, and a ``None`` there means
"the planner does not know", so the stored tenant stays. A change that
differs from the stored row only in its tenant is written (``applied``);
``load`` returns the tenant, on another handle too. Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pytest

from ..core.plan import Assign, Change, CreateUser, LinkUser, RelinkUser, UpdateUser
from ..model import Role
from ..store.protocol import StoredUser
from ._store_conformance_base import (
    SITE,
    TRUST,
    ConformantUserStore,
    _by_external_id,
    _create,
    _Hooks,
    _outcomes,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["TenantChecks"]

TENANT_A = "0a0a0a0a-1111-4111-8111-aaaaaaaaaaaa"
TENANT_B = "0b0b0b0b-2222-4222-8222-bbbbbbbbbbbb"


def _tenants(users: Iterable[StoredUser]) -> dict[str | None, str | None]:
    """External id -> tenant of every user ``load`` returned."""
    return {user.external_id: user.tenant_id for user in users}


def _update(change: CreateUser, user_id: str, tenant_id: str | None, **names: str) -> UpdateUser:
    """An UpdateUser carrying ``change``'s values (``names`` replacing some) and ``tenant_id``."""
    values = {"email": change.email, "display_name": change.display_name, **names}
    return UpdateUser(
        change.external_id,
        user_id,
        values["email"],
        values["display_name"],
        change.given_name,
        change.surname,
        tenant_id=tenant_id,
    )


class TenantChecks(_Hooks):
    """Every store keeps the tenant of a synced user, and returns it from ``load``."""

    @pytest.mark.asyncio
    async def test_create_link_and_relink_store_the_tenant_and_load_returns_it(
        self, store: ConformantUserStore, tmp_path: Path
    ) -> None:
        invited = await store.add_user("bob@oak.example", "Bob")
        batch: list[Change] = [
            CreateUser("e1", "ann@oak.example", "Ann", tenant_id=TENANT_A),
            CreateUser("e2", "cy@oak.example", "Cy"),  # a one-tenant trust that records none
            LinkUser("e3", invited, "bob@oak.example", "Bob", tenant_id=TENANT_B),
            CreateUser("old", "zoe@oak.example", "Zoe", tenant_id=TENANT_A),
        ]
        assert _outcomes(await store.apply(TRUST, batch)) == ["applied"] * 4
        assert _outcomes(await store.apply(TRUST, batch)) == ["unchanged"] * 4  # a replay changes nothing
        zoe = _by_external_id(await store.load(TRUST), "old")
        # Zoe's account re-created in the other tenant: the relink takes that tenant.
        relink = RelinkUser("new", zoe.user_id, "old", "zoe@oak.example", "Zoe", tenant_id=TENANT_B)
        assert _outcomes(await store.apply(TRUST, [relink])) == ["applied"]
        expected = {"e1": TENANT_A, "e2": None, "e3": TENANT_B, "new": TENANT_B}
        state = await store.load(TRUST)
        assert _tenants(state.users.values()) == expected
        assert state.users[invited].tenant_id == TENANT_B
        other = await self.open_again(store, tmp_path)
        try:  # kept, not only cached by this handle
            assert _tenants((await other.load(TRUST)).users.values()) == expected
        finally:
            if other is not store:
                await self.close_store(other)

    @pytest.mark.asyncio
    async def test_update_with_a_tenant_qualifies_the_user_and_one_without_keeps_it(
        self, store: ConformantUserStore
    ) -> None:
        create = _create("e1", "dee@oak.example", "Dee")
        await self._apply_ok(store, [create, Assign("e1", SITE, "risk", Role.MEMBER)])
        dee = _by_external_id(await store.load(TRUST), "e1")
        assert dee.tenant_id is None  # synced before tenants were recorded
        results = await store.apply(TRUST, [_update(create, dee.user_id, TENANT_A)])
        assert _outcomes(results) == ["applied"]
        assert _by_external_id(await store.load(TRUST), "e1").tenant_id == TENANT_A
        # None: the planner does not know the tenant, which is no reason to forget it.
        unknown = [_update(create, dee.user_id, None), _update(create, dee.user_id, None, display_name="Dee Moss")]
        assert _outcomes(await store.apply(TRUST, unknown)) == ["unchanged", "applied"]
        after = _by_external_id(await store.load(TRUST), "e1")
        assert (after.display_name, after.tenant_id, after.user_id) == ("Dee Moss", TENANT_A, dee.user_id)
        moved = _update(create, dee.user_id, TENANT_B, display_name="Dee Moss")
        assert _outcomes(await store.apply(TRUST, [moved, moved])) == ["applied", "unchanged"]
        state = await store.load(TRUST)
        assert _by_external_id(state, "e1").tenant_id == TENANT_B
        assert state.synced_access == {"e1": {(SITE, "risk"): Role.MEMBER}}  # its access stays
        assert len(state.users) == 1

    @pytest.mark.asyncio
    async def test_a_change_differing_only_in_its_tenant_is_applied(self, store: ConformantUserStore) -> None:
        invited = await store.add_user("eve@oak.example", "Eve")
        link = LinkUser("e1", invited, "eve@oak.example", "Eve")
        await self._apply_ok(store, [link, CreateUser("old", "fay@oak.example", "Fay")])
        fay = _by_external_id(await store.load(TRUST), "old")
        relink = RelinkUser("new", fay.user_id, "old", "fay@oak.example", "Fay")
        await self._apply_ok(store, [relink])
        # The same link and relink again, now naming the tenant: the values are
        # equal but the identity is not, so the rows are written.
        qualified: list[Change] = [
            LinkUser("e1", invited, "eve@oak.example", "Eve", tenant_id=TENANT_A),
            RelinkUser("new", fay.user_id, "old", "fay@oak.example", "Fay", tenant_id=TENANT_A),
        ]
        assert _outcomes(await store.apply(TRUST, qualified)) == ["applied", "applied"]
        assert _outcomes(await store.apply(TRUST, qualified)) == ["unchanged", "unchanged"]
        state = await store.load(TRUST)
        assert _tenants(state.users.values()) == {"e1": TENANT_A, "new": TENANT_A}

    @pytest.mark.asyncio
    async def test_a_tenant_id_no_store_can_keep_fails_alone(self, store: ConformantUserStore) -> None:
        # Identifiers are never rewritten: a lone surrogate costs its own change.
        await self._apply_ok(store, [_create("e1", "gus@oak.example")])
        gus = _by_external_id(await store.load(TRUST), "e1")
        before = await store.load(TRUST)
        odd = "tenant\ud83d"
        results = await store.apply(
            TRUST,
            [
                CreateUser("e2", "hal@oak.example", "Hal", tenant_id=odd),
                UpdateUser("e1", gus.user_id, gus.email, "Gus Renamed", tenant_id=odd),
            ],
        )
        assert _outcomes(results) == ["failed", "failed"]
        assert all("lone surrogate" in (result.error or "") for result in results)
        assert await store.load(TRUST) == before
