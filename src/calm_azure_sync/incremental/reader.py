"""One run's directory read: every mapped group in full, or what changed since the delta cache.

:class:`DirectoryReader` is the reconciler's reading half. A full read asks
the directory for each mapped group's members (a group that fails is
*unreadable*, never an exception: the guards hold what it could explain). An
incremental read asks :meth:`DeltaDirectory.changes
<calm_azure_sync.directory.delta.DeltaDirectory.changes>` for one round, folds
it into the delta cache and resolves the snapshot from the kept direct
memberships (:mod:`~calm_azure_sync.incremental.fold`). Which one a run
makes is :func:`~calm_azure_sync.incremental.cache.choose_mode`'s decision;
what happens when an incremental read fails is :func:`after_failed_read`'s
(read in full, or read nothing and keep the cache), and whether a full read
starts a cache is :func:`starts_cache`'s. The read is a :class:`RunRead`:
the snapshot, the mode and why, and what to do with the stored cache, one
:data:`CacheAction` (keep it, drop it, write a new one, or move only its
cursor on), which :meth:`DirectoryReader.keep_cache` carries out after the
run.

When the round brings nothing and the trust is settled (see
:mod:`calm_azure_sync.incremental.settled`), the read says so and the run
plans nothing: the cache's memberships and users are then never loaded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, assert_never

import attrs

from ..core.state import SyncState, SyncStateStore
from ..directory.delta import DeltaCursor, DeltaDirectory, DirectoryDelta
from ..directory.protocol import Directory
from ..directory.tenants import TenantRoundFailed
from ..errors import (
    DeltaExpiredError,
    DirectoryAccessError,
    DirectoryError,
    GroupNotFoundError,
    ImportAlreadyRunningError,
)
from ..model import DirectoryGroup, DirectorySnapshot, DirectoryUser
from ..policies.config import SyncConfig
from .actions import CacheAction, DropCache, KeepCache, MoveCursor, WriteCache, WriteRows, kept_json
from .cache import (
    DeltaCache,
    DeltaCacheStore,
    DeltaHead,
    DeltaHeadStore,
    ReadMode,
    added_groups,
    choose_mode,
)
from .fold import Applied, apply_delta, snapshot_members, tracked_groups
from .partial import DeltaRows, DeltaRowsStore, RoundPart, is_simple, too_many
from .settled import Settled, without_settled

__all__ = [
    "CacheAction",
    "DirectoryReader",
    "DropCache",
    "KeepCache",
    "MoveCursor",
    "ReadInFull",
    "ReadNothing",
    "RunRead",
    "WriteCache",
    "WriteRows",
    "after_failed_read",
    "kept_json",
    "starts_cache",
]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, "int | None"], None]


# ---------------------------------------------------------------------- the read and its fallbacks


@attrs.frozen
class RunRead:
    """One run's directory read: the snapshot, the mode and why, and what to do with the stored cache.

    ``cache`` is one :data:`CacheAction`. When it is :class:`MoveCursor` the
    trust is settled (:attr:`settled`): ``snapshot`` is empty and nothing is
    planned. ``narrowable``: the last run's record stands for this run's
    inputs, so it may plan by difference (decided once, by the reader). When
    the round was read from part of the cache (:class:`WriteRows`), ``part``
    says whom it touched and ``sizes`` each mapped group's user count; the
    snapshot is then built for the people the run plans
    (:meth:`RoundPart.snapshot`), and this one is empty.
    """

    snapshot: DirectorySnapshot
    mode: Literal["full", "incremental"]
    why: str
    cache: CacheAction
    narrowable: bool = False
    part: RoundPart | None = None
    sizes: Mapping[str, int] | None = None

    @property
    def settled(self) -> Settled | None:
        """The record of the run that settled the trust, when this read found it still settled."""
        return self.cache.settled if isinstance(self.cache, MoveCursor) else None

    @property
    def next_cursor(self) -> Mapping[str, Any] | None:
        """The cursor the next run starts from (``None``: no new cursor is kept)."""
        return self.cache.next_cursor

    @property
    def folded(self) -> tuple[DeltaCache, DeltaCache] | None:
        """The delta cache before and after this read's round, when it folded one into a stored cache."""
        cache = self.cache
        if isinstance(cache, WriteCache) and cache.previous is not None:
            return cache.previous, cache.cache
        return None


@attrs.frozen
class ReadInFull:
    """An incremental read failed before anything was decided: read every mapped group in full instead."""

    why: str


@attrs.frozen
class ReadNothing:
    """A round failed partway: nothing advances and nothing is removed (every mapped group unreadable)."""

    reason: str

    def snapshot(self, mapped: Iterable[str]) -> DirectorySnapshot:
        return DirectorySnapshot(members={}, unreadable=dict.fromkeys(sorted(mapped), self.reason))


class _CacheGone(Exception):
    """The head was readable but the whole cache was not: read in full."""


def after_failed_read(error: Exception) -> ReadInFull | ReadNothing:
    """What a run does when its incremental read raised ``error``."""
    if isinstance(error, _CacheGone):
        return ReadInFull("the delta cache could not be read; reading in full")
    if isinstance(error, DeltaExpiredError):
        return ReadInFull(f"the delta token can no longer be used ({error.code}); reading in full")
    if isinstance(error, TenantRoundFailed):  # the other tenants' changes still apply (API §13)
        return ReadInFull(f"reading the changes of tenant {error.tenant_id} failed; reading every tenant in full")
    return ReadNothing(f"could not read changes: {error}")


def starts_cache(requested: ReadMode, supports_delta: bool, snapshot: DirectorySnapshot) -> bool:
    """Whether a full read goes on to start a delta cache (else the stored one, if any, stays as it was)."""
    return requested != "full" and supports_delta and not snapshot.unreadable


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
        last_record: Settled | None,
        settled_key: Callable[[Mapping[str, Any]], str | None],
        begin_load: Callable[[bool], None],
        may_narrow: Callable[[str | None], bool] = lambda key: False,
    ) -> RunRead:
        """The snapshot a run plans from, read in full or from the delta cache, and what to keep of the cache.

        ``last_record``: what the last run left (``Settled.from_state`` of
        ``sync_state``, read once by the run). ``settled_key(cursor)``: the key this run's inputs have with that
        cursor (``None``: the run cannot be settled, e.g. a hold is pending).
        ``begin_load(narrowable)`` is called once it is clear the run will
        plan: the reconciler then loads the store while the directory is read
        (``narrowable``: the run may plan by difference, so it may load only
        some people's rows). ``may_narrow(key)``: whether the last run's
        record stands for this run, given this run's key with the cursor the
        stored cache starts from (asked once); then a simple round is read
        from part of the cache (:mod:`~calm_azure_sync.incremental.partial`).
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
            key = settled_key(head.cursor) if last_record is not None else None  # one digest, asked twice below
            try:
                return await self._read_incremental(
                    config, sync_state, head, cache, why, last_record, key, begin_load, narrowable=may_narrow(key)
                )
            except Exception as error:
                fallback = after_failed_read(error)
                if isinstance(fallback, ReadNothing):  # nothing advances, nothing is removed
                    logger.warning("reading the changes of trust %s failed", config.trust_site_id, exc_info=True)
                    return RunRead(fallback.snapshot(mapped), "incremental", why, KeepCache())
                why = fallback.why
        elif requested == "incremental":
            why = f"incremental read not possible: {why}"
        begin_load(False)
        snapshot = await self.read_all(config)
        if not starts_cache(requested, supports, snapshot):
            return RunRead(snapshot, "full", why, KeepCache())
        try:
            seeded = await self._follow(config, None, {}, {}, known_users=snapshot.members)
        except Exception:  # no delta cache this time: the next run reads in full again
            logger.warning("starting delta reads for trust %s failed", config.trust_site_id, exc_info=True)
            return RunRead(snapshot, "full", why, DropCache())
        return RunRead(snapshot, "full", why, WriteCache(seeded, None))

    async def _read_incremental(
        self,
        config: SyncConfig,
        sync_state: SyncState,
        head: DeltaHead,
        cache: DeltaCache | None,
        why: str,
        settled: Settled | None,
        key: str | None,
        begin_load: Callable[[bool], None],
        *,
        narrowable: bool = False,
    ) -> RunRead:
        """The read from changes: settled (only the cursor moves), read from part of the cache, or folded into it.

        Raises when it fails.
        """
        mapped = frozenset(config.mappings.group_ids)
        self.progress("read", 0, 1)
        first = None
        if settled is not None and settled.quiet and head.mapped == mapped and settled.key == key:
            first = await self._round(head.cursor, sorted({*mapped, *head.tracked}))
            if first[0].empty:
                self.progress("read", 1, 1)
                why = f"nothing changed in the directory, the store or the settings since run {settled.run_id}"
                return RunRead(DirectorySnapshot(members={}), "incremental", why, MoveCursor(head, first[1], settled))
        store: object = self.state
        if narrowable and cache is None and settled is not None and self._tables is not None and isinstance(
            store, DeltaRowsStore
        ):
            first = first or await self._round(head.cursor, sorted({*mapped, *head.tracked}))
            part = await self._read_part(config.trust_site_id, head, first, mapped, settled)
            if part is not None:
                self.progress("read", 1, 1)
                return attrs.evolve(part, why=why)
        begin_load(narrowable)
        cache = cache or await self._load_cache(config.trust_site_id, sync_state)
        if cache is None:
            raise _CacheGone()
        snapshot, after = await self._read_changes(config, cache, first)
        self.progress("read", 1, 1)
        return RunRead(snapshot, "incremental", why, WriteCache(after, cache), narrowable=narrowable)

    async def cache_rows(self, trust_site_id: str, member_ids: Iterable[str]) -> DeltaRows:
        """Some rows of the trust's delta cache (a :class:`~calm_azure_sync.incremental.partial.DeltaRowsStore`)."""
        store: Any = self.state
        rows: DeltaRows = await store.load_delta_rows(trust_site_id, sorted(member_ids))
        return rows

    async def _read_part(
        self, trust_site_id: str, head: DeltaHead, first: tuple[DirectoryDelta, DeltaCursor],
        mapped: frozenset[str], record: Settled,
    ) -> RunRead | None:
        """A simple round read from the rows it names, or ``None``: fold it into the whole cache instead.

        ``None`` too when it touched too many people to plan by difference,
        the record lacks a mapped group's size, or the rows cannot be read.
        """
        delta, cursor = first
        if not is_simple(delta, head, mapped) or not mapped <= record.group_users.keys():
            return None
        try:
            nesting = await self.cache_rows(trust_site_id, head.tracked)
            rows = await self.cache_rows(trust_site_id, RoundPart.named(delta))
        except Exception:  # a cache is never a reason to fail: fold the round into the whole cache instead
            logger.warning("reading rows of the delta cache of trust %s failed", trust_site_id, exc_info=True)
            return None
        missing = RoundPart.missing(delta, rows)
        directory: Any = self.directory
        found: Mapping[str, DirectoryUser | None] = await directory.lookup_users(missing) if missing else {}
        part = RoundPart(head, delta, mapped, nesting, rows, found)
        if too_many(len(part.touched), part.user_count):
            return None
        return RunRead(
            DirectorySnapshot(members={}), "incremental", "", WriteRows(part.write(cursor)),
            narrowable=True, part=part, sizes=part.sizes(record.group_users),
        )

    async def _round(self, cursor: Mapping[str, Any] | None, group_ids: Sequence[str]) -> tuple[DirectoryDelta, DeltaCursor]:
        directory: Any = self.directory
        found: tuple[DirectoryDelta, DeltaCursor] = await directory.changes(cursor, group_ids)
        return found

    async def _follow(
        self, config: SyncConfig, cursor: Mapping[str, Any] | None,
        groups: Mapping[str, frozenset[str]], users: Mapping[str, DirectoryUser],
        *, known_users: Mapping[str, Sequence[DirectoryUser]] | None = None,
        first: tuple[DirectoryDelta, DeltaCursor] | None = None, restart: Iterable[str] = (),
    ) -> DeltaCache:
        """Rounds of changes until every nested group is tracked, then the users no round described.

        ``known_users``: users just read in full (per group), so the rounds need
        not look them up again when a chain lists them. ``first``: the first
        round, when it was already asked for. ``restart``: newly mapped groups
        the cache keeps no memberships of; the first round leaves them out, so
        the next asks for them from the start. (A round goes on with every
        group the cursor lists: a group the cache pruned after the last round,
        mapped again now, would bring only its changes since, never its members.)
        """
        directory: Any = self.directory
        mapped = sorted(config.mappings.group_ids)
        known = dict(users)
        for members in (known_users or {}).values():
            known.update((user.id, user) for user in members if user.id not in known)
        tracked = sorted({*mapped, *tracked_groups(groups, mapped)})
        kept_groups: Mapping[str, frozenset[str]] = {group: groups[group] for group in tracked if group in groups}
        unchained = set() if first is not None else {group for group in restart if group not in groups}

        def fold(delta: DirectoryDelta) -> Applied:
            known.update((user.id, user) for user in delta.users)
            for removed in delta.removed_users:
                known.pop(removed.id, None)
            return apply_delta(kept_groups, known, delta, mapped)

        delta, next_cursor = first or await self._round(cursor, [g for g in tracked if g not in unchained])
        applied = fold(delta)
        if unchained:
            applied = attrs.evolve(
                applied, groups={**applied.groups, **dict.fromkeys(unchained, frozenset())},
                new_groups=applied.new_groups | unchained,
            )
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
            config, cache.cursor, cache.groups, cache.users, known_users=fresh.members, first=first, restart=added
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
            state = without_settled(attrs.evolve(state, delta=kept_json(read.cache, state.delta)))
        else:
            try:
                await self._write_tables(tables, trust_site_id, read.cache)
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
    async def _write_tables(tables: DeltaCacheStore, trust_site_id: str, action: CacheAction) -> None:
        match action:
            case KeepCache():
                pass
            case DropCache():
                await tables.clear_delta(trust_site_id)
            case WriteCache() | MoveCursor() | WriteRows():
                await tables.save_delta(trust_site_id, action.rows)
            case _:
                assert_never(action)
