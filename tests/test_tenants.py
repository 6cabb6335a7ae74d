"""A Trust with several Microsoft tenants (API §13): configuration, directories, identity, holds, delta reads."""

from __future__ import annotations

import datetime as dt

import attrs
import pytest

from calm_azure_sync import (
    ConfigError,
    DirectoryAccessError,
    DirectoryError,
    DirectoryUser,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    RemovalPolicy,
    SyncConfig,
    TenantMismatchError,
)

from .helpers import OAK_TRUST_BIRCH_ASH, SYSTEM, FlakyDirectory

A, B = "tenant-a", "tenant-b"
MAPPINGS = [
    GroupMapping("ga-staff", "birch", {"Risk": "Member"}, tenant_id=A),
    GroupMapping("gb-staff", "ash", {"Risk": "Manager"}, tenant_id=B),
]
CONFIG = SyncConfig("oak", MAPPINGS, tenants=(A, B), tenant_names={A: "Oak Academy", B: "Ash School"})


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def user(object_id: str, email: str) -> dict[str, object]:
    return {"id": object_id, "displayName": object_id.upper(), "mail": email, "accountEnabled": True}


def tenant_a(*extra: str) -> InMemoryDirectory:
    return InMemoryDirectory.from_dict({
        "users": [user(f"a{i}", f"a{i}@oak.sch.uk") for i in range(5)],
        "groups": [{"id": "ga-staff", "displayName": "Oak staff"}],
        "members": {"ga-staff": [f"a{i}" for i in range(5)] + list(extra)},
    }, tenant_id=A)


def tenant_b() -> InMemoryDirectory:
    return InMemoryDirectory.from_dict({
        "users": [user(f"b{i}", f"b{i}@ash.sch.uk") for i in range(4)],
        "groups": [{"id": "gb-staff", "displayName": "Ash staff"}],
        "members": {"gb-staff": [f"b{i}" for i in range(4)]},
    }, tenant_id=B)


def reconciler(directories, store, audit=None, clock=None) -> Reconciler:
    return Reconciler(directories, store, audit or InMemoryAuditSink(), OAK_TRUST_BIRCH_ASH, clock=clock or Clock())


def access(state) -> dict[str, dict[tuple[str, str], str]]:
    return {
        external_id: {key: role.value for key, role in grants.items()}
        for external_id, grants in state.synced_access.items()
        if grants
    }


# ---------------------------------------------------------------------- the configuration


def test_one_tenant_configs_are_unchanged():
    config = SyncConfig("oak", [GroupMapping("g", "birch", {"Risk": "Member"})], tenant_id=A)
    assert config.tenant_ids == (A,) and config.tenant_of("g") == A
    data = config.to_dict()
    assert "tenants" not in data and "tenant_id" not in data["mappings"][0]
    assert SyncConfig.from_dict(data) == config


def test_several_tenants_round_trip_through_json():
    data = CONFIG.to_dict()
    assert data["tenants"] == [A, B] and data["mappings"][1]["tenant_id"] == B
    assert SyncConfig.from_dict(data) == CONFIG
    assert CONFIG.tenant_of("gb-staff") == B and CONFIG.tenant_label(B) == "Ash School"
    assert CONFIG.tenant_label("TENANT-A") == "Oak Academy"  # tenant ids are GUIDs: case does not matter


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"tenants": (A, B), "mappings": [GroupMapping("g", "birch", {"Risk": "Member"})]},
         "mappings[0].tenant_id: required: this trust connects several tenants ('tenant-a', 'tenant-b')"),
        ({"tenants": (A, B), "mappings": [GroupMapping("g", "birch", {"Risk": "Member"}, tenant_id="tenant-c")]},
         "mappings[0].tenant_id: tenant 'tenant-c' is not one of this trust's tenants ('tenant-a', 'tenant-b')"),
        ({"tenant_id": A, "mappings": [GroupMapping("g", "birch", {"Risk": "Member"}, tenant_id=B)]},
         "mappings[0].tenant_id: tenant 'tenant-b' is not one of this trust's tenants ('tenant-a')"),
        ({"mappings": [GroupMapping("g", "birch", {"Risk": "Member"}, tenant_id=B)]},
         "mappings[0].tenant_id: tenant 'tenant-b' is not one of this trust's tenants (none)"),
        ({"tenant_id": A, "tenants": (A, B)}, "tenants: give tenant_id for one tenant or tenants for several, not both"),
        ({"tenants": (A, A.upper())}, "tenants[1]: tenant 'TENANT-A' is already tenants[0]"),
        ({"tenants": A}, "tenants: expected a list of tenant ids, got str 'tenant-a'"),
        ({"tenants": (A, B), "tenant_names": {"tenant-c": "C"}}, "tenant_names.tenant-c: not one of this trust's tenants"),
        ({"tenants": (A, B), "mappings": [
            GroupMapping("g", "birch", {"Risk": "Member"}, tenant_id=A),
            GroupMapping("g", "ash", {"Risk": "Member"}, tenant_id=B),
        ]}, "mappings[1].tenant_id: group 'g' is in tenant 'tenant-a' by mappings[0]; a group lives in one tenant"),
    ],
)
def test_tenant_problems_name_their_path(settings, problem):
    mappings = settings.pop("mappings", [])
    with pytest.raises(ConfigError) as raised:
        SyncConfig("oak", mappings, **settings)
    assert any(found.startswith(problem) for found in raised.value.problems), raised.value.problems


def test_from_dict_reports_every_tenant_problem_at_once():
    with pytest.raises(ConfigError) as raised:
        SyncConfig.from_dict({
            "trust_site_id": "oak",
            "tenants": [A, "", B],
            "tenant_names": {A: 7},
            "mappings": [{"group_id": "g", "site_id": "birch", "roles": {"Risk": "Member"}, "tenant_id": 3}],
        })
    problems = raised.value.problems
    assert "tenants[1]: expected a non-empty string, got str ''" in problems
    assert "tenant_names.tenant-a: expected a non-empty string, got int 7" in problems
    assert any(p.startswith("mappings[0].tenant_id: must be a non-empty string or None") for p in problems), problems


# ---------------------------------------------------------------------- the directories


async def test_every_tenant_needs_its_directory_before_anything_starts():
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    with pytest.raises(ConfigError, match="directory: tenant 'tenant-b' of trust 'oak' has no directory"):
        await reconciler({A: tenant_a()}, store, audit).run(CONFIG, actor=SYSTEM)
    with pytest.raises(ConfigError, match="connects 2 tenants"):
        await reconciler(tenant_a(), store, audit).run(CONFIG, actor=SYSTEM)
    assert (await store.load("oak")).users == {}


async def test_each_directory_is_checked_against_its_key():
    with pytest.raises(TenantMismatchError) as raised:
        await reconciler({A: tenant_a(), B: tenant_a()}, InMemoryUserStore()).run(CONFIG, actor=SYSTEM)
    assert raised.value.expected == B and raised.value.actual == A
    nameless = InMemoryDirectory.from_dict(tenant_b().to_dict())
    with pytest.raises(TenantMismatchError, match="does not say which tenant"):
        await reconciler({A: tenant_a(), B: nameless}, InMemoryUserStore()).run(CONFIG, actor=SYSTEM)


async def test_discovery_lists_the_trusts_tenants_groups_marked_with_their_tenant():
    other = InMemoryDirectory.from_dict({"groups": [{"id": "gc-secret", "displayName": "Another trust"}]}, tenant_id="c")
    host = reconciler({A: tenant_a(), B: tenant_b(), "c": other}, InMemoryUserStore())
    groups = await host.discover("oak", actor=SYSTEM, tenant_ids=CONFIG.tenant_ids)
    assert {(group.id, group.tenant_id) for group in groups} == {("ga-staff", A), ("gb-staff", B)}
    with pytest.raises(ConfigError, match="tenant_ids: this Reconciler reads 3 tenants"):
        await host.discover("oak", actor=SYSTEM)  # never every tenant the host knows
    with pytest.raises(ConfigError, match="tenant 'tenant-d' has no directory"):
        await host.discover("oak", actor=SYSTEM, tenant_ids=[A, "tenant-d"])
    assert [g.id for g in await reconciler({A: tenant_a()}, InMemoryUserStore()).discover("oak", actor=SYSTEM)] == [
        "ga-staff"
    ]


# ---------------------------------------------------------------------- identity


async def test_a_run_imports_both_tenants_and_records_each_users_tenant():
    store = InMemoryUserStore()
    directories = {A: tenant_a(), B: tenant_b()}
    report = await reconciler(directories, store).run(CONFIG, actor=SYSTEM)
    assert report.ok and report.counts["create_user"] == 9
    state = await store.load("oak")
    tenants = {user.external_id: user.tenant_id for user in state.users.values()}
    assert tenants == {**{f"a{i}": A for i in range(5)}, **{f"b{i}": B for i in range(4)}}
    assert access(state)["b0"] == {("ash", "Risk"): "Manager"}
    again = await reconciler(directories, store).run(CONFIG, actor=SYSTEM)
    assert again.ok and not again.plan.changes


async def test_users_synced_before_tenants_were_recorded_are_qualified_once():
    store = InMemoryUserStore()
    directory = tenant_a()
    unqualified = SyncConfig("oak", [attrs.evolve(MAPPINGS[0], tenant_id=None)])
    assert (await reconciler(directory, store).run(unqualified, actor=SYSTEM)).ok
    assert {user.tenant_id for user in (await store.load("oak")).users.values()} == {None}
    one_tenant = SyncConfig("oak", MAPPINGS[:1], tenant_id=A)
    report = await reconciler(directory, store).run(one_tenant, actor=SYSTEM)
    updates = [change for change in report.plan.changes if type(change).__name__ == "UpdateUser"]
    assert len(updates) == 5 and all(change.changed == ("tenant_id",) for change in updates)
    assert {user.tenant_id for user in (await store.load("oak")).users.values()} == {A}
    assert not (await reconciler(directory, store).run(one_tenant, actor=SYSTEM)).plan.changes


async def test_the_same_email_in_two_tenants_in_one_run_is_the_shared_email_skip_and_stays_so():
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    a, b = tenant_a(), tenant_b()
    assert (await reconciler({A: a, B: b}, store).run(CONFIG, actor=SYSTEM)).ok
    b.put_user(DirectoryUser("b9", "Ann Again", "a1@oak.sch.uk"))
    b.add_member("gb-staff", "b9")
    for _ in range(2):  # stable: the account synced first keeps the email and its access, run after run
        report = await reconciler({A: a, B: b}, store, audit).run(CONFIG, actor=SYSTEM)
        shared = {skip.external_id: skip for skip in report.plan.skipped}
        assert set(shared) == {"a1", "b9"} and all(skip.keeps_access for skip in shared.values())
        state = await store.load("oak")
        assert access(state)["a1"] == {("birch", "Risk"): "Member"} and "b9" not in access(state)
        assert [u.external_id for u in state.users.values() if u.email == "a1@oak.sch.uk"] == ["a1"]
    told = [event for event in audit.events if event.subject == "b9"]
    assert told and "(tenant Ash School)" in told[0].message and told[0].detail["tenant_id"] == B


async def test_the_same_object_id_from_two_tenants_is_reported_never_merged():
    store = InMemoryUserStore()
    a, b = tenant_a(), tenant_b()
    assert (await reconciler({A: a, B: b}, store).run(CONFIG, actor=SYSTEM)).ok
    b.put_user(DirectoryUser("a2", "Impostor", "a2@ash.sch.uk"))
    b.add_member("gb-staff", "a2")
    for _ in range(2):  # told apart on full reads; the delta cache keeps one copy per object id
        report = await reconciler({A: a, B: b}, store).run(CONFIG, actor=SYSTEM, mode="full")
        (conflict,) = [skip for skip in report.plan.skipped if skip.conflict]
        assert conflict.external_id == "a2" and "Oak Academy" in conflict.reason and "Ash School" in conflict.reason
        state = await store.load("oak")
        assert access(state)["a2"] == {("birch", "Risk"): "Member"}  # tenant A's account, A's access only
        (stored,) = [u for u in state.users.values() if u.external_id == "a2"]
        assert stored.tenant_id == A and stored.email == "a2@oak.sch.uk"


async def test_an_account_moved_to_another_tenant_is_relinked_on_its_own_tenants_proof():
    store = InMemoryUserStore()
    a, b = tenant_a(), tenant_b()
    assert (await reconciler({A: a, B: b}, store).run(CONFIG, actor=SYSTEM)).ok
    before = {u.external_id: u.user_id for u in (await store.load("oak")).users.values()}
    a.delete_user("a3")  # gone from tenant A for good, and re-created in tenant B with the same email
    b.put_user(DirectoryUser("b-a3", "A3 Moved", "a3@oak.sch.uk"))
    b.add_member("gb-staff", "b-a3")
    report = await reconciler({A: a, B: b}, store).run(CONFIG, actor=SYSTEM)
    assert report.ok
    state = await store.load("oak")
    (moved,) = [u for u in state.users.values() if u.user_id == before["a3"]]
    assert moved.external_id == "b-a3" and moved.tenant_id == B
    assert access(state)["b-a3"] == {("ash", "Risk"): "Manager"}


async def test_another_tenants_404_is_no_proof_that_an_account_is_gone():
    store = InMemoryUserStore()
    a, b = tenant_a(), tenant_b()
    assert (await reconciler({A: a, B: b}, store).run(CONFIG, actor=SYSTEM)).ok
    a.remove_member("ga-staff", "a4")  # a4 still exists in tenant A, only out of the group
    b.put_user(DirectoryUser("b-a4", "Someone Else", "a4@oak.sch.uk"))
    b.add_member("gb-staff", "b-a4")
    report = await reconciler({A: a, B: b}, store).run(CONFIG, actor=SYSTEM)
    (conflict,) = [skip for skip in report.plan.skipped if skip.conflict]
    assert conflict.external_id == "b-a4"
    assert "(Azure account of tenant Ash School)" in conflict.reason and "of tenant Oak Academy)" in conflict.reason
    state = await store.load("oak")
    assert [u.external_id for u in state.users.values() if u.email == "a4@oak.sch.uk"] == ["a4"]


# ---------------------------------------------------------------------- a tenant that cannot be read, holds


async def test_a_tenant_that_cannot_be_read_holds_only_its_own_removals():
    store = InMemoryUserStore()
    a, b = tenant_a(), tenant_b()
    config = attrs.evolve(CONFIG, removal=RemovalPolicy(max_removal_ratio=1.0))
    assert (await reconciler({A: a, B: b}, store).run(config, actor=SYSTEM)).ok
    a.remove_member("ga-staff", "a0")
    b.remove_member("gb-staff", "b0")
    down = FlakyDirectory(b, {"gb-staff": DirectoryError("consent revoked", code="Authorization_RequestDenied")})
    report = await reconciler({A: a, B: down}, store).run(config, actor=SYSTEM)
    assert list(report.plan.unreadable_groups) == ["gb-staff"]
    state = await store.load("oak")
    assert "a0" not in access(state)  # tenant A's leaver goes
    assert access(state)["b0"] == {("ash", "Risk"): "Manager"}  # tenant B's removal waits for a complete read
    report = await reconciler({A: a, B: b}, store).run(config, actor=SYSTEM)
    assert report.ok and "b0" not in access(await store.load("oak"))


async def test_a_group_that_shrank_holds_only_its_tenants_removals():
    store = InMemoryUserStore()
    a, b = tenant_a(), tenant_b()
    config = attrs.evolve(CONFIG, removal=RemovalPolicy(max_removal_ratio=1.0, min_group_baseline=3))
    assert (await reconciler({A: a, B: b}, store).run(config, actor=SYSTEM)).ok
    assert (await reconciler({A: a, B: b}, store).run(config, actor=SYSTEM)).ok  # baselines remembered
    for i in range(4):
        a.remove_member("ga-staff", f"a{i}")  # 4 of 5: tenant A's group shrank sharply
    b.remove_member("gb-staff", "b1")
    report = await reconciler({A: a, B: b}, store).run(config, actor=SYSTEM)
    assert report.plan.held_groups == ("ga-staff",)
    held = {change.external_id for change in report.plan.held_removals}
    assert held == {"a0", "a1", "a2", "a3"}
    assert "Oak staff (Oak Academy)" in str(report.plan)  # the review names the shrunk group with its tenant
    state = await store.load("oak")
    assert "b1" not in access(state) and "a0" in access(state)


# ---------------------------------------------------------------------- incremental reads


async def test_incremental_runs_keep_a_cursor_per_tenant_and_end_where_full_runs_end():
    incremental, full = InMemoryUserStore(), InMemoryUserStore()
    a, b = tenant_a(), tenant_b()
    clock = Clock()
    for store in (incremental, full):
        assert (await reconciler({A: a, B: b}, store, clock=clock).run(CONFIG, actor=SYSTEM)).ok
    steps = [
        lambda: a.remove_member("ga-staff", "a1"),
        lambda: b.put_user(DirectoryUser("b7", "B7", "b7@ash.sch.uk")),
        lambda: b.add_member("gb-staff", "b7"),
        lambda: a.put_user(DirectoryUser("a0", "Renamed", "a0@oak.sch.uk")),
        lambda: b.delete_user("b2"),
    ]
    for step in steps:
        step()
        clock.now += dt.timedelta(minutes=40)
        report = await reconciler({A: a, B: b}, incremental, clock=clock).run(CONFIG, actor=SYSTEM)
        assert report.ok and report.mode == "incremental", report.mode_reason
        assert (await reconciler({A: a, B: b}, full, clock=clock).run(CONFIG, actor=SYSTEM, mode="full")).ok
        left, right = await incremental.load("oak"), await full.load("oak")
        assert access(left) == access(right)
        assert {u.external_id: (u.email, u.tenant_id) for u in left.users.values()} == {
            u.external_id: (u.email, u.tenant_id) for u in right.users.values()
        }


async def test_each_tenant_is_asked_with_its_own_cursor_and_only_for_its_own_groups():
    asked: list[tuple[str, object, list[str]]] = []

    def recording(tenant: str, directory: InMemoryDirectory) -> InMemoryDirectory:
        real = directory.changes

        async def changes(cursor, group_ids, *, start="initial"):
            group_ids = list(group_ids)
            delta, after = await real(cursor, group_ids, start=start)
            asked.append((tenant, cursor, group_ids))
            given.setdefault(tenant, []).append(after)
            return delta, after

        directory.changes = changes  # type: ignore[method-assign]
        return directory

    given: dict[str, list[object]] = {}
    a, b = recording(A, tenant_a()), recording(B, tenant_b())
    store, clock = InMemoryUserStore(), Clock()
    for _ in range(3):
        assert (await reconciler({A: a, B: b}, store, clock=clock).run(CONFIG, actor=SYSTEM)).ok
    assert {(tenant, tuple(groups)) for tenant, _, groups in asked} == {(A, ("ga-staff",)), (B, ("gb-staff",))}
    for tenant, cursor, _ in asked:
        assert cursor is None or cursor in given[tenant]  # a tenant only ever sees cursors it made itself


async def test_a_tenant_whose_round_fails_is_read_in_full_and_the_other_tenants_changes_apply():
    store = InMemoryUserStore()
    a, b = tenant_a(), tenant_b()
    clock = Clock()
    assert (await reconciler({A: a, B: b}, store, clock=clock).run(CONFIG, actor=SYSTEM)).ok

    class BrokenDelta(FlakyDirectory):
        async def changes(self, cursor, group_ids, *, start="initial"):
            raise DirectoryError("consent revoked", code="Authorization_RequestDenied", status=403)

        async def lookup_users(self, ids):
            return await self.inner.lookup_users(ids)

    a.remove_member("ga-staff", "a1")
    b.remove_member("gb-staff", "b3")
    broken = BrokenDelta(b, {"gb-staff": DirectoryError("consent revoked", code="Authorization_RequestDenied")})
    report = await reconciler({A: a, B: broken}, store, clock=clock).run(CONFIG, actor=SYSTEM)
    assert report.mode == "full" and "tenant tenant-b" in report.mode_reason
    assert list(report.plan.unreadable_groups) == ["gb-staff"]
    state = await store.load("oak")
    assert "a1" not in access(state) and "b3" in access(state)


# ---------------------------------------------------------------------- properties over two tenants

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .conftest import budget  # noqa: E402

_PEOPLE = {A: [f"a{i}" for i in range(5)], B: [f"b{i}" for i in range(4)]}
_GROUP = {A: "ga-staff", B: "gb-staff"}
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "delete", "rename", "same_email", "unreadable"]),
        st.sampled_from([A, B]),
        st.integers(0, 4),
    ),
    max_size=4,
)


def _apply(op: str, tenant: str, index: int, directories: dict[str, InMemoryDirectory], round_: int) -> None:
    directory, group = directories[tenant], _GROUP[tenant]
    people = _PEOPLE[tenant]
    person = people[index % len(people)]
    exists = person in directory.users
    if op == "join" and exists and person not in directory.members[group]:
        directory.add_member(group, person)
    elif op == "leave" and person in directory.members[group]:
        directory.remove_member(group, person)
    elif op == "delete" and exists:
        directory.delete_user(person)
    elif op == "rename" and exists:
        directory.put_user(attrs.evolve(directory.users[person], display_name=f"Renamed {round_}"))
    elif op == "same_email":  # an account in the other tenant with this tenant's person's email
        other = B if tenant == A else A
        twin = f"twin-{person}-{round_}"
        directories[other].put_user(DirectoryUser(twin, twin, f"{person}@{'oak' if tenant == A else 'ash'}.sch.uk"))
        directories[other].add_member(_GROUP[other], twin)


@settings(
    max_examples=budget("CALM_TENANT_EXAMPLES", 25, 200), deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(rounds=st.lists(_OPS, min_size=1, max_size=5))
def test_two_tenant_histories_incremental_equals_full_and_an_unreadable_tenant_removes_nothing_of_its_own(rounds):
    import asyncio

    async def scenario() -> None:
        directories = {A: tenant_a(), B: tenant_b()}
        config = attrs.evolve(CONFIG, removal=RemovalPolicy(max_removal_ratio=1.0, min_group_baseline=1000))
        incremental, full, clock = InMemoryUserStore(), InMemoryUserStore(), Clock()
        for store in (incremental, full):
            assert (await reconciler(directories, store, clock=clock).run(config, actor=SYSTEM)).ok
        for number, ops in enumerate(rounds):
            down = {tenant for op, tenant, _ in ops if op == "unreadable"}
            for op, tenant, index in ops:
                if op != "unreadable":
                    _apply(op, tenant, index, directories, number)
            clock.now += dt.timedelta(minutes=40)
            before = access(await incremental.load("oak"))
            reads = {
                tenant: FlakyDirectory(directory, {_GROUP[tenant]: DirectoryError("outage", code="serviceNotAvailable")})
                if tenant in down else directory
                for tenant, directory in directories.items()
            }
            await reconciler(reads, incremental, clock=clock).run(config, actor=SYSTEM)
            await reconciler(reads, full, clock=clock).run(config, actor=SYSTEM, mode="full")
            left, right = await incremental.load("oak"), await full.load("oak")
            assert access(left) == access(right)
            assert {u.external_id: (u.tenant_id, u.email) for u in left.users.values()} == {
                u.external_id: (u.tenant_id, u.email) for u in right.users.values()
            }
            for tenant in down:  # no wrongful removal: an unreadable tenant's accounts keep what they had
                stored = {u.external_id: u.tenant_id for u in left.users.values()}
                for external_id, grants in before.items():
                    if stored.get(external_id) == tenant:
                        assert access(left).get(external_id) == grants, (external_id, tenant)
        # convergence: once every tenant reads again, one more run leaves nothing to do
        clock.now += dt.timedelta(minutes=40)
        await reconciler(directories, incremental, clock=clock).run(config, actor=SYSTEM)
        settled = await reconciler(directories, incremental, clock=clock).run(config, actor=SYSTEM)
        assert settled.ok and (settled.plan is None or not settled.plan.changes), settled.plan

    asyncio.run(scenario())


async def test_explain_names_the_tenant_of_the_persons_account():
    store = InMemoryUserStore()
    directories = {A: tenant_a(), B: tenant_b()}
    assert (await reconciler(directories, store).run(CONFIG, actor=SYSTEM)).ok
    answer = await reconciler(directories, store).explain(CONFIG, "b1@ash.sch.uk", actor=SYSTEM)
    assert answer.status == "found" and answer.tenant_id == B and answer.tenant_name == "Ash School"
    assert "Their account is in tenant Ash School." in str(answer) and answer.to_dict()["tenant_id"] == B
    one = await reconciler(directories[A], InMemoryUserStore()).explain(
        SyncConfig("oak", [attrs.evolve(MAPPINGS[0], tenant_id=None)]), "a1@oak.sch.uk", actor=SYSTEM
    )
    assert one.tenant_id is None and "tenant" not in str(one)


async def test_status_says_which_tenant_refused_access():
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    a, b = tenant_a(), tenant_b()
    assert (await reconciler({A: a, B: b}, store, audit).run(CONFIG, actor=SYSTEM)).ok
    denied = DirectoryAccessError("Insufficient privileges", missing_permissions=("GroupMember.Read.All",))
    down = FlakyDirectory(b, {"gb-staff": denied})
    await reconciler({A: a, B: down}, store, audit).run(CONFIG, actor=SYSTEM)
    status = await reconciler({A: a, B: b}, store, audit).status("oak", actor=SYSTEM)
    (revoked,) = [item for item in status.attention if item.kind == "access_revoked"]
    assert revoked.tenant_ids == (B,) and "Ash School" in revoked.message
    assert revoked.to_dict()["tenant_ids"] == [B]


async def test_check_finds_a_group_mapped_under_the_wrong_tenant():
    wrong = attrs.evolve(CONFIG, mappings=[MAPPINGS[0], attrs.evolve(MAPPINGS[1], tenant_id=A)])
    problems = await reconciler({A: tenant_a(), B: tenant_b()}, InMemoryUserStore()).check(wrong, actor=SYSTEM)
    assert [problem.group_id for problem in problems] == ["gb-staff"], problems
    assert not await reconciler({A: tenant_a(), B: tenant_b()}, InMemoryUserStore()).check(CONFIG, actor=SYSTEM)
