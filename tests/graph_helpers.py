"""Shared pieces for the Graph tests: a fake credential, a recording sleep, fixtures."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken

from calm_azure_sync.directory.graph import GraphDirectory, RetryPolicy
from calm_azure_sync.testing.fake_graph import FakeGraphServer

# Distinctive values that must never appear in a message, a log line or a repr.
FAKE_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-token-XYZZY-7f3a9c"
CLIENT_SECRET = "client-secret-Q9~w8e7r6t5y4u3i2o1p"
TENANT_ID = "38d49456-54d4-455d-a8d6-c383c71e0a6d"


class _FakeAuthClient:
    def __init__(self, tenant_id: str) -> None:
        self._tenant_id = tenant_id


class FakeCredential:
    """Implements azure-identity's async ``get_token`` protocol with a fixed token.

    Holds a client secret the way real credentials do, so tests can check it
    never leaks. ``scopes_asked`` records every scope requested.
    """

    def __init__(self, token: str = FAKE_TOKEN, *, tenant_id: str | None = TENANT_ID) -> None:
        self._token = token
        self._client_secret = CLIENT_SECRET
        self._client = _FakeAuthClient(tenant_id) if tenant_id else None
        self.scopes_asked: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes_asked.append(scopes)
        return AccessToken(self._token, int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> FakeCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


class RecordingSleep:
    """An injectable sleep that returns at once and remembers what was asked."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


FAST_RETRY = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05, total_budget_seconds=60.0, jitter=0.5)


def directory_for(server: FakeGraphServer, **kwargs: Any) -> tuple[GraphDirectory, RecordingSleep]:
    """A GraphDirectory over the real SDK pointed at the fake server, with a recording sleep."""
    sleep = RecordingSleep()
    kwargs.setdefault("retry", FAST_RETRY)
    directory = GraphDirectory.from_credential(
        kwargs.pop("credential", FakeCredential()), base_url=server.base_url, sleep=sleep, **kwargs
    )
    return directory, sleep


def user(user_id: str, **fields: Any) -> dict[str, Any]:
    """A Graph user object with sensible defaults."""
    data: dict[str, Any] = {
        "id": user_id,
        "displayName": f"User {user_id}",
        "mail": f"{user_id}@school.example",
        "userPrincipalName": f"{user_id}@school.example",
        "givenName": "Given",
        "surname": user_id.title(),
        "accountEnabled": True,
        "userType": "Member",
        "assignedLicenses": [{"disabledPlans": [], "skuId": "00000000-0000-0000-0000-000000000001"}],
        "onPremisesSyncEnabled": None,
        "creationType": None,
    }
    data.update(fields)
    return data


@functools.cache
def examples_dir() -> Path:
    """Graph's documented example responses: ``../shared/reference/graph/examples`` beside the clone.

    CI has ``../shared`` next to the repository; a missing directory is a
    failure, not a skip: these tests are the proof that the parsers and the
    fake match what Microsoft documents.
    """
    candidates = [
        Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "graph" / "examples",
        Path("/work/shared/reference/graph/examples"),
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"Graph's documented examples are not at any of {[str(c) for c in candidates]}")


def example(name: str) -> Any:
    """One documented Graph example (JSON), as saved from the docs."""
    return json.loads((examples_dir() / name).read_text(encoding="utf-8"))


def sdk_directory(transport: Any, **kwargs: Any) -> GraphDirectory:
    """A GraphDirectory on the real msgraph-sdk whose httpx client answers from ``transport`` (no sockets)."""
    import httpx
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from msgraph.graph_request_adapter import GraphRequestAdapter
    from msgraph.graph_service_client import GraphServiceClient
    from msgraph_core import GraphClientFactory

    http = GraphClientFactory.create_with_default_middleware(client=httpx.AsyncClient(transport=transport))
    auth = AzureIdentityAuthenticationProvider(FakeCredential(), allowed_hosts=["graph.microsoft.com"])
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = "https://graph.microsoft.com/v1.0"
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("sleep", RecordingSleep())
    return GraphDirectory(GraphServiceClient(request_adapter=adapter), **kwargs)
