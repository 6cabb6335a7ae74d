"""``GraphDirectory.lookup_users`` and ``lookup_groups``: objects by id, one GET or JSON ``$batch`` requests of 20."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from ..errors import DirectoryError
from ..model import DirectoryGroup, DirectoryUser
from ._graph_common import (
    GROUP_READ_PERMISSIONS,
    USER_READ_PERMISSIONS,
    all_or_nothing,
    error_fields,
    json_object,
    status_error,
)
from ._items import user_item
from ._retry import RetryBudget, RetryBudgetOption, parse_retry_after
from ._sdk import (
    NATIVE,
    GroupItemRequestBuilder,
    Method,
    RequestInformation,
    ResponseHandlerOption,
    UserItemRequestBuilder,
)
from .protocol import lookup_ids

if TYPE_CHECKING:
    from .graph import GraphDirectory

BATCH_LIMIT = 20  # requests per JSON $batch, Graph's maximum

_Found = TypeVar("_Found", DirectoryUser, DirectoryGroup)


@attrs.frozen
class _Kind(Generic[_Found]):
    """What is looked up: the collection, the fields asked for, how an answer is read, who may read it."""

    collection: str
    noun: str
    select: tuple[str, ...]
    parse: Callable[[Mapping[str, Any], str, str], _Found]
    permissions: tuple[str, ...]


async def lookup_users(self: GraphDirectory, ids: Iterable[str]) -> Mapping[str, DirectoryUser | None]:
    """Each user by object id (see :meth:`GraphDirectory.lookup_users`)."""
    return await _lookup(self, USERS, ids)


async def lookup_groups(self: GraphDirectory, ids: Iterable[str]) -> Mapping[str, DirectoryGroup | None]:
    """Each group by object id (``GET /groups/{id}?$select=…``, batched like users), ``None`` when gone."""
    return await _lookup(self, GROUPS, ids)


async def _lookup(self: GraphDirectory, kind: _Kind[_Found], ids: Iterable[str]) -> Mapping[str, _Found | None]:
    wanted = lookup_ids(ids, kind.noun)
    # A blank id is no object; sent, /users/ would list the tenant instead.
    found: dict[str, _Found | None] = {object_id: None for object_id in wanted if not object_id.strip()}
    asked = [object_id for object_id in wanted if object_id not in found]
    budget = RetryBudget(self.retry.total_budget_seconds)
    if len(asked) == 1:
        found[asked[0]] = await _lookup_one(self, kind, asked[0], budget)
    elif asked:
        chunks = [asked[start : start + BATCH_LIMIT] for start in range(0, len(asked), BATCH_LIMIT)]
        # All or nothing: a batch that fails cancels the others (no retries left running behind it).
        for answer in await all_or_nothing([_lookup_batch(self, kind, chunk, budget) for chunk in chunks]):
            found.update(answer)
    return {object_id: found[object_id] for object_id in wanted}


def _object_url(kind: _Kind[Any], object_id: str) -> str:
    return f"/{kind.collection}/{urllib.parse.quote(object_id, safe='')}?$select={','.join(kind.select)}"


async def _lookup_one(self: GraphDirectory, kind: _Kind[_Found], object_id: str, budget: RetryBudget) -> _Found | None:
    operation = f"looking up {kind.noun} {object_id!r}"
    options = [ResponseHandlerOption(NATIVE), RetryBudgetOption(budget)]
    if kind.collection == "users":
        users = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters(select=list(kind.select))
        user_builder: UserItemRequestBuilder = self._client.users.by_user_id(object_id)
        request = user_builder.to_get_request_information(self._configuration(users, {}, options))
    else:
        groups = GroupItemRequestBuilder.GroupItemRequestBuilderGetQueryParameters(select=list(kind.select))
        group_builder: GroupItemRequestBuilder = self._client.groups.by_group_id(object_id)
        request = group_builder.to_get_request_information(self._configuration(groups, {}, options))
    response = await self._send(request, operation=operation)
    if response.status_code == 404:
        return None
    if not 200 <= response.status_code < 300:
        raise self._status_error(response, operation=operation, group_id=None, permissions=kind.permissions)
    body = json_object(response.content, operation, status=response.status_code, response=response)
    return kind.parse(body, object_id, operation)


async def _lookup_batch(
    self: GraphDirectory, kind: _Kind[_Found], chunk: Sequence[str], budget: RetryBudget
) -> dict[str, _Found | None]:
    """One chunk of at most 20 ids through ``POST /$batch``, retrying throttled sub-requests."""
    operation = f"looking up {len(chunk)} {kind.collection}"
    found: dict[str, _Found | None] = {}
    pending = list(chunk)
    attempt = 0
    while pending:
        attempt += 1
        body = {
            "requests": [
                {"id": str(index), "method": "GET", "url": _object_url(kind, object_id)}
                for index, object_id in enumerate(pending)
            ]
        }
        request = RequestInformation(Method.POST, "{+baseurl}/$batch")
        request.set_stream_content(json.dumps(body).encode(), "application/json")
        request.add_request_options([ResponseHandlerOption(NATIVE), RetryBudgetOption(budget)])
        page = await self._get_json(request, operation=operation, group_id=None, permissions=kind.permissions)
        retry, retry_after = _batch_answers(self, kind, page, pending, found, operation)
        if not retry:
            break
        status, code = retry[0][1], retry[0][2]
        failed = f"Graph $batch sub-requests ({len(retry)}) of {operation} failed with HTTP {status}"
        if not await self._retry_handler.wait_before_retry(attempt, retry_after, budget, failed):
            raise DirectoryError(
                f"{operation}: Microsoft Graph answered HTTP {status} for {len(retry)} of them "
                f"after {attempt} attempts",
                code=code,
                status=status,
            )
        pending = [object_id for object_id, _, _ in retry]
    return found


def _batch_answers(
    self: GraphDirectory,
    kind: _Kind[_Found],
    page: Mapping[str, Any],
    pending: Sequence[str],
    found: dict[str, _Found | None],
    operation: str,
) -> tuple[list[tuple[str, int, str | None]], str | None]:
    """Record each sub-response; return the ones to retry and the longest Retry-After among them."""
    responses = page.get("responses")
    if not isinstance(responses, list):
        raise DirectoryError(f"{operation}: Graph's batch answer has no 'responses' list", code="invalid_response")
    by_id: dict[str, Mapping[str, Any]] = {}
    for item in responses:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            by_id[item["id"].lower()] = item
    retry: list[tuple[str, int, str | None]] = []
    longest: float | None = None
    for index, user_id in enumerate(pending):
        item = by_id.get(str(index))
        status = item.get("status") if item is not None else None
        if item is None or type(status) is not int:
            raise DirectoryError(f"{operation}: Graph's batch answer lacks request {index}", code="invalid_response")
        headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
        body = item.get("body")
        if status == 404:
            found[user_id] = None
        elif 200 <= status < 300:
            if not isinstance(body, dict):
                raise DirectoryError(
                    f"{operation}: {kind.noun} {user_id!r} came back without a body", code="invalid_response"
                )
            found[user_id] = kind.parse(body, user_id, f"looking up {kind.noun} {user_id!r}")
        else:
            code, message, request_id = error_fields(body, headers.get("request-id"))
            if status in self.retry.retry_statuses:
                retry.append((user_id, status, code))
                seconds = parse_retry_after(headers.get("retry-after"))
                if seconds is not None and (longest is None or seconds > longest):
                    longest = seconds
                continue
            raise status_error(
                status,
                code,
                message,
                request_id,
                operation=f"looking up {kind.noun} {user_id!r}",
                group_id=None,
                permissions=kind.permissions,
            )
    return retry, None if longest is None else repr(longest)


def _looked_up_user(body: Mapping[str, Any], user_id: str, operation: str) -> DirectoryUser:
    user = user_item(body, operation)  # the rules every read of a user item shares
    if not isinstance(user, DirectoryUser):
        raise DirectoryError(f"{operation}: Graph answered with an object that is not a user", code="invalid_response")
    if user.id.lower() != user_id.lower():
        raise DirectoryError(f"{operation}: Graph answered with another user ({user.id!r})", code="invalid_response")
    return user


def _looked_up_group(body: Mapping[str, Any], group_id: str, operation: str) -> DirectoryGroup:
    group = DirectoryGroup.from_graph(body)
    if group.id.lower() != group_id.lower():
        raise DirectoryError(f"{operation}: Graph answered with another group ({group.id!r})", code="invalid_response")
    return group


USERS: _Kind[DirectoryUser] = _Kind("users", "user", DirectoryUser.GRAPH_SELECT, _looked_up_user, USER_READ_PERMISSIONS)
GROUPS: _Kind[DirectoryGroup] = _Kind(
    "groups", "group", DirectoryGroup.GRAPH_SELECT, _looked_up_group, GROUP_READ_PERMISSIONS
)
