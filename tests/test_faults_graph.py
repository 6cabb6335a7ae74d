"""Graph faults during a whole import: the real msgraph-sdk GraphDirectory against the fake server.

Every case runs the Reconciler three times: a clean run (the store holds the
trust's access), a run while Graph misbehaves (after the directory changed:
a joiner, a leaver, a demotion), and a clean run again. The faulty run must
never remove or downgrade access it could not prove gone, must say what
failed (an ``error`` event naming the group, ``ok=False``), and the next
clean run must converge on what the directory gives. Retry waits go through
an injected sleep that returns at once, so storms cost no wall time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from calm_azure_sync import (
    AuditKind,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    RemovalPolicy,
    SyncConfig,
)
from calm_azure_sync.directory.graph import GraphDirectory, RetryPolicy
from calm_azure_sync.testing.fake_graph import FakeGraphServer, Fault

from .graph_helpers import FakeCredential, RecordingSleep, user
from .helpers import OAK_TRUST_BIRCH_ASH as HIERARCHY
from .helpers import SYSTEM, expected_access, synced_access_of

pytestmark = pytest.mark.wire

CONFIG = SyncConfig(
    "oak",
    [
        GroupMapping("g-staff", "birch", {"Policies": "Member"}),
        GroupMapping("g-leaders", "birch", {"Policies": "Manager", "Risk": "Manager"}),
        GroupMapping("g-staff", "ash", {"Risk": "Member"}),
    ],
    # No mass-removal hold in these scenarios: only the partial-read fail-safe may hold removals.
    removal=RemovalPolicy("deactivate", max_removal_ratio=1.0, min_removals_to_hold=1000),
)
STAFF = "/groups/g-staff/*"
POLICY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=8.0, total_budget_seconds=60.0, jitter=0.5)


def base_fixture() -> dict[str, Any]:
    staff = [user(f"u{i:02d}") for i in range(14)]
    return {
        "users": [*staff, user("u20")],
        "groups": [{"id": "g-staff"}, {"id": "g-leaders"}, {"id": "g-slt"}, {"id": "g-other"}],
        "members": {
            "g-staff": [u["id"] for u in staff],
            "g-leaders": ["g-slt", "u00"],  # nested: the SLT group sits inside the leaders group
            "g-slt": ["u01", "u02"],
        },
    }


def change_the_directory(server: FakeGraphServer) -> None:
    """A joiner (u20), a leaver (u13) and a demotion (u00 leaves the leaders)."""
    server.add_member("g-staff", "u20")
    server.remove_member("g-staff", "u13")
    server.remove_member("g-leaders", "u00")


def truth(server: FakeGraphServer) -> dict:
    return expected_access(InMemoryDirectory.from_dict(server.fixture()), CONFIG)


def partial_read_losses(before: dict, after: dict, server: FakeGraphServer, unread: Iterable[str],
                        config: SyncConfig = CONFIG) -> int:
    """Wrongful losses after a partial read: anything an unread group could explain (its sites and
    modules) must be kept; elsewhere only what Azure no longer gives may go."""
    unread = set(unread)
    pairs = {(m.site_id, module) for m in config.mappings.mappings if m.group_id in unread for module in m.roles}
    on_unread = {e: {k: r for k, r in a.items() if k in pairs} for e, a in before.items()}
    elsewhere = {e: {k: r for k, r in a.items() if k not in pairs} for e, a in before.items()}
    allowed = expected_access(InMemoryDirectory.from_dict(server.fixture()), config)
    return losses(on_unread, after, None) + losses(elsewhere, after, allowed)


def losses(before: dict, after: dict, allowed: dict | None) -> int:
    """Grants held before that are gone or lower now; with ``allowed``, only those it still gives."""
    lost = 0
    for external_id, access in before.items():
        for key, role in access.items():
            now = after.get(external_id, {}).get(key)
            if now is not None and now >= role:
                continue
            wanted = None if allowed is None else allowed.get(external_id, {}).get(key)
            if allowed is None or (wanted is not None and (now is None or now < wanted)):
                lost += 1
    return lost


class Parts:
    def __init__(self, server: FakeGraphServer, *, timeout: float) -> None:
        self.server = server
        self.sleep = RecordingSleep()
        self.directory = GraphDirectory.from_credential(
            FakeCredential(), base_url=server.base_url, retry=POLICY, sleep=self.sleep, timeout=timeout
        )
        self.store = InMemoryUserStore()
        self.audit = InMemoryAuditSink()
        self.reconciler = Reconciler(self.directory, self.store, self.audit, HIERARCHY)

    async def access(self) -> dict:
        return synced_access_of(await self.store.load("oak"))

    def events(self, run_id: str) -> list:
        return [event for event in self.audit.events if event.run_id == run_id]


@pytest.fixture
def server() -> Iterator[FakeGraphServer]:
    with FakeGraphServer(base_fixture(), page_cap=4) as running:
        yield running


Inject = Callable[[FakeGraphServer], None]


def _faults() -> list[Any]:
    def inject(fault: Fault, *, times: int = 1, skip: int = 0, path: str = STAFF) -> Inject:
        return lambda server: server.inject(fault, path=path, times=times, skip=skip)

    storm = 40  # longer than any retry budget below
    return [
        # (class, injector, recovers, client timeout)
        pytest.param("429 storm longer than the retry budget", inject(Fault.throttle("0.5"), times=storm), False,
                     id="429-storm-max-attempts"),
        pytest.param("429 storm longer than the retry budget", inject(Fault.throttle("600")), False,
                     id="429-retry-after-beyond-budget"),
        pytest.param("429 storm longer than the retry budget", inject(Fault.throttle("0.5"), times=storm, skip=2),
                     False, id="429-storm-from-page-3"),
        pytest.param("429 storm longer than the retry budget", inject(Fault.throttle(None), times=storm,
                     path="/groups/*"), False, id="429-storm-every-group-no-retry-after"),
        pytest.param("429 storm longer than the retry budget", inject(Fault.throttle("2.128"), times=3), True,
                     id="429-burst-within-budget"),
        pytest.param("503/504 bursts", inject(Fault.unavailable(), times=3), True, id="503-burst"),
        pytest.param("503/504 bursts", inject(Fault.unavailable("1"), times=storm, skip=1), False, id="503-storm"),
        pytest.param("503/504 bursts", inject(Fault.gateway_timeout(), times=2, skip=1), True, id="504-burst"),
        pytest.param("503/504 bursts", inject(Fault.gateway_timeout(), times=storm, skip=3), False,
                     id="504-storm-last-page"),
        pytest.param("503/504 bursts", lambda s: (s.inject(Fault.unavailable(), path=STAFF, times=2),
                                                  s.inject(Fault.gateway_timeout(), path=STAFF, times=storm)),
                     False, id="503-then-504-storm"),
        pytest.param("connection reset mid-page", inject(Fault.reset(), skip=1), True, id="reset-once"),
        pytest.param("connection reset mid-page", inject(Fault.reset(), times=storm, skip=2), False,
                     id="reset-every-retry"),
        pytest.param("truncated or non-JSON body", inject(Fault.truncated(), skip=1), True, id="truncated-once"),
        pytest.param("truncated or non-JSON body", inject(Fault.truncated(), times=storm, skip=1), False,
                     id="truncated-every-retry"),
        pytest.param("truncated or non-JSON body", inject(Fault.not_json(), skip=2), False, id="not-json"),
        pytest.param("truncated or non-JSON body",
                     inject(Fault.rewrite(lambda body: {"value": "not a list"}), skip=1), False,
                     id="json-without-value-list"),
        pytest.param("response slower than the timeout", inject(Fault.latency(1.5), times=storm, skip=1), False,
                     id="slow-every-retry"),
        pytest.param("response slower than the timeout", inject(Fault.latency(1.5), skip=1), True,
                     id="slow-once"),
        pytest.param("401/403 mid-run (token revoked)", inject(Fault.unauthorized(), skip=1), False,
                     id="401-second-page"),
        pytest.param("401/403 mid-run (token revoked)", inject(Fault.unauthorized(), times=storm,
                     path="/groups/g-leaders/*"), False, id="401-nested-group"),
        pytest.param("401/403 mid-run (token revoked)", inject(Fault.forbidden(), skip=3), False,
                     id="403-permission-withdrawn"),
    ]


@pytest.mark.parametrize(("fault_class", "inject", "recovers"), _faults())
async def test_a_graph_fault_never_removes_access_and_the_next_clean_run_converges(
    server: FakeGraphServer, figures: Any, fault_class: str, inject: Inject, recovers: bool
) -> None:
    slow = "slower than the timeout" in fault_class
    parts = Parts(server, timeout=0.5 if slow else 30.0)
    async with parts.directory:
        with figures.case(f"Graph: {fault_class}") as case:
            first = await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")
            assert first.ok, first.errors
            assert await parts.access() == truth(server)
            users_before = set((await parts.store.load("oak")).users)

            change_the_directory(server)
            before = await parts.access()
            inject(server)
            report = await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")
            after = await parts.access()
            state = await parts.store.load("oak")
            case.data_lost = len(users_before - set(state.users))
            if report.plan is not None and report.plan.unreadable_groups:
                # Fail-safe: a run that could not read every group removes and downgrades nothing an
                # unread group could explain (its sites and modules); elsewhere only what Azure implies.
                case.wrongful_removals = partial_read_losses(before, after, server, report.plan.unreadable_groups)
            else:
                case.wrongful_removals = losses(before, after, truth(server))
            assert case.wrongful_removals == 0
            assert case.data_lost == 0

            events = parts.events(report.run_id)
            assert events[-1].kind in (AuditKind.IMPORT_COMPLETED, AuditKind.IMPORT_FAILED)
            if recovers:
                assert report.ok, report.errors
                assert after == truth(server)
            else:
                assert not report.ok
                assert report.errors
                errors = [e for e in events if e.kind is AuditKind.ERROR]
                assert errors, "a failed read must leave an error event"
                assert all(e.detail.get("stage") == "read" and e.subject for e in errors)
                assert report.hold_reason == "partial_read"
                assert {c.external_id for c in report.held_removals} >= {"u13"} or "g-staff" not in (
                    report.plan.unreadable_groups if report.plan else {}
                )
                assert events[-1].detail.get("ok") is False
                # What an unread group could explain was kept, the leaver's too (held, not lost).
                unread = report.plan.unreadable_groups if report.plan else {}
                pairs = {(m.site_id, module) for m in CONFIG.mappings.mappings if m.group_id in unread
                         for module in m.roles}
                for who in ("u13", "u00"):
                    kept = {k: r for k, r in before.get(who, {}).items() if k in pairs}
                    assert {k: r for k, r in after.get(who, {}).items() if k in kept} == kept
            assert parts.sleep.calls == [] or max(parts.sleep.calls) <= POLICY.total_budget_seconds

            server.clear_faults()
            clean = await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")
            assert clean.ok, clean.errors
            assert await parts.access() == truth(server)
            assert (await parts.reconciler.plan(CONFIG, actor=SYSTEM)).changes == ()


@pytest.mark.parametrize("then", ["group-restored", "mapping-removed"])
async def test_a_mapped_group_deleted_between_discovery_and_read_is_a_stale_mapping(
    server: FakeGraphServer, figures: Any, then: str
) -> None:
    parts = Parts(server, timeout=30.0)
    async with parts.directory:
        with figures.case("Graph: mapped group deleted (404) between discovery and read") as case:
            assert (await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")).ok
            discovered = {group.id for group in await parts.reconciler.discover("oak", actor=SYSTEM)}
            assert "g-leaders" in discovered
            before = await parts.access()
            saved = copy.deepcopy(server.fixture())
            server.remove_group("g-leaders")  # deleted in Azure after the admin mapped it
            server.remove_member("g-staff", "u13")  # and a leaver, whose removal must wait
            report = await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")
            after = await parts.access()
            case.wrongful_removals = partial_read_losses(before, after, server, ["g-leaders"])
            assert case.wrongful_removals == 0
            assert not report.ok
            assert any("g-leaders" in error and "stale mapping" in error for error in report.errors)
            errors = [e for e in parts.events(report.run_id) if e.kind is AuditKind.ERROR]
            assert [e.subject for e in errors] == ["g-leaders"]
            assert "no longer exists" in errors[0].message
            assert report.hold_reason == "partial_read"
            assert AuditKind.REMOVALS_DEFERRED in [e.kind for e in parts.events(report.run_id)]

            if then == "group-restored":
                saved["members"]["g-staff"].remove("u13")
                server.load(saved)
                config = CONFIG
            else:
                config = SyncConfig(
                    "oak",
                    [m for m in CONFIG.mappings.mappings if m.group_id != "g-leaders"],
                    removal=CONFIG.removal,
                )
            clean = await parts.reconciler.run(config, actor=SYSTEM, mode="full")
            assert clean.ok, clean.errors
            assert await parts.access() == expected_access(InMemoryDirectory.from_dict(server.fixture()), config)
            assert (await parts.reconciler.plan(config, actor=SYSTEM)).changes == ()


async def test_a_token_revoked_between_two_groups_holds_everything(server: FakeGraphServer, figures: Any) -> None:
    """The token works for the first groups read, then Graph stops accepting it."""
    parts = Parts(server, timeout=30.0)
    parts.reconciler.max_concurrent_reads = 1  # groups read one by one, in sorted order
    async with parts.directory:
        with figures.case("Graph: 401/403 mid-run (token revoked)") as case:
            assert (await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")).ok
            change_the_directory(server)
            before = await parts.access()
            # g-leaders is read first, g-staff second: revoke after g-leaders.
            server.inject(Fault.unauthorized(), path=STAFF, times=40)
            report = await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")
            after = await parts.access()
            case.wrongful_removals = partial_read_losses(before, after, server, report.plan.unreadable_groups)
            assert case.wrongful_removals == 0
            assert not report.ok
            assert any("did not accept the app's token" in error for error in report.errors)
            assert any("GroupMember.Read.All" in error for error in report.errors)
            server.clear_faults()
            assert (await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")).ok
            assert await parts.access() == truth(server)


async def test_consent_without_user_read_all_removes_nothing(server: FakeGraphServer) -> None:
    """An app that may read memberships but not users gets id-only users from Graph.

    They would look like users without an email (out of scope), and everyone
    would lose access; the directory refuses the read instead, so the run holds.
    """
    parts = Parts(server, timeout=30.0)
    async with parts.directory:
        assert (await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")).ok
        before = await parts.access()
        server.granted_permissions = frozenset({"GroupMember.Read.All"})
        report = await parts.reconciler.run(CONFIG, actor=SYSTEM, mode="full")
        assert not report.ok
        assert any("User.Read.All" in error for error in report.errors)
        assert await parts.access() == before
