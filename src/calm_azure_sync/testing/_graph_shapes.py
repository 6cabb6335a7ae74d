"""The fake Graph's vocabulary: faults, the request log, costs, and the shapes of requests and answers.

Shared by the model (:mod:`._graph_model`) and the HTTP server around it
(:mod:`.fake_graph`); the public names are re-exported from
:mod:`calm_azure_sync.testing.fake_graph`.
"""

from __future__ import annotations

import base64
import re
import secrets
import struct
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

__all__ = ["Fault", "RecordedRequest", "resource_units"]

FaultKind = Literal["status", "latency", "reset", "truncated", "not_json", "rewrite"]

# Graph's own error codes and messages for the faults it documents.
STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("Request_BadRequest", "Invalid request."),
    401: ("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
    403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    404: ("Request_ResourceNotFound", "Resource does not exist."),
    429: ("TooManyRequests", "Please retry again later."),
    500: ("generalException", "An unspecified error has occurred."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Please retry after a delay."),
    504: ("gatewayTimeout", "The gateway did not receive a timely response."),
    410: ("resyncRequired", "The delta token is no longer valid, and the app must reset the sync state."),
}

# Properties /users returns when no $select is given (user-list.md).
USER_DEFAULT_PROPERTIES = (
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

USER_CASTS = ("microsoft.graph.user", "graph.user")
GROUP_CASTS = ("microsoft.graph.group", "graph.group")
# A user found by email: ``$filter=mail eq '…'`` or ``userPrincipalName eq '…'`` (a quote doubled inside).
USER_EQ_FILTER = re.compile(r"(mail|userPrincipalName)\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)
# User properties that are collections: Graph never sends them as null.
USER_COLLECTIONS = frozenset({"assignedLicenses", "businessPhones", "identities", "otherMails", "proxyAddresses"})
GROUP_PERMISSIONS = frozenset(
    {
        "GroupMember.Read.All",
        "Group.Read.All",
        "Directory.Read.All",
        "GroupMember.ReadWrite.All",
        "Group.ReadWrite.All",
        "Directory.ReadWrite.All",
    }
)
USER_PERMISSIONS = frozenset(
    {"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"}
)
MAX_BATCH = 20
MAX_CURSORS = 10_000


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


class Reply:
    """An answer before it is written: status, headers, a JSON-able body (or text).

    ``wire_fault`` (``"reset"``, ``"truncated"``, ``"not_json"``) says how
    the wire should misbehave when sending it.
    """

    __slots__ = ("body", "headers", "status", "wire_fault")

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.wire_fault: str | None = None


class GraphRequest:
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


class Cursor:
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


class GraphError(Exception):
    """An answer in Graph's error shape (raised inside the dispatcher)."""

    def __init__(self, status: int, code: str | None = None, message: str | None = None) -> None:
        default_code, default_message = STATUS_ERRORS.get(status, ("UnknownError", "Error."))
        self.status = status
        self.code = code or default_code
        self.message = message or default_message
        self.location: str | None = None  # a 410's Location header (delta: where to start again)
        super().__init__(f"{self.status} {self.code}: {self.message}")


SEARCH_CLAUSE = re.compile(r'"(\w+):((?:[^"\\]|\\.)*)"')


def unescape_search(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def new_token() -> str:
    # Opaque, like Graph's: clients must follow the whole link, never parse it.
    raw = b"\x02\x00" + struct.pack(">I", secrets.randbits(32)) + secrets.token_bytes(18)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_query(query: str) -> dict[str, str]:
    return {name.lower(): value for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True)}
