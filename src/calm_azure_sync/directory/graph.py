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
import email.utils
import functools
import json
import logging
import math
import random
import ssl
import time
import urllib.parse
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import httpx

from .._gc import collector_paused
from ..errors import ConfigError, DirectoryAccessError, DirectoryError, GroupNotFoundError
from ..model import DirectoryGroup, DirectoryUser
from .consent import GRAPH_DEFAULT_SCOPE

# Some generated request-builder modules call warnings.warn(DeprecationWarning)
# in their class bodies at import time; importing them here, once, keeps that
# noise out of host applications that run with warnings as errors.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kiota_abstractions.default_query_parameters  # noqa: F401
    import msgraph.generated.groups.item.group_item_request_builder
    import msgraph.generated.groups.item.transitive_members.transitive_members_request_builder  # noqa: F401
    from azure.core.exceptions import ClientAuthenticationError
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from kiota_abstractions.native_response_handler import NativeResponseHandler
    from kiota_abstractions.request_information import RequestInformation
    from kiota_abstractions.request_option import RequestOption
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from kiota_http.kiota_client_factory import KiotaClientFactory
    from kiota_http.middleware import MiddlewarePipeline, RetryHandler
    from kiota_http.middleware.async_kiota_transport import AsyncKiotaTransport
    from kiota_http.middleware.middleware import REQUEST_OPTIONS_KEY, BaseMiddleware
    from kiota_http.middleware.options import ResponseHandlerOption
    from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder
    from msgraph.generated.groups.item.transitive_members.graph_user.graph_user_request_builder import (
        GraphUserRequestBuilder,
    )
    from msgraph.graph_request_adapter import GraphRequestAdapter
    from msgraph.graph_request_adapter import options as _graph_adapter_options
    from msgraph.graph_service_client import GraphServiceClient
    from msgraph_core import GraphClientFactory

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

logger = logging.getLogger("calm_azure_sync.graph")

DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
"""The global Microsoft Graph v1.0 root."""

# National clouds have their own Graph host and token audience.
_NATIONAL_CLOUD_SCOPES = {
    "graph.microsoft.us": "https://graph.microsoft.us/.default",
    "dod-graph.microsoft.us": "https://dod-graph.microsoft.us/.default",
    "microsoftgraph.chinacloudapi.cn": "https://microsoftgraph.chinacloudapi.cn/.default",
}

_PAGE_SIZE = 999  # Graph's maximum for users, groups and members
_ATTEMPTS_KEY = "calm_azure_sync.attempts"
_MESSAGE_LIMIT = 300
_GROUP_READ_PERMISSIONS = ("GroupMember.Read.All", "Directory.Read.All")
_NATIVE = NativeResponseHandler()


class Sleep(Protocol):
    """How the retry handler waits: ``asyncio.sleep`` unless a test injects another."""

    def __call__(self, seconds: float, /) -> Awaitable[None]:
        """Wait ``seconds``."""
        ...


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or math.isnan(value):
        raise ConfigError(f"RetryPolicy.{attribute.name}: must be a number >= 0, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """When and how long to retry a Graph request that was throttled or failed.

    - ``max_attempts``: attempts per request, the first included.
    - ``base_delay`` / ``max_delay``: the exponential backoff used when Graph
      sends no ``Retry-After``: ``base_delay * 2 ** (retry - 1)``, capped at
      ``max_delay``, then shortened by a random fraction of up to ``jitter``
      (0 to 1) so that concurrent readers do not retry in step.
    - ``Retry-After`` (seconds, fractions included, or an HTTP date) is
      honoured exactly, even above ``max_delay``: retrying earlier than Graph
      asks only earns another 429.
    - ``total_budget_seconds``: the most one read (one ``list_groups`` or
      ``group_members`` call, all its pages) may spend waiting between
      retries; a wait that would exceed it ends the read with the last error.
    - ``retry_statuses``: the HTTP statuses retried (429, 503, 504).
      Connection errors, timeouts and bodies cut short are retried too.

    >>> RetryPolicy().delay(1, retry_after="2.128", jitter_draw=0.5)
    2.128
    >>> RetryPolicy(base_delay=1.0, jitter=0.0).delay(3, retry_after=None, jitter_draw=0.5)
    4.0
    """

    max_attempts: int = attrs.field(default=6)
    base_delay: float = attrs.field(default=1.0, validator=_positive)
    max_delay: float = attrs.field(default=32.0, validator=_positive)
    total_budget_seconds: float = attrs.field(default=120.0, validator=_positive)
    jitter: float = attrs.field(default=0.5)
    retry_statuses: frozenset[int] = attrs.field(default=frozenset({429, 503, 504}), converter=frozenset)

    @max_attempts.validator
    def _check_attempts(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"RetryPolicy.max_attempts: must be an integer >= 1, got {value!r}")

    @jitter.validator
    def _check_jitter(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"RetryPolicy.jitter: must be between 0 and 1, got {value!r}")

    def delay(self, retry: int, *, retry_after: str | None, jitter_draw: float) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        ``jitter_draw`` is a random number in [0, 1).
        """
        honoured = parse_retry_after(retry_after)
        if honoured is not None:
            return honoured
        backoff: float = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        return backoff * (1.0 - self.jitter * jitter_draw)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (``"2.128"`` → 2.128), or ``None``.

    Delta-seconds may be fractional (Graph's own sample is); an HTTP date
    gives the seconds until then (never negative). Anything else is ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            return None
        current = time.time() if now is None else now
        return max(0.0, moment.timestamp() - current)
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        return None
    return seconds


class _RetryBudget:
    """Seconds of retry waiting one read may still spend (shared by its pages)."""

    __slots__ = ("remaining",)

    def __init__(self, seconds: float) -> None:
        self.remaining = seconds

    def allows(self, delay: float) -> bool:
        return delay <= self.remaining

    def spend(self, delay: float) -> None:
        self.remaining -= delay


class _RetryBudgetOption(RequestOption):
    """Carries a read's retry budget to the retry handler through kiota's request options."""

    KEY = "calm_azure_sync.retry_budget"

    def __init__(self, budget: _RetryBudget) -> None:
        self.budget = budget

    @staticmethod
    def get_key() -> str:
        return _RetryBudgetOption.KEY


class GraphRetryHandler(BaseMiddleware):
    """Kiota middleware that retries throttled and failed Graph requests per a :class:`RetryPolicy`.

    :class:`GraphDirectory` puts it in the SDK pipeline in place of kiota's
    ``RetryHandler``. Hosts that build their own ``GraphServiceClient`` can
    do the same through ``GraphClientFactory.create_with_custom_middleware``.
    ``sleep`` and ``random`` are injectable so tests need not wait.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Sleep | None = None,
        random_draw: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.policy = policy or RetryPolicy()
        self._sleep: Sleep = sleep or asyncio.sleep
        self._random_draw = random_draw or random.Random().random

    async def send(self, request: httpx.Request, transport: httpx.AsyncBaseTransport) -> httpx.Response:
        """Send ``request`` down the pipeline, retrying as the policy says."""
        budget = self._budget(request)
        policy = self.policy
        retry = 0
        while True:
            response: httpx.Response | None = None
            failure: httpx.TransportError | None = None
            try:
                response = await super().send(request, transport)
                if response.status_code not in policy.retry_statuses:
                    # Read here so that a body cut short is retried like a reset.
                    await response.aread()
                    response.extensions[_ATTEMPTS_KEY] = retry + 1
                    return response
            except httpx.TransportError as error:
                failure = error
                if response is not None:
                    # The body broke off: release the connection, retry like a reset.
                    await response.aclose()
                    response = None
            retry += 1
            retry_after = None if response is None else response.headers.get("Retry-After")
            delay = policy.delay(retry, retry_after=retry_after, jitter_draw=self._random_draw())
            what = type(failure).__name__ if response is None else f"HTTP {response.status_code}"
            if retry >= policy.max_attempts or not budget.allows(delay):
                logger.warning(
                    "Graph %s %s failed with %s after %d attempt(s); not retrying (next wait %.3f s, budget left %.3f s)",
                    request.method,
                    request.url.path,
                    what,
                    retry,
                    delay,
                    budget.remaining,
                )
                if response is None:
                    assert failure is not None
                    raise failure
                await response.aread()
                response.extensions[_ATTEMPTS_KEY] = retry
                return response
            if response is not None:
                await response.aclose()
            logger.info(
                "Graph %s %s failed with %s; retry %d in %.3f s",
                request.method,
                request.url.path,
                what,
                retry,
                delay,
            )
            budget.spend(delay)
            await self._sleep(delay)
            request.headers["Retry-Attempt"] = str(retry)

    def _budget(self, request: httpx.Request) -> _RetryBudget:
        options = request.extensions.get(REQUEST_OPTIONS_KEY) or {}
        option = options.get(_RetryBudgetOption.KEY)
        if isinstance(option, _RetryBudgetOption):
            return option.budget
        return _RetryBudget(self.policy.total_budget_seconds)


def _install_retry_handler(http_client: httpx.AsyncClient, handler: GraphRetryHandler) -> str:
    """Put ``handler`` in the client's kiota pipeline(s) in place of any retry handler.

    Returns ``"replaced"`` or ``"added"``: a client without a kiota pipeline
    gets one holding just our handler.
    """
    transports: list[Any] = [http_client._transport, *http_client._mounts.values()]
    outcome = "added"
    for transport in transports:
        pipeline = getattr(transport, "pipeline", None)
        if not isinstance(pipeline, MiddlewarePipeline):
            continue
        previous: Any = None
        current = pipeline._first_middleware
        while current is not None:
            if isinstance(current, RetryHandler | GraphRetryHandler):
                handler.next = current.next
                if previous is None:
                    pipeline._first_middleware = handler
                else:
                    previous.next = handler
                if pipeline._current_middleware is current:
                    pipeline._current_middleware = handler
                outcome = "replaced"
                break
            previous, current = current, current.next
        else:
            handler.next = pipeline._first_middleware
            pipeline._first_middleware = handler
            if pipeline._current_middleware is None:
                pipeline._current_middleware = handler
    if not any(isinstance(getattr(t, "pipeline", None), MiddlewarePipeline) for t in transports):
        pipeline = KiotaClientFactory.create_middleware_pipeline([handler], http_client._transport)
        http_client._transport = AsyncKiotaTransport(transport=http_client._transport, pipeline=pipeline)
    return outcome


def _origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def _default_scope(host: str) -> str:
    return _NATIONAL_CLOUD_SCOPES.get(host.lower(), GRAPH_DEFAULT_SCOPE)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # httpx builds a new context (reading the CA bundle, ~40 ms) per client;
    # hosts that make a directory per run share one verified context instead.
    return httpx.create_ssl_context()


def _credential_tenant(credential: object) -> str | None:
    for holder in (credential, getattr(credential, "_client", None)):
        value = getattr(holder, "_tenant_id", None)
        if isinstance(value, str) and value and value.lower() not in ("common", "organizations"):
            return value
    return None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _limited_information(item: Mapping[str, Any]) -> bool:
    """Whether a user item is Graph's "limited information" shape, not a readable user.

    Without a user permission Graph lists member users with their ``id`` and
    ``@odata.type`` and every other property ``null`` (permissions-overview:
    "Limited information returned for inaccessible member objects"), or, in
    the older shape, without the other properties at all. We ``$select``
    ``accountEnabled`` and ``userPrincipalName``; a readable user always
    carries both keys and its ``accountEnabled`` is never ``null`` (Entra
    requires it). So: ``accountEnabled`` null or absent, or
    ``userPrincipalName`` absent, is unreadable. Reading such a user anyway
    would make a disabled user look enabled and everyone look emailless.
    """
    return item.get("accountEnabled") is None or "userPrincipalName" not in item


def _users_not_readable(operation: str) -> DirectoryAccessError:
    return DirectoryAccessError(
        f"{operation}: Graph returned users with only their id and type (every other property null "
        "or missing), so the app may read memberships but not users",
        missing_permissions=("User.Read.All", "Directory.Read.All"),
        code="users_not_readable",
    )


def _graph_error(response: httpx.Response) -> tuple[str | None, str | None, str | None]:
    """Graph's error ``code``, ``message`` and request id, read defensively."""
    code = message = None
    request_id = response.headers.get("request-id")
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        inner = error.get("innerError") or error.get("innererror")
        if isinstance(inner, dict) and isinstance(inner.get("request-id"), str):
            request_id = inner["request-id"]
    return code or None, None if message is None else _short(message), request_id


class GraphDirectory:
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
        self._origin = _origin(self.base_url)
        self.tenant_id = tenant_id
        self.retry = retry or RetryPolicy()
        self.max_concurrency = max_concurrency
        self._retry_handler = GraphRetryHandler(self.retry, sleep=sleep, random_draw=random_draw)
        http_client = getattr(self._adapter, "_http_client", None)
        if not isinstance(http_client, httpx.AsyncClient):
            raise ConfigError("GraphDirectory needs a GraphServiceClient whose request adapter uses httpx")
        self.retry_wiring = _install_retry_handler(http_client, self._retry_handler)
        self._owned_http_client: httpx.AsyncClient | None = None
        self._owned_transport: httpx.AsyncBaseTransport | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None

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
        parts = urllib.parse.urlsplit(root)
        host = (parts.hostname or "").lower()
        loopback = host in ("127.0.0.1", "localhost", "::1")
        if parts.scheme not in ("https", "http") or not host or (parts.scheme == "http" and not loopback):
            raise ConfigError(f"base_url: must be an https URL (http only on localhost), got {root!r}")
        known_tenant = _credential_tenant(credential)
        if tenant_id and known_tenant and tenant_id.lower() != known_tenant.lower():
            raise ConfigError(
                f"tenant_id: {tenant_id!r} differs from the credential's tenant {known_tenant!r}"
            )
        auth = AzureIdentityAuthenticationProvider(
            credential,
            scopes=list(scopes or [_default_scope(host)]),
            # A bare host name: the token goes to the configured Graph host only.
            allowed_hosts=[host],
        )
        http_client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            http2=parts.scheme == "https",
            verify=_tls_context(),
        )
        # msgraph-core's AsyncGraphTransport does not close the transport it
        # wraps; keep a handle on it so aclose() can.
        network_transport = http_client._transport
        http_client = GraphClientFactory.create_with_default_middleware(
            client=http_client, options=_graph_adapter_options
        )
        adapter = GraphRequestAdapter(auth, client=http_client)
        adapter.base_url = root
        directory = cls(
            GraphServiceClient(request_adapter=adapter),
            tenant_id=tenant_id or known_tenant,
            retry=retry,
            max_concurrency=max_concurrency,
            sleep=sleep,
            random_draw=random_draw,
        )
        directory._owned_http_client = http_client
        directory._owned_transport = network_transport
        return directory

    def __repr__(self) -> str:
        # Only configuration that is safe to show: never the credential or a token.
        return (
            f"GraphDirectory(base_url={self.base_url!r}, tenant_id={self.tenant_id!r}, "
            f"max_concurrency={self.max_concurrency})"
        )

    async def aclose(self) -> None:
        """Close the HTTP client :meth:`from_credential` created (not the credential)."""
        if self._owned_http_client is not None:
            await self._owned_http_client.aclose()
        if self._owned_transport is not None:
            await self._owned_transport.aclose()

    async def __aenter__(self) -> GraphDirectory:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the Directory protocol ---------------------------------------------------

    async def list_groups(self) -> Sequence[DirectoryGroup]:
        """Every group in the tenant (``GET /groups``, ``$select``, pages of 999)."""
        builder: GroupsRequestBuilder = self._client.groups
        query = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters(
            select=list(DirectoryGroup.GRAPH_SELECT), top=_PAGE_SIZE
        )
        groups: dict[str, DirectoryGroup] = {}
        async for page in self._paged(builder, query, headers={}, operation="listing groups", group_id=None):
            for item in page:
                group = DirectoryGroup.from_graph(item)
                groups.setdefault(group.id, group)
        return list(groups.values())

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
            with collector_paused():
                from_graph = DirectoryUser.from_graph
                for item in page:
                    kind = item.get("@odata.type")
                    if kind is not None and kind != "#microsoft.graph.user":
                        continue  # the cast returns users only; anything else is not ours to read
                    if _limited_information(item):
                        raise _users_not_readable(f"reading the members of group {group_id!r}")
                    user = from_graph(item)
                    if user.id not in users:
                        users[user.id] = user
        return list(users.values())

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
        budget = _RetryBudget(self.retry.total_budget_seconds)
        options = [ResponseHandlerOption(_NATIVE), _RetryBudgetOption(budget)]
        request = builder.to_get_request_information(
            self._configuration(query, headers, options)
        )
        followed: set[str] = set()
        while True:
            page = await self._get_json(request, operation=operation, group_id=group_id)
            values = page.get("value")
            if not isinstance(values, list):
                raise DirectoryError(f"{operation}: Graph's answer has no 'value' list", code="invalid_response")
            for item in values:
                if type(item) is not dict:
                    raise DirectoryError(f"{operation}: Graph returned a non-object item", code="invalid_response")
            yield values
            next_link = page.get("@odata.nextLink")
            if next_link is None:
                return
            next_link = self._check_next_link(next_link, operation)
            if next_link in followed:
                raise DirectoryError(f"{operation}: Graph returned the same next link twice", code="invalid_response")
            followed.add(next_link)
            request = builder.with_url(next_link).to_get_request_information(
                self._configuration(None, headers, options)
            )

    @staticmethod
    def _configuration(query: Any, headers: Mapping[str, str], options: list[RequestOption]) -> Any:
        configuration: Any = RequestConfiguration(query_parameters=query, options=list(options))
        for name, value in headers.items():
            configuration.headers.add(name, value)
        return configuration

    def _check_next_link(self, link: object, operation: str) -> str:
        if not isinstance(link, str) or not link:
            raise DirectoryError(f"{operation}: Graph's next link is not a URL", code="invalid_response")
        try:
            origin = _origin(link)
            userinfo = urllib.parse.urlsplit(link).username is not None
        except ValueError:
            raise DirectoryError(f"{operation}: Graph's next link is not a URL", code="invalid_response") from None
        if origin != self._origin or userinfo:
            scheme, host, port = origin
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

    async def _get_json(
        self, request: RequestInformation, *, operation: str, group_id: str | None
    ) -> dict[str, Any]:
        try:
            async with self._slot():
                response: httpx.Response = await self._adapter.send_primitive_async(request, "bytes", {})
        except ClientAuthenticationError as error:
            raise DirectoryAccessError(
                f"{operation}: the credential could not get a token ({_short(str(error.message or error))})",
                code="authentication_failed",
                missing_permissions=(),
            ) from error
        except httpx.HTTPError as error:
            raise DirectoryError(
                f"{operation}: Microsoft Graph could not be reached ({type(error).__name__})",
                code="connection_error",
            ) from error
        status = response.status_code
        if not 200 <= status < 300:
            raise self._status_error(response, operation=operation, group_id=group_id)
        try:
            page = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise DirectoryError(
                f"{operation}: Graph's answer is not valid JSON (HTTP {status}, "
                f"{len(response.content)} bytes, {response.headers.get('Content-Type', 'no content type')})",
                code="invalid_response",
                status=status,
                request_id=response.headers.get("request-id"),
            ) from None
        if not isinstance(page, dict):
            raise DirectoryError(
                f"{operation}: Graph's answer is not a JSON object",
                code="invalid_response",
                status=status,
                request_id=response.headers.get("request-id"),
            )
        return page

    def _status_error(self, response: httpx.Response, *, operation: str, group_id: str | None) -> DirectoryError:
        status = response.status_code
        code, message, request_id = _graph_error(response)
        said = f"HTTP {status}" + (f": {message}" if message else "")
        if status == 401:
            return DirectoryAccessError(
                f"{operation}: Microsoft Graph did not accept the app's token ({said}); check the tenant, "
                "the client secret or certificate, and that an administrator granted consent. "
                "The app needs User.Read.All and GroupMember.Read.All",
                missing_permissions=_GROUP_READ_PERMISSIONS,
                code=code,
                status=status,
                request_id=request_id,
            )
        if status == 403:
            return DirectoryAccessError(
                f"{operation}: Microsoft Graph denied the request ({said}); the app needs the application "
                "permissions User.Read.All and GroupMember.Read.All, or Directory.Read.All",
                missing_permissions=_GROUP_READ_PERMISSIONS,
                code=code,
                status=status,
                request_id=request_id,
            )
        if status == 404 and group_id is not None:
            return GroupNotFoundError(group_id, code=code, status=status, request_id=request_id)
        attempts = response.extensions.get(_ATTEMPTS_KEY)
        tried = f" after {attempts} attempts" if isinstance(attempts, int) and attempts > 1 else ""
        return DirectoryError(
            f"{operation}: Microsoft Graph answered {said}{tried}",
            code=code,
            status=status,
            request_id=request_id,
        )

