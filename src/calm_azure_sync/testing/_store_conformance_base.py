"""What the user store conformance checks share: the trusts and sites they use, the host helpers they need, small helpers.

Private to :mod:`calm_azure_sync.testing.store_conformance`, which re-exports
:class:`ConformantUserStore` and :class:`GroupHelpers`; the check mixins
(``_store_conformance_groups``, ``_store_conformance_state``) build on it.
Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import pytest

from ..core.plan import Change, CreateUser, UpdateUser
from ..model import Role
from ..store.protocol import (
    ChangeOutcome,
    ChangeResult,
    Grant,
    StoredUser,
    StoreState,
    SyncedGroup,
    UserStore,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ConformantUserStore", "GroupHelpers"]

TRUST = "trust-oak"
OTHER_TRUST = "trust-elm"
SITE = "oak-primary"
OTHER_SITE = "oak-high"
ELM_SITE = "elm-academy"


@runtime_checkable
class ConformantUserStore(UserStore, Protocol):
    """A :class:`~calm_azure_sync.UserStore` with the host helpers the suite uses to set up."""

    async def add_user(self, email: str, display_name: str, *, user_id: str | None = None) -> str:
        """Add a manually invited user (no external id) and return its id; a taken email raises."""
        ...

    async def grant(self, user_id: str, site_id: str, module: str, role: Role | str) -> None:
        """Give ``user_id`` a manual grant."""
        ...

    async def grants(self, user_id: str) -> set[Grant]:
        """Every grant of ``user_id``, with its source (``"manual"`` or ``"azure"``)."""
        ...


@runtime_checkable
class GroupHelpers(Protocol):
    """The host helpers for synced groups both shipped stores offer; the suite checks them when present."""

    async def groups(self, trust_site_id: str) -> list[SyncedGroup]:
        """The trust's synced groups, retired ones too, by display name."""
        ...

    async def group_members(self, group_external_id: str, trust_site_id: str | None = None) -> frozenset[str]:
        """Member external ids (of every trust mirroring the group when ``trust_site_id`` is None)."""
        ...


def _create(external_id: str, email: str | None = None, name: str | None = None) -> CreateUser:
    return CreateUser(
        external_id=external_id,
        email=email or f"{external_id}@oak.example",
        display_name=name or f"User {external_id}",
        given_name="User",
        surname=external_id,
    )


def _by_external_id(state: StoreState, external_id: str) -> StoredUser:
    found = [user for user in state.users.values() if user.external_id == external_id]
    assert len(found) == 1, f"expected one user with external id {external_id!r}, found {found}"
    return found[0]


def _require_groups(store: ConformantUserStore) -> None:
    # The reconciler sends group changes only to a store that says it keeps them.
    if getattr(store, "mirrors_groups", False) is not True:
        pytest.skip(f"{type(store).__name__} does not say mirrors_groups = True")


def _evolve(change: UpdateUser, **values: Any) -> UpdateUser:
    return attrs.evolve(change, **values)


def _outcomes(results: Sequence[ChangeResult]) -> list[ChangeOutcome]:
    return [result.outcome for result in results]


def _assert_all_ok(results: Sequence[ChangeResult]) -> None:
    failed = [(result.change, result.error) for result in results if not result.ok]
    assert not failed, f"changes failed: {failed}"


if TYPE_CHECKING:

    class _Hooks(Protocol):
        """What the check mixins use of :class:`UserStoreConformance` (declared for type checking only)."""

        async def _apply_ok(self, store: ConformantUserStore, changes: Sequence[Change], trust: str = ...) -> None: ...

        async def close_store(self, store: ConformantUserStore) -> None: ...

        async def write_raw_state(self, store: ConformantUserStore, trust_site_id: str, text: str) -> None: ...

        async def open_again(self, store: ConformantUserStore, tmp_path: Path) -> ConformantUserStore: ...

else:
    _Hooks = object  # at run time the mixins' methods find the real hooks on UserStoreConformance
