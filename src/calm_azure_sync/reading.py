"""One run's directory read: every mapped group in full, or what changed since the delta cache.

:class:`DirectoryReader` is the reconciler's reading half. A full read asks
the directory for each mapped group's members (a group that fails is
*unreadable*, never an exception: the guards hold what it could explain). An
incremental read asks :meth:`DeltaDirectory.changes
<calm_azure_sync.directory.delta.DeltaDirectory.changes>` for one round, folds
it into the delta cache and resolves the snapshot from the kept direct
memberships (:mod:`calm_azure_sync.incremental`). Which one a run makes,
and what happens when a round fails or a token expired, is written once in
:meth:`DirectoryReader.read_for_run`; what is kept of the cache afterwards in
:meth:`DirectoryReader.keep_cache`.

When the round brings nothing and the trust is settled (see
:mod:`calm_azure_sync.settled`), the read says so and the run plans nothing:
the cache's memberships and users are then never loaded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from .config import SyncConfig
from .directory.delta import DeltaCursor, DeltaDirectory, DirectoryDelta
from .directory.protocol import Directory
from .errors import (
    DeltaExpiredError,
    DirectoryAccessError,
    DirectoryError,
    GroupNotFoundError,
    ImportAlreadyRunningError,
)
from .incremental import (
    Applied,
    DeltaCache,
    DeltaCacheStore,
    DeltaCacheWrite,
    DeltaHead,
    DeltaHeadStore,
    ReadMode,
    added_groups,
    apply_delta,
    cache_write,
    choose_mode,
    snapshot_members,
    tracked_groups,
)
from .model import DirectoryGroup, DirectoryUser
from .planner import DirectorySnapshot
from .settled import Settled, without_settled
from .state import SyncState, SyncStateStore

__all__ = ["DirectoryReader", "RunRead"]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, "int | None"], None]


@attrs.frozen
class RunRead:
    """One run's directory read: the snapshot, the mode and why, and the delta cache after it.

    ``cache``: the cache to keep (written as the difference from ``previous``,
    the one loaded, or whole when that is ``None``); ``cache=None`` with
    ``keep``: leave the stored cache as it is, without: drop it.
    ``settled``: the round brought nothing and the trust is settled (the
    record of the run that settled it); then ``snapshot`` is empty, nothing is
    planned, and only the cursor moves on (``cursor``, from ``head``).
    """

    snapshot: DirectorySnapshot
    mode: str
    why: str
    cache: DeltaCache | None
    previous: DeltaCache | None
    keep: bool = False
    settled: Settled | None = None
    head: DeltaHead | None = None
    cursor: DeltaCursor | None = None

    @property
    def next_cursor(self) -> Mapping[str, Any] | None:
        """The cursor the next run starts from (``None``: no cache is kept)."""
        if self.cache is not None:
            return self.cache.cursor
        if self.cursor is not None:
            return self.cursor
        return self.previous.cursor if self.keep and self.previous is not None else None


@attrs.frozen
class DirectoryReader:
    """Reads the directory for a run, at most ``max_concurrent_reads`` groups at once.

    ``state`` keeps the delta cache: in its own tables when it is a
    :class:`~calm_azure_sync.DeltaCacheStore`, else as JSON in
    ``SyncState.delta``.
    """

    directory: Directory
    state: SyncStateStore
    max_concurrent_reads: int
    clock: Callable[[], dt.datetime]
    full_resync_interval: dt.timedelta
    progress: ProgressFn

    # ------------------------------------------------------------------ full reads

    async def read_all(self, config: SyncConfig, only: Iterable[str] | None = None) -> DirectorySnapshot:
        """Read every mapped group (or the ``only`` ones) in full.

        A group that fails is recorded as unreadable (never raised): the
        guards then hold what it could explain.
        """
        group_ids = sorted(config.mappings.group_ids if only is None else only)
        members: dict[str, Sequence[DirectoryUser]] = {}
        unreadable: dict[str, str] = {}
        stale: set[str] = set()
        limit = asyncio.Semaphore(self.max_concurrent_reads)
        done = 0
        self.progress("read", 0, len(group_ids))

        async def read_one(group_id: str) -> None:
            nonlocal done
            async with limit:
                try:
                    members[group_id] = await self.directory.group_members(group_id)
                except GroupNotFoundError:
                    stale.add(group_id)
                    unreadable[group_id] = "stale mapping: the group no longer exists in Azure"
                except DirectoryAccessError as error:
                    unreadable[group_id] = f"access denied: {error}"
                except DirectoryError as error:
                    unreadable[group_id] = f"could not be read: {error}"
                except Exception as error:  # a failed read must never become a wrongful removal
                    logger.warning("reading group %s failed", group_id, exc_info=True)
                    unreadable[group_id] = f"could not be read: {type(error).__name__}: {error}"
            done += 1
            self.progress("read", done, len(group_ids))

        await asyncio.gather(*(read_one(group_id) for group_id in group_ids))
        names = await self._group_names(group_ids)
        return DirectorySnapshot(members=members, unreadable=unreadable, stale=frozenset(stale), group_names=names)

    async def _group_names(self, group_ids: Sequence[str]) -> dict[str, str]:
        """Display names of the mapped groups, when the directory can look groups up."""
        lookup = getattr(self.directory, "lookup_groups", None)
        if lookup is None or not group_ids:
            return {}
        try:
            found: Mapping[str, DirectoryGroup | None] = await lookup(list(group_ids))
        except Exception:  # names are for people; a failure only costs the names
            logger.warning("looking up the mapped groups' names failed", exc_info=True)
            return {}
        return {gid: group.display_name for gid, group in found.items() if group is not None and group.display_name}

    # ------------------------------------------------------------------ the delta cache

    @property
    def _tables(self) -> DeltaCacheStore | None:
        """Where the delta cache has tables of its own; ``None``: it is JSON in ``SyncState.delta``."""
        return self.state if isinstance(self.state, DeltaCacheStore) else None

    async def _load_cache(self, trust_site_id: str, sync_state: SyncState) -> DeltaCache | None:
        tables = self._tables
        if tables is None:
            return DeltaCache.from_dict(sync_state.delta)
        try:
            return await tables.load_delta(trust_site_id)
        except Exception:  # a cache is never a reason to fail: read in full and rebuild it
            logger.warning("loading the delta cache of trust %s failed; reading in full", trust_site_id, exc_info=True)
            return None

    async def _load_head(self, trust_site_id: str, sync_state: SyncState) -> tuple[DeltaHead | None, DeltaCache | None]:
        """The cache's head, and the whole cache when it had to be loaded to get the head."""
        store: object = self.state
        if self._tables is not None and isinstance(store, DeltaHeadStore):
            try:
                return await store.load_delta_head(trust_site_id), None
            except Exception:
                logger.warning("loading the delta cache of trust %s failed; reading in full", trust_site_id, exc_info=True)
                return None, None
        cache = await self._load_cache(trust_site_id, sync_state)
        return (None if cache is None else cache.head), cache

    # ------------------------------------------------------------------ a run's read

    async def read_for_run(
        self,
        config: SyncConfig,
        sync_state: SyncState,
        requested: ReadMode,
        *,
        settled_key: Callable[[Mapping[str, Any]], str | None],
        begin_load: Callable[[], None],
    ) -> RunRead:
        """The snapshot a run plans from, read in full or from the delta cache, and what to keep of the cache.

        ``settled_key(cursor)``: the key this run's inputs have with that
        cursor (``None``: the run cannot be settled, e.g. a hold is pending).
        ``begin_load()`` is called once it is clear the run will plan: the
        reconciler then loads the store while the directory is read.
        """
        mapped = frozenset(config.mappings.group_ids)
        supports = isinstance(self.directory, DeltaDirectory)
        head, cache = (
            await self._load_head(config.trust_site_id, sync_state) if requested != "full" and supports else (None, None)
        )
        mode, why = choose_mode(
            requested, cache=head, mapped=mapped, supports_delta=supports, now=self.clock(),
            full_resync_interval=self.full_resync_interval,
        )
        if mode == "incremental" and head is not None:
            try:
                self.progress("read", 0, 1)
                first = None
                settled = Settled.from_state(sync_state)
                if settled is not None and head.mapped == mapped and settled.key == settled_key(head.cursor):
                    first = await self._round(head.cursor, sorted({*mapped, *head.tracked}))
                    if first[0].empty:
                        self.progress("read", 1, 1)
                        why = f"nothing changed in the directory, the store or the settings since run {settled.run_id}"
                        return RunRead(
                            DirectorySnapshot(members={}), "incremental", why, None, None, keep=True,
                            settled=settled, head=head, cursor=first[1],
                        )
                begin_load()
                cache = cache or await self._load_cache(config.trust_site_id, sync_state)
                if cache is None:
                    raise _CacheGone()
                snapshot, after = await self._read_changes(config, cache, first)
                self.progress("read", 1, 1)
                return RunRead(snapshot, "incremental", why, after, cache)
            except _CacheGone:
                why = "the delta cache could not be read; reading in full"
            except DeltaExpiredError as error:
                why = f"the delta token can no longer be used ({error.code}); reading in full"
            except Exception as error:  # a round that failed partway: nothing advances, nothing is removed
                logger.warning("reading the changes of trust %s failed", config.trust_site_id, exc_info=True)
                reason = f"could not read changes: {error}"
                snapshot = DirectorySnapshot(members={}, unreadable=dict.fromkeys(sorted(mapped), reason))
                return RunRead(snapshot, "incremental", why, None, None, keep=True)
        elif requested == "incremental":
            why = f"incremental read not possible: {why}"
        begin_load()
        snapshot = await self.read_all(config)
        if requested == "full" or not supports or snapshot.unreadable:
            return RunRead(snapshot, "full", why, None, None, keep=True)  # the cache, if any, stays as it was
        try:
            seeded = await self._follow(config, None, {}, {}, known_users=snapshot.members)
        except Exception:  # no delta cache this time: the next run reads in full again
            logger.warning("starting delta reads for trust %s failed", config.trust_site_id, exc_info=True)
            return RunRead(snapshot, "full", why, None, None)
        return RunRead(snapshot, "full", why, seeded, None)

    async def _round(self, cursor: Mapping[str, Any] | None, group_ids: Sequence[str]) -> tuple[DirectoryDelta, DeltaCursor]:
        directory: Any = self.directory
        found: tuple[DirectoryDelta, DeltaCursor] = await directory.changes(cursor, group_ids)
        return found

    async def _follow(
        self, config: SyncConfig, cursor: Mapping[str, Any] | None,
        groups: Mapping[str, frozenset[str]], users: Mapping[str, DirectoryUser],
        *, known_users: Mapping[str, Sequence[DirectoryUser]] | None = None,
        first: tuple[DirectoryDelta, DeltaCursor] | None = None,
    ) -> DeltaCache:
        """Rounds of changes until every nested group is tracked, then the users no round described.

        ``known_users``: users just read in full (per group), so the rounds need
        not look them up again when a chain lists them. ``first``: the first
        round, when it was already asked for.
        """
        directory: Any = self.directory
        mapped = sorted(config.mappings.group_ids)
        known = dict(users)
        for members in (known_users or {}).values():
            known.update((user.id, user) for user in members if user.id not in known)
        tracked = sorted({*mapped, *tracked_groups(groups, mapped)})
        kept_groups: Mapping[str, frozenset[str]] = {group: groups[group] for group in tracked if group in groups}

        def fold(delta: DirectoryDelta) -> Applied:
            known.update((user.id, user) for user in delta.users)
            for removed in delta.removed_users:
                known.pop(removed.id, None)
            return apply_delta(kept_groups, known, delta, mapped)

        delta, next_cursor = first or await self._round(cursor, tracked)
        applied = fold(delta)
        for _ in range(32):  # nesting depth; each round starts the chains of newly found groups
            if not applied.new_groups:
                break
            kept_groups = applied.groups
            delta, next_cursor = await self._round(next_cursor, sorted({*mapped, *applied.groups}))
            applied = fold(delta)
        kept_users = dict(applied.users)
        kept_groups = dict(applied.groups)
        if applied.missing_users:
            found = await directory.lookup_users(sorted(applied.missing_users))
            gone = {user_id for user_id, user in found.items() if user is None}
            kept_users.update({user_id: user for user_id, user in found.items() if user is not None})
            if gone:
                kept_groups = {group: members - gone for group, members in kept_groups.items()}
        return DeltaCache(next_cursor, kept_groups, kept_users, frozenset(mapped), self.clock())

    async def _read_changes(
        self, config: SyncConfig, cache: DeltaCache, first: tuple[DirectoryDelta, DeltaCursor] | None
    ) -> tuple[DirectorySnapshot, DeltaCache]:
        """This run's snapshot from the cache and a delta round; mappings added since are read in full first."""
        added = sorted(added_groups(cache, config.mappings.group_ids))
        fresh = await self.read_all(config, only=added) if added else DirectorySnapshot(members={})
        after = await self._follow(
            config, cache.cursor, cache.groups, cache.users, known_users=fresh.members, first=first
        )
        after = attrs.evolve(after, full_read_at=cache.full_read_at)
        mapped = sorted(config.mappings.group_ids)
        members = snapshot_members(after.groups, after.users, mapped)
        stale = frozenset(group for group in mapped if group not in after.groups)
        unreadable = dict.fromkeys(sorted(stale), "stale mapping: the group no longer exists in Azure")
        unreadable.update((group, reason) for group, reason in fresh.unreadable.items() if group not in stale)
        for group in unreadable:
            members.pop(group, None)
        # Group names are read with full reads only (a rename shows up at the next one, within
        # full_resync_interval): looking them up here would cost requests a no-change run must not make.
        return DirectorySnapshot(members, unreadable, stale, group_names=dict(fresh.group_names)), after

    # ------------------------------------------------------------------ after the run

    async def keep_cache(
        self, trust_site_id: str, read: RunRead, state: SyncState, settled: Settled | None
    ) -> SyncState:
        """Write what ``read`` leaves of the delta cache; the sync state to save with it.

        ``settled``: the record this run leaves (``None``: the trust is not
        settled after it).
        """
        tables = self._tables
        if tables is None:
            if read.cache is not None:
                state = attrs.evolve(state, delta=read.cache.to_dict())
            elif read.settled is not None and read.cursor is not None:
                # Only the cursor moved: the cache's JSON stays as it was read (no parse, no rewrite).
                state = attrs.evolve(state, delta={**state.delta, "cursor": dict(read.cursor)})
            elif not read.keep:
                state = attrs.evolve(state, delta={})
            state = without_settled(state)
        else:
            try:
                await self._write_tables(tables, trust_site_id, read)
            except ImportAlreadyRunningError:
                raise  # the run lock is gone: write nothing more
            except Exception:
                # A cache is never a reason to fail a run whose changes are applied: the store kept
                # the last cache written (a write is atomic), so the next run reads on from there.
                logger.warning("writing the delta cache of trust %s failed", trust_site_id, exc_info=True)
                settled = None  # its key names a cursor the store does not have
            state = attrs.evolve(state, delta={}) if state.delta else state  # the cache has tables: no JSON copy
        return state if settled is None else settled.kept_in(state)


    @staticmethod
    async def _write_tables(tables: DeltaCacheStore, trust_site_id: str, read: RunRead) -> None:
        if read.cache is not None:
            await tables.save_delta(trust_site_id, cache_write(read.previous, read.cache))
        elif read.settled is not None and read.head is not None and read.cursor is not None:
            head = read.head  # only the cursor moves: one row
            await tables.save_delta(
                trust_site_id, DeltaCacheWrite(read.cursor, head.mapped, head.full_read_at, replace=False)
            )
        elif not read.keep:
            await tables.clear_delta(trust_site_id)


class _CacheGone(Exception):
    """The head was readable but the whole cache was not: read in full."""
