"""A Trust with several tenants over Microsoft Graph: two fake Graph servers on 127.0.0.1, one per tenant,
read through msgraph-sdk (API §13)."""

from __future__ import annotations

import datetime as dt

from calm_azure_sync import (
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    SyncConfig,
)
from calm_azure_sync.testing.fake_graph import FakeGraphServer, Fault

from .graph_helpers import FakeCredential, directory_for, user
from .helpers import OAK_TRUST_BIRCH_ASH, SYSTEM

A, B = "0d1f6a3c-aaaa-4aaa-8aaa-00000000000a", "0d1f6a3c-bbbb-4bbb-8bbb-00000000000b"
CONFIG = SyncConfig(
    "oak",
    [
        GroupMapping("ga", "birch", {"Risk": "Member"}, tenant_id=A),
        GroupMapping("gb", "ash", {"Risk": "Manager", "Policies": "Member"}, tenant_id=B),
    ],
    tenants=(A, B),
    tenant_names={A: "Oak Academy", B: "Ash School"},
)


def fixture(prefix: str, group: str, count: int) -> dict:
    people = [user(f"{prefix}{i}", mail=f"{prefix}{i}@{prefix}.sch.uk") for i in range(count)]
    return {"users": people, "groups": [{"id": group, "displayName": group.upper()}],
            "members": {group: [p["id"] for p in people]}}


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 1, 8, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def access(state) -> dict:
    return {key: dict(value) for key, value in state.synced_access.items() if value}


async def test_two_tenants_over_graph_import_incrementally_and_end_where_full_reads_end():
    clock = Clock()
    with FakeGraphServer(fixture("a", "ga", 6), page_cap=4) as one, FakeGraphServer(fixture("b", "gb", 5)) as two:
        a, _ = directory_for(one, credential=FakeCredential(tenant_id=A))
        b, _ = directory_for(two, credential=FakeCredential(tenant_id=B))
        assert (a.tenant_id, b.tenant_id) == (A, B)
        incremental, full = InMemoryUserStore(), InMemoryUserStore()
        async with a, b:
            graph = Reconciler({A: a, B: b}, incremental, InMemoryAuditSink(), OAK_TRUST_BIRCH_ASH, clock=clock)
            first = await graph.run(CONFIG, actor=SYSTEM)
            assert first.ok and first.counts["create_user"] == 11
            one.remove_member("ga", "a1")
            two.add_user(user("b9", mail="b9@b.sch.uk"), groups=["gb"])
            two.remove_user("b2")
            clock.now += dt.timedelta(minutes=40)
            second = await graph.run(CONFIG, actor=SYSTEM)
            assert second.ok and second.mode == "incremental", second.mode_reason
            truth = {
                A: InMemoryDirectory.from_dict(one.fixture(), tenant_id=A),
                B: InMemoryDirectory.from_dict(two.fixture(), tenant_id=B),
            }
            reference = Reconciler(truth, full, InMemoryAuditSink(), OAK_TRUST_BIRCH_ASH, clock=clock)
            assert (await reference.run(CONFIG, actor=SYSTEM, mode="full")).ok
            left, right = await incremental.load("oak"), await full.load("oak")
            assert access(left) == access(right)
            assert "a1" not in access(left) and "b2" not in access(left) and "b9" in access(left)
            tenants = {u.external_id: u.tenant_id for u in left.users.values()}
            assert tenants["a0"] == A and tenants["b9"] == B


async def test_a_tenant_whose_consent_was_revoked_is_a_partial_read_of_its_own_groups_only():
    clock = Clock()
    with FakeGraphServer(fixture("a", "ga", 4)) as one, FakeGraphServer(fixture("b", "gb", 4)) as two:
        a, _ = directory_for(one, credential=FakeCredential(tenant_id=A))
        b, _ = directory_for(two, credential=FakeCredential(tenant_id=B))
        store, audit = InMemoryUserStore(), InMemoryAuditSink()
        async with a, b:
            reconciler = Reconciler({A: a, B: b}, store, audit, OAK_TRUST_BIRCH_ASH, clock=clock)
            assert (await reconciler.run(CONFIG, actor=SYSTEM)).ok
            one.remove_member("ga", "a0")
            two.remove_member("gb", "b0")
            two.inject(Fault.unauthorized(), times=50)  # tenant B's consent revoked: every request refused
            clock.now += dt.timedelta(minutes=40)
            report = await reconciler.run(CONFIG, actor=SYSTEM)
            assert "tenant " + B in (report.mode_reason or "")
            assert list(report.plan.unreadable_groups) == ["gb"]
            state = await store.load("oak")
            assert "a0" not in access(state) and "b0" in access(state)
            errors = [e for e in audit.events if e.run_id == report.run_id and e.subject == "gb"]
            assert errors and "GB (Ash School)" in errors[0].message and errors[0].detail["tenant_id"] == B
            assert "Ash School" in str(report.plan)  # the review names the unread group with its tenant
