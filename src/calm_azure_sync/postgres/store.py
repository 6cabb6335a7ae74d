"""The PostgreSQL user store: one server database for many trusts and many worker machines.

Same behaviour as :class:`~calm_azure_sync.SqliteUserStore` (both pass
:class:`~calm_azure_sync.testing.UserStoreConformance`), on psycopg 3's async
connections.

How ``apply`` stays fast and safe
---------------------------------
One ``apply`` call is one transaction (READ COMMITTED). Inside it the store
loads just the rows the batch touches (users named by external id, user id or
email key, ``SELECT … ORDER BY id FOR UPDATE``, and their grants; for a batch
of only group and membership changes, just which user carries each external
id, locked the same way) into a
:class:`~calm_azure_sync.store.rules.UserTables`, applies the batch there
with the rules every shipped store shares, and writes back the logged
mutations. The row locks make two batches touching one user (two trusts
sharing a person, or a host's ``grant`` at the same moment) take turns, so a
decision such as "no grant left, deactivate" is made on facts no one else can
change before the commit; the ``ORDER BY id`` takes them in one order
everywhere, which keeps deadlocks rare (one that happens is retried).

A row that does not exist yet cannot be locked: two batches creating the same
external id or email at once both see nothing, and the unique indexes let the
second one fail. That batch is then replayed from the start, and its new load
sees the other batch's committed row, so it refreshes that user instead of
duplicating it. A write the database refuses for another reason (a host's
trigger or constraint) is replayed one change at a time, each under a
savepoint, so only the refused change fails. Text is never the reason: every
text value is written and read through ``postgres/_codec.py``, which stores
any ``str`` (a NUL, a lone surrogate) reversibly, so this store keeps exactly
what the SQLite and in-memory stores keep.

Writes use the cheapest statement that keeps the order that matters: updates
of existing users first, in log order (an email freed by one update may be
taken by the next), then the batch's new users in one ``COPY``, then grants
(collapsed to their final value per key): ``COPY`` for new users' grants,
pipelined ``executemany`` for the rest. The transaction commits once, so a
crash anywhere leaves none of the batch: no user is ever half-written.

The run lock
------------
:meth:`PostgresUserStore.run_lock` takes ``pg_try_advisory_lock`` on a stable
64-bit hash of (schema, trust id) on a connection of its own, held for the
run: it holds across every process and machine using the database, never
waits, and the server releases it when that connection dies (a killed worker
never leaves a trust locked). While a run holds it, every ``apply``,
``apply_with_state``, ``save_state``, ``save_delta`` and ``clear_delta`` of
that trust is fenced: its transaction first takes the trust's fence key in
shared mode and checks that the lock's own session (pid and start time)
still holds the lock; the next holder takes the fence exclusively before its
run starts, so it waits for any write checked under the old holder. A run
whose lock connection was lost (and whose trust another worker may have
taken) writes nothing more (:class:`~calm_azure_sync.RunLockLostError`).
Database failures are :class:`~calm_azure_sync.StoreError`, psycopg's error
chained as the cause; the last batch of a run and its sync state commit in
one transaction (``apply_with_state``).

The delta cache
---------------
Incremental sync's cache is rows in four tables of its own, read in one
snapshot and written as the difference from the last run (``postgres/_delta.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any, ClassVar, Concatenate, Final, LiteralString, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from .._gc import collector_paused
from .._query_args import checked_id, checked_optional_id
from ..core.plan import Change
from ..core.state import SyncState
from ..incremental import DeltaCache, DeltaCacheWrite, DeltaHead
from ..incremental.partial import DeltaRows
from ..model import Role
from ..store.protocol import (
    ChangeResult,
    Grant,
    PeopleRows,
    StoredUser,
    StoreState,
    SyncedGroup,
    checked_data_version,
)
from ..store.rules import (
    UserTables,
    add_user_keys,
    batch_reads_grants,
    checked_grant,
    state_from_json,
    state_to_json,
)
from . import _delta, _lock, _read
from ._codec import from_db, to_db, to_db_optional
from ._db import Database, OnDatabase, advisory_key, database_errors
from ._schema import MIGRATIONS
from ._write import BatchWrites, Loaded

__all__ = ["PostgresUserStore"]

logger = logging.getLogger(__name__)

_UPSERT_GRANT: Final = (
    "INSERT INTO {schema}.grants (user_id, site_id, module, source, role, trust_site_id) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (user_id, site_id, module, source) "
    "DO UPDATE SET role = excluded.role, trust_site_id = excluded.trust_site_id"
)

# Errors after which a batch is simply run again: another transaction won a
# race (a unique key both created, a deadlock, a serialization failure).
_RETRY_BATCH: Final = (pg_errors.UniqueViolation, pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_BATCH_ATTEMPTS: Final = 4


def _refusal(error: psycopg.Error) -> str:
    message = error.diag.message_primary if error.diag.message_primary else str(error)
    return f"the database refused the change: {message}"


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _store_errors(
    action: str,
) -> Callable[
    [Callable[Concatenate[PostgresUserStore, _P], Coroutine[Any, Any, _T]]],
    Callable[Concatenate[PostgresUserStore, _P], Coroutine[Any, Any, _T]],
]:
    """A method whose psycopg errors become StoreErrors saying ``action`` ({0}: its first argument) failed."""

    def wrap(
        method: Callable[Concatenate[PostgresUserStore, _P], Coroutine[Any, Any, _T]],
    ) -> Callable[Concatenate[PostgresUserStore, _P], Coroutine[Any, Any, _T]]:
        async def call(self: PostgresUserStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
            with database_errors(self._what(action.format(*args))):
                return await method(self, *args, **kwargs)

        functools.update_wrapper(call, method)  # the name, docstring and signature the API reference shows
        return call

    return wrap


class PostgresUserStore(OnDatabase):
    """A :class:`~calm_azure_sync.UserStore` and :class:`~calm_azure_sync.SyncStateStore` in PostgreSQL.

    ``PostgresUserStore("postgresql://app@db/calm")`` opens a small pool of
    its own (at most ``pool_size`` connections, plus one per run lock held)
    on first use; ``PostgresUserStore(pool)`` uses the host's
    :class:`psycopg_pool.AsyncConnectionPool` (never closed here; a run lock
    takes one of its connections for the whole run, so size it for that).
    Tables live in ``schema`` (created if missing; a plain identifier,
    validated and quoted). Migrations run on first use or by
    ``await store.migrate()``; a database migrated by a newer calm-azure-sync
    is refused with :class:`~calm_azure_sync.ConfigError`.

    Offers the host helpers of the other shipped stores (``add_user``,
    ``grant``, ``grants``, ``set_active``, ``user``, ``users``), and is a
    :class:`~calm_azure_sync.DeltaCacheStore` (tables ``delta_meta``,
    ``delta_groups``, ``delta_members``, ``delta_users``). Call
    :meth:`close` (or use ``async with``) when done::

        async with PostgresUserStore(conninfo, schema="calm") as store:
            ann = await store.add_user("ann@example.org", "Ann Example")
    """

    mirrors_groups: ClassVar[bool] = True
    """The planner mirrors mapped groups and their members into this store."""

    def __init__(
        self,
        conninfo: str | AsyncConnectionPool[Any],
        *,
        schema: str = "calm_azure_sync",
        pool_size: int = 4,
    ) -> None:
        self._db = Database(
            conninfo, schema=schema, component="user_store", migrations=MIGRATIONS, pool_size=pool_size
        )
        self._held: dict[str, _lock.HeldLock] = {}

    def __repr__(self) -> str:
        # Never the conninfo: it may carry a password.
        return f"PostgresUserStore(schema={self._db.schema!r})"

    def _q(self, template: LiteralString) -> Any:
        return self._db.q(template)

    # -- reading ---------------------------------------------------------------

    @_store_errors("load trust {0!r}")
    async def load(self, trust_site_id: str) -> StoreState:
        """Every user, the synced grants of ``trust_site_id``, and who holds other access."""
        checked_id("trust_site_id", trust_site_id)
        async with self._db.connection() as connection:
            return await _read.load_state(connection, self._q, trust_site_id)

    @_store_errors("load people of trust {0!r}")
    async def load_people(
        self, trust_site_id: str, external_ids: Iterable[str], email_keys: Iterable[str]
    ) -> PeopleRows:
        """Some people's rows (a :class:`~calm_azure_sync.PeopleStore`): see ``PeopleStore.load_people``."""
        checked_id("trust_site_id", trust_site_id)
        async with self._db.connection() as connection:
            return await _read.load_people(connection, self._q, trust_site_id, external_ids, email_keys)

    # -- applying ----------------------------------------------------------------

    async def apply(self, trust_site_id: str, changes: Sequence[Change]) -> Sequence[ChangeResult]:
        """Apply ``changes`` in one transaction; one :class:`ChangeResult` per change, in order."""
        if not changes:
            return []
        return await self._apply(trust_site_id, list(changes), None)

    async def apply_with_state(
        self,
        trust_site_id: str,
        changes: Sequence[Change],
        state_after: Callable[[Sequence[ChangeResult]], SyncState],
    ) -> Sequence[ChangeResult]:
        """Apply ``changes`` and save ``state_after(results)`` in one transaction (a :class:`~calm_azure_sync.StateWithChanges`)."""
        return await self._apply(trust_site_id, list(changes), state_after)

    async def _apply(
        self,
        trust_site_id: str,
        changes: list[Change],
        state_after: Callable[[Sequence[ChangeResult]], SyncState] | None,
    ) -> Sequence[ChangeResult]:
        with database_errors(self._what(f"apply changes to trust {trust_site_id!r}")):
            return await self._apply_attempts(trust_site_id, changes, state_after)

    async def _apply_attempts(
        self,
        trust_site_id: str,
        changes: list[Change],
        state_after: Callable[[Sequence[ChangeResult]], SyncState] | None,
    ) -> Sequence[ChangeResult]:
        async with self._db.connection() as connection:
            for attempt in range(1, _BATCH_ATTEMPTS + 1):
                try:
                    return await self._apply_batch(connection, trust_site_id, changes, state_after)
                except _RETRY_BATCH as error:
                    # Another transaction won a race; the replay's load sees its rows.
                    logger.info(
                        "apply to trust %r: %s; replaying the batch", trust_site_id, type(error).__name__
                    )
                    await asyncio.sleep(0.01 * attempt)
                except (psycopg.IntegrityError, psycopg.DataError):
                    break
            return await self._apply_one_by_one(connection, trust_site_id, changes, state_after)

    async def _apply_batch(
        self,
        connection: psycopg.AsyncConnection[Any],
        trust_site_id: str,
        changes: Sequence[Change],
        state_after: Callable[[Sequence[ChangeResult]], SyncState] | None = None,
    ) -> list[ChangeResult]:
        async with connection.transaction():
            await self._check_lock(connection, trust_site_id)
            tables = await self._load_tables(connection, trust_site_id, changes)
            # Deciding the batch and building its rows: cycle-free and allocation-heavy (see _gc.py).
            with collector_paused():
                loaded = Loaded.of(tables, grants_read=batch_reads_grants(changes))
                results = tables.apply(trust_site_id, changes)
                writes = BatchWrites.of(tables, loaded)
            await self._write(connection, writes)
            if state_after is not None:
                await self._write_state(connection, trust_site_id, state_after(results))
        return results

    async def _apply_one_by_one(
        self,
        connection: psycopg.AsyncConnection[Any],
        trust_site_id: str,
        changes: Sequence[Change],
        state_after: Callable[[Sequence[ChangeResult]], SyncState] | None = None,
    ) -> list[ChangeResult]:
        """The slow path: each change under a savepoint, re-reading its rows, so a refused one fails alone."""
        results: list[ChangeResult] = []
        async with connection.transaction():
            await self._check_lock(connection, trust_site_id)
            for change in changes:
                try:
                    async with connection.transaction():
                        tables = await self._load_tables(connection, trust_site_id, [change])
                        (result,) = tables.apply(trust_site_id, [change])
                        await self._write(connection, BatchWrites.of(tables, None))
                except (psycopg.IntegrityError, psycopg.DataError) as error:
                    result = ChangeResult(change, _refusal(error))
                results.append(result)
            if state_after is not None:
                await self._write_state(connection, trust_site_id, state_after(results))
        return results

    async def _check_lock(self, connection: psycopg.AsyncConnection[Any], trust_site_id: str) -> None:
        """While this store holds the trust's run lock, refuse to write once the lock is gone.

        Called first in each writing transaction: it takes the trust's fence in
        shared mode (held to the commit) and checks that the lock's own
        session still holds the lock. A run that takes the lock after it waits
        for that fence, so this transaction commits before that run begins, or
        (its lock gone) never.
        """
        held = self._held.get(trust_site_id)
        if held is not None:
            await _lock.check_fence(connection, held, trust_site_id)

    async def check_run_lock(self, trust_site_id: str) -> None:
        """Raise :class:`~calm_azure_sync.RunLockLostError` if this object's run lock of the trust was lost.

        One ``SELECT 1`` on the lock's own connection (a :class:`~calm_azure_sync.FencedStore`):
        a session-level advisory lock is held exactly as long as its session
        lives, so a session that answers still holds it. At once outside a
        ``run_lock`` block.
        """
        held = self._held.get(trust_site_id)
        if held is not None:
            await _lock.check_session(held, trust_site_id)

    def _what(self, action: str) -> str:
        """How a StoreError names what failed (the schema, never the conninfo)."""
        return f"the PostgreSQL user store (schema {self._db.schema!r}) could not {action}"

    async def _load_tables(
        self, connection: psycopg.AsyncConnection[Any], trust_site_id: str, changes: Sequence[Change]
    ) -> UserTables:
        """The rows ``changes`` can read or collide with, locked (see ``postgres/_read.py``)."""
        return await _read.load_tables(connection, self._q, trust_site_id, changes)

    async def _write(self, connection: psycopg.AsyncConnection[Any], writes: BatchWrites) -> None:
        """Write the batch's rows (see postgres/_write.py for the order and the statements)."""
        await writes.send(connection, self._q)
        if writes.logged:
            await self._bump_data_version(connection)

    async def _bump_data_version(self, connection: psycopg.AsyncConnection[Any]) -> None:
        # Last in the writing transaction: the row is locked from here to the commit only,
        # so concurrent imports of other trusts wait for each other's commit, not their batch.
        await connection.execute(self._q("UPDATE {schema}.data_version SET version = version + 1"))

    @_store_errors("read the data version")
    async def data_version(self) -> int:
        """A number every write of users, grants and groups through this store changes, on any machine.

        It makes the store a :class:`~calm_azure_sync.VersionedStore`: it is
        transactional, so a write is counted exactly when it is visible.
        Writes to the sync state and the delta cache leave it as it is.
        """
        async with self._db.connection() as connection:
            cursor = await connection.execute(self._q("SELECT version FROM {schema}.data_version"))
            rows = await cursor.fetchall()
        return checked_data_version(rows, f"postgres schema {self._db.schema!r}")

    # -- the run lock --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def run_lock(self, trust_site_id: str) -> AsyncIterator[None]:
        """Hold the import lock of ``trust_site_id`` across every process and machine on this database.

        ``pg_try_advisory_lock`` on a dedicated connection held for the run: a
        second holder anywhere gets
        :class:`~calm_azure_sync.ImportAlreadyRunningError` at once, and the
        server frees the lock when the holder's connection dies. Released on exit.
        Once that connection is gone, this object's writes of the trust raise
        :class:`~calm_azure_sync.RunLockLostError` (see the module docstring).
        """
        key = advisory_key("run_lock", self._db.schema, to_db(trust_site_id))
        fence_key = advisory_key("run_fence", self._db.schema, to_db(trust_site_id))
        with database_errors(self._what(f"take the run lock of trust {trust_site_id!r}")):
            connection = await self._db.connect_dedicated()
        try:
            with database_errors(self._what(f"take the run lock of trust {trust_site_id!r}")):
                held = await _lock.take_lock(connection, trust_site_id, key, fence_key)
            self._held[trust_site_id] = held
            try:
                yield
            finally:
                del self._held[trust_site_id]
                await _lock.unlock(connection, trust_site_id, key)
        finally:
            try:
                await self._db.release_dedicated(connection)
            except Exception:
                logger.warning("closing the run lock connection of %r failed", trust_site_id, exc_info=True)

    # -- sync state ------------------------------------------------------------------

    @_store_errors("load the sync state of trust {0!r}")
    async def load_state(self, trust_site_id: str) -> SyncState:
        """The trust's :class:`~calm_azure_sync.SyncState` (``SyncState()`` when none was saved).

        A stored state this library cannot read raises :class:`~calm_azure_sync.ConfigError`.
        """
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                self._q("SELECT state FROM {schema}.sync_states WHERE trust_site_id = %s"), (to_db(trust_site_id),)
            )
            row = await cursor.fetchone()
        if row is None:
            return SyncState()
        return state_from_json(from_db(row[0]), where=self._state_label(trust_site_id))

    async def save_state(self, trust_site_id: str, state: SyncState) -> None:
        """Replace the trust's state in one transaction; ConfigError (old state kept) if it cannot be stored."""
        text = state_to_json(state, where=self._state_label(trust_site_id))
        with database_errors(self._what(f"save the sync state of trust {trust_site_id!r}")):
            async with self._db.connection() as connection, connection.transaction():
                await self._check_lock(connection, trust_site_id)
                await self._write_state_text(connection, trust_site_id, text)

    async def _write_state(self, connection: psycopg.AsyncConnection[Any], trust_site_id: str, state: SyncState) -> None:
        """Save ``state`` inside the caller's transaction (a batch's: see ``apply_with_state``)."""
        await self._write_state_text(
            connection, trust_site_id, state_to_json(state, where=self._state_label(trust_site_id))
        )

    async def _write_state_text(self, connection: psycopg.AsyncConnection[Any], trust_site_id: str, text: str) -> None:
        await connection.execute(
            self._q(
                "INSERT INTO {schema}.sync_states (trust_site_id, state, saved_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (trust_site_id) DO UPDATE SET state = excluded.state, saved_at = now()"
            ),
            (to_db(trust_site_id), to_db(text)),
        )

    def _state_label(self, trust_site_id: str) -> str:
        return f"the sync state of trust {trust_site_id!r} in postgres schema {self._db.schema!r}"

    # -- delta cache -------------------------------------------------------------------

    @_store_errors("load the delta cache of trust {0!r}")
    async def load_delta(self, trust_site_id: str) -> DeltaCache | None:
        """The trust's delta cache, or ``None`` (none saved; rows unreadable or of another version: logged)."""
        async with self._db.connection() as connection:
            return await _delta.load_delta(connection, self._q, trust_site_id, self._delta_label(trust_site_id))

    @_store_errors("load the delta cache of trust {0!r}")
    async def load_delta_head(self, trust_site_id: str) -> DeltaHead | None:
        """The trust's delta cache head (meta row and tracked group ids): what a round needs to start."""
        async with self._db.connection() as connection:
            return await _delta.load_delta_head(connection, self._q, trust_site_id, self._delta_label(trust_site_id))

    @_store_errors("load rows of the delta cache of trust {0!r}")
    async def load_delta_rows(self, trust_site_id: str, member_ids: Iterable[str]) -> DeltaRows:
        """Some rows of the trust's delta cache (a :class:`~calm_azure_sync.DeltaRowsStore`): see its protocol."""
        async with self._db.connection() as connection:
            return await _delta.load_delta_rows(connection, self._q, trust_site_id, member_ids)

    @_store_errors("save the delta cache of trust {0!r}")
    async def save_delta(self, trust_site_id: str, write: DeltaCacheWrite) -> None:
        """Apply ``write`` to the trust's delta cache rows in one transaction.

        Rows the database refuses (a host's constraint, a number out of range;
        never text, which the codec stores) leave no cache at all rather than
        a wrong one: the write is rolled back, the trust's cache dropped and a
        warning logged, and the next run reads in full.
        """
        async with self._db.connection() as connection:
            try:
                async with connection.transaction():
                    await self._check_lock(connection, trust_site_id)
                    await _delta.save_delta(connection, self._q, trust_site_id, write)
                return
            except psycopg.DataError as error:
                # A cache is never a reason to fail a run; its error names no cursor (parameters are not echoed).
                logger.warning(
                    "%s could not be stored (%s); dropped, so the next run reads in full",
                    self._delta_label(trust_site_id),
                    _refusal(error),
                )
            async with connection.transaction():
                await self._check_lock(connection, trust_site_id)
                await _delta.clear_delta(connection, self._q, trust_site_id)

    @_store_errors("clear the delta cache of trust {0!r}")
    async def clear_delta(self, trust_site_id: str) -> None:
        """Drop the trust's delta cache rows (the next incremental-capable run reads in full)."""
        async with self._db.connection() as connection, connection.transaction():
            await self._check_lock(connection, trust_site_id)
            await _delta.clear_delta(connection, self._q, trust_site_id)

    def _delta_label(self, trust_site_id: str) -> str:
        return f"the delta cache of trust {trust_site_id!r} in postgres schema {self._db.schema!r}"

    # -- host helpers -------------------------------------------------------------------

    @_store_errors("add a user")
    async def add_user(self, email: str, display_name: str, *, user_id: str | None = None) -> str:
        """Add a manually invited user and return its id.

        Raises ``ValueError`` when another user has the email (in any case) or
        the id is taken.
        """
        async with self._db.connection() as connection:
            for attempt in (1, 2):
                try:
                    async with connection.transaction():
                        tables = UserTables(log=[])
                        cursor = await connection.execute(
                            self._q(
                                f"SELECT {_read.USER_COLUMNS} FROM {{schema}}.users WHERE email_key = %s OR id = %s "
                                "ORDER BY id FOR UPDATE"
                            ),
                            tuple(map(to_db_optional, add_user_keys(email, user_id))),
                        )
                        for row in await cursor.fetchall():
                            tables.put_user(_read.user_from_row(row))
                        new_id = tables.add_user(email, display_name, user_id)
                        await self._write(connection, BatchWrites.of(tables, None))
                    return new_id
                except pg_errors.UniqueViolation:
                    # Someone added the same email or id just now: the second
                    # attempt sees them and says so as a ValueError.
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    @_store_errors("grant access")
    async def grant(self, user_id: str, site_id: str, module: str, role: Role | str) -> None:
        """Give ``user_id`` a manual grant; ``role`` may be a string (``"manager"``).

        Raises ``KeyError`` for an unknown user and ``ConfigError`` for an unknown role.
        """
        parsed = checked_grant(site_id, module, role)
        async with self._db.connection() as connection, connection.transaction():
            # The row lock makes a sync batch deciding about this user wait for us.
            cursor = await connection.execute(
                self._q("SELECT 1 FROM {schema}.users WHERE id = %s FOR UPDATE"), (to_db(user_id),)
            )
            if await cursor.fetchone() is None:
                raise KeyError(f"no user with id {user_id!r}")
            await connection.execute(
                self._q(_UPSERT_GRANT), (to_db(user_id), to_db(site_id), to_db(module), "manual", parsed.value, None)
            )
            await self._bump_data_version(connection)

    @_store_errors("read grants")
    async def grants(self, user_id: str) -> set[Grant]:
        """Every grant of ``user_id``, manual and azure. Raises ``KeyError`` for an unknown user."""
        checked_id("user_id", user_id)
        async with self._db.connection() as connection, connection.transaction():
            return await _read.grants_of(connection, self._q, user_id)

    @_store_errors("change a user's activation")
    async def set_active(self, user_id: str, active: bool) -> None:
        """A person (not the sync) activates or deactivates ``user_id``; the sync never undoes it.

        Raises ``KeyError`` for an unknown user.
        """
        async with self._db.connection() as connection, connection.transaction():
            cursor = await connection.execute(
                self._q("UPDATE {schema}.users SET active = %s, deactivated_by_sync = false WHERE id = %s"),
                (active, to_db(user_id)),
            )
            if cursor.rowcount == 0:
                raise KeyError(user_id)
            await self._bump_data_version(connection)

    @_store_errors("read a user")
    async def user(self, user_id: str) -> StoredUser:
        """The user with ``user_id``. Raises ``KeyError`` when there is none."""
        checked_id("user_id", user_id)
        async with self._db.connection() as connection:
            return await _read.user_by_id(connection, self._q, user_id)

    @_store_errors("read the synced groups of trust {0!r}")
    async def groups(self, trust_site_id: str) -> list[SyncedGroup]:
        """The synced groups of ``trust_site_id`` (retired ones too), by display name."""
        checked_id("trust_site_id", trust_site_id)
        async with self._db.connection() as connection:
            return await _read.groups_of(connection, self._q, trust_site_id)

    @_store_errors("read group members")
    async def group_members(self, group_external_id: str, trust_site_id: str | None = None) -> frozenset[str]:
        """External ids of the synced group's members (in every trust mirroring it, or in ``trust_site_id``).

        Raises ``KeyError`` when no trust (or not that trust) mirrors the group.
        """
        checked_id("group_external_id", group_external_id)
        checked_optional_id("trust_site_id", trust_site_id)
        async with self._db.connection() as connection, connection.transaction():
            return await _read.group_members(connection, self._q, group_external_id, trust_site_id)

    @_store_errors("read users")
    async def users(self) -> list[StoredUser]:
        """Every user, in the order they were added."""
        async with self._db.connection() as connection:
            return await _read.all_users(connection, self._q)
