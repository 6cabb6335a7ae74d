"""Reconciler.explain: why one person has the access they have, read for that person only."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calm_azure_sync import (
    ConfigError,
    DirectoryGroup,
    DirectoryUser,
    ExclusionPolicy,
    Explanation,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    PersonLookup,
    Reconciler,
    RemovalPolicy,
    Role,
    Site,
    SyncConfig,
    TrustHierarchy,
)
from calm_azure_sync.review.explain import nesting_paths
from calm_azure_sync.testing.fake_graph import FakeGraphServer

from .graph_helpers import directory_for
from .helpers import SYSTEM as ACTOR

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)

CAROL = "00000000-0000-4000-8000-0000000000c1"
DAN = "00000000-0000-4000-8000-0000000000d1"
GUEST = "00000000-0000-4000-8000-0000000000e1"
SCANNER = "00000000-0000-4000-8000-0000000000f1"
ERIN = "00000000-0000-4000-8000-0000000000a9"
ALL_STAFF = "10000000-0000-4000-8000-0000000000a1"
TEACHERS = "10000000-0000-4000-8000-0000000000a2"
SLT = "10000000-0000-4000-8000-0000000000a3"
ASH_STAFF = "10000000-0000-4000-8000-0000000000b1"

HIERARCHY = TrustHierarchy([
    Site("oak", "Oak Trust"),
    Site("birch", "Birch High", "oak"),
    Site("ash", "Ash Primary", "oak"),
    Site("elm-trust", "Elm Trust"),
    Site("elm", "Elm Academy", "elm-trust"),
])


def fixture(extra_users: int = 0) -> dict[str, Any]:
    users = [
        {"id": CAROL, "displayName": "Carol Singh", "mail": "carol@birch.sch.uk"},
        {"id": DAN, "displayName": "Dan Poole", "mail": "dan@birch.sch.uk", "accountEnabled": False},
        {"id": GUEST, "displayName": "Gail Guest", "mail": "gail@partner.org", "userType": "Guest"},
        {"id": SCANNER, "displayName": "Scanner", "mail": "scanner@birch.sch.uk"},
        {"id": ERIN, "displayName": "Erin Noemail", "userPrincipalName": "erin.noemail"},
    ]
    filler = [
        {"id": f"20000000-0000-4000-8000-{index:012d}", "displayName": f"Staff {index}", "mail": f"s{index}@birch.sch.uk"}
        for index in range(extra_users)
    ]
    return {
        "users": users + filler,
        "groups": [
            {"id": ALL_STAFF, "displayName": "Birch All Staff"},
            {"id": TEACHERS, "displayName": "Birch Teachers"},
            {"id": SLT, "displayName": "Birch SLT"},
            {"id": ASH_STAFF, "displayName": "Ash All Staff"},
        ],
        "members": {
            ALL_STAFF: [TEACHERS, SCANNER, ERIN, *(user["id"] for user in filler)],
            TEACHERS: [CAROL, DAN, GUEST],
            SLT: [CAROL],
            ASH_STAFF: [],
        },
    }


def config(**kwargs: Any) -> SyncConfig:
    return SyncConfig(
        "oak",
        [
            GroupMapping(ALL_STAFF, "birch", {"Risk": "Member", "Policies": "Member"}),
            GroupMapping(SLT, "birch", {"Risk": "Manager"}),
            GroupMapping(ASH_STAFF, "ash", {"Risk": "Member"}),
        ],
        exclusions=ExclusionPolicy(["scanner@*"]),
        **kwargs,
    )


def reconciler(directory: Any = None, store: InMemoryUserStore | None = None) -> Reconciler:
    return Reconciler(
        directory if directory is not None else InMemoryDirectory.from_dict(fixture()),
        store if store is not None else InMemoryUserStore(),
        InMemoryAuditSink(),
        HIERARCHY,
    )


def no_ids(text: str) -> None:
    assert not GUID.search(text), text


async def test_carol_gets_manager_on_risk_at_birch_through_birch_slt() -> None:
    explanation = await reconciler().explain(config(), "carol@birch.sch.uk", actor=ACTOR)
    assert isinstance(explanation, Explanation)
    assert explanation.status == "found"
    assert explanation.external_id == CAROL
    groups = {group.name: group.path for group in explanation.groups}
    assert groups == {"Birch All Staff": ("Birch All Staff", "Birch Teachers"), "Birch SLT": ("Birch SLT",)}
    risk = next(access for access in explanation.access if access.module == "Risk")
    assert risk.role is Role.MANAGER and risk.site_name == "Birch High"
    assert [(source.group_name, source.role, source.winner) for source in risk.sources] == [
        ("Birch SLT", Role.MANAGER, True),
        ("Birch All Staff", Role.MEMBER, False),
    ]
    text = str(explanation)
    assert "Carol Singh gets Manager on Risk at Birch High because they are in Birch SLT" in text
    assert "Birch All Staff gives Member" in text
    assert "through Birch All Staff > Birch Teachers" in text
    assert "The next run would create their CalmCompliance account" in text
    no_ids(text)
    no_ids(explanation._repr_html_())
    data = explanation.to_dict()
    assert data["external_id"] == CAROL
    assert data["groups"][0]["path_ids"] == [ALL_STAFF, TEACHERS]
    assert {source["group_id"] for source in data["access"][1]["sources"]} == {ALL_STAFF, SLT}


async def test_the_same_person_by_email_object_id_or_store_user_id() -> None:
    store = InMemoryUserStore()
    sync = reconciler(store=store)
    await sync.run(config(), actor=ACTOR)
    store_id = next(user.user_id for user in await store.users() if user.external_id == CAROL)
    answers = [await sync.explain(config(), who, actor=ACTOR) for who in ("CAROL@birch.sch.uk", CAROL, store_id)]
    assert {answer.status for answer in answers} == {"found"}
    assert {answer.store_user_id for answer in answers} == {store_id}
    assert len({(answer.groups, answer.access, answer.planned) for answer in answers}) == 1
    assert answers[0].planned == ()
    assert "The next run changes nothing for them." in str(answers[0])


@pytest.mark.parametrize(
    ("who", "status", "reason"),
    [
        ("dan@birch.sch.uk", "disabled", "account is disabled in Azure"),
        ("gail@partner.org", "guest", "guest account"),
        ("scanner@birch.sch.uk", "excluded", "email matches exclusion pattern 'scanner@*'"),
        (ERIN, "skipped", "no usable email"),
        ("nobody@birch.sch.uk", "not_found", "no user in the directory has this email"),
    ],
)
async def test_why_someone_did_not_come_across(who: str, status: str, reason: str) -> None:
    explanation = await reconciler().explain(config(), who, actor=ACTOR)
    assert explanation.status == status
    assert reason in (explanation.reason or "")
    assert explanation.planned == ()
    text = str(explanation)
    assert reason in text
    no_ids(text)


async def test_a_person_in_no_mapped_group_is_told_so() -> None:
    data = fixture()
    data["members"][TEACHERS] = [DAN, GUEST]
    data["members"][SLT] = []
    explanation = await reconciler(InMemoryDirectory.from_dict(data)).explain(config(), CAROL, actor=ACTOR)
    assert explanation.status == "found"
    assert explanation.groups == () and explanation.access == ()
    assert "is in no mapped group" in str(explanation)


async def test_manual_grants_and_other_trusts_access_come_from_the_store() -> None:
    store = InMemoryUserStore()
    sync = reconciler(store=store)
    await sync.run(config(), actor=ACTOR)
    carol = next(user.user_id for user in await store.users() if user.external_id == CAROL)
    await store.grant(carol, "ash", "Policies", "Admin")
    # Another trust's sync gave Carol access at Elm Academy.
    elm = Reconciler(
        InMemoryDirectory.from_dict(fixture()), store, InMemoryAuditSink(), HIERARCHY
    )
    await elm.run(SyncConfig("elm-trust", [GroupMapping(SLT, "elm", {"Risk": "Member"})]), actor=ACTOR)
    explanation = await sync.explain(config(), "carol@birch.sch.uk", actor=ACTOR)
    assert [(g.site_name, g.module, g.role) for g in explanation.manual_grants] == [
        ("Ash Primary", "Policies", Role.ADMIN)
    ]
    assert [(g.site_name, g.trust_name, g.role) for g in explanation.other_trusts] == [
        ("Elm Academy", "Elm Trust", Role.MEMBER)
    ]
    text = str(explanation)
    assert "Granted by hand (the sync never changes these): Admin on Policies at Ash Primary." in text
    assert "Member on Risk at Elm Academy (from Elm Trust)" in text


async def test_the_next_runs_changes_for_them_are_the_plans() -> None:
    store = InMemoryUserStore()
    data = fixture()
    data["members"][SLT] = [CAROL, DAN, GUEST, SCANNER]  # losing one of four is no sharp shrink
    directory = InMemoryDirectory.from_dict(data)
    sync = reconciler(directory, store)
    await sync.run(config(), actor=ACTOR)
    directory.remove_member(SLT, CAROL)
    explanation = await sync.explain(config(), "carol@birch.sch.uk", actor=ACTOR)
    plan = await sync.plan(config(), actor=ACTOR)
    theirs = tuple(change for change in plan.changes if change.external_id == CAROL)
    assert explanation.planned == theirs
    assert "change Risk at Birch High from Manager to Member" in str(explanation)
    assert "judged over everyone" in str(explanation)  # a removal may still meet a tenant-wide guard


async def test_a_pending_hold_holding_their_removal_is_named() -> None:
    data = fixture(extra_users=12)
    directory = InMemoryDirectory.from_dict(data)
    store = InMemoryUserStore()
    sync = reconciler(directory, store)
    await sync.run(config(), actor=ACTOR)
    directory.members[ALL_STAFF] = (TEACHERS,)  # the filler staff all leave at once: a mass removal
    report = await sync.run(config(), actor=ACTOR)
    assert report.hold_id is not None
    leaver = "s3@birch.sch.uk"
    explanation = await sync.explain(config(), leaver, actor=ACTOR)
    assert explanation.hold_id == report.hold_id
    assert {type(change).__name__ for change in explanation.held} == {"Unassign", "RemoveGroupMember"}
    assert explanation.planned == ()
    text = str(explanation)
    assert f"held for review in hold {report.hold_id}" in text
    assert "remove Member on Risk at Birch High" in text
    no_ids(text)


async def test_a_stale_mapping_holds_what_it_could_explain() -> None:
    store = InMemoryUserStore()
    directory = InMemoryDirectory.from_dict(fixture())
    sync = reconciler(directory, store)
    await sync.run(config(), actor=ACTOR)
    directory.delete_group(SLT)
    explanation = await sync.explain(config(), CAROL, actor=ACTOR)
    assert SLT in explanation.unread_groups
    assert explanation.hold_id is None and explanation.held
    assert "held until every mapped group can be read completely" in str(explanation)


class PlainDirectory:
    """Only the Directory protocol: no one-person reads."""

    def __init__(self, inner: InMemoryDirectory) -> None:
        self.inner = inner

    async def list_groups(self) -> Sequence[DirectoryGroup]:
        return await self.inner.list_groups()

    async def group_members(self, group_id: str) -> Sequence[DirectoryUser]:
        return await self.inner.group_members(group_id)


async def test_a_directory_without_person_lookup_is_read_by_its_mapped_groups() -> None:
    plain = PlainDirectory(InMemoryDirectory.from_dict(fixture()))
    assert not isinstance(plain, PersonLookup)
    full = await reconciler().explain(config(), "carol@birch.sch.uk", actor=ACTOR)
    fallback = await reconciler(plain).explain(config(), "carol@birch.sch.uk", actor=ACTOR)
    assert fallback.directory_read == "mapped_groups" and full.directory_read == "person"
    def roles(explanation: Explanation) -> list[tuple[str, str, Role, list[tuple[str, bool]]]]:
        return [
            (a.site_id, a.module, a.role, [(source.group_id, source.winner) for source in a.sources])
            for a in explanation.access
        ]

    assert roles(fallback) == roles(full)
    assert fallback.planned == full.planned
    assert [group.path for group in fallback.groups] == [(ALL_STAFF,), (SLT,)]  # no names: no lookup_groups
    assert all(not group.complete for group in fallback.groups)


@pytest.mark.parametrize("who", ["", "   ", None, 7])
async def test_who_must_name_someone(who: Any) -> None:
    with pytest.raises(ConfigError, match="who:"):
        await reconciler().explain(config(), who, actor=ACTOR)


async def test_explain_writes_nothing_and_logs_nothing() -> None:
    store = InMemoryUserStore()
    sink = InMemoryAuditSink()
    sync = Reconciler(InMemoryDirectory.from_dict(fixture()), store, sink, HIERARCHY)
    await sync.explain(config(), "carol@birch.sch.uk", actor=ACTOR)
    assert sink.events == [] and await store.users() == []


# --- Graph: one person's requests, whatever the tenant's size ---------------------------------------------


async def _explain_over_graph(extra_users: int) -> tuple[Explanation, list[str]]:
    with FakeGraphServer(fixture(extra_users), page_cap=100) as server:
        directory, _ = directory_for(server)
        async with directory:
            sync = reconciler(directory)
            explanation = await sync.explain(config(), "carol@birch.sch.uk", actor=ACTOR)
            by_id = await sync.explain(config(), CAROL, actor=ACTOR)
        assert by_id.access == explanation.access
        return explanation, [request.path for request in server.requests]


@pytest.mark.wire
async def test_explain_over_graph_costs_the_same_for_50_or_2000_users() -> None:
    small, small_requests = await _explain_over_graph(50)
    large, large_requests = await _explain_over_graph(2000)
    assert small.access == large.access and small.groups == large.groups
    assert [group.path for group in large.groups] == [("Birch All Staff", "Birch Teachers"), ("Birch SLT",)]
    # Two explains (by email, by object id), each: the person, the mapped groups' names ($batch of 3),
    # their groups, their direct groups, the parents of their direct groups: 9 requests.
    assert len(small_requests) == len(large_requests) == 18, large_requests
    # Never a whole group's members or the whole user list.
    assert not any("members" in path.lower() and path.startswith("/groups") for path in large_requests)
    assert "/users" in large_requests  # the email lookup, filtered
    assert any(path.endswith("/transitiveMemberOf/microsoft.graph.group") for path in large_requests)


@pytest.mark.wire
async def test_graph_person_lookup_reads_every_page() -> None:
    data = fixture()
    many = [{"id": f"30000000-0000-4000-8000-{index:012d}", "displayName": f"Club {index}"} for index in range(7)]
    data["groups"] += many
    for group in many:
        data["members"][group["id"]] = [CAROL]
    with FakeGraphServer(data, page_cap=2) as server:
        directory, _ = directory_for(server)
        async with directory:
            groups = await directory.user_groups(CAROL, transitive=True)
            direct = await directory.user_groups(CAROL, transitive=False)
            parents = await directory.group_parents(TEACHERS)
            found = await directory.users_by_email("Carol@Birch.sch.uk")
    assert {group.id for group in groups} == {TEACHERS, SLT, ALL_STAFF, *(group["id"] for group in many)}
    assert {group.id for group in direct} == {TEACHERS, SLT, *(group["id"] for group in many)}
    assert [group.display_name for group in parents] == ["Birch All Staff"]
    assert [user.id for user in found] == [CAROL]


# --- nesting paths, as a property -------------------------------------------------------------------------


def test_nesting_paths_are_shortest_chains() -> None:
    parents = {"t": ["all"], "s": ["all", "x"], "all": ["top"]}
    assert nesting_paths(["t", "s"], parents, ["top", "x", "nowhere"]) == {
        "top": ("top", "all", "s"),
        "x": ("x", "s"),
    }


@st.composite
def nested_tenants(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    group_count = draw(st.integers(2, 6))
    groups = [f"g{index}" for index in range(group_count)]
    users = ["u0", "u1"]
    members: dict[str, list[str]] = {group: [] for group in groups}
    for group in groups:
        members[group] = draw(st.lists(st.sampled_from(users + groups), unique=True, max_size=4))
    mapped = draw(st.lists(st.sampled_from(groups), unique=True, min_size=1, max_size=group_count))
    data = {
        "users": [{"id": user, "displayName": user.upper(), "mail": f"{user}@oak.org"} for user in users],
        "groups": [{"id": group, "displayName": f"Group {group}"} for group in groups],
        "members": members,
    }
    return data, mapped


def _is_path(path: Sequence[str], members: Mapping[str, Iterable[str]], user: str) -> bool:
    return user in members[path[-1]] and all(path[i + 1] in members[path[i]] for i in range(len(path) - 1))


@given(nested_tenants())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
async def test_every_mapped_group_with_the_person_is_explained_with_a_real_path(
    tenant: tuple[dict[str, Any], list[str]],
) -> None:
    data, mapped = tenant
    directory = InMemoryDirectory.from_dict(data)
    roles = ["Member", "Manager", "Admin"]
    cfg = SyncConfig(
        "oak",
        [GroupMapping(group, "birch", {"Risk": roles[index % 3]}) for index, group in enumerate(mapped)],
        removal=RemovalPolicy(),
    )
    for user in ("u0", "u1"):
        explanation = await reconciler(directory).explain(cfg, user, actor=ACTOR)
        expected = {group for group in mapped if any(u.id == user for u in await directory.group_members(group))}
        assert {group.group_id for group in explanation.groups} == expected
        for group in explanation.groups:
            assert group.complete and group.path_ids[0] == group.group_id
            assert _is_path(group.path_ids, directory.members, user)
        assert {(a.site_id, a.module): a.role for a in explanation.access} == cfg.mappings.access_for(expected)


@given(nested_tenants(), st.sampled_from(["u0", "u1"]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
async def test_what_explain_says_is_what_the_run_did(tenant: tuple[dict[str, Any], list[str]], who: str) -> None:
    data, mapped = tenant
    roles = ["Member", "Manager", "Admin"]
    cfg = SyncConfig("oak", [GroupMapping(group, "birch", {"Risk": roles[index % 3]}) for index, group in enumerate(mapped)])
    store = InMemoryUserStore()
    sync = reconciler(InMemoryDirectory.from_dict(data), store)
    before = await sync.explain(cfg, who, actor=ACTOR)
    await sync.run(cfg, actor=ACTOR)
    after = await sync.explain(cfg, who, actor=ACTOR)
    granted = (await store.load("oak")).synced_access.get(who, {})
    assert {(a.site_id, a.module): a.role for a in after.access} == dict(granted)
    assert {(g.site_id, g.module): g.role for g in after.synced} == dict(granted)
    assert after.planned == ()  # the run did what explain said it would
    assert bool(before.planned) == bool(granted)
