"""The pure planner: every rule of core/planner.py's theory of operation."""

import random

import pytest

from calm_azure_sync import (
    Assign,
    CreateUser,
    DeactivateUser,
    DirectoryUser,
    ExclusionPolicy,
    GroupMapping,
    LinkUser,
    RemovalPolicy,
    Role,
    StoredUser,
    StoreState,
    SyncConfig,
    Unassign,
    UpdateUser,
)
from calm_azure_sync.core.planner import DirectorySnapshot, PlanContext, build_plan
from calm_azure_sync.core.state import SyncState

MAPPINGS = [
    GroupMapping("g-staff", "birch", {"Risk": "Member", "Policies": "Member"}),
    GroupMapping("g-slt", "birch", {"Risk": "Manager"}),
    GroupMapping("g-it", "birch", {"Risk": "Admin"}),
]


def person(user_id, email=None, name=None, **fields):
    email = email if email is not None else f"{user_id}@birch.sch.uk"
    return DirectoryUser(user_id, display_name=name or user_id.title(), mail=email, **fields)


def config(**overrides):
    values = {"trust_site_id": "oak", "mappings": MAPPINGS}
    values.update(overrides)
    return SyncConfig(**values)


def snapshot(unreadable=None, **members):
    return DirectorySnapshot(members={key.replace("_", "-"): value for key, value in members.items()},
                             unreadable=unreadable or {})


def synced(external_id, email=None, user_id=None, active=True, name=None, by_sync=False):
    return StoredUser(user_id or f"s-{external_id}", email or f"{external_id}@birch.sch.uk",
                      name or external_id.title(), external_id=external_id, active=active,
                      deactivated_by_sync=by_sync)


def state(users=(), access=None, manual=()):
    return StoreState(users={u.user_id: u for u in users}, synced_access=access or {},
                      manual_access_user_ids=frozenset(manual))


def test_new_users_are_created_and_given_the_highest_role_with_reasons():
    plan = build_plan(config(), snapshot(g_staff=[person("carol"), person("dan")], g_slt=[person("carol")]), state())
    assert plan.changes == (
        CreateUser("carol", "carol@birch.sch.uk", "Carol"),
        Assign("carol", "birch", "Policies", Role.MEMBER, None, ("g-staff",)),
        Assign("carol", "birch", "Risk", Role.MANAGER, None, ("g-slt",)),
        CreateUser("dan", "dan@birch.sch.uk", "Dan"),
        Assign("dan", "birch", "Policies", Role.MEMBER, None, ("g-staff",)),
        Assign("dan", "birch", "Risk", Role.MEMBER, None, ("g-staff",)),
    )
    assert plan.summary()["create_user"] == 2
    assert plan.summary()["assign"] == 4


def test_a_hand_invited_user_is_linked_by_email_in_any_case_not_duplicated():
    invited = StoredUser("s-1", "CAROL@Birch.sch.uk", "Carol S")
    plan = build_plan(config(), snapshot(g_it=[person("carol")]), state([invited]))
    assert plan.changes[0] == LinkUser("carol", "s-1", "carol@birch.sch.uk", "Carol")
    assert not any(isinstance(change, CreateUser) for change in plan.changes)


def test_a_renamed_or_re_emailed_user_is_updated_never_duplicated():
    plan = build_plan(
        config(),
        snapshot(g_it=[person("carol", "carol.new@birch.sch.uk", "Carol New")]),
        state([synced("carol")], {"carol": {("birch", "Risk"): Role.ADMIN}}),
    )
    assert plan.changes == (
        UpdateUser("carol", "s-carol", "carol.new@birch.sch.uk", "Carol New",
                   changed=("email", "display_name")),
    )


def test_an_email_held_by_another_store_user_is_a_conflict_not_a_takeover():
    other = StoredUser("s-9", "carol@birch.sch.uk", "Other Carol", external_id="old-object")
    plan = build_plan(config(), snapshot(g_it=[person("carol")]), state([other]))
    assert plan.changes == ()
    [skip] = plan.skipped
    assert skip.keeps_access and "email conflict" in skip.reason


def test_a_re_email_onto_an_invited_users_address_is_a_conflict_and_keeps_access():
    invited = StoredUser("s-9", "dan@birch.sch.uk", "Dan (invited)")
    carol = synced("carol")
    plan = build_plan(config(), snapshot(g_staff=[person("carol", "dan@birch.sch.uk")]),
                      state([carol, invited], {"carol": {("birch", "Risk"): Role.ADMIN}}))
    assert plan.changes == ()
    assert plan.skipped[0].keeps_access


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        (person("x", account_enabled=False), "disabled"),
        (person("x", user_type="Guest"), "guest"),
        (DirectoryUser("x", user_principal_name="x_home.org#EXT#@t.onmicrosoft.com"), "guest"),
        (DirectoryUser("x", display_name="No Mail"), "no usable email"),
        (person("x", "svc-backup@birch.sch.uk"), "exclusion pattern"),
    ],
)
def test_out_of_scope_users_are_skipped_with_a_reason(user, reason):
    plan = build_plan(config(exclusions=ExclusionPolicy(["svc-*"])), snapshot(g_staff=[user]), state())
    assert plan.changes == ()
    [skip] = plan.skipped
    assert reason in skip.reason
    assert skip.excluded == (reason == "exclusion pattern")


def test_guests_are_synced_when_asked():
    plan = build_plan(config(include_guests=True), snapshot(g_it=[person("x", user_type="Guest")]), state())
    assert isinstance(plan.changes[0], CreateUser)


def test_azure_users_sharing_an_email_are_skipped_and_keep_their_access():
    a, b = person("a", "same@birch.sch.uk"), person("b", "SAME@birch.sch.uk")
    plan = build_plan(config(), snapshot(g_it=[a, b]),
                      state([synced("a", "same@birch.sch.uk")], {"a": {("birch", "Risk"): Role.ADMIN}}))
    assert plan.changes == ()
    assert {skip.external_id for skip in plan.skipped if skip.keeps_access} == {"a", "b"}


def test_role_changes_name_the_previous_role():
    plan = build_plan(config(), snapshot(g_slt=[person("carol")], g_staff=[person("carol")]),
                      state([synced("carol")], {"carol": {("birch", "Risk"): Role.MEMBER,
                                                          ("birch", "Policies"): Role.MEMBER}}))
    assert plan.changes == (Assign("carol", "birch", "Risk", Role.MANAGER, Role.MEMBER, ("g-slt",)),)


def test_access_azure_no_longer_gives_is_unassigned():
    plan = build_plan(config(), snapshot(g_staff=[person("carol")]),
                      state([synced("carol")], {"carol": {("birch", "Risk"): Role.MEMBER,
                                                          ("birch", "Policies"): Role.MEMBER,
                                                          ("birch", "Incidents"): Role.ADMIN}}))
    assert plan.changes == (Unassign("carol", "birch", "Incidents", Role.ADMIN),)


def test_a_user_who_left_every_group_loses_synced_access_and_is_deactivated_in_deactivate_mode():
    access = {"carol": {("birch", "Risk"): Role.MEMBER}}
    users = [synced("carol")]
    unassign = build_plan(config(), snapshot(g_staff=[]), state(users, access))
    assert unassign.changes == (Unassign("carol", "birch", "Risk", Role.MEMBER),)
    deactivate = build_plan(config(removal=RemovalPolicy("deactivate")), snapshot(g_staff=[]), state(users, access))
    assert deactivate.changes == (Unassign("carol", "birch", "Risk", Role.MEMBER), DeactivateUser("carol", "s-carol"))
    manual = build_plan(config(removal=RemovalPolicy("deactivate")), snapshot(g_staff=[]),
                        state(users, access, manual=["s-carol"]))
    assert manual.changes == (Unassign("carol", "birch", "Risk", Role.MEMBER),)
    keep = build_plan(config(removal=RemovalPolicy("keep")), snapshot(g_staff=[]), state(users, access))
    assert keep.changes == ()


def test_keep_mode_only_adds_and_upgrades():
    plan = build_plan(config(removal=RemovalPolicy("keep")), snapshot(g_staff=[person("carol")]),
                      state([synced("carol")], {"carol": {("birch", "Risk"): Role.ADMIN}}))
    assert plan.changes == (Assign("carol", "birch", "Policies", Role.MEMBER, None, ("g-staff",)),)


def test_a_disabled_synced_user_loses_access():
    plan = build_plan(config(), snapshot(g_staff=[person("carol", account_enabled=False)]),
                      state([synced("carol")], {"carol": {("birch", "Risk"): Role.MEMBER}}))
    assert plan.changes == (Unassign("carol", "birch", "Risk", Role.MEMBER),)


def test_a_user_the_sync_deactivated_is_reactivated_when_back_in_scope():
    plan = build_plan(config(), snapshot(g_it=[person("carol")]),
                      state([synced("carol", active=False, by_sync=True)]))
    assert plan.changes[0] == UpdateUser("carol", "s-carol", "carol@birch.sch.uk", "Carol",
                                         reactivate=True, changed=("active",))


@pytest.mark.parametrize("mode", ["unassign", "deactivate", "keep"])
def test_a_user_a_person_deactivated_is_never_reactivated(mode):
    suspended = synced("carol", active=False)
    plan = build_plan(config(removal=RemovalPolicy(mode)), snapshot(g_it=[person("carol")]),
                      state([suspended], {"carol": {("birch", "Risk"): Role.ADMIN}}))
    assert plan.changes == ()
    invited = StoredUser("s-1", "dan@birch.sch.uk", "Dan", active=False)
    linked = build_plan(config(removal=RemovalPolicy(mode)), snapshot(g_it=[person("dan")]), state([invited]))
    assert [type(c).__name__ for c in linked.changes] == ["LinkUser", "Assign"]


def test_partial_read_removes_and_downgrades_nothing_but_still_adds():
    access = {"carol": {("birch", "Risk"): Role.ADMIN}, "dan": {("birch", "Risk"): Role.MEMBER}}
    plan = build_plan(
        config(),
        snapshot(unreadable={"g-it": "could not be read: 503"}, g_staff=[person("carol"), person("erin")], g_slt=[]),
        state([synced("carol"), synced("dan")], access),
    )
    assert not plan.complete
    assert plan.hold_reason == "partial_read"
    assert all(not isinstance(c, (Unassign, DeactivateUser)) for c in plan.changes)
    assert all(not (isinstance(c, Assign) and c.is_downgrade) for c in plan.changes)
    assert CreateUser("erin", "erin@birch.sch.uk", "Erin") in plan.changes
    assert set(plan.held_removals) == {
        Assign("carol", "birch", "Risk", Role.MEMBER, Role.ADMIN, ("g-staff",)),
        Unassign("dan", "birch", "Risk", Role.MEMBER),
    }
    # Confirming a pending hold never overrides a partial read.
    dan = state([synced("dan")], {"dan": {("birch", "Risk"): Role.MEMBER}})
    cfg = config(removal=RemovalPolicy(min_removals_to_hold=1, max_removal_ratio=0))
    pending = build_plan(cfg, snapshot(g_staff=[], g_slt=[], g_it=[]), dan).hold
    assert pending is not None
    confirmed = build_plan(cfg, snapshot(unreadable={"g-it": "x"}, g_staff=[], g_slt=[]), dan,
                           PlanContext(SyncState(hold=pending), confirm_hold=pending.id))
    assert confirmed.changes == () and confirmed.held_removals


def test_mass_removal_is_held_unless_confirmed():
    users = [synced(f"u{index}") for index in range(30)]
    access = {user.external_id: {("birch", "Risk"): Role.MEMBER} for user in users}
    members = [person(f"u{index}") for index in range(15)]  # half of them left
    cfg = config(mappings=[GroupMapping("g-staff", "birch", {"Risk": "Member"})])
    held = build_plan(cfg, snapshot(g_staff=members), state(users, access))
    assert held.hold_reason == "mass_removal"
    assert len(held.held_removals) == 15 and held.changes == ()
    assert held.hold is not None and held.hold_id == held.hold.id
    confirmed = build_plan(cfg, snapshot(g_staff=members), state(users, access),
                           PlanContext(SyncState(hold=held.hold), confirm_hold=held.hold.id))
    assert confirmed.hold_reason is None and len(confirmed.changes) == 15
    assert confirmed.hold is None and confirmed.hold_cleared == held.hold.id


def test_a_few_removals_are_not_held():
    users = [synced(f"u{index}") for index in range(30)]
    access = {user.external_id: {("birch", "Risk"): Role.MEMBER} for user in users}
    cfg = config(mappings=[GroupMapping("g-staff", "birch", {"Risk": "Member"})])
    plan = build_plan(cfg, snapshot(g_staff=[person(f"u{index}") for index in range(3, 30)]), state(users, access))
    assert plan.hold_reason is None and len(plan.changes) == 3


def test_the_plan_does_not_depend_on_the_order_graph_returns_things():
    rng = random.Random(7)
    people = [person(f"u{index:02d}") for index in range(40)]
    groups = {"g_staff": people[:30], "g_slt": people[20:35], "g_it": people[30:]}
    expected = build_plan(config(), snapshot(**groups), state())
    for _ in range(10):
        shuffled = {key: rng.sample(value, len(value)) for key, value in rng.sample(list(groups.items()), 3)}
        assert build_plan(config(), snapshot(**shuffled), state()) == expected


def test_a_second_plan_after_applying_the_first_is_empty():
    members = snapshot(g_staff=[person("carol")], g_slt=[person("carol")])
    plan = build_plan(config(), members, state())
    access = {}
    for change in plan.changes:
        if isinstance(change, Assign):
            access[(change.site_id, change.module)] = change.role
    again = build_plan(config(), members, state([synced("carol")], {"carol": access}))
    assert again.changes == ()


def test_plan_to_dict_and_repr_are_readable():
    plan = build_plan(config(), snapshot(g_staff=[person("carol"), person("x", account_enabled=False)]), state())
    data = plan.to_dict()
    assert data["summary"]["create_user"] == 1
    assert data["changes"][1] == {"kind": "assign", "external_id": "carol", "site_id": "birch", "module": "Policies",
                                  "role": "Member", "previous": None, "because": ["g-staff"]}
    assert data["skipped"][0]["reason"].startswith("account is disabled")
    assert repr(plan) == "<Plan trust='oak' changes=3 (create_user=1, assign=2), skipped=1>"
    assert "<table>" in plan._repr_html_() and "carol" in plan._repr_html_()


def test_an_email_given_up_in_the_same_run_can_be_taken_by_another_user():
    # dan used to have carol's address; in Azure he moved to a new one and carol now has it.
    dan = synced("dan", "carol@birch.sch.uk")
    plan = build_plan(config(), snapshot(g_it=[person("carol"), person("dan", "dan@birch.sch.uk")]),
                      state([dan], {"dan": {("birch", "Risk"): Role.ADMIN}}))
    assert plan.skipped == ()
    kinds = [(type(c).__name__, c.external_id) for c in plan.changes]
    # dan's move is applied before carol's creation, whatever the ids' order.
    assert kinds.index(("UpdateUser", "dan")) < kinds.index(("CreateUser", "carol"))


def test_two_users_swapping_emails_is_a_conflict_that_keeps_access():
    a, b = synced("a", "b@birch.sch.uk"), synced("b", "a@birch.sch.uk")
    access = {"a": {("birch", "Risk"): Role.ADMIN}, "b": {("birch", "Risk"): Role.ADMIN}}
    plan = build_plan(config(), snapshot(g_it=[person("a"), person("b")]), state([a, b], access))
    assert plan.changes == ()
    assert {(s.external_id, s.keeps_access) for s in plan.skipped} == {("a", True), ("b", True)}


def test_an_email_kept_by_a_leaver_is_not_taken_over():
    leaver = synced("old", "carol@birch.sch.uk")
    plan = build_plan(config(), snapshot(g_it=[person("carol")]),
                      state([leaver], {"old": {("birch", "Risk"): Role.ADMIN}}))
    assert [s.external_id for s in plan.skipped] == ["carol"]
    assert plan.changes == (Unassign("old", "birch", "Risk", Role.ADMIN),)
