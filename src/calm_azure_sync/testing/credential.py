"""``FakeCredential``: an azure-identity style async credential for tests against a fake Graph."""

from __future__ import annotations

import time
from typing import Any, Self

from azure.core.credentials import AccessToken

__all__ = ["FakeCredential"]


class FakeCredential:
    """An async token credential (azure-core's ``AsyncTokenCredential``) that hands out a fixed token.

    For :class:`~calm_azure_sync.GraphDirectory` against
    :class:`~calm_azure_sync.testing.FakeGraphServer` (or ``FakeGraph``'s
    mock transport): no token endpoint, no secret::

        from calm_azure_sync import GraphDirectory
        from calm_azure_sync.testing import FakeCredential, FakeGraphServer

        with FakeGraphServer(fixture) as graph:
            async with GraphDirectory.from_credential(FakeCredential(), base_url=graph.base_url) as directory:
                groups = await directory.list_groups()

    ``token`` is what ``get_token`` returns (the fake server accepts any
    Bearer token unless told ``tokens=[...]``), valid for ``expires_in``
    seconds from each call. ``tenant_id``, when given, is the tenant
    ``GraphDirectory.from_credential`` takes as the directory's own, as it
    does from azure-identity's credentials. ``scopes_requested`` records the
    scopes of every ``get_token`` call; ``closed`` says whether ``close``
    was called. ``repr`` never shows the token.
    """

    def __init__(self, token: str = "fake-token", *, expires_in: int = 3600, tenant_id: str | None = None) -> None:
        self._token = token
        self.expires_in = expires_in
        # The attribute azure-identity's credentials keep their tenant in, which GraphDirectory reads.
        self._tenant_id = tenant_id
        self.scopes_requested: list[tuple[str, ...]] = []
        self.closed = False

    @property
    def tenant_id(self) -> str | None:
        """The tenant this credential says it is for (``None``: it does not say)."""
        return self._tenant_id

    def __repr__(self) -> str:
        return f"FakeCredential(tenant_id={self._tenant_id!r})"

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """An :class:`~azure.core.credentials.AccessToken` holding ``token``, expiring in ``expires_in`` s."""
        self.scopes_requested.append(scopes)
        return AccessToken(self._token, int(time.time()) + self.expires_in)

    async def close(self) -> None:
        """Mark the credential closed (it holds nothing)."""
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
