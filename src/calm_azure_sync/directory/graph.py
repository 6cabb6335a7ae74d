"""The directory read from Microsoft Graph, through the official ``msgraph-sdk``.

How a read works, and why:

- Requests are built with the SDK's request builders and sent through its
  request adapter, so the SDK's authentication, redirect and telemetry
  middleware all apply. Responses come back raw (``NativeResponseHandler``)
  and are parsed here with ``json.loads`` into our own model: the SDK's typed
  models cost about 6 ms of CPU per user object (msgraph-sdk-python #584),
  hundreds of times what the raw path costs.
- Retrying is ours: :class:`GraphRetryHandler` replaces kiota's
  ``RetryHandler`` *inside* the SDK's middleware pipeline. Kiota's handler
  parses ``Retry-After`` with ``int()`` (Graph's documented sample is
  ``2.128``) and gives up after three retries; ours honours fractional
  values exactly, backs off with jitter otherwise, retries connection errors
  and cut-off bodies, and stops at a per-read time budget
  (:class:`RetryPolicy`).
- ``group_members`` asks for the transitive members cast to users, which
  Graph treats as an advanced query: ``ConsistencyLevel: eventual`` and
  ``$count=true`` go on *every* page request, because Graph does not carry
  the header over to the next link.
- Next links are followed as opaque URLs, but only to the configured Graph
  origin: a next link is server data, not a place to send a token.
- Every failure becomes a :class:`~calm_azure_sync.DirectoryError` (or a
  subclass) built from Graph's error body; no token or secret ever reaches
  a message, a log line or a ``repr``.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from .._async_closing import AsyncClosing
from .._gc import collector_paused
from ..errors import ConfigError, DirectoryAccessError, DirectoryError, GroupNotFoundError
from ..model import DirectoryGroup, DirectoryUser
from . import _graph_delta, _graph_lookup, _graph_person
from ._deadline import request_deadline
from ._graph_client import TokenFailure, build_sdk_client, origin, redact
from ._graph_common import (
    GROUP_READ_PERMISSIONS,
    graph_error,
    json_object,
    short,
    status_error,
)
from ._items import user_item
from ._retry import (
    ATTEMPTS_KEY,
    GraphRetryHandler,
    RetryBudget,
    RetryBudgetOption,
    RetryPolicy,
    Sleep,
    install_retry_handler,
    parse_retry_after,
)
from ._sdk import (
    NATIVE,
    AzureError,
    ClientAuthenticationError,
    GraphServiceClient,
    GraphUserRequestBuilder,
    GroupsRequestBuilder,
    RequestConfiguration,
    RequestInformation,
    RequestOption,
    ResponseHandlerOption,
)
from .delta import DeltaCursor, DeltaStart, DirectoryDelta

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = [
    "DEFAULT_GRAPH_URL",
    "GraphDirectory",
    "GraphRetryHandler",
    "RetryPolicy",
    "Sleep",
    "parse_retry_after",
]


DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
"""The global Microsoft Graph v1.0 root."""

_PAGE_SIZE = 999  # Graph's maximum for users, groups and members


def search_clause(search: str) -> str:
    r"""Graph's ``$search`` value for a group name search: ``"displayName:<words>"``.

    A double quote or backslash in the words is escaped with a backslash, so
    a search can never close the clause and add another.

    >>> print(search_clause('Year 9 "Sci"'))
    "displayName:Year 9 \"Sci\""
    """
    words = " ".join(search.split()).replace("\\", "\\\\").replace('"', '\\"')
    return f'"displayName:{words}"'


class GraphDirectory(AsyncClosing):
    """A :class:`~calm_azure_sync.Directory` read from Microsoft Graph with the official SDK.

    Build it from a credential (the usual way)::

        from azure.identity.aio import ClientSecretCredential
        credential = ClientSecretCredential(tenant_id, client_id, client_secret)
        async with GraphDirectory.from_credential(credential) as directory:
            groups = await directory.list_groups()

    or from a ``GraphServiceClient`` you configured yourself
    (``GraphDirectory(client)``); its kiota ``RetryHandler`` is then swapped
    for a :class:`GraphRetryHandler` following ``retry``.

    ``tenant_id`` is the tenant this directory reads (the reconciler refuses
    a mismatch with ``SyncConfig.tenant_id``). ``max_concurrency`` bounds the
    Graph requests in flight from this directory, however many
    ``group_members`` calls run at once. ``sleep`` replaces ``asyncio.sleep``
    for retry waits (tests).

    The app registration needs the application permissions
    ``GroupMember.Read.All`` and ``User.Read.All`` (or ``Directory.Read.All``),
    granted by an administrator.
    """

    def __init__(
        self,
        client: GraphServiceClient,
        *,
        tenant_id: str | None = None,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 16,
        sleep: Sleep | None = None,
        random_draw: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigError(f"GraphDirectory.max_concurrency: must be an integer >= 1, got {max_concurrency!r}")
        self._client = client
        self._adapter: Any = client.request_adapter
        self.base_url: str = str(self._adapter.base_url or DEFAULT_GRAPH_URL).rstrip("/")
        self._origin = origin(self.base_url)
        self.tenant_id = tenant_id
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self._retry_handler = GraphRetryHandler(self.retry, sleep=sleep, random_draw=random_draw)
        http_client = getattr(self._adapter, "_http_client", None)
        if not isinstance(http_client, httpx.AsyncClient):
            raise ConfigError("GraphDirectory needs a GraphServiceClient whose request adapter uses httpx")
        self.retry_wiring = install_retry_handler(http_client, self._retry_handler)
        self._owned_http_client: httpx.AsyncClient | None = None
        self._owned_transport: httpx.AsyncBaseTransport | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._secrets: tuple[str, ...] = ()

    @classmethod
    def from_credential(
        cls,
        credential: AsyncTokenCredential,
        *,
        base_url: str | None = None,
        tenant_id: str | None = None,
        scopes: Sequence[str] | None = None,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 16,
        timeout: float = 60.0,
        sleep: Sleep | None = None,
        random_draw: Callable[[], float] | None = None,
    ) -> GraphDirectory:
        """Build a directory from any ``azure-identity`` async credential.

        ``base_url`` points it at another Graph root (a national cloud such as
        ``https://graph.microsoft.us/v1.0``, or a fake in tests); the token is
        sent to that host and to no other. ``scopes`` default to the host's
        ``/.default`` scope (``https://graph.microsoft.com/.default`` for the
        global cloud and any non-Microsoft host). ``tenant_id`` defaults to
        the credential's own tenant; giving a different one is a
        :class:`~calm_azure_sync.ConfigError`. The credential stays yours to
        close; :meth:`aclose` closes the HTTP client made here.
        """
        root = (base_url or DEFAULT_GRAPH_URL).rstrip("/")
        client = build_sdk_client(credential, root, tenant_id=tenant_id, scopes=scopes, timeout=timeout)
        directory = cls(
            GraphServiceClient(request_adapter=client.adapter),
            tenant_id=client.tenant_id,
            retry=retry,
            max_concurrency=max_concurrency,
            sleep=sleep,
            random_draw=random_draw,
        )
        directory._owned_http_client = client.http_client
        directory._owned_transport = client.network_transport
        directory._secrets = client.secrets
        return directory

    def __repr__(self) -> str:
        # Only configuration that is safe to show: never the credential or a token.
        return (
            f"GraphDirectory(base_url={self.base_url!r}, tenant_id={self.tenant_id!r}, "
            f"max_concurrency={self.max_concurrency})"
        )

    async def aclose(self) -> None:
        """Close the HTTP client :meth:`from_credential` created (not the credential). Safe to call again."""
        http_client, self._owned_http_client = self._owned_http_client, None
        transport, self._owned_transport = self._owned_transport, None
        if http_client is not None:
            await http_client.aclose()
        if transport is not None:
            await transport.aclose()

    # -- the Directory protocol ---------------------------------------------------

    async def list_groups(self, search: str | None = None) -> Sequence[DirectoryGroup]:
        """Every group in the tenant, or those whose name matches ``search``.

        ``GET /groups`` with ``$select`` and pages of 999. With ``search``,
        Graph's server-side ``$search="displayName:<search>"`` (an advanced
        query: ``ConsistencyLevel: eventual`` on every page). Graph's search
        is tokenized: each word of ``search`` matches the start of a word of
        the name, ignoring case (``"sci"`` finds "Year 9 Science"). A blank
        ``search`` lists every group.
        """
        builder: GroupsRequestBuilder = self._client.groups
        query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
            select=list(DirectoryGroup.GRAPH_SELECT), top=_PAGE_SIZE
        )
        headers: dict[str, str] = {}
        operation = "listing groups"
        if search is not None and not isinstance(search, str):
            raise ConfigError(f"list_groups: search must be a string or None, got {type(search).__name__}")
        if search is not None and search.strip():
            query.search = search_clause(search)
            headers["ConsistencyLevel"] = "eventual"  # Graph refuses $search without it
            operation = f"searching groups for {search.strip()!r}"
        groups: dict[str, DirectoryGroup] = {}
        async for page in self._paged(builder, query, headers=headers, operation=operation, group_id=None):
            for item in page:
                group = DirectoryGroup.from_graph(item)
                groups.setdefault(group.id, group)
        return list(groups.values())

    async def group_member_count(self, group_id: str) -> int:
        """How many users the group has, nested groups resolved, in one request.

        ``GET /groups/{id}/transitiveMembers/microsoft.graph.user/$count`` with
        ``ConsistencyLevel: eventual``: Graph's eventually consistent index, so
        the count may lag a change by a little. For the mapping screen; the
        sync itself always reads the members. An unknown group raises
        :class:`~calm_azure_sync.GroupNotFoundError`.
        """
        if not isinstance(group_id, str) or not group_id.strip():
            raise GroupNotFoundError(str(group_id), code="invalid_group_id", status=None)
        operation = f"counting the members of group {group_id!r}"
        builder = self._client.groups.by_group_id(group_id).transitive_members.graph_user.count
        budget = RetryBudget(self.retry.total_budget_seconds)
        options = [ResponseHandlerOption(NATIVE), RetryBudgetOption(budget)]
        request = builder.to_get_request_information(self._configuration(None, {"ConsistencyLevel": "eventual"}, options))
        response = await self._send(request, operation=operation)
        if not 200 <= response.status_code < 300:
            raise self._status_error(response, operation=operation, group_id=group_id)
        text = response.content.decode("ascii", "replace").strip()
        if not text.isdigit():
            raise DirectoryError(
                f"{operation}: Graph's count is not a number ({len(response.content)} bytes)",
                code="invalid_response",
                status=response.status_code,
            )
        return int(text)

    async def group_members(self, group_id: str) -> Sequence[DirectoryUser]:
        """The group's users, nested groups resolved by Graph, each user once.

        ``GET /groups/{id}/transitiveMembers/graph.user`` with ``$select``,
        ``$top=999``, ``$count=true`` and ``ConsistencyLevel: eventual`` on
        every page. An unknown group raises
        :class:`~calm_azure_sync.GroupNotFoundError`.
        """
        if not isinstance(group_id, str) or not group_id.strip():
            raise GroupNotFoundError(str(group_id), code="invalid_group_id", status=None)
        builder: GraphUserRequestBuilder = self._client.groups.by_group_id(group_id).transitive_members.graph_user
        query = GraphUserRequestBuilder.GraphUserRequestBuilderGetQueryParameters(
            select=list(DirectoryUser.GRAPH_SELECT), top=_PAGE_SIZE, count=True
        )
        users: dict[str, DirectoryUser] = {}
        async for page in self._paged(
            builder,
            query,
            headers={"ConsistencyLevel": "eventual"},
            operation=f"reading the members of group {group_id!r}",
            group_id=group_id,
        ):
            # A page is parsed without awaiting, so pausing the cyclic collector
            # is contained: 999 fresh objects that form no cycles would
            # otherwise trigger collections that walk every object read so far.
            # Each item is classified by the same rules a delta read uses (_items.user_item):
            # untyped is a user, another type is skipped, an unreadable user fails the read.
            with collector_paused():
                where = f"reading the members of group {group_id!r}"
                for item in page:
                    user = user_item(item, where)
                    if isinstance(user, DirectoryUser) and user.id not in users:
                        users[user.id] = user
        return list(users.values())

    async def lookup_users(self, ids: Iterable[str]) -> Mapping[str, DirectoryUser | None]:
        """Each user by object id, ``None`` for an id that is no user (gone, or never was).

        ``GET /users/{id}?$select=<the member fields>`` (User.Read.All); a
        single id is one request, more are sent as JSON ``$batch`` requests of
        20 (Graph's maximum), several batches at once within
        ``max_concurrency``. A throttled or unavailable sub-request is retried
        in a later batch after its own ``Retry-After``; 404 is ``None``; 401
        and 403 are :class:`~calm_azure_sync.DirectoryAccessError`; a user in
        the limited-information shape is ``users_not_readable``.
        """
        return await _graph_lookup.lookup_users(self, ids)

    async def lookup_groups(self, ids: Iterable[str]) -> Mapping[str, DirectoryGroup | None]:
        """Each group by object id, ``None`` when it is gone: the mapped groups' names for reviews.

        ``GET /groups/{id}?$select=<the group fields>``, batched like
        :meth:`lookup_users` (GroupMember.Read.All).
        """
        return await _graph_lookup.lookup_groups(self, ids)

    async def users_by_email(self, email: str) -> Sequence[DirectoryUser]:
        """The users whose ``mail`` is ``email`` (else whose ``userPrincipalName`` is), for ``explain``.

        ``GET /users?$filter=mail eq '…'`` and, when none matches,
        ``userPrincipalName eq '…'`` (default queries, User.Read.All).
        """
        return await _graph_person.users_by_email(self, email)

    async def user_groups(self, user_id: str, *, transitive: bool) -> Sequence[DirectoryGroup]:
        """The user's groups: ``GET /users/{id}/transitiveMemberOf/microsoft.graph.group`` (or ``memberOf``).

        Paged by 999 with ``$count=true`` and ``ConsistencyLevel: eventual``;
        an unknown user is a :class:`~calm_azure_sync.DirectoryError` with code ``not_found``.
        """
        return await _graph_person.user_groups(self, user_id, transitive=transitive)

    async def group_parents(self, group_id: str) -> Sequence[DirectoryGroup]:
        """The groups ``group_id`` is directly in: ``GET /groups/{id}/memberOf/microsoft.graph.group``."""
        return await _graph_person.group_parents(self, group_id)

    async def changes(
        self,
        cursor: Mapping[str, Any] | None,
        group_ids: Iterable[str],
        *,
        start: DeltaStart = "initial",
    ) -> tuple[DirectoryDelta, DeltaCursor]:
        """What changed since ``cursor``: the :class:`~calm_azure_sync.DeltaDirectory` protocol.

        ``groups/delta?$select=members&$filter=id eq '…' or …`` per chunk of
        50 of ``group_ids`` and ``users/delta?$select=<the member fields>``,
        all at once; later rounds follow the opaque delta links the cursor
        keeps. ``start="latest"`` starts new chains from now
        (``$deltatoken=latest``: no data, just a link). No change costs
        ⌈groups / 50⌉ + 1 requests. Permissions: ``GroupMember.Read.All``
        and ``User.Read.All``. See :mod:`calm_azure_sync.directory.delta`.
        """
        return await _graph_delta.changes(self, cursor, group_ids, start=start)

    # -- paging, sending, errors --------------------------------------------------

    async def _paged(
        self,
        builder: Any,
        query: Any,
        *,
        headers: Mapping[str, str],
        operation: str,
        group_id: str | None,
    ) -> Any:
        """Yield every page's items (a list of dicts), following next links within the Graph origin."""
        budget = RetryBudget(self.retry.total_budget_seconds)
        options = [ResponseHandlerOption(NATIVE), RetryBudgetOption(budget)]
        request = builder.to_get_request_information(
            self._configuration(query, headers, options)
        )
        followed: set[str] = set()
        while True:
            page = await self._get_json(request, operation=operation, group_id=group_id)
            values, next_link = self._turn_page(page, followed, operation)
            yield values
            if next_link is None:
                return
            request = builder.with_url(next_link).to_get_request_information(
                self._configuration(None, headers, options)
            )

    @staticmethod
    def _configuration(query: Any, headers: Mapping[str, str], options: list[RequestOption]) -> Any:
        configuration: Any = RequestConfiguration(query_parameters=query, options=list(options))
        for name, value in headers.items():
            configuration.headers.add(name, value)
        return configuration

    def _turn_page(
        self, page: Mapping[str, Any], followed: set[str], operation: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page's items (each an object) and its checked next link, ``None`` on the last page.

        A next link seen before is a loop: refused, never followed for ever.
        """
        values = page.get("value")
        if not isinstance(values, list):
            raise DirectoryError(f"{operation}: Graph's answer has no 'value' list", code="invalid_response")
        for item in values:
            if type(item) is not dict:
                raise DirectoryError(f"{operation}: Graph returned a non-object item", code="invalid_response")
        next_link = page.get("@odata.nextLink")
        if next_link is None:
            return values, None
        url = self._check_next_link(next_link, operation)
        if url in followed:
            raise DirectoryError(f"{operation}: Graph returned the same next link twice", code="invalid_response")
        followed.add(url)
        return values, url

    def _check_next_link(self, link: object, operation: str) -> str:
        if not isinstance(link, str) or not link:
            raise DirectoryError(f"{operation}: Graph's next link is not a URL", code="invalid_response")
        try:
            link_origin = origin(link)
            userinfo = urllib.parse.urlsplit(link).username is not None
        except ValueError:
            raise DirectoryError(f"{operation}: Graph's next link is not a URL", code="invalid_response") from None
        if link_origin != self._origin or userinfo:
            scheme, host, port = link_origin
            raise DirectoryError(
                f"{operation}: refusing a next link to {scheme}://{host}:{port}, "
                f"outside the configured Graph root {self.base_url}",
                code="foreign_next_link",
            )
        return link

    def _slot(self) -> asyncio.Semaphore:
        # A semaphore belongs to one event loop; hosts may reuse a directory across loops.
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._semaphore_loop = loop
        return self._semaphore

    async def _send(self, request: RequestInformation, *, operation: str) -> httpx.Response:
        """Send through the SDK pipeline; every failure to get an answer is a DirectoryError."""
        try:
            # The interactive deadline (if any) runs from when the request has its slot.
            async with self._slot(), request_deadline(operation):
                response: httpx.Response = await self._adapter.send_primitive_async(request, "bytes", {})
        except DirectoryError:  # the interactive deadline's timeout: already ours
            raise
        except TokenFailure as failure:
            raise self._token_error(operation, failure.error) from failure.error
        except AzureError as error:  # a credential inside a client the host built
            raise self._token_error(operation, error) from error
        except httpx.HTTPError as error:
            raise DirectoryError(
                f"{operation}: Microsoft Graph could not be reached ({type(error).__name__})",
                code="connection_error",
            ) from error
        except Exception as error:
            # Whatever else the SDK stack raises (its own errors, a bug in a
            # middleware): the host catches DirectoryError, never a surprise.
            raise DirectoryError(
                f"{operation}: the Graph request failed ({type(error).__name__})", code="request_failed"
            ) from error
        return response

    def _token_error(self, operation: str, error: BaseException) -> DirectoryAccessError:
        # Azure's own text (AADSTS codes) helps the admin; anything else may
        # be a host credential's message, so only its type is shown.
        if isinstance(error, ClientAuthenticationError):
            detail = redact(short(str(error.message or error)), self._secrets)
        else:
            detail = type(error).__name__
        return DirectoryAccessError(
            f"{operation}: the credential could not get a token ({detail}); check the tenant, the client "
            "secret or certificate, and that the token endpoint can be reached",
            code="authentication_failed",
            missing_permissions=(),
        )

    async def _get_json(
        self,
        request: RequestInformation,
        *,
        operation: str,
        group_id: str | None,
        permissions: tuple[str, ...] = GROUP_READ_PERMISSIONS,
    ) -> dict[str, Any]:
        response = await self._send(request, operation=operation)
        status = response.status_code
        if not 200 <= status < 300:
            raise self._status_error(response, operation=operation, group_id=group_id, permissions=permissions)
        return json_object(response.content, operation, status=status, response=response)

    def _status_error(
        self,
        response: httpx.Response,
        *,
        operation: str,
        group_id: str | None,
        permissions: tuple[str, ...] = GROUP_READ_PERMISSIONS,
    ) -> DirectoryError:
        code, message, request_id = graph_error(response)
        return status_error(
            response.status_code,
            code,
            message,
            request_id,
            operation=operation,
            group_id=group_id,
            permissions=permissions,
            attempts=response.extensions.get(ATTEMPTS_KEY),
        )


