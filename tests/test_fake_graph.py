"""The fake Graph server itself, spoken to with bare httpx: it must behave as Graph documents."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from calm_azure_sync import DirectoryError
from calm_azure_sync.model import DirectoryGroup, DirectoryUser
from calm_azure_sync.testing.fake_graph import FakeGraph, FakeGraphServer, Fault, resource_units

from .graph_helpers import FAKE_TOKEN, examples_dir, sdk_directory, user

pytestmark = pytest.mark.wire

AUTH = {"Authorization": f"Bearer {FAKE_TOKEN}"}
EVENTUAL = {**AUTH, "ConsistencyLevel": "eventual"}
CAST = "/groups/g1/transitiveMembers/microsoft.graph.user"


def fixture(size: int = 150) -> dict[str, Any]:
    users = [user(f"u{index:03d}") for index in range(size)]
    return {
        "users": users,
        "groups": [{"id": "g1", "displayName": "One"}, {"id": "g2", "displayName": "Two"}, {"id": "g3"}],
        "members": {"g1": ["g2", "u000", "device-9"], "g2": [u["id"] for u in users] + ["g1"]},
    }


@pytest.fixture
def graph() -> Iterator[FakeGraphServer]:
    with FakeGraphServer(fixture()) as server:
        yield server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def get(http: httpx.Client, graph: FakeGraphServer, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.get(graph.base_url + path, headers=AUTH if headers is None else headers)


def test_it_listens_on_loopback_with_an_ephemeral_port_and_stops_cleanly():
    server = FakeGraphServer(fixture()).start()
    port = server.port
    assert server.base_url == f"http://127.0.0.1:{port}/v1.0"
    with httpx.Client() as client:  # a kept-alive connection must not hold the stop up
        assert client.get(server.base_url + "/groups", headers=AUTH).status_code == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2
    server.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with pytest.raises(RuntimeError):
        _ = server.base_url


def test_a_cast_needs_consistency_level_and_count_on_every_page(graph, http):
    refused = get(http, graph, CAST + "?$count=true")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "Request_UnsupportedQuery"
    assert get(http, graph, CAST, EVENTUAL).status_code == 400  # header without $count=true
    first = get(http, graph, CAST + "?$count=true&$select=id", EVENTUAL).json()
    assert first["@odata.count"] == 150
    assert get(http, graph, "", {}).status_code == 400
    next_link = first["@odata.nextLink"]
    assert http.get(next_link, headers=AUTH).status_code == 400  # Graph does not carry the header over
    again = get(http, graph, CAST + "?$count=true&$select=id", EVENTUAL).json()
    second = http.get(again["@odata.nextLink"], headers=EVENTUAL).json()
    assert "@odata.count" not in second  # only on the first page
    assert len(again["value"]) + len(second["value"]) == 150


def test_count_without_the_header_is_silently_ignored(graph, http):
    answer = get(http, graph, "/groups?$count=true")
    assert answer.status_code == 200
    assert "@odata.count" not in answer.json()


def test_top_defaults_to_100_allows_999_and_refuses_more(graph, http):
    first = get(http, graph, "/users").json()
    assert len(first["value"]) == 100
    assert "@odata.nextLink" in first
    assert len(get(http, graph, "/users?$top=999").json()["value"]) == 150
    too_big = get(http, graph, "/users?$top=1000")
    assert too_big.status_code == 400
    assert too_big.json()["error"]["code"] == "Request_BadRequest"


def test_the_page_cap_applies_under_top_and_next_links_are_opaque_and_whole(graph, http):
    graph.page_cap = 40
    seen: list[str] = []
    link: str | None = graph.base_url + "/users?$top=999&$select=id"
    while link:
        body = http.get(link, headers=AUTH).json()
        assert len(body["value"]) <= 40
        seen += [item["id"] for item in body["value"]]
        link = body.get("@odata.nextLink")
        if link:
            assert "$skiptoken=" in link
            assert "$select=id" in link
            token = link.split("$skiptoken=")[1]
            assert "40" not in token.split("-")  # not an offset in disguise
    assert len(seen) == 150 == len(set(seen))
    bad = get(http, graph, "/users?$skiptoken=forged")
    assert bad.status_code == 400


def test_select_is_honoured_and_users_default_to_graphs_default_properties(graph, http):
    selected = get(http, graph, "/users?$select=id,mail,accountEnabled&$top=1").json()
    assert selected["@odata.context"].endswith("$metadata#users(id,mail,accountEnabled)")
    assert set(selected["value"][0]) == {"id", "mail", "accountEnabled"}
    plain = get(http, graph, "/users?$top=1").json()["value"][0]
    assert "accountEnabled" not in plain
    assert "userPrincipalName" in plain
    unset = get(http, graph, "/users?$select=id,jobTitle&$top=1").json()["value"][0]
    assert unset == {"id": "u000", "jobTitle": None}


def test_uncast_member_lists_carry_odata_type_and_resolve_nesting(graph, http):
    direct = get(http, graph, "/groups/g1/members").json()
    assert direct["@odata.context"].endswith("$metadata#directoryObjects")
    assert [(i["@odata.type"], i["id"]) for i in direct["value"]] == [
        ("#microsoft.graph.group", "g2"),
        ("#microsoft.graph.user", "u000"),
    ]
    graph.page_cap = 999
    transitive = get(http, graph, "/groups/g1/transitiveMembers?$top=999").json()["value"]
    types = {item["@odata.type"] for item in transitive}
    assert types == {"#microsoft.graph.user", "#microsoft.graph.group"}
    assert len([i for i in transitive if i["@odata.type"] == "#microsoft.graph.user"]) == 150
    cast = get(http, graph, CAST + "?$count=true&$top=999", EVENTUAL).json()
    assert cast["@odata.context"].endswith("$metadata#users")
    assert all("@odata.type" not in item for item in cast["value"])  # as in the documented example


def test_errors_have_graphs_shape_and_a_request_id(graph, http):
    documented = json.loads((examples_dir() / "error-403-authorization-requestdenied.json").read_text())
    graph.granted_permissions = frozenset({"User.Read.All"})
    denied = get(http, graph, "/groups")
    assert denied.status_code == 403
    body = denied.json()
    assert set(body) == set(documented)
    assert set(body["error"]) == set(documented["error"])
    assert set(body["error"]["innerError"]) == set(documented["error"]["innerError"])
    assert body["error"]["code"] == documented["error"]["code"]
    assert denied.headers["request-id"] == body["error"]["innerError"]["request-id"]
    graph.granted_permissions = None
    missing = get(http, graph, "/groups/nope/transitiveMembers")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "Request_ResourceNotFound"


def test_member_users_come_back_in_the_documented_limited_shape_without_a_user_permission(graph, http):
    # permissions-overview: "only the object type and ID are returned and
    # other properties have the value null"; collections come back empty.
    graph.granted_permissions = frozenset({"GroupMember.Read.All"})
    items = get(http, graph, CAST + "?$count=true&$select=id,mail,accountEnabled,assignedLicenses", EVENTUAL).json()
    assert items["value"][0] == {
        "@odata.type": "#microsoft.graph.user",
        "id": "u000",
        "mail": None,
        "accountEnabled": None,
        "assignedLicenses": [],
    }
    uncast = get(http, graph, "/groups/g1/members").json()["value"]
    limited_user = next(item for item in uncast if item["id"] == "u000")
    assert limited_user["@odata.type"] == "#microsoft.graph.user"
    assert limited_user["displayName"] is None and limited_user["userPrincipalName"] is None
    group = next(item for item in uncast if item["id"] == "g2")
    assert group["displayName"] == "Two"  # groups stay readable with a group permission
    assert get(http, graph, "/users").status_code == 403
    graph.limited_information = "absent"
    items = get(http, graph, CAST + "?$count=true&$select=id,mail", EVENTUAL).json()
    assert items["value"][0] == {"@odata.type": "#microsoft.graph.user", "id": "u000"}


def test_a_fixture_user_without_account_enabled_is_served_enabled(graph, http):
    graph.add_user({"id": "bare", "mail": "bare@school.example"}, groups=["g1"])
    items = get(http, graph, CAST + "?$count=true&$select=id,accountEnabled,userPrincipalName", EVENTUAL).json()
    bare = next(item for item in items["value"] if item["id"] == "bare")
    assert bare == {"id": "bare", "accountEnabled": True, "userPrincipalName": None}


def test_a_bearer_token_is_required_and_never_logged(graph, http):
    empty = get(http, graph, "/groups", {})
    assert empty.status_code == 401
    assert empty.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert empty.json()["error"]["message"] == "Access token is empty."
    assert get(http, graph, "/groups", {"Authorization": "Basic dTpw"}).status_code == 401
    assert get(http, graph, "/groups").status_code == 200
    assert [r.authorized for r in graph.requests] == [False, False, True]
    assert FAKE_TOKEN not in repr(graph.requests)


def test_only_listed_tokens_are_accepted_when_tokens_are_given(http):
    with FakeGraphServer(fixture(), tokens=["right"]) as graph:
        assert get(http, graph, "/groups", {"Authorization": "Bearer wrong"}).status_code == 401
        assert get(http, graph, "/groups", {"Authorization": "Bearer right"}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "query", "units"),
    [
        ("GET", "/users", {}, 2),
        ("GET", "/users", {"$select": "id"}, 1),
        ("GET", "/users", {"$select": "id", "$top": "10"}, 1),
        ("GET", "/groups/g1/members", {}, 3),
        ("GET", "/groups/g1/transitiveMembers", {}, 5),
        ("GET", "/groups/g1/transitiveMembers/microsoft.graph.user", {"$select": "id"}, 4),
        ("GET", "/groups/g1/transitiveMembers", {"$expand": "x"}, 6),
        ("GET", "/groups", {}, 1),
        ("GET", "/groups", {"$select": "id"}, 1),
    ],
)
def test_resource_units_follow_the_documented_table(method, path, query, units):
    assert resource_units(method, path, query) == units


def test_the_request_log_records_cost_headers_and_query(graph, http):
    get(http, graph, CAST + "?$count=true&$select=id", {**EVENTUAL, "client-request-id": "c-1"})
    (record,) = graph.requests
    assert record.path == CAST
    assert record.query == {"$count": "true", "$select": "id"}
    assert record.consistency_level == "eventual"
    assert record.client_request_id == "c-1"
    assert record.resource_units == 4 == graph.resource_units_used
    assert record.status == 200
    assert not record.is_next_page


def test_injected_throttle_carries_a_fractional_retry_after_in_graphs_429_shape(graph, http):
    graph.inject(Fault.throttle(), path="/groups")
    throttled = get(http, graph, "/groups")
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2.128"
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert get(http, graph, "/groups").status_code == 200
    assert graph.pending_faults == 0


def test_faults_match_by_path_glob_and_can_skip_requests(graph, http):
    graph.inject(Fault.unavailable(), path="/groups/g2/*", skip=1, times=2)
    assert get(http, graph, "/groups").status_code == 200  # not matching
    statuses = [get(http, graph, "/groups/g2/members").status_code for _ in range(4)]
    assert statuses == [200, 503, 503, 200]
    graph.inject(Fault.gateway_timeout())
    graph.clear_faults()
    assert get(http, graph, "/groups").status_code == 200


def test_latency_reset_truncated_and_not_json_faults(graph, http):
    graph.inject(Fault.latency(0.2))
    started = time.monotonic()
    assert get(http, graph, "/groups").status_code == 200
    assert time.monotonic() - started >= 0.2
    graph.inject(Fault.reset())
    with pytest.raises(httpx.TransportError):
        get(http, graph, "/groups")
    graph.inject(Fault.truncated())
    with pytest.raises(httpx.RemoteProtocolError):
        get(http, graph, "/groups")
    graph.inject(Fault.not_json())
    odd = get(http, graph, "/groups")
    assert odd.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        odd.json()


def test_the_directory_can_change_between_runs(graph, http):
    graph.remove_group("g2")
    assert get(http, graph, "/groups/g2/members").status_code == 404
    graph.add_group({"id": "g4"}, members=["u001"])
    graph.add_user(user("new"), groups=["g4"])
    ids = [i["id"] for i in get(http, graph, "/groups/g4/members").json()["value"]]
    assert ids == ["u001", "new"]
    graph.remove_member("g4", "u001")
    assert [i["id"] for i in get(http, graph, "/groups/g4/members").json()["value"]] == ["new"]
    graph.load({"users": [], "groups": []})
    assert get(http, graph, "/groups").json()["value"] == []
    assert graph.fixture() == {"users": [], "groups": [], "members": {}}


def test_batch_answers_each_request_and_refuses_more_than_20(graph, http):
    requests = [
        {"id": "1", "method": "GET", "url": CAST + "?$count=true&$select=id", "headers": {"ConsistencyLevel": "eventual"}},
        {"id": "2", "method": "GET", "url": "/groups/nope"},
    ]
    answer = http.post(graph.base_url + "/$batch", headers=AUTH, json={"requests": requests})
    assert answer.status_code == 200
    by_id = {item["id"]: item for item in answer.json()["responses"]}
    assert by_id["1"]["status"] == 200
    assert by_id["1"]["body"]["@odata.count"] == 150
    assert by_id["2"]["status"] == 404
    assert [r.batched for r in graph.requests] == [True, True, False]
    many = [{"id": str(i), "method": "GET", "url": "/groups"} for i in range(21)]
    assert http.post(graph.base_url + "/$batch", headers=AUTH, json={"requests": many}).status_code == 400


def test_unknown_segments_and_versions_are_bad_requests(graph, http):
    assert get(http, graph, "/devices").status_code == 400
    assert http.get(graph.base_url.replace("/v1.0", "/beta") + "/groups", headers=AUTH).status_code == 400
    assert get(http, graph, "/groups/g1/transitiveMembers/microsoft.graph.device?$count=true", EVENTUAL).status_code == 400


# -- the model without sockets: the whole SDK over FakeGraph.transport() ----------------


sdk_over = sdk_directory


def test_the_model_answers_without_a_server():
    model = FakeGraph(fixture(3))
    with httpx.Client(transport=model.transport()) as client:
        answer = client.get("https://graph.microsoft.com/v1.0/users?$select=id,mail", headers=AUTH)
    assert answer.status_code == 200
    assert [set(item) for item in answer.json()["value"]] == [{"id", "mail"}] * 3
    assert answer.json()["@odata.context"] == "https://graph.microsoft.com/v1.0/$metadata#users(id,mail)"
    assert not hasattr(model, "port")


async def test_paging_through_the_sdk_follows_every_next_link_without_sockets():
    model = FakeGraph(fixture(40), page_cap=7)
    directory = sdk_over(model.transport())
    members = await directory.group_members("g2")
    assert len(members) == 40
    reads = model.requests
    assert len(reads) == 6  # ceil(40 / 7)
    assert [r.is_next_page for r in reads] == [False] + [True] * 5
    assert all(r.query["$select"] == ",".join(DirectoryUser.GRAPH_SELECT) for r in reads)  # kept in next links
    assert all(r.query["$top"] == "999" and r.consistency_level == "eventual" for r in reads)


async def test_select_decides_what_comes_back_through_the_sdk():
    model = FakeGraph(fixture(2))
    directory = sdk_over(model.transport())
    groups = await directory.list_groups()
    assert {g.id for g in groups} == {"g1", "g2", "g3"}
    assert model.requests[0].query["$select"] == ",".join(DirectoryGroup.GRAPH_SELECT)
    async with httpx.AsyncClient(transport=model.transport()) as client:
        plain = (await client.get("https://graph.microsoft.com/v1.0/users/u000", headers=AUTH)).json()
    assert "accountEnabled" not in plain and "userPrincipalName" in plain  # Graph's default properties


async def test_a_client_that_drops_consistency_level_on_a_later_page_is_refused():
    model = FakeGraph(fixture(30), page_cap=10)

    def forgetful(request: httpx.Request) -> httpx.Response:
        if "$skiptoken" in request.url.params:
            del request.headers["ConsistencyLevel"]  # Graph does not carry it over: a client must resend it
        return model.handle(request)

    directory = sdk_over(httpx.MockTransport(forgetful))
    with pytest.raises(DirectoryError) as caught:
        await directory.group_members("g2")
    assert caught.value.status == 400 and caught.value.code == "Request_UnsupportedQuery"
    assert [r.status for r in model.requests] == [200, 400]


async def test_wire_faults_through_the_transport_are_retried_like_socket_errors():
    model = FakeGraph(fixture(12), page_cap=5)
    model.inject(Fault.reset(), path="/groups/g2/*", skip=1)
    model.inject(Fault.truncated(), path="/groups/g2/*", skip=1)
    model.inject(Fault.not_json(), path="/groups/g1/*")
    directory = sdk_over(model.transport())
    assert len(await directory.group_members("g2")) == 12
    assert [r.fault for r in model.requests].count("reset:200") == 1
    assert [r.fault for r in model.requests].count("truncated:200") == 1
    with pytest.raises(DirectoryError) as caught:
        await directory.group_members("g1")
    assert caught.value.code == "invalid_response"


def test_a_storm_fails_a_share_of_matching_requests_until_calm_and_counts_what_fired(graph, http):
    graph.storm([Fault.throttle(retry_after="0.1"), Fault.unavailable()], rate=0.5, path="/groups/*", seed=3)
    assert graph.storming
    assert all(get(http, graph, "/users").status_code == 200 for _ in range(10))  # not matching
    statuses = [get(http, graph, "/groups/g1").status_code for _ in range(60)]
    failed = [status for status in statuses if status != 200]
    assert set(failed) == {429, 503} and 10 < len(failed) < 50
    graph.inject(Fault.gateway_timeout(), path="/groups/*")  # a queued fault fires first
    assert get(http, graph, "/groups/g2").status_code == 504
    graph.calm()
    assert not graph.storming
    assert all(get(http, graph, "/groups/g1").status_code == 200 for _ in range(20))
    fired = graph.faults_fired
    assert fired["status:504"] == 1
    assert fired.get("status:429", 0) + fired.get("status:503", 0) == len(failed)
    assert [r.fault for r in graph.requests if r.fault].count("status:504") == 1
    with pytest.raises(ValueError, match="at least one fault"):
        graph.storm([], rate=0.5)
    with pytest.raises(ValueError, match="rate between 0 and 1"):
        graph.storm([Fault.reset()], rate=1.5)


def test_a_storm_of_resets_reaches_batch_requests_too(graph, http):
    batch = {"requests": [{"id": "1", "method": "GET", "url": "/users/u000"}]}
    graph.storm([Fault.reset()], rate=1.0, path="/$batch")
    with pytest.raises(httpx.TransportError):
        http.post(graph.base_url + "/$batch", headers=AUTH, json=batch)
    graph.calm()
    answer = http.post(graph.base_url + "/$batch", headers=AUTH, json=batch)
    assert answer.status_code == 200
