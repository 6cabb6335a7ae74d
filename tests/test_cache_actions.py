"""A run's read as values: one cache action, the fallbacks as data, and the incremental package's names.

The reader's outcome is a :class:`RunRead`: the snapshot, the mode and why,
and exactly one :data:`CacheAction`. These tests pin each action's meaning in
both places a cache lives (JSON in the sync state, the store's tables) and
check, as a property, that the two agree after any action.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import calm_azure_sync.incremental as incremental
from calm_azure_sync import DeltaExpiredError, DirectoryError, InMemoryDirectory, SyncState
from calm_azure_sync.incremental import DeltaCache, DeltaCacheWrite, cache_write
from calm_azure_sync.incremental.cache import choose_mode
from calm_azure_sync.incremental.fold import apply_delta, snapshot_members
from calm_azure_sync.incremental.reader import (
    DirectoryReader,
    DropCache,
    KeepCache,
    MoveCursor,
    ReadInFull,
    ReadNothing,
    RunRead,
    WriteCache,
    _CacheGone,
    after_failed_read,
    kept_json,
    starts_cache,
)
from calm_azure_sync.incremental.settled import Settled
from calm_azure_sync.model import DirectorySnapshot
from calm_azure_sync.store.in_memory import InMemoryUserStore
from calm_azure_sync.testing._store_conformance_delta import sample_cache

TRUST = "trust-1"
CURSOR = {"version": 1, "kind": "test", "users": "https://graph.example/users/delta?$deltatoken=next"}
SETTLED = Settled("key", "run-1", (), 3, 2, {"group-0": 3})


class _JsonOnly:
    """A sync state store without delta tables: the reader keeps the cache as JSON in ``SyncState.delta``."""


class _Recording(InMemoryUserStore):
    """The in-memory store, noting each delta call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, object]] = []

    async def save_delta(self, trust_site_id: str, write: DeltaCacheWrite) -> None:
        self.calls.append(("save", write))
        await super().save_delta(trust_site_id, write)

    async def clear_delta(self, trust_site_id: str) -> None:
        self.calls.append(("clear", None))
        await super().clear_delta(trust_site_id)


def _reader(state: object) -> DirectoryReader:
    return DirectoryReader(
        InMemoryDirectory(users={}, groups={}, members={}), state, 4, lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC),  # type: ignore[arg-type]
        dt.timedelta(days=1), lambda *_: None,
    )


def _read(action: object) -> RunRead:
    return RunRead(DirectorySnapshot(members={}), "incremental", "why", action)  # type: ignore[arg-type]


def test_the_incremental_package_exports_every_name_the_module_did() -> None:
    before = [
        "CACHE_VERSION", "DeltaCache", "DeltaCacheStore", "DeltaCacheWrite", "DeltaHead", "DeltaHeadStore",
        "ReadMode", "added_groups", "apply_delta", "cache_write", "choose_mode", "resolve_members", "tracked_groups",
    ]  # fmt: skip
    assert incremental.__all__ == sorted([*before, "DeltaRows", "DeltaRowsStore"])  # v0.4 adds two
    for name in [*before, "Applied", "snapshot_members"]:
        assert getattr(incremental, name) is not None, name
    assert incremental.choose_mode is choose_mode and incremental.apply_delta is apply_delta
    assert incremental.snapshot_members is snapshot_members


def test_the_snapshot_is_a_model_value_the_planner_re_exports() -> None:
    from calm_azure_sync.core import planner

    assert planner.DirectorySnapshot is DirectorySnapshot


@pytest.mark.parametrize(
    "old",
    [
        "calm_azure_sync.reading", "calm_azure_sync.settled", "calm_azure_sync._delta_rows",
        # moved into the rooms in 0.4.0 (CHANGELOG, "Upgrading")
        "calm_azure_sync.plan", "calm_azure_sync.planner", "calm_azure_sync.state", "calm_azure_sync.config",
        "calm_azure_sync.status", "calm_azure_sync.exclusion",
    ],
)
def test_the_old_module_paths_are_gone(old: str) -> None:
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_a_failed_incremental_read_falls_back_as_data() -> None:
    assert after_failed_read(_CacheGone()) == ReadInFull("the delta cache could not be read; reading in full")
    expired = DeltaExpiredError("gone", code="syncStateNotFound")
    assert after_failed_read(expired) == ReadInFull(
        "the delta token can no longer be used (syncStateNotFound); reading in full"
    )
    for error in (DirectoryError("503 from Graph"), RuntimeError("boom")):
        fallback = after_failed_read(error)
        assert fallback == ReadNothing(f"could not read changes: {error}")
        assert isinstance(fallback, ReadNothing)
        snapshot = fallback.snapshot({"g-2", "g-1"})
        assert snapshot.members == {} and list(snapshot.unreadable) == ["g-1", "g-2"]
        assert set(snapshot.unreadable.values()) == {f"could not read changes: {error}"}


def test_a_full_read_starts_a_cache_only_when_asked_able_and_complete() -> None:
    whole = DirectorySnapshot(members={"g": []})
    partial = DirectorySnapshot(members={}, unreadable={"g": "503"})
    assert starts_cache("auto", True, whole) and starts_cache("incremental", True, whole)
    assert not starts_cache("full", True, whole)
    assert not starts_cache("auto", False, whole)
    assert not starts_cache("auto", True, partial)


def test_each_action_says_its_next_cursor_and_whether_the_trust_is_settled() -> None:
    cache, previous = sample_cache(1), sample_cache(0)
    assert _read(KeepCache()).next_cursor is None and _read(KeepCache()).settled is None
    assert _read(DropCache()).next_cursor is None and _read(DropCache()).settled is None
    assert _read(WriteCache(cache, previous)).next_cursor == cache.cursor
    assert _read(WriteCache(cache, previous)).settled is None
    moved = _read(MoveCursor(previous.head, CURSOR, SETTLED))
    assert moved.next_cursor == CURSOR and moved.settled is SETTLED


def test_each_action_as_json_in_the_sync_state() -> None:
    previous = sample_cache(0)
    stored = {**previous.to_dict(), "settled": SETTLED.to_dict()}
    assert kept_json(KeepCache(), stored) is stored
    assert kept_json(DropCache(), stored) == {}
    assert kept_json(WriteCache(sample_cache(1), previous), stored) == sample_cache(1).to_dict()
    moved = kept_json(MoveCursor(previous.head, CURSOR, SETTLED), stored)
    assert moved == {**stored, "cursor": CURSOR}


async def test_each_action_as_table_writes() -> None:
    previous, cache = sample_cache(0), sample_cache(1)
    expected: list[list[tuple[str, object]]] = [
        [],
        [("clear", None)],
        [("save", cache_write(previous, cache))],
        [("save", DeltaCacheWrite(CURSOR, previous.mapped, previous.full_read_at, replace=False))],
    ]
    actions = [KeepCache(), DropCache(), WriteCache(cache, previous), MoveCursor(previous.head, CURSOR, SETTLED)]
    for action, calls in zip(actions, expected, strict=True):
        store = _Recording()
        after = await _reader(store).keep_cache(TRUST, _read(action), SyncState(delta={"stale": 1}), None)
        assert store.calls == calls, action
        assert after.delta == {}  # the cache has tables: no JSON copy


async def test_the_settled_record_goes_with_the_state_whatever_the_action() -> None:
    previous = sample_cache(0)
    for action in (KeepCache(), MoveCursor(previous.head, CURSOR, SETTLED)):
        for state in (_JsonOnly(), InMemoryUserStore()):
            kept = await _reader(state).keep_cache(TRUST, _read(action), SyncState(delta=previous.to_dict()), SETTLED)
            assert Settled.from_state(kept) == SETTLED
            unsettled = await _reader(state).keep_cache(TRUST, _read(action), kept, None)
            assert Settled.from_state(unsettled) is None


_ACTIONS = st.sampled_from(["keep", "drop", "write", "write-whole", "move"])


@settings(max_examples=60, deadline=None)
@given(kind=_ACTIONS, before=st.integers(0, 50), after=st.integers(0, 50))
def test_json_and_tables_keep_the_same_cache_after_any_action(kind: str, before: int, after: int) -> None:
    """Property: whichever action a read ends with, the JSON copy and the table store load the same cache."""
    previous, cache = sample_cache(before), sample_cache(after)
    action = {
        "keep": KeepCache(),
        "drop": DropCache(),
        "write": WriteCache(cache, previous),
        "write-whole": WriteCache(cache, None),
        "move": MoveCursor(previous.head, {**CURSOR, "n": after}, SETTLED),
    }[kind]

    async def both() -> tuple[DeltaCache | None, DeltaCache | None]:
        state = SyncState(delta=previous.to_dict())
        as_json = await _reader(_JsonOnly()).keep_cache(TRUST, _read(action), state, None)
        tables = InMemoryUserStore()
        await tables.save_delta(TRUST, cache_write(None, previous))
        await _reader(tables).keep_cache(TRUST, _read(action), state, None)
        return DeltaCache.from_dict(as_json.delta), await tables.load_delta(TRUST)

    from_json, from_tables = asyncio.run(both())
    assert from_json == from_tables
    if kind == "drop":
        assert from_json is None
    elif kind == "keep":
        assert from_json == previous
    elif kind == "move":
        assert from_json == attrs.evolve(previous, cursor={**CURSOR, "n": after})
    else:
        assert from_json == cache
