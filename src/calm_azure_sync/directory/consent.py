"""The "Connect" button: Microsoft's admin-consent flow for the app registration.

The host's web layer sends a Trust administrator to :func:`admin_consent_url`
and, when Azure redirects back, hands the query parameters to
:func:`parse_consent_callback`. The state round trip ties the callback to the
admin's own session (keep ``state`` server-side, one per attempt); the tenant
id Azure reports is then stored as ``SyncConfig.tenant_id`` (or, for a
Trust with several tenants, added to ``SyncConfig.tenants``: each tenant
consents once, docs/tenants.md).

Microsoft's warning applies: the ``tenant`` parameter of the callback can be
spoofed, so it only says *which* tenant to configure, never *who* the user
is. The first successful read with a credential for that tenant is the proof
that consent was granted.

This module does no IO and does not import the Graph SDK.
"""

from __future__ import annotations

import hmac
import re
import secrets
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence

import attrs

from .._text import show
from ..errors import ConfigError, ConsentError

__all__ = [
    "ALTERNATIVE_PERMISSIONS",
    "ConsentResult",
    "GRAPH_DEFAULT_SCOPE",
    "LOGIN_AUTHORITY",
    "REQUIRED_PERMISSIONS",
    "admin_consent_url",
    "new_state",
    "parse_consent_callback",
]

GRAPH_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
"""The scope that asks for the app's configured application permissions."""

REQUIRED_PERMISSIONS: tuple[str, ...] = ("User.Read.All", "GroupMember.Read.All")
"""The Microsoft Graph *application* permissions the app registration needs.

``User.Read.All`` reads the members' profiles (name, mail, account state,
licences); ``GroupMember.Read.All`` lists groups and their (transitive)
memberships. Both need an administrator's consent.
"""

ALTERNATIVE_PERMISSIONS: tuple[str, ...] = ("Directory.Read.All",)
"""The broader permission that covers both :data:`REQUIRED_PERMISSIONS`."""

LOGIN_AUTHORITY = "https://login.microsoftonline.com"
"""The Microsoft identity platform's global authority."""


@attrs.frozen
class _Cloud:
    name: str
    graph_hosts: tuple[str, ...]  # the first is the default scope's host

    @property
    def default_scope(self) -> str:
        return f"https://{self.graph_hosts[0]}/.default"


# Microsoft Entra authority host -> its cloud, from "Microsoft Graph national
# cloud deployments" (learn.microsoft.com/graph/deployments). The hosts are
# azure-identity's AzureAuthorityHosts values. US Government L4 (GCC High) and
# L5 (DoD) share one authority; L4's Graph is the default, DoD's is accepted
# as an explicit scope. Azure Germany closed in 2021 and is not listed.
_CLOUDS: dict[str, _Cloud] = {
    "login.microsoftonline.com": _Cloud("global", ("graph.microsoft.com",)),
    "login.microsoftonline.us": _Cloud("US Government", ("graph.microsoft.us", "dod-graph.microsoft.us")),
    "login.chinacloudapi.cn": _Cloud("China (21Vianet)", ("microsoftgraph.chinacloudapi.cn",)),
}
_GRAPH_HOSTS = {host: cloud for cloud in _CLOUDS.values() for host in cloud.graph_hosts}


def _authority_host(authority: object) -> tuple[str | None, str | None]:
    """The authority's host, or the problem with it. Either a bare host or an https URL."""
    if not isinstance(authority, str) or not authority.strip():
        return None, f"authority: must be a host or an https URL, got {show(authority)}"
    text = authority.strip()
    if "://" not in text:
        text = "https://" + text  # the bare host form azure-identity's AzureAuthorityHosts uses
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        return None, f"authority: {show(authority)} is not a host or an https URL"
    if parts.scheme.lower() != "https" or not parts.hostname:
        return None, f"authority: must be a host or an https URL, got {show(authority)}"
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or port not in (None, 443):
        return None, f"authority: must be the authority host alone (no path or port), got {show(authority)}"
    host = parts.hostname.lower().rstrip(".")
    if host not in _CLOUDS:
        known = ", ".join(f"{known_host} ({cloud.name})" for known_host, cloud in _CLOUDS.items())
        return None, f"authority: {show(authority)} is not a Microsoft Entra authority this library knows: {known}"
    return host, None

# Tenant: a GUID, a domain name ("contoso.onmicrosoft.com") or "organizations".
_TENANT = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")
_MAX_VALUE = 4096  # error_description is long; anything longer is not Azure talking
_MAX_STATE = 1024


@attrs.frozen
class ConsentResult:
    """A successful admin-consent callback.

    ``tenant_id`` is the consenting tenant's id (a GUID, lower-cased);
    ``scope`` the permissions Azure reported as granted, if it said.
    """

    tenant_id: str
    scope: tuple[str, ...] = ()


def new_state() -> str:
    """A fresh unguessable ``state`` value (store it in the admin's session)."""
    return secrets.token_urlsafe(32)


def _argument_problems(client_id: str, redirect_uri: str, state: str, tenant: str) -> list[str]:
    """What is wrong with the consent URL's client, redirect, state and tenant arguments."""
    problems: list[str] = []
    for name, value in (("client_id", client_id), ("redirect_uri", redirect_uri), ("state", state)):
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{name}: must be a non-empty string")
    if isinstance(state, str) and len(state) > _MAX_STATE:
        problems.append(f"state: must be at most {_MAX_STATE} characters")
    if not isinstance(tenant, str) or not tenant.strip():
        problems.append("tenant: must be a non-empty string")
    elif tenant.strip().lower() in ("common", "consumers"):
        problems.append(f"tenant: {tenant!r} cannot grant admin consent; use 'organizations' or the tenant id")
    elif not _TENANT.match(tenant.strip()):
        problems.append(f"tenant: {tenant!r} is not a tenant id, domain name or 'organizations'")
    if isinstance(redirect_uri, str) and redirect_uri.strip():
        parts = urllib.parse.urlsplit(redirect_uri)
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            problems.append("redirect_uri: must be an https URL (http only for localhost)")
        elif not parts.hostname:
            problems.append("redirect_uri: must be an absolute URL")
    return problems


def _scope_for(scope: str | None, cloud: _Cloud | None) -> tuple[str | None, str | None]:
    """The scope to ask for (the cloud's Graph by default), or the problem with the one given."""
    if scope is None:
        return (cloud.default_scope if cloud else GRAPH_DEFAULT_SCOPE), None
    if not isinstance(scope, str) or not scope.strip():
        return scope, "scope: must be a non-empty string"
    if cloud is not None:
        try:
            scope_host = (urllib.parse.urlsplit(scope.strip()).hostname or "").lower()
        except ValueError:
            scope_host = ""
        other = _GRAPH_HOSTS.get(scope_host)
        if other is not None and other is not cloud:
            return scope, (
                f"scope: {show(scope)} is the {other.name} cloud's Graph, but the authority is the "
                f"{cloud.name} cloud's (use {cloud.default_scope})"
            )
    return scope, None


def admin_consent_url(
    client_id: str,
    redirect_uri: str,
    state: str,
    tenant: str = "organizations",
    *,
    authority: str = LOGIN_AUTHORITY,
    scope: str | None = None,
) -> str:
    """The v2.0 ``/adminconsent`` URL to send a Trust administrator to.

    ``tenant`` is ``"organizations"`` (any work or school tenant), a tenant
    GUID or a verified domain; ``"common"`` is refused, as Microsoft says not
    to use it here. ``redirect_uri`` must exactly match one registered on the
    app.

    ``authority`` picks the cloud, given as a host (``login.microsoftonline.us``,
    as azure-identity's ``AzureAuthorityHosts`` has it) or as a URL
    (``https://login.microsoftonline.us``): the global cloud
    (``login.microsoftonline.com``), US Government (``login.microsoftonline.us``)
    or China (``login.chinacloudapi.cn``). ``scope`` defaults to that cloud's
    Graph: ``https://graph.microsoft.com/.default``,
    ``https://graph.microsoft.us/.default`` or
    ``https://microsoftgraph.chinacloudapi.cn/.default`` (pass
    ``https://dod-graph.microsoft.us/.default`` for US Government DoD). An
    unknown authority, or a scope naming another cloud's Graph, is refused.
    Bad input raises one :class:`~calm_azure_sync.ConfigError` listing every
    problem.

    >>> admin_consent_url("c1d2", "https://app.example/azure/callback", "s123")  # doctest: +ELLIPSIS
    'https://login.microsoftonline.com/organizations/v2.0/adminconsent?client_id=c1d2&scope=https%3A%2F%2Fgraph...'
    """
    problems = _argument_problems(client_id, redirect_uri, state, tenant)
    host, problem = _authority_host(authority)
    if problem:
        problems.append(problem)
    scope, problem = _scope_for(scope, _CLOUDS.get(host or ""))
    if problem:
        problems.append(problem)
    if problems:
        raise ConfigError(problems)
    query = urllib.parse.urlencode(
        {"client_id": client_id.strip(), "scope": scope, "redirect_uri": redirect_uri, "state": state}
    )
    return f"https://{host}/{urllib.parse.quote(tenant.strip())}/v2.0/adminconsent?{query}"


def _single(params: Mapping[str, str] | Mapping[str, Sequence[str]], name: str) -> str | None:
    """One parameter's value; a repeated parameter is refused (parameter pollution)."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, Sequence) and len(value) == 1 and isinstance(value[0], str):
        text = value[0]
    elif isinstance(value, Sequence) and len(value) == 0:
        return None
    else:
        raise ConsentError(f"the consent callback repeats or mangles the {name!r} parameter")
    if len(text) > _MAX_VALUE:
        raise ConsentError(f"the consent callback's {name!r} parameter is too long")
    return text


def _check_state(params: Mapping[str, str] | Mapping[str, Sequence[str]], expected_state: str) -> None:
    """Refuse a callback whose state is missing or not the one this sign-in sent (compared in constant time)."""
    state = _single(params, "state")
    if not state:
        # Microsoft's own error redirect may come without state
        # (?error=permission_denied&error_description=...: the admin cancelled).
        # Still refused, as nothing ties it to this sign-in, but Azure's words
        # are kept so the host can say what happened.
        error = _single(params, "error")
        description = _single(params, "error_description")
        reported = f" (it reports {show(error)})" if error else ""
        raise ConsentError(
            f"the consent callback carries no state: it did not come from this sign-in{reported}",
            error=error,
            error_description=description,
        )
    if not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise ConsentError("the consent callback's state does not match: it did not come from this sign-in")


def parse_consent_callback(
    params: Mapping[str, str] | Mapping[str, Sequence[str]], expected_state: str
) -> ConsentResult:
    """Check Azure's redirect back from :func:`admin_consent_url`.

    ``params`` is the callback's query, as a plain mapping or as
    ``urllib.parse.parse_qs`` returns it. ``expected_state`` is the value
    kept in the admin's session; it is compared in constant time.

    Raises :class:`~calm_azure_sync.ConsentError` when the state is missing
    or differs (a forged or replayed callback), when Azure reports an error
    (its ``error`` and ``error_description`` are carried on the exception,
    also when the state is missing, as in Microsoft's documented
    ``?error=permission_denied&error_description=...`` redirect; never when
    the state belongs to another sign-in),
    when consent was not granted, or when the tenant id is missing or not a
    GUID.

    >>> parse_consent_callback(
    ...     {"admin_consent": "True", "tenant": "38d49456-54d4-455d-a8d6-c383c71e0a6d", "state": "s123"},
    ...     expected_state="s123",
    ... ).tenant_id
    '38d49456-54d4-455d-a8d6-c383c71e0a6d'
    """
    if not isinstance(expected_state, str) or not expected_state:
        raise ConfigError("expected_state: must be the non-empty state sent with the consent URL")
    if not isinstance(params, Mapping):
        raise ConsentError("the consent callback parameters must be a mapping")
    _check_state(params, expected_state)
    error = _single(params, "error")
    description = _single(params, "error_description")
    if error or description:
        shown = f"{error}: {description}" if description else str(error)
        raise ConsentError(
            f"Microsoft did not grant admin consent ({shown})", error=error, error_description=description
        )
    granted = _single(params, "admin_consent")
    # Microsoft's success redirect always says admin_consent=True; anything
    # else, or nothing, is not proof that consent was granted.
    if granted is None or granted.strip().lower() != "true":
        shown = "no admin_consent" if granted is None else f"admin_consent={granted!r}"
        raise ConsentError(f"the consent callback reports {shown}: consent was not granted")
    tenant = _single(params, "tenant")
    if not tenant:
        raise ConsentError("the consent callback names no tenant")
    try:
        tenant_id = str(uuid.UUID(tenant.strip()))
    except ValueError:
        raise ConsentError("the consent callback's tenant is not a tenant id (GUID)") from None
    scope = _single(params, "scope")
    return ConsentResult(tenant_id, scope=tuple(scope.split()) if scope else ())
