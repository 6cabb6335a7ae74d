"""A run's memory is written with its effects, and every started run ends in the Import Log (API.md §11).

Each case kills a real import with SIGKILL (a child process printing its
progress) at a chosen point, then checks what the next runs remember and
what the Import Log says.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest

from calm_azure_sync import (
    AuditKind,
    GroupMapping,
    InMemoryDirectory,
    Reconciler,
    RemovalPolicy,
    SqliteAuditSink,
    SqliteUserStore,
    SyncConfig,
)

from .helpers import OAK_TRUST_BIRCH_HIGH as HIERARCHY
from .helpers import SYSTEM, kill_during_apply

STAFF = [f"u{i:02d}" for i in range(12)]

# The child imports ``fixture`` with ``mode``; its progress callback prints each
# step and, with ``stall`` "all" (or a number), blocks once every change (or that
# many) is applied: the parent's SIGKILL then lands after those changes and
# before the run can do anything more.
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from calm_azure_sync import *

    store_path, log_path, fixture_path, mode, stall, batch = sys.argv[1:7]

    def progress(stage, done, total):
        print(stage, done, total, flush=True)
        if stall != "-" and stage == "apply" and total and done >= (total if stall == "all" else int(stall)):
            time.sleep(60)

    async def main():
        with open(fixture_path) as f:
            fixture = json.load(f)
        hierarchy = TrustHierarchy([Site("oak", "Oak Trust"), Site("birch", "Birch High", "oak")])
        config = SyncConfig("oak", [GroupMapping("g-staff", "birch", {"Risk": "Member"})],
                            removal=RemovalPolicy(mode))
        reconciler = Reconciler(InMemoryDirectory.from_dict(fixture), SqliteUserStore(store_path),
                                SqliteAuditSink(log_path), hierarchy, progress=progress, batch_size=int(batch))
        report = await reconciler.run(config, actor=Actor.system("child"))
        print("done", report.ok, flush=True)

    asyncio.run(main())
    """
)


def _fixture(members: list[str], extra: int = 0) -> dict:
    users = [{"id": u, "displayName": u, "mail": f"{u}@birch.sch.uk"} for u in STAFF]
    users += [{"id": f"x{i:03d}", "displayName": f"x{i}", "mail": f"x{i}@birch.sch.uk"} for i in range(extra)]
    return {"users": users, "groups": [{"id": "g-staff"}], "members": {"g-staff": members}}


def _config(mode: str) -> SyncConfig:
    return SyncConfig("oak", [GroupMapping("g-staff", "birch", {"Risk": "Member"})], removal=RemovalPolicy(mode))


async def _run(tmp_path: Path, fixture: dict, mode: str):
    async with SqliteUserStore(tmp_path / "calm.db") as store:
        reconciler = Reconciler(
            InMemoryDirectory.from_dict(fixture), store, SqliteAuditSink(tmp_path / "log.db"), HIERARCHY
        )
        return await reconciler.run(_config(mode), actor=SYSTEM)


def _kill_child(
    tmp_path: Path, fixture: dict, mode: str, kill_after: int | None, stall: str = "-", batch: str = "5000"
) -> None:
    """Run the child on ``fixture``; SIGKILL it once it has applied ``kill_after`` changes (None: all)."""
    fixture_path = tmp_path / "fixture.json"
    fixture_path.write_text(json.dumps(fixture))
    args = [str(tmp_path / "calm.db"), str(tmp_path / "log.db"), str(fixture_path), mode, stall, batch]
    assert kill_during_apply(CHILD, args, kill_after), "the child finished before it could be killed"


def _stalled_child(tmp_path: Path, fixture: dict, mode: str, stall: str = "all", batch: str = "5000") -> None:
    """Run the child until every change (or ``stall`` many) is applied, then SIGKILL it before it can go on."""
    _kill_child(tmp_path, fixture, mode, None if stall == "all" else int(stall), stall, batch)


def test_a_leaver_unassigned_just_before_a_kill_is_deactivated_once_deactivate_mode_is_on(tmp_path):
    assert asyncio.run(_run(tmp_path, _fixture(STAFF), "unassign")).ok
    # u00 leaves the group; the import that unassigns them is killed after its changes landed.
    _stalled_child(tmp_path, _fixture(STAFF[1:]), "unassign")

    async def grants_and_user():
        async with SqliteUserStore(tmp_path / "calm.db") as store:
            user = next(user for user in await store.users() if user.external_id == "u00")
            return await store.grants(user.user_id), user

    grants, user = asyncio.run(grants_and_user())
    assert grants == set() and user.active, "the kill should land after the unassign"
    report = asyncio.run(_run(tmp_path, _fixture(STAFF[1:]), "deactivate"))
    assert report.ok, report.errors
    _, user = asyncio.run(grants_and_user())
    assert not user.active, "the leaver the killed run unassigned was forgotten"


@pytest.mark.parametrize(
    ("stall", "batch"),
    [("all", "5000"), ("2", "2")],  # killed after the last batch; after the first of two (unassign + deactivate)
    ids=["after-the-last-batch", "after-a-batch-with-the-deactivation"],
)
def test_a_deactivation_applied_just_before_a_kill_is_remembered(tmp_path, stall, batch):
    # Deactivated by the sync, then re-activated by a person: final, even if the run that
    # deactivated them was killed before it saved its state.
    assert asyncio.run(_run(tmp_path, _fixture(STAFF), "deactivate")).ok
    # u00 leaves and x000 joins: with batches of 2, u00's unassign and deactivation are the
    # first batch, x000's creation the second, the membership changes the last.
    after = _fixture([*STAFF[1:], "x000"], extra=1)
    _stalled_child(tmp_path, after, "deactivate", stall, batch)

    async def reactivate():
        async with SqliteUserStore(tmp_path / "calm.db") as store:
            user = next(user for user in await store.users() if user.external_id == "u00")
            assert not user.active, "the kill should land after the deactivation"
            await store.set_active(user.user_id, True)
            return user.user_id

    user_id = asyncio.run(reactivate())
    assert asyncio.run(_run(tmp_path, after, "deactivate")).ok

    async def active():
        async with SqliteUserStore(tmp_path / "calm.db") as store:
            return (await store.user(user_id)).active

    assert asyncio.run(active()), "a person's re-activation was undone"


async def _log(tmp_path: Path):
    page = await SqliteAuditSink(tmp_path / "log.db").query("oak", limit=None)
    return list(reversed(list(page)))


def test_a_run_killed_mid_import_is_closed_by_the_next_run_with_import_abandoned(tmp_path):
    fixture = _fixture(STAFF, extra=300)
    fixture["members"]["g-staff"] = STAFF + [f"x{i:03d}" for i in range(300)]
    _kill_child(tmp_path, fixture, "unassign", 100, batch="25")
    events = asyncio.run(_log(tmp_path))
    (started,) = [event for event in events if event.kind is AuditKind.IMPORT_STARTED]
    dead = started.run_id
    assert not [e for e in events if e.kind in (AuditKind.IMPORT_COMPLETED, AuditKind.IMPORT_FAILED)]

    report = asyncio.run(_run(tmp_path, fixture, "unassign"))
    assert report.ok, report.errors
    events = asyncio.run(_log(tmp_path))
    closing = [event for event in events if event.kind is AuditKind.IMPORT_ABANDONED]
    assert len(closing) == 1
    (entry,) = closing
    assert entry.run_id == dead and entry.detail["run_id"] == dead
    assert entry.detail["started_at"] == started.at.isoformat()
    assert entry.detail["closed_by"] == report.run_id
    assert dead in entry.message
    # It comes before the new run's own start, and the new run ends as usual.
    kinds = [(event.run_id, event.kind) for event in events]
    assert kinds.index((dead, AuditKind.IMPORT_ABANDONED)) < kinds.index((report.run_id, AuditKind.IMPORT_STARTED))
    assert (report.run_id, AuditKind.IMPORT_COMPLETED) in kinds
    # Every started run has exactly one end.
    ends = {AuditKind.IMPORT_COMPLETED, AuditKind.IMPORT_FAILED, AuditKind.IMPORT_ABANDONED}
    started_ids = {event.run_id for event in events if event.kind is AuditKind.IMPORT_STARTED}
    for run_id in started_ids:
        assert sum(1 for event in events if event.run_id == run_id and event.kind in ends) == 1, run_id
    # A third run has nothing to close.
    asyncio.run(_run(tmp_path, fixture, "unassign"))
    assert len([e for e in asyncio.run(_log(tmp_path)) if e.kind is AuditKind.IMPORT_ABANDONED]) == 1


@pytest.mark.parametrize("mode", ["unassign", "deactivate"])
def test_a_run_that_fails_closes_itself_and_leaves_nothing_to_abandon(tmp_path, mode):
    # A directory that fails hard: the run ends with import_failed, and the next run closes nothing.
    class Broken(InMemoryDirectory):
        async def group_members(self, group_id):
            raise RuntimeError("boom")

    async def run_broken():
        async with SqliteUserStore(tmp_path / "calm.db") as store:
            directory = Broken.from_dict(_fixture(STAFF))
            reconciler = Reconciler(directory, store, SqliteAuditSink(tmp_path / "log.db"), HIERARCHY)
            return await reconciler.run(_config(mode), actor=SYSTEM)

    assert not asyncio.run(run_broken()).ok
    assert asyncio.run(_run(tmp_path, _fixture(STAFF), mode)).ok
    assert not [e for e in asyncio.run(_log(tmp_path)) if e.kind is AuditKind.IMPORT_ABANDONED]


def test_the_running_mark_round_trips_and_is_absent_from_a_state_without_one():
    import datetime as dt

    from calm_azure_sync import ConfigError, SyncState
    from calm_azure_sync.core.state import RunningImport
    from calm_azure_sync.store.rules import state_from_json, state_to_json

    assert "running" not in SyncState().to_dict()  # older states read the same, and are written the same
    started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    state = SyncState(left_scope={"u1": False}, running=RunningImport("run-1", started))
    assert state_from_json(state_to_json(state)) == state
    assert SyncState.from_dict({**SyncState().to_dict()}).running is None
    for bad in ({"run_id": "r"}, {"run_id": "", "started_at": started.isoformat()}, "r",
                {"run_id": "r", "started_at": "2026-01-02T03:04:05"}):
        with pytest.raises(ConfigError, match="sync state"):
            SyncState.from_dict({**SyncState().to_dict(), "running": bad})
