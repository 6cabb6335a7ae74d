"""Group membership is synced: every mapped group mirrored with its in-scope members, guarded like access."""

from __future__ import annotations

import pytest

from calm_azure_sync import (
    AddGroupMember,
    AuditKind,
    DirectoryUser,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    RemovalPolicy,
    RemoveGroupMember,
    RetireGroup,
    Role,
    SqliteUserStore,
    StoredUser,
    StoreState,
    SyncConfig,
    SyncedGroup,
    UpsertGroup,
)
from calm_azure_sync.core.planner import DirectorySnapshot, PlanContext, build_plan
from calm_azure_sync.core.state import SyncState

from .helpers import OAK_BIRCH_ASH as HIERARCHY
from .helpers import SYSTEM

MAPPINGS = [
    GroupMapping("g-staff", "birch", {"Risk": "Member"}),
    GroupMapping("g-staff", "ash", {"Risk": "Member"}),
    GroupMapping("g-slt", "birch", {"Risk": "Manager"}),
]
MIRROR = PlanContext(mirror_groups=True)


def person(user_id, **fields):
    return DirectoryUser(user_id, display_name=user_id.title(), mail=f"{user_id}@oak.sch.uk", **fields)


def synced(external_id):
    return StoredUser(f"s-{external_id}", f"{external_id}@oak.sch.uk", external_id.title(), external_id=external_id)


def snap(names=None, **members):
    return DirectorySnapshot(
        members={key.replace("_", "-"): value for key, value in members.items()},
        group_names=names or {"g-staff": "All Staff", "g-slt": "SLT"},
    )


def mirrored(users, groups, members, access=None):
    return StoreState(
        users={f"s-{u}": synced(u) for u in users},
        synced_access=access if access is not None else {u: {("birch", "Risk"): Role.MEMBER} for u in users},
        groups={g: SyncedGroup(g, "oak", name, sites) for g, (name, sites) in groups.items()},
        group_members={g: frozenset(m) for g, m in members.items()},
    )


def group_changes(plan):
    return [c for c in plan.changes if isinstance(c, (UpsertGroup, AddGroupMember, RemoveGroupMember, RetireGroup))]


def test_each_mapped_group_is_created_once_with_all_its_sites_and_its_in_scope_members():
    plan = build_plan(SyncConfig("oak", MAPPINGS), snap(g_staff=[person("ann"), person("bob", account_enabled=False)],
                                                       g_slt=[person("ann")]), StoreState(), MIRROR)
    assert group_changes(plan) == [
        UpsertGroup("g-slt", "SLT", ("birch",)),
        UpsertGroup("g-staff", "All Staff", ("ash", "birch")),  # one group, both sites
        AddGroupMember("g-slt", "ann"),
        AddGroupMember("g-staff", "ann"),  # bob is disabled: out of scope, not a member
    ]
    assert plan.changes.index(group_changes(plan)[0]) == 0  # groups first, memberships after the users


def test_a_rename_updates_the_group_and_a_removed_mapping_retires_it():
    state = mirrored(["ann"], {"g-staff": ("Staff", ("ash", "birch")), "g-old": ("Old", ("birch",))},
                     {"g-staff": {"ann"}, "g-old": {"ann"}})
    config = SyncConfig("oak", MAPPINGS[:2])
    plan = build_plan(config, snap(g_staff=[person("ann")]), state, MIRROR)
    assert group_changes(plan) == [
        UpsertGroup("g-staff", "All Staff", ("ash", "birch")),
        RemoveGroupMember("g-old", "ann"),  # retiring empties the group: each removal passes the gate
        RetireGroup("g-old"),
    ]


def test_a_removed_mapping_whose_member_removals_are_held_is_not_retired_yet():
    """A mapping change is a path like any other: retiring a big group at once is a mass removal."""
    ids = [f"u{i}" for i in range(12)]
    state = mirrored(ids, {"g-staff": ("Staff", ("ash", "birch")), "g-old": ("Old", ("birch",))},
                     {"g-staff": {"u0", "u1"}, "g-old": set(ids)})
    config = SyncConfig("oak", MAPPINGS[:2])
    plan = build_plan(config, snap(g_staff=[person(i) for i in ids]), state, MIRROR)
    assert not any(isinstance(change, RetireGroup) for change in plan.changes)
    assert plan.hold is not None and plan.hold.reason == "mass_removal"
    assert {c.external_id for c in plan.hold.changes if isinstance(c, RemoveGroupMember)} == set(ids)


def test_a_member_who_leaves_the_group_is_removed_and_that_removal_is_guarded():
    ids = [f"u{i}" for i in range(10)]
    state = mirrored(ids, {"g-staff": ("All Staff", ("ash", "birch"))}, {"g-staff": set(ids)})
    config = SyncConfig("oak", MAPPINGS[:2])
    one_left = build_plan(config, snap(g_staff=[person(i) for i in ids[1:]]), state, MIRROR)
    assert RemoveGroupMember("g-staff", "u0") in one_left.changes
    # The group reads empty (Graph's index lagging): the member removals are held with the unassigns.
    empty = build_plan(config, snap(g_staff=[]), state, PlanContext(SyncState(baselines={"g-staff": 10}),
                                                                   mirror_groups=True))
    assert not [c for c in empty.changes if isinstance(c, RemoveGroupMember)]
    held = [c for c in empty.held_removals if isinstance(c, RemoveGroupMember)]
    assert len(held) == 10 and empty.hold is not None and empty.hold.reason == "group_shrank"
    # Confirmed by id, exactly those go.
    confirmed = build_plan(config, snap(g_staff=[]), state, PlanContext(
        SyncState(hold=empty.hold, baselines={"g-staff": 10}), confirm_hold=empty.hold.id, mirror_groups=True))
    assert len([c for c in confirmed.changes if isinstance(c, RemoveGroupMember)]) == 10


def test_an_unread_group_keeps_its_members():
    state = mirrored(["ann", "bob"], {"g-staff": ("All Staff", ("ash", "birch")), "g-slt": ("SLT", ("birch",))},
                     {"g-staff": {"ann", "bob"}, "g-slt": {"ann"}})
    unread = DirectorySnapshot(members={"g-staff": [person("ann")]}, unreadable={"g-slt": "503"})
    plan = build_plan(SyncConfig("oak", MAPPINGS), unread, state, MIRROR)
    assert RemoveGroupMember("g-staff", "bob") in plan.changes  # g-staff was read: bob left it
    assert not any(isinstance(c, RemoveGroupMember) and c.group_external_id == "g-slt" for c in plan.changes)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_groups_and_memberships_land_in_the_store_and_the_import_log(tmp_path, kind):
    store = InMemoryUserStore() if kind == "memory" else SqliteUserStore(tmp_path / "calm.sqlite")
    try:
        directory = InMemoryDirectory.from_dict({
            "users": [{"id": u, "displayName": u.title(), "mail": f"{u}@oak.sch.uk"} for u in ("ann", "bob")],
            "groups": [{"id": "g-staff", "displayName": "All Staff"}, {"id": "g-slt", "displayName": "SLT"}],
            "members": {"g-staff": ["ann", "bob"], "g-slt": ["ann"]},
        })
        audit = InMemoryAuditSink()
        config = SyncConfig("oak", MAPPINGS, removal=RemovalPolicy(min_group_baseline=5))
        first = await Reconciler(directory, store, audit, HIERARCHY).run(config, actor=SYSTEM)
        assert first.ok and first.counts["upsert_group"] == 2 and first.counts["add_group_member"] == 3
        assert {g.external_id: (g.display_name, g.site_ids) for g in await store.groups("oak")} == {
            "g-staff": ("All Staff", ("ash", "birch")), "g-slt": ("SLT", ("birch",))}
        assert await store.group_members("g-slt") == frozenset({"ann"})
        kinds = [e.kind for e in audit.events if e.run_id == first.run_id]
        assert kinds.count(AuditKind.GROUP_CREATED) == 2 and kinds.count(AuditKind.GROUP_MEMBER_ADDED) == 3
        directory.members["g-staff"] = ("ann",)
        directory.groups["g-slt"] = directory.groups["g-slt"].__class__("g-slt", "Senior Leaders")
        # Names come with full reads (an incremental run keeps the stored ones).
        second = await Reconciler(directory, store, audit, HIERARCHY).run(config, actor=SYSTEM, mode="full")
        kinds = [e.kind for e in audit.events if e.run_id == second.run_id]
        assert AuditKind.GROUP_MEMBER_REMOVED in kinds and AuditKind.GROUP_UPDATED in kinds
        assert await store.group_members("g-staff") == frozenset({"ann"})
        again = await Reconciler(directory, store, audit, HIERARCHY).run(config, actor=SYSTEM)
        assert sum(again.counts[k] for k in ("upsert_group", "add_group_member", "remove_group_member")) == 0
        retired = await Reconciler(directory, store, audit, HIERARCHY).run(SyncConfig("oak", MAPPINGS[:2]), actor=SYSTEM)
        assert AuditKind.GROUP_RETIRED in [e.kind for e in audit.events if e.run_id == retired.run_id]
        slt = {g.external_id: g for g in await store.groups("oak")}["g-slt"]
        assert slt.retired and await store.group_members("g-slt") == frozenset()
    finally:
        if kind == "sqlite":
            store.close()
