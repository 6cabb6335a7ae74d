"""The Connect helpers: the admin-consent URL and the callback check."""

from __future__ import annotations

import urllib.parse

import pytest

from calm_azure_sync import (
    ConfigError,
    ConsentError,
    ConsentResult,
    admin_consent_url,
    parse_consent_callback,
)
from calm_azure_sync.directory import consent

TENANT = "38d49456-54d4-455d-a8d6-c383c71e0a6d"
REDIRECT = "https://compliance.example/azure/callback"


def query_of(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def test_the_url_is_the_v2_admin_consent_endpoint_with_the_graph_default_scope():
    url = admin_consent_url("client-1", REDIRECT, "state-1")
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "login.microsoftonline.com", "/organizations/v2.0/adminconsent")
    assert query_of(url) == {
        "client_id": "client-1",
        "scope": "https://graph.microsoft.com/.default",
        "redirect_uri": REDIRECT,
        "state": "state-1",
    }


def test_a_tenant_and_a_national_cloud_authority_can_be_given():
    url = admin_consent_url("c", REDIRECT, "s", tenant=TENANT, authority="https://login.microsoftonline.us/")
    assert url.startswith(f"https://login.microsoftonline.us/{TENANT}/v2.0/adminconsent?")
    assert admin_consent_url("c", REDIRECT, "s", tenant="contoso.onmicrosoft.com").split("/")[3] == "contoso.onmicrosoft.com"


def test_state_and_redirect_are_encoded_not_spliced():
    url = admin_consent_url("c", REDIRECT + "?x=1&y=2", "a&scope=evil")
    assert query_of(url)["state"] == "a&scope=evil"
    assert query_of(url)["scope"] == "https://graph.microsoft.com/.default"
    assert query_of(url)["redirect_uri"] == REDIRECT + "?x=1&y=2"


@pytest.mark.parametrize("tenant", ["common", "COMMON", "consumers"])
def test_tenants_that_cannot_consent_for_an_organisation_are_refused(tenant):
    with pytest.raises(ConfigError, match="tenant"):
        admin_consent_url("c", REDIRECT, "s", tenant=tenant)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        admin_consent_url("", "", " ", tenant="a/../b")
    problems = "\n".join(caught.value.problems)
    for name in ("client_id", "redirect_uri", "state", "tenant"):
        assert name in problems


@pytest.mark.parametrize("redirect", ["http://compliance.example/cb", "/relative/cb", "javascript:alert(1)"])
def test_the_redirect_must_be_https_except_on_localhost(redirect):
    with pytest.raises(ConfigError, match="redirect_uri"):
        admin_consent_url("c", redirect, "s")
    assert admin_consent_url("c", "http://localhost:8000/cb", "s")


def test_a_successful_callback_gives_the_tenant_and_granted_scope():
    params = {"admin_consent": "True", "tenant": TENANT.upper(), "state": "s-1", "scope": "https://graph.microsoft.com/User.Read.All https://graph.microsoft.com/GroupMember.Read.All"}
    result = parse_consent_callback(params, "s-1")
    assert result == ConsentResult(TENANT, scope=("https://graph.microsoft.com/User.Read.All", "https://graph.microsoft.com/GroupMember.Read.All"))


def test_parse_qs_output_is_accepted():
    query = f"admin_consent=True&tenant={TENANT}&state=12345"
    assert parse_consent_callback(urllib.parse.parse_qs(query), "12345").tenant_id == TENANT


def test_azures_documented_error_is_carried_on_the_consent_error():
    query = (
        "admin_consent=True&error=consent_required&error_description=AADSTS65004%3a+The+resource+owner+or+"
        "authorization+server+denied+the+request.&state=12345"
    )
    with pytest.raises(ConsentError) as caught:
        parse_consent_callback(urllib.parse.parse_qs(query), "12345")
    assert caught.value.error == "consent_required"
    assert caught.value.error_description.startswith("AADSTS65004: The resource owner")
    assert "consent_required" in str(caught.value)


@pytest.mark.parametrize(
    "params",
    [
        {"tenant": TENANT},
        {"tenant": TENANT, "state": ""},
        {"tenant": TENANT, "state": "other"},
        {"tenant": TENANT, "state": "s-1x"},
        {"error": "access_denied", "state": "forged"},  # a forged error is not Azure's word either
    ],
)
def test_a_missing_or_forged_state_is_refused(params):
    with pytest.raises(ConsentError, match="state") as caught:
        parse_consent_callback(params, "s-1")
    assert caught.value.error is None


def test_the_state_is_compared_in_constant_time(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(consent.hmac, "compare_digest", spy)
    parse_consent_callback({"admin_consent": "True", "tenant": TENANT, "state": "s-1"}, "s-1")
    assert calls == [(b"s-1", b"s-1")]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"state": "s-1", "admin_consent": "True"}, "no tenant"),
        ({"state": "s-1", "admin_consent": "True", "tenant": ""}, "no tenant"),
        ({"state": "s-1", "admin_consent": "True", "tenant": "contoso.com"}, "not a tenant id"),
        ({"state": "s-1", "tenant": TENANT}, "no admin_consent"),
        ({"state": "s-1", "tenant": TENANT, "admin_consent": "False"}, "not granted"),
        ({"state": ["s-1", "s-1"], "tenant": TENANT}, "repeats"),
        ({"state": "s-1", "tenant": TENANT, "error_description": "x" * 5000}, "too long"),
        ({"state": "s" * 5000, "tenant": TENANT}, "too long"),
    ],
)
def test_incomplete_or_odd_callbacks_are_refused(params, fragment):
    with pytest.raises(ConsentError, match=fragment):
        parse_consent_callback(params, "s-1")


def test_an_empty_expected_state_is_a_programming_error():
    with pytest.raises(ConfigError):
        parse_consent_callback({"tenant": TENANT, "state": ""}, "")


def test_fresh_states_are_unguessable_and_distinct():
    states = {consent.new_state() for _ in range(50)}
    assert len(states) == 50
    assert all(len(s) >= 40 for s in states)


def test_the_required_permissions_are_the_least_privileged_pair():
    assert consent.REQUIRED_PERMISSIONS == ("User.Read.All", "GroupMember.Read.All")
    assert consent.ALTERNATIVE_PERMISSIONS == ("Directory.Read.All",)


# -- national clouds ---------------------------------------------------------------------------

CLOUDS = [
    ("login.microsoftonline.com", "https://graph.microsoft.com/.default"),
    ("login.microsoftonline.us", "https://graph.microsoft.us/.default"),
    ("login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn/.default"),
]


@pytest.mark.parametrize(("host", "scope"), CLOUDS)
@pytest.mark.parametrize("form", ["{}", "https://{}", "https://{}/", "HTTPS://{}", " {} "])
def test_an_authority_as_host_or_url_gets_its_own_clouds_graph_scope(host, scope, form):
    # azure-identity's AzureAuthorityHosts are bare hosts ("login.microsoftonline.us").
    url = admin_consent_url("c", REDIRECT, "s", tenant=TENANT, authority=form.format(host.upper() if "HTTPS" in form else host))
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", host, f"/{TENANT}/v2.0/adminconsent")
    assert query_of(url)["scope"] == scope


def test_azure_identitys_authority_hosts_are_accepted():
    from azure.identity import AzureAuthorityHosts

    for host, scope in ((AzureAuthorityHosts.AZURE_GOVERNMENT, "https://graph.microsoft.us/.default"),
                        (AzureAuthorityHosts.AZURE_CHINA, "https://microsoftgraph.chinacloudapi.cn/.default"),
                        (AzureAuthorityHosts.AZURE_PUBLIC_CLOUD, "https://graph.microsoft.com/.default")):
        assert query_of(admin_consent_url("c", REDIRECT, "s", authority=host))["scope"] == scope


def test_us_government_dod_graph_may_be_asked_for_explicitly():
    url = admin_consent_url("c", REDIRECT, "s", authority="login.microsoftonline.us",
                            scope="https://dod-graph.microsoft.us/.default")
    assert query_of(url)["scope"] == "https://dod-graph.microsoft.us/.default"


@pytest.mark.parametrize(
    ("authority", "scope", "problem"),
    [
        ("login.microsoftonline.us", "https://graph.microsoft.com/.default",
         "is the global cloud's Graph, but the authority is the US Government cloud's"),
        ("https://login.chinacloudapi.cn", "https://graph.microsoft.us/.default",
         "is the US Government cloud's Graph, but the authority is the China"),
        ("login.microsoftonline.de", None, "is not a Microsoft Entra authority this library knows"),
        ("https://login.example.com", None, "is not a Microsoft Entra authority this library knows"),
        ("http://login.microsoftonline.us", None, "must be a host or an https URL"),
        ("https://login.microsoftonline.us/evil", None, "no path or port"),
        ("https://login.microsoftonline.us:8443", None, "no path or port"),
        ("https://user@login.microsoftonline.us", None, "no path or port"),
        ("", None, "must be a host or an https URL"),
        (None, None, "must be a host or an https URL"),
        ("https://[::1", None, "is not a host or an https URL"),
    ],
)
def test_unknown_authorities_and_another_clouds_scope_are_refused(authority, scope, problem):
    with pytest.raises(ConfigError) as caught:
        admin_consent_url("c", REDIRECT, "s", authority=authority, scope=scope)
    assert len(caught.value.problems) == 1 and problem in caught.value.problems[0]


# -- Microsoft's error redirect without state ---------------------------------------------------


def test_an_error_redirect_without_state_is_refused_but_keeps_azures_words():
    # Microsoft's documented shape when the admin cancels: no state, no tenant.
    query = "error=permission_denied&error_description=The+admin+canceled+the+request"
    with pytest.raises(ConsentError, match="carries no state") as caught:
        parse_consent_callback(urllib.parse.parse_qs(query), "s-1")
    assert caught.value.error == "permission_denied"
    assert caught.value.error_description == "The admin canceled the request"
    assert "permission_denied" in str(caught.value)


def test_an_error_with_another_sign_ins_state_still_carries_nothing():
    with pytest.raises(ConsentError, match="does not match") as caught:
        parse_consent_callback({"error": "permission_denied", "error_description": "x", "state": "forged"}, "s-1")
    assert (caught.value.error, caught.value.error_description) == (None, None)


def test_an_overlong_error_description_without_state_is_refused_as_too_long():
    with pytest.raises(ConsentError, match="too long"):
        parse_consent_callback({"error": "permission_denied", "error_description": "x" * 5000}, "s-1")
