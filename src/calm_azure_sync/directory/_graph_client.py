"""How :meth:`GraphDirectory.from_credential` builds its SDK client: the checked Graph root, a guarded token
scoped to that one host, one shared TLS context, and the credential's secrets to scrub from messages.

The token goes to the configured Graph host and no other (``allowed_hosts``);
a failure to get one is told apart from a Graph failure (:class:`TokenFailure`);
nothing a credential holds reaches a message (:func:`redact`).
"""

from __future__ import annotations

import functools
import inspect
import ssl
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import httpx

from ..errors import ConfigError
from ._sdk import (
    AzureIdentityAuthenticationProvider,
    GraphClientFactory,
    GraphRequestAdapter,
    _graph_adapter_options,
)
from .consent import GRAPH_DEFAULT_SCOPE

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = ["SdkClient", "TokenFailure", "build_sdk_client", "origin", "redact"]

# National clouds have their own Graph host and token audience.
_NATIONAL_CLOUD_SCOPES = {
    "graph.microsoft.us": "https://graph.microsoft.us/.default",
    "dod-graph.microsoft.us": "https://dod-graph.microsoft.us/.default",
    "microsoftgraph.chinacloudapi.cn": "https://microsoftgraph.chinacloudapi.cn/.default",
}


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``: where a next link may lead is compared by this."""
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


def credential_tenant(credential: object) -> str | None:
    for holder in (credential, getattr(credential, "_client", None)):
        value = getattr(holder, "_tenant_id", None)
        if isinstance(value, str) and value and value.lower() not in ("common", "organizations"):
            return value
    return None


class TokenFailure(Exception):
    """Raised by :class:`GuardedCredential`: the credential, not Graph, failed."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(type(error).__name__)
        self.error = error


class GuardedCredential:
    """Wraps the host's credential so that a failure to get a token is told apart.

    azure-identity raises ``ClientAuthenticationError`` for a refused secret,
    ``ServiceRequestError`` for an unreachable token endpoint, and a host's
    own credential may raise anything; inside the SDK's auth provider all of
    them would look like any other failure.
    """

    def __init__(self, credential: Any) -> None:
        self._credential = credential

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        try:
            result = self._credential.get_token(*scopes, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as error:
            raise TokenFailure(error) from error
        return result


def credential_secrets(credential: object) -> tuple[str, ...]:
    """Secret-looking strings a credential holds, to scrub from Azure's messages."""
    found: list[str] = []
    for holder in (credential, getattr(credential, "_client", None)):
        for name, value in getattr(holder, "__dict__", {}).items():
            if isinstance(value, str) and len(value) >= 8 and any(
                word in name.lower() for word in ("secret", "password", "assertion", "certificate", "token")
            ):
                found.append(value)
    return tuple(found)


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


@attrs.frozen
class SdkClient:
    """What :func:`build_sdk_client` made: the request adapter and the HTTP pieces the directory closes."""

    adapter: GraphRequestAdapter
    http_client: Any
    network_transport: Any
    tenant_id: str | None
    secrets: tuple[str, ...] = attrs.field(repr=False)


def build_sdk_client(
    credential: AsyncTokenCredential,
    root: str,
    *,
    tenant_id: str | None,
    scopes: Sequence[str] | None,
    timeout: float,
) -> SdkClient:
    """The SDK's request adapter for Graph at ``root``, authenticated by ``credential`` (see the module docstring)."""
    parts = urllib.parse.urlsplit(root)
    host = (parts.hostname or "").lower()
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if parts.scheme not in ("https", "http") or not host or (parts.scheme == "http" and not loopback):
        raise ConfigError(f"base_url: must be an https URL (http only on localhost), got {root!r}")
    known_tenant = credential_tenant(credential)
    if tenant_id and known_tenant and tenant_id.lower() != known_tenant.lower():
        raise ConfigError(f"tenant_id: {tenant_id!r} differs from the credential's tenant {known_tenant!r}")
    auth = AzureIdentityAuthenticationProvider(
        GuardedCredential(credential),  # type: ignore[arg-type]
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
    http_client = GraphClientFactory.create_with_default_middleware(client=http_client, options=_graph_adapter_options)
    adapter = GraphRequestAdapter(auth, client=http_client)
    adapter.base_url = root
    return SdkClient(adapter, http_client, network_transport, tenant_id or known_tenant, credential_secrets(credential))
