"""A settled trust: an incremental run that finds nothing changed anywhere plans nothing, and says so.

"Anywhere" is the directory, the store, the settings, the hierarchy and the
sync state: each one changed on its own makes the next run plan in full
again, and that run ends where a full run ends.
"""

from __future__ import annotations

import datetime as dt

import attrs
import pytest

from calm_azure_sync import (
    ExclusionPolicy,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    Site,
    SqliteUserStore,
    TrustHierarchy,
)
from calm_azure_sync.core.plan import Unassign
from calm_azure_sync.model import Role

from .helpers import SYSTEM, synced_access_of
from .test_incremental import CONFIG, HIERARCHY, Clock, fixture


class CountingStore(InMemoryUserStore):
    """Counts load() calls: a settled run never loads the store."""

    loads = 0

    async def load(self, trust_site_id):
        type(self).loads += 1
        return await super().load(trust_site_id)


def reconciler(directory, store, audit=None, hierarchy=HIERARCHY, clock=None):
    return Reconciler(directory, store, audit or InMemoryAuditSink(), hierarchy, clock=clock or Clock())


async def settle(directory, store, audit=None, config=CONFIG, hierarchy=HIERARCHY):
    """Runs until one planned nothing (the second, after the first import); returns that run's report."""
    first = await reconciler(directory, store, audit, hierarchy).run(config, actor=SYSTEM)
    assert first.ok and first.counts["create_user"] > 0
    quiet = await reconciler(directory, store, audit, hierarchy).run(config, actor=SYSTEM)
    assert quiet.ok and quiet.mode == "incremental" and not quiet.plan.changes
    return quiet


async def test_a_quiet_run_after_a_run_that_planned_nothing_skips_the_store_and_the_planner():
    directory = InMemoryDirectory.from_dict(fixture())
    store, audit = CountingStore(), InMemoryAuditSink()
    quiet = await settle(directory, store, audit)
    CountingStore.loads = 0
    again = await reconciler(directory, store, audit).run(CONFIG, actor=SYSTEM)
    assert again.ok and again.mode == "incremental"
    assert again.mode_reason == f"nothing changed in the directory, the store or the settings since run {quiet.run_id}"
    assert CountingStore.loads == 0
    assert again.counts == quiet.counts  # the excluded and skipped figures as that run gave them
    assert again.plan.users_in_scope == quiet.plan.users_in_scope and again.plan.changes == ()
    logged = [e for e in audit.events if e.run_id == again.run_id]
    # start, the one discovery summary (the settling run's per-group figures), end: nothing per group or user
    assert [e.kind.value for e in logged] == ["import_started", "discovery", "import_completed"]
    (quiet_read,) = [e for e in audit.events if e.run_id == quiet.run_id and e.kind.value == "discovery"]
    (read,) = [e for e in logged if e.kind.value == "discovery"]
    assert read.detail["groups"] == quiet_read.detail["groups"] == dict(again.group_users) == dict(quiet.group_users)
    assert read.detail["groups"] and read.detail["mode"] == "incremental"
    assert read.detail["settled_by"] == quiet.run_id
    # and it stays settled
    third = await reconciler(directory, store, audit).run(CONFIG, actor=SYSTEM)
    assert third.mode_reason == again.mode_reason and CountingStore.loads == 0


async def _store(store_kind, tmp_path, request):
    if store_kind == "sqlite":
        return SqliteUserStore(tmp_path / "calm.db")
    if store_kind == "postgres":
        from calm_azure_sync.postgres import PostgresUserStore

        store = PostgresUserStore(request.getfixturevalue("postgres_url"), schema=request.getfixturevalue("postgres_schema"))
        await store.migrate()
        return store
    return InMemoryUserStore()


async def _plans_again_after(change, *, store_kind="memory", tmp_path=None, request=None):
    directory = InMemoryDirectory.from_dict(fixture())
    store = await _store(store_kind, tmp_path, request)
    try:
        await settle(directory, store)
        config, hierarchy = await change(directory, store)
        report = await reconciler(directory, store, hierarchy=hierarchy).run(config, actor=SYSTEM)
        assert report.ok, report.errors
        assert not report.mode_reason.startswith("nothing changed"), report.mode_reason
        fresh = InMemoryUserStore()
        truth = InMemoryDirectory.from_dict(directory.to_dict())
        await reconciler(truth, fresh, hierarchy=hierarchy).run(config, actor=SYSTEM, mode="full")
        assert synced_access_of(await store.load("oak")) == synced_access_of(await fresh.load("oak"))
        return report
    finally:
        if store_kind == "sqlite":
            store.close()
        elif store_kind == "postgres":
            await store.close()


async def _synced_grant(store):
    state = await store.load("oak")
    external_id, access = sorted((e, a) for e, a in state.synced_access.items() if a)[0]
    (site, module), role = sorted(access.items())[0]
    return Unassign(external_id, site, module, previous=role)


STORES = ["memory", "sqlite", "postgres"]  # postgres skips without a server, outside CI


@pytest.mark.parametrize("store_kind", STORES)
async def test_a_store_write_by_anyone_unsettles_the_trust(store_kind, tmp_path, request):
    async def take_a_grant_away(directory, store):
        # Another process (or a person with a tool) removes a synced grant: the next run gives it back.
        results = await store.apply("oak", [await _synced_grant(store)])
        assert results[0].outcome == "applied"
        return CONFIG, HIERARCHY

    report = await _plans_again_after(take_a_grant_away, store_kind=store_kind, tmp_path=tmp_path, request=request)
    assert report.counts["assign"] == 1


@pytest.mark.parametrize("store_kind", STORES)
@pytest.mark.parametrize("helper", ["add_user", "grant", "set_active"])
async def test_a_host_helper_write_unsettles_the_trust(store_kind, helper, tmp_path, request):
    async def by_hand(directory, store):
        if helper == "add_user":
            await store.add_user("visitor@oak.sch.uk", "Visitor")
        else:
            user = next(u for u in (await store.load("oak")).users.values() if u.external_id == "u3")
            if helper == "grant":
                await store.grant(user.user_id, "birch", "Risk", "Admin")
            else:
                await store.set_active(user.user_id, False)
        return CONFIG, HIERARCHY

    await _plans_again_after(by_hand, store_kind=store_kind, tmp_path=tmp_path, request=request)


async def test_a_settings_change_unsettles_the_trust():
    async def exclude_someone(directory, store):
        return attrs.evolve(CONFIG, exclusions=ExclusionPolicy(["u0@*"])), HIERARCHY

    report = await _plans_again_after(exclude_someone)
    assert report.counts["excluded"] == 1


async def test_a_hierarchy_change_unsettles_the_trust():
    async def rename_a_school(directory, store):
        return CONFIG, TrustHierarchy([Site("oak", "Oak"), Site("birch", "Birch Academy", "oak"), Site("ash", "Ash", "oak")])

    await _plans_again_after(rename_a_school)


async def test_a_directory_change_unsettles_the_trust():
    async def a_leaver(directory, store):
        directory.remove_member("g2", "u4")
        return CONFIG, HIERARCHY

    report = await _plans_again_after(a_leaver)
    assert report.mode == "incremental" and report.counts["unassign"] >= 1


async def test_a_pending_hold_is_judged_every_run_never_skipped():
    directory = InMemoryDirectory.from_dict(fixture({"g0": ["u0", "u1", "u2"], "g1": ["u3"], "g2": ["u4", "u5"], "nested": []}))
    store = InMemoryUserStore()
    await settle(directory, store)
    for user in ("u0", "u1", "u2"):
        directory.remove_member("g0", user)  # the whole group empties: held
    held = await reconciler(directory, store).run(CONFIG, actor=SYSTEM)
    assert held.held_removals
    for _ in range(2):
        again = await reconciler(directory, store).run(CONFIG, actor=SYSTEM)
        assert again.held_removals and again.hold_id == held.hold_id
        assert not again.mode_reason.startswith("nothing changed")


async def test_a_full_run_in_between_keeps_nothing_it_did_not_check():
    directory = InMemoryDirectory.from_dict(fixture())
    store = InMemoryUserStore()
    await settle(directory, store)
    await reconciler(directory, store).run(CONFIG, actor=SYSTEM, mode="full")
    after_full = await reconciler(directory, store).run(CONFIG, actor=SYSTEM)
    assert not after_full.mode_reason.startswith("nothing changed")  # full mode left no record behind
    settled = await reconciler(directory, store).run(CONFIG, actor=SYSTEM)
    assert settled.mode_reason.startswith("nothing changed")


async def test_settled_over_sqlite_writes_one_row_and_reads_no_user(tmp_path):
    import sqlite3

    directory = InMemoryDirectory.from_dict(fixture())
    async with SqliteUserStore(tmp_path / "calm.db") as store:
        await settle(directory, store)
        statements = []
        store._db._call(lambda connection: connection.set_trace_callback(statements.append))
        report = await reconciler(directory, store).run(CONFIG, actor=SYSTEM)
        store._db._call(lambda connection: connection.set_trace_callback(None))
        assert report.mode_reason.startswith("nothing changed")
    assert not any("FROM users" in s or "FROM delta_users" in s or "FROM delta_members" in s for s in statements)
    writes = [s for s in statements if s.split()[0].upper() in {"INSERT", "UPDATE", "DELETE"}]
    assert sum(s.startswith("INSERT INTO delta_meta") for s in writes) == 1, writes
    assert all(any(table in s for table in ("delta_meta", "sync_state", "run_locks")) for s in writes), writes
    with sqlite3.connect(tmp_path / "calm.db") as connection:
        assert connection.execute("SELECT count(*) FROM delta_users").fetchone()[0] > 0  # the cache is all still there


async def test_a_clock_past_the_full_resync_interval_reads_in_full_even_when_settled():
    directory = InMemoryDirectory.from_dict(fixture())
    store, clock = InMemoryUserStore(), Clock()
    await settle(directory, store)
    clock.now += dt.timedelta(days=2)
    report = await Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY, clock=clock).run(CONFIG, actor=SYSTEM)
    assert report.mode == "full"
    assert Role.MEMBER  # (the roles stay as they were: nothing changed)


async def test_another_library_version_finds_no_trust_settled(monkeypatch):
    from calm_azure_sync import _version

    directory = InMemoryDirectory.from_dict(fixture())
    store = InMemoryUserStore()
    await settle(directory, store)
    monkeypatch.setattr(_version, "__version__", "99.0.0")  # the version the key is made with
    report = await reconciler(directory, store).run(CONFIG, actor=SYSTEM)
    assert not report.mode_reason.startswith("nothing changed"), report.mode_reason


def test_the_key_changes_with_every_input_and_a_bad_record_is_no_record():
    from calm_azure_sync import SyncState
    from calm_azure_sync.incremental.settled import Settled, settled_key

    base = {"mirror_groups": True, "sync_state": SyncState(), "data_version": 3, "cursor": {"users": "a"},
            "library_version": "0.4.0"}
    key = settled_key(CONFIG, HIERARCHY.sites, **base)
    assert key == settled_key(CONFIG, HIERARCHY.sites, **base)
    variants = [
        settled_key(attrs.evolve(CONFIG, include_guests=True), HIERARCHY.sites, **base),
        settled_key(CONFIG, HIERARCHY.sites[:2], **base),
        settled_key(CONFIG, HIERARCHY.sites, **{**base, "mirror_groups": False}),
        settled_key(CONFIG, HIERARCHY.sites, **{**base, "sync_state": SyncState(baselines={"g0": 1})}),
        settled_key(CONFIG, HIERARCHY.sites, **{**base, "data_version": 4}),
        settled_key(CONFIG, HIERARCHY.sites, **{**base, "cursor": {"users": "b"}}),
        settled_key(CONFIG, HIERARCHY.sites, **{**base, "library_version": "0.5.0"}),
    ]
    assert key not in variants and len(set(variants)) == len(variants)
    # the state's delta data is not an input (it holds the record itself)
    assert key == settled_key(CONFIG, HIERARCHY.sites, **{**base, "sync_state": SyncState(delta={"settled": {}})})
    for bad in (None, [], {"key": "k"}, {"key": "k", "run_id": "r", "counts": {"x": "1"}, "users_in_scope": 1,
                                         "synced_users": 1, "group_users": {}}):
        assert Settled.from_state(SyncState(delta={"settled": bad})) is None


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
async def test_a_missing_data_version_row_is_an_error_and_no_run_is_settled(store_kind, tmp_path, request):
    from calm_azure_sync import ConfigError

    directory = InMemoryDirectory.from_dict(fixture())
    store = await _store(store_kind, tmp_path, request)
    try:
        await settle(directory, store)
        if store_kind == "sqlite":
            import sqlite3

            with sqlite3.connect(tmp_path / "calm.db") as connection:
                connection.execute("DELETE FROM data_version")
        else:
            import psycopg

            with psycopg.connect(request.getfixturevalue("postgres_url"), autocommit=True) as connection:
                connection.execute(f'DELETE FROM "{request.getfixturevalue("postgres_schema")}".data_version')
        with pytest.raises(ConfigError, match="data_version"):
            await store.data_version()
        report = await reconciler(directory, store).run(CONFIG, actor=SYSTEM)
        assert report.ok and not report.mode_reason.startswith("nothing changed"), report.mode_reason
    finally:
        if store_kind == "sqlite":
            store.close()
        else:
            await store.close()


async def test_a_settled_run_reads_out_the_settling_runs_skip_counts():
    excluding = attrs.evolve(CONFIG, exclusions=ExclusionPolicy(["u0@*"]))
    directory = InMemoryDirectory.from_dict(fixture())
    store = InMemoryUserStore()
    audit = InMemoryAuditSink()
    quiet = await settle(directory, store, audit, config=excluding)
    assert quiet.counts["excluded"] == 1
    told = [e.subject for e in audit.events if e.kind.value == "user_excluded"]
    assert told == ["u0"]  # once, by the first run that left them out (SyncState.skips_logged)
    again = await reconciler(directory, store, audit).run(excluding, actor=SYSTEM)
    assert again.mode_reason.startswith("nothing changed")
    assert again.counts["excluded"] == 1 and "excluded=1" in str(again), str(again)
    assert again.plan.skipped == quiet.plan.skipped  # the report names them as that run did
    # The Import Log does not list them one by one again: its discovery summary counts them, naming that run.
    logged = [e for e in audit.events if e.run_id == again.run_id]
    assert not [e for e in logged if e.kind.value in ("user_excluded", "user_skipped")]
    (summary,) = [e for e in logged if e.kind.value == "discovery"]
    assert summary.detail["left_out"]["excluded"] == 1 and summary.detail["settled_by"] == quiet.run_id
    assert "1 excluded" in summary.message, summary.message


async def test_a_store_keeping_the_cache_as_json_settles_too_and_moves_only_the_cursor():
    from .test_incremental import JsonCacheStore

    directory = InMemoryDirectory.from_dict(fixture())
    store = JsonCacheStore()
    await settle(directory, store)
    before = (await store.load_state("oak")).delta
    again = await reconciler(directory, store).run(CONFIG, actor=SYSTEM)
    assert again.mode_reason.startswith("nothing changed")
    after = (await store.load_state("oak")).delta
    assert {k: v for k, v in after.items() if k not in ("cursor", "settled")} == {
        k: v for k, v in before.items() if k not in ("cursor", "settled")
    }
    directory.remove_member("g2", "u4")
    changed = await reconciler(directory, store).run(CONFIG, actor=SYSTEM)
    assert changed.mode == "incremental" and changed.counts["unassign"] >= 1  # the moved cursor reads on
