"""The Import Log tells the truth: outcomes not intentions, every refusal, and an end to every run."""

from __future__ import annotations

import asyncio

import attrs
import pytest

from calm_azure_sync import (
    Actor,
    AuditKind,
    ChildSiteConfigurationError,
    ConfigError,
    ExclusionPolicy,
    GroupMapping,
    GroupNotFoundError,
    ImportAlreadyRunningError,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    NotAuthorizedError,
    Reconciler,
    RemovalPolicy,
    Site,
    SyncConfig,
    SyncState,
    TrustHierarchy,
)

from .helpers import SYSTEM

HIERARCHY = TrustHierarchy([
    Site("oak", "Oak Trust"), Site("birch", "Birch", "oak"), Site("elm", "Elm Trust"), Site("yew", "Yew", "elm"),
])


def directory(staff=("u1", "u2", "u3"), tenant_id=None):
    return InMemoryDirectory.from_dict({
        "users": [{"id": i, "displayName": i.upper(), "mail": f"{i}@oak.sch.uk", "accountEnabled": True}
                  for i in ("u1", "u2", "u3")],
        "groups": [{"id": "g-staff", "displayName": "Staff"}, {"id": "g-other"}],
        "members": {"g-staff": list(staff)},
    }, tenant_id=tenant_id)


def config(**overrides):
    values = {"trust_site_id": "oak", "mappings": [GroupMapping("g-staff", "birch", {"Risk": "Member"})]}
    values.update(overrides)
    return SyncConfig(**values)


def kinds(audit, run_id=None):
    return [event.kind for event in audit.events if run_id is None or event.run_id == run_id]


@pytest.mark.parametrize(
    ("actor", "cfg", "error", "reason"),
    [
        (Actor("teacher", set()), config(), NotAuthorizedError, "not_authorized"),
        (Actor("birch-admin", {"birch"}), config(trust_site_id="birch", mappings=[]), ChildSiteConfigurationError,
         "child_site"),
        (SYSTEM, config(mappings=[GroupMapping("g-staff", "yew", {"Risk": "Member"})]), ConfigError, "invalid_config"),
        (SYSTEM, config(tenant_id="tenant-b"), ConfigError, "tenant_mismatch"),
        (None, config(), NotAuthorizedError, "not_authorized"),
    ],
    ids=["not-admin", "child-site", "invalid-config", "tenant-mismatch", "no-actor"],
)
async def test_every_refusal_is_logged_with_its_reason_and_actor(actor, cfg, error, reason):
    audit, store = InMemoryAuditSink(), InMemoryUserStore()
    reconciler = Reconciler(directory(tenant_id="tenant-a"), store, audit, HIERARCHY)
    with pytest.raises(error):
        await reconciler.run(cfg, actor=actor)
    [refused] = audit.events
    assert refused.kind is AuditKind.IMPORT_REFUSED and refused.detail["reason"] == reason
    assert refused.actor_id == (actor.user_id if actor is not None else None)
    assert (await store.load("oak")).users == {}


async def test_a_run_refused_because_another_holds_the_lock_is_logged():
    audit, store = InMemoryAuditSink(), InMemoryUserStore()
    reconciler = Reconciler(directory(), store, audit, HIERARCHY)
    async with store.run_lock("oak"):
        with pytest.raises(ImportAlreadyRunningError):
            await reconciler.run(config(), actor=SYSTEM)
    assert [(e.kind, e.detail["reason"]) for e in audit.events] == [(AuditKind.IMPORT_REFUSED, "already_running")]


async def test_a_cancelled_run_ends_with_import_failed_and_releases_the_lock():
    class Hanging(InMemoryDirectory):
        async def group_members(self, group_id):
            await asyncio.sleep(30)
            return []

    audit, store = InMemoryAuditSink(), InMemoryUserStore()
    base = directory()
    hanging = Hanging(base.users.values(), base.groups.values(), base.members)
    with pytest.raises((asyncio.TimeoutError, asyncio.CancelledError)):
        await asyncio.wait_for(Reconciler(hanging, store, audit, HIERARCHY).run(config(), actor=SYSTEM), 0.2)
    assert kinds(audit) == [AuditKind.IMPORT_STARTED, AuditKind.IMPORT_FAILED]
    assert "cancelled" in audit.events[-1].message
    assert (await Reconciler(base, store, audit, HIERARCHY).run(config(), actor=SYSTEM)).ok  # the lock is free


async def test_a_run_whose_every_mapped_group_failed_is_import_failed_not_nothing_to_change():
    audit = InMemoryAuditSink()
    report = await Reconciler(directory(), InMemoryUserStore(), audit, HIERARCHY).run(
        config(mappings=[GroupMapping("g-gone", "birch", {"Risk": "Member"})]), actor=SYSTEM
    )
    assert not report.ok
    assert kinds(audit, report.run_id)[-1] is AuditKind.IMPORT_FAILED
    assert "no mapped group could be read" in audit.events[-1].message


async def test_plan_records_only_discovery_even_when_a_mapped_group_is_missing():
    audit = InMemoryAuditSink()
    cfg = config(mappings=[GroupMapping("g-staff", "birch", {"Risk": "Member"}),
                           GroupMapping("g-gone", "birch", {"Policies": "Member"})])
    plan = await Reconciler(directory(), InMemoryUserStore(), audit, HIERARCHY).plan(cfg, actor=SYSTEM)
    assert plan.unreadable_groups and set(kinds(audit)) == {AuditKind.DISCOVERY}


async def test_a_user_who_keeps_other_access_is_not_reported_deactivated():
    audit, store = InMemoryAuditSink(), InMemoryUserStore()
    cfg = config(removal=RemovalPolicy("deactivate"))
    other = SyncConfig("elm", [GroupMapping("g-staff", "yew", {"Risk": "Member"})])
    await Reconciler(directory(), store, audit, HIERARCHY).run(cfg, actor=SYSTEM)
    await Reconciler(directory(), store, audit, HIERARCHY).run(other, actor=SYSTEM)  # u1 also has Elm access
    report = await Reconciler(directory(staff=("u2", "u3")), store, audit, HIERARCHY).run(cfg, actor=SYSTEM)
    assert report.ok and report.counts["unassign"] == 1
    assert AuditKind.USER_DEACTIVATED not in kinds(audit, report.run_id)
    u1 = next(u for u in (await store.load("oak")).users.values() if u.external_id == "u1")
    assert u1.active


async def test_a_create_the_store_found_already_done_is_not_logged_as_a_creation():
    audit, store = InMemoryAuditSink(), InMemoryUserStore()
    reconciler = Reconciler(directory(), store, audit, HIERARCHY)
    plan = await reconciler.plan(config(), actor=SYSTEM)
    await store.apply("oak", [c for c in plan.changes if type(c).__name__ == "CreateUser"])  # another run got there
    results = await store.apply("oak", [c for c in plan.changes if type(c).__name__ == "CreateUser"])
    assert {r.outcome for r in results} == {"unchanged"}
    report = await Reconciler(directory(), store, audit, HIERARCHY).run(config(), actor=SYSTEM)
    assert report.counts["create_user"] == 0 and AuditKind.USER_CREATED not in kinds(audit, report.run_id)


async def test_a_stale_mapping_is_reported_at_every_run_with_the_removals_it_keeps_held():
    audit, store = InMemoryAuditSink(), InMemoryUserStore()
    cfg = config(mappings=[GroupMapping("g-staff", "birch", {"Risk": "Member"}),
                           GroupMapping("g-other", "birch", {"Risk": "Manager"})])
    two = InMemoryDirectory.from_dict({**directory().to_dict(), "members": {"g-staff": ["u1", "u2"],
                                                                             "g-other": ["u3"]}})
    await Reconciler(two, store, audit, HIERARCHY).run(cfg, actor=SYSTEM)
    gone = InMemoryDirectory.from_dict({**directory().to_dict(), "groups": [{"id": "g-staff"}],
                                        "members": {"g-staff": ["u1", "u2"]}})
    for _ in range(2):
        report = await Reconciler(gone, store, audit, HIERARCHY).run(cfg, actor=SYSTEM)
        stale = [e for e in audit.events if e.run_id == report.run_id and e.detail.get("stale")]
        assert len(stale) == 1 and stale[0].subject == "g-other" and stale[0].detail["removals_held"] == 1
    with pytest.raises(GroupNotFoundError):
        await gone.group_members("g-other")


def _many_groups(groups: int):
    """``groups`` mapped groups of 3 users each (one user disabled, so every run has a skip to tell)."""
    users = [{"id": f"u{i}", "displayName": f"U{i}", "mail": f"u{i}@oak.sch.uk", "accountEnabled": i != 0}
             for i in range(groups * 3)]
    members = {f"g{g:03d}": [f"u{g * 3 + k}" for k in range(3)] for g in range(groups)}
    fixture = {"users": users, "groups": [{"id": g, "displayName": g.upper()} for g in members], "members": members}
    cfg = config(mappings=[GroupMapping(g, "birch", {"Risk": "Member"}) for g in members])
    return InMemoryDirectory.from_dict(fixture), cfg


@pytest.mark.parametrize("groups", [3, 60])
async def test_a_no_change_run_writes_a_few_rows_whatever_the_number_of_groups(groups):
    directory_, cfg = _many_groups(groups)
    audit, store = InMemoryAuditSink(), InMemoryUserStore()
    reconciler = Reconciler(directory_, store, audit, HIERARCHY)
    first = await reconciler.run(cfg, actor=SYSTEM)
    (summary,) = [e for e in audit.events if e.run_id == first.run_id and e.kind is AuditKind.DISCOVERY]
    assert summary.detail["groups"] == dict(first.group_users) == dict.fromkeys(cfg.mappings.group_ids, 3)
    assert summary.detail["users"] == groups * 3 and summary.detail["mode"] == "full"
    assert f"{groups} of {groups} mapped groups read" in summary.message
    planned = await reconciler.run(cfg, actor=SYSTEM)  # incremental, plans: nothing to change
    settled = await reconciler.run(cfg, actor=SYSTEM)  # settled: skips the planner
    assert settled.mode_reason.startswith("nothing changed"), settled.mode_reason
    # The first run told of the disabled user's skip; the next ones do not repeat it, planning or settled.
    assert AuditKind.USER_SKIPPED in kinds(audit, first.run_id)
    assert kinds(audit, planned.run_id) == [AuditKind.IMPORT_STARTED, AuditKind.DISCOVERY, AuditKind.IMPORT_COMPLETED]
    assert planned.counts["skipped"] == 1  # still counted, in the report and the end entry
    assert kinds(audit, settled.run_id) == [AuditKind.IMPORT_STARTED, AuditKind.DISCOVERY, AuditKind.IMPORT_COMPLETED]
    (again,) = [e for e in audit.events if e.run_id == settled.run_id and e.kind is AuditKind.DISCOVERY]
    assert again.detail["groups"] == summary.detail["groups"] and again.detail["left_out"]["skipped"] == 1


async def test_unreadable_groups_get_an_error_each_and_are_named_in_the_discovery_summary():
    audit = InMemoryAuditSink()
    cfg = config(mappings=[GroupMapping("g-staff", "birch", {"Risk": "Member"}),
                           GroupMapping("g-broken", "birch", {"Policies": "Member"})])

    class Broken(InMemoryDirectory):
        async def group_members(self, group_id):
            if group_id == "g-broken":
                raise ConnectionError("Graph is down")
            return await super().group_members(group_id)

    broken = Broken.from_dict({**directory().to_dict(), "groups": [{"id": "g-staff"}, {"id": "g-broken"}]})
    report = await Reconciler(broken, InMemoryUserStore(), audit, HIERARCHY).run(cfg, actor=SYSTEM, mode="full")
    logged = [e for e in audit.events if e.run_id == report.run_id]
    (summary,) = [e for e in logged if e.kind is AuditKind.DISCOVERY]
    assert summary.detail["groups"] == {"g-staff": 3} and summary.detail["unreadable"] == ["g-broken"]
    assert "1 not read completely (g-broken)" in summary.message
    errors = [e for e in logged if e.kind is AuditKind.ERROR and e.detail.get("stage") == "read"]
    assert [e.subject for e in errors] == ["g-broken"] and not report.ok


def _skip_entries(audit, run_id):
    return {(e.subject, e.kind.value, e.detail["reason"]) for e in audit.events
            if e.run_id == run_id and e.kind in (AuditKind.USER_SKIPPED, AuditKind.USER_EXCLUDED)}


async def test_a_skip_is_logged_when_it_is_news_new_changed_or_back_and_every_run_counts_it():
    directory_ = InMemoryDirectory.from_dict({
        "users": [{"id": "u1", "displayName": "Ann", "mail": "ann@oak.sch.uk", "accountEnabled": False},
                  {"id": "u2", "displayName": "Bob", "mail": "bob@oak.sch.uk"}],
        "groups": [{"id": "g-staff", "displayName": "Staff"}], "members": {"g-staff": ["u1", "u2"]},
    })
    cfg = config(mappings=[GroupMapping("g-staff", "birch", {"Risk": "Member"})])
    audit, store = InMemoryAuditSink(), InMemoryUserStore()
    reconciler = Reconciler(directory_, store, audit, HIERARCHY)
    runs = [await reconciler.run(cfg, actor=SYSTEM, mode="full")]
    assert {(s, k) for s, k, _ in _skip_entries(audit, runs[-1].run_id)} == {("u1", "user_skipped")}
    runs.append(await reconciler.run(cfg, actor=SYSTEM, mode="full"))  # the same skip: not news
    assert _skip_entries(audit, runs[-1].run_id) == set() and runs[-1].counts["skipped"] == 1
    # A new skip is news; the old one, the same, is not.
    excluding = config(mappings=cfg.mappings.mappings, exclusions=ExclusionPolicy(["bob@*"]))
    runs.append(await reconciler.run(excluding, actor=SYSTEM, mode="full"))
    assert {(s, k) for s, k, _ in _skip_entries(audit, runs[-1].run_id)} == {("u2", "user_excluded")}
    # Back in scope, then left out again: told again.
    runs.append(await reconciler.run(cfg, actor=SYSTEM, mode="full"))
    assert _skip_entries(audit, runs[-1].run_id) == set()
    runs.append(await reconciler.run(excluding, actor=SYSTEM, mode="full"))
    assert {(s, k) for s, k, _ in _skip_entries(audit, runs[-1].run_id)} == {("u2", "user_excluded")}
    # The same user left out for another reason: told again.
    directory_.users["u2"] = attrs.evolve(directory_.users["u2"], account_enabled=False)
    runs.append(await reconciler.run(cfg, actor=SYSTEM, mode="full"))
    assert {(s, k) for s, k, _ in _skip_entries(audit, runs[-1].run_id)} == {("u2", "user_skipped")}
    assert [run.counts["skipped"] + run.counts["excluded"] for run in runs] == [1, 1, 2, 1, 2, 2]


async def test_a_state_saved_before_skips_were_remembered_logs_every_skip_once():
    directory_, cfg = _many_groups(2)
    audit, store = InMemoryAuditSink(), InMemoryUserStore()
    reconciler = Reconciler(directory_, store, audit, HIERARCHY)
    await reconciler.run(cfg, actor=SYSTEM)
    state = await store.load_state(cfg.trust_site_id)
    assert state.skips_logged and "skips_logged" in state.to_dict()
    older = state.to_dict()
    del older["skips_logged"]  # as v0.3 saved it
    await store.save_state(cfg.trust_site_id, SyncState.from_dict(older))
    again = await reconciler.run(cfg, actor=SYSTEM, mode="full")
    assert len(_skip_entries(audit, again.run_id)) == 1


@pytest.mark.parametrize("bad", [["u1"], {"u1": 3}, "x"])
def test_a_stored_skips_logged_that_is_not_an_object_of_text_is_refused_by_name(bad):
    data = {**SyncState(skips_logged={"u1": "ab12"}).to_dict(), "skips_logged": bad}
    assert SyncState.from_dict(SyncState(skips_logged={"u1": "ab12"}).to_dict()).skips_logged == {"u1": "ab12"}
    with pytest.raises(ConfigError, match="skips_logged"):
        SyncState.from_dict(data, where="trust oak")


async def test_a_failed_import_says_why_once():
    from .helpers import FlakyStore

    store = FlakyStore(InMemoryUserStore())
    store.fail_load = RuntimeError("disk on fire")
    audit = InMemoryAuditSink()
    report = await Reconciler(directory(), store, audit, HIERARCHY).run(config(), actor=SYSTEM)
    assert not report.ok and report.errors[-1] == "import failed: RuntimeError: disk on fire"
    (failed,) = [e for e in audit.events if e.kind is AuditKind.IMPORT_FAILED]
    assert failed.message == "Import failed: RuntimeError: disk on fire"  # was "Import failed: import failed: …"
