"""Planning by difference: an incremental run plans only the people its round touched, and plans what planning
everyone would have planned."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from calm_azure_sync import (
    AuditKind,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    RemovalPolicy,
    SqliteUserStore,
    SyncConfig,
)
from calm_azure_sync.core.plan import Skip, Unassign, change_to_dict
from calm_azure_sync.incremental.cache import DeltaCache
from calm_azure_sync.incremental.difference import PeopleSearch, PeopleSlice, touched_people
from calm_azure_sync.model import DirectoryUser
from calm_azure_sync.store.protocol import PeopleIndex, StoredUser, StoreState

from .conftest import budget
from .directory_rules import edited_user, membership_rules
from .helpers import OAK_BIRCH_ASH as HIERARCHY
from .helpers import SYSTEM, FlakyStore, partial_reads
from .test_incremental import MAPPINGS, Clock

CONFIGS = {
    "deactivate": SyncConfig("oak", MAPPINGS, removal=RemovalPolicy("deactivate")),
    "unassign": SyncConfig("oak", MAPPINGS),
    "keep": SyncConfig("oak", MAPPINGS, removal=RemovalPolicy("keep")),
    "nested mapped too": SyncConfig(
        "oak", [*MAPPINGS, GroupMapping("nested", "ash", {"Policies": "Manager"})], removal=RemovalPolicy("deactivate")
    ),
}
USERS = [f"u{i}" for i in range(10)]  # u8 and u9 start in no group
GROUPS = ["g0", "g1", "g2", "nested"]


def fixture() -> dict:
    return {
        "users": [
            {"id": u, "displayName": u.upper(), "mail": f"{u}@oak.sch.uk", "userPrincipalName": f"{u}@oak.sch.uk",
             "accountEnabled": True}
            for u in USERS
        ],
        "groups": [{"id": g, "displayName": g.upper()} for g in GROUPS],
        "members": {"g0": ["u0", "u1", "u2", "nested"], "g1": ["u3", "u7"], "g2": ["u4", "u5"], "nested": ["u6"]},
    }


def _comparable(changes):
    """Changes as sorted text: both plans come from one store, so even its user ids must agree."""
    return sorted(sorted((k, str(v)) for k, v in change_to_dict(c).items()) for c in changes)


# ---------------------------------------------------------------------- the touched set, by example


def _user(uid: str, mail: str | None = None) -> DirectoryUser:
    return DirectoryUser(uid, uid.upper(), mail or f"{uid}@oak.sch.uk", f"{uid}@oak.sch.uk")


def _cache(groups: dict[str, set[str]], users: list[DirectoryUser]) -> DeltaCache:
    return DeltaCache(
        {"c": 1}, {g: frozenset(m) for g, m in groups.items()}, {u.id: u for u in users}, frozenset(["g0", "g1"]),
        dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
    )


def test_a_member_added_to_a_nested_group_touches_them_in_every_mapped_group_above_it_and_no_one_else():
    people = [_user(f"u{i}") for i in range(5)]
    before = _cache({"g0": {"u0", "sub"}, "sub": {"u1"}, "g1": {"u2", "u3"}}, people)
    after = _cache({"g0": {"u0", "sub"}, "sub": {"u1", "u4"}, "g1": {"u2", "u3"}}, people)
    members = {"g0": [people[0], people[1], people[4]], "g1": [people[2], people[3]]}
    assert touched_people(before, after, ["g0", "g1"], members) == {"u4"}


def test_a_changed_user_object_and_a_removed_user_are_touched_and_an_equal_copy_is_not():
    before = _cache({"g0": {"u0", "u1", "u2"}}, [_user("u0"), _user("u1"), _user("u2")])
    after = _cache({"g0": {"u0", "u1"}}, [_user("u0"), _user("u1", "new@oak.sch.uk")])
    assert touched_people(before, after, ["g0"], {"g0": [_user("u0"), _user("u1", "new@oak.sch.uk")]}) == {"u1", "u2"}


def people_to_plan(touched, now, before, state: StoreState, shared=()) -> PeopleSlice:
    """The search run against a whole store state, as a run does against a store without ``load_people``."""
    search = PeopleSearch(touched, now, before, shared)
    index = PeopleIndex(state)
    while (asked := search.wanted()) is not None:
        search.found(index.rows(*asked).state)
    return search.slice


def test_whoever_shares_an_email_with_a_touched_person_now_before_or_in_the_store_is_planned_too():
    # u1 gave up an address it shared with u4 (both were left out for it) and took the one synced u2 has.
    now = {"u1": _user("u1", "U2@oak.sch.uk"), "u2": _user("u2"), "u3": _user("u3"), "u4": _user("u4", "old@oak.sch.uk")}
    before = {"u1": _user("u1", "old@oak.sch.uk"), "u2": _user("u2"), "u3": _user("u3"), "u4": _user("u4", "old@oak.sch.uk")}
    shared = [
        Skip("u1", "old@oak.sch.uk", "email is shared", keeps_access=True),
        Skip("u4", "old@oak.sch.uk", "email is shared", keeps_access=True),
        Skip("u5", "u5@oak.sch.uk", "account is disabled in Azure"),
    ]
    state = StoreState(users={
        "s1": StoredUser("s1", "u1-was@oak.sch.uk", "U1", external_id="u1"),
        "s2": StoredUser("s2", "u2@oak.sch.uk", "U2", external_id="u2"),
        "s5": StoredUser("s5", "OLD@oak.sch.uk", "Invited"),  # invited by hand: found by its email only
        "s6": StoredUser("s6", "u3@oak.sch.uk", "U3", external_id="u6"),
    })
    found = people_to_plan({"u1"}, now, before, state, shared)
    assert found.external_ids == {"u1", "u2", "u4"}
    assert found.user_ids == {"s1", "s2", "s5"}
    # The store user holding u3's address is another account: planned with u3 (a relink or a conflict).
    assert people_to_plan({"u3"}, now, before, state, shared).external_ids == {"u3", "u6"}


# ---------------------------------------------------------------------- the runs


def reconciler(directory, store, audit=None, clock=None) -> Reconciler:
    return Reconciler(directory, store, audit or InMemoryAuditSink(), HIERARCHY, clock=clock or Clock())


async def test_a_run_after_a_few_changes_plans_only_those_people_and_says_so():
    directory = InMemoryDirectory.from_dict(fixture())
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    config = CONFIGS["deactivate"]
    first = await reconciler(directory, store, audit).run(config, actor=SYSTEM)  # full: starts the cache
    second = await reconciler(directory, store, audit).run(config, actor=SYSTEM)  # incremental: leaves the record
    assert first.people_planned is None and second.people_planned is None
    directory.add_member("g2", "u8")
    directory.remove_member("g1", "u3")
    third = await reconciler(directory, store, audit).run(config, actor=SYSTEM)
    assert third.mode == "incremental" and third.people_planned == 2, third.mode_reason
    assert third.plan is not None and third.plan.users_in_scope == 8 and third.plan.synced_users == 8
    assert {c.external_id for c in third.plan.changes} == {"u3", "u8"}
    summary = [e for e in audit.events if e.kind is AuditKind.DISCOVERY and e.run_id == third.run_id]
    assert summary[0].detail["people_planned"] == 2
    assert "planned only the 2 people the changes touched" in summary[0].message


async def _with_a_record(store: InMemoryUserStore) -> tuple[InMemoryDirectory, SyncConfig]:
    """A trust imported (a full read), then read incrementally: that run leaves the record to plan by difference from."""
    directory = InMemoryDirectory.from_dict(fixture())
    config = CONFIGS["deactivate"]
    for _ in range(2):
        await reconciler(directory, store).run(config, actor=SYSTEM)
    return directory, config


async def test_a_write_by_anyone_since_the_last_run_makes_the_next_plan_everyone():
    store = InMemoryUserStore()
    directory, config = await _with_a_record(store)
    state = await store.load("oak")
    (person,) = [u for u in state.users.values() if u.external_id == "u0"]
    await store.set_active(person.user_id, False)  # a person, in the app
    directory.add_member("g2", "u8")
    after = await reconciler(directory, store).run(config, actor=SYSTEM)
    assert after.people_planned is None and after.mode == "incremental"
    again = await reconciler(directory, store).run(config, actor=SYSTEM)
    directory.add_member("g2", "u9")
    narrowed = await reconciler(directory, store).run(config, actor=SYSTEM)
    # That run planned everyone and left its record: a quiet round then plans no one, and the next one person.
    assert again.people_planned == 0 and again.plan is not None and not again.plan.changes
    assert narrowed.people_planned == 1


async def test_a_run_whose_change_failed_leaves_no_record_so_the_next_plans_everyone_and_retries_it():
    inner = InMemoryUserStore()
    directory, config = await _with_a_record(inner)
    refusing = _ApplyOnly(inner, reject=lambda change: "refused" if change.external_id == "u8" else None)
    directory.add_member("g2", "u8")
    directory.add_member("g2", "u9")
    failed = await reconciler(directory, refusing).run(config, actor=SYSTEM)
    assert not failed.ok
    retried = await reconciler(directory, inner).run(config, actor=SYSTEM)
    assert retried.people_planned is None and retried.ok
    assert {c.external_id for c in retried.plan.changes} == {"u8"}


class _ApplyOnly(FlakyStore):
    """A store that refuses some changes and saves its memory apart from its batches (no ``apply_with_state``)."""

    def __getattr__(self, name):
        if name == "apply_with_state":
            raise AttributeError(name)
        return getattr(self.inner, name)


# ---------------------------------------------------------------------- planning by difference against everyone


class DifferenceAgainstEveryone(membership_rules(USERS, GROUPS)):  # type: ignore[misc]
    """Random directory, store and settings changes; before every run, the plan of everyone (``Reconciler.plan``)
    on the same state; the run's plan, by difference when it can, must be that plan."""

    store_kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = InMemoryDirectory.from_dict(fixture())
        self.folder = tempfile.mkdtemp()
        if self.store_kind == "sqlite":
            self.store = SqliteUserStore(os.path.join(self.folder, "calm.db"))
        elif self.store_kind == "postgres":
            from calm_azure_sync.postgres import PostgresUserStore

            self.schema = f"calm_diff_{uuid.uuid4().hex[:12]}"
            self.store = PostgresUserStore(os.environ["CALM_TEST_POSTGRES"], schema=self.schema, pool_size=1)
        else:
            self.store = InMemoryUserStore()
        self.config = CONFIGS["deactivate"]
        self.clock = Clock()
        self.edits = 0
        self.narrowed = 0

    def teardown(self) -> None:
        if self.store_kind == "sqlite":
            self.store.close()
        elif self.store_kind == "postgres":
            import psycopg

            self.run(self.store.close())
            with psycopg.connect(os.environ["CALM_TEST_POSTGRES"], autocommit=True) as connection:
                connection.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.loop.close()

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    @rule(user=st.sampled_from(USERS), other=st.sampled_from(USERS),
          change=st.sampled_from(["rename", "re-email", "take-email", "own-email", "disable", "enable", "guest"]))
    def edit(self, user, other, change):
        old = self.directory.users.get(user)
        if old is None:
            return
        self.edits += 1
        self.directory.put_user(edited_user(old, change, self.edits, other))

    @rule(kind=st.sampled_from(["invite", "deactivate", "take a grant"]), user=st.sampled_from(USERS), data=st.data())
    def behind_the_syncs_back(self, kind, user, data):
        """A write to the store that is not the sync's (a person in the app, another tool)."""
        state = self.run(self.store.load("oak"))
        if kind == "invite":  # someone invited by hand with an Azure user's email: linked, or a conflict
            email = f"{user}@oak.sch.uk"
            if all(stored.email.lower() != email for stored in state.users.values()):
                self.run(self.store.add_user(email.upper(), f"Invited {user}"))
        elif kind == "deactivate":
            active = sorted(u.user_id for u in state.users.values() if u.active)
            if active:
                self.run(self.store.set_active(data.draw(st.sampled_from(active)), False))
        else:
            grants = sorted((e, key, role) for e, access in state.synced_access.items() for key, role in access.items())
            if grants:
                external_id, (site, module), role = data.draw(st.sampled_from(grants))
                self.run(self.store.apply("oak", [Unassign(external_id, site, module, previous=role)]))

    @rule(name=st.sampled_from(sorted(CONFIGS)))
    def switch_settings(self, name):
        self.config = CONFIGS[name]

    @rule()
    def expire_tokens(self):
        self.directory.expire_delta_tokens()

    @initialize()
    def two_runs(self):
        self.runs()  # a full read starts the delta cache
        self.runs()  # an incremental run leaves the record the next run plans by difference from

    @rule()
    def another_run(self):
        self.runs()  # a second rule that runs: runs come about as often as changes

    @rule()
    def runs(self):
        self.clock.now += dt.timedelta(minutes=40)
        sync = reconciler(self.directory, self.store, clock=self.clock)
        everyone = self.run(sync.plan(self.config, actor=SYSTEM))
        report = self.run(sync.run(self.config, actor=SYSTEM))
        plan = report.plan
        assert plan is not None
        if report.people_planned is not None:
            self.narrowed += 1
        where = f"(by difference: {report.people_planned}, {report.mode}: {report.mode_reason})"
        assert _comparable(plan.changes) == _comparable(everyone.changes), where
        assert plan.skipped == everyone.skipped, where
        assert (plan.users_in_scope, plan.synced_users) == (everyone.users_in_scope, everyone.synced_users), where
        assert _comparable(plan.held_removals) == _comparable(everyone.held_removals), where
        assert plan.hold_reason == everyone.hold_reason, where
        assert plan.left_scope == everyone.left_scope, where
        self.check_cache(where)

    def check_cache(self, where: str) -> None:
        """The delta cache the run left holds what the directory holds, however it was written (whole or rows)."""
        cache = self.run(self.store.load_delta("oak"))
        if cache is None:
            return
        directory = self.directory
        for group, members in cache.groups.items():
            held = {m for m in directory.members.get(group, ()) if m in directory.users or m in directory.groups}
            assert members == held, f"{where}: the cache of {group}"
        reached = {m for members in cache.groups.values() for m in members if m in directory.users}
        assert cache.users == {user_id: directory.users[user_id] for user_id in reached}, where


def _machine_settings(examples: int) -> settings:
    return settings(
        max_examples=examples, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


DifferenceAgainstEveryone.TestCase.settings = _machine_settings(budget("CALM_DIFFERENCE_EXAMPLES", 40, 300))
TestDifferenceAgainstEveryone = DifferenceAgainstEveryone.TestCase


class DifferenceAgainstEveryoneOnSqlite(DifferenceAgainstEveryone):
    store_kind = "sqlite"


DifferenceAgainstEveryoneOnSqlite.TestCase.settings = _machine_settings(budget("CALM_DIFFERENCE_EXAMPLES", 15, 150))
TestDifferenceAgainstEveryoneOnSqlite = DifferenceAgainstEveryoneOnSqlite.TestCase


class DifferenceAgainstEveryoneOnPostgres(DifferenceAgainstEveryone):
    store_kind = "postgres"


def test_planning_by_difference_on_postgres_plans_what_planning_everyone_plans(postgres_url):
    """The same machine into PostgreSQL (a schema per example): its PeopleStore and DeltaRowsStore reads."""
    run_state_machine_as_test(
        DifferenceAgainstEveryoneOnPostgres, settings=_machine_settings(budget("CALM_DIFFERENCE_EXAMPLES", 6, 60))
    )


@pytest.mark.parametrize("machine_class", [DifferenceAgainstEveryone, DifferenceAgainstEveryoneOnSqlite, "postgres"])
def test_the_machine_does_plan_by_difference_most_of_the_time(machine_class, monkeypatch, request):
    """The differential above would pass vacuously if no run narrowed: a fixed history shows they do, and
    that they read the round from some rows of the cache (never loading it whole), on every store."""
    if machine_class == "postgres":
        request.getfixturevalue("postgres_url")  # skips without a server (never in CI)
        machine_class = DifferenceAgainstEveryoneOnPostgres
    parts = partial_reads(monkeypatch)
    machine = machine_class()
    try:
        machine.runs()
        machine.runs()
        for step in range(8):
            machine.join(["g0", "g1", "g2"][step % 3], USERS[step % len(USERS)])
            machine.edit(USERS[(step + 3) % len(USERS)], USERS[0], ["rename", "take-email", "own-email"][step % 3])
            machine.runs()
        assert machine.narrowed == 8
        assert parts.count(True) == 8
    finally:
        machine.teardown()
