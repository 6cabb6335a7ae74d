"""``GraphDirectory``'s :class:`~calm_azure_sync.directory.protocol.PersonLookup`: one person and their groups.

Every read here is about one object, so its cost is the person's, not the
tenant's: ``GET /users?$filter=mail eq '…'`` (then ``userPrincipalName eq``
when no mail matches; a default query), ``GET /users/{id}/transitiveMemberOf``
or ``/memberOf`` and ``GET /groups/{id}/memberOf``, each cast to
``microsoft.graph.group`` with ``$select``, ``$top=999`` and ``$count=true``
under ``ConsistencyLevel: eventual`` (the cast is an advanced query), pages
followed within the Graph root.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DirectoryError, GroupNotFoundError
from ..model import DirectoryGroup, DirectoryUser
from ._graph_common import (
    GROUP_READ_PERMISSIONS,
    USER_READ_PERMISSIONS,
    json_object,
    limited_information,
    users_not_readable,
)
from ._retry import RetryBudget, RetryBudgetOption
from ._sdk import NATIVE, Method, RequestInformation, ResponseHandlerOption

if TYPE_CHECKING:
    from .graph import GraphDirectory

__all__ = ["group_parents", "user_groups", "users_by_email"]

_PAGE_SIZE = 999
_GROUP_CAST = "microsoft.graph.group"


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _odata_string(value: str) -> str:
    """``value`` as an OData string literal: in single quotes, a quote doubled."""
    return "'" + value.replace("'", "''") + "'"


async def _pages(
    self: GraphDirectory,
    path: str,
    query: str,
    *,
    headers: dict[str, str],
    operation: str,
    permissions: tuple[str, ...],
    missing: DirectoryError | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Each page's items of ``GET {path}?{query}``, following next links within the Graph origin.

    A 404 raises ``missing`` when given (the object the path names is gone).
    """
    budget = RetryBudget(self.retry.total_budget_seconds)
    url = f"{self.base_url}{path}?{query}"
    followed: set[str] = set()
    while True:
        request = RequestInformation(Method.GET)
        request.url = url
        for name, value in headers.items():
            request.headers.add(name, value)
        request.add_request_options([ResponseHandlerOption(NATIVE), RetryBudgetOption(budget)])
        response = await self._send(request, operation=operation)
        if response.status_code == 404 and missing is not None:
            raise missing
        if not 200 <= response.status_code < 300:
            raise self._status_error(response, operation=operation, group_id=None, permissions=permissions)
        page = json_object(response.content, operation, status=response.status_code, response=response)
        values, next_link = self._turn_page(page, followed, operation)
        yield values
        if next_link is None:
            return
        url = next_link


async def users_by_email(self: GraphDirectory, email: str) -> Sequence[DirectoryUser]:
    """``GET /users?$filter=mail eq '…'``, then ``userPrincipalName eq '…'`` when no mail matches."""
    if not isinstance(email, str) or not email.strip():
        raise ConfigError(f"users_by_email: email must be a non-empty string, got {email!r:.60}")
    wanted = email.strip()
    select = ",".join(DirectoryUser.GRAPH_SELECT)
    for field in ("mail", "userPrincipalName"):
        operation = f"finding the user whose {field} is {wanted!r}"
        query = f"$filter={_quote(f'{field} eq {_odata_string(wanted)}')}&$select={select}&$top={_PAGE_SIZE}"
        found: dict[str, DirectoryUser] = {}
        async for page in _pages(
            self, "/users", query, headers={}, operation=operation, permissions=USER_READ_PERMISSIONS
        ):
            for item in page:
                if limited_information(item):
                    raise users_not_readable(operation)
                user = DirectoryUser.from_graph(item)
                found.setdefault(user.id, user)
        if found:
            return list(found.values())
    return []


async def _groups(
    self: GraphDirectory, path: str, operation: str, missing: DirectoryError
) -> Sequence[DirectoryGroup]:
    query = f"$select={','.join(DirectoryGroup.GRAPH_SELECT)}&$top={_PAGE_SIZE}&$count=true"
    groups: dict[str, DirectoryGroup] = {}
    async for page in _pages(
        self,
        f"{path}/{_GROUP_CAST}",
        query,
        headers={"ConsistencyLevel": "eventual"},
        operation=operation,
        permissions=GROUP_READ_PERMISSIONS,
        missing=missing,
    ):
        for item in page:
            kind = item.get("@odata.type")
            if kind is not None and kind != "#microsoft.graph.group":
                continue  # the cast answers groups only; anything else is not ours to read
            group = DirectoryGroup.from_graph(item)
            groups.setdefault(group.id, group)
    return list(groups.values())


async def user_groups(self: GraphDirectory, user_id: str, *, transitive: bool) -> Sequence[DirectoryGroup]:
    """``GET /users/{id}/transitiveMemberOf/microsoft.graph.group`` (or ``/memberOf/…``)."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise ConfigError(f"user_groups: user_id must be a non-empty string, got {user_id!r:.60}")
    relation = "transitiveMemberOf" if transitive else "memberOf"
    operation = f"reading the groups of user {user_id!r}"
    missing = DirectoryError(f"{operation}: the user does not exist", code="not_found", status=404)
    return await _groups(self, f"/users/{_quote(user_id)}/{relation}", operation, missing)


async def group_parents(self: GraphDirectory, group_id: str) -> Sequence[DirectoryGroup]:
    """``GET /groups/{id}/memberOf/microsoft.graph.group``: the groups it is a direct member of."""
    if not isinstance(group_id, str) or not group_id.strip():
        raise GroupNotFoundError(str(group_id), code="invalid_group_id", status=None)
    operation = f"reading the parent groups of group {group_id!r}"
    return await _groups(
        self, f"/groups/{_quote(group_id)}/memberOf", operation, GroupNotFoundError(group_id, code="Request_ResourceNotFound")
    )
