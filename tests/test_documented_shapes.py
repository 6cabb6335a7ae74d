"""Microsoft's documented responses, served as they are, through GraphDirectory and the real SDK.

The examples in ../shared/reference/graph/examples were saved from Graph's
documentation; the delta ones are exercised in test_delta.py. Here: member
pages, single users, ``$batch`` answers and error bodies. Where an example
was made with another ``$select`` than ours (so it lacks fields we ask for),
the read must refuse it as unreadable rather than guess: refusing is what
keeps a run from removing anyone.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from calm_azure_sync import DirectoryAccessError, DirectoryError

from .graph_helpers import example, sdk_directory

MEMBER_PAGES = [
    "group-members.json",
    "group-members-user-cast-search.json",
    "group-transitiveMembers.json",
    "group-transitiveMembers-user-cast.json",
]


def _serving(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=copy.deepcopy(body), headers=headers)

    return answer


@pytest.mark.parametrize("name", MEMBER_PAGES)
async def test_a_documented_member_page_without_the_fields_we_select_is_unreadable_not_empty(name):
    # These examples $select only displayName/id (or mail): a page like that cannot say who is
    # enabled or what their address is, so the read fails (the run holds) instead of guessing.
    directory = sdk_directory(httpx.MockTransport(_serving(example(name))))
    with pytest.raises(DirectoryAccessError) as caught:
        await directory.group_members("g1")
    assert caught.value.code == "users_not_readable"


@pytest.mark.parametrize("name", MEMBER_PAGES)
async def test_a_documented_member_page_with_our_fields_gives_its_users(name):
    page = example(name)
    for item in page["value"]:
        item.setdefault("userPrincipalName", f"{item['id']}@contoso.com")
        item["accountEnabled"] = True
    users = await sdk_directory(httpx.MockTransport(_serving(page))).group_members("g1")
    assert [user.id for user in users] == [item["id"] for item in page["value"]]
    assert [user.display_name for user in users] == [item.get("displayName") for item in page["value"]]


async def test_the_documented_user_is_unreadable_without_account_enabled_and_read_with_it():
    body = example("user-get.json")
    directory = sdk_directory(httpx.MockTransport(_serving(body)))
    with pytest.raises(DirectoryAccessError) as caught:
        await directory.lookup_users([body["id"]])
    assert caught.value.code == "users_not_readable"  # never None: None would mean "gone"
    found = await sdk_directory(httpx.MockTransport(_serving({**body, "accountEnabled": True}))).lookup_users(
        [body["id"]]
    )
    user = found[body["id"]]
    assert user is not None and user.email == "AdeleV@contoso.com" and (user.given_name, user.surname) == (
        "Adele",
        "Vance",
    )


async def test_the_documented_user_without_an_id_is_refused():
    directory = sdk_directory(httpx.MockTransport(_serving(example("user-get-select.json"))))
    with pytest.raises(DirectoryError):
        await directory.lookup_users(["87d349ed-44d7-43e1-9a83-5f2406dee5bd"])


def _batch_answer(items_for: Any) -> Any:
    """A $batch endpoint answering each sub-request with ``items_for(index, url)``, in reverse order."""

    def answer(request: httpx.Request) -> httpx.Response:
        asked = json.loads(request.content)["requests"]
        responses = [{**items_for(index, item["url"]), "id": item["id"]} for index, item in enumerate(asked)]
        return httpx.Response(200, json={"responses": list(reversed(responses))})  # any order, as documented

    return answer


DOCUMENTED = {item["id"]: item for item in example("batch-response.json")["responses"]}


@pytest.mark.parametrize(
    ("documented", "error", "code"),
    [
        ("2", DirectoryAccessError, None),  # 403 with an empty code
        ("3", DirectoryAccessError, "Authorization_RequestDenied"),
        ("4", DirectoryError, "Request_BadRequest"),  # 405: not an access problem
    ],
)
async def test_a_documented_batch_error_item_fails_the_lookup_with_its_own_code(documented, error, code):
    user = {**example("user-get.json"), "accountEnabled": True}

    def items_for(index: int, url: str) -> dict[str, Any]:
        if index == 1:
            return {key: value for key, value in DOCUMENTED[documented].items() if key != "id"}
        return {"status": 200, "headers": {}, "body": {**user, "id": url.split("/")[2].split("?")[0]}}

    directory = sdk_directory(httpx.MockTransport(_batch_answer(items_for)))
    with pytest.raises(error) as caught:
        await directory.lookup_users(["u-a", "u-b", "u-c"])
    assert caught.value.code == code
    assert isinstance(caught.value, DirectoryAccessError) == (error is DirectoryAccessError)


async def test_documented_batch_answers_in_any_order_are_matched_by_id_and_404_is_none():
    user = {**example("user-get.json"), "accountEnabled": True}

    def items_for(index: int, url: str) -> dict[str, Any]:
        object_id = url.split("/")[2].split("?")[0]
        if object_id == "gone":
            return {"status": 404, "headers": {}, "body": {"error": {"code": "Request_ResourceNotFound", "message": "x"}}}
        return {"status": 200, "headers": DOCUMENTED["1"]["headers"], "body": {**user, "id": object_id}}

    found = await sdk_directory(httpx.MockTransport(_batch_answer(items_for))).lookup_users(["u-a", "gone", "u-c"])
    assert found["gone"] is None
    assert {key: value.id for key, value in found.items() if value is not None} == {"u-a": "u-a", "u-c": "u-c"}


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [("error-generic-shape.json", 416, "invalidRange"), ("error-501-notimplemented.json", 501, "NotImplemented")],
)
async def test_documented_error_bodies_are_directory_errors_with_their_code(name, status, code):
    directory = sdk_directory(httpx.MockTransport(_serving(example(name), status)))
    with pytest.raises(DirectoryError) as caught:
        await directory.group_members("g1")
    assert caught.value.code == code and caught.value.status == status


async def test_the_documented_429_is_waited_out_then_the_read_goes_on():
    page = example("group-transitiveMembers-user-cast.json")
    for item in page["value"]:
        item.update(userPrincipalName="joseph@contoso.com", accountEnabled=True)
    answers = [httpx.Response(429, json=example("error-429.json"), headers={"Retry-After": "0.01"}),
               httpx.Response(200, json=page)]

    def answer(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    users = await sdk_directory(httpx.MockTransport(answer)).group_members("g1")
    assert [user.display_name for user in users] == ["Joseph Price"]
