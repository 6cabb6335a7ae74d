"""Reconciler.status: is the sync healthy, and is anything waiting? From the sync state and the Import Log only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from calm_azure_sync import (
    Actor,
    AuditEvent,
    AuditKind,
    DirectoryAccessError,
    GroupMapping,
    ImportLogQuery,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    JsonlAuditSink,
    Reconciler,
    SqliteAuditSink,
    SyncConfig,
    SyncStatus,
)
from calm_azure_sync.review.status import FAILURE_STREAK, runs_from_log

from .helpers import OAK_TRUST_BIRCH_HIGH as HIERARCHY
from .helpers import SYSTEM as ACTOR

STAFF = "10000000-0000-4000-8000-0000000000a1"


def tenant(users: int = 12) -> dict[str, Any]:
    people = [
        {"id": f"00000000-0000-4000-8000-{index:012d}", "displayName": f"Person {index}", "mail": f"p{index}@oak.org"}
        for index in range(users)
    ]
    return {
        "users": people,
        "groups": [{"id": STAFF, "displayName": "Birch All Staff"}],
        "members": {STAFF: [person["id"] for person in people]},
    }


CONFIG = SyncConfig("oak", [GroupMapping(STAFF, "birch", {"Risk": "Member"})])


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 7, 20, 9, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


class NoDirectory:
    """A directory that fails the test if anything is asked of it."""

    def __getattr__(self, name: str) -> Any:
        async def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"status read the directory: {name}")

        if name.startswith("__"):
            raise AttributeError(name)
        return refuse


def sync(directory: Any, store: InMemoryUserStore, sink: Any, clock: Clock | None = None) -> Reconciler:
    return Reconciler(directory, store, sink, HIERARCHY, clock=clock or Clock())


async def test_a_trust_never_imported() -> None:
    status = await sync(NoDirectory(), InMemoryUserStore(), InMemoryAuditSink()).status("oak", actor=ACTOR)
    assert isinstance(status, SyncStatus)
    assert status.last_run is None and status.last_success is None and status.consecutive_failures == 0
    assert status.mode_next == "full" and status.attention == () and status.healthy
    assert "Oak Trust has not been imported yet" in str(status)


async def test_after_a_good_run_status_reads_no_directory() -> None:
    store, sink, clock = InMemoryUserStore(), InMemoryAuditSink(), Clock()
    report = await sync(InMemoryDirectory.from_dict(tenant()), store, sink, clock).run(CONFIG, actor=ACTOR)
    clock.now += dt.timedelta(hours=1)
    status = await sync(NoDirectory(), store, sink, clock).status("oak", actor=ACTOR)
    assert status.last_run is not None and status.last_run.run_id == report.run_id
    assert status.last_run.outcome == "ok" and status.last_success == status.last_run
    assert status.healthy
    assert "The last import of Oak Trust (2026-07-20 09:00 UTC) ended ok." in str(status)
    assert status.to_dict()["last_run"]["run_id"] == report.run_id


async def test_next_mode_is_incremental_when_the_delta_state_is_fresh() -> None:
    store, sink, clock = InMemoryUserStore(), InMemoryAuditSink(), Clock()
    directory = InMemoryDirectory.from_dict(tenant())
    await sync(directory, store, sink, clock).run(CONFIG, actor=ACTOR)
    status = await sync(directory, store, sink, clock).status("oak", actor=ACTOR)
    assert status.mode_next == "incremental"
    clock.now += dt.timedelta(days=2)
    later = await sync(directory, store, sink, clock).status("oak", actor=ACTOR)
    assert later.mode_next == "full" and "older than" in later.mode_next_reason


async def test_a_pending_hold_needs_attention_with_its_age() -> None:
    store, sink, clock = InMemoryUserStore(), InMemoryAuditSink(), Clock()
    directory = InMemoryDirectory.from_dict(tenant(12))
    await sync(directory, store, sink, clock).run(CONFIG, actor=ACTOR)
    directory.members[STAFF] = directory.members[STAFF][:1]
    clock.now += dt.timedelta(days=1)
    held = await sync(directory, store, sink, clock).run(CONFIG, actor=ACTOR)
    assert held.hold_id is not None
    clock.now += dt.timedelta(days=3)
    status = await sync(NoDirectory(), store, sink, clock).status("oak", actor=ACTOR)
    assert status.pending_hold is not None and status.pending_hold.id == held.hold_id
    assert status.pending_hold_age == dt.timedelta(days=3)
    [attention] = status.attention
    assert attention.kind == "hold_waiting" and attention.since == status.pending_hold.created_at
    assert f"confirm hold {held.hold_id}" in attention.message and "waiting 3 days" in attention.message
    assert "11 people" in attention.message
    assert status.to_dict()["pending_hold"]["age_seconds"] == 3 * 86400
    assert "hold waiting" in status._repr_html_()


class FailingDirectory(InMemoryDirectory):
    async def group_members(self, group_id: str) -> Any:
        raise DirectoryAccessError("Graph answered 403", missing_permissions=("GroupMember.Read.All",), status=403)


async def test_repeated_failures_and_revoked_access_need_attention() -> None:
    store, sink, clock = InMemoryUserStore(), InMemoryAuditSink(), Clock()
    await sync(InMemoryDirectory.from_dict(tenant()), store, sink, clock).run(CONFIG, actor=ACTOR)
    failing = FailingDirectory.from_dict(tenant())
    for count in range(1, FAILURE_STREAK + 1):
        clock.now += dt.timedelta(hours=1)
        report = await sync(failing, store, sink, clock).run(CONFIG, actor=ACTOR)
        assert not report.ok
        status = await sync(NoDirectory(), store, sink, clock).status("oak", actor=ACTOR)
        assert status.consecutive_failures == count
        kinds = {item.kind for item in status.attention}
        assert "access_revoked" in kinds
        assert ("repeated_failures" in kinds) == (count >= FAILURE_STREAK)
    assert status.last_success is not None and status.last_success.at == dt.datetime(2026, 7, 20, 9, 0, tzinfo=dt.UTC)
    assert status.last_run is not None and status.last_run.outcome == "failed"
    assert "3 imports in a row did not end well" in str(status)
    clock.now += dt.timedelta(hours=1)
    await sync(InMemoryDirectory.from_dict(tenant()), store, sink, clock).run(CONFIG, actor=ACTOR)
    assert (await sync(NoDirectory(), store, sink, clock).status("oak", actor=ACTOR)).healthy


async def test_a_stale_mapping_needs_attention_by_name() -> None:
    store, sink, clock = InMemoryUserStore(), InMemoryAuditSink(), Clock()
    directory = InMemoryDirectory.from_dict(tenant())
    await sync(directory, store, sink, clock).run(CONFIG, actor=ACTOR)
    directory.delete_group(STAFF)
    await sync(directory, store, sink, clock).run(CONFIG, actor=ACTOR)
    status = await sync(NoDirectory(), store, sink, clock).status("oak", actor=ACTOR)
    assert status.stale_mappings == (STAFF,)
    stale = next(item for item in status.attention if item.kind == "stale_mapping")
    assert "Birch All Staff" in stale.message and STAFF not in stale.message


def _event(at: dt.datetime, kind: AuditKind, run_id: str, **detail: Any) -> AuditEvent:
    return AuditEvent(at=at, trust_site_id="oak", kind=kind, message=f"{kind} {run_id}", run_id=run_id, detail=detail)


async def test_runs_that_never_ended_are_abandoned_and_need_attention() -> None:
    clock = Clock()
    start = clock.now
    sink = InMemoryAuditSink([
        _event(start, AuditKind.IMPORT_STARTED, "r1"),
        _event(start + dt.timedelta(minutes=1), AuditKind.IMPORT_COMPLETED, "r1", ok=True),
        _event(start + dt.timedelta(hours=1), AuditKind.IMPORT_STARTED, "r2"),  # killed: no end
        _event(start + dt.timedelta(hours=2), AuditKind.IMPORT_STARTED, "r3"),
        _event(start + dt.timedelta(hours=2), AuditKind.IMPORT_ABANDONED, "r3", abandoned_run_id="r2"),
        _event(start + dt.timedelta(hours=2, minutes=1), AuditKind.IMPORT_COMPLETED, "r3", ok=True),
        _event(start + dt.timedelta(hours=3), AuditKind.IMPORT_STARTED, "r4"),  # killed too, not closed yet
        _event(start + dt.timedelta(hours=4), AuditKind.IMPORT_STARTED, "r5"),  # running now
    ])
    runs = runs_from_log(list(reversed(sink.events)))
    assert [(run.run_id, run.outcome) for run in runs] == [
        ("r5", "running"), ("r4", "abandoned"), ("r3", "ok"), ("r2", "abandoned"), ("r1", "ok"),
    ]
    clock.now = start + dt.timedelta(hours=4, minutes=1)
    status = await sync(NoDirectory(), InMemoryUserStore(), sink, clock).status("oak", actor=ACTOR)
    assert status.last_run is not None and status.last_run.outcome == "running"
    assert status.consecutive_failures == 1 and status.last_success is not None
    assert [item.kind for item in status.attention] == ["run_abandoned"]


async def test_a_refusal_after_the_last_run_needs_attention_but_a_busy_lock_does_not() -> None:
    clock = Clock()
    start = clock.now
    events = [
        _event(start, AuditKind.IMPORT_STARTED, "r1"),
        _event(start, AuditKind.IMPORT_COMPLETED, "r1", ok=True),
        _event(start + dt.timedelta(minutes=5), AuditKind.IMPORT_REFUSED, "r2", reason="already_running"),
    ]
    sink = InMemoryAuditSink(list(events))
    assert (await sync(NoDirectory(), InMemoryUserStore(), sink, clock).status("oak", actor=ACTOR)).healthy
    sink.events.append(_event(start + dt.timedelta(minutes=9), AuditKind.IMPORT_REFUSED, "r3", reason="invalid_config"))
    status = await sync(NoDirectory(), InMemoryUserStore(), sink, clock).status("oak", actor=ACTOR)
    assert [item.kind for item in status.attention] == ["import_refused"]


class WriteOnlySink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, events: Sequence[AuditEvent]) -> None:
        self.events.extend(events)


async def test_a_sink_that_cannot_be_queried_is_said_not_guessed() -> None:
    store, clock = InMemoryUserStore(), Clock()
    sink = WriteOnlySink()
    assert not isinstance(sink, ImportLogQuery)
    await sync(InMemoryDirectory.from_dict(tenant()), store, sink, clock).run(CONFIG, actor=ACTOR)
    status = await sync(NoDirectory(), store, sink, clock).status("oak", actor=ACTOR)
    assert not status.log_readable and status.last_run is None
    assert "cannot be read back" in str(status)


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_status_reads_the_shipped_sinks(kind: str, tmp_path: Path) -> None:
    sink: Any = JsonlAuditSink(tmp_path / "log.jsonl") if kind == "jsonl" else SqliteAuditSink(tmp_path / "log.db")
    assert isinstance(sink, ImportLogQuery)
    store, clock = InMemoryUserStore(), Clock()
    try:
        report = await sync(InMemoryDirectory.from_dict(tenant()), store, sink, clock).run(CONFIG, actor=ACTOR)
        status = await sync(NoDirectory(), store, sink, clock).status("oak", actor=ACTOR)
        assert status.last_run is not None and status.last_run.run_id == report.run_id
        assert status.last_run.outcome == "ok"
    finally:
        if kind == "sqlite":
            sink.close()


async def test_the_status_scan_is_bounded() -> None:
    clock = Clock()
    events = []
    for index in range(2000):
        at = clock.now + dt.timedelta(minutes=index)
        events += [_event(at, AuditKind.IMPORT_STARTED, f"r{index}"), _event(at, AuditKind.IMPORT_COMPLETED, f"r{index}", ok=True)]

    asked: list[int | None] = []

    class CountingSink(InMemoryAuditSink):

        async def query(self, trust_site_id: str, run_id: str | None = None, kinds: Any = None, limit: int | None = 100) -> list[AuditEvent]:
            asked.append(limit)
            return await super().query(trust_site_id, run_id, kinds, limit)

    sink = CountingSink(events)
    status = await sync(NoDirectory(), InMemoryUserStore(), sink, clock).status("oak", actor=ACTOR)
    assert status.last_run is not None and status.last_run.run_id == "r1999"
    assert asked and all(limit is not None and limit <= 200 for limit in asked)


async def test_status_needs_an_admin_of_the_trust() -> None:
    from calm_azure_sync import NotAuthorizedError

    with pytest.raises(NotAuthorizedError):
        await sync(NoDirectory(), InMemoryUserStore(), InMemoryAuditSink()).status("oak", actor=Actor("someone", []))


async def test_an_email_conflict_needs_attention_until_it_is_gone() -> None:
    # Person 0's account is replaced by another Azure account with her email while the first still exists:
    # the new one is an email conflict (no proof the old one is gone), left as it is for a person to decide.
    store, sink, clock = InMemoryUserStore(), InMemoryAuditSink(), Clock()
    first = tenant(4)
    await sync(InMemoryDirectory.from_dict(first), store, sink, clock).run(CONFIG, actor=ACTOR)
    second = tenant(4)
    second["users"].append({"id": "20000000-0000-4000-8000-000000000001", "displayName": "Person 0 (new)",
                            "mail": "p0@oak.org"})
    second["members"] = {STAFF: [*first["members"][STAFF][1:], "20000000-0000-4000-8000-000000000001"]}
    report = await sync(InMemoryDirectory.from_dict(second), store, sink, clock).run(CONFIG, actor=ACTOR)
    assert report.counts["conflict"] == 1
    status = await sync(NoDirectory(), store, sink, clock).status("oak", actor=ACTOR)
    (conflict,) = [item for item in status.attention if item.kind == "email_conflict"]
    assert conflict.message.startswith("1 Azure user(s) share an email") and not status.healthy
    assert status.last_run is not None and status.last_run.conflicts == 1
    assert status.to_dict()["last_run"]["conflicts"] == 1
    # The admin removes the new account from the group: no conflict left, nothing to act on.
    await sync(InMemoryDirectory.from_dict(first), store, sink, clock).run(CONFIG, actor=ACTOR)
    later = await sync(NoDirectory(), store, sink, clock).status("oak", actor=ACTOR)
    assert not [item for item in later.attention if item.kind == "email_conflict"]
