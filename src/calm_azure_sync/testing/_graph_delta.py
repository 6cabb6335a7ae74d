"""The fake Graph's ``groups/delta`` and ``users/delta``, shaped as Graph documents them.

Each token (``$skiptoken`` of a page, ``$deltatoken`` of a delta link)
keeps a snapshot of what its chain tracks. A round answers the difference
between the snapshot of the token it started from and the directory *as it
was when the round started*; the round's delta link keeps that snapshot, so
a change made while a round is being paged comes back in the next round, as
Graph's replays do.

Modelled (FACTS.md "user: delta", "group: delta"):

- ``$select`` (``members`` tracks membership; other group properties are
  rendered too; users get their selected properties, never-set ones
  omitted), ``$filter=id eq '…' or …`` (at most 50 ids, else 400), query
  parameters on the first request only (400 when a token request carries
  others), ``$deltatoken=latest`` (no data, a delta link "from now");
- ``members@delta`` with ``@odata.type`` (users, groups, and other objects
  such as devices with their own type) and ``"@removed": {"reason":
  "deleted"}`` for a removed member; a deleted group or user as
  ``{"id", "@removed": {"reason"}}`` (``"changed"`` when soft-deleted:
  ``remove_user(..., soft=True)``, ``remove_group(...)``; ``"deleted"`` for
  good: ``remove_user(...)``, ``remove_group(..., soft=False)``); a group
  created or restored (``add_group`` after ``remove_group``) listed again
  with its whole membership, ``members@delta`` left out when it has none;
- a group split over several items (``delta_member_slice``) and so over
  several pages, items in any order (``delta_seed``), the last item of a
  page replayed at the top of the next (``delta_replays``);
- ``410 Gone`` with a ``Location`` header (an initial request) for a token
  :meth:`expire_delta_tokens` expired or one the fake no longer knows.
"""

from __future__ import annotations

import random
import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._graph_shapes import GraphError, GraphRequest, Reply, new_token

if TYPE_CHECKING:
    from ._graph_model import FakeGraph

__all__ = ["DeltaToken", "answer_delta"]

FILTER_LIMIT = 50
MAX_TOKENS = 10_000
_FILTER_TERM = re.compile(r"\s*id\s+eq\s+'((?:[^']|'')*)'\s*", re.IGNORECASE)
_TOKEN_PARAMETERS = frozenset({"$skiptoken", "$deltatoken"})
_USER_TYPE = "#microsoft.graph.user"
_GROUP_TYPE = "#microsoft.graph.group"

Snapshot = dict[str, Any]


class DeltaToken:
    """What a delta/skip token stands for: a chain's query, its snapshot, and (for pages) what is left."""

    __slots__ = ("expired", "filter_ids", "initial_query", "kind", "last", "pending", "select", "snapshot")

    def __init__(
        self,
        kind: str,
        select: tuple[str, ...] | None,
        filter_ids: tuple[str, ...] | None,
        snapshot: Snapshot,
        initial_query: str,
        pending: list[dict[str, Any]] | None = None,
        last: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.select = select
        self.filter_ids = filter_ids
        self.snapshot = snapshot
        self.initial_query = initial_query
        self.pending = pending
        self.last = last
        self.expired = False


def parse_filter(raw: str | None) -> tuple[str, ...] | None:
    """The ids of ``id eq 'a' or id eq 'b'`` (at most 50), or ``None`` without a filter."""
    if raw is None:
        return None
    ids: list[str] = []
    for term in re.split(r"\s+or\s+", raw.strip(), flags=re.IGNORECASE):
        match = _FILTER_TERM.fullmatch(term)
        if match is None:
            raise GraphError(400, "Request_UnsupportedQuery", "Delta supports only $filter by id: id eq '...' or ...")
        ids.append(match.group(1).replace("''", "'"))
    if len(ids) > FILTER_LIMIT:
        raise GraphError(
            400, "Request_BadRequest", f"Too many objects in $filter: {len(ids)}; the limit is {FILTER_LIMIT}."
        )
    return tuple(ids)


def snapshot(graph: FakeGraph, kind: str, filter_ids: tuple[str, ...] | None) -> Snapshot:
    """What a chain tracks, now: users by id (a copy), or groups' direct members (id -> type)."""
    if kind == "users":
        ids = graph._users if filter_ids is None else [i for i in filter_ids if i in graph._users]
        return {user_id: dict(graph._users[user_id]) for user_id in ids}
    groups = graph._groups if filter_ids is None else [i for i in filter_ids if i in graph._groups]
    found: Snapshot = {}
    for group_id in groups:
        members: dict[str, str] = {}
        for member_id in graph._members.get(group_id, ()):
            if member_id in graph._users:
                members[member_id] = _USER_TYPE
            elif member_id in graph._groups:
                members[member_id] = _GROUP_TYPE
            elif member_id in graph._others:
                members[member_id] = str(graph._others[member_id].get("@odata.type"))
        found[group_id] = members
    return found


def _user_items(graph: FakeGraph, old: Snapshot, new: Snapshot, select: tuple[str, ...] | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for user_id in sorted(old.keys() | new.keys()):
        if user_id not in new:
            reason = "changed" if user_id in graph._soft_deleted else "deleted"
            items.append({"id": user_id, "@removed": {"reason": reason}})
        elif old.get(user_id) != new[user_id]:
            rendered = graph._render(new[user_id], "users", select, typed=False)
            # Delta omits a property that was never set (user-delta.md).
            items.append({name: value for name, value in rendered.items() if value is not None or name == "id"})
    return items


def _group_items(
    graph: FakeGraph, token: DeltaToken | None, old: Snapshot, new: Snapshot, select: tuple[str, ...] | None
) -> list[dict[str, Any]]:
    initial = token is None
    slice_size = graph.delta_member_slice
    props = [name for name in (select or ()) if name not in ("id", "members")]
    items: list[dict[str, Any]] = []
    for group_id in sorted(old.keys() | new.keys()):
        if group_id not in new:
            reason = "changed" if group_id in graph._soft_deleted_groups else "deleted"
            items.append({"id": group_id, "@removed": {"reason": reason}})
            continue
        before: dict[str, str] = old.get(group_id, {})
        after: dict[str, str] = new[group_id]
        refs: list[dict[str, Any]] = [{"@odata.type": kind, "id": m} for m, kind in after.items() if m not in before]
        refs += [{"@odata.type": kind, "id": m, "@removed": {"reason": "deleted"}} for m, kind in before.items() if m not in after]
        if not refs and not initial and group_id in old:
            continue
        head: dict[str, Any] = {"id": group_id}
        for name in props:
            head[name] = graph._groups[group_id].get(name)
        if select is not None and "members" not in select:
            items.append(head)
            continue
        if not refs:
            items.append(head)  # as documented: a group without members has no members@delta
            continue
        size = slice_size or len(refs)
        for index in range(0, len(refs), size):
            item: dict[str, Any] = dict(head) if index == 0 else {"id": group_id}
            item["members@delta"] = refs[index : index + size]
            items.append(item)
    if graph.delta_seed is not None:
        random.Random(graph.delta_seed).shuffle(items)
    return items


def _store(graph: FakeGraph, token: DeltaToken) -> str:
    key = new_token()
    graph._delta_tokens[key] = token
    while len(graph._delta_tokens) > MAX_TOKENS:
        graph._delta_tokens.popitem(last=False)
    return key


def _page_out(
    graph: FakeGraph, request: GraphRequest, kind: str, chain: DeltaToken, items: list[dict[str, Any]], *, first: bool
) -> Reply:
    """One page of ``items``; the rest behind a next link, or a delta link at the end."""
    size = graph.delta_page_size or graph.page_cap or 100
    page, rest = items[:size], items[size:]
    if graph.delta_replays and not first and chain.last is not None:
        page = [dict(chain.last), *page]  # "the same entity may appear more than once"
    root = graph._root()
    context = graph._context(kind, chain.select) if first else f"{root}/$metadata#{kind}"
    body: dict[str, Any] = {"@odata.context": context}
    follow = DeltaToken(kind, chain.select, chain.filter_ids, chain.snapshot, chain.initial_query)
    if rest:
        follow.pending, follow.last = rest, page[-1] if page else None
        body["@odata.nextLink"] = f"{root}/{kind}/delta?$skiptoken={_store(graph, follow)}"
    else:
        body["@odata.deltaLink"] = f"{root}/{kind}/delta?$deltatoken={_store(graph, follow)}"
    body["value"] = page
    return Reply(200, body)


def _gone(graph: FakeGraph, kind: str, token: DeltaToken | None) -> GraphError:
    error = GraphError(410, "resyncRequired", "The delta token is no longer valid, and the app must reset the sync state.")
    query = token.initial_query if token is not None else ""
    error.location = f"{graph._root()}/{kind}/delta" + (f"?{query}" if query else "")
    return error


def answer_delta(graph: FakeGraph, request: GraphRequest, kind: str) -> Reply:
    """``GET /{users|groups}/delta`` (the caller holds the lock and checked permissions)."""
    query: Mapping[str, str] = request.query
    skip, delta = query.get("$skiptoken"), query.get("$deltatoken")
    if (skip is not None or (delta is not None and delta.lower() != "latest")) and set(query) - _TOKEN_PARAMETERS:
        raise GraphError(
            400, "Request_BadRequest", "Query parameters other than $deltatoken and $skiptoken belong on the initial request."
        )
    if skip is not None:
        chain = graph._delta_tokens.get(skip)
        if chain is None or chain.kind != kind or chain.expired or chain.pending is None:
            raise _gone(graph, kind, chain)
        graph._delta_tokens.move_to_end(skip)  # a page may be asked for again after a reset
        return _page_out(graph, request, kind, chain, chain.pending, first=False)
    if delta is not None and delta.lower() != "latest":
        chain = graph._delta_tokens.get(delta)
        if chain is None or chain.kind != kind or chain.expired or chain.pending is not None:
            raise _gone(graph, kind, chain)
        now = snapshot(graph, kind, chain.filter_ids)
        items = _diff(graph, kind, chain, chain.snapshot, now, chain.select)
        return _page_out(graph, request, kind, DeltaToken(kind, chain.select, chain.filter_ids, now, chain.initial_query), items, first=False)
    select = graph._select(query)
    filter_ids = parse_filter(query.get("$filter"))
    initial_query = "&".join(
        f"{name}={urllib.parse.quote(value, safe=',')}" for name, value in query.items() if name != "$deltatoken"
    )
    now = snapshot(graph, kind, filter_ids)
    chain = DeltaToken(kind, select, filter_ids, now, initial_query)
    if delta is not None:  # $deltatoken=latest: start from now, no data
        return _page_out(graph, request, kind, chain, [], first=True)
    return _page_out(graph, request, kind, chain, _diff(graph, kind, None, {}, now, select), first=True)


def _diff(
    graph: FakeGraph, kind: str, token: DeltaToken | None, old: Snapshot, new: Snapshot, select: tuple[str, ...] | None
) -> list[dict[str, Any]]:
    if kind == "users":
        return _user_items(graph, old, new, select)
    return _group_items(graph, token, old, new, select)
