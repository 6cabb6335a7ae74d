"""InMemoryDirectory and GraphDirectory (real SDK, fake Graph on 127.0.0.1) answer alike, economically."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from calm_azure_sync import (
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    RemovalPolicy,
    SyncConfig,
)
from calm_azure_sync.testing.directory_conformance import (
    LOOKUP_SAMPLE,
    SEARCHES,
    check_directory,
    conformance_fixture,
    expected_members,
)
from calm_azure_sync.testing.fake_graph import FakeGraphServer, Fault

from .graph_helpers import directory_for
from .helpers import OAK_TRUST_BIRCH_HIGH as HIERARCHY
from .helpers import SYSTEM

pytestmark = pytest.mark.wire

PAGE = 50


def paging_minimum(fixture: dict[str, Any], page: int) -> int:
    """Requests the suite needs at least: group list pages, member pages per group, one 404, the look-ups."""
    groups = [g["id"] for g in fixture["groups"]]
    member_pages = sum(max(1, math.ceil(len(expected_members(fixture, g)) / page)) for g in groups)
    # lookup_users: LOOKUP_SAMPLE users + an unknown id + a group id in $batch requests of 20,
    # then one user alone and one unknown id alone (a GET each), then no ids (no request).
    lookups = math.ceil((LOOKUP_SAMPLE + 2) / 20) + 2
    # discovery: one $count per group, one page per search (the fixture's groups fit a page).
    discovery = len(groups) + len(SEARCHES)
    return max(1, math.ceil(len(groups) / page)) + member_pages + 1 + lookups + discovery


@pytest.fixture(scope="module")
def fixture() -> dict[str, Any]:
    return conformance_fixture(big_group_size=3 * PAGE + 7)  # four pages


async def test_in_memory_directory_conforms(fixture):
    await check_directory(InMemoryDirectory.from_dict(fixture), fixture)


async def test_graph_directory_over_the_fake_conforms_identically_with_the_fewest_requests(fixture):
    reference = await check_directory(InMemoryDirectory.from_dict(fixture), fixture)
    with FakeGraphServer(fixture, page_cap=PAGE) as graph:
        directory, sleep = directory_for(graph)
        async with directory:
            answered = await check_directory(directory, fixture)
        assert answered == reference
        wire = [r for r in graph.requests if not r.batched]
        assert len(wire) == paging_minimum(fixture, PAGE)
        assert [r.path for r in wire].count("/$batch") == math.ceil((LOOKUP_SAMPLE + 2) / 20)
        assert len([r for r in graph.requests if r.batched]) == LOOKUP_SAMPLE + 2  # each id once
        assert sleep.calls == []
        member_reads = [r for r in graph.requests if "transitiveMembers" in r.path and not r.path.endswith("$count")]
        assert all(r.resource_units == 4 for r in member_reads)  # transitiveMembers 5, minus 1 for $select
        searches = [r for r in wire if "$search" in r.query]
        assert len(searches) == len(SEARCHES) and all(r.consistency_level == "eventual" for r in searches)


async def test_graph_directory_conforms_through_throttling_and_an_outage(fixture):
    reference = await check_directory(InMemoryDirectory.from_dict(fixture), fixture)
    with FakeGraphServer(fixture, page_cap=PAGE) as graph:
        graph.inject(Fault.throttle("2.128"), path="/groups/g-big/*", skip=2)
        graph.inject(Fault.unavailable(), path="/groups/g-staff/*", times=3)
        graph.inject(Fault.gateway_timeout(), path="/groups")
        directory, sleep = directory_for(graph)
        async with directory:
            assert await check_directory(directory, fixture) == reference
        assert 2.128 in sleep.calls
        assert len(sleep.calls) == 5
        assert len([r for r in graph.requests if not r.batched]) == paging_minimum(fixture, PAGE) + 5  # a request per fault
        assert graph.pending_faults == 0


def test_the_suite_catches_a_directory_that_answers_wrongly(fixture):
    class Forgetful(InMemoryDirectory):
        async def group_members(self, group_id):
            return list(await super().group_members(group_id))[1:]

    class Lenient(InMemoryDirectory):
        async def group_members(self, group_id):
            return [] if group_id not in self.groups else await super().group_members(group_id)

    for wrong in (Forgetful, Lenient):
        with pytest.raises(AssertionError):
            asyncio.run(check_directory(wrong.from_dict(fixture), fixture))


# -- the reconciler end to end over the real SDK and the fake -------------------------



def config() -> SyncConfig:
    return SyncConfig(
        "oak",
        [
            GroupMapping("g-staff", "birch", {"Policies": "Member"}),
            GroupMapping("g-big", "birch", {"Risk": "Manager"}),
            GroupMapping("g-cycle-a", "oak", {"Policies": "Admin"}),
            GroupMapping("g-empty", "oak", {"Risk": "Member"}),
        ],
        removal=RemovalPolicy("deactivate"),
    )


async def test_the_reconciler_gets_the_same_result_from_graph_as_from_memory(fixture):
    memory_store = InMemoryUserStore()
    memory_report = await Reconciler(
        InMemoryDirectory.from_dict(fixture), memory_store, InMemoryAuditSink(), HIERARCHY
    ).run(config(), actor=SYSTEM)
    assert memory_report.ok, memory_report.errors

    with FakeGraphServer(fixture, page_cap=PAGE) as graph:
        graph.inject(Fault.throttle("2.128"), path="/groups/g-big/*", skip=1)
        graph.inject(Fault.unavailable(), path="/groups/g-staff/*", times=2)
        directory, sleep = directory_for(graph)
        graph_store = InMemoryUserStore()
        async with directory:
            graph_report = await Reconciler(directory, graph_store, InMemoryAuditSink(), HIERARCHY).run(config(), actor=SYSTEM, mode="full")
        assert graph_report.ok, graph_report.errors
        assert 2.128 in sleep.calls
        member_pages = sum(
            max(1, math.ceil(len(expected_members(fixture, g)) / PAGE)) for g in ("g-staff", "g-big", "g-cycle-a", "g-empty")
        )
        member_reads = [r for r in graph.requests if "/transitiveMembers" in r.path]
        assert len(member_reads) == member_pages + 3  # the paging minimum plus the three injected faults
        names = [r for r in graph.requests if "/transitiveMembers" not in r.path and not r.batched]
        assert len(names) == 1  # the mapped groups' names: one $batch

    assert graph_report.counts == memory_report.counts
    memory_state = await memory_store.load("oak")
    graph_state = await graph_store.load("oak")
    assert graph_state.synced_access == memory_state.synced_access
    assert {u.external_id: (u.email, u.display_name, u.active) for u in graph_state.users.values()} == {
        u.external_id: (u.email, u.display_name, u.active) for u in memory_state.users.values()
    }


async def test_both_directories_refuse_lookup_and_round_arguments_alike():
    # One check serves both (directory.protocol.lookup_ids, directory.delta.round_group_ids).
    from calm_azure_sync import ConfigError, InMemoryDirectory

    directory = InMemoryDirectory.from_dict({"users": [], "groups": [], "members": {}})
    for call in (
        lambda: directory.lookup_users("u1"),
        lambda: directory.lookup_groups([7, "g1"]),
        lambda: directory.changes(None, "g1"),
        lambda: directory.changes(None, ["g1", ""]),
        lambda: directory.changes(None, ["g1"], start="soon"),
    ):
        with pytest.raises(ConfigError):
            await call()


# -- incremental reads: check_delta --------------------------------------------------------


async def test_in_memory_and_graph_directories_pass_check_delta_with_the_same_change_log():
    from calm_azure_sync.testing.directory_conformance import FakeGraphEditor, check_delta

    fixture = conformance_fixture(big_group_size=30)
    log = await check_delta(InMemoryDirectory.from_dict(fixture), fixture)
    assert len(log) == 11 and log[0].complete and log[1].empty
    with FakeGraphServer(fixture, page_cap=7, delta_page_size=3, delta_member_slice=4, delta_replays=True) as server:
        directory, _ = directory_for(server)
        async with directory:
            assert await check_delta(directory, fixture, FakeGraphEditor(server)) == log


class _DropsUntypedRemovals(InMemoryDirectory):
    """The old members@delta bug, as a host's directory could have it: member removals never reported."""

    async def changes(self, cursor, group_ids, *, start="initial"):
        import attrs

        delta, cursor = await super().changes(cursor, group_ids, start=start)
        groups = tuple(attrs.evolve(g, removed_users=frozenset()) for g in delta.groups)
        return attrs.evolve(delta, groups=groups), cursor


class _ForgetsRestoredEmptyGroups(InMemoryDirectory):
    """The old InMemoryDirectory bug: a group back with no members is not listed again."""

    async def changes(self, cursor, group_ids, *, start="initial"):
        import attrs

        delta, cursor = await super().changes(cursor, group_ids, start=start)
        groups = tuple(g for g in delta.groups if g.changed or g.complete)
        return attrs.evolve(delta, groups=groups), cursor


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        (_DropsUntypedRemovals, "differs from a full read"),
        (_ForgetsRestoredEmptyGroups, "left it deleted"),
    ],
)
async def test_check_delta_catches_a_directory_whose_deltas_disagree_with_its_full_reads(kind, says):
    from calm_azure_sync.testing.directory_conformance import check_delta

    fixture = conformance_fixture(big_group_size=10)
    with pytest.raises(AssertionError, match=says):
        await check_delta(kind.from_dict(fixture), fixture)
