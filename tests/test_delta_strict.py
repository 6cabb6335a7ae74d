"""Delta reads are exactly as strict as full reads (API §11): every member shape, counted or refused alike.

One classification (``directory._items``) serves the full read
(``transitiveMembers/microsoft.graph.user``), ``members@delta`` and
``users/delta``. Here each shape Graph documents, and the variants a
careless server could send, goes through ``GraphDirectory`` over real HTTP
against the fake Graph server, both ways; the same kinds through
``InMemoryDirectory``; and a property: after any history of member changes
in any of those shapes, an incremental read and a full read give the same
snapshot.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calm_azure_sync import (
    DirectoryAccessError,
    DirectoryError,
    DirectoryUser,
    GroupMapping,
    InMemoryDirectory,
    RemovedUser,
    SyncConfig,
)
from calm_azure_sync.core.state import SyncState
from calm_azure_sync.directory._graph_delta import MemberChanges, merge_group_items, merge_user_items
from calm_azure_sync.directory._items import member_item, user_item
from calm_azure_sync.incremental.reader import DirectoryReader
from calm_azure_sync.incremental.settled import Settled
from calm_azure_sync.testing.fake_graph import FakeGraph, FakeGraphServer, Fault

from .conftest import budget
from .graph_helpers import directory_for, example, sdk_directory, user

pytestmark = pytest.mark.wire

USER = "#microsoft.graph.user"
GROUP = "#microsoft.graph.group"
DOCUMENTED_GROUP = "2e5807ce-58f3-4a94-9b37-ffff2e085957"  # groups-delta.json


# -- the one classification -------------------------------------------------------------

CLASSIFIED = [
    ({"@odata.type": USER, "id": "u1"}, ("user", "u1", None)),
    ({"id": "u1"}, ("user", "u1", None)),  # untyped: a user, as a cast read lists it
    ({"@odata.type": None, "id": "u1"}, ("user", "u1", None)),
    ({"@odata.type": "microsoft.graph.User", "id": "u1"}, ("user", "u1", None)),
    ({"@odata.type": GROUP, "id": "g1"}, ("group", "g1", None)),
    ({"@odata.type": "#microsoft.graph.device", "id": "d1"}, ("other", "d1", None)),
    ({"@odata.type": "#microsoft.graph.servicePrincipal", "id": "s1"}, ("other", "s1", None)),
    ({"@odata.type": "#microsoft.graph.orgContact", "id": "c1"}, ("other", "c1", None)),
    ({"@odata.type": "#microsoft.graph.somethingNew", "id": "x1"}, ("other", "x1", None)),
    ({"@odata.type": USER, "id": "u1", "@removed": {"reason": "deleted"}}, ("user", "u1", "deleted")),
    ({"@odata.type": USER, "id": "u1", "@removed": {"reason": "changed"}}, ("user", "u1", "changed")),
    ({"id": "u1", "@removed": {"reason": "deleted"}}, ("user", "u1", "deleted")),
    ({"id": "u1", "@removed": {}}, ("user", "u1", "deleted")),
    ({"id": "u1", "@removed": None}, ("user", "u1", None)),
]

REFUSED = [
    {"@odata.type": USER},
    {"@odata.type": USER, "id": ""},
    {"@odata.type": USER, "id": "  "},
    {"@odata.type": USER, "id": 42},
    {"@odata.type": USER, "id": None},
    {"@odata.type": USER, "id": "u\ud800"},
    {"@odata.type": 7, "id": "u1"},
    {"@odata.type": USER, "id": "u1", "@removed": "yes"},
    {"@odata.type": USER, "id": "u1", "@removed": {"reason": 3}},
    ["u1"],
    "u1",
]


@pytest.mark.parametrize(("item", "expected"), CLASSIFIED)
def test_one_classification_of_a_member(item, expected):
    assert member_item(item, "test") == expected


@pytest.mark.parametrize("item", REFUSED, ids=repr)
def test_a_member_graph_never_sends_is_refused_by_every_read(item):
    with pytest.raises(DirectoryError) as caught:
        member_item(item, "test")
    assert caught.value.code == "invalid_response"
    with pytest.raises(DirectoryError):  # a members@delta reference
        merge_group_items([{"id": "g1", "members@delta": [item]}], {}, set(), "test")
    with pytest.raises(DirectoryError):  # a users/delta item or a full read's member
        user_item(item, "test")


def test_the_documented_change_round_read_without_types_still_removes_and_adds():
    # groups-delta.json, with @odata.type left out of its two references: the removal must
    # still take the member away (it used to be dropped), the addition still add a user.
    page = example("groups-delta.json")
    for ref in page["value"][0]["members@delta"]:
        del ref["@odata.type"]
    members: dict[str, MemberChanges] = {}
    merge_group_items(page["value"], members, set(), "groups-delta.json")
    group = members[DOCUMENTED_GROUP].frozen(DOCUMENTED_GROUP, complete=False)
    assert group.removed_users == {"632f6bb2-3ec8-4c1f-9073-0027a8c6859"}
    assert group.added_users == {"37de1ae3-408f-4702-8636-20824abda004"}


def test_a_removed_group_with_or_without_a_reason_is_removed_and_a_bad_marker_refused():
    for marker in ({"reason": "changed"}, {"reason": "deleted"}, {}):
        removed: set[str] = set()
        merge_group_items([{"id": "g1", "@removed": marker}], {}, removed, "test")
        assert removed == {"g1"}
    members: dict[str, MemberChanges] = {}
    merge_group_items([{"id": "g1", "@removed": None}], members, set(), "test")
    assert set(members) == {"g1"}  # null is no marker: the group is listed
    with pytest.raises(DirectoryError):
        merge_group_items([{"id": "g1", "@removed": ["deleted"]}], {}, set(), "test")


def test_users_delta_items_are_read_as_a_full_read_reads_a_member():
    base = user("u1")
    users: dict[str, Any] = {}
    merge_user_items(
        [
            {"id": "u9", "@removed": {"reason": "changed"}},
            {"id": "u8", "@removed": {}},
            {**base, "@removed": None},
        ],
        users,
        "test",
    )
    assert users == {
        "u9": RemovedUser("u9", "changed"),
        "u8": RemovedUser("u8", "deleted"),
        "u1": DirectoryUser.from_graph(base),
    }
    # The limited-information shapes a full read refuses, users/delta refuses too: accountEnabled
    # null or left out, and Graph's id-and-type-only shape.
    for shape in (
        {**base, "accountEnabled": None},
        {k: v for k, v in base.items() if k != "accountEnabled"},
        {"@odata.type": USER, "id": "u1"},
    ):
        with pytest.raises(DirectoryAccessError) as caught:
            merge_user_items([shape], {}, "test")
        assert caught.value.code == "users_not_readable"
        with pytest.raises(DirectoryAccessError):
            user_item(shape, "test")
    # users/delta leaves out what was never set where a full read sends null: a user without a
    # userPrincipalName there is the user a full read gets with "userPrincipalName": null.
    unset = {k: v for k, v in base.items() if k != "userPrincipalName"}
    merged: dict[str, Any] = {}
    merge_user_items([unset], merged, "test")
    assert merged["u1"] == user_item({**base, "userPrincipalName": None}, "a full read")


# -- each shape, through GraphDirectory over HTTP, full read against delta ----------------

Shape = Callable[[dict[str, Any]], dict[str, Any]]


def _retype(kind: str | None) -> Shape:
    def shape(ref: dict[str, Any]) -> dict[str, Any]:
        ref = {k: v for k, v in ref.items() if k != "@odata.type"}
        return ref if kind is None else {"@odata.type": kind, **ref}

    return shape


def _removal_marker(marker: Any) -> Shape:
    def shape(ref: dict[str, Any]) -> dict[str, Any]:
        return {**ref, "@removed": marker} if "@removed" in ref else ref

    return shape


def _field(name: str, value: Any) -> Shape:
    def shape(ref: dict[str, Any]) -> dict[str, Any]:
        ref = {k: v for k, v in ref.items() if k != name}
        return ref if value is _ABSENT else {**ref, name: value}

    return shape


_ABSENT = object()

# name -> (shape of u2's reference or item, counted as a member?) ; None: refused by both reads
SHAPES: dict[str, tuple[Shape, bool | None]] = {
    "typed, as documented": (_retype(USER), True),
    "untyped": (_retype(None), True),
    "type without # in another case": (_retype("microsoft.graph.USER"), True),
    "removal without a reason": (_removal_marker({}), True),
    "removal with reason changed": (_removal_marker({"reason": "changed"}), True),
    "@removed null on an addition": (lambda ref: ref if "@removed" in ref else {**ref, "@removed": None}, True),
    "device": (_retype("#microsoft.graph.device"), False),
    "service principal": (_retype("#microsoft.graph.servicePrincipal"), False),
    "org contact": (_retype("#microsoft.graph.orgContact"), False),
    "unknown type": (_retype("#microsoft.graph.somethingNew"), False),
    "no id": (_field("id", _ABSENT), None),
    "numeric id": (_field("id", 42), None),
    "type not a string": (_field("@odata.type", ["user"]), None),
    "@removed not an object": (lambda ref: {**ref, "@removed": "yes"}, None),
}


def _shaping(shape: Shape, member_id: str, *, delta: bool) -> Callable[[Any], Any]:
    """A rewrite of Graph's answer: ``member_id``'s reference (delta) or item (full read) in ``shape``."""

    def rewrite(body: Any) -> Any:
        body = copy.deepcopy(body)
        for item in body.get("value", []):
            refs = item.get("members@delta")
            if delta and refs:
                item["members@delta"] = [shape(ref) if ref.get("id") == member_id else ref for ref in refs]
        if not delta:
            body["value"] = [
                shape({"@odata.type": USER, **item}) if item.get("id") == member_id else item
                for item in body.get("value", [])
            ]
        return body

    return rewrite


def _shape_fixture() -> dict[str, Any]:
    return {
        "users": [user("u1"), user("u2"), user("u3")],
        "groups": [{"id": "g1", "displayName": "G1"}],
        "members": {"g1": ["u1", "u2", "u3"]},
    }


async def _outcome(read: Callable[[], Any]) -> Any:
    try:
        return await read()
    except DirectoryError as error:
        return ("refused", type(error).__name__, error.code)


@pytest.mark.parametrize("name", sorted(SHAPES))
async def test_each_member_shape_is_counted_or_refused_alike_by_a_full_read_and_a_delta(name):
    shape, counted = SHAPES[name]
    with FakeGraphServer(_shape_fixture()) as server:
        directory, _ = directory_for(server)
        async with directory:

            async def full() -> set[str]:
                server.inject(Fault.rewrite(_shaping(shape, "u2", delta=False)), path="/groups/g1/*", times=5)
                try:
                    return {u.id for u in await directory.group_members("g1")}
                finally:
                    server.clear_faults()

            async def delta(cursor: Any, kept: frozenset[str]) -> tuple[set[str], Any]:
                server.inject(Fault.rewrite(_shaping(shape, "u2", delta=True)), path="/groups/delta", times=5)
                try:
                    found, cursor = await directory.changes(cursor, ["g1"])
                finally:
                    server.clear_faults()
                group = found.group("g1")
                return set(kept if group is None else group.apply(kept)), cursor

            first_full = await _outcome(full)
            first_delta = await _outcome(lambda: delta(None, frozenset()))
            if counted is None:
                assert first_full == first_delta == ("refused", "DirectoryError", "invalid_response")
                return
            kept, cursor = first_delta
            assert kept == first_full == ({"u1", "u2", "u3"} if counted else {"u1", "u3"})
            server.remove_member("g1", "u2")  # the member leaves: its removal comes in the same shape
            after_full = await full()
            kept, cursor = await delta(cursor, frozenset(kept))
            assert kept == after_full == {"u1", "u3"}
            server.add_member("g1", "u2")  # and comes back
            again_full = await full()
            kept, _ = await delta(cursor, frozenset(kept))
            assert kept == again_full


@pytest.mark.parametrize("name", sorted(n for n, (_, counted) in SHAPES.items() if counted is None))
async def test_a_removal_in_a_shape_graph_never_sends_fails_the_round_rather_than_being_dropped(name):
    shape, _ = SHAPES[name]
    with FakeGraphServer(_shape_fixture()) as server:
        directory, _ = directory_for(server)
        async with directory:
            _, cursor = await directory.changes(None, ["g1"])
            server.remove_member("g1", "u2")
            server.inject(Fault.rewrite(_shaping(shape, "u2", delta=True)), path="/groups/delta", times=5)
            with pytest.raises(DirectoryError) as caught:
                await directory.changes(cursor, ["g1"])
            server.clear_faults()
            found, _ = await directory.changes(cursor, ["g1"])  # the old cursor still has the removal
    assert caught.value.code == "invalid_response"
    assert found.group("g1").removed_users == {"u2"}


async def test_removed_users_soft_or_for_good_leave_every_group_in_both_reads():
    fixture = _shape_fixture()
    fixture["groups"].append({"id": "g2"})
    fixture["members"]["g2"] = ["u2", "g1"]
    with FakeGraphServer(fixture) as server:
        directory, _ = directory_for(server)
        async with directory:
            first, cursor = await directory.changes(None, ["g1", "g2"])
            kept = {g.group_id: g.apply(()) for g in first.groups}
            server.remove_user("u2", soft=True)
            server.remove_user("u3")
            later, _ = await directory.changes(cursor, ["g1", "g2"])
            for change in later.groups:
                kept[change.group_id] = change.apply(kept[change.group_id])
            full = {g: {u.id for u in await directory.group_members(g)} for g in ("g1", "g2")}
    assert set(later.removed_users) == {RemovedUser("u2", "changed"), RemovedUser("u3", "deleted")}
    gone = {r.id for r in later.removed_users}
    assert {g: set(m) - gone - {"g1"} for g, m in kept.items()} == {"g1": {"u1"}, "g2": set()}
    assert full == {"g1": {"u1"}, "g2": {"u1"}}


# -- the same kinds through InMemoryDirectory ---------------------------------------------


async def test_in_memory_other_objects_are_neither_users_nor_groups_in_full_and_delta_reads():
    fixture = {**_shape_fixture(), "others": [{"id": "d1", "@odata.type": "#microsoft.graph.device"}]}
    fixture["members"] = {"g1": ["u1", "d1", "u2"]}
    memory = InMemoryDirectory.from_dict(fixture)
    with FakeGraphServer(fixture) as server:
        directory, _ = directory_for(server)
        async with directory:
            for read in (memory, directory):
                assert {u.id for u in await read.group_members("g1")} == {"u1", "u2"}
            m_delta, m_cursor = await memory.changes(None, ["g1"])
            g_delta, g_cursor = await directory.changes(None, ["g1"])
            assert m_delta.group("g1") == g_delta.group("g1")
            assert m_delta.group("g1").apply(()) == {"u1", "u2"}
            # Only a device leaves: both list the group (something changed in it), with no member change.
            memory.remove_member("g1", "d1")
            server.remove_member("g1", "d1")
            m_delta, m_cursor = await memory.changes(m_cursor, ["g1"])
            g_delta, g_cursor = await directory.changes(g_cursor, ["g1"])
    assert m_delta == g_delta
    assert m_delta.group("g1") is not None and not m_delta.group("g1").changed and not m_delta.empty


# -- the property: after any history, incremental == full ---------------------------------

MEMBERS = ["u0", "u1", "u2", "u3", "d0", "c0", "nested"]
PRESENTATIONS = ["typed", "untyped", "cased", "no reason", "changed", "null marker"]


class ShapedTransport(httpx.AsyncBaseTransport):
    """The fake Graph in process, each member id presented in the shape chosen for it, full reads and deltas alike."""

    def __init__(self, graph: FakeGraph, shapes: dict[str, str]) -> None:
        self.graph = graph
        self.shapes = shapes

    def _shape(self, item: dict[str, Any]) -> dict[str, Any]:
        how = self.shapes.get(item.get("id", ""), "typed")
        kind = item.get("@odata.type", USER)
        if how == "untyped" and kind == USER:
            item = {k: v for k, v in item.items() if k != "@odata.type"}
        elif how == "cased" and isinstance(kind, str):
            item = {**item, "@odata.type": kind.lstrip("#").upper()}
        elif "@removed" in item and how in ("no reason", "changed"):
            item = {**item, "@removed": {} if how == "no reason" else {"reason": "changed"}}
        elif how == "null marker" and "@removed" not in item:
            item = {**item, "@removed": None}
        return item

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        response = self.graph.handle(request)
        if response.status_code != 200 or "json" not in response.headers.get("content-type", ""):
            return response
        body = json.loads(response.content)
        path = request.url.path
        for item in body.get("value", []) if isinstance(body, dict) else []:
            if path.endswith("/groups/delta") and "members@delta" in item:
                item["members@delta"] = [self._shape(ref) for ref in item["members@delta"]]
        if "/transitiveMembers" in path and isinstance(body, dict):
            body["value"] = [self._shape({"@odata.type": USER, **item}) for item in body.get("value", [])]
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return httpx.Response(response.status_code, headers=headers, json=body)


class _NoTables:
    """A sync state store without delta tables: the reader keeps its cache as JSON in SyncState.delta."""


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "delete user", "restore user", "delete nested", "restore nested"]),
        st.sampled_from(["g0", "g1", "nested"]),
        st.sampled_from(MEMBERS),
    ),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=budget("CALM_SHAPE_EXAMPLES", 15, 150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    shapes=st.fixed_dictionaries({member: st.sampled_from(PRESENTATIONS) for member in MEMBERS}),
    rounds=st.lists(_OPS, min_size=1, max_size=4),
)
def test_after_any_history_of_member_shapes_an_incremental_read_equals_a_full_read(shapes, rounds):
    asyncio.run(_shapes_differential(shapes, rounds))


async def _shapes_differential(shapes: dict[str, str], rounds: list[list[tuple[str, str, str]]]) -> None:
    users = [user(u) for u in MEMBERS if u.startswith("u")]
    others = [{"id": "d0", "@odata.type": "#microsoft.graph.device"}, {"id": "c0", "@odata.type": "#microsoft.graph.orgContact"}]
    fixture = {
        "users": users,
        "groups": [{"id": g, "displayName": g} for g in ("g0", "g1", "nested")],
        "members": {"g0": ["u0", "d0", "nested"], "g1": ["u1", "c0"], "nested": ["u2"]},
        "others": others,
    }
    graph = FakeGraph(fixture)
    directory = sdk_directory(ShapedTransport(graph, shapes))
    config = SyncConfig("oak", [GroupMapping("g0", "oak", {"Risk": "Member"}), GroupMapping("g1", "oak", {"Risk": "Manager"})])
    clock = [dt.datetime(2026, 12, 1, tzinfo=dt.UTC)]
    reader = DirectoryReader(directory, _NoTables(), 4, lambda: clock[0], dt.timedelta(days=30), lambda *_: None)  # type: ignore[arg-type]
    state = SyncState()

    async def incremental() -> Any:
        nonlocal state
        read = await reader.read_for_run(
            config, state, "auto", last_record=Settled.from_state(state), settled_key=lambda _: None,
            begin_load=lambda _: None,
        )
        state = await reader.keep_cache("oak", read, state, None)
        return read

    def seen(snapshot: Any) -> Any:
        return (
            {g: sorted((u.id, u.display_name) for u in members) for g, members in snapshot.members.items()},
            sorted(snapshot.unreadable),
        )

    assert (await incremental()).mode == "full"
    deleted: dict[str, dict[str, Any]] = {}
    nested_members: list[str] = ["u2"]
    for ops in rounds:
        for op, group, member in ops:
            data = graph.fixture()
            present = {u["id"] for u in data["users"]} | {o["id"] for o in others} | {g["id"] for g in data["groups"]}
            if op == "join" and member != group and member in present and group in {g["id"] for g in data["groups"]}:
                graph.add_member(group, member)
            elif op == "leave":
                graph.remove_member(group, member)
            elif op == "delete user" and member.startswith("u") and member in present:
                deleted[member] = next(u for u in data["users"] if u["id"] == member)
                graph.remove_user(member, soft=True)
            elif op == "restore user" and member in deleted:
                graph.add_user(deleted.pop(member))
            elif op == "delete nested" and "nested" in present:
                nested_members = list(data["members"].get("nested", []))
                graph.remove_group("nested")
            elif op == "restore nested" and "nested" not in present:
                graph.add_group({"id": "nested", "displayName": "nested"}, members=nested_members)
        clock[0] += dt.timedelta(minutes=30)
        read = await incremental()
        full = await reader.read_all(config)
        assert read.mode == "incremental", read.why
        assert seen(read.snapshot) == seen(full), (shapes, rounds)
