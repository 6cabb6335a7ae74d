"""Reconciler.check: the configuration against the live directory, for the Group Mapping screen."""

import pytest

from calm_azure_sync import (
    Actor,
    ConfigProblem,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    NotAuthorizedError,
    Reconciler,
    Site,
    SyncConfig,
    TrustHierarchy,
)

from .helpers import SYSTEM

HIERARCHY = TrustHierarchy([Site("oak", "Oak"), Site("birch", "Birch", "oak"), Site("elm", "Elm")])


def directory(groups=("g-staff", "g-slt", "g-empty")):
    return InMemoryDirectory.from_dict({
        "users": [{"id": "u1", "displayName": "Ann", "mail": "ann@oak.sch.uk"}],
        "groups": [{"id": g, "displayName": {"g-staff": "Birch Staff", "g-slt": "Birch SLT"}.get(g, g)} for g in groups],
        "members": {g: ["u1"] for g in groups if g != "g-empty"},
    })


async def test_a_typo_is_told_apart_from_a_deleted_group_and_gets_the_closest_names():
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    good = SyncConfig("oak", [GroupMapping("g-staff", "birch", {"Risk": "Member"}),
                              GroupMapping("g-slt", "birch", {"Risk": "Manager"})])
    await Reconciler(directory(), store, audit, HIERARCHY).run(good, actor=SYSTEM)  # g-slt synced once
    config = SyncConfig("oak", [
        GroupMapping("g-stafff", "birch", {"Risk": "Member"}),   # a typo
        GroupMapping("g-slt", "birch", {"Risk": "Manager"}),     # deleted in Azure since
        GroupMapping("g-empty", "birch", {"Policies": "Member"}),
        GroupMapping("g-staff", "elm", {"Risk": "Member"}),      # a site outside the trust
    ])
    problems = await Reconciler(directory(("g-staff", "g-empty")), store, audit, HIERARCHY).check(config, actor=SYSTEM)
    by_kind = {p.kind: p for p in problems}
    assert set(by_kind) == {"unknown_group", "stale_group", "empty_group", "invalid"}
    assert by_kind["unknown_group"].path == "mappings[0].group_id"
    assert by_kind["unknown_group"].suggestions[0] == "Birch Staff (g-staff)"
    assert by_kind["stale_group"].group_id == "g-slt" and "no longer exists" in by_kind["stale_group"].message
    assert by_kind["empty_group"].path == "mappings[2].group_id"
    assert by_kind["invalid"].path == "mappings[3].site_id"
    assert all(isinstance(p, ConfigProblem) for p in problems)
    assert audit.events[-1].kind.value == "import_completed"  # check() itself logged nothing


async def test_a_good_configuration_has_no_problems_and_check_needs_an_admin():
    reconciler = Reconciler(directory(), InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY)
    config = SyncConfig("oak", [GroupMapping("g-staff", "birch", {"Risk": "Member"})])
    assert await reconciler.check(config, actor=Actor("head", {"oak"})) == []
    with pytest.raises(NotAuthorizedError):
        await reconciler.check(config, actor=Actor("teacher", set()))


async def test_a_mistyped_group_stays_unknown_after_a_run_has_mirrored_it():
    # A run mirrors every mapped group in the store, an unreadable mistyped one included: that is
    # no sign the group ever existed, so check() still calls it unknown and suggests names.
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    typo = SyncConfig("oak", [GroupMapping("g-stafff", "birch", {"Risk": "Member"}),
                              GroupMapping("g-staff", "birch", {"Policies": "Member"})])
    reconciler = Reconciler(directory(), store, audit, HIERARCHY)
    await reconciler.run(typo, actor=SYSTEM)
    assert "g-stafff" in (await store.load("oak")).groups
    problems = {p.kind: p for p in await reconciler.check(typo, actor=SYSTEM)}
    assert "stale_group" not in problems
    assert problems["unknown_group"].suggestions[0] == "Birch Staff (g-staff)"
