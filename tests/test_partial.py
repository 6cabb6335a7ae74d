"""A simple round read from some rows of the delta cache says what folding it into the whole cache says.

The reference is the whole path: :func:`apply_delta` into the whole cache (the
members no one described looked up), :func:`touched_people` between the two
caches, the sizes of :func:`snapshot_members`, and :func:`cache_write`.
:class:`RoundPart` must agree on who was touched, every mapped group's size,
the cache it leaves, and the snapshot of any people it is asked for.
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calm_azure_sync import InMemoryUserStore
from calm_azure_sync.directory.delta import DirectoryDelta, GroupDelta, RemovedUser
from calm_azure_sync.incremental.cache import DeltaCache, cache_write
from calm_azure_sync.incremental.difference import touched_people
from calm_azure_sync.incremental.fold import apply_delta, snapshot_members
from calm_azure_sync.incremental.partial import RoundPart, is_simple, rows_of
from calm_azure_sync.model import DirectoryUser

from .conftest import budget

AT = dt.datetime(2026, 12, 7, 8, tzinfo=dt.UTC)
MAPPED = ["m0", "m1", "m2"]
NESTED = ["n0", "n1"]
GROUPS = [*MAPPED, *NESTED]
PEOPLE = [f"p{i}" for i in range(12)]


def _user(person: str, version: int = 0) -> DirectoryUser:
    return DirectoryUser(person, display_name=f"{person} v{version}", mail=f"{person}@oak.sch.uk")


@st.composite
def caches(draw) -> DeltaCache:
    """A cache as a fold leaves one: every group reached from a mapped one, every member user cached."""
    groups: dict[str, set[str]] = {group: set() for group in GROUPS}
    for group in GROUPS:
        groups[group] |= set(draw(st.lists(st.sampled_from(PEOPLE), max_size=6)))
        groups[group] |= {g for g in draw(st.lists(st.sampled_from(NESTED), max_size=2)) if g != group}
    folded = apply_delta({g: frozenset(m) for g, m in groups.items()}, {p: _user(p) for p in PEOPLE}, DirectoryDelta(), MAPPED)
    return DeltaCache({"seq": 1}, folded.groups, folded.users, frozenset(MAPPED), AT)


@st.composite
def simple_rounds(draw, cache: DeltaCache) -> DirectoryDelta:
    """Users described (changed, unchanged, new), removed, and user members added to or taken from tracked groups."""
    pool = [*PEOPLE, "x0", "x1"]  # x*: never cached
    described = draw(st.lists(st.sampled_from(pool), max_size=4, unique=True))
    removed = draw(st.lists(st.sampled_from(pool), max_size=2, unique=True))
    users = tuple(sorted((_user(p, draw(st.integers(0, 1))) for p in described if p not in removed), key=lambda u: u.id))
    changes = []
    for group in sorted(cache.groups):
        added = frozenset(draw(st.lists(st.sampled_from(pool), max_size=3)))
        taken = frozenset(draw(st.lists(st.sampled_from([*cache.groups[group], "p0"]), max_size=2))) - added
        taken = frozenset(m for m in taken if m not in cache.groups)  # users only: a simple round
        if added or taken:
            changes.append(GroupDelta(group, added_users=added, removed_users=taken))
    return DirectoryDelta(users, tuple(RemovedUser(p) for p in sorted(removed)), tuple(changes))


def _whole(cache: DeltaCache, delta: DirectoryDelta, found: dict[str, DirectoryUser | None], mapped=MAPPED):
    """The whole path, as DirectoryReader._follow folds a round with no new chain."""
    known = dict(cache.users)
    known.update((user.id, user) for user in delta.users)
    for gone in delta.removed_users:
        known.pop(gone.id, None)
    applied = apply_delta(cache.groups, known, delta, mapped)
    assert not applied.new_groups
    users, groups = dict(applied.users), dict(applied.groups)
    looked = {p: found[p] for p in applied.missing_users}
    users.update((p, u) for p, u in looked.items() if u is not None)
    gone = {p for p, u in looked.items() if u is None}
    groups = {g: m - gone for g, m in groups.items()}
    return DeltaCache({"seq": 2}, groups, users, cache.mapped, AT)


def _part(
    cache: DeltaCache, delta: DirectoryDelta, found: dict[str, DirectoryUser | None], mapped=MAPPED
) -> RoundPart:
    nesting = rows_of(cache.groups, cache.users, cache.groups)
    rows = rows_of(cache.groups, cache.users, RoundPart.named(delta))
    missing = RoundPart.missing(delta, rows)
    return RoundPart(cache.head, delta, mapped, nesting, rows, {p: found[p] for p in missing})


@settings(max_examples=budget("CALM_PARTIAL_EXAMPLES", 300, 2000), deadline=None)
@given(data=st.data())
def test_a_simple_round_from_some_rows_equals_the_round_folded_into_the_whole_cache(data) -> None:
    cache = data.draw(caches())
    delta = data.draw(simple_rounds(cache))
    assert is_simple(delta, cache.head, frozenset(MAPPED))
    found = {p: data.draw(st.sampled_from([None, _user(p, 7)])) for p in [*PEOPLE, "x0", "x1"]}
    after = _whole(cache, delta, found)
    part = _part(cache, delta, found)
    members_after = snapshot_members(after.groups, after.users, MAPPED)

    assert part.touched == touched_people(cache, after, MAPPED, members_after)
    sizes_before = {g: len(users) for g, users in snapshot_members(cache.groups, cache.users, MAPPED).items()}
    assert part.sizes(sizes_before) == {g: len(users) for g, users in members_after.items()}
    assert part.user_count == len(after.users)
    left = part.write({"seq": 2}).applied_to(cache)
    assert (left.groups, left.users, left.cursor) == (after.groups, after.users, after.cursor)
    assert cache_write(cache, after).applied_to(cache) == left  # the same cache the whole path writes

    # Anyone asked for, touched or not: their mapped groups and users after the round.
    people = set(data.draw(st.lists(st.sampled_from([*PEOPLE, "x0", "x1"]), max_size=6))) | part.touched
    unknown = part.unknown(people)
    part.learn(rows_of(cache.groups, cache.users, unknown), unknown)
    some = part.snapshot(people).members
    assert {g: {u.id: u for u in users} for g, users in some.items()} == {
        g: {u.id: u for u in members_after.get(g, ()) if u.id in people} for g in MAPPED
    }
    assert {p for p in people if p in part.before} == {p for p in people if p in cache.users}


@pytest.mark.parametrize(
    ("change", "simple"),
    [
        (GroupDelta("m0", added_users=frozenset({"p1"})), True),
        (GroupDelta("m0", added_groups=frozenset({"n0"})), False),  # nesting changed
        (GroupDelta("m0", removed_groups=frozenset({"n0"})), False),
        (GroupDelta("m0", added_users=frozenset({"p1"}), complete=True), False),  # a chain read from its start
        (GroupDelta("elsewhere", added_users=frozenset({"p1"})), False),  # a group the cache does not track
    ],
)
def test_a_round_is_simple_only_when_it_changes_users_and_their_memberships_in_tracked_groups(change, simple) -> None:
    cache = DeltaCache({}, {"m0": frozenset(), "m1": frozenset(), "m2": frozenset()}, {}, frozenset(MAPPED), AT)
    assert is_simple(DirectoryDelta(groups=(change,)), cache.head, frozenset(MAPPED)) is simple
    assert not is_simple(DirectoryDelta(removed_groups=frozenset({"m1"})), cache.head, frozenset(MAPPED))
    assert not is_simple(DirectoryDelta(), cache.head, frozenset(["m0"]))  # the mapped groups changed


@pytest.mark.asyncio
async def test_the_in_memory_store_answers_rows_from_its_cache() -> None:
    store = InMemoryUserStore()
    cache = DeltaCache({}, {"m0": frozenset({"p1", "n0"}), "n0": frozenset({"p1", "p2"})},
                       {"p1": _user("p1"), "p2": _user("p2")}, frozenset({"m0"}), AT)  # fmt: skip
    await store.save_delta("oak", cache_write(None, cache))
    rows = await store.load_delta_rows("oak", ["p1", "n0", "nobody"])
    assert rows.groups_of == {"p1": frozenset({"m0", "n0"}), "n0": frozenset({"m0"})}
    assert rows.users == {"p1": _user("p1")}
    assert rows.user_count == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_over_graph_a_run_after_a_few_changes_reads_some_rows_and_plans_what_everyone_would(
    store_kind, tmp_path, monkeypatch
) -> None:
    """Through msgraph-sdk and the fake Graph's documented delta shapes (users/delta, groups/delta with
    members@delta, @removed): a simple round is read from some rows of the cache, and the run's plan is the
    plan of everyone on the same state."""
    from calm_azure_sync import SqliteUserStore
    from calm_azure_sync.testing.fake_graph import FakeGraph

    from .graph_helpers import sdk_directory
    from .helpers import SYSTEM, partial_reads
    from .test_difference import _comparable
    from .test_incremental import CONFIG, Clock, fixture, reconciler

    parts = partial_reads(monkeypatch)
    graph = FakeGraph(fixture())
    directory = sdk_directory(graph.transport())
    store = SqliteUserStore(tmp_path / "calm.db") if store_kind == "sqlite" else InMemoryUserStore()
    clock = Clock()
    try:
        for _ in range(2):  # a full read, then an incremental run that leaves the record
            assert (await reconciler(directory, store, clock=clock).run(CONFIG, actor=SYSTEM)).ok
            clock.now += dt.timedelta(minutes=40)
        graph.add_member("g1", "u7")  # joins
        graph.add_member("g0", "u4")  # in g2 already: a new group, the same cached user
        graph.remove_member("g2", "u5")  # leaves
        graph.add_user({"id": "u3", "displayName": "U3 Renamed", "mail": "u3@oak.sch.uk",
                        "userPrincipalName": "u3@oak.sch.uk", "accountEnabled": True})  # fmt: skip
        graph.remove_user("u1", soft=True)  # @removed "changed"
        sync = reconciler(directory, store, clock=clock)
        everyone = await sync.plan(CONFIG, actor=SYSTEM)
        report = await sync.run(CONFIG, actor=SYSTEM)
    finally:
        if store_kind == "sqlite":
            store.close()
    assert report.ok and report.mode == "incremental", report.mode_reason
    assert parts[-1:] == [True] and report.people_planned == 5
    assert report.plan is not None
    assert _comparable(report.plan.changes) == _comparable(everyone.changes)
    assert {c.external_id for c in report.plan.changes} >= {"u1", "u3", "u4", "u5", "u7"}


@pytest.mark.asyncio
async def test_when_rows_of_the_cache_cannot_be_read_the_round_is_folded_into_the_whole_cache(monkeypatch) -> None:
    """A cache is never a reason to fail: a store whose load_delta_rows fails still plans by difference, from
    the whole cache, and plans what planning everyone plans (not a read of nothing, every group unreadable)."""
    from calm_azure_sync import InMemoryDirectory

    from .helpers import SYSTEM, partial_reads
    from .test_difference import _comparable
    from .test_incremental import CONFIG, Clock, fixture, reconciler

    class RowsFail(InMemoryUserStore):
        async def load_delta_rows(self, trust_site_id, member_ids):
            raise RuntimeError("the delta cache's rows are on fire")

    parts = partial_reads(monkeypatch)
    directory, store, clock = InMemoryDirectory.from_dict(fixture()), RowsFail(), Clock()
    for _ in range(2):
        assert (await reconciler(directory, store, clock=clock).run(CONFIG, actor=SYSTEM)).ok
        clock.now += dt.timedelta(minutes=40)
    directory.add_member("g1", "u7")
    sync = reconciler(directory, store, clock=clock)
    everyone = await sync.plan(CONFIG, actor=SYSTEM)
    report = await sync.run(CONFIG, actor=SYSTEM)
    assert report.ok and report.mode == "incremental", (report.mode_reason, report.errors)
    assert parts[-1:] == [False] and report.people_planned == 1
    assert report.plan is not None and _comparable(report.plan.changes) == _comparable(everyone.changes)
    assert {change.external_id for change in report.plan.changes} == {"u7"}


def test_the_documented_change_round_read_from_some_rows_equals_the_whole_fold() -> None:
    """FACTS.md's change round as the Graph reader merges it: users-delta-changes.json (a changed user, one
    soft-deleted) and groups-delta.json (members@delta: one member @removed, its id one character short as
    documented, and one added), over a cache where the group is mapped and nested in another mapped group."""
    from calm_azure_sync.directory._graph_delta import merge_user_items
    from calm_azure_sync.directory.delta import build_delta

    from .graph_helpers import example
    from .test_delta import merged_groups

    group, outer = "2e5807ce-58f3-4a94-9b37-ffff2e085957", "outer"
    gone, admin, soft, added = (
        "632f6bb2-3ec8-4c1f-9073-0027a8c6859", "25dcffff-959e-4ece-9973-e5d9b800e8cc",
        "8ffff70c-1c63-4860-b963-e34ec660931d", "37de1ae3-408f-4702-8636-20824abda004",
    )  # fmt: skip
    users: dict = {}
    merge_user_items(example("users-delta-changes.json")["value"], users, "changes", require_account_enabled=False)
    members, removed_groups = merged_groups("groups-delta.json")
    delta = build_delta(users, {group: members[group].frozen(group, complete=False)}, removed_groups, users_complete=False)
    mapped = [group, outer]
    cached = {person: _user(person) for person in (gone, admin, soft)}
    cache = DeltaCache(
        {"seq": 1}, {group: frozenset({gone, admin, soft}), outer: frozenset({group, soft})}, cached,
        frozenset(mapped), AT,
    )  # fmt: skip
    head = cache.head
    assert is_simple(delta, head, frozenset(mapped))
    for found in ({added: _user(added, 3)}, {added: None}):  # the added member looked up, or gone by then
        after = _whole(cache, delta, found, mapped)
        part = _part(cache, delta, found, mapped)
        members_after = snapshot_members(after.groups, after.users, mapped)
        assert part.touched == touched_people(cache, after, mapped, members_after) == (
            {gone, admin, soft, added} if found[added] else {gone, admin, soft}
        )
        before_sizes = {g: len(u) for g, u in snapshot_members(cache.groups, cache.users, mapped).items()}
        assert part.sizes(before_sizes) == {g: len(u) for g, u in members_after.items()}
        left = part.write({"seq": 2}).applied_to(cache)
        assert (left.groups, left.users) == (after.groups, after.users)
