"""The user store conformance suite: point it at any UserStore to check it behaves as the sync needs.

Subclass :class:`UserStoreConformance` in a test module, say how to build a
fresh, empty store, and pytest runs every check against it::

    from calm_azure_sync.testing.store_conformance import UserStoreConformance

    class TestMyStore(UserStoreConformance):
        async def make_store(self, tmp_path):
            return MyStore(await fresh_test_database(tmp_path))

The suite needs pytest and pytest-asyncio (it marks its tests itself, so
pytest-asyncio's strict mode works too). Besides the
:class:`~calm_azure_sync.UserStore` protocol, the store under test must offer
the host helpers described in :class:`ConformantUserStore` (``add_user``,
``grant``, ``grants``): the suite needs them to set up manually invited users
and manual grants. When the store needs closing, override
:meth:`UserStoreConformance.close_store` (by default it calls the store's
``close()`` or ``aclose()`` if it has one). When the store can be opened a
second time on the same data (another connection, as a second process would
have), override :meth:`UserStoreConformance.open_again` so the concurrency
checks run across two handles; by default they share the one store.

What the suite pins, beyond the protocol docstring:

- a change that cannot apply fails alone, with an ``error``, and writes nothing;
- emails are unique regardless of case (``lower()``, not ``casefold()``);
- re-applying a batch that already applied succeeds and changes nothing,
  every outcome ``unchanged`` (a ``CreateUser`` for an external id the store
  holds leaves that user as it is; an ``Unassign`` of a grant already gone
  succeeds);
- synced groups (for a store with ``mirrors_groups = True``, the class
  attribute that tells the reconciler it keeps them): ``UpsertGroup`` creates or refreshes (and un-retires) the
  trust's group, memberships name users by external id, ``RetireGroup``
  keeps the group and clears its members; each trust mirrors its own groups;
  ``load`` returns them with member external ids; outcomes as above;
- text UTF-8 cannot encode (a lone surrogate in a name) costs at most its
  own change (the shipped stores keep it with U+FFFD);
- outcomes tell what happened: ``applied`` only when something was written;
  a deactivation refused because any grant remains, an ``Assign`` already in
  place, an ``UpdateUser`` with nothing to change are ``unchanged``; two
  handles creating one external id at once give exactly one ``applied``;
- ``UpdateUser`` and ``DeactivateUser`` whose ``user_id`` does not hold the
  external id fail (a stale plan never writes to the wrong user);
- a synced user's tenant (API §13): ``CreateUser``, ``LinkUser`` and
  ``RelinkUser`` store the change's ``tenant_id``, ``UpdateUser`` its own
  unless that is ``None`` (which keeps the stored one); a change differing
  only in its tenant is ``applied``; ``load`` returns ``StoredUser.tenant_id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from ..core.plan import Assign, Change, CreateUser, DeactivateUser, LinkUser, RelinkUser, Unassign, UpdateUser
from ..errors import ImportAlreadyRunningError
from ..model import Role
from ..store.protocol import Grant, StoreState
from ._closing import close_if_closable
from ._store_conformance_atomic import AtomicStateChecks
from ._store_conformance_base import (
    ELM_SITE,
    OTHER_SITE,
    OTHER_TRUST,
    SITE,
    TRUST,
    ConformantUserStore,
    GroupHelpers,
    _assert_all_ok,
    _by_external_id,
    _create,
    _evolve,
    _outcomes,
)
from ._store_conformance_delta import DeltaCacheChecks
from ._store_conformance_groups import GroupChecks
from ._store_conformance_people import PeopleChecks
from ._store_conformance_state import SyncStateChecks
from ._store_conformance_tenants import TenantChecks
from ._store_conformance_version import DataVersionChecks

__all__ = ["ConformantUserStore", "GroupHelpers", "UserStoreConformance"]

class UserStoreConformance(
    GroupChecks, SyncStateChecks, DeltaCacheChecks, DataVersionChecks, AtomicStateChecks, TenantChecks, PeopleChecks
):
    """The behavioural checks every :class:`~calm_azure_sync.UserStore` must pass.

    Subclass it as ``TestSomething`` and implement :meth:`make_store`.
    """

    async def make_store(self, tmp_path: Path) -> ConformantUserStore:
        """Return a new, empty store. ``tmp_path`` is a fresh directory, for stores that keep files."""
        raise NotImplementedError("subclasses of UserStoreConformance implement make_store()")

    async def close_store(self, store: ConformantUserStore) -> None:
        """Release the store after a test: calls its ``close()`` or ``aclose()`` when it has one."""
        await close_if_closable(store)

    async def write_raw_state(self, store: ConformantUserStore, trust_site_id: str, text: str) -> None:
        """Store ``text`` as the trust's saved sync state, bypassing ``save_state``.

        The suite uses it to check that ``load_state`` refuses what it cannot
        read. By default the checks that need it are skipped; a store that
        keeps the state as text (a column, a file) overrides it.
        """
        pytest.skip(f"{type(self).__name__} does not override write_raw_state()")

    async def open_again(self, store: ConformantUserStore, tmp_path: Path) -> ConformantUserStore:
        """Another handle on ``store``'s data, as another process would open it (default: ``store``).

        The suite closes a handle it gets here (with :meth:`close_store`)
        unless it is ``store`` itself.
        """
        return store

    @pytest_asyncio.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[ConformantUserStore]:
        """A fresh store, closed after the test."""
        made = await self.make_store(tmp_path)
        try:
            yield made
        finally:
            await self.close_store(made)

    async def _apply_ok(
        self, store: ConformantUserStore, changes: Sequence[Change], trust: str = TRUST
    ) -> None:
        _assert_all_ok(await store.apply(trust, changes))

    # -- create -----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_create_user_makes_an_active_user_with_its_external_id(
        self, store: ConformantUserStore
    ) -> None:
        await self._apply_ok(store, [CreateUser("e1", "Ann.Lee@oak.example", "Ann Lee", "Ann", "Lee")])
        user = _by_external_id(await store.load(TRUST), "e1")
        assert (user.email, user.display_name, user.given_name, user.surname, user.active) == (
            "Ann.Lee@oak.example",
            "Ann Lee",
            "Ann",
            "Lee",
            True,
        )

    @pytest.mark.asyncio
    async def test_create_with_an_email_taken_in_another_case_fails_and_writes_nothing(
        self, store: ConformantUserStore
    ) -> None:
        await store.add_user("Ann.Lee@Oak.Example", "Ann (invited)")
        results = await store.apply(TRUST, [CreateUser("e1", "ann.lee@oak.EXAMPLE", "Ann Lee")])
        assert not results[0].ok
        assert "email" in (results[0].error or "")
        state = await store.load(TRUST)
        assert len(state.users) == 1
        assert all(user.external_id is None for user in state.users.values())

    @pytest.mark.asyncio
    async def test_two_creates_with_one_email_in_a_batch_the_second_fails(
        self, store: ConformantUserStore
    ) -> None:
        results = await store.apply(
            TRUST, [_create("e1", "same@oak.example"), _create("e2", "SAME@oak.example")]
        )
        assert [result.ok for result in results] == [True, False]
        assert len((await store.load(TRUST)).users) == 1

    @pytest.mark.asyncio
    async def test_emails_differing_beyond_case_are_different_users(self, store: ConformantUserStore) -> None:
        # lower(), not casefold(): "ß" and "ss" are different mailboxes.
        await self._apply_ok(
            store, [_create("e1", "straße@oak.example"), _create("e2", "strasse@oak.example")]
        )
        assert len((await store.load(TRUST)).users) == 2

    # -- results ----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_one_result_per_change_in_order(self, store: ConformantUserStore) -> None:
        changes: list[Change] = [
            _create("e1"),
            Assign("e1", SITE, "risk", Role.MEMBER, because=("g1",)),
            _create("e2"),
            Assign("e2", SITE, "risk", Role.ADMIN),
            Assign("e2", OTHER_SITE, "policies", Role.MANAGER),
            Unassign("e1", SITE, "risk", previous=Role.MEMBER),
        ]
        results = await store.apply(TRUST, changes)
        assert [result.change for result in results] == changes
        _assert_all_ok(results)

    @pytest.mark.asyncio
    async def test_a_failing_change_does_not_stop_the_others(self, store: ConformantUserStore) -> None:
        await store.add_user("taken@oak.example", "Invited")
        changes: list[Change] = [
            _create("e1"),
            _create("e2", "TAKEN@oak.example"),
            Assign("e2", SITE, "risk", Role.MEMBER),
            _create("e3"),
            Assign("e3", SITE, "risk", Role.MANAGER),
            Assign("e1", SITE, "risk", Role.ADMIN),
        ]
        results = await store.apply(TRUST, changes)
        assert [result.ok for result in results] == [True, False, False, True, True, True]
        state = await store.load(TRUST)
        assert state.synced_access == {
            "e1": {(SITE, "risk"): Role.ADMIN},
            "e3": {(SITE, "risk"): Role.MANAGER},
        }

    # -- link -------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_link_adopts_the_invited_user_without_duplicating(self, store: ConformantUserStore) -> None:
        invited = await store.add_user("bob@oak.example", "bob")
        await self._apply_ok(
            store,
            [
                LinkUser("e1", invited, "Bob@Oak.example", "Bob Stone", "Bob", "Stone"),
                Assign("e1", SITE, "risk", Role.MEMBER),
            ],
        )
        state = await store.load(TRUST)
        assert list(state.users) == [invited]
        user = state.users[invited]
        assert (user.external_id, user.email, user.display_name, user.given_name, user.surname) == (
            "e1",
            "Bob@Oak.example",
            "Bob Stone",
            "Bob",
            "Stone",
        )
        assert await store.grants(invited) == {Grant(SITE, "risk", Role.MEMBER, "azure")}

    @pytest.mark.asyncio
    async def test_link_to_an_unknown_user_fails(self, store: ConformantUserStore) -> None:
        results = await store.apply(TRUST, [LinkUser("e1", "no-such-user", "x@oak.example", "X")])
        assert not results[0].ok
        assert (await store.load(TRUST)).users == {}

    @pytest.mark.asyncio
    async def test_link_never_takes_over_a_user_linked_to_someone_else(
        self, store: ConformantUserStore
    ) -> None:
        await self._apply_ok(store, [_create("e1", "carol@oak.example")])
        carol = _by_external_id(await store.load(TRUST), "e1")
        results = await store.apply(TRUST, [LinkUser("e2", carol.user_id, "carol@oak.example", "Carol")])
        assert not results[0].ok
        assert (await store.load(TRUST)).users[carol.user_id] == carol

    @pytest.mark.asyncio
    async def test_link_of_an_external_id_another_user_holds_fails(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1")])
        invited = await store.add_user("dan@oak.example", "Dan")
        results = await store.apply(TRUST, [LinkUser("e1", invited, "dan@oak.example", "Dan")])
        assert not results[0].ok
        assert (await store.load(TRUST)).users[invited].external_id is None

    @pytest.mark.asyncio
    async def test_link_to_an_email_another_user_holds_fails(self, store: ConformantUserStore) -> None:
        invited = await store.add_user("erin@oak.example", "Erin")
        await store.add_user("erin.new@oak.example", "Someone else")
        results = await store.apply(TRUST, [LinkUser("e1", invited, "Erin.New@oak.example", "Erin")])
        assert not results[0].ok
        user = (await store.load(TRUST)).users[invited]
        assert (user.external_id, user.email) == (None, "erin@oak.example")

    # -- update -----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_update_changes_email_and_names(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1", "fay@oak.example", "Fay")])
        fay = _by_external_id(await store.load(TRUST), "e1")
        await self._apply_ok(
            store,
            [
                UpdateUser(
                    "e1", fay.user_id, "fay.moss@oak.example", "Fay Moss", "Fay", "Moss", changed=("email",)
                )
            ],
        )
        user = (await store.load(TRUST)).users[fay.user_id]
        assert (user.email, user.display_name, user.given_name, user.surname) == (
            "fay.moss@oak.example",
            "Fay Moss",
            "Fay",
            "Moss",
        )
        # The old address is free again.
        await store.add_user("FAY@oak.example", "New Fay")

    @pytest.mark.asyncio
    async def test_update_to_an_email_another_user_holds_fails_and_changes_nothing(
        self, store: ConformantUserStore
    ) -> None:
        await store.add_user("gus@oak.example", "Gus")
        await self._apply_ok(store, [_create("e1", "hal@oak.example", "Hal")])
        hal = _by_external_id(await store.load(TRUST), "e1")
        results = await store.apply(TRUST, [UpdateUser("e1", hal.user_id, "GUS@oak.example", "Hal Renamed")])
        assert not results[0].ok
        assert (await store.load(TRUST)).users[hal.user_id] == hal

    @pytest.mark.asyncio
    async def test_update_may_change_the_case_of_its_own_email(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1", "ivy@oak.example")])
        ivy = _by_external_id(await store.load(TRUST), "e1")
        await self._apply_ok(store, [UpdateUser("e1", ivy.user_id, "Ivy@Oak.example", ivy.display_name)])
        assert (await store.load(TRUST)).users[ivy.user_id].email == "Ivy@Oak.example"

    @pytest.mark.asyncio
    async def test_update_reactivates_only_when_asked(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1")])
        user = _by_external_id(await store.load(TRUST), "e1")
        await self._apply_ok(store, [DeactivateUser("e1", user.user_id)])
        await self._apply_ok(store, [UpdateUser("e1", user.user_id, user.email, "Renamed")])
        assert not (await store.load(TRUST)).users[user.user_id].active
        await self._apply_ok(store, [UpdateUser("e1", user.user_id, user.email, "Renamed", reactivate=True)])
        assert (await store.load(TRUST)).users[user.user_id].active

    @pytest.mark.asyncio
    async def test_update_of_an_unknown_or_mismatched_user_fails(self, store: ConformantUserStore) -> None:
        other = await store.add_user("jo@oak.example", "Jo")
        await self._apply_ok(store, [_create("e1")])
        results = await store.apply(
            TRUST,
            [
                UpdateUser("e-unknown", other, "jo@oak.example", "Jo"),
                UpdateUser("e1", other, "jo@oak.example", "Jo"),
            ],
        )
        assert [result.ok for result in results] == [False, False]
        assert (await store.load(TRUST)).users[other].external_id is None

    # -- assign / unassign --------------------------------------------------------

    @pytest.mark.asyncio
    async def test_assign_grants_and_changes_the_azure_role(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1"), Assign("e1", SITE, "risk", Role.MEMBER)])
        await self._apply_ok(store, [Assign("e1", SITE, "risk", Role.ADMIN, previous=Role.MEMBER)])
        user = _by_external_id(await store.load(TRUST), "e1")
        assert await store.grants(user.user_id) == {Grant(SITE, "risk", Role.ADMIN, "azure")}
        assert (await store.load(TRUST)).synced_access == {"e1": {(SITE, "risk"): Role.ADMIN}}

    @pytest.mark.asyncio
    async def test_assign_to_an_unknown_external_id_fails(self, store: ConformantUserStore) -> None:
        results = await store.apply(TRUST, [Assign("nobody", SITE, "risk", Role.MEMBER)])
        assert not results[0].ok
        assert (await store.load(TRUST)).synced_access == {}

    @pytest.mark.asyncio
    async def test_unassign_removes_the_azure_grant(self, store: ConformantUserStore) -> None:
        await self._apply_ok(
            store,
            [
                _create("e1"),
                Assign("e1", SITE, "risk", Role.MEMBER),
                Assign("e1", SITE, "policies", Role.MEMBER),
            ],
        )
        await self._apply_ok(store, [Unassign("e1", SITE, "risk", previous=Role.MEMBER)])
        assert (await store.load(TRUST)).synced_access == {"e1": {(SITE, "policies"): Role.MEMBER}}

    @pytest.mark.asyncio
    async def test_unassign_of_an_unknown_external_id_fails(self, store: ConformantUserStore) -> None:
        results = await store.apply(TRUST, [Unassign("nobody", SITE, "risk", previous=Role.MEMBER)])
        assert not results[0].ok

    # -- manual grants ------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_manual_and_azure_grants_on_one_module_coexist(self, store: ConformantUserStore) -> None:
        invited = await store.add_user("kim@oak.example", "Kim")
        await store.grant(invited, SITE, "risk", "manager")
        await self._apply_ok(
            store, [LinkUser("e1", invited, "kim@oak.example", "Kim"), Assign("e1", SITE, "risk", Role.ADMIN)]
        )
        assert await store.grants(invited) == {
            Grant(SITE, "risk", Role.MANAGER, "manual"),
            Grant(SITE, "risk", Role.ADMIN, "azure"),
        }
        state = await store.load(TRUST)
        assert state.synced_access == {"e1": {(SITE, "risk"): Role.ADMIN}}
        assert state.manual_access_user_ids == frozenset({invited})

    @pytest.mark.asyncio
    async def test_the_sync_never_touches_a_manual_grant(self, store: ConformantUserStore) -> None:
        invited = await store.add_user("lee@oak.example", "Lee")
        await store.grant(invited, SITE, "risk", Role.MEMBER)
        await store.grant(invited, OTHER_SITE, "policies", Role.ADMIN)
        await self._apply_ok(
            store,
            [
                LinkUser("e1", invited, "lee@oak.example", "Lee"),
                Assign("e1", SITE, "risk", Role.ADMIN),
                Unassign("e1", SITE, "risk", previous=Role.ADMIN),
                Unassign("e1", OTHER_SITE, "policies", previous=Role.ADMIN),
                DeactivateUser("e1", invited),
            ],
        )
        assert await store.grants(invited) == {
            Grant(SITE, "risk", Role.MEMBER, "manual"),
            Grant(OTHER_SITE, "policies", Role.ADMIN, "manual"),
        }
        assert (await store.load(TRUST)).users[invited].active

    # -- deactivate ---------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_deactivate_marks_inactive_when_no_grant_is_left(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1"), Assign("e1", SITE, "risk", Role.MEMBER)])
        user = _by_external_id(await store.load(TRUST), "e1")
        await self._apply_ok(
            store, [Unassign("e1", SITE, "risk", previous=Role.MEMBER), DeactivateUser("e1", user.user_id)]
        )
        after = (await store.load(TRUST)).users[user.user_id]
        assert not after.active
        assert after.deactivated_by_sync
        assert after.external_id == "e1"

    @pytest.mark.asyncio
    async def test_reactivating_clears_the_sync_deactivation_mark(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1")])
        user = _by_external_id(await store.load(TRUST), "e1")
        await self._apply_ok(store, [DeactivateUser("e1", user.user_id)])
        await self._apply_ok(
            store,
            [UpdateUser("e1", user.user_id, user.email, user.display_name, reactivate=True, changed=("active",))],
        )
        after = (await store.load(TRUST)).users[user.user_id]
        assert after.active
        assert not after.deactivated_by_sync

    @pytest.mark.asyncio
    async def test_deactivate_is_a_successful_no_op_while_any_grant_remains(
        self, store: ConformantUserStore
    ) -> None:
        await self._apply_ok(
            store,
            [_create("e1"), Assign("e1", SITE, "risk", Role.MEMBER), _create("e2")],
        )
        state = await store.load(TRUST)
        azure_user = _by_external_id(state, "e1")
        manual_user = _by_external_id(state, "e2")
        await store.grant(manual_user.user_id, SITE, "policies", Role.MEMBER)
        await self._apply_ok(
            store, [DeactivateUser("e1", azure_user.user_id), DeactivateUser("e2", manual_user.user_id)]
        )
        users = (await store.load(TRUST)).users
        assert users[azure_user.user_id].active
        assert users[manual_user.user_id].active

    @pytest.mark.asyncio
    async def test_deactivate_counts_grants_of_every_trust(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1")])
        await self._apply_ok(store, [Assign("e1", ELM_SITE, "risk", Role.MEMBER)], trust=OTHER_TRUST)
        user = _by_external_id(await store.load(TRUST), "e1")
        await self._apply_ok(store, [DeactivateUser("e1", user.user_id)])
        assert (await store.load(TRUST)).users[user.user_id].active

    @pytest.mark.asyncio
    async def test_deactivate_of_an_unknown_or_mismatched_user_fails(
        self, store: ConformantUserStore
    ) -> None:
        other = await store.add_user("max@oak.example", "Max")
        await self._apply_ok(store, [_create("e1")])
        results = await store.apply(TRUST, [DeactivateUser("nobody", other), DeactivateUser("e1", other)])
        assert [result.ok for result in results] == [False, False]
        assert all(user.active for user in (await store.load(TRUST)).users.values())

    @pytest.mark.asyncio
    async def test_users_are_never_deleted(self, store: ConformantUserStore) -> None:
        invited = await store.add_user("ned@oak.example", "Ned")
        await self._apply_ok(store, [_create("e1"), Assign("e1", SITE, "risk", Role.MEMBER)])
        before = set((await store.load(TRUST)).users)
        user = _by_external_id(await store.load(TRUST), "e1")
        await self._apply_ok(
            store,
            [
                Unassign("e1", SITE, "risk", previous=Role.MEMBER),
                DeactivateUser("e1", user.user_id),
                LinkUser("e2", invited, "ned@oak.example", "Ned"),
                DeactivateUser("e2", invited),
            ],
        )
        assert set((await store.load(TRUST)).users) == before

    # -- load ---------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_load_lists_every_user_but_synced_access_of_that_trust_only(
        self, store: ConformantUserStore
    ) -> None:
        invited = await store.add_user("ola@oak.example", "Ola")
        await self._apply_ok(store, [_create("e1"), _create("e2"), Assign("e1", SITE, "risk", Role.MANAGER)])
        await self._apply_ok(
            store,
            [Assign("e1", ELM_SITE, "risk", Role.ADMIN), Assign("e2", ELM_SITE, "policies", Role.MEMBER)],
            trust=OTHER_TRUST,
        )
        oak = await store.load(TRUST)
        elm = await store.load(OTHER_TRUST)
        assert set(oak.users) == set(elm.users)
        assert len(oak.users) == 3
        assert invited in oak.users
        assert oak.synced_access == {"e1": {(SITE, "risk"): Role.MANAGER}}
        assert elm.synced_access == {
            "e1": {(ELM_SITE, "risk"): Role.ADMIN},
            "e2": {(ELM_SITE, "policies"): Role.MEMBER},
        }
        assert oak.manual_access_user_ids == frozenset()

    @pytest.mark.asyncio
    async def test_load_of_an_empty_store(self, store: ConformantUserStore) -> None:
        assert await store.load(TRUST) == StoreState()

    # -- idempotence ----------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_reapplying_a_batch_succeeds_and_changes_nothing(self, store: ConformantUserStore) -> None:
        invited = await store.add_user("pat@oak.example", "Pat")
        batch: list[Change] = [
            _create("e1", "quinn@oak.example"),
            Assign("e1", SITE, "risk", Role.MEMBER),
            Assign("e1", SITE, "policies", Role.ADMIN),
            LinkUser("e2", invited, "Pat@oak.example", "Pat Reed"),
            Assign("e2", SITE, "risk", Role.MANAGER),
            Unassign("e2", SITE, "incidents", previous=Role.MEMBER),
        ]
        await self._apply_ok(store, batch)
        first = await store.load(TRUST)
        await self._apply_ok(store, batch)
        assert await store.load(TRUST) == first

    # -- text a database cannot encode -------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_lone_surrogate_in_a_name_costs_at_most_its_own_change(
        self, store: ConformantUserStore
    ) -> None:
        # JSON allows "\ud83d" alone and json.loads keeps it; UTF-8 cannot encode it.
        changes: list[Change] = [_create(f"e{n}") for n in range(50)]
        changes.insert(17, CreateUser("zoe", "zoe@oak.example", "Zo\ud83d", "Zo\ud83d", "\udc00"))
        results = await store.apply(TRUST, changes)
        assert [result.outcome for index, result in enumerate(results) if index != 17] == ["applied"] * 50
        state = await store.load(TRUST)
        assert len(state.users) == 50 + (results[17].outcome == "applied")
        if results[17].ok:
            zoe = _by_external_id(state, "zoe")
            assert zoe.display_name in ("Zo\ud83d", "Zo\ufffd")

    @pytest.mark.asyncio
    async def test_an_id_that_cannot_be_stored_fails_its_own_change_and_the_helpers_say_why(
        self, store: ConformantUserStore
    ) -> None:
        # Ids are never rewritten (a replaced id names another object): the change fails alone,
        # and a host helper given one raises ValueError, not the database driver's error.
        changes: list[Change] = [_create(f"e{n}") for n in range(10)]
        changes.insert(3, _create("zo\ud83d"))
        changes.insert(7, Assign("e\udc00", SITE, "risk", Role.MEMBER))
        results = await store.apply(TRUST, changes)
        assert [result.outcome for index, result in enumerate(results) if index not in (3, 7)] == ["applied"] * 10
        assert [results[3].outcome, results[7].outcome] == ["failed", "failed"]
        assert len((await store.load(TRUST)).users) == 10
        with pytest.raises(ValueError, match="lone surrogate"):
            await store.add_user("visitor@oak.example", "Visitor", user_id="id\ud83d")
        user_id = await store.add_user("visitor@oak.example", "Visitor")
        with pytest.raises(ValueError, match="lone surrogate"):
            await store.grant(user_id, "site\ud83d", "risk", Role.MEMBER)
        assert await store.grants(user_id) == set()

    # -- relink -----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_relink_moves_the_user_to_the_new_object_and_keeps_every_grant(
        self, store: ConformantUserStore
    ) -> None:
        await self._apply_ok(store, [_create("old", "zoe@oak.example", "Zoe"), Assign("old", SITE, "risk", Role.ADMIN)])
        zoe = _by_external_id(await store.load(TRUST), "old")
        await store.grant(zoe.user_id, OTHER_SITE, "policies", Role.MEMBER)
        relink = RelinkUser("new", zoe.user_id, "old", "Zoe@oak.example", "Zoe Park", "Zoe", "Park")
        assert _outcomes(await store.apply(TRUST, [relink])) == ["applied"]
        state = await store.load(TRUST)
        user = state.users[zoe.user_id]
        assert (user.external_id, user.email, user.display_name, user.given_name, user.surname) == (
            "new",
            "Zoe@oak.example",
            "Zoe Park",
            "Zoe",
            "Park",
        )
        assert len(state.users) == 1
        assert state.synced_access == {"new": {(SITE, "risk"): Role.ADMIN}}
        assert await store.grants(zoe.user_id) == {
            Grant(SITE, "risk", Role.ADMIN, "azure"),
            Grant(OTHER_SITE, "policies", Role.MEMBER, "manual"),
        }
        # The old object id is free; a replay of the relink changes nothing.
        assert _outcomes(await store.apply(TRUST, [relink])) == ["unchanged"]
        await self._apply_ok(store, [_create("old", "someone@oak.example")])

    @pytest.mark.asyncio
    async def test_relink_refuses_what_it_cannot_prove(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("old", "ada@oak.example"), _create("taken", "bea@oak.example")])
        await store.add_user("cy@oak.example", "Cy")
        state = await store.load(TRUST)
        ada = _by_external_id(state, "old")
        results = await store.apply(
            TRUST,
            [
                RelinkUser("new", "no-such-user", "old", "ada@oak.example", "Ada"),
                RelinkUser("new", ada.user_id, "not-its-id", "ada@oak.example", "Ada"),
                RelinkUser("taken", ada.user_id, "old", "ada@oak.example", "Ada"),
                RelinkUser("new", ada.user_id, "old", "CY@oak.example", "Ada"),
            ],
        )
        assert _outcomes(results) == ["failed"] * 4
        assert await store.load(TRUST) == state

    # -- other access -------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_load_names_the_users_holding_access_this_trust_did_not_grant(
        self, store: ConformantUserStore
    ) -> None:
        await self._apply_ok(store, [_create("e1"), _create("e2"), _create("e3"), _create("e4")])
        await self._apply_ok(store, [Assign("e1", SITE, "risk", Role.MEMBER), Assign("e3", SITE, "risk", Role.MEMBER)])
        await self._apply_ok(store, [Assign("e2", ELM_SITE, "risk", Role.MEMBER)], trust=OTHER_TRUST)
        state = await store.load(TRUST)
        ids = {external_id: _by_external_id(state, external_id).user_id for external_id in ("e1", "e2", "e3", "e4")}
        invited = await store.add_user("hand@oak.example", "By Hand")
        await store.grant(invited, SITE, "risk", Role.MEMBER)
        await store.grant(ids["e3"], OTHER_SITE, "risk", Role.MEMBER)
        oak, elm = await store.load(TRUST), await store.load(OTHER_TRUST)
        assert oak.other_access_user_ids == frozenset({ids["e2"], ids["e3"], invited})
        assert elm.other_access_user_ids == frozenset({ids["e1"], ids["e3"], invited})
        assert oak.manual_access_user_ids == elm.manual_access_user_ids == frozenset({ids["e3"], invited})

    # -- outcomes -------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_first_batch_is_applied_and_its_replay_unchanged(self, store: ConformantUserStore) -> None:
        invited = await store.add_user("uma@oak.example", "Uma")
        batch: list[Change] = [
            _create("e1"),
            Assign("e1", SITE, "risk", Role.MEMBER),
            LinkUser("e2", invited, "Uma@oak.example", "Uma Vale"),
            Assign("e2", SITE, "risk", Role.ADMIN),
        ]
        assert _outcomes(await store.apply(TRUST, batch)) == ["applied"] * 4
        assert _outcomes(await store.apply(TRUST, batch)) == ["unchanged"] * 4

    @pytest.mark.asyncio
    async def test_a_create_for_a_held_external_id_is_unchanged_and_overwrites_nothing(
        self, store: ConformantUserStore
    ) -> None:
        await self._apply_ok(store, [_create("e1", "vic@oak.example", "Vic")])
        before = await store.load(TRUST)
        results = await store.apply(TRUST, [_create("e1", "victor@oak.example", "Victor")])
        assert _outcomes(results) == ["unchanged"]
        assert await store.load(TRUST) == before

    @pytest.mark.asyncio
    async def test_failed_changes_have_the_outcome_failed(self, store: ConformantUserStore) -> None:
        results = await store.apply(TRUST, [Assign("nobody", SITE, "risk", Role.MEMBER), _create("e1", " ")])
        assert _outcomes(results) == ["failed", "failed"]
        assert all(result.error for result in results)

    @pytest.mark.asyncio
    async def test_update_is_applied_only_when_something_changes(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1", "wes@oak.example", "Wes")])
        wes = _by_external_id(await store.load(TRUST), "e1")
        same = UpdateUser("e1", wes.user_id, wes.email, wes.display_name, wes.given_name, wes.surname)
        renamed = _evolve(same, display_name="Wes Hart")
        assert _outcomes(await store.apply(TRUST, [same, renamed, renamed])) == ["unchanged", "applied", "unchanged"]
        reactivate = _evolve(renamed, reactivate=True)
        assert _outcomes(await store.apply(TRUST, [reactivate])) == ["unchanged"]  # already active

    @pytest.mark.asyncio
    async def test_grant_outcomes(self, store: ConformantUserStore) -> None:
        await self._apply_ok(store, [_create("e1")])
        changes: list[Change] = [
            Assign("e1", SITE, "risk", Role.MEMBER),
            Assign("e1", SITE, "risk", Role.MEMBER),
            Assign("e1", SITE, "risk", Role.ADMIN, previous=Role.MEMBER),
            Unassign("e1", SITE, "risk", previous=Role.ADMIN),
            Unassign("e1", SITE, "risk", previous=Role.ADMIN),
        ]
        assert _outcomes(await store.apply(TRUST, changes)) == [
            "applied",
            "unchanged",
            "applied",
            "applied",
            "unchanged",
        ]

    @pytest.mark.asyncio
    async def test_a_deactivation_refused_by_remaining_access_is_unchanged(
        self, store: ConformantUserStore
    ) -> None:
        await self._apply_ok(store, [_create("e1"), _create("e2"), _create("e3")])
        await self._apply_ok(store, [Assign("e2", ELM_SITE, "risk", Role.MEMBER)], trust=OTHER_TRUST)
        state = await store.load(TRUST)
        manual, other_trust, free = (_by_external_id(state, e) for e in ("e1", "e2", "e3"))
        await store.grant(manual.user_id, SITE, "policies", Role.MEMBER)
        results = await store.apply(
            TRUST,
            [
                DeactivateUser("e1", manual.user_id),
                DeactivateUser("e2", other_trust.user_id),
                DeactivateUser("e3", free.user_id),
                DeactivateUser("e3", free.user_id),
            ],
        )
        assert _outcomes(results) == ["unchanged", "unchanged", "applied", "unchanged"]
        users = (await store.load(TRUST)).users
        assert [users[u.user_id].active for u in (manual, other_trust, free)] == [True, True, False]

    @pytest.mark.asyncio
    async def test_two_handles_creating_one_external_id_at_once_give_one_applied_create(
        self, store: ConformantUserStore, tmp_path: Path
    ) -> None:
        other = await self.open_again(store, tmp_path)
        try:
            for round_ in range(5):
                external_id = f"both-{round_}"
                first, second = await asyncio.gather(
                    store.apply(TRUST, [_create(external_id), Assign(external_id, SITE, "risk", Role.MEMBER)]),
                    other.apply(
                        OTHER_TRUST, [_create(external_id), Assign(external_id, ELM_SITE, "risk", Role.ADMIN)]
                    ),
                )
                assert sorted([first[0].outcome, second[0].outcome]) == ["applied", "unchanged"]
                assert (first[1].outcome, second[1].outcome) == ("applied", "applied")
                user = _by_external_id(await store.load(TRUST), external_id)
                assert await store.grants(user.user_id) == {
                    Grant(SITE, "risk", Role.MEMBER, "azure"),
                    Grant(ELM_SITE, "risk", Role.ADMIN, "azure"),
                }
        finally:
            if other is not store:
                await self.close_store(other)

    # -- helpers ----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_add_user_refuses_an_email_taken_in_any_case(self, store: ConformantUserStore) -> None:
        await store.add_user("Rae@oak.example", "Rae")
        with pytest.raises(ValueError, match="email"):
            await store.add_user("rae@OAK.example", "Another Rae")

    @pytest.mark.asyncio
    async def test_add_user_keeps_a_given_id(self, store: ConformantUserStore) -> None:
        assert await store.add_user("sam@oak.example", "Sam", user_id="host-42") == "host-42"
        assert (await store.load(TRUST)).users["host-42"].email == "sam@oak.example"

    # -- run lock ---------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_second_holder_of_the_run_lock_fails_at_once(self, store: ConformantUserStore) -> None:
        async with store.run_lock(TRUST):
            second = store.run_lock(TRUST)
            # No waiting: the second import fails now, not when the first ends.
            with pytest.raises(ImportAlreadyRunningError):
                await asyncio.wait_for(second.__aenter__(), timeout=5)

    @pytest.mark.asyncio
    async def test_run_locks_of_different_trusts_are_independent(self, store: ConformantUserStore) -> None:
        async with store.run_lock(TRUST), store.run_lock(OTHER_TRUST):
            pass

    @pytest.mark.asyncio
    async def test_the_run_lock_is_released_on_exit_and_on_error(self, store: ConformantUserStore) -> None:
        async with store.run_lock(TRUST):
            pass
        with pytest.raises(RuntimeError, match="import broke"):
            async with store.run_lock(TRUST):
                raise RuntimeError("import broke")
        async with store.run_lock(TRUST):
            pass
