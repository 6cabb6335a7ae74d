"""The removal guards through the pure planner: what a run holds, and what the *next* run does with it."""

import pytest

from calm_azure_sync import (
    Assign,
    DeactivateUser,
    DirectoryUser,
    GroupMapping,
    RelinkUser,
    RemovalPolicy,
    Role,
    StoredUser,
    StoreState,
    SyncConfig,
    Unassign,
    UpdateUser,
)
from calm_azure_sync.core.guards import next_sync_state
from calm_azure_sync.core.planner import DirectorySnapshot, PlanContext, build_plan
from calm_azure_sync.core.state import SyncState
from calm_azure_sync.store.protocol import ChangeResult

RISK = ("birch", "Risk")


def person(user_id, email=None):
    return DirectoryUser(user_id, display_name=user_id.title(), mail=email or f"{user_id}@birch.sch.uk")


def synced(external_id, email=None, active=True):
    return StoredUser(f"s-{external_id}", email or f"{external_id}@birch.sch.uk", external_id.title(),
                      external_id=external_id, active=active)


def config(removal=None, mappings=None):
    return SyncConfig(
        "oak",
        mappings or [GroupMapping("g-staff", "birch", {"Risk": "Member"}), GroupMapping("g-it", "ash", {"IT": "Admin"})],
        removal=removal or RemovalPolicy(),
    )


def store_with(ids, access=RISK):
    return StoreState(
        users={f"s-{i}": synced(i) for i in ids},
        synced_access={i: {access: Role.MEMBER} for i in ids},
    )


def snap(**members):
    unreadable = members.pop("unreadable", {})
    stale = members.pop("stale", frozenset())
    return DirectorySnapshot(
        members={key.replace("_", "-"): value for key, value in members.items()},
        unreadable=unreadable,
        stale=frozenset(stale),
    )


def removals(plan):
    return [c for c in plan.changes if isinstance(c, (Unassign, DeactivateUser)) or (isinstance(c, Assign) and c.is_downgrade)]


def test_a_mass_removal_hold_survives_the_next_run_whose_ratio_is_lower():
    # 40 synced users; in Azure 10 leave and 20 join.
    staying = [f"u{i:02d}" for i in range(10, 40)]
    joining = [f"n{i:02d}" for i in range(20)]
    first = build_plan(config(), snap(g_staff=[person(i) for i in staying + joining], g_it=[]),
                       store_with([f"u{i:02d}" for i in range(40)]))
    assert first.hold_reason == "mass_removal" and len(first.held_removals) == 10
    assert first.hold is not None and not removals(first)
    # Run 2: the 20 were created (60 synced users, 10/60 < 20 %), nobody confirmed.
    second = build_plan(
        config(), snap(g_staff=[person(i) for i in staying + joining], g_it=[]),
        store_with([f"u{i:02d}" for i in range(40)] + joining),
        PlanContext(SyncState(hold=first.hold)),
    )
    assert not removals(second)
    assert set(second.held_removals) == set(first.held_removals)
    assert second.hold is not None and second.hold.id == first.hold.id  # nothing new to review


def test_held_removals_drop_out_when_azure_no_longer_implies_them_and_an_empty_hold_clears():
    everyone = [f"u{i:02d}" for i in range(30)]
    first = build_plan(config(), snap(g_staff=[person(i) for i in everyone[:15]], g_it=[]), store_with(everyone))
    assert first.hold is not None and len(first.hold.changes) == 15
    back = build_plan(config(), snap(g_staff=[person(i) for i in everyone[:25]], g_it=[]), store_with(everyone),
                      PlanContext(SyncState(hold=first.hold)))
    assert back.hold is not None and back.hold.id == first.hold.id and len(back.hold.changes) == 5
    assert back.hold_cleared is None
    all_back = build_plan(config(), snap(g_staff=[person(i) for i in everyone], g_it=[]), store_with(everyone),
                          PlanContext(SyncState(hold=back.hold)))
    assert all_back.hold is None and all_back.hold_cleared == first.hold.id and all_back.changes == ()


def test_new_removals_judged_with_the_pending_ones_join_the_hold_and_change_its_id():
    everyone = [f"u{i:02d}" for i in range(30)]
    first = build_plan(config(), snap(g_staff=[person(i) for i in everyone[:20]], g_it=[]), store_with(everyone))
    assert first.hold is not None and len(first.hold.users) == 10
    # One more leaver: alone it is no mass removal, but with the ten pending it is.
    second = build_plan(config(), snap(g_staff=[person(i) for i in everyone[:19]], g_it=[]), store_with(everyone),
                        PlanContext(SyncState(hold=first.hold)))
    assert second.hold is not None and len(second.hold.users) == 11
    assert second.hold.id != first.hold.id and not removals(second)


def test_a_confirmation_applies_exactly_what_was_reviewed_and_holds_what_changed():
    everyone = [f"u{i:02d}" for i in range(30)]
    first = build_plan(config(), snap(g_staff=[person(i) for i in everyone[:20]], g_it=[]), store_with(everyone))
    assert first.hold is not None
    confirmed = build_plan(config(), snap(g_staff=[person(i) for i in everyone[:20]], g_it=[]), store_with(everyone),
                           PlanContext(SyncState(hold=first.hold), confirm_hold=first.hold.id))
    assert set(removals(confirmed)) == set(first.hold.changes)
    assert confirmed.hold is None and confirmed.hold_cleared == first.hold.id
    # A different confirmation id releases nothing.
    wrong = build_plan(config(), snap(g_staff=[person(i) for i in everyone[:20]], g_it=[]), store_with(everyone),
                       PlanContext(SyncState(hold=first.hold), confirm_hold="not-it"))
    assert not removals(wrong) and wrong.hold == first.hold


def test_a_confirmation_applies_nothing_outside_the_confirmed_hold():
    everyone = [f"u{i:02d}" for i in range(30)]
    first = build_plan(config(), snap(g_staff=[person(i) for i in everyone[:20]], g_it=[]), store_with(everyone))
    assert first.hold is not None
    # Meanwhile five more left: confirming the ten must not release the five.
    confirmed = build_plan(config(), snap(g_staff=[person(i) for i in everyone[:15]], g_it=[]), store_with(everyone),
                           PlanContext(SyncState(hold=first.hold), confirm_hold=first.hold.id))
    applied = {c.external_id for c in removals(confirmed)}
    assert applied == first.hold.users
    assert confirmed.hold is not None and confirmed.hold.users == set(everyone[15:20])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 15, 40, 200])
def test_a_group_that_reads_empty_once_strips_nobody_at_any_trust_size(size):
    ids = [f"u{i:03d}" for i in range(size)]
    state = store_with(ids)
    memory = SyncState(baselines={"g-staff": size, "g-it": 0})
    empty = build_plan(config(), snap(g_staff=[], g_it=[]), state, PlanContext(memory))
    assert not removals(empty), f"{size} users lost access"
    assert len(empty.held_removals) == size
    # It reads normally again: the hold drops out and is cleared.
    normal = build_plan(config(), snap(g_staff=[person(i) for i in ids], g_it=[]), state,
                        PlanContext(attrs_evolve(memory, hold=empty.hold)))
    assert normal.changes == () and normal.hold is None
    assert normal.hold_cleared == (empty.hold.id if empty.hold is not None else None)


def attrs_evolve(state, **changes):
    import attrs

    return attrs.evolve(state, **changes)


def test_a_small_group_emptying_in_a_large_trust_is_held_as_group_shrank():
    big = [f"u{i:03d}" for i in range(200)]
    it = [f"t{i:02d}" for i in range(15)]
    state = StoreState(
        users={f"s-{i}": synced(i) for i in big + it},
        synced_access={**{i: {RISK: Role.MEMBER} for i in big}, **{i: {("ash", "IT"): Role.ADMIN} for i in it}},
    )
    memory = SyncState(baselines={"g-staff": 200, "g-it": 15})
    plan = build_plan(config(), snap(g_staff=[person(i) for i in big], g_it=[]), state, PlanContext(memory))
    assert plan.hold_reason == "group_shrank" and plan.held_groups == ("g-it",)
    assert not removals(plan) and len(plan.held_removals) == 15
    assert plan.hold is not None and plan.hold.group_ids == ("g-it",)


def test_a_group_losing_a_few_members_is_not_held():
    ids = [f"u{i:02d}" for i in range(20)]
    memory = SyncState(baselines={"g-staff": 20})
    plan = build_plan(config(), snap(g_staff=[person(i) for i in ids[:18]], g_it=[]), store_with(ids),
                      PlanContext(memory))
    assert len(removals(plan)) == 2 and plan.hold is None


def test_a_stale_mapping_holds_only_what_its_group_could_explain():
    it = ["t1", "t2"]
    staff = [f"u{i}" for i in range(10)]
    state = StoreState(
        users={f"s-{i}": synced(i) for i in it + staff},
        synced_access={**{i: {RISK: Role.MEMBER} for i in staff}, **{i: {("ash", "IT"): Role.ADMIN} for i in it}},
    )
    # g-it is gone from Azure (404); one ordinary leaver from g-staff.
    plan = build_plan(config(), snap(g_staff=[person(i) for i in staff[1:]], unreadable={"g-it": "stale"},
                                     stale={"g-it"}), state)
    assert Unassign("u0", "birch", "Risk", Role.MEMBER) in plan.changes  # unrelated to the stale group
    assert {c.external_id for c in plan.held_removals} == set(it)
    assert plan.stale_groups == {"g-it": 2}


def test_a_partial_read_holds_every_deactivation():
    staff = [f"u{i}" for i in range(10)]
    plan = build_plan(config(RemovalPolicy("deactivate")),
                      snap(g_staff=[person(i) for i in staff[1:]], unreadable={"g-it": "503"}), store_with(staff))
    assert Unassign("u0", "birch", "Risk", Role.MEMBER) in plan.changes
    assert DeactivateUser("u0", "s-u0") in plan.held_removals
    assert not any(isinstance(c, DeactivateUser) for c in plan.changes)


def test_an_account_recreated_in_azure_is_relinked_when_the_directory_proves_the_old_one_gone():
    old = synced("old-id", "carol@birch.sch.uk")
    state = StoreState(users={old.user_id: old}, synced_access={"old-id": {RISK: Role.MEMBER}})
    first = build_plan(config(), snap(g_staff=[person("new-id", "carol@birch.sch.uk")], g_it=[]), state)
    assert first.summary()["conflict"] == 1 and first.lookups_needed == {"old-id"}
    healed = build_plan(config(), snap(g_staff=[person("new-id", "carol@birch.sch.uk")], g_it=[]), state,
                        PlanContext(lookups={"old-id": None}))
    assert healed.changes == (
        RelinkUser("new-id", old.user_id, "old-id", "carol@birch.sch.uk", "New-Id"),
    )  # same access: nothing to assign, nothing unassigned
    assert healed.summary()["conflict"] == 0


def test_a_recycled_email_is_refreshed_on_the_leaver_and_the_successor_proceeds():
    leaver = synced("leaver", "head@birch.sch.uk")
    state = StoreState(users={leaver.user_id: leaver}, synced_access={})
    moved = DirectoryUser("leaver", display_name="Old Head", mail="old.head@birch.sch.uk")
    plan = build_plan(config(), snap(g_staff=[person("successor", "head@birch.sch.uk")], g_it=[]), state,
                      PlanContext(lookups={"leaver": moved}))
    kinds = [type(c).__name__ for c in plan.changes]
    assert kinds[:2] == ["UpdateUser", "CreateUser"]
    assert isinstance(plan.changes[0], UpdateUser) and plan.changes[0].email == "old.head@birch.sch.uk"
    still = build_plan(config(), snap(g_staff=[person("successor", "head@birch.sch.uk")], g_it=[]), state,
                       PlanContext(lookups={"leaver": DirectoryUser("leaver", mail="head@birch.sch.uk")}))
    assert still.changes == () and still.summary()["conflict"] == 1


def test_deactivate_mode_converges_for_users_who_left_before_it_was_switched_on():
    gone = synced("gone")
    state = StoreState(users={gone.user_id: gone}, synced_access={})
    memory = SyncState(left_scope={"gone": False})
    plan = build_plan(config(RemovalPolicy("deactivate")), snap(g_staff=[], g_it=[]), state, PlanContext(memory))
    assert plan.changes == (DeactivateUser("gone", "s-gone"),)
    # Once the sync deactivated them, a person re-activating them is final until they come back and leave again.
    after = next_sync_state(memory, config=config(), hold=None, member_counts={}, in_scope=(),
                            results=[ChangeResult(plan.changes[0])], left_now=())
    assert after.left_scope == {"gone": True}
    again = build_plan(config(RemovalPolicy("deactivate")), snap(g_staff=[], g_it=[]), state, PlanContext(after))
    assert again.changes == ()
    back = next_sync_state(after, config=config(), hold=None, member_counts={}, in_scope=("gone",), results=[],
                           left_now=())
    assert back.left_scope == {}


def test_baselines_are_kept_for_a_disputed_group_and_refreshed_otherwise():
    memory = SyncState(baselines={"g-staff": 10, "g-it": 4, "g-unmapped": 3})
    plan = build_plan(config(), snap(g_staff=[person(f"u{i}") for i in range(12)], g_it=[]),
                      store_with([f"t{i}" for i in range(4)], ("ash", "IT")), PlanContext(memory))
    assert plan.hold is not None and plan.hold.reason == "group_shrank"
    after = next_sync_state(memory, config=config(), hold=plan.hold, member_counts={"g-staff": 12, "g-it": 0},
                            in_scope=(), results=[], left_now=())
    assert after.baselines == {"g-staff": 12, "g-it": 4}


def test_a_group_that_shrinks_while_a_mass_removal_hold_is_pending_keeps_its_baseline():
    # The pending hold keeps its reason (mass_removal) but names the shrunk group: the read is disputed.
    staying = [f"u{i:02d}" for i in range(10, 40)]
    joining = [f"n{i:02d}" for i in range(20)]
    stored = store_with([f"u{i:02d}" for i in range(40)] + joining)
    first = build_plan(config(), snap(g_staff=[person(i) for i in staying + joining], g_it=[]),
                       store_with([f"u{i:02d}" for i in range(40)]))
    assert first.hold is not None and first.hold.reason == "mass_removal"
    memory = SyncState(hold=first.hold, baselines={"g-staff": 50})
    shrunk = build_plan(config(), snap(g_staff=[person(i) for i in staying[:5]], g_it=[]), stored,
                        PlanContext(memory))
    assert shrunk.hold is not None and shrunk.hold.reason == "mass_removal" and "g-staff" in shrunk.hold.group_ids
    after = next_sync_state(memory, config=config(), hold=shrunk.hold, member_counts={"g-staff": 5, "g-it": 0},
                            in_scope=(), results=[], left_now=())
    assert after.baselines["g-staff"] == 50


def test_a_shrink_first_held_as_a_partial_read_is_judged_again_when_everything_reads():
    # g-a shrank from 10 to 2 while g-b (same site and module) could not be read: the partial read
    # holds the 8 removals and makes no hold. The baseline must not adopt the 2, or the next run,
    # reading everything, would see no shrink and apply the 8 (below min_removals_to_hold).
    mappings = [GroupMapping("g-a", "birch", {"Risk": "Member"}), GroupMapping("g-b", "birch", {"Risk": "Member"})]
    cfg = config(mappings=mappings)
    a_users, b_users = [f"a{i}" for i in range(10)], ["b0", "b1"]
    stored = store_with(a_users + b_users)
    memory = SyncState(baselines={"g-a": 10, "g-b": 2})
    partial = build_plan(cfg, snap(g_a=[person(i) for i in a_users[:2]], unreadable={"g-b": "503"}), stored,
                         PlanContext(memory))
    # (g-b's own members are missing from the snapshot too: their removals wait as well)
    assert partial.hold is None and partial.hold_reason == "partial_read" and len(partial.held_removals) == 10
    after = next_sync_state(memory, config=cfg, hold=partial.hold, member_counts={"g-a": 2}, in_scope=(),
                            results=[], left_now=(),
                            disputed=partial.held_groups if partial.held_removals else ())
    assert after.baselines["g-a"] == 10
    whole = build_plan(cfg, snap(g_a=[person(i) for i in a_users[:2]], g_b=[person(i) for i in b_users]), stored,
                       PlanContext(after))
    assert whole.hold is not None and whole.hold_reason == "group_shrank" and len(whole.held_removals) == 8
    assert not removals(whole)
