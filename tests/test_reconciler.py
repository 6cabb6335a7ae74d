"""Start Import end to end over the in-memory parts: every guarantee of API.md section 5."""

from __future__ import annotations

import asyncio

import attrs
import pytest

from calm_azure_sync import (
    Actor,
    AuditKind,
    ChildSiteConfigurationError,
    ConfigError,
    DirectoryAccessError,
    DirectoryError,
    ExclusionPolicy,
    GroupMapping,
    GroupNotFoundError,
    HoldMismatchError,
    ImportAlreadyRunningError,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    NotAuthorizedError,
    Reconciler,
    RemovalPolicy,
    Role,
    Site,
    SyncConfig,
    TrustHierarchy,
    Unassign,
)

from .helpers import (
    SYSTEM,
    FailingSink,
    FlakyDirectory,
    FlakyStore,
    expected_access,
    refused_only,
    synced_access_of,
)

HIERARCHY = TrustHierarchy([Site("oak", "Oak Trust"), Site("birch", "Birch High", "oak"), Site("ash", "Ash", "oak")])
ADMIN = Actor("head", {"oak"})


def tenant(staff: int = 12, *, slt: tuple[int, ...] = (0, 1)) -> dict:
    users = [
        {"id": f"u{i:02d}", "displayName": f"Teacher {i}", "givenName": "Teacher", "surname": str(i),
         "mail": f"teacher{i}@birch.sch.uk", "accountEnabled": True, "userType": "Member"}
        for i in range(staff)
    ]
    users.append({"id": "guest", "mail": "g@partner.org", "userType": "Guest",
                  "userPrincipalName": "g_partner.org#EXT#@oak.onmicrosoft.com"})
    users.append({"id": "leaver", "mail": "leaver@birch.sch.uk", "accountEnabled": False})
    users.append({"id": "scanner", "mail": "scanner@birch.sch.uk"})
    return {
        "users": users,
        "groups": [{"id": "g-all"}, {"id": "g-teachers"}, {"id": "g-slt"}, {"id": "g-unmapped"}],
        "members": {
            "g-all": ["g-teachers", "guest", "leaver", "scanner"],
            "g-teachers": [f"u{i:02d}" for i in range(staff)],
            "g-slt": [f"u{i:02d}" for i in slt],
        },
    }


def make_config(**overrides) -> SyncConfig:
    values = {
        "trust_site_id": "oak",
        "mappings": [
            GroupMapping("g-all", "birch", {"Policies": "Member"}),
            GroupMapping("g-slt", "birch", {"Policies": "Manager", "Risk": "Manager"}),
            GroupMapping("g-teachers", "ash", {"Risk": "Member"}),
        ],
        "removal": RemovalPolicy("deactivate", max_removal_ratio=0.5, min_removals_to_hold=5),
    }
    values["exclusions"] = ExclusionPolicy(["scanner@*"])
    values.update(overrides)
    return SyncConfig(**values)


@pytest.fixture
def parts():
    directory = InMemoryDirectory.from_dict(tenant())
    store = InMemoryUserStore()
    audit = InMemoryAuditSink()
    return directory, store, audit, Reconciler(directory, store, audit, HIERARCHY)


def kinds(audit, run_id=None):
    return [e.kind for e in audit.events if run_id is None or e.run_id == run_id]


async def test_first_import_creates_users_grants_access_and_logs_every_step(parts):
    directory, store, audit, reconciler = parts
    config = make_config()
    report = await reconciler.run(config, actor=ADMIN)
    assert report.ok, report.errors
    assert report.counts["create_user"] == 12
    assert report.counts["assign"] == 12 * 2 + 2  # Policies@birch and Risk@ash each; SLT also Risk@birch
    assert report.counts["skipped"] == 2 and report.counts["excluded"] == 1
    state = await store.load("oak")
    assert synced_access_of(state) == expected_access(directory, config)
    logged = kinds(audit, report.run_id)
    assert logged[0] is AuditKind.IMPORT_STARTED and logged[-1] is AuditKind.IMPORT_COMPLETED
    for kind in (AuditKind.DISCOVERY, AuditKind.USER_CREATED, AuditKind.ASSIGNMENT_ADDED,
                 AuditKind.USER_SKIPPED, AuditKind.USER_EXCLUDED):
        assert kind in logged
    assert all(e.run_id == report.run_id and e.actor_id == "head" for e in audit.events)
    assert logged.count(AuditKind.USER_CREATED) == 12


async def test_second_run_with_nothing_changed_changes_nothing(parts):
    _, store, _audit, reconciler = parts
    await reconciler.run(make_config(), actor=SYSTEM)
    before = await store.load("oak")
    again = await reconciler.run(make_config(), actor=SYSTEM)
    assert again.ok
    assert sum(v for k, v in again.counts.items() if k not in {"skipped", "excluded"}) == 0
    assert (await reconciler.plan(make_config(), actor=SYSTEM)).changes == ()
    assert await store.load("oak") == before


async def test_plan_writes_nothing_and_logs_only_discovery(parts):
    _, store, audit, reconciler = parts
    plan = await reconciler.plan(make_config(), actor=SYSTEM)
    assert plan.summary()["create_user"] == 12
    assert (await store.load("oak")).users == {}
    assert set(kinds(audit)) == {AuditKind.DISCOVERY}


async def test_only_a_trust_admin_may_import_and_children_are_sent_to_the_trust(parts):
    _, store, audit, reconciler = parts
    with pytest.raises(NotAuthorizedError):
        await reconciler.run(make_config(), actor=Actor("teacher", set()))
    with pytest.raises(NotAuthorizedError):
        await reconciler.run(make_config(), actor=Actor("birch-admin", {"birch"}))
    with pytest.raises(ChildSiteConfigurationError) as caught:
        await reconciler.run(make_config(trust_site_id="birch", mappings=[]), actor=Actor("birch-admin", {"birch"}))
    assert caught.value.trust_site_id == "oak"
    assert refused_only(audit.events) and (await store.load("oak")).users == {}


async def test_a_mapping_outside_the_trust_is_refused_before_anything_runs(parts):
    _, _, audit, reconciler = parts
    hierarchy = TrustHierarchy([*HIERARCHY.sites, Site("elsewhere")])
    reconciler.hierarchy = hierarchy
    with pytest.raises(ConfigError, match="not part of trust"):
        await reconciler.run(make_config(mappings=[GroupMapping("g-all", "elsewhere", {"Risk": "Admin"})]), actor=SYSTEM)
    assert refused_only(audit.events)


async def test_a_directory_of_another_tenant_is_refused(parts):
    directory, _, audit, reconciler = parts
    directory.tenant_id = "tenant-b"
    with pytest.raises(ConfigError, match="tenant-a"):
        await reconciler.run(make_config(tenant_id="tenant-a"), actor=SYSTEM)
    assert refused_only(audit.events)
    directory.tenant_id = "TENANT-A"
    assert (await reconciler.run(make_config(tenant_id="tenant-a"), actor=SYSTEM)).ok


async def test_a_second_concurrent_import_of_the_same_trust_is_refused(parts):
    _, store, _, reconciler = parts
    async with store.run_lock("oak"):
        with pytest.raises(ImportAlreadyRunningError):
            await reconciler.run(make_config(), actor=SYSTEM)
    assert (await reconciler.run(make_config(), actor=SYSTEM)).ok


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (DirectoryError("Service unavailable", code="serviceNotAvailable", status=503), "could not be read"),
        (GroupNotFoundError("g-slt"), "stale mapping"),
        (DirectoryAccessError("Insufficient privileges", missing_permissions=["GroupMember.Read.All"]), "access denied"),
        (ConnectionResetError("reset by peer"), "could not be read"),
    ],
)
async def test_partial_read_removes_and_downgrades_nothing(parts, failure, reason):
    directory, store, audit, _ = parts
    config = make_config()
    await Reconciler(directory, store, audit, HIERARCHY).run(config, actor=SYSTEM)
    # In Azure: u05 joins SLT, u00 leaves SLT, u11 leaves the school, and the SLT group fails to read.
    data = tenant(slt=(1, 5))
    data["members"]["g-teachers"].remove("u11")
    flaky = FlakyDirectory(InMemoryDirectory.from_dict(data), {"g-slt": failure})
    report = await Reconciler(flaky, store, audit, HIERARCHY).run(config, actor=SYSTEM)
    assert not report.ok
    assert any(reason in error for error in report.errors)
    assert report.hold_reason == "partial_read"
    assert any(isinstance(c, Unassign) and c.external_id == "u11" for c in report.held_removals)
    access = synced_access_of(await store.load("oak"))
    assert access["u00"][("birch", "Risk")] is Role.MANAGER  # not downgraded
    assert access["u11"]  # not removed
    error_events = [e for e in audit.events if e.run_id == report.run_id and e.kind is AuditKind.ERROR]
    assert error_events and error_events[0].subject == "g-slt"
    assert AuditKind.REMOVALS_DEFERRED in kinds(audit, report.run_id)
    # The next clean run converges.
    clean = InMemoryDirectory.from_dict(data)
    assert (await Reconciler(clean, store, audit, HIERARCHY).run(config, actor=SYSTEM)).ok
    assert synced_access_of(await store.load("oak")) == expected_access(clean, config)


async def test_a_change_the_store_rejects_is_an_error_event_and_the_rest_apply(parts):
    directory, store, audit, _ = parts
    flaky = FlakyStore(store, reject=lambda c: "row locked" if c.external_id == "u03" else None)
    reconciler = Reconciler(directory, flaky, audit, HIERARCHY)
    report = await reconciler.run(make_config(), actor=SYSTEM)
    assert not report.ok
    assert report.counts["create_user"] == 11 and report.counts["failed"] > 0
    assert all("u03" in error or "teacher3@" in error for error in report.errors)
    assert any(e.kind is AuditKind.ERROR and e.subject == "u03" for e in audit.events)
    # Next run retries it.
    flaky.reject = None
    retry = await reconciler.run(make_config(), actor=SYSTEM)
    assert retry.ok and retry.counts["create_user"] == 1
    assert synced_access_of(await store.load("oak")) == expected_access(directory, make_config())


async def test_a_store_that_fails_whole_batches_gives_a_failed_report_not_a_crash(parts):
    directory, store, audit, _ = parts
    flaky = FlakyStore(store)
    flaky.fail_apply = OSError("database is locked")
    report = await Reconciler(directory, flaky, audit, HIERARCHY, batch_size=5).run(make_config(), actor=SYSTEM)
    assert not report.ok
    assert report.counts["failed"] == len(report.plan.changes)
    assert kinds(audit, report.run_id)[-1] is AuditKind.IMPORT_COMPLETED


async def test_a_store_that_cannot_load_fails_the_run_with_an_event(parts):
    directory, store, audit, _ = parts
    flaky = FlakyStore(store)
    flaky.fail_load = OSError("no such table")
    report = await Reconciler(directory, flaky, audit, HIERARCHY).run(make_config(), actor=SYSTEM)
    assert not report.ok and "no such table" in report.errors[-1]
    assert kinds(audit, report.run_id)[-1] is AuditKind.IMPORT_FAILED


async def test_an_audit_sink_that_is_down_never_corrupts_the_store(parts):
    directory, store, _, _ = parts
    sink = FailingSink(works_for=2)  # import_started and the plan events get through
    reconciler = Reconciler(directory, store, sink, HIERARCHY, batch_size=4)
    report = await reconciler.run(make_config(), actor=SYSTEM)
    assert not report.ok
    assert any("audit sink failed" in error for error in report.errors)
    assert report.unrecorded_events  # handed back for the host to keep
    # The run stopped after the first batch whose events could not be logged: whole users only.
    state = await store.load("oak")
    for stored in state.users.values():
        assert stored.external_id is None or state.synced_access.get(stored.external_id)
    # With the sink back, the next run converges.
    good = InMemoryAuditSink()
    assert (await Reconciler(directory, store, good, HIERARCHY).run(make_config(), actor=SYSTEM)).ok
    assert synced_access_of(await store.load("oak")) == expected_access(directory, make_config())


async def test_a_group_losing_most_members_is_held_until_its_hold_is_confirmed_by_id(parts):
    directory, store, audit, reconciler = parts
    await reconciler.run(make_config(), actor=SYSTEM)
    directory.members["g-teachers"] = ("u00", "u01")  # ten teachers gone at once
    held = await reconciler.run(make_config(), actor=SYSTEM)
    assert held.ok and held.hold_reason == "group_shrank"
    assert len({c.external_id for c in held.held_removals}) == 10
    assert AuditKind.REMOVALS_HELD in kinds(audit, held.run_id)
    assert len(synced_access_of(await store.load("oak"))) == 12
    pending = await reconciler.pending_hold("oak", actor=SYSTEM)
    assert pending is not None and pending.id == held.hold_id and set(pending.changes) == set(held.held_removals)
    again = await reconciler.run(make_config(), actor=SYSTEM)  # nobody confirmed: still held
    assert again.held_removals and len(synced_access_of(await store.load("oak"))) == 12
    with pytest.raises(HoldMismatchError):
        await reconciler.run(make_config(), actor=SYSTEM, confirm_hold="something-else")
    confirmed = await reconciler.run(make_config(), actor=SYSTEM, confirm_hold=pending.id)
    assert confirmed.ok and confirmed.counts["unassign"] > 0 and confirmed.counts["deactivate_user"] == 10
    assert synced_access_of(await store.load("oak")) == expected_access(directory, make_config())
    assert await reconciler.pending_hold("oak", actor=SYSTEM) is None
    assert AuditKind.HOLD_CLEARED in kinds(audit, confirmed.run_id)


async def test_manual_grants_are_never_touched_and_invited_users_are_linked(parts):
    directory, store, _, reconciler = parts
    invited = await store.add_user("TEACHER4@BIRCH.SCH.UK", "Mr Four")
    await store.grant(invited, "birch", "Risk", "Admin")
    report = await reconciler.run(make_config(), actor=SYSTEM)
    assert report.counts["link_user"] == 1 and report.counts["create_user"] == 11
    grants = {(g.site_id, g.module, g.role, g.source) for g in await store.grants(invited)}
    assert ("birch", "Risk", Role.ADMIN, "manual") in grants
    assert ("birch", "Policies", Role.MEMBER, "azure") in grants
    # u04 leaves: the synced grants go, the manual one stays, and the user stays active.
    directory.members["g-teachers"] = tuple(m for m in directory.members["g-teachers"] if m != "u04")
    await reconciler.run(make_config(), actor=SYSTEM)
    grants = {(g.site_id, g.module, g.role, g.source) for g in await store.grants(invited)}
    assert grants == {("birch", "Risk", Role.ADMIN, "manual")}
    assert (await store.load("oak")).users[invited].active


async def test_renamed_users_are_updated_not_duplicated(parts):
    directory, store, audit, reconciler = parts
    await reconciler.run(make_config(), actor=SYSTEM)
    directory.users["u02"] = attrs.evolve(directory.users["u02"], mail="t2.new@birch.sch.uk", display_name="T Two")
    report = await reconciler.run(make_config(), actor=SYSTEM)
    assert report.counts["update_user"] == 1 and report.counts["create_user"] == 0
    users = [u for u in (await store.load("oak")).users.values() if u.external_id == "u02"]
    assert [u.email for u in users] == ["t2.new@birch.sch.uk"]
    assert any(e.kind is AuditKind.USER_UPDATED and e.subject == "u02" for e in audit.events)


async def test_progress_reports_stages_and_a_broken_callback_is_harmless(parts):
    directory, store, audit, _ = parts
    seen = []
    reconciler = Reconciler(directory, store, audit, HIERARCHY, progress=lambda *a: seen.append(a), batch_size=3)
    await reconciler.run(make_config(), actor=SYSTEM)
    stages = [stage for stage, _, _ in seen]
    assert stages[0] == "read" and "plan" in stages and stages[-1] == "apply"
    assert seen[-1][1] == seen[-1][2]  # apply finished
    def broken(*args):
        raise RuntimeError("tqdm exploded")

    assert (await Reconciler(directory, store, audit, HIERARCHY, progress=broken).run(make_config(), actor=SYSTEM)).ok


async def test_groups_are_read_concurrently_but_bounded(parts):
    directory, store, audit, _ = parts
    active = peak = 0

    class Slow:
        tenant_id = None

        async def list_groups(self):
            return []

        async def group_members(self, group_id):
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            return await directory.group_members(group_id)

    mappings = [GroupMapping("g-all", site, {f"M{i}": "Member"}) for i, site in enumerate(["oak"])]
    mappings += [GroupMapping("g-teachers", "ash", {"Risk": "Member"}), GroupMapping("g-slt", "birch", {"Risk": "Admin"})]
    reconciler = Reconciler(Slow(), store, audit, HIERARCHY, max_concurrent_reads=2)
    assert (await reconciler.run(make_config(mappings=mappings), actor=SYSTEM)).ok
    assert peak == 2


async def test_discover_lists_groups_and_logs_it(parts):
    _, _, audit, reconciler = parts
    groups = await reconciler.discover("oak", actor=ADMIN)
    assert [g.id for g in groups] == ["g-all", "g-slt", "g-teachers", "g-unmapped"]
    assert audit.events[-1].kind is AuditKind.DISCOVERY
    with pytest.raises(ChildSiteConfigurationError):
        await reconciler.discover("birch", actor=ADMIN)


async def test_report_is_readable(parts):
    _, _, _, reconciler = parts
    report = await reconciler.run(make_config(), actor=SYSTEM)
    text = str(report)
    assert "ok" in text and "create_user=12" in text
    assert "<table>" in report._repr_html_()
    assert report.to_dict()["counts"]["create_user"] == 12


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_an_email_handed_from_one_user_to_another_converges_in_one_run(tmp_path, store_kind):
    from calm_azure_sync import SqliteUserStore

    store = InMemoryUserStore() if store_kind == "memory" else SqliteUserStore(tmp_path / "s.sqlite")
    data = tenant(staff=3)
    directory = InMemoryDirectory.from_dict(data)
    reconciler = Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY)
    await reconciler.run(make_config(), actor=SYSTEM)
    # u02 hands teacher2@ over to a new colleague whose id sorts first: the move must still apply first.
    directory.users["u02"] = attrs.evolve(directory.users["u02"], mail="t2.married@birch.sch.uk")
    directory.users["a-new"] = attrs.evolve(directory.users["u00"], id="a-new", mail="teacher2@birch.sch.uk")
    directory.members["g-teachers"] = (*directory.members["g-teachers"], "a-new")
    report = await reconciler.run(make_config(), actor=SYSTEM)
    assert report.ok, report.errors
    assert report.counts["update_user"] == 1 and report.counts["create_user"] == 1
    assert (await reconciler.plan(make_config(), actor=SYSTEM)).changes == ()
    assert synced_access_of(await store.load("oak")) == expected_access(directory, make_config())


async def test_a_directory_that_cannot_name_its_tenant_is_refused_for_a_connected_trust(parts):
    directory, _, audit, reconciler = parts
    directory.tenant_id = None
    with pytest.raises(ConfigError, match="does not say which tenant"):
        await reconciler.run(make_config(tenant_id="tenant-a"), actor=SYSTEM)
    assert refused_only(audit.events)
    assert (await reconciler.run(make_config(), actor=SYSTEM)).ok  # no tenant configured: nothing to check


async def test_plan_and_suggestions_authorize_an_actor_when_given(parts):
    _, _, audit, reconciler = parts
    with pytest.raises(NotAuthorizedError):
        await reconciler.plan(make_config(), actor=Actor("teacher", set()))
    with pytest.raises(NotAuthorizedError):
        await reconciler.suggest_exclusions(make_config(), actor=Actor("teacher", set()))
    assert audit.events == []
    assert (await reconciler.plan(make_config(), actor=ADMIN)).summary()["create_user"] == 12


async def test_report_repr_is_short(parts):
    _, _, _, reconciler = parts
    report = await reconciler.run(make_config(), actor=SYSTEM)
    assert repr(report) == (
        f"<ImportReport run={report.run_id} trust='oak' ok=True "
        "(create_user=12, assign=26, upsert_group=3, add_group_member=26, skipped=2, excluded=1), errors=0, held=0>"
    )


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_a_user_suspended_in_the_app_stays_suspended(tmp_path, store_kind):
    from calm_azure_sync import SqliteUserStore

    store = InMemoryUserStore() if store_kind == "memory" else SqliteUserStore(tmp_path / "s.sqlite")
    directory = InMemoryDirectory.from_dict(tenant(staff=3))
    reconciler = Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY)
    config = make_config(removal=RemovalPolicy("deactivate"))
    await reconciler.run(config, actor=SYSTEM)
    u01 = next(u for u in (await store.load("oak")).users.values() if u.external_id == "u01")
    # The host suspends u01 in CalmCompliance (not the sync); Azure still maps them.
    await store.set_active(u01.user_id, False)
    again = await reconciler.run(config, actor=SYSTEM)
    assert again.ok and again.counts["update_user"] == 0
    assert not (await store.load("oak")).users[u01.user_id].active
    # The sync's own deactivation is undone when the user comes back.
    directory.members["g-teachers"] = ("u00", "u01")
    directory.members["g-slt"] = ("u00",)
    await reconciler.run(config, actor=SYSTEM)
    u02 = next(u for u in (await store.load("oak")).users.values() if u.external_id == "u02")
    assert not u02.active and u02.deactivated_by_sync
    directory.members["g-teachers"] = ("u00", "u01", "u02")
    back = await reconciler.run(config, actor=SYSTEM)
    assert back.counts["update_user"] == 1
    assert (await store.load("oak")).users[u02.user_id].active
    assert (await reconciler.plan(config, actor=SYSTEM)).changes == ()


async def test_a_lock_that_fails_to_release_is_reported_not_raised(parts):
    import contextlib

    directory, store, audit, _ = parts

    class StickyLock(FlakyStore):
        @contextlib.asynccontextmanager
        async def run_lock(self, trust_site_id):
            async with self.inner.run_lock(trust_site_id):
                yield
            raise OSError("database is locked")

    report = await Reconciler(directory, StickyLock(store), audit, HIERARCHY).run(make_config(), actor=SYSTEM)
    assert not report.ok
    assert report.counts["create_user"] == 12
    assert report.errors[-1].startswith("releasing the run lock failed: OSError")


async def test_sqlite_lock_release_failure_is_logged_and_the_lease_takes_over(tmp_path, monkeypatch, caplog):
    import sqlite3

    import calm_azure_sync.sqlite.store as sqlite_module
    from calm_azure_sync import SqliteUserStore

    def locked(*args):
        raise sqlite3.OperationalError("database is locked")

    store = SqliteUserStore(tmp_path / "s.sqlite")
    monkeypatch.setattr(sqlite_module, "_release_lock", locked)
    report = await Reconciler(InMemoryDirectory.from_dict(tenant()), store, InMemoryAuditSink(), HIERARCHY).run(make_config(), actor=SYSTEM)
    assert report.ok
    assert "releasing the run lock of oak failed" in caplog.text


async def test_discover_searches_only_a_group_discovery_directory(parts):
    """``search`` goes to a GroupDiscovery directory; any other says so as a ConfigError, not a TypeError."""
    directory, store, audit, reconciler = parts
    found = await reconciler.discover("oak", actor=ADMIN, search="slt")
    assert [g.id for g in found] == [g.id for g in await directory.list_groups(search="slt")]
    plain = Reconciler(FlakyDirectory(directory), store, audit, HIERARCHY)  # list_groups() without search
    assert [g.id for g in await plain.discover("oak", actor=ADMIN)] == [
        "g-all", "g-slt", "g-teachers", "g-unmapped"
    ]
    with pytest.raises(ConfigError, match="search: FlakyDirectory cannot search groups"):
        await plain.discover("oak", actor=ADMIN, search="slt")
