"""Security checks: trust boundaries, who may act, the consented tenant, and secrets that never leak."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.identity.aio import CertificateCredential, ClientSecretCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from calm_azure_sync import (
    Actor,
    ChildSiteConfigurationError,
    ConfigError,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    JsonlAuditSink,
    NotAuthorizedError,
    Reconciler,
    Site,
    SqliteAuditSink,
    SqliteUserStore,
    SyncConfig,
    TrustHierarchy,
    authorize,
    parse_consent_callback,
)
from calm_azure_sync.directory.graph import GraphDirectory
from calm_azure_sync.testing.fake_graph import FakeGraphServer, Fault

from .conftest import budget
from .graph_helpers import (
    CLIENT_SECRET,
    FAKE_TOKEN,
    FAST_RETRY,
    TENANT_ID,
    FakeCredential,
    RecordingSleep,
    user,
)
from .helpers import SYSTEM, refused_only

SITES = [
    Site("oak", "Oak Trust"), Site("birch", "Birch", "oak"), Site("ash", "Ash", "birch"),
    Site("elm", "Elm Trust"), Site("pine", "Pine", "elm"), Site("solo", "Standalone"),
]
HIERARCHY = TrustHierarchy(SITES)
FIXTURE = {
    "users": [user(f"u{i}") for i in range(6)],
    "groups": [{"id": "g1"}, {"id": "g2"}],
    "members": {"g1": [f"u{i}" for i in range(6)], "g2": ["u0"]},
}


class Spy:
    """A directory that records whether it was read at all."""

    def __init__(self) -> None:
        self.inner = InMemoryDirectory.from_dict(FIXTURE)
        self.tenant_id = TENANT_ID
        self.reads = 0

    async def list_groups(self) -> Any:
        self.reads += 1
        return await self.inner.list_groups()

    async def group_members(self, group_id: str) -> Any:
        self.reads += 1
        return await self.inner.group_members(group_id)


# -- a mapping never leaves its trust ----------------------------------------------------------


@settings(max_examples=budget("CALM_FUZZ", 60, 1000), deadline=None)
@given(trust=st.sampled_from(["oak", "elm", "solo"]), targets=st.lists(st.sampled_from([s.id for s in SITES] + ["nowhere"]), min_size=1, max_size=4))
async def test_a_mapping_outside_the_trust_is_refused_before_anything_is_read_or_written(figures, trust, targets):
    with figures.case("Security: a mapping targets a site outside its trust"):
        mappings = [GroupMapping(f"g{i % 2 + 1}", site, {"Risk": "Admin"}) for i, site in enumerate(dict.fromkeys(targets))]
        config = SyncConfig(trust, mappings)
        outside = [m.site_id for m in mappings if m.site_id not in HIERARCHY.sites_under(trust)] if trust else []
        spy, store, audit = Spy(), InMemoryUserStore(), InMemoryAuditSink()
        reconciler = Reconciler(spy, store, audit, HIERARCHY)
        if outside:
            with pytest.raises(ConfigError) as caught:
                await reconciler.run(config, actor=SYSTEM)
            assert all(any(repr(site) in p and "not part of trust" in p for p in caught.value.problems) for site in outside)
            with pytest.raises(ConfigError):
                await reconciler.plan(config, actor=SYSTEM)
            assert spy.reads == 0 and refused_only(audit.events) and (await store.load(trust)).users == {}
            with pytest.raises(ConfigError):  # the stored form is checked the same way once read back
                SyncConfig.from_dict(config.to_dict()).validate(HIERARCHY)
        else:
            report = await reconciler.run(config, actor=SYSTEM)
            assert report.ok
            for access in (await store.load(trust)).synced_access.values():
                assert {site for site, _module in access} <= HIERARCHY.sites_under(trust)


# -- who may configure and import ----------------------------------------------------------------

ACTORS = [
    pytest.param(Actor("teacher", set()), NotAuthorizedError, id="non-admin"),
    pytest.param(Actor("head-of-birch", {"birch"}), NotAuthorizedError, id="child-site-admin"),
    pytest.param(Actor("head-of-ash", {"ash", "birch"}), NotAuthorizedError, id="admin-of-every-child"),
    pytest.param(Actor("elm-admin", {"elm", "pine"}), NotAuthorizedError, id="other-trust-admin"),
    pytest.param(Actor("", {""}), NotAuthorizedError, id="empty-actor"),
]


@pytest.mark.parametrize(("actor", "error"), ACTORS)
async def test_only_an_admin_of_the_trust_may_configure_discover_or_import(figures, actor, error) -> None:
    with figures.case("Security: non-admin or child-site admin configures or imports"):
        spy, store, audit = Spy(), InMemoryUserStore(), InMemoryAuditSink()
        reconciler = Reconciler(spy, store, audit, HIERARCHY)
        config = SyncConfig("oak", [GroupMapping("g1", "birch", {"Risk": "Admin"})])
        with pytest.raises(error):
            authorize(actor, "oak", HIERARCHY)
        with pytest.raises(error):
            await reconciler.run(config, actor=actor)
        with pytest.raises(error):
            await reconciler.discover("oak", actor=actor)
        for child in ("birch", "ash"):  # a child site sends everyone to the trust
            with pytest.raises(ChildSiteConfigurationError) as caught:
                authorize(actor, child, HIERARCHY)
            assert caught.value.trust_site_id == "oak"
            with pytest.raises(ChildSiteConfigurationError):
                await reconciler.run(SyncConfig(child, [GroupMapping("g1", child, {"Risk": "Admin"})]), actor=actor)
        assert spy.reads == 0 and refused_only(audit.events) and (await store.load("oak")).users == {}
        # The trust's admin may.
        assert (await reconciler.run(config, actor=Actor("oak-admin", {"oak"}))).ok


# -- the consented tenant ---------------------------------------------------------------------------

OTHER_TENANT = "0b6a3c1e-96f2-4b54-9d0c-0c8a5f0a2b11"


@pytest.mark.parametrize(
    ("config_tenant", "allowed"),
    [(OTHER_TENANT, False), (TENANT_ID, True), (TENANT_ID.upper(), True), (None, True)],
    ids=["other-tenant", "same-tenant", "same-tenant-upper-case", "not-connected-yet"],
)
async def test_a_run_uses_the_directory_only_when_its_tenant_is_the_consented_one(figures, config_tenant, allowed) -> None:
    with FakeGraphServer(FIXTURE) as server, figures.case("Security: consent tenant differs from the directory's tenant"):
        if config_tenant is not None:
            # The tenant the trust connected to comes from the consent callback.
            consent = parse_consent_callback({"state": "s", "tenant": config_tenant, "admin_consent": "True"}, "s")
            config_tenant = consent.tenant_id
        config = SyncConfig("oak", [GroupMapping("g1", "birch", {"Risk": "Member"})], tenant_id=config_tenant)
        directory = GraphDirectory.from_credential(FakeCredential(), base_url=server.base_url, retry=FAST_RETRY)
        async with directory:
            store, audit = InMemoryUserStore(), InMemoryAuditSink()
            reconciler = Reconciler(directory, store, audit, HIERARCHY)
            if allowed:
                assert (await reconciler.run(config, actor=SYSTEM)).ok
                return
            with pytest.raises(ConfigError) as caught:
                await reconciler.run(config, actor=SYSTEM)
            assert OTHER_TENANT in str(caught.value) and TENANT_ID in str(caught.value)
            with pytest.raises(ConfigError):
                await reconciler.plan(config, actor=SYSTEM)
            assert server.requests == [] and refused_only(audit.events) and (await store.load("oak")).users == {}


# -- secrets never leak -------------------------------------------------------------------------------


def _certificate() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "calm-azure-sync test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem = key_pem + cert.public_bytes(serialization.Encoding.PEM)
    # A line from the middle of the private key: unmistakably key material.
    return pem, key_pem.decode().splitlines()[5]


class _NoNetwork:
    """Hands out the fake token instead of asking login.microsoftonline.com."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(FAKE_TOKEN, 4_000_000_000)


class SecretCredential(_NoNetwork, ClientSecretCredential):
    pass


class CertCredential(_NoNetwork, CertificateCredential):
    pass


def _credentials() -> list[Any]:
    pem, key_line = _certificate()
    return [
        pytest.param(lambda: FakeCredential(), (), id="fake-credential"),
        pytest.param(lambda: SecretCredential(TENANT_ID, "client-id-1", CLIENT_SECRET), (), id="client-secret"),
        pytest.param(lambda: CertCredential(TENANT_ID, "client-id-1", certificate_data=pem), (key_line,),
                     id="certificate"),
    ]


@pytest.mark.parametrize(("make_credential", "extra_secrets"), _credentials())
async def test_no_secret_or_token_appears_anywhere_a_whole_import_leaves_a_trace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, figures: Any, make_credential: Any, extra_secrets: tuple[str, ...]
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: httpx, httpcore, azure, kiota, msgraph, ours
    for name in ("httpx", "httpcore", "azure", "kiota_http", "kiota_abstractions", "msgraph", "calm_azure_sync"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    secrets = (FAKE_TOKEN, CLIENT_SECRET, *extra_secrets)
    seen: list[str] = []
    with FakeGraphServer(FIXTURE, page_cap=2) as server, figures.case(
        "Security: secrets, certificates and tokens in logs, events, exceptions, reprs"
    ) as case:
        credential = make_credential()
        directory = GraphDirectory.from_credential(
            credential, base_url=server.base_url, retry=FAST_RETRY, sleep=RecordingSleep()
        )
        store = SqliteUserStore(tmp_path / "calm.db")
        sinks = [InMemoryAuditSink(), JsonlAuditSink(tmp_path / "audit.jsonl"), SqliteAuditSink(tmp_path / "audit.db")]
        config = SyncConfig("oak", [GroupMapping("g1", "birch", {"Risk": "Member"}), GroupMapping("g2", "ash", {"Risk": "Admin"})],
                            tenant_id=TENANT_ID)
        async with directory:
            for sink in sinks:
                reconciler = Reconciler(directory, store, sink, HIERARCHY)
                seen += [repr(reconciler), repr(directory), str(directory), repr(config), repr(store), repr(sink)]
                reports = [await reconciler.run(config, actor=SYSTEM)]
                # Every error path that formats a message: throttling, a revoked token, a denied
                # permission, garbage, a reset, an unknown group.
                for fault in (Fault.throttle("0"), Fault.unauthorized(), Fault.forbidden(), Fault.not_json(), Fault.reset()):
                    server.inject(fault, path="/groups/g2/*", times=10)
                    reports.append(await reconciler.run(config, actor=SYSTEM))
                    server.clear_faults()
                reports.append(await reconciler.run(SyncConfig("oak", [GroupMapping("missing", "birch", {"Risk": "Member"})]), actor=SYSTEM))
                plan = await reconciler.plan(config, actor=SYSTEM)
                seen += [repr(plan), plan._repr_html_(), json.dumps(plan.to_dict())]
                for report in reports:
                    seen += [str(report), repr(report), report._repr_html_(), json.dumps(report.to_dict(), default=str)]
                    seen += list(report.errors) + [repr(e) for e in report.unrecorded_events]
            for exception in (Exception,):
                try:
                    server.inject(Fault.unauthorized(), times=3)
                    await directory.group_members("g1")
                except exception as error:
                    chain: BaseException | None = error
                    while chain is not None:
                        seen += [str(chain), repr(chain)]
                        chain = chain.__cause__ or chain.__context__
        events = sinks[0].events
        seen += [repr(e) for e in events] + [json.dumps(e.to_dict(), default=str) for e in events if hasattr(e, "to_dict")]
        seen += [(tmp_path / "audit.jsonl").read_text(encoding="utf-8")]
        seen += [(tmp_path / name).read_bytes().decode("latin-1") for name in ("audit.db", "calm.db")]
        seen += [repr(server.requests), repr(server)]
        seen += [caplog.text] + [record.getMessage() for record in caplog.records]
        seen += [repr(record.args) for record in caplog.records]
        store.close()
        leaks = [(secret[:12], text[:80]) for text in seen for secret in (*secrets, "Bearer ") if secret in text]
        case.data_lost = 0
        assert len(caplog.records) > 20  # the capture really saw the SDK's and our logging
        assert not leaks, leaks[:3]
