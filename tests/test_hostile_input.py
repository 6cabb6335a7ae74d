"""Hostile and odd input: Graph JSON through the real SDK, addresses, configuration, consent callbacks.

Whatever Graph sends, a run never crashes, never removes access it could not
prove gone, never merges two different addresses and never duplicates a
user; whatever a host or a browser hands in, the configuration and consent
readers raise their own errors and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calm_azure_sync import (
    Actor,
    AuditKind,
    ConfigError,
    ConsentError,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    JsonlAuditSink,
    Reconciler,
    Site,
    SqliteAuditSink,
    SqliteUserStore,
    SyncConfig,
    TrustHierarchy,
    parse_consent_callback,
)
from calm_azure_sync.directory.graph import GraphDirectory
from calm_azure_sync.model import email_key
from calm_azure_sync.testing.fake_graph import FakeGraphServer, Fault

from .conftest import budget, scaled
from .graph_helpers import FAST_RETRY, FakeCredential, RecordingSleep, user
from .helpers import OAK_TRUST_BIRCH as HIERARCHY
from .helpers import SYSTEM, expected_access, synced_access_of

CONFIG = SyncConfig(
    "oak",
    [GroupMapping("g-base", "birch", {"Risk": "Member"}), GroupMapping("g-hostile", "birch", {"Policies": "Manager"})],
)
ADMIN = Actor("head-of-it", {"oak"})
BASE_USERS = [user(f"base{i}") for i in range(5)]
FUZZ = budget("CALM_FUZZ", 25, 400)
FUZZ_SOAK = budget("CALM_FUZZ", 400, 400)


def directory_over(server: FakeGraphServer) -> GraphDirectory:
    return GraphDirectory.from_credential(
        FakeCredential(), base_url=server.base_url, retry=FAST_RETRY, sleep=RecordingSleep()
    )


def fixture(hostile: list[dict[str, Any]], members: list[str] | None = None) -> dict[str, Any]:
    return {
        "users": [*BASE_USERS, *hostile],
        "groups": [{"id": "g-base"}, {"id": "g-hostile"}],
        "members": {"g-base": [u["id"] for u in BASE_USERS],
                    "g-hostile": members if members is not None else [u["id"] for u in hostile]},
    }


def base_access() -> dict:
    return expected_access(InMemoryDirectory.from_dict(fixture([])), CONFIG)


# -- Graph JSON, property-based through the wire ---------------------------------------------

EMAILS = st.sampled_from(
    [
        "ann@school.org", "Ann@School.org", " ann@school.org ", "ANN@SCHOOL.ORG", "ann smith@school.org",
        "\u0430nn@school.org",  # Cyrillic a
        "zo\u00eb@sch\u00fcle.de", "ZO\u00cb@SCH\u00dcLE.DE", "stra\u00dfe@school.org", "strasse@school.org",
        "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a", "no-at-sign", "", "@school.org", "ann@", "a@b@c.org",
        "x" * 300 + "@school.org", "tab\t@school.org", "nul\x00@school.org",
    ]
)
WRONG = st.one_of(st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.booleans())
TEXT = st.one_of(st.none(), st.text(max_size=20), st.just("\U0001f600" * 50), st.just("y" * 100_000))
MISSING = object()


def field(valid: st.SearchStrategy[Any], *, wrong: bool) -> st.SearchStrategy[Any]:
    choices = [st.just(MISSING), st.none(), valid]
    if wrong:
        choices.append(WRONG)
    return st.one_of(*choices)


@st.composite
def graph_users(draw: st.DrawFn, wrong: bool) -> list[dict[str, Any]]:
    ids = draw(st.lists(st.sampled_from([f"h{i}" for i in range(6)]), min_size=1, max_size=6, unique=True))
    users = []
    for user_id in ids:
        raw = {
            "id": user_id,
            "displayName": draw(field(TEXT, wrong=wrong)),
            "mail": draw(field(EMAILS, wrong=wrong)),
            "userPrincipalName": draw(field(st.one_of(EMAILS, st.just(f"{user_id}_x.org#EXT#@oak.onmicrosoft.com")), wrong=wrong)),
            "givenName": draw(field(TEXT, wrong=wrong)),
            "surname": draw(field(TEXT, wrong=wrong)),
            "accountEnabled": draw(field(st.booleans(), wrong=wrong)),
            "userType": draw(field(st.sampled_from(["Member", "Guest", "member", "", "Alien"]), wrong=wrong)),
            "assignedLicenses": draw(field(st.lists(st.just({"skuId": "s"}), max_size=2), wrong=wrong)),
            "onPremisesSyncEnabled": draw(field(st.booleans(), wrong=wrong)),
            "creationType": draw(field(st.sampled_from(["Invitation", "LocalAccount"]), wrong=wrong)),
            draw(st.sampled_from(["extra", "@odata.etag", "manager", "mail@odata"])): draw(WRONG),
        }
        users.append({key: value for key, value in raw.items() if value is not MISSING})
    return users


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeGraphServer]:
    with FakeGraphServer(page_cap=3) as running:
        yield running


async def _hostile_run(server: FakeGraphServer, hostile: list[dict[str, Any]], figures: Any) -> None:
    with figures.case("Input: Graph JSON with nulls, missing, extra fields, wrong types, huge strings") as case:
        server.load(fixture([]))
        store, audit = InMemoryUserStore(), InMemoryAuditSink()
        async with directory_over(server) as directory:
            reconciler = Reconciler(directory, store, audit, HIERARCHY)
            assert (await reconciler.run(CONFIG, actor=SYSTEM, mode="full")).ok
            before = synced_access_of(await store.load("oak"))
            server.load(fixture(hostile))
            report = await reconciler.run(CONFIG, actor=SYSTEM, mode="full")  # never raises
            state = await store.load("oak")
            after = synced_access_of(state)
            case.wrongful_removals = sum(
                1 for u, access in before.items() for key, role in access.items() if after.get(u, {}).get(key) != role
            )
            assert case.wrongful_removals == 0
            keys = [email_key(u.email) for u in state.users.values()]
            case.data_lost = len(keys) - len(set(keys))
            assert len(keys) == len(set(keys)), "two store users share an address"
            for stored in state.users.values():
                assert "@" in stored.email and not any(c.isspace() for c in stored.email.strip())
            if report.plan is not None and report.plan.unreadable_groups:
                assert set(report.plan.unreadable_groups) == {"g-hostile"}
                assert any(e.kind is AuditKind.ERROR and e.subject == "g-hostile" for e in audit.events)
            else:
                assert report.ok, report.errors
                assert (await reconciler.plan(CONFIG, actor=SYSTEM)).changes == ()  # idempotent on odd data too


SETTINGS: dict[str, Any] = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


@settings(max_examples=FUZZ, **SETTINGS)
@given(hostile=graph_users(wrong=False))
async def test_graph_users_with_nulls_missing_and_extra_fields_never_break_a_run(shared_server, figures, hostile):
    await _hostile_run(shared_server, hostile, figures)


@settings(max_examples=FUZZ, **SETTINGS)
@given(hostile=graph_users(wrong=True))
async def test_graph_users_with_wrong_types_make_the_group_unreadable_never_a_crash(shared_server, figures, hostile):
    await _hostile_run(shared_server, hostile, figures)


@pytest.mark.slow
@settings(max_examples=FUZZ_SOAK, **SETTINGS)
@given(hostile=graph_users(wrong=True))
async def test_graph_users_fuzz_soak(shared_server, figures, hostile):
    await _hostile_run(shared_server, hostile, figures)


# -- odd shapes: big groups, cycles, duplicates, foreign next links ----------------------------


@pytest.mark.parametrize("size", scaled("CALM_BIG_GROUP", 5_000, 100_000))
async def test_a_huge_group_is_read_whole_through_every_page(figures: Any, size: int) -> None:
    users = [{"id": f"m{i:06d}", "mail": f"m{i}@school.org", "displayName": f"M {i}"} for i in range(size)]
    with FakeGraphServer(fixture(users)) as server, figures.case("Input: 100k-member groups") as case:
        async with directory_over(server) as directory:
            store = InMemoryUserStore()
            report = await Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM, mode="full")
            assert report.ok, report.errors
            state = await store.load("oak")
            expected = expected_access(InMemoryDirectory.from_dict(fixture(users)), CONFIG)
            case.data_lost = len(expected) - len(synced_access_of(state))
            assert synced_access_of(state) == expected
            pages = [r for r in server.requests if "g-hostile/transitiveMembers" in r.path]
            assert len(pages) == -(-size // 999)


async def test_membership_cycles_terminate_and_give_each_user_once(figures: Any) -> None:
    data = {
        "users": [user(f"c{i}") for i in range(6)],
        "groups": [{"id": "g-base"}, {"id": "g-hostile"}, {"id": "g-x"}],
        "members": {"g-base": ["c0", "g-hostile"], "g-hostile": ["c1", "g-x", "c0"], "g-x": ["c2", "g-base", "g-hostile"]},
    }
    with FakeGraphServer(data, page_cap=2) as server, figures.case("Input: membership cycles") as case:
        async with directory_over(server) as directory:
            store = InMemoryUserStore()
            report = await Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM, mode="full")
            assert report.ok and report.counts["create_user"] == 3
            expected = expected_access(InMemoryDirectory.from_dict(data), CONFIG)
            access = synced_access_of(await store.load("oak"))
            case.data_lost = int(access != expected)
            assert access == expected
    # The in-memory directory resolves the same cycle the same way.
    in_memory = InMemoryDirectory.from_dict(data)
    assert sorted(u.id for u in await in_memory.group_members("g-x")) == ["c0", "c1", "c2"]


async def test_duplicate_ids_across_pages_are_one_user(figures: Any) -> None:
    users = [user(f"d{i}") for i in range(7)]

    def repeat_earlier(body: dict[str, Any]) -> dict[str, Any]:
        # The same object ids again, one with another address: the first copy wins.
        body["value"] = [*body["value"], {**users[0], "mail": "other@school.org"}, users[1]]
        return body

    with FakeGraphServer(fixture(users), page_cap=3) as server, figures.case("Input: duplicate ids across pages") as case:
        server.inject(Fault.rewrite(repeat_earlier), path="/groups/g-hostile/*", times=5, skip=1)
        async with directory_over(server) as directory:
            store = InMemoryUserStore()
            report = await Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM, mode="full")
            assert report.ok, report.errors
            state = await store.load("oak")
            external = [u.external_id for u in state.users.values()]
            case.data_lost = len(external) - len(set(external))
            assert len(external) == len(set(external)) == 12
            assert {u.email for u in state.users.values() if u.external_id == "d0"} == {"d0@school.example"}


@pytest.mark.parametrize("where", ["other-port", "localhost-alias", "https-graph", "userinfo"])
async def test_a_next_link_to_another_host_is_refused_and_gets_no_token(figures: Any, where: str) -> None:
    users = [user(f"n{i}") for i in range(7)]
    with FakeGraphServer(fixture(users), page_cap=3) as server, FakeGraphServer(fixture(users)) as evil:
        port = server.port
        target = {
            "other-port": evil.base_url,
            "localhost-alias": f"http://localhost:{port}/v1.0",
            "https-graph": "https://graph.microsoft.com/v1.0",
            "userinfo": f"http://me:pw@127.0.0.1:{port}/v1.0",
        }[where]

        def redirect(body: dict[str, Any]) -> dict[str, Any]:
            link = body.get("@odata.nextLink")
            if link:
                body["@odata.nextLink"] = target + link.split("/v1.0", 1)[1]
            return body

        with figures.case("Input: nextLink to another host") as case:
            async with directory_over(server) as directory:
                store, audit = InMemoryUserStore(), InMemoryAuditSink()
                reconciler = Reconciler(directory, store, audit, HIERARCHY)
                assert (await reconciler.run(CONFIG, actor=SYSTEM, mode="full")).ok
                before = synced_access_of(await store.load("oak"))
                server.remove_member("g-hostile", "n6")
                server.inject(Fault.rewrite(redirect), path="/groups/g-hostile/*", times=10)
                report = await reconciler.run(CONFIG, actor=SYSTEM, mode="full")
                after = synced_access_of(await store.load("oak"))
                case.wrongful_removals = sum(len(a) for u, a in before.items() if after.get(u) != a)
                assert case.wrongful_removals == 0
                assert not report.ok and any("refusing a next link" in e for e in report.errors)
                assert evil.requests == []  # the token never went there
                assert report.hold_reason == "partial_read"


# -- addresses --------------------------------------------------------------------------------


async def _import(users: list[dict[str, Any]], invited: tuple[str, ...] = ()) -> tuple[Any, InMemoryUserStore]:
    store = InMemoryUserStore()
    for email in invited:
        await store.add_user(email, "Invited")
    directory = InMemoryDirectory.from_dict(fixture(users))
    report = await Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM, mode="full")
    return report, store


ADDRESS_CASES = [
    # (Azure mails, invited store emails, expected store emails after the import)
    pytest.param(["  Ann.Smith@School.ORG "], ["ann.smith@school.org"], {"ann.smith@school.org"}, id="space-and-case-link"),
    pytest.param(["ann smith@school.org"], [], set(), id="inner-space-is-no-address"),
    pytest.param(["\u0430nn@school.org"], ["ann@school.org"], {"ann@school.org", "\u0430nn@school.org"},
                 id="cyrillic-a-is-another-address"),
    pytest.param(["ann@school.org", "\u0430nn@school.org"], [], {"ann@school.org", "\u0430nn@school.org"},
                 id="cyrillic-and-latin-are-two-users"),
    pytest.param(["stra\u00dfe@school.org", "strasse@school.org"], [], {"stra\u00dfe@school.org", "strasse@school.org"},
                 id="eszett-is-not-ss"),
    pytest.param(["zo\u00eb@sch\u00fcle.de"], ["ZO\u00cb@SCH\u00dcLE.DE"], {"ZO\u00cb@SCH\u00dcLE.DE"}, id="idn-case-link"),
    pytest.param(["\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a"], [], {"\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a"}, id="cjk-address"),
    pytest.param(["ANN@school.org", "ann@SCHOOL.org"], [], set(), id="same-address-twice-in-azure-is-skipped"),
    pytest.param(["\u0131nfo@school.org", "info@school.org"], [], {"\u0131nfo@school.org", "info@school.org"},
                 id="dotless-i-is-another-address"),
]


@pytest.mark.parametrize(("mails", "invited", "emails"), ADDRESS_CASES)
async def test_addresses_match_by_case_only_never_by_look_alike(figures: Any, mails, invited, emails) -> None:
    users = [{"id": f"a{i}", "mail": mail, "displayName": f"A {i}"} for i, mail in enumerate(mails)]
    with figures.case("Input: emails with spaces, mixed case, internationalised, look-alikes") as case:
        _report, store = await _import(users, tuple(invited))
        stored = {u.email for u in (await store.load("oak")).users.values() if not u.email.startswith("base")}
        keys = [email_key(e) for e in stored]
        case.data_lost = len(keys) - len(set(keys))
        assert {email_key(e) for e in stored} == {email_key(e) for e in emails} and len(stored) == len(emails)
        invited_keys = {email_key(e) for e in invited}
        linked = [u for u in (await store.load("oak")).users.values() if email_key(u.email) in invited_keys]
        for invited_user in linked:
            # an invited user is adopted only by the exact same address (any case), never a look-alike
            mine = [m for m in mails if email_key(m) == email_key(invited_user.email)]
            assert (invited_user.external_id is not None) == bool(mine)


async def test_a_greek_address_invited_in_capitals_is_linked_not_duplicated() -> None:
    # Whole-string lower() gives the final capital sigma its final form, as Azure stores it;
    # letter-by-letter lowering gave the medial form, and a second Odysseas was created.
    users = [{"id": "odysseas", "mail": "\u03bf\u03b4\u03c5\u03c3\u03c3\u03b5\u03b1\u03c2@x.gr", "displayName": "Odysseas"}]
    report, store = await _import(users, ("\u039f\u0394\u03a5\u03a3\u03a3\u0395\u0391\u03a3@x.gr",))
    assert report.ok, report.errors
    greek = [u for u in (await store.load("oak")).users.values() if u.email.endswith("@x.gr")]
    assert [(email_key(u.email), u.external_id) for u in greek] == [(email_key(users[0]["mail"]), "odysseas")]


async def test_a_kelvin_sign_address_is_not_the_latin_k_address() -> None:
    users = [{"id": "intruder", "mail": "\u212aate@school.org", "displayName": "Not Kate"}]
    _report, store = await _import(users, ("kate@school.org",))
    kate = next(u for u in (await store.load("oak")).users.values() if u.email == "kate@school.org")
    assert kate.external_id is None  # the invited Kate was not taken over by the look-alike
    assert email_key("\u212aate@school.org") != email_key("kate@school.org")


async def test_a_lone_surrogate_from_graph_costs_one_odd_name_not_the_batch(tmp_path: Path) -> None:
    # Fifty ordinary staff and one display name ending in half an emoji: "\ud83d" is a valid JSON
    # escape Graph can send. Before: SQLite created 0 of 51 users and both file sinks refused the events.
    hostile = [user("zoe", displayName="Zo\ud83d", givenName="Zo\udc00"), *(user(f"staff{i}") for i in range(45))]
    jsonl = JsonlAuditSink(tmp_path / "log.jsonl")
    stores_and_sinks = [
        (SqliteUserStore(tmp_path / "a.sqlite"), SqliteAuditSink(tmp_path / "log.sqlite")),
        (SqliteUserStore(tmp_path / "b.sqlite"), jsonl),
        (InMemoryUserStore(), InMemoryAuditSink()),
    ]
    try:
        with FakeGraphServer(fixture(hostile), page_cap=7) as server:
            for store, sink in stores_and_sinks:
                async with directory_over(server) as directory:
                    report = await Reconciler(directory, store, sink, HIERARCHY).run(CONFIG, actor=ADMIN)
                assert report.ok, report.errors
                users = (await store.load("oak")).users.values()
                assert len(users) == 51
                zoe = next(u for u in users if u.external_id == "zoe")
                assert (zoe.display_name, zoe.given_name) == ("Zo\ufffd", "Zo\ufffd")
        sqlite_sink = stores_and_sinks[0][1]
        assert len(await sqlite_sink.query("oak", kinds=[AuditKind.USER_CREATED])) == 51  # type: ignore[attr-defined]
        assert [e.kind for e in jsonl.read()].count(AuditKind.USER_CREATED) == 51
    finally:
        for store, sink in stores_and_sinks:
            for closable in (store, sink):
                if hasattr(closable, "close"):
                    closable.close()


# -- public value constructors: junk in, ConfigError out ------------------------------------

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6) | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    | st.frozensets(st.text(max_size=3), max_size=2),
    max_leaves=6,
)


def _constructors() -> dict[str, tuple[Any, int, int]]:
    from calm_azure_sync import ExclusionPolicy, MappingPolicy, RemovalPolicy

    # Each public value's constructor, and how many positional arguments it requires and takes.
    return {
        "Site": (Site, 1, 3), "TrustHierarchy": (TrustHierarchy, 1, 1), "Actor": (Actor, 1, 2),
        "Actor.system": (Actor.system, 1, 1), "GroupMapping": (GroupMapping, 3, 3),
        "GroupMapping.from_dict": (GroupMapping.from_dict, 1, 1), "MappingPolicy": (MappingPolicy, 0, 1),
        "ExclusionPolicy": (ExclusionPolicy, 0, 2), "RemovalPolicy": (RemovalPolicy, 0, 5),
        "SyncConfig": (SyncConfig, 2, 7),
    }


@settings(max_examples=FUZZ * 8, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_constructors())), st.data())
def test_every_public_value_refuses_junk_with_config_error_only(kind: str, data: st.DataObject) -> None:
    build, required, takes = _constructors()[kind]
    args = data.draw(st.lists(JUNK, min_size=required, max_size=takes))
    with contextlib.suppress(ConfigError):
        build(*args)


# -- configuration ----------------------------------------------------------------------------

VALID = {
    "version": 1, "trust_site_id": "oak", "tenant_id": "38d49456-54d4-455d-a8d6-c383c71e0a6d",
    "include_guests": False, "modules": ["Risk", "Policies"],
    "mappings": [{"group_id": "g1", "site_id": "birch", "roles": {"Risk": "Member", "Policies": "Admin"}}],
    "exclusions": {"patterns": ["*noreply*"], "user_ids": ["u9"]},
    "removal": {"mode": "unassign", "max_removal_ratio": 0.2, "min_removals_to_hold": 10},
}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | st.just("z" * 10_000),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    data = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(data)))
        if not path:
            return draw(JSON)
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace" or isinstance(parent, list):
            parent[path[-1]] = draw(JSON)
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[draw(st.text(string.ascii_letters, min_size=1, max_size=8))] = draw(JSON)
    return data


def _config_property(data: Any, figures: Any) -> None:
    with figures.case("Input: random JSON into SyncConfig.from_dict"):
        try:
            config = SyncConfig.from_dict(data)
        except ConfigError as error:
            problems = error.problems
            config = None
        else:
            problems = []
        if config is None:
            assert problems and all(isinstance(p, str) and p for p in problems)
            return
        assert SyncConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@settings(max_examples=budget("CALM_FUZZ", 150, 3000), deadline=None)
@given(data=mutated_configs())
def test_a_mutated_configuration_is_read_or_refused_with_config_error_only(figures, data):
    _config_property(data, figures)


@pytest.mark.slow
@settings(max_examples=budget("CALM_FUZZ", 3000, 3000), deadline=None)
@given(data=st.one_of(mutated_configs(), JSON))
def test_configuration_fuzz_soak(figures, data):
    _config_property(data, figures)


def _nested(depth: int) -> Any:
    deep: Any = "x"
    for _ in range(depth):
        deep = [deep]
    return deep


def test_nested_json_as_deep_as_json_loads_allows_is_a_config_error(figures) -> None:
    deep = _nested(700)  # about as deep as json.loads reads inside a host's call stack
    for bad in ({**VALID, "mappings": deep}, {**VALID, "mappings": [deep]}, {**VALID, "removal": deep}, deep):
        with figures.case("Input: random JSON into SyncConfig.from_dict"), pytest.raises(ConfigError):
            SyncConfig.from_dict(bad)


def test_data_nested_deeper_than_the_recursion_limit_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SyncConfig.from_dict({**VALID, "mappings": _nested(5000)})


# -- consent callbacks --------------------------------------------------------------------------

STATE = "s" * 43
TENANT = "38d49456-54d4-455d-a8d6-c383c71e0a6d"
VALUES = st.one_of(
    st.just(STATE), st.just(STATE.upper()), st.just(STATE + " "), st.just(TENANT), st.just(TENANT.upper()),
    st.just("True"), st.just("False"), st.just(""), st.text(max_size=20), st.just("x" * 5000),
    st.just("consent_required"), st.just("AADSTS65004: The resource owner denied the request."),
)
PARAM = st.one_of(VALUES, st.lists(VALUES, max_size=3), st.integers(), st.none())
CALLBACKS = st.dictionaries(
    st.sampled_from(["state", "tenant", "admin_consent", "error", "error_description", "scope", "other"]),
    PARAM, max_size=7,
)


def _consent_property(params: dict[str, Any], figures: Any) -> None:
    with figures.case("Input: consent callbacks (forged/missing state, missing tenant, errors, oversized)"):
        try:
            result = parse_consent_callback(params, STATE)
        except ConsentError:
            return
        # Only an exact state, no error, consent not refused, and a GUID tenant get through.
        single = {k: (v[0] if isinstance(v, list) else v) for k, v in params.items()}
        assert single.get("state") == STATE
        assert not single.get("error") and not single.get("error_description")
        assert result.tenant_id == TENANT
        assert all(len(str(v)) <= 4096 for v in single.values() if v is not None)


@settings(max_examples=budget("CALM_FUZZ", 300, 5000), deadline=None)
@given(params=CALLBACKS)
def test_consent_callbacks_are_accepted_only_when_everything_checks_out(figures, params):
    _consent_property(params, figures)


@pytest.mark.slow
@settings(max_examples=budget("CALM_FUZZ", 5000, 5000), deadline=None)
@given(params=CALLBACKS)
def test_consent_callback_fuzz_soak(figures, params):
    _consent_property(params, figures)


@pytest.mark.parametrize(
    "params",
    [
        {"tenant": TENANT, "admin_consent": "True"},
        {"state": "forged", "tenant": TENANT, "admin_consent": "True"},
        {"state": STATE, "admin_consent": "True"},
        {"state": STATE, "tenant": "", "admin_consent": "True"},
        {"state": STATE, "tenant": TENANT, "error": "access_denied"},
        {"state": STATE, "tenant": TENANT, "error_description": "AADSTS65004"},
        {"state": STATE, "tenant": TENANT, "admin_consent": "False"},
        {"state": STATE, "tenant": "x" * 100_000},
        {"state": STATE * 1000, "tenant": TENANT},
        {"state": [STATE, "forged"], "tenant": TENANT},
        {"state": STATE, "tenant": "contoso.onmicrosoft.com"},
    ],
    ids=["missing-state", "forged-state", "missing-tenant", "empty-tenant", "error", "error-description",
         "refused", "oversized-tenant", "oversized-state", "repeated-state", "domain-not-guid"],
)
def test_bad_consent_callbacks_are_refused(figures, params) -> None:
    with figures.case("Input: consent callbacks (forged/missing state, missing tenant, errors, oversized)"), \
            pytest.raises(ConsentError):
        parse_consent_callback(params, STATE)
