"""The fake Graph itself: the fixture, the faults, the request log and every answer, with no IO.

:class:`FakeGraph` answers a request as Microsoft Graph documents it
(see :mod:`calm_azure_sync.testing.fake_graph` for what is modelled).
:meth:`FakeGraph.handle` takes an ``httpx.Request`` and returns an
``httpx.Response``, and :meth:`FakeGraph.transport` returns an
``httpx.MockTransport`` over it, like httpx's own mock: the whole SDK runs
against the model without a socket. The HTTP server in
:mod:`~calm_azure_sync.testing.fake_graph` is a thin wrapper around the same
model, adding only the wire (ports, connections, resets).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import fnmatch
import json
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import httpx

from ..directory._nesting import groups_holding
from ..directory._search import name_matches
from ._graph_delta import DeltaToken, answer_delta
from ._graph_shapes import (
    GROUP_CASTS,
    GROUP_PERMISSIONS,
    MAX_BATCH,
    MAX_CURSORS,
    SEARCH_CLAUSE,
    USER_CASTS,
    USER_COLLECTIONS,
    USER_DEFAULT_PROPERTIES,
    USER_EQ_FILTER,
    USER_PERMISSIONS,
    Cursor,
    Fault,
    GraphError,
    GraphRequest,
    RecordedRequest,
    Reply,
    new_token,
    parse_query,
    resource_units,
    unescape_search,
)

__all__ = ["FakeGraph", "render"]

JSON_CONTENT_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"


class FakeGraph:
    """Microsoft Graph's directory endpoints as a plain request handler, over a directory fixture.

    ``fixture`` is the :meth:`InMemoryDirectory.from_dict` format. ``page_cap``
    caps every page below what ``$top`` asks (to test paging with small
    fixtures); ``latency`` delays every answer (a round-trip time);
    ``granted_permissions``, when given, are the application permissions
    the app holds (403 for calls needing others; without a user permission
    member users come back in Graph's documented "limited information" shape:
    ``@odata.type`` and ``id``, every other property ``null``, or absent with
    ``limited_information="absent"``); ``tokens``,
    when given, are the only Bearer tokens accepted.

    :meth:`handle` answers one ``httpx.Request`` without any IO, and
    :meth:`transport` wraps it in an ``httpx.MockTransport``, so the real SDK
    can be run against it without sockets::

        graph = FakeGraph(fixture, page_cap=50)
        client = httpx.AsyncClient(transport=graph.transport())

    :class:`~calm_azure_sync.testing.fake_graph.FakeGraphServer` serves the
    same model over HTTP on ``127.0.0.1``.
    """

    root = "https://graph.microsoft.com/v1.0"
    """The Graph root that next links and ``@odata.context`` name."""

    def __init__(
        self,
        fixture: Mapping[str, Any] | None = None,
        *,
        page_cap: int | None = None,
        latency: float = 0.0,
        granted_permissions: Iterable[str] | None = None,
        tokens: Iterable[str] | None = None,
        limited_information: Literal["null", "absent"] = "null",
        delta_page_size: int | None = None,
        delta_member_slice: int | None = None,
        delta_replays: bool = False,
        delta_seed: int | None = None,
    ) -> None:
        if limited_information not in ("null", "absent"):
            raise ValueError("limited_information must be 'null' or 'absent'")
        self.page_cap = page_cap
        self.limited_information = limited_information
        self.latency = latency
        self.granted_permissions = None if granted_permissions is None else frozenset(granted_permissions)
        self._tokens = None if tokens is None else frozenset(tokens)
        self._lock = threading.RLock()
        self._users: dict[str, dict[str, Any]] = {}
        self._groups: dict[str, dict[str, Any]] = {}
        self._members: dict[str, list[str]] = {}
        self._others: dict[str, dict[str, Any]] = {}
        self._faults: list[tuple[Fault, str | None, int]] = []
        # A storm (see storm()): faults drawn at random, and every fault fired so far by label.
        self._storm: tuple[tuple[Fault, ...], float, str | None] | None = None
        self._storm_random = random.Random()
        self._fired: collections.Counter[str] = collections.Counter()
        self._cursors: collections.OrderedDict[str, Cursor] = collections.OrderedDict()
        self._log: list[RecordedRequest] = []
        self._in_flight = 0
        self._peak_in_flight = 0
        # Delta (see _graph_delta): page size, members per item, replays, shuffling.
        self.delta_page_size = delta_page_size
        self.delta_member_slice = delta_member_slice
        self.delta_replays = delta_replays
        self.delta_seed = delta_seed
        self._delta_tokens: collections.OrderedDict[str, DeltaToken] = collections.OrderedDict()
        self._soft_deleted: set[str] = set()
        self._soft_deleted_groups: set[str] = set()
        self.load(fixture or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(users={len(self._users)}, groups={len(self._groups)})"

    # -- the fixture ---------------------------------------------------------

    def load(self, fixture: Mapping[str, Any]) -> None:
        """Replace the whole directory (same format as ``InMemoryDirectory.from_dict``)."""
        users = {str(user["id"]): dict(user) for user in fixture.get("users") or ()}
        groups = {str(group["id"]): dict(group) for group in fixture.get("groups") or ()}
        members = {str(group): [str(m) for m in ids] for group, ids in (fixture.get("members") or {}).items()}
        others = {str(item["id"]): dict(item) for item in fixture.get("others") or ()}
        with self._lock:
            self._users, self._groups, self._members, self._others = users, groups, members, others
            self._cursors.clear()

    def fixture(self) -> dict[str, Any]:
        """A deep copy of the directory currently served (``others`` only when there are any)."""
        with self._lock:
            data: dict[str, Any] = {
                "users": list(self._users.values()),
                "groups": list(self._groups.values()),
                "members": self._members,
            }
            if self._others:
                data["others"] = list(self._others.values())
            return copy.deepcopy(data)

    def add_user(self, user: Mapping[str, Any], *, groups: Iterable[str] = ()) -> None:
        """Add (or replace, or restore) a user, optionally as a direct member of ``groups``."""
        with self._lock:
            self._users[str(user["id"])] = dict(user)
            self._soft_deleted.discard(str(user["id"]))
            for group_id in groups:
                self.add_member(group_id, str(user["id"]))

    def remove_user(self, user_id: str, *, soft: bool = False) -> None:
        """Delete a user and its memberships.

        ``soft=True`` is a deletion Entra can undo for 30 days: ``users/delta``
        reports it with ``"@removed": {"reason": "changed"}`` (else ``"deleted"``).
        """
        with self._lock:
            if self._users.pop(user_id, None) is not None and soft:
                self._soft_deleted.add(user_id)
            for ids in self._members.values():
                while user_id in ids:
                    ids.remove(user_id)

    def add_group(self, group: Mapping[str, Any], *, members: Iterable[str] = ()) -> None:
        """Add (or replace) a group with its direct members."""
        with self._lock:
            self._groups[str(group["id"])] = dict(group)
            self._members[str(group["id"])] = list(members)
            self._soft_deleted_groups.discard(str(group["id"]))

    def add_other(self, item: Mapping[str, Any]) -> None:
        """Add a directory object that is neither a user nor a group (``id`` and ``@odata.type``, e.g. a device).

        It can be a member (:meth:`add_member`): ``members@delta`` and the
        uncast member lists show it with its type; a cast to users leaves it out.
        """
        with self._lock:
            self._others[str(item["id"])] = dict(item)

    def remove_group(self, group_id: str, *, soft: bool = True) -> None:
        """Delete a group (it becomes a 404), its own memberships and its memberships elsewhere.

        ``groups/delta`` reports it as ``{"id", "@removed": {"reason": "changed"}}``
        (soft-deleted: restorable, the default) or ``"deleted"`` with
        ``soft=False``. Restoring it is :meth:`add_group` with its members:
        the next round lists it again with its whole membership.
        """
        with self._lock:
            if self._groups.pop(group_id, None) is not None:
                (self._soft_deleted_groups.add if soft else self._soft_deleted_groups.discard)(group_id)
            self._members.pop(group_id, None)
            for ids in self._members.values():
                while group_id in ids:
                    ids.remove(group_id)

    def add_member(self, group_id: str, member_id: str) -> None:
        """Make ``member_id`` (a user or a group) a direct member of ``group_id``."""
        with self._lock:
            ids = self._members.setdefault(group_id, [])
            if member_id not in ids:
                ids.append(member_id)

    def remove_member(self, group_id: str, member_id: str) -> None:
        """Remove a direct membership."""
        with self._lock:
            ids = self._members.get(group_id, [])
            while member_id in ids:
                ids.remove(member_id)

    def expire_delta_tokens(self) -> None:
        """Make every delta and page token issued so far answer ``410 Gone`` (a synchronization reset)."""
        with self._lock:
            for token in self._delta_tokens.values():
                token.expired = True

    # -- faults and the log --------------------------------------------------

    def inject(self, fault: Fault, *, path: str | None = None, times: int = 1, skip: int = 0) -> None:
        """Queue ``fault`` for the next ``times`` requests whose path matches.

        ``path`` is a glob over the path below ``/v1.0`` (``"/groups/*"``;
        ``None`` matches any request). ``skip`` lets that many matching
        requests through first: ``inject(Fault.unauthorized(), path="/groups/g1/*",
        skip=1)`` fails the second page of g1. Faults fire in the order queued.
        """
        if times < 1 or skip < 0:
            raise ValueError("times must be at least 1 and skip not negative")
        with self._lock:
            for index in range(times):
                self._faults.append((fault, path, skip + index))

    def clear_faults(self) -> None:
        """Drop every queued fault (a storm goes on: :meth:`calm` ends it)."""
        with self._lock:
            self._faults.clear()

    def storm(
        self, faults: Sequence[Fault], *, rate: float, path: str | None = None, seed: int | None = None
    ) -> None:
        """Until :meth:`calm`, fail each request whose path matches with probability ``rate``.

        The fault is drawn at random from ``faults`` (e.g. throttles, 503s,
        504s and resets together, as a degraded Graph region answers); queued
        faults (:meth:`inject`) fire first. ``seed`` makes the draws
        repeatable. A new storm replaces the one blowing.

        >>> graph = FakeGraph()
        >>> graph.storm([Fault.unavailable()], rate=1.0)
        >>> graph.calm()
        """
        if not faults or not 0.0 <= rate <= 1.0:
            raise ValueError("a storm needs at least one fault and a rate between 0 and 1")
        with self._lock:
            self._storm = (tuple(faults), rate, path)
            if seed is not None:
                self._storm_random.seed(seed)

    def calm(self) -> None:
        """End the storm (queued faults stay queued)."""
        with self._lock:
            self._storm = None

    @property
    def storming(self) -> bool:
        """Whether a storm is blowing."""
        with self._lock:
            return self._storm is not None

    @property
    def faults_fired(self) -> dict[str, int]:
        """Every fault fired so far, queued or from a storm, by ``kind:status`` (as the request log names them)."""
        with self._lock:
            return dict(self._fired)

    @property
    def pending_faults(self) -> int:
        """How many queued faults have not fired yet."""
        with self._lock:
            return len(self._faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        """The request log, oldest first (a copy)."""
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        """Forget the requests recorded so far (and the concurrency peak)."""
        with self._lock:
            self._log.clear()
            self._peak_in_flight = 0

    @property
    def peak_concurrency(self) -> int:
        """The most requests the server was answering at the same time."""
        with self._lock:
            return self._peak_in_flight

    @contextlib.contextmanager
    def _in_flight_request(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def resource_units_used(self) -> int:
        """The resource units of every answered request in the log."""
        with self._lock:
            return sum(record.resource_units for record in self._log)

    def _take_fault(self, path: str) -> Fault | None:
        """The first due fault matching ``path``; every other matching one counts this request."""
        with self._lock:
            fired: int | None = None
            for index, (fault, pattern, skip) in enumerate(self._faults):
                if pattern is not None and not fnmatch.fnmatchcase(path, pattern):
                    continue
                if skip == 0 and fired is None:
                    fired = index
                elif skip > 0:
                    self._faults[index] = (fault, pattern, skip - 1)
            chosen: Fault | None = None
            if fired is not None:
                chosen = self._faults.pop(fired)[0]
            elif self._storm is not None:
                faults, rate, storm_path = self._storm
                if (storm_path is None or fnmatch.fnmatchcase(path, storm_path)) and self._storm_random.random() < rate:
                    chosen = self._storm_random.choice(faults)
            if chosen is not None:
                self._fired[f"{chosen.kind}:{chosen.status}"] += 1
            return chosen

    def _record(self, request: GraphRequest, status: int, fault: Fault | None, *, batched: bool) -> None:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            consistency_level=request.consistency_level,
            authorized=request.authorized,
            client_request_id=request.client_request_id,
            status=status,
            resource_units=resource_units(request.method, request.path, request.query),
            fault=None if fault is None else f"{fault.kind}:{fault.status}",
            batched=batched,
        )
        with self._lock:
            self._log.append(record)

    # -- the API ---------------------------------------------------------------

    def _error(self, error: GraphError, request: GraphRequest) -> Reply:
        request_id = str(uuid.uuid4())
        inner = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": request_id,
            "client-request-id": request.client_request_id or request_id,
        }
        body = {"error": {"code": error.code, "message": error.message, "innerError": inner}}
        headers = {"request-id": request_id}
        if error.location is not None:
            headers["Location"] = error.location
        return Reply(error.status, body, headers)

    def _dispatch(self, request: GraphRequest, *, batched: bool = False) -> Reply:
        """Answer one API request; status faults apply here (also inside $batch)."""
        fault = self._take_fault(request.path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)  # IO-free otherwise; see handle() for why a sleep is fine
        try:
            if fault is not None and fault.kind == "status":
                error = GraphError(fault.status)
                reply = self._error(error, request)
                if fault.retry_after is not None:
                    reply.headers["Retry-After"] = fault.retry_after
            else:
                reply = self._answer(request)
                if fault is not None and fault.kind == "rewrite" and fault.transform is not None:
                    reply.body = fault.transform(copy.deepcopy(reply.body))
        except GraphError as error:
            reply = self._error(error, request)
        reply.headers.setdefault("request-id", str(uuid.uuid4()))
        reply.headers["x-ms-resource-unit"] = str(resource_units(request.method, request.path, request.query))
        self._record(request, reply.status, fault, batched=batched)
        if fault is not None and fault.kind in ("reset", "truncated", "not_json"):
            reply.wire_fault = fault.kind
        return reply

    def _answer(self, request: GraphRequest) -> Reply:
        if not request.authorized:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        if request.method != "GET":
            raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
        segments = [urllib.parse.unquote(s) for s in request.path.split("/") if s]
        if not segments or segments[0] not in ("groups", "users"):
            raise GraphError(
                400, "Request_BadRequest", f"Resource not found for the segment '{segments[0] if segments else ''}'."
            )
        with self._lock:
            if segments[0] == "users":
                self._require(USER_PERMISSIONS)
                if segments[1:] in (["delta"], ["microsoft.graph.delta"]):
                    return answer_delta(self, request, "users")
                return self._answer_users(request, segments)
            self._require(GROUP_PERMISSIONS)
            if segments[1:] in (["delta"], ["microsoft.graph.delta"]):
                return answer_delta(self, request, "groups")
            if len(segments) == 1:
                return self._page(request, "groups", self._searched_groups(request), self._page_size(request.query), "groups")
            return self._answer_group(request, segments)

    def _answer_users(self, request: GraphRequest, segments: list[str]) -> Reply:
        if len(segments) == 1:
            return self._page(request, "users", self._filtered_users(request), self._page_size(request.query), "users")
        if len(segments) == 2:
            return Reply(200, self._entity(request, "users", self._user_or_404(segments[1])))
        if segments[2] in ("memberOf", "transitiveMemberOf"):
            self._user_or_404(segments[1])
            return self._answer_member_of(request, segments, transitive=segments[2] == "transitiveMemberOf")
        raise GraphError(400, "Request_BadRequest", f"Resource not found for the segment '{segments[2]}'.")

    def _filtered_users(self, request: GraphRequest) -> list[str]:
        """``$filter=mail eq '…'`` or ``userPrincipalName eq '…'`` (default queries, any case); no filter: every user."""
        raw = request.query.get("$filter")
        if raw is None:
            return list(self._users)
        match = USER_EQ_FILTER.fullmatch(raw.strip())
        if match is None:
            raise GraphError(400, "Request_UnsupportedQuery", f"Unsupported or invalid query filter clause: {raw[:80]!r}.")
        field = "mail" if match.group(1).lower() == "mail" else "userPrincipalName"
        wanted = match.group(2).replace("''", "'").casefold()
        return [
            user_id for user_id, user in self._users.items() if str(user.get(field) or "").casefold() == wanted
        ]

    def _answer_member_of(self, request: GraphRequest, segments: list[str], *, transitive: bool) -> Reply:
        """``/users/{id}/memberOf``, ``/transitiveMemberOf``, ``/groups/{id}/memberOf``, the group cast, ``$count``.

        As documented (user-list-transitivememberof): ``directoryObject`` items
        with ``@odata.type``; the cast ``microsoft.graph.group`` (an advanced
        query: ``ConsistencyLevel: eventual`` and ``$count=true``) answers
        groups only; pages of at most 999.
        """
        counting = segments[-1] == "$count" and len(segments) in (4, 5)
        if counting:
            segments = segments[:-1]
        if len(segments) > 4:
            raise GraphError(400, "Request_BadRequest", f"Resource not found for the segment '{segments[4]}'.")
        cast = segments[3] if len(segments) == 4 else None
        if counting and (request.consistency_level or "").lower() != "eventual":
            raise GraphError(400, "Request_BadRequest", "$count is not currently supported.")
        if cast is not None and cast not in GROUP_CASTS:
            raise GraphError(
                400, "Request_UnsupportedQuery", f"The specified cast '{cast}' is not supported on this relationship."
            )
        if cast is not None and not counting and not self._advanced(request):
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                "The request uses a filter or cast that requires the advanced query parameters: "
                "'ConsistencyLevel: eventual' header and '$count=true'.",
            )
        ids = groups_holding(self._members, self._groups, segments[1], transitive=transitive)
        if counting:
            return Reply(200, str(len(ids)), {"Content-Type": "text/plain"})
        top = self._page_size(request.query)
        if cast is not None:
            return self._page(request, "groups", ids, top, "groups")
        return self._page(request, "directoryObjects", ids, top, "directoryObjects")

    def _answer_group(self, request: GraphRequest, segments: list[str]) -> Reply:
        """``/groups/{id}``, its ``members`` / ``transitiveMembers``, their user casts and ``$count``."""
        group_id = segments[1]
        if group_id not in self._groups:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{group_id}' does not exist or one of its queried reference-property objects are not present.",
            )
        if len(segments) == 2:
            return Reply(200, self._entity(request, "groups", self._groups[group_id]))
        relation = segments[2]
        if relation == "memberOf":
            return self._answer_member_of(request, segments, transitive=False)
        counting = segments[-1] == "$count" and len(segments) in (4, 5)
        if counting:
            segments = segments[:-1]
        if relation not in ("members", "transitiveMembers") or len(segments) > 4:
            raise GraphError(400, "Request_BadRequest", f"Resource not found for the segment '{relation}'.")
        cast = segments[3] if len(segments) == 4 else None
        self._check_member_query(request, cast, counting=counting)
        if relation == "members":
            ids = [m for m in self._members.get(group_id, []) if self._known(m)]
        else:
            ids = self._transitive(group_id)
        if cast is not None:
            ids = [m for m in ids if m in self._users]
        if counting:
            return Reply(200, str(len(ids)), {"Content-Type": "text/plain"})
        top = self._page_size(request.query)
        if cast is not None:
            return self._page(request, "users", ids, top, "users")
        return self._page(request, "directoryObjects", ids, top, "directoryObjects")

    def _check_member_query(self, request: GraphRequest, cast: str | None, *, counting: bool) -> None:
        if counting and (request.consistency_level or "").lower() != "eventual":
            # aad-advanced-queries: $count as a segment needs the header (documented error body).
            raise GraphError(400, "Request_BadRequest", "$count is not currently supported.")
        if cast is not None and cast not in USER_CASTS:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                f"The specified cast '{cast}' is not supported on this relationship.",
            )
        if cast is not None and not counting and not self._advanced(request):
            # Graph documents the cast as an advanced query: it needs the
            # header *and* $count=true, on every page.
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                "The request uses a filter or cast that requires the advanced query parameters: "
                "'ConsistencyLevel: eventual' header and '$count=true'.",
            )

    def _searched_groups(self, request: GraphRequest) -> list[str]:
        """``$search="displayName:words"`` (advanced: needs ``ConsistencyLevel: eventual``)."""
        raw = request.query.get("$search")
        if raw is None:
            return list(self._groups)
        if (request.consistency_level or "").lower() != "eventual":
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                "Request with $search query parameter only works through MSGraph with a special request "
                "header: 'ConsistencyLevel: eventual'",
            )
        match = SEARCH_CLAUSE.fullmatch(raw.strip())
        if match is None:
            raise GraphError(400, "Request_BadRequest", f"Invalid $search value: {raw[:80]!r}.")
        prop, words = match.group(1), unescape_search(match.group(2))
        if prop not in ("displayName", "description", "mail"):
            raise GraphError(400, "Request_UnsupportedQuery", f"Property '{prop}' does not support $search.")
        return [gid for gid, group in self._groups.items() if name_matches(group.get(prop), words)]

    def _require(self, permissions: frozenset[str]) -> None:
        if self.granted_permissions is not None and not (self.granted_permissions & permissions):
            raise GraphError(403)

    def _advanced(self, request: GraphRequest) -> bool:
        return (request.consistency_level or "").lower() == "eventual" and request.query.get(
            "$count", ""
        ).lower() == "true"

    def _user_or_404(self, user_id: str) -> dict[str, Any]:
        user = self._users.get(user_id)
        if user is None:
            raise GraphError(
                404,
                "Request_ResourceNotFound",
                f"Resource '{user_id}' does not exist or one of its queried reference-property objects are not present.",
            )
        return user

    def _transitive(self, group_id: str) -> list[str]:
        """Every nested member (users and groups) breadth first, each once."""
        found: list[str] = []
        seen = {group_id}
        pending = [group_id]
        while pending:
            following: list[str] = []
            for current in pending:
                for member_id in self._members.get(current, ()):
                    if member_id in seen or not self._known(member_id):
                        continue
                    seen.add(member_id)
                    found.append(member_id)
                    if member_id in self._groups:
                        following.append(member_id)
            pending = following
        return found

    def _known(self, object_id: str) -> bool:
        return object_id in self._users or object_id in self._groups or object_id in self._others

    def _page_size(self, query: Mapping[str, str]) -> int:
        raw = query.get("$top")
        if raw is None:
            size = 100
        elif not raw.isdigit() or not 1 <= int(raw) <= 999:
            raise GraphError(
                400, "Request_BadRequest", f"Invalid page size specified: '{raw}'. Must be between 1 and 999 inclusive."
            )
        else:
            size = int(raw)
        return size if self.page_cap is None else max(1, min(size, self.page_cap))

    def _select(self, query: Mapping[str, str]) -> tuple[str, ...] | None:
        raw = query.get("$select")
        if raw is None:
            return None
        return tuple(name.strip() for name in raw.split(",") if name.strip())

    def _context(self, entity_set: str, select: tuple[str, ...] | None, *, entity: bool = False) -> str:
        root = self._root()
        shape = entity_set if select is None else f"{entity_set}({','.join(select)})"
        return f"{root}/$metadata#{shape}{'/$entity' if entity else ''}"

    def _entity(self, request: GraphRequest, entity_set: str, data: Mapping[str, Any]) -> dict[str, Any]:
        select = self._select(request.query)
        body = {"@odata.context": self._context(entity_set, select, entity=True)}
        body.update(self._render(data, entity_set, select, typed=False))
        return body

    def _render(
        self, data: Mapping[str, Any], kind: str, select: tuple[str, ...] | None, *, typed: bool
    ) -> dict[str, Any]:
        is_user = kind == "users"
        item: dict[str, Any] = {}
        if typed:
            item["@odata.type"] = "#microsoft.graph.user" if is_user else "#microsoft.graph.group"
        if select is not None:
            names: Sequence[str] = select if "id" in select else ("id", *select)
        elif is_user:
            names = USER_DEFAULT_PROPERTIES
        else:
            names = tuple(data)
        if is_user and self.granted_permissions is not None and not (self.granted_permissions & USER_PERMISSIONS):
            return self._limited(item, data, names)
        for name in names:
            value = data.get(name)
            if value is None and is_user and name == "accountEnabled" and name not in data:
                # Every real user has accountEnabled; a fixture that leaves it
                # out means enabled, as DirectoryUser.from_graph reads it.
                value = True
            # Copy only what a client could mutate; strings and numbers are shared.
            item[name] = copy.deepcopy(value) if isinstance(value, dict | list) else value
        return item

    def _limited(self, item: dict[str, Any], data: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
        """A member user the app may not read, as permissions-overview documents it.

        "Only the object type and ID are returned and other properties have
        the value null" (collections come back empty, as in the documented
        memberOf sample); ``limited_information="absent"`` serves the older
        shape without the other properties at all.
        """
        item.setdefault("@odata.type", "#microsoft.graph.user")
        item["id"] = data["id"]
        if self.limited_information == "null":
            for name in names:
                if name != "id":
                    item[name] = [] if name in USER_COLLECTIONS else None
        return item

    def _page(self, request: GraphRequest, entity_set: str, ids: list[str], top: int, kind: str) -> Reply:
        token = request.query.get("$skiptoken")
        if token is not None:
            cursor = self._cursors.get(token)
            if cursor is None or cursor.path != request.path:
                raise GraphError(400, "Request_BadRequest", "The specified page token value has expired or is invalid.")
            # Kept, not consumed: a client whose connection broke after the
            # server answered may ask for the same page again, as with Graph.
            self._cursors.move_to_end(token)
        else:
            base_query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
            cursor = Cursor(request.path, kind, ids, self._select(request.query), base_query)
        chunk, rest = cursor.ids[:top], cursor.ids[top:]
        select = cursor.select
        typed = entity_set == "directoryObjects"
        value = []
        for object_id in chunk:
            if object_id in self._users:
                value.append(self._render(self._users[object_id], "users", select, typed=typed))
            elif object_id in self._groups and cursor.kind != "users":
                value.append(self._render(self._groups[object_id], "groups", select, typed=typed))
            elif object_id in self._others and cursor.kind != "users":
                other = self._others[object_id]
                value.append({"@odata.type": other.get("@odata.type"), "id": object_id})
        body: dict[str, Any] = {"@odata.context": self._context(entity_set, select)}
        if token is None and request.query.get("$count", "").lower() == "true" and self._advanced(request):
            body["@odata.count"] = len(ids)
        if rest:
            next_token = new_token()
            self._cursors[next_token] = Cursor(cursor.path, cursor.kind, rest, select, cursor.query)
            while len(self._cursors) > MAX_CURSORS:
                self._cursors.popitem(last=False)
            body["@odata.nextLink"] = self._next_link(cursor, next_token)
        body["value"] = value
        return Reply(200, body)

    def _next_link(self, cursor: Cursor, token: str) -> str:
        parts = [f"{name}={urllib.parse.quote(value, safe=',()')}" for name, value in cursor.query.items()]
        parts.append(f"$skiptoken={token}")
        return f"{self._root()}{cursor.path}?{'&'.join(parts)}"

    def _root(self) -> str:
        return self.root

    def _batch(self, outer: GraphRequest, raw_body: bytes) -> Reply:
        """``POST /$batch``: up to 20 independent GETs, answered in one response."""
        if not outer.authorized:
            return self._error(GraphError(401, "InvalidAuthenticationToken", "Access token is empty."), outer)
        try:
            payload = json.loads(raw_body)
            requests = payload["requests"]
            if not isinstance(requests, list) or not requests:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._error(GraphError(400, "BadRequest", "Invalid batch payload format."), outer)
        if len(requests) > MAX_BATCH:
            return self._error(
                GraphError(400, "BadRequest", f"Number of batch request steps exceeds the maximum of {MAX_BATCH}."),
                outer,
            )
        ids = [str(item.get("id", "")).lower() for item in requests]
        if len(set(ids)) != len(ids) or "" in ids:
            return self._error(GraphError(400, "BadRequest", "Batch request ids must be unique and present."), outer)
        responses = []
        for item in requests:
            url = str(item.get("url", ""))
            split = urllib.parse.urlsplit(url if url.startswith("/") else "/" + url)
            headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
            sub = GraphRequest(
                str(item.get("method", "GET")).upper(),
                split.path,
                parse_query(split.query),
                headers.get("consistencylevel"),
                outer.authorized,
                outer.client_request_id,
            )
            reply = self._dispatch(sub, batched=True)
            responses.append({"id": item["id"], "status": reply.status, "headers": reply.headers, "body": reply.body})
        return Reply(200, {"responses": responses})

    def _check_token(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return self._tokens is None or token.strip() in self._tokens

    # -- the entry points ------------------------------------------------------

    def serve(self, method: str, target: str, headers: Mapping[str, str], body: bytes = b"") -> Reply:
        """Answer one request (``target`` is the path and query, from ``/v1.0/...``).

        ``headers`` are matched case-insensitively. Waits :attr:`latency`
        first, counts the request in flight, routes the version prefix and
        ``POST /$batch``; everything else goes to the API.
        """
        lowered = {name.lower(): value for name, value in headers.items()}
        with self._in_flight_request():
            if self.latency:
                time.sleep(self.latency)
            split = urllib.parse.urlsplit(target)
            path = split.path
            request = GraphRequest(
                method.upper(),
                path.removeprefix("/v1.0") if path.startswith("/v1.0/") else path,
                parse_query(split.query),
                lowered.get("consistencylevel"),
                self._check_token(lowered.get("authorization")),
                lowered.get("client-request-id"),
            )
            if not path.startswith("/v1.0/"):
                reply = self._error(GraphError(400, "BadRequest", "Invalid version."), request)
                self._record(request, reply.status, None, batched=False)
            elif request.path == "/$batch" and request.method == "POST":
                fault = self._take_fault(request.path)
                if fault is not None and fault.kind == "status":
                    reply = self._error(GraphError(fault.status), request)
                    if fault.retry_after is not None:
                        reply.headers["Retry-After"] = fault.retry_after
                else:
                    reply = self._batch(request, body)
                    if fault is not None and fault.kind in ("reset", "truncated", "not_json"):
                        reply.wire_fault = fault.kind
                self._record(request, reply.status, fault, batched=False)
            else:
                reply = self._dispatch(request)
            return reply

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer an ``httpx.Request`` as Graph would (the handler behind :meth:`transport`).

        Wire faults become what a client sees on a socket: a reset raises
        ``httpx.ReadError``, a body cut short ``httpx.RemoteProtocolError``,
        ``not_json`` an HTML page. Latency faults sleep in the calling
        thread; :meth:`transport` runs this in a worker thread for that.
        """
        target = request.url.raw_path.decode("ascii")
        reply = self.serve(request.method, target, dict(request.headers), request.read())
        status, content, headers = render(reply)
        if reply.wire_fault == "reset":
            raise httpx.ReadError("Connection reset by peer (fake Graph)", request=request)
        if reply.wire_fault == "truncated":
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body (fake Graph)", request=request
            )
        return httpx.Response(status, headers=headers, content=content, request=request)

    def transport(self) -> httpx.MockTransport:
        """An ``httpx.MockTransport`` answering from this model, for sync and async clients.

        >>> import httpx
        >>> graph = FakeGraph({"groups": [{"id": "g1", "displayName": "Staff"}]})
        >>> with httpx.Client(transport=graph.transport()) as client:
        ...     answer = client.get("https://graph.microsoft.com/v1.0/groups", headers={"Authorization": "Bearer t"})
        >>> answer.json()["value"][0]["displayName"]
        'Staff'
        """

        async def answer(request: httpx.Request) -> httpx.Response:
            await request.aread()
            return await asyncio.to_thread(self.handle, request)

        def answer_sync(request: httpx.Request) -> httpx.Response:
            return self.handle(request)

        return _DualMockTransport(answer_sync, answer)


def render(reply: Reply) -> tuple[int, bytes, dict[str, str]]:
    """The status, body bytes and headers to send for ``reply`` (a ``not_json`` fault included)."""
    headers = dict(reply.headers)
    status = reply.status
    if reply.wire_fault == "not_json":
        status = 200
        payload = b"<html><body><h1>Bad gateway</h1></body></html>"
        headers["Content-Type"] = "text/html"
    elif isinstance(reply.body, str):  # $count answers plain text
        payload = reply.body.encode()
        headers.setdefault("Content-Type", "text/plain")
    else:
        payload = json.dumps(reply.body, separators=(",", ":")).encode()
        headers["Content-Type"] = JSON_CONTENT_TYPE
    return status, payload, headers


class _DualMockTransport(httpx.MockTransport):
    """A MockTransport with a sync handler for ``httpx.Client`` and an async one for ``AsyncClient``."""

    def __init__(
        self,
        sync_handler: Callable[[httpx.Request], httpx.Response],
        async_handler: Callable[[httpx.Request], Awaitable[httpx.Response]],
    ) -> None:
        super().__init__(sync_handler)
        self._async_handler = async_handler

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._async_handler(request)
