"""The in-memory user store: for tests, demos and notebooks.

It is a :class:`~calm_azure_sync.store.rules.UserTables` (the apply rules
every shipped store shares) and a set of locked trusts, nothing more.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import ClassVar

import attrs

from .._async_closing import AsyncClosing
from .._query_args import checked_id, checked_optional_id
from ..core.plan import Change
from ..core.state import SyncState
from ..errors import ImportAlreadyRunningError
from ..incremental import DeltaCache, DeltaCacheWrite, DeltaHead
from ..incremental.partial import DeltaRows, rows_of
from ..model import Role
from .protocol import ChangeResult, Grant, PeopleRows, StoredUser, StoreState, SyncedGroup, people_rows
from .rules import GrantWrite as GrantWrite  # moved to store.rules; still importable from here
from .rules import UserTables as UserTables  # (its home is store.rules; see above)
from .rules import UserWrite as UserWrite  # moved to store.rules; still importable from here
from .rules import state_from_json, state_to_json

__all__ = ["InMemoryUserStore"]


@attrs.define
class InMemoryUserStore(AsyncClosing):
    """A :class:`~calm_azure_sync.UserStore` held in memory: for tests, demos and notebooks.

    Besides the protocol it offers the host helpers every shipped store has
    (``add_user``, ``grant``, ``grants``, ``user``, ``users``), all coroutines::

        store = InMemoryUserStore()
        ann = await store.add_user("ann@example.org", "Ann Example")
        await store.grant(ann, "birch-high", "risk", "Manager")

    Emails are unique regardless of case. Nothing is persisted. It is also a
    :class:`~calm_azure_sync.SyncStateStore`: each trust's state is kept on
    the store object, as the JSON text a database would hold; and a
    :class:`~calm_azure_sync.DeltaCacheStore` (each trust's delta cache kept
    as the rows a write leaves). It holds nothing to close; ``aclose()`` and
    ``async with`` work as on every shipped store.
    """

    mirrors_groups: ClassVar[bool] = True
    """It persists synced groups and memberships, so the reconciler plans group changes for it."""

    _tables: UserTables = attrs.field(factory=UserTables, init=False)
    _locked_trusts: set[str] = attrs.field(factory=set, init=False)
    # trust -> state_to_json text: a saved state is a copy, and reads back as a database's would.
    _states: dict[str, str] = attrs.field(factory=dict, init=False)
    _deltas: dict[str, DeltaCache] = attrs.field(factory=dict, init=False)
    _version: int = attrs.field(default=0, init=False)  # bumped by every write of user data

    async def load(self, trust_site_id: str) -> StoreState:
        """Every user, the synced grants of ``trust_site_id``, and who holds manual grants."""
        return self._tables.state(checked_id("trust_site_id", trust_site_id))

    async def load_people(
        self, trust_site_id: str, external_ids: Iterable[str], email_keys: Iterable[str]
    ) -> PeopleRows:
        """Some people's rows (a :class:`~calm_azure_sync.PeopleStore`), worked out from the whole trust."""
        return people_rows(self._tables.state(checked_id("trust_site_id", trust_site_id)), external_ids, email_keys)

    async def apply(self, trust_site_id: str, changes: Sequence[Change]) -> Sequence[ChangeResult]:
        """Apply ``changes`` in order; one :class:`ChangeResult` per change."""
        self._version += bool(changes)
        return self._tables.apply(trust_site_id, changes)

    async def apply_with_state(
        self,
        trust_site_id: str,
        changes: Sequence[Change],
        state_after: Callable[[Sequence[ChangeResult]], SyncState],
    ) -> Sequence[ChangeResult]:
        """Apply ``changes`` and save ``state_after(results)`` together (a :class:`~calm_azure_sync.StateWithChanges`).

        All or nothing, as a database transaction is: when ``state_after``
        raises or its state cannot be stored (ConfigError), the tables are
        put back as they were before the batch and the error propagates.
        """
        before, version = self._tables.copy(), self._version
        try:
            results = await self.apply(trust_site_id, changes)
            text = state_to_json(state_after(results), where=_where(trust_site_id))
        except BaseException:
            self._tables, self._version = before, version
            raise
        self._states[trust_site_id] = text
        return results

    async def check_run_lock(self, trust_site_id: str) -> None:
        """Nothing to check: a lock held in this process's memory cannot be lost (a :class:`~calm_azure_sync.FencedStore`)."""

    async def data_version(self) -> int:
        """A number every write of users, grants and groups changes (a :class:`~calm_azure_sync.VersionedStore`)."""
        return self._version

    async def load_state(self, trust_site_id: str) -> SyncState:
        """The trust's saved :class:`~calm_azure_sync.SyncState` (``SyncState()`` when none was saved).

        Raises :class:`~calm_azure_sync.ConfigError` when the saved state cannot be read.
        """
        text = self._states.get(trust_site_id)
        if text is None:
            return SyncState()
        return state_from_json(text, where=_where(trust_site_id))

    async def save_state(self, trust_site_id: str, state: SyncState) -> None:
        """Replace the trust's state with a copy of ``state``; a state that cannot be stored raises ConfigError."""
        self._states[trust_site_id] = state_to_json(state, where=_where(trust_site_id))

    async def load_delta(self, trust_site_id: str) -> DeltaCache | None:
        """The trust's delta cache, or ``None`` when none was saved."""
        return self._deltas.get(trust_site_id)

    async def load_delta_head(self, trust_site_id: str) -> DeltaHead | None:
        """The trust's delta cache head, or ``None`` when none was saved."""
        cache = self._deltas.get(trust_site_id)
        return None if cache is None else cache.head

    async def load_delta_rows(self, trust_site_id: str, member_ids: Iterable[str]) -> DeltaRows:
        """Some rows of the trust's delta cache (a :class:`~calm_azure_sync.DeltaRowsStore`)."""
        cache = self._deltas.get(trust_site_id)
        return rows_of({}, {}, ()) if cache is None else rows_of(cache.groups, cache.users, member_ids)

    async def save_delta(self, trust_site_id: str, write: DeltaCacheWrite) -> None:
        """Apply ``write`` to the trust's delta cache."""
        self._deltas[trust_site_id] = write.applied_to(self._deltas.get(trust_site_id))

    async def clear_delta(self, trust_site_id: str) -> None:
        """Drop the trust's delta cache."""
        self._deltas.pop(trust_site_id, None)

    @contextlib.asynccontextmanager
    async def run_lock(self, trust_site_id: str) -> AsyncIterator[None]:
        """Hold the import lock of ``trust_site_id``; a second holder gets ImportAlreadyRunningError.

        The lock never waits: an import that finds another one running fails
        at once, so a scheduler does not pile imports up behind each other.
        """
        if trust_site_id in self._locked_trusts:
            raise ImportAlreadyRunningError(trust_site_id)
        self._locked_trusts.add(trust_site_id)
        try:
            yield
        finally:
            self._locked_trusts.discard(trust_site_id)

    async def add_user(self, email: str, display_name: str, *, user_id: str | None = None) -> str:
        """Add a manually invited user and return its id.

        Raises ``ValueError`` when another user has the email (in any case) or
        the id is taken.
        """
        self._version += 1
        return self._tables.add_user(email, display_name, user_id)

    async def grant(self, user_id: str, site_id: str, module: str, role: Role | str) -> None:
        """Give ``user_id`` a manual grant; ``role`` may be a string (``"manager"``).

        Raises ``KeyError`` for an unknown user and ``ConfigError`` for an unknown role.
        """
        self._version += 1
        self._tables.grant(user_id, site_id, module, role)

    async def grants(self, user_id: str) -> set[Grant]:
        """Every grant of ``user_id``, manual and azure. Raises ``KeyError`` for an unknown user."""
        return self._tables.grants_of(checked_id("user_id", user_id))

    async def set_active(self, user_id: str, active: bool) -> None:
        """A person (not the sync) activates or deactivates ``user_id``; the sync never undoes it.

        Raises ``KeyError`` for an unknown user.
        """
        self._version += 1
        self._tables.set_active(user_id, active)

    async def user(self, user_id: str) -> StoredUser:
        """The user with ``user_id``. Raises ``KeyError`` when there is none."""
        return self._tables.users[checked_id("user_id", user_id)]

    async def users(self) -> list[StoredUser]:
        """Every user, in the order they were added."""
        return list(self._tables.users.values())

    async def groups(self, trust_site_id: str) -> list[SyncedGroup]:
        """The synced groups of ``trust_site_id`` (retired ones too), by display name."""
        return self._tables.groups_of(checked_id("trust_site_id", trust_site_id))

    async def group_members(self, group_external_id: str, trust_site_id: str | None = None) -> frozenset[str]:
        """External ids of the synced group's members.

        A group id names one Azure group, but each trust mirrors its mapped
        groups on its own (their members are that trust's in-scope users):
        give ``trust_site_id`` for one trust's view; ``None`` joins every
        trust mirroring the group. Raises ``KeyError`` when none does.
        """
        return self._tables.members_of(
            checked_id("group_external_id", group_external_id), checked_optional_id("trust_site_id", trust_site_id)
        )


def _where(trust_site_id: str) -> str:
    """How a stored state's errors name it."""
    return f"the sync state of trust {trust_site_id!r}"
