"""What the sync needs from the host's user store.

A host implements :class:`UserStore` over its own users table (or uses a
shipped store); :mod:`calm_azure_sync.testing.store_conformance` checks an
implementation against the behaviour described here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol, runtime_checkable

import attrs

from ..model import Role
from ..plan import Change

__all__ = ["ChangeResult", "Grant", "GrantSource", "StoreState", "StoredUser", "UserStore"]

GrantSource = Literal["manual", "azure"]


@attrs.frozen
class StoredUser:
    """A user as the store holds it.

    ``external_id`` is the Entra object id of a synced user, ``None`` for a
    user invited by hand. ``deactivated_by_sync`` is true only while the user
    is inactive because the sync deactivated them: the sync reactivates those
    users when they come back into scope, and never anyone a person deactivated.
    """

    user_id: str
    email: str
    display_name: str
    external_id: str | None = None
    given_name: str | None = None
    surname: str | None = None
    active: bool = True
    deactivated_by_sync: bool = False


@attrs.frozen
class Grant:
    """One access grant: ``role`` on ``module`` at ``site_id``, from ``source``."""

    site_id: str
    module: str
    role: Role
    source: GrantSource


@attrs.frozen
class StoreState:
    """What the store holds, as the planner needs it.

    ``users``: store user id -> :class:`StoredUser`: every user the store has
    (synced users are found by external id, invited ones by email).
    ``synced_access``: external id -> {(site_id, module): Role}: the grants the
    sync made in this trust. ``manual_access_user_ids``: store user ids that
    hold any manual grant (the sync never deactivates them).
    """

    users: Mapping[str, StoredUser] = attrs.field(factory=dict)
    synced_access: Mapping[str, Mapping[tuple[str, str], Role]] = attrs.field(factory=dict)
    manual_access_user_ids: frozenset[str] = frozenset()


@attrs.frozen
class ChangeResult:
    """The outcome of applying one change: ``error`` says why it failed."""

    change: Change
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class UserStore(Protocol):
    """The host's users as the sync sees them. Implemented by hosts and by
    :class:`~calm_azure_sync.InMemoryUserStore` and
    :class:`~calm_azure_sync.SqliteUserStore`.

    ``apply`` receives the changes of one batch, grouped per user (the user's
    create/link/update first, then its grants, then its deactivation) and
    applies each:

    - ``CreateUser``: a new active user carrying ``external_id``;
    - ``LinkUser``: set ``external_id`` on user ``user_id``, refresh names/email;
    - ``UpdateUser``: set email and names (and, when ``reactivate``, ``active``
      and clear ``deactivated_by_sync``);
    - ``Assign``/``Unassign``: upsert/delete the *azure* grant of the user with
      that external id at (site, module), recorded against ``trust_site_id``;
      manual grants are never touched;
    - ``DeactivateUser``: mark inactive and ``deactivated_by_sync``, only if the
      user then holds no grant of any source (otherwise a no-op that still
      succeeds). Never delete a user.

    A change that cannot apply (say, a duplicate email) gets a
    :class:`ChangeResult` with ``error``; the others still apply. A store
    should make each user's changes within a batch all-or-nothing across a
    crash, so no user is ever half-written.
    """

    async def load(self, trust_site_id: str) -> StoreState:
        """Every user, and the synced grants of this trust."""
        ...

    async def apply(self, trust_site_id: str, changes: Sequence[Change]) -> Sequence[ChangeResult]:
        """Apply ``changes``; one result per change, in order."""
        ...

    def run_lock(self, trust_site_id: str) -> AbstractAsyncContextManager[None]:
        """Hold the trust's import lock; a second holder gets ImportAlreadyRunningError."""
        ...
