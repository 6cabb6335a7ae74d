"""What the sync needs from the host's user store.

A host implements :class:`UserStore` over its own users table (or uses a
shipped store); :mod:`calm_azure_sync.testing.store_conformance` checks an
implementation against the behaviour described here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import attrs

from ..core.plan import Change
from ..errors import ConfigError
from ..model import Role, email_key

if TYPE_CHECKING:  # annotations only: the state module's holds import the plan, whose reviews import this
    from ..core.state import SyncState

__all__ = [
    "ChangeOutcome",
    "ChangeResult",
    "FencedStore",
    "Grant",
    "GrantReader",
    "GrantSource",
    "PeopleIndex",
    "PeopleRows",
    "PeopleStore",
    "StateWithChanges",
    "StoreState",
    "StoredUser",
    "SyncedGroup",
    "UserStore",
    "VersionedStore",
    "checked_data_version",
    "people_rows",
    "saves_state_with_changes",
]

GrantSource = Literal["manual", "azure"]

ChangeOutcome = Literal["applied", "unchanged", "failed"]
"""What a store did with one change: ``applied`` it; left everything ``unchanged``
(the change was already true, or a rule refused it harmlessly: a deactivation
while other access remains, a create whose user already existed); or ``failed``
(``ChangeResult.error`` says why)."""


@attrs.frozen
class StoredUser:
    """A user as the store holds it.

    ``external_id`` is the Entra object id of a synced user, ``None`` for a
    user invited by hand. ``deactivated_by_sync`` is true only while the user
    is inactive because the sync deactivated them: the sync reactivates those
    users when they come back into scope, and never anyone a person deactivated.
    ``tenant_id`` is the Entra tenant the synced account lives in (API §13):
    identity is (tenant, object id); ``None`` for a user invited by hand, or
    one synced before tenants were recorded (qualified by its next run).
    """

    user_id: str
    email: str
    display_name: str
    external_id: str | None = None
    given_name: str | None = None
    surname: str | None = None
    active: bool = True
    deactivated_by_sync: bool = False
    tenant_id: str | None = None


@attrs.frozen
class Grant:
    """One access grant: ``role`` on ``module`` at ``site_id``, from ``source``."""

    site_id: str
    module: str
    role: Role
    source: GrantSource


@attrs.frozen
class SyncedGroup:
    """A mapped Azure group as the store mirrors it in one trust.

    ``external_id`` is the group's Entra object id; ``site_ids`` the sites its
    mappings point at; ``retired`` is true once its mapping was removed (the
    group is kept, its members cleared; groups are never deleted).
    """

    external_id: str
    trust_site_id: str
    display_name: str
    site_ids: tuple[str, ...] = ()
    retired: bool = False


@attrs.frozen
class StoreState:
    """What the store holds, as the planner needs it.

    ``users``: store user id -> :class:`StoredUser`: every user the store has
    (synced users are found by external id, invited ones by email).
    ``synced_access``: external id -> {(site_id, module): Role}: the grants the
    sync made in this trust. ``manual_access_user_ids``: store user ids that
    hold any manual grant (the sync never deactivates them).
    ``other_access_user_ids``: store user ids that hold any grant this trust's
    sync did not make (a manual grant, or another trust's synced grant): the
    sync never deactivates them either.
    ``groups``: group external id -> :class:`SyncedGroup` of this trust;
    ``group_members``: group external id -> the member external ids.
    """

    users: Mapping[str, StoredUser] = attrs.field(factory=dict)
    synced_access: Mapping[str, Mapping[tuple[str, str], Role]] = attrs.field(factory=dict)
    manual_access_user_ids: frozenset[str] = frozenset()
    other_access_user_ids: frozenset[str] = frozenset()
    groups: Mapping[str, SyncedGroup] = attrs.field(factory=dict)
    group_members: Mapping[str, frozenset[str]] = attrs.field(factory=dict)

    @property
    def synced_users(self) -> int:
        """How many Azure accounts hold synced access in the trust (the mass-removal guard's denominator)."""
        return sum(1 for access in self.synced_access.values() if access)

    def narrowed(self, external_ids: Iterable[str], user_ids: Iterable[str] = ()) -> StoreState:
        """The store as far as some people go: their store users and only their access.

        A person's store users are those synced from ``external_ids`` and the
        ``user_ids`` given (found by email, say). What an explanation plans one
        person over, and what an incremental run plans the people its changes
        touched over. The groups stay whole; their members are narrowed to
        these people.
        """
        ids = set(external_ids)
        wanted = set(user_ids)
        users = {
            user_id: stored
            for user_id, stored in self.users.items()
            if user_id in wanted or (stored.external_id is not None and stored.external_id in ids)
        }
        external = frozenset(ids | {stored.external_id for stored in users.values() if stored.external_id is not None})
        access = self.synced_access
        return StoreState(
            users=users,
            synced_access={ext: access[ext] for ext in external if ext in access},
            manual_access_user_ids=self.manual_access_user_ids & users.keys(),
            other_access_user_ids=self.other_access_user_ids & users.keys(),
            groups=self.groups,
            group_members={group: members & external for group, members in self.group_members.items()},
        )


def _default_outcome(result: ChangeResult) -> ChangeOutcome:
    return "applied" if result.error is None else "failed"


def _check_outcome(result: ChangeResult, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("applied", "unchanged", "failed"):
        raise ValueError(f"ChangeResult.outcome: {value!r} is not applied, unchanged or failed")
    if (value == "failed") != (result.error is not None):
        raise ValueError("ChangeResult: outcome 'failed' goes with an error, and only it")


@attrs.frozen
class ChangeResult:
    """What a store did with one change.

    ``error`` says why it failed; ``outcome`` is ``"applied"``, ``"unchanged"``
    (nothing needed writing, or a rule refused it harmlessly) or ``"failed"``.
    It defaults from ``error``, so ``ChangeResult(change)`` means applied. The
    Import Log reports outcomes: an ``unchanged`` change records no event that
    would claim it happened.
    """

    change: Change
    error: str | None = None
    outcome: ChangeOutcome = attrs.field(
        default=attrs.Factory(_default_outcome, takes_self=True), validator=_check_outcome
    )

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

    - ``CreateUser``: a new active user carrying ``external_id`` and
      ``tenant_id`` (when a user already carries the external id: nothing is
      written, outcome ``unchanged``);
    - ``LinkUser``: set ``external_id`` and ``tenant_id`` on user ``user_id``,
      refresh names/email;
    - ``UpdateUser``: set email and names, and ``tenant_id`` unless the change's
      is ``None`` (not known: the stored one stays); when ``reactivate``, also
      ``active`` and clear ``deactivated_by_sync``;
    - ``Assign``/``Unassign``: upsert/delete the *azure* grant of the user with
      that external id at (site, module), recorded against ``trust_site_id``;
      manual grants are never touched;
    - ``RelinkUser``: user ``user_id`` must carry ``previous_external_id``; it
      takes ``external_id``, ``tenant_id``, the email and names; its grants
      (manual and synced) stay with it;
    - ``DeactivateUser``: mark inactive and ``deactivated_by_sync``, only if the
      user then holds no grant of any source (otherwise outcome
      ``unchanged``). Never delete a user;
    - ``UpsertGroup``: create the trust's synced group or refresh its name and
      sites (and un-retire it); ``AddGroupMember``/``RemoveGroupMember``: add
      or remove the membership of the synced user with that external id (a
      removal naming an id no user carries is ``unchanged``); each trust
      mirrors its own groups; ``RetireGroup``: mark the group retired and clear its members. Groups
      are never deleted.

    Each :class:`ChangeResult` carries the ``outcome``: ``applied``,
    ``unchanged`` (nothing to write: already so, a deactivation refused because
    access remains, a create whose user already existed) or ``failed`` with
    ``error``; the others still apply. A store should make each batch
    all-or-nothing across a crash, so no user is ever half-written.

    Stores that also implement :class:`~calm_azure_sync.SyncStateStore` keep
    the sync's per-trust memory (holds, baselines); the reconciler requires
    one (the user store, or one passed as ``state=``).
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


@runtime_checkable
class GrantReader(Protocol):
    """An optional capability of a :class:`UserStore`: one user's grants, of every source and trust.

    :meth:`~calm_azure_sync.Reconciler.explain` uses it to show a person's
    manual grants and their access from other trusts. All shipped stores
    implement it; without it an explanation says it cannot list them.
    """

    async def grants(self, user_id: str) -> set[Grant]:
        """Every grant of store user ``user_id`` (manual and synced, every site)."""
        ...


@runtime_checkable
class VersionedStore(Protocol):
    """A store that can say whether anything changed since a moment: optional, for settled runs.

    ``data_version()`` is a number that changes (never repeats) whenever
    anything :meth:`UserStore.load` of any trust returns may have changed
    through the store: an applied batch, a user added by hand, a grant, an
    activation. Writes to the sync state and the delta cache do not count.
    With it, an incremental run that finds nothing changed since a run that
    planned nothing skips the store load and the planner
    (:mod:`calm_azure_sync.incremental.settled`). A store that cannot promise it simply
    does not implement it. Rows edited behind the store's back (raw SQL) are
    not seen until the next full read (``full_resync_interval``).

    Planning by difference (:mod:`calm_azure_sync.incremental.difference`)
    also counts on each call of ``apply`` (or ``apply_with_state``) that
    writes moving it by exactly one, as every shipped store does: a run
    expects the version it leaves to be the one it read plus the batches it
    wrote. A store that moves it otherwise is never planned by difference
    (every run plans everyone), which is safe.
    """

    async def data_version(self) -> int:
        """The current data version."""
        ...


@attrs.frozen
class PeopleRows:
    """Some people's rows of a trust, and the trust's count of synced users.

    ``state``: the store users synced from the ``external_ids`` asked for or
    holding one of the ``email_keys`` (:func:`~calm_azure_sync.model.email_key`),
    their synced access in the trust, which of them hold other access, and
    the trust's mirrored groups with only their memberships (as
    :meth:`StoreState.narrowed` gives them). ``synced_users``: how many
    Azure accounts hold synced access in the trust (the mass-removal guard's
    denominator).
    """

    state: StoreState
    synced_users: int


@runtime_checkable
class PeopleStore(Protocol):
    """A store that loads some people's rows without the whole trust: optional, for planning by difference.

    ``load_people(trust_site_id, external_ids, email_keys)`` returns what
    ``people_rows(await load(trust_site_id), external_ids, email_keys)``
    would, in one read transaction. Without it, a run that plans by
    difference loads the whole trust and narrows it.
    """

    async def load_people(
        self, trust_site_id: str, external_ids: Iterable[str], email_keys: Iterable[str]
    ) -> PeopleRows:
        """The rows of the people with these object ids or email keys."""
        ...


class PeopleIndex:
    """A whole store state indexed by email key once, answering :class:`PeopleStore`'s question in memory."""

    def __init__(self, state: StoreState) -> None:
        self.state = state
        self._by_key: dict[str, list[str]] = {}
        for user_id, stored in state.users.items():
            self._by_key.setdefault(email_key(stored.email), []).append(user_id)
        self._synced_users = state.synced_users  # counted once: a search asks a round or two

    def rows(self, external_ids: Iterable[str], email_keys: Iterable[str]) -> PeopleRows:
        """What :meth:`PeopleStore.load_people` returns for these object ids and email keys."""
        by_email = [user_id for key in set(email_keys) for user_id in self._by_key.get(key, ())]
        return PeopleRows(self.state.narrowed(external_ids, by_email), self._synced_users)


def people_rows(state: StoreState, external_ids: Iterable[str], email_keys: Iterable[str]) -> PeopleRows:
    """The rows :meth:`PeopleStore.load_people` returns, worked out from a whole trust's ``state``."""
    return PeopleIndex(state).rows(external_ids, email_keys)


@runtime_checkable
class StateWithChanges(Protocol):
    """A store that saves a trust's sync state in the same transaction as a batch: optional.

    ``apply_with_state(trust_site_id, changes, state_after)`` applies
    ``changes`` exactly as :meth:`UserStore.apply` does, then calls
    ``state_after(results)`` (a pure function of the batch's results; it
    must not do IO) and saves the :class:`~calm_azure_sync.SyncState` it
    returns as :meth:`~calm_azure_sync.SyncStateStore.save_state` would, and
    commits both at once: a crash leaves both or neither. The reconciler
    uses it for the batches whose effects its memory must account for (the
    last one, and any with a deactivation) when the user store is also the
    state store. Every shipped store implements it. A host store that does
    not gets the order of docs/stores.md ("A run's memory"), which is safe
    but leaves a crash window in which a re-activation by a person may be
    undone once.

    If ``state_after`` raises, or the state cannot be stored
    (:class:`~calm_azure_sync.ConfigError`), nothing of the batch is
    committed and the error propagates.
    """

    async def apply_with_state(
        self,
        trust_site_id: str,
        changes: Sequence[Change],
        state_after: Callable[[Sequence[ChangeResult]], SyncState],
    ) -> Sequence[ChangeResult]:
        """Apply ``changes`` and save ``state_after(results)`` in one transaction; the results."""
        ...


def saves_state_with_changes(store: object) -> bool:
    """Whether the reconciler may use ``store``'s :class:`StateWithChanges` capability.

    Only when its class defines ``apply_with_state`` itself, no less derived
    than its ``apply`` and ``save_state``: a host's wrapper that overrides
    ``apply`` and forwards other attributes through ``__getattr__`` (which
    ``isinstance`` accepts before Python 3.12), or a subclass of a shipped
    store that overrides ``apply`` or ``save_state`` only, would otherwise
    have its own methods skipped for a batch. Those get the order for stores
    without the capability instead.
    """
    if not isinstance(store, StateWithChanges):
        return False
    owner = _defined_by(type(store), "apply_with_state")
    if owner is None:
        return False
    return all(
        (other := _defined_by(type(store), name)) is None or issubclass(owner, other)
        for name in ("apply", "save_state")
    )


def _defined_by(cls: type, name: str) -> type | None:
    return next((klass for klass in cls.__mro__ if name in vars(klass)), None)


@runtime_checkable
class FencedStore(Protocol):
    """A store whose writes are fenced by its run lock: optional, implemented by every shipped store.

    Once the run lock a :meth:`UserStore.run_lock` block took is lost
    (PostgreSQL: its connection is gone; SQLite: another import took the
    lease over), every write of that trust through this store object raises
    :class:`~calm_azure_sync.RunLockLostError` inside its transaction and
    writes nothing. ``check_run_lock(trust_site_id)`` asks the same question
    without writing (one small query): the reconciler calls it before each
    Import Log entry it records after the read, so a run that lost its lock
    logs nothing but its own ``import_failed``. Outside a ``run_lock`` block
    it returns at once.
    """

    async def check_run_lock(self, trust_site_id: str) -> None:
        """Raise RunLockLostError when this store's run lock of the trust was lost."""
        ...


def checked_data_version(rows: Sequence[Sequence[Any]], where: str) -> int:
    """The one data-version row's number; anything else is a :class:`~calm_azure_sync.ConfigError`.

    A missing row must not read as a version (say 0): writes would then bump
    nothing, the number would never change, and a settled run would skip
    real changes.
    """
    if len(rows) != 1 or type(rows[0][0]) is not int:
        raise ConfigError(f"{where}: the data_version table must hold exactly one row with a number")
    return rows[0][0]
