"""A fake Microsoft Graph v1.0 server for integration tests (public test helper).

:class:`FakeGraphServer` serves the same fixture format as
:meth:`~calm_azure_sync.InMemoryDirectory.from_dict` over real HTTP on
``127.0.0.1`` (an ephemeral port, standard library only), shaped the way
Graph documents its directory endpoints, so a host can run
:class:`~calm_azure_sync.GraphDirectory` -- or its own Graph code -- against
it::

    from calm_azure_sync.testing.fake_graph import Fault, FakeGraphServer

    with FakeGraphServer(fixture, page_cap=50) as graph:
        graph.inject(Fault.throttle(retry_after="2.128"), path="/groups/*")
        directory = GraphDirectory.from_credential(FakeCredential(), base_url=graph.base_url)
        ...
        assert graph.requests[0].resource_units == 4

What it models (each from the Graph documentation):

- ``GET /groups``, ``/groups/{id}``, ``/groups/{id}/members``,
  ``/groups/{id}/transitiveMembers`` and their user casts
  (``.../microsoft.graph.user``, or ``.../graph.user`` as the SDK spells it),
  ``/users`` and ``/users/{id}``; ``POST /$batch`` (at most 20 requests).
- ``@odata.context``; ``@odata.type`` on the items of uncast member lists;
  ``@odata.count`` on the first page only, when asked for properly.
- paging: ``$top`` (default 100, at most 999, more is a 400), a server page
  cap (``page_cap``) and opaque ``$skiptoken`` next links over a snapshot
  taken at the first page (a next link may be followed again, e.g. after a
  connection reset; the oldest of 10,000 live cursors expire).
- ``$search="displayName:words"`` on ``/groups`` (Graph's tokenized match;
  400 ``Request_UnsupportedQuery`` without ``ConsistencyLevel: eventual``)
  and the ``/$count`` segment on member lists (text/plain; 400
  ``Request_BadRequest`` without the header), as documented.
- ``$select`` (selected properties are returned, ``null`` when unset;
  without ``$select`` users carry only Graph's default properties).
- the advanced-query rule: an OData cast needs ``ConsistencyLevel:
  eventual`` *and* ``$count=true`` on every page (else 400
  ``Request_UnsupportedQuery``); ``$count=true`` without the header is
  silently ignored.
- a Bearer token is required (401 ``InvalidAuthenticationToken``
  otherwise); ``granted_permissions`` turns on 403s for calls the app has
  no permission for, and without a user permission serves member users in
  the "limited information" shape (id and ``@odata.type``, all else
  ``null``). The token itself is never stored or logged.
- errors in Graph's ``{"error": {"code", "message", "innerError"}}`` shape,
  with a ``request-id`` header.
- injected faults (:class:`Fault`): 429 with a (fractional) Retry-After,
  503, 504, 401, 403, latency, a connection reset, a truncated body, a body
  that is not JSON, and a rewrite of the real answer's JSON body (for
  hostile-input tests: duplicate ids across pages, a foreign next link…).
- a request log (:attr:`FakeGraphServer.requests`) with the resource-unit
  cost Graph documents for identity calls: ``users`` 2, ``members`` 3,
  ``transitiveMembers`` 5, any other GET 1; one less with ``$select``, one
  less with ``$top`` under 20, one more with ``$expand``; at least 1.

The fixture is mutable between (and during) runs: :meth:`FakeGraphServer.load`
replaces it, :meth:`FakeGraphServer.add_user` and friends change it in place.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import copy
import datetime
import fnmatch
import http.server
import json
import re
import secrets
import socket
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import attrs

from ..directory._search import name_matches

__all__ = ["Fault", "FakeGraphServer", "RecordedRequest", "resource_units"]

FaultKind = Literal["status", "latency", "reset", "truncated", "not_json", "rewrite"]

# Graph's own error codes and messages for the faults it documents.
_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Request_BadRequest", "Invalid request."),
    401: ("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
    403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    404: ("Request_ResourceNotFound", "Resource does not exist."),
    429: ("TooManyRequests", "Please retry again later."),
    500: ("generalException", "An unspecified error has occurred."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Please retry after a delay."),
    504: ("gatewayTimeout", "The gateway did not receive a timely response."),
}

# Properties /users returns when no $select is given (user-list.md).
_USER_DEFAULT_PROPERTIES = (
    "businessPhones",
    "displayName",
    "givenName",
    "id",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
)

_USER_CASTS = ("microsoft.graph.user", "graph.user")
# User properties that are collections: Graph never sends them as null.
_USER_COLLECTIONS = frozenset({"assignedLicenses", "businessPhones", "identities", "otherMails", "proxyAddresses"})
_GROUP_PERMISSIONS = frozenset(
    {
        "GroupMember.Read.All",
        "Group.Read.All",
        "Directory.Read.All",
        "GroupMember.ReadWrite.All",
        "Group.ReadWrite.All",
        "Directory.ReadWrite.All",
    }
)
_USER_PERMISSIONS = frozenset(
    {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
)
_MAX_BATCH = 20
_MAX_CURSORS = 10_000


@attrs.frozen
class Fault:
    """One scripted misbehaviour of the fake server.

    Build with the named constructors (:meth:`throttle`, :meth:`unavailable`,
    :meth:`reset`…) and queue with :meth:`FakeGraphServer.inject`.

    ``kind``: ``"status"`` answers ``status`` with a Graph error body (and
    ``retry_after`` as the ``Retry-After`` header when given);
    ``"latency"`` waits ``delay`` seconds, then answers normally;
    ``"reset"`` drops the connection without an answer; ``"truncated"``
    sends the real answer's headers and only half its body, then closes;
    ``"not_json"`` answers 200 with an HTML body; ``"rewrite"`` answers
    normally but passes the JSON body of a successful answer through
    ``transform`` first (it gets a deep copy and returns the body to send).
    ``delay`` is also waited before any other kind.
    """

    kind: FaultKind
    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0
    transform: Callable[[Any], Any] | None = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def throttle(cls, retry_after: str | None = "2.128") -> Fault:
        """429 TooManyRequests, with Graph's documented fractional ``Retry-After`` by default."""
        return cls("status", 429, retry_after)

    @classmethod
    def unavailable(cls, retry_after: str | None = None) -> Fault:
        """503 Service Unavailable."""
        return cls("status", 503, retry_after)

    @classmethod
    def gateway_timeout(cls) -> Fault:
        """504 Gateway Timeout."""
        return cls("status", 504)

    @classmethod
    def unauthorized(cls) -> Fault:
        """401 (an expired or revoked token, mid-run)."""
        return cls("status", 401)

    @classmethod
    def forbidden(cls) -> Fault:
        """403 Authorization_RequestDenied (a permission withdrawn)."""
        return cls("status", 403)

    @classmethod
    def error(cls, status: int) -> Fault:
        """Any other HTTP error status with a Graph error body."""
        return cls("status", status)

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Answer normally, ``seconds`` late."""
        return cls("latency", delay=seconds)

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection without answering."""
        return cls("reset")

    @classmethod
    def truncated(cls) -> Fault:
        """Announce the full body, send half of it, close the connection."""
        return cls("truncated")

    @classmethod
    def not_json(cls) -> Fault:
        """200 with an HTML body, as a misbehaving proxy might send."""
        return cls("not_json")

    @classmethod
    def rewrite(cls, transform: Callable[[Any], Any]) -> Fault:
        """Answer normally, but send ``transform(body)`` instead of a successful answer's JSON body.

        >>> Fault.rewrite(lambda body: {**body, "@odata.nextLink": "https://evil.example/v1.0/users"}).kind
        'rewrite'
        """
        return cls("rewrite", transform=transform)


@attrs.frozen
class RecordedRequest:
    """One request the fake server answered, as the request log keeps it.

    ``path`` is relative to the ``/v1.0`` root and ``query`` holds the
    decoded query parameters (names lower-cased). The Authorization header is
    never kept: ``authorized`` only says whether a Bearer token came.
    ``batched`` marks the requests that arrived inside a ``$batch``.
    """

    method: str
    path: str
    query: Mapping[str, str]
    consistency_level: str | None
    authorized: bool
    client_request_id: str | None
    status: int
    resource_units: int
    fault: str | None = None
    batched: bool = False

    @property
    def is_next_page(self) -> bool:
        """Whether this request followed a next link (carries a ``$skiptoken``)."""
        return "$skiptoken" in self.query


def resource_units(method: str, path: str, query: Mapping[str, str]) -> int:
    """The resource-unit cost Graph documents for one identity request.

    ``GET users`` 2, ``GET groups/{id}/members`` 3,
    ``GET groups/{id}/transitiveMembers`` 5, any other GET 1; ``$select``
    -1, ``$top`` under 20 -1, ``$expand`` +1; never less than 1.

    >>> resource_units("GET", "/groups/g1/transitiveMembers/microsoft.graph.user", {"$select": "id"})
    4
    """
    segments = [segment for segment in path.split("/") if segment]
    lowered = [segment.lower() for segment in segments]
    if method.upper() != "GET":
        cost = 1
    elif "transitivemembers" in lowered:
        cost = 5
    elif "members" in lowered:
        cost = 3
    elif lowered[:1] == ["users"]:
        cost = 2
    else:
        cost = 1
    if "$select" in query:
        cost -= 1
    if "$expand" in query:
        cost += 1
    top = query.get("$top", "")
    if top.isdigit() and int(top) < 20:
        cost -= 1
    return max(cost, 1)


class _Reply:
    """An answer before it is written: status, headers, a JSON-able body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}


class _Request:
    """One request as the dispatcher sees it (wire or $batch)."""

    __slots__ = ("authorized", "client_request_id", "consistency_level", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        consistency_level: str | None,
        authorized: bool,
        client_request_id: str | None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.consistency_level = consistency_level
        self.authorized = authorized
        self.client_request_id = client_request_id


class _Cursor:
    """A paged read in progress: a snapshot of ids and how to render them."""

    __slots__ = ("ids", "kind", "path", "query", "select")

    def __init__(
        self,
        path: str,
        kind: str,
        ids: list[str],
        select: tuple[str, ...] | None,
        query: dict[str, str],
    ) -> None:
        self.path = path
        self.kind = kind
        self.ids = ids
        self.select = select
        self.query = query


class _GraphError(Exception):
    """An answer in Graph's error shape (raised inside the dispatcher)."""

    def __init__(self, status: int, code: str | None = None, message: str | None = None) -> None:
        default_code, default_message = _STATUS_ERRORS.get(status, ("UnknownError", "Error."))
        self.status = status
        self.code = code or default_code
        self.message = message or default_message
        super().__init__(f"{self.status} {self.code}: {self.message}")


class FakeGraphServer:
    """A Graph-shaped HTTP server on ``127.0.0.1`` serving a directory fixture.

    ``fixture`` is the :meth:`InMemoryDirectory.from_dict` format. ``page_cap``
    caps every page below what ``$top`` asks (to test paging with small
    fixtures); ``latency`` delays every answer (a round-trip time);
    ``granted_permissions``, when given, are the application permissions
    the app holds (403 for calls needing others; without a user permission
    member users come back in Graph's documented "limited information" shape:
    ``@odata.type`` and ``id``, every other property ``null``, or absent with
    ``limited_information="absent"``); ``tokens``,
    when given, are the only Bearer tokens accepted.

    Use as a context manager (or :meth:`start` / :meth:`stop`); it stops its
    thread and closes every connection on exit.
    """

    def __init__(
        self,
        fixture: Mapping[str, Any] | None = None,
        *,
        page_cap: int | None = None,
        latency: float = 0.0,
        granted_permissions: Iterable[str] | None = None,
        tokens: Iterable[str] | None = None,
        limited_information: Literal["null", "absent"] = "null",
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
        self._faults: list[tuple[Fault, str | None, int]] = []
        self._cursors: collections.OrderedDict[str, _Cursor] = collections.OrderedDict()
        self._log: list[RecordedRequest] = []
        self._in_flight = 0
        self._peak_in_flight = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.load(fixture or {})

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> FakeGraphServer:
        """Bind an ephemeral port on 127.0.0.1 and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-graph", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every open connection and the listening socket."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeGraphServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._httpd is not None else "stopped"
        return f"FakeGraphServer({where}, users={len(self._users)}, groups={len(self._groups)})"

    @property
    def port(self) -> int:
        """The port the server listens on (it must be started)."""
        if self._httpd is None:
            raise RuntimeError("the fake Graph server is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The Graph root to configure clients with: ``http://127.0.0.1:PORT/v1.0``."""
        return f"http://127.0.0.1:{self.port}/v1.0"

    # -- the fixture ---------------------------------------------------------

    def load(self, fixture: Mapping[str, Any]) -> None:
        """Replace the whole directory (same format as ``InMemoryDirectory.from_dict``)."""
        users = {str(user["id"]): dict(user) for user in fixture.get("users") or ()}
        groups = {str(group["id"]): dict(group) for group in fixture.get("groups") or ()}
        members = {str(group): [str(m) for m in ids] for group, ids in (fixture.get("members") or {}).items()}
        with self._lock:
            self._users, self._groups, self._members = users, groups, members
            self._cursors.clear()

    def fixture(self) -> dict[str, Any]:
        """A deep copy of the directory currently served."""
        with self._lock:
            return copy.deepcopy(
                {
                    "users": list(self._users.values()),
                    "groups": list(self._groups.values()),
                    "members": self._members,
                }
            )

    def add_user(self, user: Mapping[str, Any], *, groups: Iterable[str] = ()) -> None:
        """Add (or replace) a user, optionally as a direct member of ``groups``."""
        with self._lock:
            self._users[str(user["id"])] = dict(user)
            for group_id in groups:
                self.add_member(group_id, str(user["id"]))

    def remove_user(self, user_id: str) -> None:
        """Delete a user and its memberships."""
        with self._lock:
            self._users.pop(user_id, None)
            for ids in self._members.values():
                while user_id in ids:
                    ids.remove(user_id)

    def add_group(self, group: Mapping[str, Any], *, members: Iterable[str] = ()) -> None:
        """Add (or replace) a group with its direct members."""
        with self._lock:
            self._groups[str(group["id"])] = dict(group)
            self._members[str(group["id"])] = list(members)

    def remove_group(self, group_id: str) -> None:
        """Delete a group (it becomes a 404) and its memberships elsewhere."""
        with self._lock:
            self._groups.pop(group_id, None)
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
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

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
            if fired is None:
                return None
            return self._faults.pop(fired)[0]

    def _record(self, request: _Request, status: int, fault: Fault | None, *, batched: bool) -> None:
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

    def _error(self, error: _GraphError, request: _Request) -> _Reply:
        request_id = str(uuid.uuid4())
        inner = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": request_id,
            "client-request-id": request.client_request_id or request_id,
        }
        body = {"error": {"code": error.code, "message": error.message, "innerError": inner}}
        return _Reply(error.status, body, {"request-id": request_id})

    def _dispatch(self, request: _Request, *, batched: bool = False) -> _Reply:
        """Answer one API request; status faults apply here (also inside $batch)."""
        fault = self._take_fault(request.path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        try:
            if fault is not None and fault.kind == "status":
                error = _GraphError(fault.status)
                reply = self._error(error, request)
                if fault.retry_after is not None:
                    reply.headers["Retry-After"] = fault.retry_after
            else:
                reply = self._answer(request)
                if fault is not None and fault.kind == "rewrite" and fault.transform is not None:
                    reply.body = fault.transform(copy.deepcopy(reply.body))
        except _GraphError as error:
            reply = self._error(error, request)
        reply.headers.setdefault("request-id", str(uuid.uuid4()))
        reply.headers["x-ms-resource-unit"] = str(resource_units(request.method, request.path, request.query))
        self._record(request, reply.status, fault, batched=batched)
        if fault is not None and fault.kind in ("reset", "truncated", "not_json"):
            reply.headers["x-fake-wire-fault"] = fault.kind
        return reply

    def _answer(self, request: _Request) -> _Reply:
        if not request.authorized:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        if request.method != "GET":
            raise _GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
        segments = [urllib.parse.unquote(s) for s in request.path.split("/") if s]
        if not segments or segments[0] not in ("groups", "users"):
            raise _GraphError(
                400, "Request_BadRequest", f"Resource not found for the segment '{segments[0] if segments else ''}'."
            )
        top = self._page_size(request.query)
        with self._lock:
            if segments[0] == "users":
                self._require(_USER_PERMISSIONS)
                if len(segments) == 1:
                    return self._page(request, "users", list(self._users), top, "users")
                if len(segments) == 2:
                    return _Reply(200, self._entity(request, "users", self._user_or_404(segments[1])))
                raise _GraphError(400, "Request_BadRequest", f"Resource not found for the segment '{segments[2]}'.")
            self._require(_GROUP_PERMISSIONS)
            if len(segments) == 1:
                return self._page(request, "groups", self._searched_groups(request), top, "groups")
            group_id = segments[1]
            if group_id not in self._groups:
                raise _GraphError(
                    404,
                    "Request_ResourceNotFound",
                    f"Resource '{group_id}' does not exist or one of its queried reference-property objects are not present.",
                )
            if len(segments) == 2:
                return _Reply(200, self._entity(request, "groups", self._groups[group_id]))
            relation = segments[2]
            counting = segments[-1] == "$count" and len(segments) in (4, 5)
            if counting:
                segments = segments[:-1]
            if relation not in ("members", "transitiveMembers") or len(segments) > 4:
                raise _GraphError(400, "Request_BadRequest", f"Resource not found for the segment '{relation}'.")
            cast = segments[3] if len(segments) == 4 else None
            if counting and (request.consistency_level or "").lower() != "eventual":
                # aad-advanced-queries: $count as a segment needs the header (documented error body).
                raise _GraphError(400, "Request_BadRequest", "$count is not currently supported.")
            if cast is not None and cast not in _USER_CASTS:
                raise _GraphError(
                    400,
                    "Request_UnsupportedQuery",
                    f"The specified cast '{cast}' is not supported on this relationship.",
                )
            if cast is not None and not counting and not self._advanced(request):
                # Graph documents the cast as an advanced query: it needs the
                # header *and* $count=true, on every page.
                raise _GraphError(
                    400,
                    "Request_UnsupportedQuery",
                    "The request uses a filter or cast that requires the advanced query parameters: "
                    "'ConsistencyLevel: eventual' header and '$count=true'.",
                )
            if relation == "members":
                ids = [m for m in self._members.get(group_id, []) if m in self._users or m in self._groups]
            else:
                ids = self._transitive(group_id)
            if cast is not None:
                ids = [m for m in ids if m in self._users]
                if counting:
                    return _Reply(200, str(len(ids)), {"Content-Type": "text/plain"})
                return self._page(request, "users", ids, top, "users")
            if counting:
                return _Reply(200, str(len(ids)), {"Content-Type": "text/plain"})
            return self._page(request, "directoryObjects", ids, top, "directoryObjects")

    def _searched_groups(self, request: _Request) -> list[str]:
        """``$search="displayName:words"`` (advanced: needs ``ConsistencyLevel: eventual``)."""
        raw = request.query.get("$search")
        if raw is None:
            return list(self._groups)
        if (request.consistency_level or "").lower() != "eventual":
            raise _GraphError(
                400,
                "Request_UnsupportedQuery",
                "Request with $search query parameter only works through MSGraph with a special request "
                "header: 'ConsistencyLevel: eventual'",
            )
        match = _SEARCH_CLAUSE.fullmatch(raw.strip())
        if match is None:
            raise _GraphError(400, "Request_BadRequest", f"Invalid $search value: {raw[:80]!r}.")
        prop, words = match.group(1), _unescape_search(match.group(2))
        if prop not in ("displayName", "description", "mail"):
            raise _GraphError(400, "Request_UnsupportedQuery", f"Property '{prop}' does not support $search.")
        return [gid for gid, group in self._groups.items() if name_matches(group.get(prop), words)]

    def _require(self, permissions: frozenset[str]) -> None:
        if self.granted_permissions is not None and not (self.granted_permissions & permissions):
            raise _GraphError(403)

    def _advanced(self, request: _Request) -> bool:
        return (request.consistency_level or "").lower() == "eventual" and request.query.get(
            "$count", ""
        ).lower() == "true"

    def _user_or_404(self, user_id: str) -> dict[str, Any]:
        user = self._users.get(user_id)
        if user is None:
            raise _GraphError(
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
                    if member_id in seen or (member_id not in self._users and member_id not in self._groups):
                        continue
                    seen.add(member_id)
                    found.append(member_id)
                    if member_id in self._groups:
                        following.append(member_id)
            pending = following
        return found

    def _page_size(self, query: Mapping[str, str]) -> int:
        raw = query.get("$top")
        if raw is None:
            size = 100
        elif not raw.isdigit() or not 1 <= int(raw) <= 999:
            raise _GraphError(
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

    def _entity(self, request: _Request, entity_set: str, data: Mapping[str, Any]) -> dict[str, Any]:
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
            names = _USER_DEFAULT_PROPERTIES
        else:
            names = tuple(data)
        if is_user and self.granted_permissions is not None and not (self.granted_permissions & _USER_PERMISSIONS):
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
                    item[name] = [] if name in _USER_COLLECTIONS else None
        return item

    def _page(self, request: _Request, entity_set: str, ids: list[str], top: int, kind: str) -> _Reply:
        token = request.query.get("$skiptoken")
        if token is not None:
            cursor = self._cursors.get(token)
            if cursor is None or cursor.path != request.path:
                raise _GraphError(400, "Request_BadRequest", "The specified page token value has expired or is invalid.")
            # Kept, not consumed: a client whose connection broke after the
            # server answered may ask for the same page again, as with Graph.
            self._cursors.move_to_end(token)
        else:
            base_query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
            cursor = _Cursor(request.path, kind, ids, self._select(request.query), base_query)
        chunk, rest = cursor.ids[:top], cursor.ids[top:]
        select = cursor.select
        typed = entity_set == "directoryObjects"
        value = []
        for object_id in chunk:
            if object_id in self._users:
                value.append(self._render(self._users[object_id], "users", select, typed=typed))
            elif object_id in self._groups and cursor.kind != "users":
                value.append(self._render(self._groups[object_id], "groups", select, typed=typed))
        body: dict[str, Any] = {"@odata.context": self._context(entity_set, select)}
        if token is None and request.query.get("$count", "").lower() == "true" and self._advanced(request):
            body["@odata.count"] = len(ids)
        if rest:
            next_token = _new_token()
            self._cursors[next_token] = _Cursor(cursor.path, cursor.kind, rest, select, cursor.query)
            while len(self._cursors) > _MAX_CURSORS:
                self._cursors.popitem(last=False)
            body["@odata.nextLink"] = self._next_link(cursor, next_token)
        body["value"] = value
        return _Reply(200, body)

    def _next_link(self, cursor: _Cursor, token: str) -> str:
        parts = [f"{name}={urllib.parse.quote(value, safe=',()')}" for name, value in cursor.query.items()]
        parts.append(f"$skiptoken={token}")
        return f"{self._root()}{cursor.path}?{'&'.join(parts)}"

    def _root(self) -> str:
        # Read once: a slow answer may still be written while the server stops.
        httpd = self._httpd
        if httpd is None:
            return "https://graph.microsoft.com/v1.0"
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1.0"

    def _batch(self, outer: _Request, raw_body: bytes) -> _Reply:
        """``POST /$batch``: up to 20 independent GETs, answered in one response."""
        if not outer.authorized:
            return self._error(_GraphError(401, "InvalidAuthenticationToken", "Access token is empty."), outer)
        try:
            payload = json.loads(raw_body)
            requests = payload["requests"]
            if not isinstance(requests, list) or not requests:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._error(_GraphError(400, "BadRequest", "Invalid batch payload format."), outer)
        if len(requests) > _MAX_BATCH:
            return self._error(
                _GraphError(400, "BadRequest", f"Number of batch request steps exceeds the maximum of {_MAX_BATCH}."),
                outer,
            )
        ids = [str(item.get("id", "")).lower() for item in requests]
        if len(set(ids)) != len(ids) or "" in ids:
            return self._error(_GraphError(400, "BadRequest", "Batch request ids must be unique and present."), outer)
        responses = []
        for item in requests:
            url = str(item.get("url", ""))
            split = urllib.parse.urlsplit(url if url.startswith("/") else "/" + url)
            headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
            sub = _Request(
                str(item.get("method", "GET")).upper(),
                split.path,
                _parse_query(split.query),
                headers.get("consistencylevel"),
                outer.authorized,
                outer.client_request_id,
            )
            reply = self._dispatch(sub, batched=True)
            responses.append({"id": item["id"], "status": reply.status, "headers": reply.headers, "body": reply.body})
        return _Reply(200, {"responses": responses})

    def _check_token(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return self._tokens is None or token.strip() in self._tokens


_SEARCH_CLAUSE = re.compile(r'"(\w+):((?:[^"\\]|\\.)*)"')


def _unescape_search(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _new_token() -> str:
    # Opaque, like Graph's: clients must follow the whole link, never parse it.
    raw = b"\x02\x00" + struct.pack(">I", secrets.randbits(32)) + secrets.token_bytes(18)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_query(query: str) -> dict[str, str]:
    return {name.lower(): value for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True)}


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops the SYNs of a concurrent client's
    # sixth connection, which then waits a full second for the retransmit.
    request_queue_size = 128
    fake: FakeGraphServer

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A keep-alive client that hangs up is normal, not worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            open_sockets = list(self._connections)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Graph clients pool connections
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _HTTPServer
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        # Silence the default stderr access log; the request log is the record.
        return

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._serve(self.rfile.read(length) if length else b"")

    def do_PATCH(self) -> None:
        self._serve(b"")

    do_PUT = do_DELETE = do_PATCH

    def _serve(self, body: bytes) -> None:
        with self.server.fake._in_flight_request():
            self._serve_counted(body)

    def _serve_counted(self, body: bytes) -> None:
        fake = self.server.fake
        if fake.latency:
            time.sleep(fake.latency)
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        request = _Request(
            self.command,
            path.removeprefix("/v1.0") if path.startswith("/v1.0/") else path,
            _parse_query(split.query),
            self.headers.get("ConsistencyLevel"),
            fake._check_token(self.headers.get("Authorization")),
            self.headers.get("client-request-id"),
        )
        if not path.startswith("/v1.0/"):
            reply = fake._error(_GraphError(400, "BadRequest", "Invalid version."), request)
            fake._record(request, reply.status, None, batched=False)
        elif request.path == "/$batch" and self.command == "POST":
            fake_fault = fake._take_fault(request.path)
            if fake_fault is not None and fake_fault.kind == "status":
                reply = fake._error(_GraphError(fake_fault.status), request)
                if fake_fault.retry_after is not None:
                    reply.headers["Retry-After"] = fake_fault.retry_after
            else:
                reply = fake._batch(request, body)
            fake._record(request, reply.status, fake_fault, batched=False)
        else:
            reply = fake._dispatch(request)
        self._write(reply)

    def _write(self, reply: _Reply) -> None:
        wire_fault = reply.headers.pop("x-fake-wire-fault", None)
        if wire_fault == "reset":
            self.close_connection = True
            with contextlib.suppress(OSError):
                # SO_LINGER 0: the client sees a reset, not a clean close.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        status = reply.status
        if wire_fault == "not_json":
            status = 200
            payload = b"<html><body><h1>Bad gateway</h1></body></html>"
            content_type = "text/html"
        elif isinstance(reply.body, str):  # $count answers plain text
            payload = reply.body.encode()
            content_type = reply.headers.pop("Content-Type", "text/plain")
        else:
            payload = json.dumps(reply.body, separators=(",", ":")).encode()
            content_type = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if wire_fault == "truncated":
            self.send_header("Connection", "close")
            self.close_connection = True
            payload = payload[: len(payload) // 2]
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(payload)

