"""The SQLite user store: the embedded default for hosts without their own users table.

Standard-library :mod:`sqlite3` in WAL mode with foreign keys on. The schema
(see docs/stores.md) is created on first use and versioned in
``calm_store_schema``.

How ``apply`` stays fast and safe
---------------------------------
One ``apply`` call is one ``BEGIN IMMEDIATE`` transaction. Inside it the store
loads just the rows the batch touches (the users named by external id, user
id or email, their grants when a rule reads them, and the synced groups it
names with those users' memberships) into a
:class:`~calm_azure_sync.store.rules.UserTables`, applies the batch there
with the same rules as the in-memory store, and writes back the logged
mutations with ``executemany``: user rows first, in order, then grant rows,
group rows and membership rows, each in order. A change those rules reject writes nothing. If the database still
refuses a write (a host's trigger or constraint), the batch's writes are
rolled back to a savepoint and the batch is replayed one change at a time,
each user's changes under a savepoint and each change under a nested one, so
only the refused change fails. The transaction commits once: a crash anywhere
in the batch leaves none of it, so no user is ever half-written.
``apply_with_state`` saves the sync state in the same transaction, and while
this object holds the trust's run lock every write checks the lease first,
inside its transaction (see :meth:`SqliteUserStore.run_lock`). Database
failures are :class:`~calm_azure_sync.StoreError`.

The connection is used from worker threads (:func:`asyncio.to_thread`) under a
lock, so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

import attrs

from .._async_closing import AsyncClosing
from .._gc import collector_paused
from .._query_args import checked_id, checked_optional_id
from .._text import clean_text
from ..core.plan import Change
from ..core.state import SyncState
from ..errors import StoreError
from ..incremental import DeltaCache, DeltaCacheWrite, DeltaHead
from ..incremental.partial import DeltaRows
from ..model import Role
from ..store.protocol import ChangeResult, Grant, PeopleRows, StoredUser, StoreState, SyncedGroup
from . import _delta, _helpers
from ._db import Fence, ThreadedConnection, write_transaction

# The run lock, the schema, the reads and the writes live in their own
# modules; the names below stay importable from here, where this module's
# callers and fault-injecting tests look them up (and patch them: the store
# calls _write, _load_state and _release_lock through this module).
from ._lock import acquire_lock as _acquire_lock
from ._lock import check_holder as _check_holder
from ._lock import fence as _lock_fence
from ._lock import release_lock as _release_lock
from ._lock import renew_lock as _renew_lock
from ._read import load_people as _load_people
from ._read import load_state as _load_state
from ._read import load_tables as _load_tables
from ._schema import MIGRATIONS as _MIGRATIONS  # noqa: F401 - patched by the migration tests
from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._schema import setup_store as _setup_store
from ._state import load_sync_state as _load_sync_state
from ._state import save_sync_state as _save_sync_state
from ._state import write_sync_state as _write_sync_state
from ._write import write as _write

__all__ = ["SqliteUserStore"]

logger = logging.getLogger("calm_azure_sync.store.sqlite")  # its name before the move: hosts may filter by it

_T = TypeVar("_T")

StateAfter = Callable[[Sequence[ChangeResult]], SyncState]


def _apply_batch(
    connection: sqlite3.Connection,
    trust_site_id: str,
    changes: Sequence[Change],
    fence: Fence | None = None,
    state_after: tuple[StateAfter, str] | None = None,
) -> list[ChangeResult]:
    """One batch in one transaction; with ``state_after`` (the function and its label) the sync state too."""
    with write_transaction(connection, fence):
        connection.execute("SAVEPOINT calm_batch")
        try:
            # Cycle-free and allocation-heavy (rows read, rules, rows written): see _gc.py.
            with collector_paused():
                tables = _load_tables(connection, trust_site_id, changes)
                results = tables.apply(trust_site_id, changes)
                assert tables.log is not None
                _write(connection, tables.log)
        except (sqlite3.IntegrityError, UnicodeEncodeError):
            # UnicodeEncodeError: text the rules let through that UTF-8
            # cannot encode (they replace or refuse all they know of).
            connection.execute("ROLLBACK TO calm_batch")
            connection.execute("RELEASE calm_batch")
            results = _apply_one_by_one(connection, trust_site_id, changes)
        else:
            connection.execute("RELEASE calm_batch")
        if state_after is not None:
            # In the batch's transaction: the memory commits with the effects it accounts for.
            state_of, where = state_after
            _write_sync_state(connection, trust_site_id, state_of(results), where)
        return results


def _apply_one_by_one(
    connection: sqlite3.Connection, trust_site_id: str, changes: Sequence[Change]
) -> list[ChangeResult]:
    """The slow path, when the database refused a write the rules allowed.

    Each user's changes (consecutive changes with one external id) run under a
    savepoint, each change under a nested one, re-reading its rows first, so a
    refused change is rolled back alone and reported; the others apply.
    """
    results: list[ChangeResult] = []
    for _external_id, group in itertools.groupby(changes, key=lambda change: change.external_id):
        connection.execute("SAVEPOINT calm_user")
        for change in group:
            connection.execute("SAVEPOINT calm_change")
            try:
                tables = _load_tables(connection, trust_site_id, [change])
                result = tables.apply_one(trust_site_id, change)
                assert tables.log is not None
                _write(connection, tables.log)
            except (sqlite3.IntegrityError, UnicodeEncodeError) as exc:
                connection.execute("ROLLBACK TO calm_change")
                result = ChangeResult(change, f"the database refused the change: {clean_text(str(exc))}")
            connection.execute("RELEASE calm_change")
            results.append(result)
        connection.execute("RELEASE calm_user")
    return results


@attrs.define
class SqliteUserStore(AsyncClosing):
    """A :class:`~calm_azure_sync.UserStore` in one SQLite file, usable from several processes.

    ``SqliteUserStore("calm.db")`` creates the file and its schema on first
    use. Each :meth:`apply` is one transaction: a crash mid-import leaves no
    half-written user. ``busy_timeout_ms`` is how long a call waits for
    another process's write to finish. ``lock_lease`` is how long the run
    lock outlives a holder that stops renewing it (the holder renews it every
    quarter lease while it runs; see :meth:`run_lock`).

    Offers the same host helpers as :class:`~calm_azure_sync.InMemoryUserStore`,
    and is a :class:`~calm_azure_sync.SyncStateStore` (table ``sync_state``
    in the same file) and a :class:`~calm_azure_sync.DeltaCacheStore`
    (tables ``delta_meta``, ``delta_groups``, ``delta_members``, ``delta_users``).
    Close it when done: ``async with``, ``await store.aclose()``, or the
    synchronous :meth:`close`.
    """

    mirrors_groups: ClassVar[bool] = True
    """It persists synced groups and memberships, so the reconciler plans group changes for it."""

    path: str | os.PathLike[str]
    busy_timeout_ms: int = 30_000
    lock_lease: dt.timedelta = dt.timedelta(minutes=2)
    _db: ThreadedConnection = attrs.field(init=False)
    # trust -> the holder token of the run lock this object holds: every write of that trust checks it.
    _held: dict[str, str] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._db = ThreadedConnection(self.path, _setup_store, self.busy_timeout_ms)

    async def aclose(self) -> None:
        """Close the database connection, in a worker thread (it waits for a call in progress)."""
        await asyncio.to_thread(self._db.close)

    def close(self) -> None:
        """Close the database connection (synchronous: blocks until a call in progress ends)."""
        self._db.close()

    async def _run(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(connection, *args)`` in the worker thread; a database failure as a :class:`StoreError`."""
        try:
            return await self._db.run(fn, *args)
        except sqlite3.Error as error:
            raise StoreError(
                f"the SQLite user store {os.fspath(self.path)!r} failed to {what}: {clean_text(str(error))}"
            ) from error

    def _fence(self, trust_site_id: str) -> Fence | None:
        holder = self._held.get(trust_site_id)
        return None if holder is None else _lock_fence(trust_site_id, holder)

    async def load(self, trust_site_id: str) -> StoreState:
        """Every user, the synced grants of ``trust_site_id``, and who holds manual grants."""
        return await self._run(f"load trust {trust_site_id!r}", _load_state, checked_id("trust_site_id", trust_site_id))

    async def load_people(
        self, trust_site_id: str, external_ids: Iterable[str], email_keys: Iterable[str]
    ) -> PeopleRows:
        """Some people's rows (a :class:`~calm_azure_sync.PeopleStore`): see ``PeopleStore.load_people``."""
        return await self._run(
            f"load people of trust {trust_site_id!r}", _load_people, checked_id("trust_site_id", trust_site_id),
            sorted(external_ids), sorted(email_keys),
        )

    async def apply(self, trust_site_id: str, changes: Sequence[Change]) -> Sequence[ChangeResult]:
        """Apply ``changes`` in one transaction; one :class:`ChangeResult` per change, in order."""
        if not changes:
            return []
        return await self._run(
            f"apply changes to trust {trust_site_id!r}", _apply_batch, trust_site_id, changes,
            self._fence(trust_site_id),
        )

    async def apply_with_state(
        self, trust_site_id: str, changes: Sequence[Change], state_after: StateAfter
    ) -> Sequence[ChangeResult]:
        """Apply ``changes`` and save ``state_after(results)`` in one transaction (a :class:`~calm_azure_sync.StateWithChanges`)."""
        return await self._run(
            f"apply changes to trust {trust_site_id!r}", _apply_batch, trust_site_id, changes,
            self._fence(trust_site_id), (state_after, self._state_label(trust_site_id)),
        )

    async def check_run_lock(self, trust_site_id: str) -> None:
        """Raise :class:`~calm_azure_sync.RunLockLostError` if another import took this object's lock over.

        One primary-key read (a :class:`~calm_azure_sync.FencedStore`); at once outside a ``run_lock`` block.
        """
        holder = self._held.get(trust_site_id)
        if holder is not None:
            await self._run(f"check the run lock of trust {trust_site_id!r}", _check_holder, trust_site_id, holder)

    async def data_version(self) -> int:
        """A number every write of users, grants and groups through this store changes, in any process.

        It makes the store a :class:`~calm_azure_sync.VersionedStore`; writes
        to the sync state and the delta cache leave it as it is.
        """
        return await self._run("read the data version", _helpers.data_version, os.fspath(self.path))

    async def load_state(self, trust_site_id: str) -> SyncState:
        """The trust's saved :class:`~calm_azure_sync.SyncState` (``SyncState()`` when none was saved).

        Raises :class:`~calm_azure_sync.ConfigError` when the stored row cannot
        be read (corrupt, or written by a newer calm-azure-sync): never a reset.
        """
        return await self._run(
            f"load the sync state of trust {trust_site_id!r}", _load_sync_state, trust_site_id,
            self._state_label(trust_site_id),
        )

    async def save_state(self, trust_site_id: str, state: SyncState) -> None:
        """Replace the trust's state in one transaction (row ``sync_state``); ConfigError if it cannot be stored."""
        await self._run(
            f"save the sync state of trust {trust_site_id!r}", _save_sync_state, trust_site_id, state,
            self._state_label(trust_site_id), self._fence(trust_site_id),
        )

    async def load_delta(self, trust_site_id: str) -> DeltaCache | None:
        """The trust's delta cache, or ``None`` (none saved; rows unreadable or of another version: logged)."""
        where = f"the delta cache of trust {trust_site_id!r} in {os.fspath(self.path)}"
        return await self._run(f"load {where}", _delta.load_delta, trust_site_id, where)

    async def load_delta_head(self, trust_site_id: str) -> DeltaHead | None:
        """The trust's delta cache head (meta row and tracked group ids): what a round needs to start."""
        where = f"the delta cache of trust {trust_site_id!r} in {os.fspath(self.path)}"
        return await self._run(f"load {where}", _delta.load_delta_head, trust_site_id, where)

    async def load_delta_rows(self, trust_site_id: str, member_ids: Iterable[str]) -> DeltaRows:
        """Some rows of the trust's delta cache (a :class:`~calm_azure_sync.DeltaRowsStore`): see its protocol."""
        return await self._run(
            f"load rows of the delta cache of trust {trust_site_id!r}", _delta.load_delta_rows, trust_site_id,
            sorted(member_ids),
        )

    async def save_delta(self, trust_site_id: str, write: DeltaCacheWrite) -> None:
        """Apply ``write`` to the trust's delta cache rows in one transaction."""
        await self._run(
            f"save the delta cache of trust {trust_site_id!r}", _delta.save_delta, trust_site_id, write,
            self._fence(trust_site_id),
        )

    async def clear_delta(self, trust_site_id: str) -> None:
        """Drop the trust's delta cache rows."""
        await self._run(
            f"clear the delta cache of trust {trust_site_id!r}", _delta.clear_delta, trust_site_id,
            self._fence(trust_site_id),
        )

    def _state_label(self, trust_site_id: str) -> str:
        return f"the sync state of trust {trust_site_id!r} in {os.fspath(self.path)}"

    @contextlib.asynccontextmanager
    async def run_lock(self, trust_site_id: str) -> AsyncIterator[None]:
        """Hold the import lock of ``trust_site_id`` across every process using this file.

        The lock is a row in ``run_locks`` naming its holder (a random token,
        the pid and the hostname) and a lease end. While held, the lease is
        renewed every quarter ``lock_lease``. Another holder gets
        :class:`~calm_azure_sync.ImportAlreadyRunningError` at once, unless
        the row's lease has ended or its pid is gone on this same host: then
        the lock is taken over (a crashed import never blocks the next one
        for longer than the lease). Released on exit. While held, this
        object's writes of the trust check the row inside their transaction:
        once another import took the lease over they raise
        :class:`~calm_azure_sync.RunLockLostError` and write nothing.
        """
        holder = uuid.uuid4().hex
        await self._run(f"take the run lock of trust {trust_site_id!r}", _acquire_lock, trust_site_id, holder, self.lock_lease)
        self._held[trust_site_id] = holder
        renewing = asyncio.create_task(self._keep_renewing(trust_site_id, holder))
        try:
            yield
        finally:
            self._held.pop(trust_site_id, None)
            renewing.cancel()
            # Releasing must never mask how the import ended: if it fails, the
            # lease lets the next import take the lock over.
            try:
                await renewing
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.warning("renewing the run lock of %s failed", trust_site_id, exc_info=True)
            try:
                await self._db.run(_release_lock, trust_site_id, holder)
            except Exception:
                logger.warning(
                    "releasing the run lock of %s failed; it expires with its lease", trust_site_id, exc_info=True
                )

    async def _keep_renewing(self, trust_site_id: str, holder: str) -> None:
        while True:
            await asyncio.sleep(self.lock_lease.total_seconds() / 4)
            try:
                still_ours = await self._db.run(_renew_lock, trust_site_id, holder, self.lock_lease)
            except sqlite3.Error as exc:
                # A busy database can delay one renewal; the next one may pass
                # well within the lease.
                logger.warning("could not renew the run lock of trust %r: %s", trust_site_id, exc)
                continue
            if not still_ours:
                logger.error("the run lock of trust %r was taken over by another import", trust_site_id)
                return

    async def add_user(self, email: str, display_name: str, *, user_id: str | None = None) -> str:
        """Add a manually invited user and return its id.

        Raises ``ValueError`` when another user has the email (in any case) or
        the id is taken.
        """
        return await self._run("add a user", _helpers.add_user, email, display_name, user_id)

    async def grant(self, user_id: str, site_id: str, module: str, role: Role | str) -> None:
        """Give ``user_id`` a manual grant; ``role`` may be a string (``"manager"``).

        Raises ``KeyError`` for an unknown user and ``ConfigError`` for an unknown role.
        """
        await self._run("grant access", _helpers.grant, user_id, site_id, module, role)

    async def grants(self, user_id: str) -> set[Grant]:
        """Every grant of ``user_id``, manual and azure. Raises ``KeyError`` for an unknown user."""
        return await self._run("read grants", _helpers.grants, checked_id("user_id", user_id))

    async def set_active(self, user_id: str, active: bool) -> None:
        """A person (not the sync) activates or deactivates ``user_id``; the sync never undoes it.

        Raises ``KeyError`` for an unknown user.
        """
        await self._run("change a user's activation", _helpers.set_active, user_id, active)

    async def user(self, user_id: str) -> StoredUser:
        """The user with ``user_id``. Raises ``KeyError`` when there is none."""
        return await self._run("read a user", _helpers.user, checked_id("user_id", user_id))

    async def users(self) -> list[StoredUser]:
        """Every user, in the order they were added."""
        return await self._run("read users", _helpers.users)

    async def groups(self, trust_site_id: str) -> list[SyncedGroup]:
        """The synced groups of ``trust_site_id`` (retired ones too), by display name."""
        return await self._run("read synced groups", _helpers.groups, checked_id("trust_site_id", trust_site_id))

    async def group_members(self, group_external_id: str, trust_site_id: str | None = None) -> frozenset[str]:
        """External ids of the synced group's members.

        A group id names one Azure group, but each trust mirrors its mapped
        groups on its own (their members are that trust's in-scope users):
        give ``trust_site_id`` for one trust's view; ``None`` joins every
        trust mirroring the group. Raises ``KeyError`` when none does.
        """
        return await self._run(
            "read group members",
            _helpers.group_members,
            checked_id("group_external_id", group_external_id),
            checked_optional_id("trust_site_id", trust_site_id),
        )
