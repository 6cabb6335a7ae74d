"""``GraphDirectory.changes``: Graph's ``groups/delta`` and ``users/delta`` as a :class:`DeltaDirectory`.

One round reads, concurrently:

- one ``groups/delta`` chain per chunk of at most 50 tracked groups
  (``$select=members&$filter=id eq '…' or …``: Graph's limit of 50 filtered
  objects), and
- one ``users/delta`` chain (``$select`` = the member fields), tenant-wide.

Query parameters go on a chain's first request only; every later request
is the opaque ``@odata.nextLink`` / ``@odata.deltaLink`` as Graph gave it
(checked to stay on the configured Graph origin, like any next link). The
pages of one group are merged by group id in page order, whatever order
they come in and however often an entity is replayed; the last word on an
id wins. ``410 Gone``, ``syncStateNotFound`` and ``resyncRequired`` are
:class:`~calm_azure_sync.DeltaExpiredError`. A failure anywhere cancels the
round: no cursor comes back.

No change in a round costs ⌈tracked groups / 50⌉ + 1 requests (one page per
chain). A group no longer tracked ends its chunk's chain: the chunk's other
groups start a new one (listed whole once), so nothing rides along unseen.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .._gc import collector_paused
from ..errors import DeltaExpiredError, DirectoryError
from ..model import DirectoryUser
from ._graph_common import (
    GROUP_READ_PERMISSIONS,
    USER_READ_PERMISSIONS,
    all_or_nothing,
    graph_error,
    json_object,
    status_error,
)
from ._items import member_item, user_item
from ._retry import RetryBudget, RetryBudgetOption
from ._sdk import NATIVE, Method, RequestInformation, ResponseHandlerOption
from .delta import (
    DeltaCursor,
    DeltaStart,
    DirectoryDelta,
    GroupDelta,
    RemovedUser,
    build_delta,
    round_group_ids,
)

if TYPE_CHECKING:
    from .graph import GraphDirectory

__all__ = ["FILTER_LIMIT", "changes", "merge_group_items", "merge_user_items"]

FILTER_LIMIT = 50  # ids per $filter on groups/delta, Graph's documented limit
CURSOR_VERSION = 1
_EXPIRED_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})

T = TypeVar("T")


class MemberChanges:
    """One group's direct-member changes in a round, merged in page order (the last word wins)."""

    __slots__ = ("added_groups", "added_users", "removed_groups", "removed_users")

    def __init__(self) -> None:
        self.added_users: set[str] = set()
        self.removed_users: set[str] = set()
        self.added_groups: set[str] = set()
        self.removed_groups: set[str] = set()

    def record(self, member_id: str, kind: str, *, removed: bool) -> None:
        """Note one member reference; ``kind`` is ``"user"`` or ``"group"`` (see :func:`_items.member_item`)."""
        added, gone = (
            (self.added_users, self.removed_users) if kind == "user" else (self.added_groups, self.removed_groups)
        )
        (gone if removed else added).add(member_id)
        (added if removed else gone).discard(member_id)

    def frozen(self, group_id: str, *, complete: bool) -> GroupDelta:
        return GroupDelta(
            group_id,
            frozenset(self.added_users),
            frozenset() if complete else frozenset(self.removed_users),
            frozenset(self.added_groups),
            frozenset() if complete else frozenset(self.removed_groups),
            complete,
        )


def _invalid(operation: str, what: str) -> DirectoryError:
    return DirectoryError(f"{operation}: {what}", code="invalid_response")


def merge_group_items(
    values: Iterable[Any], members: dict[str, MemberChanges], removed: set[str], operation: str
) -> None:
    """Merge one ``groups/delta`` page into ``members`` (by group id) and ``removed`` (deleted groups).

    A group may come back on several pages, each with a slice of its
    ``members@delta``, in any order. Each member reference is classified by
    :func:`~calm_azure_sync.directory._items.member_item`, the rule a full
    read uses too: no ``@odata.type`` is a user (so an untyped removal takes
    the member away, as a full read would no longer list it); devices,
    contacts, service principals and unknown types are neither users nor
    groups and are dropped; a bad id, type or ``@removed`` fails the round.
    A group item is read the same way: ``@removed`` (any reason) is a
    deleted group, and one listed again later in the round is restored.
    """
    for item in values:
        if type(item) is not dict:
            raise _invalid(operation, "Graph returned a non-object item")
        group_id = item.get("id")
        if type(group_id) is not str or not group_id.strip():
            raise _invalid(operation, "a group in Graph's delta answer has no id")
        _, group_id, gone = member_item(item, operation)
        if gone is not None:
            removed.add(group_id)
            members.pop(group_id, None)
            continue
        removed.discard(group_id)  # deleted, then restored within the round
        changes = members.setdefault(group_id, MemberChanges())
        refs = item.get("members@delta")
        if refs is None:
            continue
        if type(refs) is not list:
            raise _invalid(operation, f"group {group_id!r}: members@delta is not a list")
        where = f"{operation}: group {group_id!r}: members@delta"
        for ref in refs:
            kind, member_id, reason = member_item(ref, where)
            if kind != "other":
                changes.record(member_id, kind, removed=reason is not None)


def merge_user_items(
    values: Iterable[Any],
    users: dict[str, DirectoryUser | RemovedUser],
    operation: str,
    *,
    require_account_enabled: bool = True,
) -> None:
    """Merge one ``users/delta`` page into ``users`` (by id; the last word on an id wins).

    Each item is read by :func:`~calm_azure_sync.directory._items.user_item`,
    as a full read's member is: a user with ``@removed`` is a
    :class:`RemovedUser` with Graph's reason; delta omits properties that
    were never set (read as the ``null`` a full read gets), but never
    ``accountEnabled`` (every user has it): a user without it is Graph's
    limited-information shape, so the round is ``users_not_readable``.
    ``require_account_enabled=False`` parses pages that did not select those
    (Graph's own documented examples).
    """
    with collector_paused():
        for item in values:
            if type(item) is not dict:
                raise _invalid(operation, "Graph returned a non-object item")
            user = user_item(item, operation, readable=require_account_enabled, unset_omitted=True)
            if user is not None:
                users[user.id] = user


# -- the cursor --------------------------------------------------------------------------


def _expired(message: str) -> DeltaExpiredError:
    return DeltaExpiredError(message, code="invalid_cursor")


def read_cursor(self: GraphDirectory, cursor: Mapping[str, Any] | None) -> tuple[str | None, list[tuple[list[str], str]]]:
    """The users link and the group chunks (ids, link) of a cursor this directory made."""
    if cursor is None:
        return None, []
    if not isinstance(cursor, Mapping) or cursor.get("version") != CURSOR_VERSION or cursor.get("kind") != "graph":
        raise _expired("the delta cursor is not one this version of GraphDirectory made; read in full")
    if cursor.get("base") != self.base_url:
        raise _expired(f"the delta cursor was made for another Graph root, not {self.base_url}; read in full")
    users = cursor.get("users")
    chunks = cursor.get("groups")
    if not (users is None or isinstance(users, str)) or not isinstance(chunks, list):
        raise _expired("the delta cursor is damaged; read in full")
    groups: list[tuple[list[str], str]] = []
    for chunk in chunks:
        ids = chunk.get("ids") if isinstance(chunk, Mapping) else None
        link = chunk.get("link") if isinstance(chunk, Mapping) else None
        if (
            not isinstance(ids, list)
            or not 0 < len(ids) <= FILTER_LIMIT
            or not all(isinstance(i, str) for i in ids)
            or not isinstance(link, str)
        ):
            raise _expired("the delta cursor is damaged; read in full")
        groups.append((list(ids), link))
    try:
        for link in [users, *(link for _, link in groups)]:
            if link is not None:
                self._check_next_link(link, "reading the delta cursor")
    except DirectoryError as error:
        raise _expired(f"the delta cursor holds a link outside {self.base_url}; read in full") from error
    return users, groups


# -- a round ------------------------------------------------------------------------------


def _id_filter(ids: Iterable[str]) -> str:
    # OData string literals double a single quote.
    return " or ".join("id eq '{}'".format(group_id.replace("'", "''")) for group_id in ids)


def _first_url(self: GraphDirectory, resource: str, query: dict[str, str], start: DeltaStart) -> str:
    if start == "latest":
        query = {**query, "$deltatoken": "latest"}
    encoded = "&".join(f"{name}={urllib.parse.quote(value, safe=',')}" for name, value in query.items())
    return f"{self.base_url}/{resource}/delta?{encoded}"


async def _page(
    self: GraphDirectory, link: str, operation: str, budget: RetryBudget, permissions: tuple[str, ...]
) -> dict[str, Any]:
    request = RequestInformation(Method.GET)
    request.url = link
    request.add_request_options([ResponseHandlerOption(NATIVE), RetryBudgetOption(budget)])
    response = await self._send(request, operation=operation)
    status = response.status_code
    if 200 <= status < 300:
        return json_object(response.content, operation, status=status, response=response)
    code, message, request_id = graph_error(response)
    if status == 410 or (code or "").lower() in _EXPIRED_CODES:
        raise DeltaExpiredError(
            f"{operation}: Graph says the delta token can no longer be used (HTTP {status}"
            + (f": {message}" if message else "")
            + "); read in full",
            code=code,
            status=status,
            request_id=request_id,
        )
    raise status_error(
        status, code, message, request_id, operation=operation, group_id=None, permissions=permissions
    )


async def _chain(
    self: GraphDirectory,
    link: str,
    operation: str,
    budget: RetryBudget,
    permissions: tuple[str, ...],
    consume: Callable[[list[Any]], None],
) -> str:
    """Follow one delta chain to its deltaLink, handing each page's items to ``consume``."""
    followed: set[str] = set()
    while True:
        page = await _page(self, link, operation, budget, permissions)
        values = page.get("value")
        if not isinstance(values, list):
            raise _invalid(operation, "Graph's answer has no 'value' list")
        consume(values)
        next_link = page.get("@odata.nextLink")
        if next_link is not None:
            link = self._check_next_link(next_link, operation)
            if link in followed:
                raise _invalid(operation, "Graph returned the same next link twice")
            followed.add(link)
            continue
        delta_link = page.get("@odata.deltaLink")
        if delta_link is None:
            raise _invalid(operation, "Graph's delta page has neither a next link nor a delta link")
        return self._check_next_link(delta_link, operation)


async def changes(
    self: GraphDirectory,
    cursor: Mapping[str, Any] | None,
    group_ids: Iterable[str],
    *,
    start: DeltaStart = "initial",
) -> tuple[DirectoryDelta, DeltaCursor]:
    """One delta round (see :meth:`GraphDirectory.changes`)."""
    wanted = round_group_ids(group_ids, start)
    users_link, chunks = read_cursor(self, cursor)
    wanted_set = set(wanted)
    # A chunk's link filters by every id it was started with, so it goes on only while all of
    # them are wanted: a group left out would ride along unseen (its changes read and dropped)
    # and, wanted again later, never be listed whole. The rest of such a chunk starts afresh.
    kept = [(ids, link) for ids, link in chunks if wanted_set.issuperset(ids)]
    tracked = {group_id for ids, _ in kept for group_id in ids}
    fresh = [group_id for group_id in wanted if group_id not in tracked]
    budget = RetryBudget(self.retry.total_budget_seconds)
    users: dict[str, DirectoryUser | RemovedUser] = {}
    members: dict[str, MemberChanges] = {}
    removed: set[str] = set()

    def users_page(values: list[Any]) -> None:
        merge_user_items(values, users, "reading users/delta")

    def groups_page(values: list[Any]) -> None:
        merge_group_items(values, members, removed, "reading groups/delta")

    select = ",".join(DirectoryUser.GRAPH_SELECT)
    first_users = users_link or _first_url(self, "users", {"$select": select}, start)
    rounds: list[Awaitable[str]] = [
        _chain(self, first_users, "reading users/delta", budget, USER_READ_PERMISSIONS, users_page)
    ]
    links: list[tuple[list[str], bool]] = []
    for ids, link in kept:
        rounds.append(_chain(self, link, "reading groups/delta", budget, GROUP_READ_PERMISSIONS, groups_page))
        links.append((ids, False))
    for index in range(0, len(fresh), FILTER_LIMIT):
        ids = fresh[index : index + FILTER_LIMIT]
        url = _first_url(self, "groups", {"$select": "members", "$filter": _id_filter(ids)}, start)
        rounds.append(_chain(self, url, "reading groups/delta", budget, GROUP_READ_PERMISSIONS, groups_page))
        links.append((ids, True))
    answered = await all_or_nothing(rounds)
    complete_ids = {group_id for ids, new in links if new for group_id in ids} if start == "initial" else set()
    # A group its chain's first full round never listed does not exist (Graph filters silently).
    removed |= {group_id for group_id in complete_ids if group_id not in members}
    groups = {
        group_id: merged.frozen(group_id, complete=group_id in complete_ids)
        for group_id, merged in members.items()
        if group_id in wanted_set
    }
    delta = build_delta(
        users, groups, removed & wanted_set, users_complete=users_link is None and start == "initial"
    )
    return delta, _next_cursor(self, answered, [ids for ids, _ in links])


def _next_cursor(self: GraphDirectory, answered: Sequence[str], group_chunks: Sequence[list[str]]) -> DeltaCursor:
    """The cursor of the next round: the users chain's link first, then each group chunk's ids and link."""
    return {
        "version": CURSOR_VERSION,
        "kind": "graph",
        "base": self.base_url,
        "users": answered[0],
        "groups": [{"ids": ids, "link": link} for ids, link in zip(group_chunks, answered[1:], strict=True)],
    }
