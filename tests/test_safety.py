"""Safety that remembers, end to end: holds across runs and restarts, confirmations by id, healing conflicts,
the documented limited-information shape, and a crash between applying and remembering."""

from __future__ import annotations

import pytest

from calm_azure_sync import (
    AuditKind,
    GraphDirectory,
    GroupMapping,
    HoldMismatchError,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    RemovalPolicy,
    SqliteUserStore,
    SyncConfig,
)
from calm_azure_sync.testing.fake_graph import FakeGraphServer

from .graph_helpers import FakeCredential
from .helpers import OAK_TRUST_BIRCH_ASH as HIERARCHY
from .helpers import SYSTEM, synced_access_of

CONFIG = SyncConfig(
    "oak",
    [GroupMapping("g-staff", "birch", {"Risk": "Member"}), GroupMapping("g-it", "ash", {"IT": "Admin"})],
    removal=RemovalPolicy("deactivate"),
)


def tenant(staff, it=(), extra_users=()):
    ids = sorted({*staff, *it, *extra_users})
    return InMemoryDirectory.from_dict({
        "users": [{"id": i, "displayName": i.title(), "mail": f"{i}@oak.sch.uk", "accountEnabled": True}
                  for i in ids],
        "groups": [{"id": "g-staff", "displayName": "Staff"}, {"id": "g-it", "displayName": "IT"}],
        "members": {"g-staff": list(staff), "g-it": list(it)},
    })


def kinds(audit, run_id):
    return [event.kind for event in audit.events if event.run_id == run_id]


@pytest.fixture(params=["memory", "sqlite"])
def reopen(request, tmp_path):
    """A store factory: ``reopen()`` gives the same store again, re-opened from disk for SQLite (a restart)."""
    if request.param == "memory":
        store = InMemoryUserStore()
        yield lambda: store
        return
    opened = []

    def factory():
        for store in opened:
            store.close()
        opened.append(SqliteUserStore(tmp_path / "calm.sqlite"))
        return opened[-1]

    yield factory
    for store in opened:
        store.close()


async def test_a_held_mass_removal_is_still_held_after_a_restart_until_confirmed(reopen):
    first = [f"u{i:02d}" for i in range(40)]
    audit = InMemoryAuditSink()
    assert (await Reconciler(tenant(first), reopen(), audit, HIERARCHY).run(CONFIG, actor=SYSTEM)).ok
    # In Azure 10 leave and 20 join: 10/40 users lose access at once.
    now = first[10:] + [f"n{i:02d}" for i in range(20)]
    held = await Reconciler(tenant(now), reopen(), audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    assert held.ok and held.hold_reason == "mass_removal" and held.counts["create_user"] == 20
    event = next(e for e in audit.events if e.run_id == held.run_id and e.kind is AuditKind.REMOVALS_HELD)
    assert {entry["subject"] for entry in event.detail["changes"]} == set(first[:10])  # every change listed
    assert all({"site_id", "module"} <= set(entry) for entry in event.detail["changes"] if entry["kind"] == "unassign")
    # Restarted, Azure unchanged, nobody confirmed: 10/60 is under the ratio, but the hold remembers.
    again = await Reconciler(tenant(now), reopen(), audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    store = reopen()
    assert again.held_removals and set(synced_access_of(await store.load("oak"))) >= set(first[:10])
    reconciler = Reconciler(tenant(now), store, audit, HIERARCHY)
    pending = await reconciler.pending_hold("oak", actor=SYSTEM)
    assert pending is not None and pending.id == held.hold_id == again.hold_id
    confirmed = await reconciler.run(CONFIG, actor=SYSTEM, confirm_hold=pending.id)
    assert confirmed.ok and confirmed.counts["deactivate_user"] == 10
    assert not set(synced_access_of(await reopen().load("oak"))) & set(first[:10])
    assert AuditKind.HOLD_CLEARED in kinds(audit, confirmed.run_id)
    assert await Reconciler(tenant(now), reopen(), audit, HIERARCHY).pending_hold("oak", actor=SYSTEM) is None


async def test_a_stale_confirmation_is_refused_before_anything_starts():
    users = [f"u{i:02d}" for i in range(30)]
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    await Reconciler(tenant(users), store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    reconciler = Reconciler(tenant(users[:15]), store, audit, HIERARCHY)
    first = await reconciler.run(CONFIG, actor=SYSTEM)
    assert first.hold_id is not None
    reconciler.directory = tenant(users[:10])  # five more left since the admin looked: the hold grows
    grown = await reconciler.run(CONFIG, actor=SYSTEM)
    assert grown.hold_id is not None and grown.hold_id != first.hold_id
    before = synced_access_of(await store.load("oak"))
    with pytest.raises(HoldMismatchError) as caught:
        await reconciler.run(CONFIG, actor=SYSTEM, confirm_hold=first.hold_id)  # what the admin saw is gone
    assert caught.value.pending == grown.hold_id
    assert synced_access_of(await store.load("oak")) == before
    refused = audit.events[-1]
    assert refused.kind is AuditKind.IMPORT_REFUSED and refused.detail["reason"] == "hold_mismatch"
    assert refused.actor_id == "system:tests"


async def test_a_group_that_reads_empty_once_strips_nobody_and_the_hold_drops_out_when_it_reads_again():
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    school = [f"t{i}" for i in range(8)]
    assert (await Reconciler(tenant(school), store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)).ok
    before = synced_access_of(await store.load("oak"))
    empty = await Reconciler(tenant([], extra_users=school), store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    assert empty.hold_reason == "group_shrank" and synced_access_of(await store.load("oak")) == before
    normal = await Reconciler(tenant(school), store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    assert normal.ok and not normal.held_removals
    assert await Reconciler(tenant(school), store, audit, HIERARCHY).pending_hold("oak", actor=SYSTEM) is None
    assert AuditKind.HOLD_CLEARED in kinds(audit, normal.run_id)


async def test_an_account_recreated_in_azure_is_relinked_and_keeps_its_manual_grants():
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    old = InMemoryDirectory.from_dict({
        "users": [{"id": "old-id", "displayName": "Carol", "mail": "carol@oak.sch.uk", "accountEnabled": True}],
        "groups": [{"id": "g-staff"}, {"id": "g-it"}], "members": {"g-staff": ["old-id"]},
    })
    await Reconciler(old, store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    [carol] = (await store.load("oak")).users.values()
    await store.grant(carol.user_id, "ash", "Policies", "Manager")
    recreated = InMemoryDirectory.from_dict({  # deleted, then created again with the same email
        "users": [{"id": "new-id", "displayName": "Carol", "mail": "carol@oak.sch.uk", "accountEnabled": True}],
        "groups": [{"id": "g-staff"}, {"id": "g-it"}], "members": {"g-staff": ["new-id"]},
    })
    report = await Reconciler(recreated, store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    assert report.ok and report.counts["relink_user"] == 1 and report.counts["conflict"] == 0
    [after] = (await store.load("oak")).users.values()
    assert after.user_id == carol.user_id and after.external_id == "new-id"
    assert any(g.source == "manual" and g.module == "Policies" for g in await store.grants(after.user_id))
    assert AuditKind.USER_RELINKED in kinds(audit, report.run_id)
    again = await Reconciler(recreated, store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    assert sum(again.counts[k] for k in ("create_user", "relink_user", "assign", "unassign")) == 0


async def test_an_email_still_held_by_a_live_account_stays_a_counted_conflict():
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    first = InMemoryDirectory.from_dict({
        "users": [{"id": "a", "displayName": "A", "mail": "head@oak.sch.uk", "accountEnabled": True}],
        "groups": [{"id": "g-staff"}, {"id": "g-it"}], "members": {"g-staff": ["a"]},
    })
    await Reconciler(first, store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    both = InMemoryDirectory.from_dict({  # a left scope but still holds the address; b claims it
        "users": [{"id": "a", "displayName": "A", "mail": "head@oak.sch.uk", "accountEnabled": True},
                  {"id": "b", "displayName": "B", "mail": "head@oak.sch.uk", "accountEnabled": True}],
        "groups": [{"id": "g-staff"}, {"id": "g-it"}], "members": {"g-staff": ["b"]},
    })
    report = await Reconciler(both, store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    assert report.counts["conflict"] == 1 and report.counts["create_user"] == 0
    assert report.plan is not None and report.plan.summary()["conflict"] == 1


async def test_documented_limited_information_members_remove_nothing_through_graph():
    fixture = {
        "users": [{"id": f"u{i}", "displayName": f"U{i}", "mail": f"u{i}@oak.sch.uk",
                   "userPrincipalName": f"u{i}@oak.sch.uk", "accountEnabled": True} for i in range(5)],
        "groups": [{"id": "g-staff", "displayName": "Staff"}, {"id": "g-it", "displayName": "IT"}],
        "members": {"g-staff": [f"u{i}" for i in range(5)], "g-it": []},
    }
    with FakeGraphServer(fixture) as server:
        store, audit = InMemoryUserStore(), InMemoryAuditSink()
        async with GraphDirectory.from_credential(FakeCredential(), base_url=server.base_url) as directory:
            reconciler = Reconciler(directory, store, audit, HIERARCHY)
            assert (await reconciler.run(CONFIG, actor=SYSTEM)).ok
            before = synced_access_of(await store.load("oak"))
            # Consent without User.Read.All: Graph's documented limited-information shape, properties null.
            server.granted_permissions = frozenset({"GroupMember.Read.All"})
            server.limited_information = "null"
            report = await reconciler.run(CONFIG, actor=SYSTEM)
        assert not report.ok and any("User.Read.All" in error for error in report.errors)
        assert synced_access_of(await store.load("oak")) == before
        assert all(user.active for user in (await store.load("oak")).users.values())


class _CrashAfterApply(InMemoryUserStore):
    """Saves the state before applying, then 'dies' before saving it after: the next run must cope."""

    crash_next_final_save = False

    async def save_state(self, trust_site_id, state):
        if self.crash_next_final_save and self._applied_since_save:
            self.crash_next_final_save = False
            raise RuntimeError("process killed between apply and save_state")
        self._applied_since_save = False
        await super().save_state(trust_site_id, state)

    async def apply(self, trust_site_id, changes):
        self._applied_since_save = True
        return await super().apply(trust_site_id, changes)

    _applied_since_save = False


async def test_a_crash_between_apply_and_saving_the_state_neither_forgets_a_hold_nor_applies_one_twice():
    store, audit = _CrashAfterApply(), InMemoryAuditSink()
    users = [f"u{i:02d}" for i in range(30)]
    await Reconciler(tenant(users), store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
    reconciler = Reconciler(tenant([*users[:15], "newcomer"]), store, audit, HIERARCHY)
    store.crash_next_final_save = True
    crashed = await reconciler.run(CONFIG, actor=SYSTEM)  # holds 15, creates the newcomer, then "dies"
    assert not crashed.ok
    pending = await reconciler.pending_hold("oak", actor=SYSTEM)
    assert pending is not None and pending.id == crashed.hold_id  # saved before anything was applied
    store.crash_next_final_save = True
    confirmed = await reconciler.run(CONFIG, actor=SYSTEM, confirm_hold=pending.id)
    assert not confirmed.ok and confirmed.counts["unassign"] == 15
    after = await reconciler.run(CONFIG, actor=SYSTEM)  # the hold is still on record, its removals are done
    assert after.ok and after.counts["unassign"] == 0 and after.counts["deactivate_user"] == 0
    assert await reconciler.pending_hold("oak", actor=SYSTEM) is None


async def test_mapped_groups_are_mirrored_with_their_azure_names_through_graph():
    fixture = {
        "users": [{"id": "u1", "displayName": "Ann", "mail": "ann@oak.sch.uk", "userPrincipalName": "ann@oak.sch.uk",
                   "accountEnabled": True}],
        "groups": [{"id": "g-staff", "displayName": "Birch Staff"}, {"id": "g-it", "displayName": "Ash IT"}],
        "members": {"g-staff": ["u1"], "g-it": []},
    }
    with FakeGraphServer(fixture) as server:
        store = InMemoryUserStore()
        async with GraphDirectory.from_credential(FakeCredential(), base_url=server.base_url) as directory:
            report = await Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM)
            found = await directory.lookup_groups(["g-staff", "gone"])
    assert report.ok and report.plan is not None
    assert report.plan.group_names == {"g-it": "Ash IT", "g-staff": "Birch Staff"}
    assert {g.external_id: g.display_name for g in await store.groups("oak")} == report.plan.group_names
    assert await store.group_members("g-staff") == frozenset({"u1"})
    assert found["gone"] is None and found["g-staff"] is not None and found["g-staff"].display_name == "Birch Staff"


_KILLED_BETWEEN_APPLY_AND_SAVE = """
import asyncio, os, signal, sys
from calm_azure_sync import (Actor, GroupMapping, InMemoryAuditSink, InMemoryDirectory, Reconciler, RemovalPolicy,
                             Site, SqliteUserStore, SyncConfig, TrustHierarchy)

class DiesAfterApplying(SqliteUserStore):
    applied = False

    async def apply(self, trust_site_id, changes):
        results = await super().apply(trust_site_id, changes)
        self.applied = True
        return results

    async def save_state(self, trust_site_id, state):
        if self.applied:  # the store has applied; the state is not saved yet
            os.kill(os.getpid(), signal.SIGKILL)
        await super().save_state(trust_site_id, state)

path, staff, confirm = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
users = sorted(set(staff) | {f"u{i:02d}" for i in range(30)})
directory = InMemoryDirectory.from_dict({
    "users": [{"id": u, "displayName": u, "mail": f"{u}@oak.sch.uk", "accountEnabled": True} for u in users],
    "groups": [{"id": "g-staff"}, {"id": "g-it"}], "members": {"g-staff": staff, "g-it": []}})
hierarchy = TrustHierarchy([Site("oak", "Oak"), Site("birch", "Birch", "oak"), Site("ash", "Ash", "oak")])
config = SyncConfig("oak", [GroupMapping("g-staff", "birch", {"Risk": "Member"}),
                            GroupMapping("g-it", "ash", {"IT": "Admin"})], removal=RemovalPolicy("deactivate"))
store = DiesAfterApplying(path)
report = asyncio.run(Reconciler(directory, store, InMemoryAuditSink(), hierarchy).run(
    config, actor=Actor.system("job"), confirm_hold=confirm if confirm != "-" else None))
print("survived", report.ok)
"""


def _run_and_die(tmp_path, staff, confirm="-"):
    import subprocess
    import sys

    script = tmp_path / "die.py"
    script.write_text(_KILLED_BETWEEN_APPLY_AND_SAVE)
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "calm.sqlite"), ",".join(staff), confirm],
        capture_output=True, text=True, timeout=120,
    )


async def test_a_sigkill_between_apply_and_save_neither_forgets_a_hold_nor_applies_a_confirmed_one_twice(tmp_path):
    everyone = [f"u{i:02d}" for i in range(30)]
    store = SqliteUserStore(tmp_path / "calm.sqlite")
    try:
        audit = InMemoryAuditSink()
        assert (await Reconciler(tenant(everyone), store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)).ok
    finally:
        store.close()
    # Half leave: the run holds 15 removals (saving the hold first), applies the rest, and is killed.
    killed = _run_and_die(tmp_path, everyone[:15])
    assert killed.returncode == -9, killed.stderr
    store = SqliteUserStore(tmp_path / "calm.sqlite")
    try:
        reconciler = Reconciler(tenant(everyone[:15]), store, InMemoryAuditSink(), HIERARCHY)
        pending = await reconciler.pending_hold("oak", actor=SYSTEM)
        assert pending is not None and pending.users == set(everyone[15:])
        assert set(synced_access_of(await store.load("oak"))) == set(everyone)  # nothing held was applied
    finally:
        store.close()
    # The admin confirms; the confirming run applies the removals and is killed before it saves.
    killed = _run_and_die(tmp_path, everyone[:15], pending.id)
    assert killed.returncode == -9, killed.stderr
    store = SqliteUserStore(tmp_path / "calm.sqlite")
    try:
        assert set(synced_access_of(await store.load("oak"))) == set(everyone[:15])
        after = await Reconciler(tenant(everyone[:15]), store, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM)
        assert after.ok and after.counts["unassign"] == 0 and after.counts["deactivate_user"] == 0
        assert after.plan is not None and after.plan.hold_cleared == pending.id  # its removals are all done
    finally:
        store.close()


async def test_a_shrink_masked_by_a_partial_read_is_still_held_when_everything_reads_again():
    # g-a and g-b map to the same site and module. g-a shrinks from 10 to 2 in the run where g-b
    # cannot be read: that run holds the removals as a partial read (no hold). The next run reads
    # everything: the shrink must still be judged against the old baseline, not adopted. (A store
    # that mirrors groups would also hold g-a's member removals as group_shrank, naming g-a in a
    # hold; a host store that does not mirror them has only the partial read to go on.)
    from .helpers import FlakyDirectory, FlakyStore

    class UnmirroredStore(FlakyStore):
        mirrors_groups = False

    config = SyncConfig(
        "oak",
        [GroupMapping("g-a", "birch", {"Risk": "Member"}), GroupMapping("g-b", "birch", {"Risk": "Member"})],
    )
    a_users, b_users = [f"a{i}" for i in range(10)], ["b0", "b1"]
    data = {
        "users": [{"id": i, "displayName": i, "mail": f"{i}@oak.sch.uk", "accountEnabled": True}
                  for i in a_users + b_users],
        "groups": [{"id": "g-a", "displayName": "A"}, {"id": "g-b", "displayName": "B"}],
        "members": {"g-a": a_users, "g-b": b_users},
    }
    inner = InMemoryDirectory.from_dict(data)
    store = UnmirroredStore(InMemoryUserStore())
    assert (await Reconciler(inner, store, InMemoryAuditSink(), HIERARCHY).run(config, actor=SYSTEM)).ok
    for user in a_users[2:]:
        inner.remove_member("g-a", user)
    from calm_azure_sync import DirectoryError

    flaky = FlakyDirectory(inner, {"g-b": DirectoryError("Service unavailable", status=503)})
    partial = await Reconciler(flaky, store, InMemoryAuditSink(), HIERARCHY).run(config, actor=SYSTEM, mode="full")
    assert partial.hold_reason == "partial_read" and partial.hold_id is None
    again = await Reconciler(inner, store, InMemoryAuditSink(), HIERARCHY).run(config, actor=SYSTEM, mode="full")
    assert again.hold_reason == "group_shrank" and len(again.held_removals) == 8
    assert set(synced_access_of(await store.load("oak"))) == {*a_users, *b_users}  # nobody lost access
