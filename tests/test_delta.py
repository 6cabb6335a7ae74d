"""Delta reads (API §8): Graph's documented delta examples, GraphDirectory over the fake, InMemoryDirectory, alike."""

from __future__ import annotations

import json
import random
import urllib.parse
from typing import Any

import httpx
import pytest

from calm_azure_sync import (
    DeltaDirectory,
    DeltaExpiredError,
    DirectoryAccessError,
    DirectoryError,
    InMemoryDirectory,
)
from calm_azure_sync.directory._graph_delta import MemberChanges, merge_group_items, merge_user_items
from calm_azure_sync.directory.delta import DirectoryDelta, GroupDelta, RemovedUser
from calm_azure_sync.model import DirectoryGroup, DirectoryUser
from calm_azure_sync.testing.fake_graph import FakeGraph, FakeGraphServer, Fault

from .graph_helpers import directory_for, example, sdk_directory, user

pytestmark = pytest.mark.wire

USER = "#microsoft.graph.user"


# -- every documented delta example parses ------------------------------------------------


def merged_groups(*names: str) -> tuple[dict[str, MemberChanges], set[str]]:
    members: dict[str, MemberChanges] = {}
    removed: set[str] = set()
    for name in names:
        merge_group_items(example(name)["value"], members, removed, name)
    return members, removed


def test_the_documented_initial_group_round_merges_by_group_id():
    members, removed = merged_groups(
        "groups-delta-initial.json", "groups-delta-nextlink.json", "groups-delta-final-deltalink.json"
    )
    assert set(members) == {
        "c2f798fd-f95d-4623-8824-63aec21fffff",
        "ec22655c-8eb2-432a-b4ea-8b8a254bffff",  # no members@delta: a group without members
        "2e5807ce-58f3-4a94-9b37-ffff2e085957",
        "421e797f-9406-4934-b778-4908421e3505",
        "bed7f0d4-750e-4e7e-ffff-169002d06fc9",
        "421e797f-9406-ffff-b778-4908421e3505",
    }
    first = members["c2f798fd-f95d-4623-8824-63aec21fffff"]
    assert first.added_users == {"693acd06-2877-4339-8ade-b704261fe7a0", "49320844-be99-4164-8167-87ff5d047ace"}
    assert members["ec22655c-8eb2-432a-b4ea-8b8a254bffff"].added_users == set()
    assert members["421e797f-9406-4934-b778-4908421e3505"].added_users == {
        "3c8ac7c4-d365-4df9-abfa-356a9dd7763c", "49320844-be99-4164-8167-87ff5d047ace"}
    assert removed == set()
    assert merged_groups("groups-delta-nochanges.json") == ({}, set())


def test_the_documented_change_round_has_one_removed_and_one_added_member():
    members, _ = merged_groups("groups-delta.json")
    group = members["2e5807ce-58f3-4a94-9b37-ffff2e085957"].frozen("2e5807ce-58f3-4a94-9b37-ffff2e085957", complete=False)
    assert group.removed_users == {"632f6bb2-3ec8-4c1f-9073-0027a8c6859"}  # one character short, as documented
    assert group.added_users == {"37de1ae3-408f-4702-8636-20824abda004"}


def test_the_api_reference_example_without_a_group_id_is_refused_not_guessed():
    # The API page's example omits the group's id; members cannot be attributed to nothing.
    with pytest.raises(DirectoryError) as caught:
        merged_groups("groups-delta-api-reference.json")
    assert caught.value.code == "invalid_response"


def test_the_documented_user_round_parses_with_removed_users_and_their_reasons():
    users: dict[str, Any] = {}
    for name in ("users-delta-initial.json", "users-delta-nextlink.json", "users-delta-final-deltalink.json"):
        merge_user_items(example(name)["value"], users, name, require_account_enabled=False)
    assert users["86462606-fde0-4fc4-9e0c-a20eb73e54c6"] == RemovedUser("86462606-fde0-4fc4-9e0c-a20eb73e54c6", "deleted")
    # The same id twice in the round (a replay, or a change): the last word wins.
    assert users["25dcffff-959e-4ece-9973-e5d9b800e8cc"].display_name == "Lidia Holloway"
    assert users["6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"].display_name == "Conf Room Adams"
    assert len([u for u in users.values() if isinstance(u, DirectoryUser)]) == 7
    later: dict[str, Any] = {}
    merge_user_items(example("users-delta-changes.json")["value"], later, "changes", require_account_enabled=False)
    assert later["8ffff70c-1c63-4860-b963-e34ec660931d"] == RemovedUser("8ffff70c-1c63-4860-b963-e34ec660931d", "changed")
    assert later["25dcffff-959e-4ece-9973-e5d9b800e8cc"].surname == "Administrator"
    merge_user_items(example("users-delta-nochanges.json")["value"], later, "none", require_account_enabled=False)
    assert len(later) == 2


def test_the_minimal_example_without_ids_is_refused_and_a_user_without_account_enabled_is_unreadable():
    with pytest.raises(DirectoryError) as caught:
        merge_user_items(example("users-delta-minimal.json")["value"], {}, "minimal", require_account_enabled=False)
    assert caught.value.code == "invalid_response"
    with pytest.raises(DirectoryAccessError) as unreadable:
        merge_user_items(example("users-delta-final-deltalink.json")["value"], {}, "users/delta")
    assert unreadable.value.code == "users_not_readable"


class DocumentedRound:
    """Serves Graph's documented delta pages in order, by the link each page gives (no sockets)."""

    def __init__(self) -> None:
        self.users = [example(n) for n in ("users-delta-initial.json", "users-delta-nextlink.json",
                                             "users-delta-final-deltalink.json", "users-delta-changes.json")]
        for page in self.users:  # our $select includes accountEnabled; the docs' round selected names only
            for item in page["value"]:
                if "@removed" not in item:
                    item["accountEnabled"] = True
        self.groups = [example(n) for n in ("groups-delta-initial.json", "groups-delta-nextlink.json",
                                              "groups-delta-final-deltalink.json", "groups-delta.json")]
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.seen.append(url)
        pages = self.users if "/users/delta" in url else self.groups
        query = urllib.parse.parse_qs(request.url.query.decode())
        if "$skiptoken" in query or "$deltatoken" in query:
            token = (query.get("$skiptoken") or query["$deltatoken"])[0]
            index = 1 + next(i for i, page in enumerate(pages)
                             if token in (page.get("@odata.nextLink") or page.get("@odata.deltaLink") or ""))
        else:
            index = 0
        return httpx.Response(200, json=pages[index])


async def test_the_documented_rounds_through_graph_directory():
    served = DocumentedRound()
    directory = sdk_directory(httpx.MockTransport(served))
    tracked = ["c2f798fd-f95d-4623-8824-63aec21fffff", "2e5807ce-58f3-4a94-9b37-ffff2e085957", "missing-group"]
    delta, cursor = await directory.changes(None, tracked)
    assert delta.users_complete and len(delta.users) == 7 and delta.removed_users[0].reason == "deleted"
    first = delta.group("c2f798fd-f95d-4623-8824-63aec21fffff")
    assert first is not None and first.complete and len(first.added_users) == 2
    assert delta.removed_groups == {"missing-group"}  # never listed by its chain's first full round
    assert json.loads(json.dumps(cursor)) == cursor  # JSON-safe
    first_requests = served.seen[:]
    assert any("$select=members" in u and "$filter=" in u for u in first_requests)
    later, _ = await directory.changes(cursor, tracked)
    assert not later.users_complete
    assert later.removed_users == (RemovedUser("8ffff70c-1c63-4860-b963-e34ec660931d", "changed"),)
    change = later.group("2e5807ce-58f3-4a94-9b37-ffff2e085957")
    assert change is not None and change.removed_users == {"632f6bb2-3ec8-4c1f-9073-0027a8c6859"}
    # query parameters went on the first request of each chain only
    assert all("$select" not in u and "$filter" not in u for u in served.seen[len(first_requests):])


async def test_the_documented_expired_token_body_is_delta_expired():
    body = example("error-delta-expired.json")
    for status in (400, 410):
        directory = sdk_directory(httpx.MockTransport(lambda request, status=status: httpx.Response(status, json=body)))
        with pytest.raises(DeltaExpiredError) as caught:
            await directory.changes(None, ["g1"])
        assert caught.value.code == "SyncStateNotFound" and caught.value.status == status


# -- GraphDirectory over the fake -------------------------------------------------------


def tenant(groups: int = 3, users: int = 12) -> dict[str, Any]:
    people = [user(f"u{i:03d}") for i in range(users)]
    ids = [f"g{i:03d}" for i in range(groups)]
    members: dict[str, list[str]] = {gid: [p["id"] for p in people[i::groups]] for i, gid in enumerate(ids)}
    members[ids[0]].append(ids[-1])  # a nested group
    return {"users": people, "groups": [{"id": gid, "displayName": gid} for gid in ids], "members": members}


async def test_a_no_change_round_of_120_groups_takes_4_requests():
    fixture = tenant(groups=120, users=300)
    with FakeGraphServer(fixture, delta_page_size=1000) as server:
        directory, _ = directory_for(server)
        async with directory:
            first, cursor = await directory.changes(None, [g["id"] for g in fixture["groups"]])
            assert first.complete and len(first.users) == 300 and len(first.groups) == 120
            initial = server.requests
            server.clear_log()
            again, cursor = await directory.changes(cursor, [g["id"] for g in fixture["groups"]])
            steady = server.requests
    assert len(initial) == 4  # ceil(120 / 50) group chains + the users chain, one page each
    filters = [r.query["$filter"] for r in initial if r.path == "/groups/delta"]
    assert sorted(f.count(" or ") + 1 for f in filters) == [20, 50, 50]
    assert all(r.query["$select"] == "members" for r in initial if r.path == "/groups/delta")
    assert again.empty and not again.complete
    assert len(steady) == 4
    assert all(set(r.query) == {"$deltatoken"} for r in steady)  # only the opaque links, nothing added


async def test_split_groups_replays_and_any_order_merge_to_the_truth():
    fixture = tenant(groups=4, users=40)
    with FakeGraphServer(fixture, page_cap=2, delta_member_slice=3, delta_replays=True, delta_seed=7) as server:
        directory, _ = directory_for(server)
        async with directory:
            delta, cursor = await directory.changes(None, [g["id"] for g in fixture["groups"]])
            for gid, ids in fixture["members"].items():
                group = delta.group(gid)
                assert group is not None and group.complete
                assert group.apply(()) == set(ids)
            assert len([r for r in server.requests if r.path == "/groups/delta"]) > 4  # paged
            for index in range(10):
                server.remove_member("g001", f"u{4 * index + 1:03d}")
            server.add_member("g002", "g001")
            later, _ = await directory.changes(cursor, [g["id"] for g in fixture["groups"]])
    assert later.group("g001").removed_users == {f"u{4 * i + 1:03d}" for i in range(10)}
    assert later.group("g002").added_groups == {"g001"}
    assert later.group("g000") is None


async def test_users_deleted_softly_or_for_good_changed_and_a_group_deleted():
    fixture = tenant()
    with FakeGraphServer(fixture) as server:
        directory, _ = directory_for(server)
        async with directory:
            _, cursor = await directory.changes(None, ["g000", "g001"])
            server.remove_user("u000", soft=True)
            server.remove_user("u001")
            server.add_user(user("u002", mail="renamed@school.example", accountEnabled=False))
            server.remove_group("g001")
            delta, cursor = await directory.changes(cursor, ["g000", "g001"])
    assert delta.removed_users == (RemovedUser("u000", "changed"), RemovedUser("u001", "deleted"))
    assert [(u.id, u.mail, u.account_enabled) for u in delta.users] == [("u002", "renamed@school.example", False)]
    assert delta.removed_groups == {"g001"}
    assert delta.group("g000").removed_users == {"u000"}  # its membership ended with the deletion


async def test_latest_starts_from_now_with_no_data():
    fixture = tenant()
    with FakeGraphServer(fixture) as server:
        directory, _ = directory_for(server)
        async with directory:
            delta, cursor = await directory.changes(None, ["g000"], start="latest")
            assert delta.empty and not delta.complete
            assert all(r.query.get("$deltatoken") == "latest" for r in server.requests)
            server.add_member("g000", "u001")
            later, _ = await directory.changes(cursor, ["g000"])
    assert later.group("g000").added_users == {"u001"} and later.users == ()


async def test_an_expired_token_is_delta_expired_with_graphs_location():
    with FakeGraphServer(tenant()) as server:
        directory, _ = directory_for(server)
        async with directory:
            _, cursor = await directory.changes(None, ["g000"])
            server.expire_delta_tokens()
            with pytest.raises(DeltaExpiredError) as caught:
                await directory.changes(cursor, ["g000"])
        gone = [r for r in server.requests if r.status == 410]
    assert caught.value.status == 410 and gone


def test_a_token_the_fake_does_not_know_is_410_with_a_location():
    with FakeGraphServer(tenant()) as server, httpx.Client() as http:
        url = server.base_url + "/groups/delta?$deltatoken=forgotten"
        answer = http.get(url, headers={"Authorization": "Bearer t"})
    assert answer.status_code == 410 and answer.headers["Location"].endswith("/groups/delta")


async def test_a_round_failing_partway_gives_no_cursor_and_loses_nothing():
    fixture = tenant(groups=3, users=30)
    with FakeGraphServer(fixture, page_cap=2) as server:
        directory, _ = directory_for(server)
        async with directory:
            _, cursor = await directory.changes(None, ["g000", "g001", "g002"])
            server.remove_member("g001", "u001")
            server.add_user(user("u005", displayName="Renamed"))
            server.inject(Fault.unavailable(), path="/users/delta", times=20)  # users chain fails for good
            with pytest.raises(DirectoryError) as caught:
                await directory.changes(cursor, ["g000", "g001", "g002"])
            assert not isinstance(caught.value, DeltaExpiredError)
            server.clear_faults()
            delta, _ = await directory.changes(cursor, ["g000", "g001", "g002"])  # the old cursor still works
    assert delta.group("g001").removed_users == {"u001"}
    assert [u.display_name for u in delta.users] == ["Renamed"]


async def test_a_group_added_to_tracking_starts_its_own_chain_and_a_dropped_one_leaves_the_cursor():
    with FakeGraphServer(tenant(groups=3)) as server:
        directory, _ = directory_for(server)
        async with directory:
            _, cursor = await directory.changes(None, ["g000"])
            delta, cursor = await directory.changes(cursor, ["g000", "g002"])
            assert delta.group("g002").complete and not delta.users_complete
            assert [chunk["ids"] for chunk in cursor["groups"]] == [["g000"], ["g002"]]
            _, cursor = await directory.changes(cursor, ["g002"])
    assert [chunk["ids"] for chunk in cursor["groups"]] == [["g002"]]


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: {**c, "version": 99},
        lambda c: {**c, "base": "https://graph.microsoft.us/v1.0"},
        lambda c: {**c, "users": "https://evil.example/v1.0/users/delta?$deltatoken=x"},
        lambda c: {**c, "groups": [{"ids": [], "link": "x"}]},
        lambda c: "not a cursor",
    ],
    ids=["version", "base", "foreign-link", "empty-chunk", "not-a-mapping"],
)
async def test_a_damaged_or_foreign_cursor_is_delta_expired_and_sends_nothing(damage):
    with FakeGraphServer(tenant()) as server:
        directory, _ = directory_for(server)
        async with directory:
            _, cursor = await directory.changes(None, ["g000"])
            server.clear_log()
            with pytest.raises(DeltaExpiredError) as caught:
                await directory.changes(damage(cursor), ["g000"])
        assert server.requests == []
    assert caught.value.code == "invalid_cursor"


async def test_users_delta_without_user_read_all_is_an_access_error():
    with FakeGraphServer(tenant(), granted_permissions={"GroupMember.Read.All"}) as server:
        directory, _ = directory_for(server)
        async with directory:
            with pytest.raises(DirectoryAccessError) as caught:
                await directory.changes(None, ["g000"])
    assert caught.value.status == 403 and "User.Read.All" in caught.value.missing_permissions


def test_the_fake_refuses_what_graph_refuses():
    graph = FakeGraph(tenant())
    with httpx.Client(transport=graph.transport()) as http:
        def get(path: str) -> httpx.Response:
            return http.get("https://graph.microsoft.com/v1.0" + path, headers={"Authorization": "Bearer t"})

        ids = " or ".join(f"id eq 'g{i}'" for i in range(51))
        assert get(f"/groups/delta?$select=members&$filter={ids}").status_code == 400  # over 50 ids
        assert get("/groups/delta?$filter=displayName eq 'x'").status_code == 400  # ids only
        first = get("/groups/delta?$select=members&$filter=id eq 'g000'").json()
        link = first["@odata.deltaLink"]
        assert first["value"][0]["id"] == "g000" and "members@delta" in first["value"][0]
        assert http.get(link + "&$select=members", headers={"Authorization": "Bearer t"}).status_code == 400


# -- InMemoryDirectory answers as GraphDirectory over the fake does ------------------------


def normalized(delta: DirectoryDelta) -> tuple[Any, ...]:
    return (
        {u.id: u for u in delta.users},
        set(delta.removed_users),
        {g.group_id: g for g in delta.groups},  # every group listed, changed or not (a restored one may be empty)
        delta.removed_groups,
        delta.users_complete,
    )


def apply_random_changes(rng: random.Random, memory: InMemoryDirectory, server: FakeGraphServer, step: int) -> None:
    group_ids = sorted(memory.groups)
    for _ in range(rng.randint(1, 6)):
        action = rng.choice(["join", "leave", "nest", "rename", "delete_user", "new_user", "delete_group", "restore_group"])
        user_ids = sorted(memory.users)
        gid = rng.choice(group_ids)
        if action == "restore_group" and gid not in memory.groups:
            # restored (or created again under its id) with some of the users, perhaps none
            members = rng.sample(user_ids, k=min(len(user_ids), rng.randint(0, 3)))
            memory.put_group(DirectoryGroup(gid, gid), members)
            server.add_group({"id": gid, "displayName": gid}, members=members)
            continue
        if gid not in memory.groups:
            continue  # deleted earlier in the script
        if action == "join" and user_ids:
            uid = rng.choice(user_ids)
            memory.add_member(gid, uid)
            server.add_member(gid, uid)
        elif action == "leave" and memory.members.get(gid):
            mid = rng.choice(sorted(memory.members[gid]))
            memory.remove_member(gid, mid)
            server.remove_member(gid, mid)
        elif action == "nest":
            other = rng.choice(group_ids)
            if other in memory.groups and other != gid:
                memory.add_member(gid, other)
                server.add_member(gid, other)
        elif action == "rename" and user_ids:
            data = user(rng.choice(user_ids), displayName=f"Renamed {step}")
            memory.put_user(DirectoryUser.from_graph(data))
            server.add_user(data)
        elif action == "delete_user" and user_ids:
            uid, soft = rng.choice(user_ids), rng.random() < 0.5
            memory.delete_user(uid, soft=soft)
            server.remove_user(uid, soft=soft)
        elif action == "new_user":
            data = user(f"n{step}-{rng.randint(0, 10**6)}")
            memory.put_user(DirectoryUser.from_graph(data))
            server.add_user(data)
        elif action == "delete_group" and rng.random() < 0.3:
            memory.delete_group(gid)
            server.remove_group(gid, soft=rng.random() < 0.5)


@pytest.mark.parametrize("seed", range(16))
async def test_in_memory_and_graph_deltas_agree_round_after_round(seed):
    rng = random.Random(seed)
    fixture = tenant(groups=5, users=20)
    memory = InMemoryDirectory.from_dict(fixture)
    assert isinstance(memory, DeltaDirectory)
    tracked = [g["id"] for g in fixture["groups"]]
    with FakeGraphServer(fixture, page_cap=3, delta_member_slice=2, delta_replays=True, delta_seed=seed) as server:
        directory, _ = directory_for(server)
        async with directory:
            assert isinstance(directory, DeltaDirectory)
            start = "initial" if seed % 2 == 0 else "latest"
            graph_delta, graph_cursor = await directory.changes(None, tracked, start=start)
            memory_delta, memory_cursor = await memory.changes(None, tracked, start=start)
            assert normalized(graph_delta) == normalized(memory_delta)
            for step in range(5):
                apply_random_changes(rng, memory, server, step)
                graph_delta, graph_cursor = await directory.changes(graph_cursor, tracked)
                memory_delta, memory_cursor = await memory.changes(memory_cursor, tracked)
                assert normalized(graph_delta) == normalized(memory_delta), step


async def test_in_memory_cursors_expire_and_are_refused_across_directories():
    memory = InMemoryDirectory.from_dict(tenant())
    _, cursor = await memory.changes(None, ["g000"])
    with pytest.raises(DeltaExpiredError):
        await InMemoryDirectory.from_dict(tenant()).changes(cursor, ["g000"])
    memory.expire_delta_tokens()
    with pytest.raises(DeltaExpiredError) as caught:
        await memory.changes(cursor, ["g000"])
    assert caught.value.code == "syncStateNotFound"


def test_group_delta_applies_to_the_kept_membership():
    kept = {"u1", "u2", "g9"}
    change = GroupDelta("g", added_users=frozenset({"u3"}), removed_users=frozenset({"u1"}),
                        removed_groups=frozenset({"g9"}))
    assert change.apply(kept) == {"u2", "u3"}
    assert GroupDelta("g", added_users=frozenset({"u7"}), complete=True).apply(kept) == {"u7"}


async def test_a_group_dropped_from_a_shared_chunk_and_tracked_again_is_listed_whole():
    # A chunk's filter names every id it was made for: a group left out must not ride along in it
    # (its changes would be read and thrown away), so the chunk starts again for those still wanted.
    fixture = tenant(groups=3)
    with FakeGraphServer(fixture) as server:
        directory, _ = directory_for(server)
        async with directory:
            _, cursor = await directory.changes(None, ["g000", "g001"])
            assert [chunk["ids"] for chunk in cursor["groups"]] == [["g000", "g001"]]
            delta, cursor = await directory.changes(cursor, ["g000"])
            assert [chunk["ids"] for chunk in cursor["groups"]] == [["g000"]]
            assert delta.group("g000").complete  # restarted: listed whole again
            server.add_member("g001", "u002")  # while g001 is not tracked
            delta, cursor = await directory.changes(cursor, ["g000", "g001"])
    g001 = delta.group("g001")
    assert g001 is not None and g001.complete
    assert g001.added_users == frozenset([*fixture["members"]["g001"], "u002"])
