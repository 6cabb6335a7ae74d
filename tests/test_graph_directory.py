"""GraphDirectory through the real msgraph-sdk: over the fake server on 127.0.0.1, and over httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from kiota_http.middleware import RetryHandler
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory

from calm_azure_sync import (
    ConfigError,
    DirectoryAccessError,
    DirectoryError,
    GraphDirectory,
    GroupNotFoundError,
    InMemoryDirectory,
)
from calm_azure_sync.directory.graph import GraphRetryHandler, RetryPolicy, parse_retry_after
from calm_azure_sync.model import DirectoryGroup, DirectoryUser
from calm_azure_sync.testing.fake_graph import FakeGraphServer, Fault

from .graph_helpers import (
    CLIENT_SECRET,
    FAKE_TOKEN,
    TENANT_ID,
    FakeCredential,
    RecordingSleep,
    directory_for,
    example,
    user,
)

pytestmark = pytest.mark.wire


def fixture_with(group_size: int, *, extra_groups: int = 0) -> dict[str, Any]:
    users = [user(f"u{index:04d}") for index in range(group_size)]
    groups = [{"id": "g1", "displayName": "Group 1"}] + [
        {"id": f"x{index}", "displayName": f"Extra {index}"} for index in range(extra_groups)
    ]
    return {"users": users, "groups": groups, "members": {"g1": [u["id"] for u in users]}}


@pytest.fixture
def server() -> Iterator[FakeGraphServer]:
    with FakeGraphServer(fixture_with(23, extra_groups=3), page_cap=5) as running:
        yield running


async def read_members(server: FakeGraphServer, group_id: str = "g1", **kwargs: Any) -> tuple[list[DirectoryUser], RecordingSleep]:
    directory, sleep = directory_for(server, **kwargs)
    async with directory:
        return list(await directory.group_members(group_id)), sleep


# -- requests on the wire ------------------------------------------------------------


async def test_members_are_read_page_by_page_with_the_advanced_query_on_every_page(server):
    members, _ = await read_members(server)
    assert sorted(u.id for u in members) == [f"u{i:04d}" for i in range(23)]
    requests = server.requests
    assert len(requests) == 5  # ceil(23 / 5): the paging minimum
    for request in requests:
        assert request.path == "/groups/g1/transitiveMembers/graph.user"
        assert request.consistency_level == "eventual"  # Graph does not carry it to the next page
        assert request.query["$count"] == "true"
        assert request.query["$top"] == "999"
        assert request.query["$select"].split(",") == list(DirectoryUser.GRAPH_SELECT)
        assert request.status == 200
    assert [r.is_next_page for r in requests] == [False, True, True, True, True]


async def test_list_groups_selects_only_what_the_model_reads(server):
    directory, _ = directory_for(server)
    async with directory:
        groups = await directory.list_groups()
    assert {g.id for g in groups} == {"g1", "x0", "x1", "x2"}
    assert groups[0] == DirectoryGroup("g1", "Group 1")
    (request,) = server.requests
    assert request.path == "/groups"
    assert request.query == {"$select": ",".join(DirectoryGroup.GRAPH_SELECT), "$top": "999"}
    assert request.resource_units == 1


async def test_the_token_is_sent_to_a_custom_host_with_the_graph_scope(server):
    credential = FakeCredential()
    server._tokens = frozenset({FAKE_TOKEN})  # the fake now refuses any other token
    members, _ = await read_members(server, credential=credential)
    assert len(members) == 23
    assert all(r.authorized for r in server.requests)
    assert set(credential.scopes_asked) == {("https://graph.microsoft.com/.default",)}


async def test_no_token_is_fetched_for_a_host_other_than_the_configured_one(server):
    credential = FakeCredential()
    directory, _ = directory_for(server, credential=credential)
    await directory.aclose()
    provider = directory._adapter._authentication_provider.access_token_provider
    assert provider.get_allowed_hosts_validator().get_allowed_hosts() == ["127.0.0.1"]
    assert await provider.get_authorization_token("https://evil.example/v1.0/groups") == ""
    assert await provider.get_authorization_token(server.base_url + "/groups") == FAKE_TOKEN
    assert len(credential.scopes_asked) == 1


async def test_tenant_comes_from_the_credential_and_a_different_one_is_refused(server):
    directory, _ = directory_for(server)
    await directory.aclose()
    assert directory.tenant_id == TENANT_ID
    with pytest.raises(ConfigError, match="differs from the credential"):
        GraphDirectory.from_credential(FakeCredential(), base_url=server.base_url, tenant_id="other-tenant")
    told = GraphDirectory.from_credential(FakeCredential(tenant_id=None), base_url=server.base_url, tenant_id="t-1")
    await told.aclose()
    assert told.tenant_id == "t-1"


def test_plain_http_is_refused_for_anything_but_localhost():
    with pytest.raises(ConfigError, match="https"):
        GraphDirectory.from_credential(FakeCredential(), base_url="http://graph.example.org/v1.0")


async def test_a_changed_directory_is_read_afresh(server):
    assert len((await read_members(server))[0]) == 23
    server.add_user(user("new-one"), groups=["g1"])
    server.remove_user("u0000")
    ids = {u.id for u in (await read_members(server))[0]}
    assert "new-one" in ids
    assert "u0000" not in ids
    assert len(ids) == 23


# -- throttling and outages ----------------------------------------------------------


async def test_a_fractional_retry_after_is_honoured_exactly(server):
    server.inject(Fault.throttle(retry_after="2.128"), path="/groups/g1/*", skip=2)
    members, sleep = await read_members(server)
    assert len(members) == 23
    assert sleep.calls == [2.128]
    assert [r.status for r in server.requests].count(429) == 1
    assert len(server.requests) == 6  # the minimum plus the one throttled request


async def test_an_outage_burst_is_waited_out_with_jittered_backoff(server):
    server.inject(Fault.unavailable(), path="/groups/g1/*", times=2)
    server.inject(Fault.gateway_timeout(), path="/groups/g1/*")
    members, sleep = await read_members(server)
    assert len(members) == 23
    assert len(sleep.calls) == 3
    policy = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05, jitter=0.5)
    for retry, delay in enumerate(sleep.calls, start=1):
        full = min(policy.max_delay, policy.base_delay * 2 ** (retry - 1))
        assert full * (1 - policy.jitter) <= delay <= full


async def test_persistent_503_gives_up_after_max_attempts_with_graphs_code(server):
    server.inject(Fault.unavailable(), path="/groups/g1/*", times=10)
    with pytest.raises(DirectoryError) as caught:
        await read_members(server, retry=RetryPolicy(max_attempts=3, base_delay=0.0))
    assert caught.value.status == 503
    assert caught.value.code == "serviceNotAvailable"
    assert caught.value.request_id
    assert "after 3 attempts" in str(caught.value)
    assert len(server.requests) == 3


async def test_a_retry_after_beyond_the_budget_ends_the_read_without_waiting(server):
    server.inject(Fault.throttle(retry_after="500"), path="/groups/g1/*")
    with pytest.raises(DirectoryError) as caught:
        await read_members(server, retry=RetryPolicy(total_budget_seconds=60))
    assert caught.value.status == 429
    assert caught.value.code == "TooManyRequests"


async def test_the_budget_is_shared_by_all_pages_of_one_read(server):
    for skip in (0, 1, 2):
        server.inject(Fault.throttle(retry_after="4"), path="/groups/g1/*", skip=skip)
    with pytest.raises(DirectoryError) as caught:
        await read_members(server, retry=RetryPolicy(total_budget_seconds=10))
    assert caught.value.status == 429
    # 4 + 4 fit the budget of 10, the third wait does not.


async def test_a_connection_reset_and_a_cut_off_body_are_retried(server):
    server.inject(Fault.reset(), path="/groups/g1/*")
    server.inject(Fault.truncated(), path="/groups/g1/*", skip=1)
    members, sleep = await read_members(server)
    assert len(members) == 23
    assert len(sleep.calls) == 2


async def test_an_unreachable_graph_is_a_directory_error(server):
    base_url = server.base_url
    server.stop()
    directory = GraphDirectory.from_credential(
        FakeCredential(), base_url=base_url, retry=RetryPolicy(max_attempts=2, base_delay=0.0)
    )
    async with directory:
        with pytest.raises(DirectoryError) as caught:
            await directory.list_groups()
    assert caught.value.code == "connection_error"


# -- errors --------------------------------------------------------------------------


async def test_a_body_that_is_not_json_is_a_directory_error_not_a_decode_error(server):
    server.inject(Fault.not_json(), path="/groups/g1/*", skip=1)
    with pytest.raises(DirectoryError) as caught:
        await read_members(server)
    assert type(caught.value) is DirectoryError
    assert caught.value.code == "invalid_response"
    assert not isinstance(caught.value.__cause__, json.JSONDecodeError)


async def test_403_names_the_missing_permissions(server):
    server.granted_permissions = frozenset({"User.Read.All"})
    with pytest.raises(DirectoryAccessError) as caught:
        await read_members(server)
    error = caught.value
    assert error.status == 403
    assert error.code == "Authorization_RequestDenied"
    assert "GroupMember.Read.All" in error.missing_permissions
    assert "Directory.Read.All" in error.missing_permissions
    assert "User.Read.All" in str(error)
    assert error.request_id


async def test_401_mid_run_is_an_access_error(server):
    server.inject(Fault.unauthorized(), path="/groups/g1/*", skip=2)
    with pytest.raises(DirectoryAccessError) as caught:
        await read_members(server)
    assert caught.value.status == 401
    assert "GroupMember.Read.All" in caught.value.missing_permissions
    assert len(server.requests) == 3


async def test_an_unknown_group_is_group_not_found(server):
    with pytest.raises(GroupNotFoundError) as caught:
        await read_members(server, group_id="no-such-group")
    assert caught.value.group_id == "no-such-group"
    assert caught.value.code == "Request_ResourceNotFound"
    assert caught.value.request_id


async def test_a_group_id_is_escaped_into_the_path(server):
    with pytest.raises(GroupNotFoundError):
        await read_members(server, group_id="g1/../../users")
    assert server.requests[0].path.startswith("/groups/g1%2F..%2F..%2Fusers")


async def test_no_token_or_secret_in_errors_reprs_or_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.granted_permissions = frozenset()
    directory, _ = directory_for(server, retry=RetryPolicy(max_attempts=2, base_delay=0.0))
    seen: list[str] = [repr(directory), str(directory)]
    async with directory:
        for fault in (Fault.forbidden(), Fault.unauthorized(), Fault.not_json(), Fault.throttle("0")):
            server.granted_permissions = None
            server.inject(fault, times=2)
            with pytest.raises(DirectoryError) as caught:
                await directory.group_members("g1")
            seen += [str(caught.value), repr(caught.value), repr(caught.value.__cause__)]
    seen += [caplog.text, repr(server.requests), repr(server)]
    for text in seen:
        assert FAKE_TOKEN not in text
        assert CLIENT_SECRET not in text
        assert "Bearer" not in text


# -- paging property -----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeGraphServer]:
    with FakeGraphServer() as running:
        yield running


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(group_size=st.integers(0, 40), page_cap=st.integers(1, 12), duplicates=st.booleans())
def test_any_page_size_gives_the_same_members(shared_server, group_size, page_cap, duplicates):
    fixture = fixture_with(group_size)
    if duplicates:  # the same users reached twice, through a nested group
        fixture["groups"].append({"id": "nested"})
        fixture["members"]["nested"] = [u["id"] for u in fixture["users"]]
        fixture["members"]["g1"] = fixture["members"]["g1"] + ["nested"]
    shared_server.load(fixture)
    shared_server.page_cap = page_cap
    shared_server.clear_log()
    members, _ = asyncio.run(read_members(shared_server))
    expected = asyncio.run(InMemoryDirectory.from_dict(fixture).group_members("g1"))
    assert sorted(members, key=lambda u: u.id) == sorted(expected, key=lambda u: u.id)
    assert len(shared_server.requests) == max(1, -(-group_size // page_cap))


# -- concurrency ---------------------------------------------------------------------


async def test_concurrent_reads_stay_within_max_concurrency():
    fixture = fixture_with(4, extra_groups=0)
    for index in range(8):
        fixture["groups"].append({"id": f"c{index}"})
        fixture["members"][f"c{index}"] = ["u0000", "u0001"]
    with FakeGraphServer(fixture, latency=0.05) as server:
        directory, _ = directory_for(server, max_concurrency=2)
        async with directory:
            answers = await asyncio.gather(*(directory.group_members(f"c{i}") for i in range(8)))
        assert all(len(a) == 2 for a in answers)
        assert server.peak_concurrency == 2


# -- over httpx.MockTransport: the middleware without sockets -------------------------

GRAPH = "https://graph.microsoft.com/v1.0"


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> GraphServiceClient:
    http_client = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(transport=httpx.MockTransport(handler))
    )
    auth = AzureIdentityAuthenticationProvider(
        FakeCredential(), scopes=["https://graph.microsoft.com/.default"], allowed_hosts=["graph.microsoft.com"]
    )
    adapter = GraphRequestAdapter(auth, client=http_client)
    adapter.base_url = GRAPH
    return GraphServiceClient(request_adapter=adapter)


def page(values: list[dict[str, Any]], next_link: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"value": values}
    if next_link:
        body["@odata.nextLink"] = next_link
    return httpx.Response(200, json=body)


def pipeline_of(directory: GraphDirectory) -> list[object]:
    middleware = directory._adapter._http_client._transport.pipeline._first_middleware
    found = []
    while middleware is not None:
        found.append(middleware)
        middleware = middleware.next
    return found


async def test_our_retry_handler_replaces_kiotas_in_a_callers_client():
    directory = GraphDirectory(mock_client(lambda request: page([])))
    assert directory.retry_wiring == "replaced"
    kinds = [type(m) for m in pipeline_of(directory)]
    assert GraphRetryHandler in kinds
    assert RetryHandler not in kinds


@pytest.mark.parametrize(
    "foreign",
    [
        "https://evil.example/v1.0/groups/g1/transitiveMembers/graph.user?$skiptoken=x",
        "https://graph.microsoft.com:8443/v1.0/groups?$skiptoken=x",
        "http://graph.microsoft.com/v1.0/groups?$skiptoken=x",
        "https://user:pw@graph.microsoft.com/v1.0/groups?$skiptoken=x",
        "not a url at all",
    ],
)
async def test_a_next_link_outside_the_graph_origin_is_refused(foreign):
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return page([user("u1")], next_link=foreign)

    directory = GraphDirectory(mock_client(handler))
    with pytest.raises(DirectoryError) as caught:
        await directory.group_members("g1")
    assert caught.value.code in ("foreign_next_link", "invalid_response")
    assert len(calls) == 1


async def test_a_user_on_two_pages_is_returned_once_and_non_users_are_skipped():
    def handler(request: httpx.Request) -> httpx.Response:
        if "skiptoken" not in str(request.url):
            return page([user("u1"), user("u2")], next_link=f"{GRAPH}/groups/g1/transitiveMembers/graph.user?$skiptoken=2")
        return page([user("u2"), {"@odata.type": "#microsoft.graph.device", "id": "d1"}, user("u3")])

    members = await GraphDirectory(mock_client(handler)).group_members("g1")
    assert [u.id for u in members] == ["u1", "u2", "u3"]


async def test_a_next_link_that_repeats_is_refused():
    link = f"{GRAPH}/groups/g1/transitiveMembers/graph.user?$skiptoken=same"
    directory = GraphDirectory(mock_client(lambda request: page([user("u1")], next_link=link)))
    with pytest.raises(DirectoryError, match="same next link"):
        await directory.group_members("g1")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not valid JSON"),
        (b'{"value": [{"id": "u1"}', "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"novalue": true}', "no 'value' list"),
        (b'{"value": [42]}', "non-object item"),
        (b'{"value": [{"id": 42}]}', "should be a non-empty string"),
    ],
)
async def test_malformed_pages_are_directory_errors(body, fragment):
    directory = GraphDirectory(mock_client(lambda request: httpx.Response(200, content=body)))
    with pytest.raises(DirectoryError, match=fragment):
        await directory.list_groups()


async def test_an_error_without_a_graph_body_keeps_the_status():
    directory = GraphDirectory(mock_client(lambda request: httpx.Response(500, content=b"<html>oops</html>")))
    with pytest.raises(DirectoryError) as caught:
        await directory.list_groups()
    assert caught.value.status == 500
    assert caught.value.code is None


async def test_retry_after_on_503_is_honoured_through_the_sdk_pipeline():
    answers = iter([httpx.Response(503, headers={"Retry-After": "0.75"}), page([{"id": "g1"}])])
    sleep = RecordingSleep()
    directory = GraphDirectory(mock_client(lambda request: next(answers)), sleep=sleep)
    assert [g.id for g in await directory.list_groups()] == ["g1"]
    assert sleep.calls == [0.75]


# -- the retry policy ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2.128", 2.128), ("0", 0.0), ("7", 7.0), (" 1.5 ", 1.5), ("-1", None), ("soon", None), ("nan", None), (None, None)],
)
def test_retry_after_parsing(header, seconds):
    assert parse_retry_after(header) == seconds


def test_retry_after_as_an_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_backoff_is_capped_and_jittered_downwards_only():
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0, jitter=0.25)
    assert policy.delay(1, retry_after=None, jitter_draw=0.0) == 1.0
    assert policy.delay(3, retry_after=None, jitter_draw=0.0) == 4.0
    assert policy.delay(10, retry_after=None, jitter_draw=0.0) == 8.0
    assert policy.delay(10, retry_after=None, jitter_draw=0.999) == pytest.approx(8.0 * (1 - 0.25 * 0.999))
    assert policy.delay(10, retry_after="30", jitter_draw=0.5) == 30.0  # Graph's word beats max_delay


@pytest.mark.parametrize(
    "bad",
    [{"max_attempts": 0}, {"max_attempts": 1.5}, {"base_delay": -1}, {"jitter": 1.5}, {"total_budget_seconds": float("nan")}],
)
def test_a_bad_retry_policy_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        RetryPolicy(**bad)


def test_max_concurrency_must_be_positive():
    with pytest.raises(ConfigError):
        GraphDirectory(mock_client(lambda request: page([])), max_concurrency=0)


def test_importing_the_package_does_not_import_the_graph_sdk():
    code = "import sys, calm_azure_sync; assert not any(m.startswith(('msgraph', 'kiota')) for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("shape", ["null", "absent"])
async def test_member_users_in_the_limited_shape_mean_user_read_all_is_missing(server, shape):
    # Graph answers GroupMember.Read.All without User.Read.All with "limited
    # information" users: id and @odata.type, every other property null (or,
    # in the older shape, absent).
    server.granted_permissions = frozenset({"GroupMember.Read.All"})
    server.limited_information = shape
    with pytest.raises(DirectoryAccessError) as caught:
        await read_members(server)
    assert caught.value.missing_permissions == ("User.Read.All", "Directory.Read.All")
    assert caught.value.code == "users_not_readable"


# The documented response (permissions-overview, "Limited information returned
# for inaccessible member objects"), its inaccessible object turned into a user:
# "only the object type and ID are returned and other properties have the value null".
DOCUMENTED_LIMITED_USER = {
    "@odata.type": "#microsoft.graph.user",
    "id": "d282309e-f91d-43b6-badb-9e68aa4b4fc8",
    "accountEnabled": None,
    "displayName": None,
    "mail": None,
    "userPrincipalName": None,
    "givenName": None,
    "surname": None,
    "userType": None,
    "assignedLicenses": [],
    "onPremisesSyncEnabled": None,
    "creationType": None,
}


@pytest.mark.parametrize(
    "item",
    [
        DOCUMENTED_LIMITED_USER,
        {"@odata.type": "#microsoft.graph.user", "id": "d282309e-f91d-43b6-badb-9e68aa4b4fc8"},
        {"id": "d282309e-f91d-43b6-badb-9e68aa4b4fc8", "accountEnabled": None, "userPrincipalName": "a@b.org"},
        {"id": "d282309e-f91d-43b6-badb-9e68aa4b4fc8", "accountEnabled": True},
    ],
    ids=["documented-null-shape", "absent-shape", "accountEnabled-null", "userPrincipalName-absent"],
)
async def test_one_unreadable_user_on_a_later_page_makes_the_read_fail(server, item):
    def one_limited(body):
        body["value"][2] = dict(item)
        return body

    server.inject(Fault.rewrite(one_limited), path="/groups/g1/*", skip=1)
    with pytest.raises(DirectoryAccessError) as caught:
        await read_members(server)
    assert caught.value.code == "users_not_readable"
    assert "null" in str(caught.value)


async def test_a_readable_user_without_mail_or_upn_is_still_a_user(server):
    server.add_user(user("plain", mail=None, userPrincipalName=None), groups=["g1"])
    members, _ = await read_members(server)
    plain = next(u for u in members if u.id == "plain")
    assert plain.email is None and plain.account_enabled


# -- lookup_users ----------------------------------------------------------------------


async def lookup(server: FakeGraphServer, ids: list[str], **kwargs: Any) -> tuple[dict[str, Any], RecordingSleep]:
    directory, sleep = directory_for(server, **kwargs)
    async with directory:
        return dict(await directory.lookup_users(ids)), sleep


def wire(server: FakeGraphServer) -> list[Any]:
    return [r for r in server.requests if not r.batched]


async def test_lookup_of_45_ids_takes_3_batch_requests_with_select(server):
    ids = [f"u{i:04d}" for i in range(23)] + ["x0", "gone", *(f"missing-{i}" for i in range(20))]
    found, sleep = await lookup(server, ids)
    assert list(found) == ids
    assert [u.id for u in found.values() if u is not None] == [f"u{i:04d}" for i in range(23)]
    assert all(found[i] is None for i in ids[23:])  # a group's id, unknown ids
    assert found["u0001"] == DirectoryUser.from_graph(user("u0001"))
    assert [r.path for r in wire(server)] == ["/$batch"] * 3  # ceil(45 / 20)
    sub = [r for r in server.requests if r.batched]
    assert len(sub) == 45
    assert all(r.query["$select"] == ",".join(DirectoryUser.GRAPH_SELECT) for r in sub)
    assert sleep.calls == []


async def test_lookup_of_one_id_is_one_get_and_404_is_none(server):
    found, _ = await lookup(server, ["u0003"])
    assert found == {"u0003": DirectoryUser.from_graph(user("u0003"))}
    assert [(r.method, r.path) for r in server.requests] == [("GET", "/users/u0003")]
    server.clear_log()
    assert (await lookup(server, ["nobody"]))[0] == {"nobody": None}
    assert (await lookup(server, []))[0] == {}
    assert (await lookup(server, ["", "  "]))[0] == {"": None, "  ": None}
    assert [r.status for r in server.requests] == [404]  # blank ids are never sent


async def test_lookup_retries_a_throttled_sub_request_after_its_own_retry_after(server):
    server.inject(Fault.throttle("2.128"), path="/users/u0002", times=2)
    found, sleep = await lookup(server, ["u0001", "u0002", "u0003"])
    assert all(found[i] is not None for i in ("u0001", "u0002", "u0003"))
    assert sleep.calls == [2.128, 2.128]
    assert [r.path for r in wire(server)] == ["/$batch"] * 3
    assert [r.path for r in server.requests if r.batched][3:] == ["/users/u0002", "/users/u0002"]  # only it again


async def test_lookup_gives_up_on_a_sub_request_throttled_past_the_attempts(server):
    server.inject(Fault.unavailable(), path="/users/u0002", times=10)
    with pytest.raises(DirectoryError) as caught:
        await lookup(server, ["u0001", "u0002"], retry=RetryPolicy(max_attempts=3, base_delay=0.0))
    assert caught.value.status == 503
    assert "after 3 attempts" in str(caught.value)


async def test_lookup_survives_a_throttled_batch(server):
    server.inject(Fault.throttle("0.5"), path="/$batch")
    found, sleep = await lookup(server, ["u0001", "u0002"])
    assert None not in found.values() and sleep.calls == [0.5]


async def test_lookup_without_user_read_all_is_an_access_error(server):
    server.granted_permissions = frozenset({"GroupMember.Read.All"})
    for ids in (["u0001"], ["u0001", "u0002"]):
        with pytest.raises(DirectoryAccessError) as caught:
            await lookup(server, ids)
        assert caught.value.status == 403
        assert caught.value.missing_permissions == ("User.Read.All", "Directory.Read.All")


@pytest.mark.parametrize("ids", [["u0001"], ["u0001", "u0002"]])
async def test_a_looked_up_user_in_the_limited_shape_is_unreadable_not_none(server, ids):
    server.inject(Fault.rewrite(lambda body: {**DOCUMENTED_LIMITED_USER, "id": "u0001"}), path="/users/u0001")
    with pytest.raises(DirectoryAccessError) as caught:
        await lookup(server, ids)
    assert caught.value.code == "users_not_readable"


async def test_lookup_refuses_ids_that_are_not_strings(server):
    with pytest.raises(ConfigError):
        await lookup(server, "u0001")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        await lookup(server, ["u0001", 7])  # type: ignore[list-item]
    assert server.requests == []


# -- token failures are DirectoryAccessError(authentication_failed) ---------------------


class RaisingCredential:
    """A credential that fails the way a host's or azure-identity's may."""

    def __init__(self, error: BaseException) -> None:
        self._client_secret = CLIENT_SECRET
        self.error = error

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise self.error


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def every_read(directory: GraphDirectory) -> list[DirectoryError]:
    caught: list[DirectoryError] = []
    for read in (directory.list_groups(), directory.group_members("g1"), directory.lookup_users(["u0001"]),
                 directory.lookup_users(["u0001", "u0002"])):
        try:
            await read
        except DirectoryError as error:
            caught.append(error)
    return caught


async def test_an_unreachable_token_endpoint_is_authentication_failed(server):
    from azure.identity.aio import ClientSecretCredential

    credential = ClientSecretCredential(
        TENANT_ID, "client-id", CLIENT_SECRET, authority=f"https://127.0.0.1:{closed_port()}", retry_total=0
    )
    directory, _ = directory_for(server, credential=credential)
    async with credential, directory:
        errors = await every_read(directory)
    assert len(errors) == 4
    for error in errors:
        assert type(error) is DirectoryAccessError
        assert error.code == "authentication_failed"
        assert "ServiceRequestError" in str(error)
        assert CLIENT_SECRET not in str(error) and CLIENT_SECRET not in repr(error)
    assert server.requests == []  # no request went to Graph without a token


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(f"boom {CLIENT_SECRET}"),
        ValueError("bad tenant"),
        OSError("no route"),
    ],
    ids=["runtime-error-with-secret", "value-error", "os-error"],
)
async def test_a_credential_that_raises_anything_is_authentication_failed(server, error):
    directory, _ = directory_for(server, credential=RaisingCredential(error))
    async with directory:
        errors = await every_read(directory)
    assert len(errors) == 4
    for caught in errors:
        assert type(caught) is DirectoryAccessError and caught.code == "authentication_failed"
        assert type(error).__name__ in str(caught)
        assert CLIENT_SECRET not in str(caught)


async def test_azures_refusal_keeps_its_aadsts_text_but_never_the_secret(server):
    from azure.core.exceptions import ClientAuthenticationError

    refusal = ClientAuthenticationError(
        message=f"AADSTS7000215: Invalid client secret provided. secret was {CLIENT_SECRET}"
    )
    directory, _ = directory_for(server, credential=RaisingCredential(refusal))
    async with directory:
        with pytest.raises(DirectoryAccessError) as caught:
            await directory.list_groups()
    assert caught.value.code == "authentication_failed"
    assert "AADSTS7000215" in str(caught.value)
    assert CLIENT_SECRET not in str(caught.value)


async def test_a_client_built_by_the_host_with_a_failing_credential_is_authentication_failed(server):
    from azure.core.exceptions import ServiceRequestError

    auth = AzureIdentityAuthenticationProvider(RaisingCredential(ServiceRequestError("unreachable")),
                                               allowed_hosts=["127.0.0.1"])
    adapter = GraphRequestAdapter(auth, client=GraphClientFactory.create_with_default_middleware())
    adapter.base_url = server.base_url
    directory = GraphDirectory(GraphServiceClient(request_adapter=adapter), sleep=RecordingSleep())
    with pytest.raises(DirectoryAccessError) as caught:
        await directory.list_groups()
    assert caught.value.code == "authentication_failed"


# -- discovery for a large tenant: search, group kinds, member counts ---------------------


def groups_fixture() -> dict[str, Any]:
    documented = example("groups-list.json")["value"]  # Golf Assist (Unified), Golf Discussion
    names = ["Year 9 Science", "Science Dept", "ScienceTeachers", "Conscience Club", 'Quote "Sci" Group', "Staff"]
    groups = documented + [{"id": f"s{i}", "displayName": name, "securityEnabled": True} for i, name in enumerate(names)]
    users = [user(f"u{i}") for i in range(7)]
    return {"users": users, "groups": groups, "members": {"s0": ["u0", "u1", "s5"], "s5": ["u2", "u1"]}}


async def test_groups_carry_their_kind_as_graph_documents_it():
    with FakeGraphServer(groups_fixture()) as server:
        directory, _ = directory_for(server)
        async with directory:
            groups = {g.display_name: g for g in await directory.list_groups()}
    assert groups["Golf Assist"].group_types == ("Unified",)
    assert groups["Golf Assist"].mail_enabled is True and groups["Golf Assist"].security_enabled is False
    assert groups["Golf Discussion"].group_types == ()
    assert groups["Staff"].security_enabled is True and groups["Staff"].mail_enabled is None
    assert server.requests[0].query["$select"] == ",".join(DirectoryGroup.GRAPH_SELECT)


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("sci", {"Year 9 Science", "Science Dept", "ScienceTeachers", 'Quote "Sci" Group'}),
        ("SCIENCE dept", {"Science Dept"}),
        ("teach", {"ScienceTeachers"}),  # a capital starts a word
        ("ience", set()),  # tokenized, not a substring: "Conscience" is not found by "science" either
        ('sci" OR "displayName:golf', set()),  # a quote cannot open another clause
        ("golf", {"Golf Assist", "Golf Discussion"}),
        ("   ", None),  # blank: every group
    ],
)
async def test_search_is_server_side_with_consistency_level_on_every_page(search, expected):
    fixture = groups_fixture()
    with FakeGraphServer(fixture, page_cap=1) as server:
        directory, _ = directory_for(server)
        async with directory:
            found = await directory.list_groups(search=search)
        in_memory = await InMemoryDirectory.from_dict(fixture).list_groups(search=search)
    names = {g.display_name for g in found}
    assert names == (expected if expected is not None else {g["displayName"] for g in fixture["groups"]})
    assert {g.id for g in in_memory} == {g.id for g in found}
    if expected is not None:
        assert len(server.requests) == max(1, len(expected))  # pages of one
        assert all(r.consistency_level == "eventual" for r in server.requests)
        assert server.requests[0].query["$search"].startswith('"displayName:')
    else:
        assert all("$search" not in r.query for r in server.requests)


def test_the_fake_refuses_search_without_consistency_level_as_documented():
    documented = example("error-search-without-consistencylevel.json")["error"]
    with FakeGraphServer(groups_fixture()) as server, httpx.Client() as http:
        url = server.base_url + '/groups?$search="displayName:golf"'
        refused = http.get(url, headers={"Authorization": f"Bearer {FAKE_TOKEN}"})
        answered = http.get(url, headers={"Authorization": f"Bearer {FAKE_TOKEN}", "ConsistencyLevel": "eventual"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == documented["code"]
    assert refused.json()["error"]["message"] == documented["message"]
    assert [g["displayName"] for g in answered.json()["value"]] == ["Golf Assist", "Golf Discussion"]


async def test_member_count_is_one_request_and_matches_the_members():
    fixture = groups_fixture()
    with FakeGraphServer(fixture) as server:
        directory, _ = directory_for(server)
        async with directory:
            assert await directory.group_member_count("s0") == 3  # u0, u1, and u2 through s5
            assert await directory.group_member_count("s1") == 0
            with pytest.raises(GroupNotFoundError):
                await directory.group_member_count("nope")
        requests = server.requests
    assert [r.path for r in requests[:2]] == ["/groups/s0/transitiveMembers/graph.user/$count",
                                              "/groups/s1/transitiveMembers/graph.user/$count"]
    assert all(r.consistency_level == "eventual" for r in requests)
    assert await InMemoryDirectory.from_dict(fixture).group_member_count("s0") == 3


def test_the_fake_refuses_a_count_segment_without_consistency_level_as_documented():
    documented = example("error-count-without-consistencylevel.json")["error"]
    with FakeGraphServer(groups_fixture()) as server, httpx.Client() as http:
        url = server.base_url + "/groups/s0/transitiveMembers/microsoft.graph.user/$count"
        refused = http.get(url, headers={"Authorization": f"Bearer {FAKE_TOKEN}"})
        counted = http.get(url, headers={"Authorization": f"Bearer {FAKE_TOKEN}", "ConsistencyLevel": "eventual"})
    assert refused.status_code == 400
    assert (refused.json()["error"]["code"], refused.json()["error"]["message"]) == (
        documented["code"], documented["message"])
    assert counted.headers["Content-Type"].startswith("text/plain") and counted.text == "3"


async def test_a_search_that_is_not_a_string_is_a_config_error():
    with pytest.raises(ConfigError):
        await InMemoryDirectory.from_dict(groups_fixture()).list_groups(search=3)  # type: ignore[arg-type]
    with FakeGraphServer(groups_fixture()) as server:
        directory, _ = directory_for(server)
        async with directory:
            with pytest.raises(ConfigError):
                await directory.list_groups(search=["golf"])  # type: ignore[arg-type]


async def test_a_lookup_batch_that_fails_stops_the_others_retrying():
    # 40 ids: two $batch requests at once. One is refused (403), the other throttled again and
    # again: once the lookup has raised, nothing of it may still be sending requests.
    import asyncio
    import json as json_module

    import httpx

    from .graph_helpers import sdk_directory

    posts: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        items = json_module.loads(request.content)["requests"]
        posts.append(len(items))
        refused = any("u0000" in item["url"] for item in items)
        error = {"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}}
        return httpx.Response(200, json={"responses": [
            {"id": item["id"], "status": 403, "body": error} if refused
            else {"id": item["id"], "status": 429, "headers": {"Retry-After": "0.05"}, "body": {}}
            for item in items
        ]})

    directory = sdk_directory(httpx.MockTransport(answer), sleep=asyncio.sleep)
    async with directory:
        with pytest.raises(DirectoryAccessError):
            await directory.lookup_users([f"u{i:04d}" for i in range(40)])
        sent = len(posts)
        await asyncio.sleep(0.4)
    assert len(posts) == sent
