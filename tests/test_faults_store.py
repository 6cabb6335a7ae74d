"""Store and audit faults during whole imports, mostly into the real SqliteUserStore.

- a store that refuses single changes, whole batches (an I/O error inside the
  SQLite transaction, after some rows were written) or ``load``;
- SIGKILL at a random SQL statement of an import (a first import and an
  update with leavers, movers, renames and joiners), repeated
  ``CALM_KILLS`` times: every user is either as before the run or as after
  it, never in between, nothing is duplicated, manual grants survive, the
  dead process's lock is taken over, and the re-run converges;
- two processes importing the same trust into one file at once;
- a lock left by a dead process, or by a live one elsewhere;
- an audit sink that fails at every point of a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

import calm_azure_sync.sqlite.store as sqlite_module
from calm_azure_sync import (
    AuditKind,
    ChangeResult,
    ImportAlreadyRunningError,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    RemovalPolicy,
    SqliteUserStore,
)
from calm_azure_sync.sqlite._lock import process_host
from calm_azure_sync.testing.synthetic import generate_tenant

from .conftest import budget, scaled
from .helpers import SYSTEM, FailingSink, FlakyStore, expected_access, refused_only, synced_access_of

TRUST = "trust"
USERS = 150
SINK_POINTS = budget("CALM_SINK_POINTS", 5, 40)
TENANT = generate_tenant(users=USERS, groups=10, seed=7)
CONFIG = attrs.evolve(TENANT.config, removal=RemovalPolicy("deactivate", 1.0, 10**6))
HIERARCHY = TENANT.hierarchy


def evolve(fixture: dict[str, Any], seed: int) -> dict[str, Any]:
    """The directory a while later: leavers, movers, renames and joiners."""
    rng = random.Random(seed)
    data = json.loads(json.dumps(fixture))
    users = [u["id"] for u in data["users"]]
    groups = [g for g in data["members"] if data["members"][g]]
    for leaver in rng.sample(users, len(users) // 10):
        for members in data["members"].values():
            while leaver in members:
                members.remove(leaver)
    for mover in rng.sample(users, len(users) // 10):
        data["members"][rng.choice(groups)].append(mover)
    for renamed in rng.sample(data["users"], 10):
        if renamed.get("mail"):
            renamed["mail"] = "renamed." + renamed["mail"]
    for index in range(15):
        joiner = {"id": f"joiner-{seed}-{index}", "displayName": f"Joiner {index}",
                  "mail": f"joiner{index}.{seed}@oak.sch.uk", "accountEnabled": True}
        data["users"].append(joiner)
        data["members"][rng.choice(groups)].append(joiner["id"])
    return data


def snapshot(path: Path) -> tuple[dict[str, Any], set[tuple[Any, ...]], list[str]]:
    """Synced users by external id, manual grants, and every email key (for duplicates)."""
    connection = sqlite3.connect(path)
    try:
        users = {
            row[0]: row
            for row in connection.execute("SELECT id, external_id, email, display_name, active FROM users")
        }
        access: dict[str, set[tuple[str, str, str]]] = {}
        manual = set()
        for user_id, site, module, role, source in connection.execute(
            "SELECT user_id, site_id, module, role, source FROM grants"
        ):
            if source == "manual":
                manual.add((user_id, site, module, role))
            else:
                access.setdefault(user_id, set()).add((site, module, role))
        keys = [row[0] for row in connection.execute("SELECT email_key FROM users")]
    finally:
        connection.close()
    synced = {
        external_id: (email, name, active, frozenset(access.get(user_id, ())))
        for user_id, external_id, email, name, active in users.values()
        if external_id is not None
    }
    return synced, manual, keys


def lock_rows(path: Path) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT pid, hostname FROM run_locks").fetchall()
    finally:
        connection.close()


async def run_import(path: Path, fixture: dict[str, Any], audit: Any = None) -> Any:
    async with SqliteUserStore(path) as store:
        directory = InMemoryDirectory.from_dict(fixture)
        return await Reconciler(directory, store, audit or InMemoryAuditSink(), HIERARCHY, batch_size=20).run(CONFIG, actor=SYSTEM)


# -- SIGKILL at a random statement ---------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    from calm_azure_sync import (Actor, InMemoryDirectory, JsonlAuditSink, Reconciler, Site, SqliteUserStore,
                                 SyncConfig, TrustHierarchy, ImportAlreadyRunningError)

    SYSTEM = Actor.system("tests")

    path, inputs, kill_at, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    data = json.load(open(inputs))
    seen = 0

    def trace(sql):
        global seen
        seen += 1
        if seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        store = SqliteUserStore(path)
        await store.load("trust")  # opens the connection so the trace can be set on it
        store._db._connection.set_trace_callback(trace)
        hierarchy = TrustHierarchy([Site(**site) for site in data["sites"]])
        reconciler = Reconciler(InMemoryDirectory.from_dict(data["fixture"]), store,
                                JsonlAuditSink(path + ".audit.jsonl"), hierarchy, batch_size=20)
        while go != "-" and not os.path.exists(go):
            await asyncio.sleep(0.001)
        try:
            report = await reconciler.run(SyncConfig.from_dict(data["config"]), actor=SYSTEM)
        except ImportAlreadyRunningError:
            print("busy", seen, flush=True)
            return
        print("ok" if report.ok else "not-ok", seen, flush=True)

    asyncio.run(main())
    """
)


def write_inputs(directory: Path, fixture: dict[str, Any]) -> Path:
    inputs = directory / "inputs.json"
    sites = [{"id": s.id, "name": s.name, "parent_id": s.parent_id} for s in HIERARCHY.sites]
    inputs.write_text(json.dumps({"fixture": fixture, "config": CONFIG.to_dict(), "sites": sites}))
    return inputs


def start_child(path: Path, inputs: Path, kill_at: int, go: str = "-") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(inputs), str(kill_at), go],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_child(path: Path, inputs: Path, kill_at: int) -> tuple[int, str, str]:
    child = start_child(path, inputs, kill_at)
    out, err = child.communicate(timeout=120)
    return child.returncode, out, err


def _phase_files(tmp_path: Path, phase: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A database as it was before the phase's import, and the directory before and during it."""
    base = tmp_path / f"{phase}.base.db"
    old = TENANT.fixture
    if phase == "first-import":
        async def prepare() -> None:
            async with SqliteUserStore(base) as store:
                # An invited teacher with a manual grant: the import links them, never duplicates them.
                first = next(u for u in old["users"] if u.get("mail") and u.get("accountEnabled", True))
                invited = await store.add_user(first["mail"].upper(), "Invited by hand")
                await store.grant(invited, "school-1", "Safeguarding", "Admin")

        asyncio.run(prepare())
        return base, {"users": [], "groups": [], "members": {}}, old
    asyncio.run(_prepare_update(base, old))
    return base, old, evolve(old, seed=11)


async def _prepare_update(base: Path, old: dict[str, Any]) -> None:
    async with SqliteUserStore(base) as store:
        invited = await store.add_user("head.by.hand@oak.sch.uk", "Head")
        await store.grant(invited, "trust", "Risk", "Admin")
    report = await run_import(base, old)
    assert report.ok, report.errors
    async with SqliteUserStore(base) as store:
        synced = [u for u in (await store.users()) if u.external_id]
        await store.grant(synced[0].user_id, "school-2", "Policies", "Manager")  # a manual grant on a synced user


@pytest.mark.parametrize("kills", scaled("CALM_KILLS", 3, 60))
@pytest.mark.parametrize("phase", ["first-import", "update"])
def test_sigkill_at_random_statements_leaves_every_user_before_or_after_and_the_rerun_converges(
    tmp_path: Path, figures: Any, phase: str, kills: int
) -> None:
    base, _old, new = _phase_files(tmp_path, phase)
    before_users, before_manual, _ = snapshot(base)
    inputs = write_inputs(tmp_path, new)

    # The state an uninterrupted run leaves, and how many statements it takes.
    reference = tmp_path / "reference.db"
    shutil.copy(base, reference)
    code, out, err = run_child(reference, inputs, 0)
    assert code == 0 and out.startswith("ok"), err
    statements = int(out.split()[1])
    after_users, after_manual, _ = snapshot(reference)
    assert after_manual == before_manual

    rng = random.Random(f"{phase}-{os.environ.get('CALM_KILL_SEED', '0')}")
    for number in range(kills):
        with figures.case(f"Store: SIGKILL while applying into SQLite ({phase})") as case:
            path = tmp_path / f"kill-{number}.db"
            shutil.copy(base, path)
            kill_at = rng.randint(1, statements)
            code, out, err = run_child(path, inputs, kill_at)
            assert code == -signal.SIGKILL, (kill_at, out, err)
            users, manual, keys = snapshot(path)
            torn = [
                external_id
                for external_id in set(users) | set(before_users) | set(after_users)
                if users.get(external_id) not in (before_users.get(external_id), after_users.get(external_id))
            ]
            case.data_lost = len(torn) + len(before_manual - manual) + (len(keys) - len(set(keys)))
            assert torn == [], f"half-written users after a kill at statement {kill_at}: {torn[:5]}"
            assert manual == before_manual
            assert len(keys) == len(set(keys)), "duplicate users"
            left_locked = lock_rows(path)
            # Recovery: the dead process's lock is taken over, and the re-run converges.
            report = asyncio.run(run_import(path, new))
            assert report.ok, report.errors
            users, manual, _ = snapshot(path)
            assert users == after_users
            assert manual == before_manual
            assert lock_rows(path) == []
            state = asyncio.run(_load(path))
            assert synced_access_of(state) == expected_access(InMemoryDirectory.from_dict(new), CONFIG)
        if left_locked:
            with figures.case("Store: lock left by a dead process"):
                assert left_locked[0][1] == process_host()  # and recovered above


async def _load(path: Path) -> Any:
    async with SqliteUserStore(path) as store:
        return await store.load(TRUST)


# -- two processes, one trust, one file ----------------------------------------------------


@pytest.mark.parametrize("races", scaled("CALM_RACES", 2, 20))
def test_two_processes_importing_one_trust_into_one_file_at_once(tmp_path: Path, figures: Any, races: int) -> None:
    inputs = write_inputs(tmp_path, TENANT.fixture)
    expected = expected_access(InMemoryDirectory.from_dict(TENANT.fixture), CONFIG)
    for race in range(races):
        with figures.case("Store: two processes import one trust into one SQLite file") as case:
            path = tmp_path / f"race-{race}.db"
            asyncio.run(_load(path))  # the schema exists before the race starts
            go = tmp_path / f"go-{race}"
            children = [start_child(path, inputs, -1, str(go)) for _ in range(2)]
            time.sleep(0.3)  # both children have opened the file and wait at the barrier
            go.touch()
            outcomes = []
            for child in children:
                out, err = child.communicate(timeout=120)
                assert child.returncode == 0, err
                outcomes.append(out.split()[0])
            assert "ok" in outcomes and set(outcomes) <= {"ok", "busy"}, outcomes
            _users, _manual, keys = snapshot(path)
            case.data_lost = len(keys) - len(set(keys))
            assert len(keys) == len(set(keys)), "duplicate users"
            state = asyncio.run(_load(path))
            assert synced_access_of(state) == expected
            assert lock_rows(path) == []
            again = asyncio.run(run_import(path, TENANT.fixture))
            assert again.ok and again.plan is not None and again.plan.changes == ()


# -- locks -----------------------------------------------------------------------------------


def _plant_lock(path: Path, *, pid: int, hostname: str, expires_in: float) -> None:
    now = time.time()
    import datetime as dt

    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(
            "INSERT INTO run_locks VALUES (?, 'planted', ?, ?, ?, ?)",
            (TRUST, pid, hostname, moment.isoformat(), (moment + dt.timedelta(seconds=expires_in)).isoformat()),
        )
    connection.close()


def _dead_pid() -> int:
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()
    return probe.pid


@pytest.mark.parametrize(
    ("holder", "recovers"),
    [
        pytest.param("dead-pid-this-host", True, id="dead-pid"),
        pytest.param("live-pid-other-host-lease-ended", True, id="lease-ended"),
        pytest.param("live-pid-other-host", False, id="live-elsewhere"),
        pytest.param("live-pid-this-host", False, id="live-here"),
    ],
)
async def test_a_lock_left_behind_is_recovered_only_when_its_holder_is_gone(
    tmp_path: Path, figures: Any, holder: str, recovers: bool
) -> None:
    path = tmp_path / "calm.db"
    await _load(path)
    pid = _dead_pid() if holder.startswith("dead") else os.getpid()
    hostname = process_host() if holder.endswith("this-host") else "other-host"
    _plant_lock(path, pid=pid, hostname=hostname, expires_in=-1 if "ended" in holder else 3600)
    with figures.case("Store: lock left by a dead process"):
        audit = InMemoryAuditSink()
        if recovers:
            report = await run_import(path, TENANT.fixture, audit)
            assert report.ok
            assert lock_rows(path) == []
        else:
            with pytest.raises(ImportAlreadyRunningError):
                await run_import(path, TENANT.fixture, audit)
            assert refused_only(audit.events)  # refused before it started
            assert snapshot(path)[0] == {}
            assert lock_rows(path) == [(pid, hostname)]  # another's lock is never released by us


# -- a store that refuses changes, batches, load --------------------------------------------


class NthBatchFails:
    """Wraps a store; the apply calls numbered in ``failing`` raise ``error``."""

    def __init__(self, inner: Any, failing: set[int], error: BaseException) -> None:
        self.inner, self.failing, self.error, self.calls = inner, failing, error, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def apply(self, trust: str, changes: Sequence[Any]) -> Sequence[ChangeResult]:
        self.calls += 1
        if self.calls in self.failing:
            raise self.error
        return await self.inner.apply(trust, changes)


def _whole(state: Any, old: dict, new: dict) -> list[str]:
    access = synced_access_of(state)
    return [u for u in set(access) | set(old) | set(new) if access.get(u, {}) not in (old.get(u, {}), new.get(u, {}))]


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
@pytest.mark.parametrize("seed", range(3))
async def test_a_store_refusing_single_changes_applies_the_rest_and_the_rerun_converges(
    tmp_path: Path, figures: Any, store_kind: str, seed: int
) -> None:
    new = evolve(TENANT.fixture, seed)
    inner: Any = InMemoryUserStore() if store_kind == "memory" else SqliteUserStore(tmp_path / "calm.db")
    audit = InMemoryAuditSink()
    assert (await Reconciler(InMemoryDirectory.from_dict(TENANT.fixture), inner, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)).ok
    old_access = synced_access_of(await inner.load(TRUST))
    rng = random.Random(seed)
    refused: set[int] = set()

    def reject(change: Any) -> str | None:
        if id(change) not in refused and rng.random() < 0.1:
            refused.add(id(change))
        return "row locked by the host" if id(change) in refused else None

    with figures.case("Store: exception on one change") as case:
        flaky = FlakyStore(inner, reject=reject)
        directory = InMemoryDirectory.from_dict(new)
        report = await Reconciler(directory, flaky, audit, HIERARCHY, batch_size=17).run(CONFIG, actor=SYSTEM)
        # Refused changes fail, and so do the later changes of a user whose creation was refused.
        assert not report.ok and report.counts["failed"] >= len(refused) > 0
        errors = [e for e in audit.events if e.run_id == report.run_id and e.kind is AuditKind.ERROR]
        assert len(errors) == report.counts["failed"] and all(e.subject for e in errors)
        assert sum("row locked" in e.message for e in errors) == len(refused)
        truth = expected_access(directory, CONFIG)
        after = synced_access_of(await inner.load(TRUST))
        # Nothing the directory still gives was taken away.
        case.wrongful_removals = sum(
            1 for u, access in old_access.items() for key, role in access.items()
            if truth.get(u, {}).get(key) is not None and after.get(u, {}).get(key) is None
        )
        assert case.wrongful_removals == 0
        rerun = await Reconciler(directory, inner, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
        assert rerun.ok, rerun.errors
        assert synced_access_of(await inner.load(TRUST)) == truth
    if store_kind == "sqlite":
        inner.close()


@pytest.mark.parametrize("failing_write", [1, 2, 5])
async def test_an_io_error_inside_a_sqlite_batch_rolls_the_whole_batch_back(
    tmp_path: Path, figures: Any, monkeypatch: pytest.MonkeyPatch, failing_write: int
) -> None:
    path = tmp_path / "calm.db"
    real_write = sqlite_module._write
    calls = 0

    def write_then_fail(connection: sqlite3.Connection, mutations: Any) -> None:
        nonlocal calls
        calls += 1
        real_write(connection, mutations)  # rows are written inside the transaction…
        if calls == failing_write:
            raise sqlite3.OperationalError("disk I/O error")  # …then the disk fails

    monkeypatch.setattr(sqlite_module, "_write", write_then_fail)
    with figures.case("Store: exception on a whole batch") as case:
        async with SqliteUserStore(path) as store:
            directory = InMemoryDirectory.from_dict(TENANT.fixture)
            audit = InMemoryAuditSink()
            report = await Reconciler(directory, store, audit, HIERARCHY, batch_size=40).run(CONFIG, actor=SYSTEM)
            assert not report.ok
            failed = report.counts["failed"]
            # The rolled-back batch's users (and groups: upserts come first) do not exist, so
            # memberships naming them are not sent (or, sent, fail), and nothing else fails.
            follow_on = ("no user has external id", "has no synced group", "failed earlier in this run")
            assert failed >= 40 and all(
                "disk I/O error" in error or any(reason in error for reason in follow_on) for error in report.errors
            )
            assert any("disk I/O error" in error for error in report.errors)
            state = await store.load(TRUST)
            torn = _whole(state, {}, expected_access(directory, CONFIG))
            created = {u.external_id for u in state.users.values() if u.external_id}
            half = [u for u in created if not synced_access_of(state).get(u)]
            case.data_lost = len(torn) + len(half)
            assert torn == [] and half == []
            assert report.counts["create_user"] == len(created)
            monkeypatch.setattr(sqlite_module, "_write", real_write)
            rerun = await Reconciler(directory, store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
            assert rerun.ok and rerun.counts["create_user"] + len(created) == len(expected_access(directory, CONFIG))
            assert synced_access_of(await store.load(TRUST)) == expected_access(directory, CONFIG)


@pytest.mark.parametrize("failing", [{1}, {2, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}])
async def test_whole_batches_failing_leave_the_others_applied(tmp_path: Path, figures: Any, failing: set[int]) -> None:
    with figures.case("Store: exception on a whole batch") as case:
        async with SqliteUserStore(tmp_path / "calm.db") as inner:
            directory = InMemoryDirectory.from_dict(TENANT.fixture)
            await Reconciler(directory, inner, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM)
            old = synced_access_of(await inner.load(TRUST))
            new_directory = InMemoryDirectory.from_dict(evolve(TENANT.fixture, 3))
            store = NthBatchFails(inner, failing, OSError("database is locked"))
            report = await Reconciler(new_directory, store, InMemoryAuditSink(), HIERARCHY, batch_size=30).run(CONFIG, actor=SYSTEM)
            assert not report.ok and report.counts["failed"] > 0
            truth = expected_access(new_directory, CONFIG)
            torn = _whole(await inner.load(TRUST), old, truth)
            case.data_lost = len(torn)
            assert torn == []
            rerun = await Reconciler(new_directory, inner, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM)
            assert rerun.ok
            assert synced_access_of(await inner.load(TRUST)) == truth


@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("database is locked"), sqlite3.DatabaseError("file is not a database"),
     MemoryError(), asyncio.CancelledError()],
    ids=["locked", "corrupt", "memory", "cancelled"],
)
async def test_load_failing_writes_nothing_and_releases_the_lock(
    tmp_path: Path, figures: Any, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    path = tmp_path / "calm.db"
    with figures.case("Store: exception on load") as case:
        async with SqliteUserStore(path) as store:
            directory = InMemoryDirectory.from_dict(TENANT.fixture)
            await Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM)
            before = snapshot(path)
            real_load = sqlite_module._load_state

            def failing_load(connection: sqlite3.Connection, trust: str) -> Any:
                raise error

            monkeypatch.setattr(sqlite_module, "_load_state", failing_load)
            audit = InMemoryAuditSink()
            changed = InMemoryDirectory.from_dict(evolve(TENANT.fixture, 5))
            if isinstance(error, asyncio.CancelledError):
                with pytest.raises(asyncio.CancelledError):
                    await Reconciler(changed, store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
            else:
                report = await Reconciler(changed, store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)
                assert not report.ok
                assert audit.events[-1].kind is AuditKind.IMPORT_FAILED
                # A database failure is logged as the store's StoreError says it (with the driver's text).
                expected = str(error) if isinstance(error, sqlite3.Error) else type(error).__name__
                assert expected in audit.events[-1].message
            case.data_lost = int(snapshot(path) != before)
            assert snapshot(path) == before
            assert lock_rows(path) == []  # released, even on cancellation
            monkeypatch.setattr(sqlite_module, "_load_state", real_load)
            assert (await Reconciler(changed, store, audit, HIERARCHY).run(CONFIG, actor=SYSTEM)).ok
            assert synced_access_of(await store.load(TRUST)) == expected_access(changed, CONFIG)


# -- the audit sink --------------------------------------------------------------------------

_CHANGE_KINDS = {
    AuditKind.USER_CREATED, AuditKind.USER_LINKED, AuditKind.USER_RELINKED, AuditKind.USER_UPDATED,
    AuditKind.USER_DEACTIVATED, AuditKind.ASSIGNMENT_ADDED, AuditKind.ASSIGNMENT_CHANGED,
    AuditKind.ASSIGNMENT_REMOVED, AuditKind.GROUP_CREATED, AuditKind.GROUP_UPDATED, AuditKind.GROUP_RETIRED,
    AuditKind.GROUP_MEMBER_ADDED, AuditKind.GROUP_MEMBER_REMOVED,
}


class PickySink:
    """Records events; the record calls numbered in ``failing`` raise."""

    def __init__(self, failing: set[int]) -> None:
        self.failing, self.calls, self.events = failing, 0, []

    async def record(self, events: Sequence[Any]) -> None:
        self.calls += 1
        if self.calls in self.failing:
            raise OSError("audit database unavailable")
        self.events.extend(events)


def _sink_cases() -> list[Any]:
    cases: list[Any] = [pytest.param({n}, id=f"call-{n}") for n in range(1, 4)]
    cases += [pytest.param({n, n + 1}, id=f"down-from-call-{n}") for n in range(1, SINK_POINTS + 1)]
    cases.append(pytest.param(set(range(1, 1000)), id="down-all-run"))
    return cases


@pytest.mark.parametrize("failing", _sink_cases())
async def test_an_audit_sink_failing_anywhere_never_corrupts_the_store(
    tmp_path: Path, figures: Any, failing: set[int]
) -> None:
    with figures.case("Audit sink down during a run") as case:
        async with SqliteUserStore(tmp_path / "calm.db") as store:
            directory = InMemoryDirectory.from_dict(TENANT.fixture)
            await Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY).run(CONFIG, actor=SYSTEM)
            old = synced_access_of(await store.load(TRUST))
            new_directory = InMemoryDirectory.from_dict(evolve(TENANT.fixture, 9))
            truth = expected_access(new_directory, CONFIG)
            sink = PickySink(failing)
            report = await Reconciler(new_directory, store, sink, HIERARCHY, batch_size=25).run(CONFIG, actor=SYSTEM)
            state = await store.load(TRUST)
            torn = _whole(state, old, truth)
            case.data_lost = len(torn)
            assert torn == []
            not_applied = {"skipped", "excluded", "conflict", "unchanged", "failed", "held"}
            applied = sum(v for k, v in report.counts.items() if k not in not_applied)
            logged = [e for e in sink.events if e.run_id == report.run_id and e.kind in _CHANGE_KINDS]
            unrecorded = [e for e in report.unrecorded_events if e.kind in _CHANGE_KINDS]
            # Every applied change is either in the log or handed back to the host.
            assert len(logged) + len(unrecorded) == applied
            hit = {n for n in failing if n <= sink.calls}  # the record calls that did fail
            if not any(n + 1 in hit for n in hit):
                assert report.ok, report.errors  # a single blip is retried (or the run ended first)
                assert not report.unrecorded_events
            else:
                assert not report.ok
                assert any("audit sink failed" in error for error in report.errors)
                assert report.unrecorded_events
                # It stopped after the batch it could not log: at most one batch went unlogged.
                assert len(unrecorded) <= 25 + 10
            good = InMemoryAuditSink()
            rerun = await Reconciler(new_directory, store, good, HIERARCHY).run(CONFIG, actor=SYSTEM)
            assert rerun.ok
            assert synced_access_of(await store.load(TRUST)) == truth


async def test_an_audit_sink_down_for_the_whole_run_applies_at_most_nothing(figures: Any) -> None:
    with figures.case("Audit sink down during a run"):
        store = InMemoryUserStore()
        report = await Reconciler(InMemoryDirectory.from_dict(TENANT.fixture), store, FailingSink(), HIERARCHY).run(CONFIG, actor=SYSTEM)
        assert not report.ok
        # import_started could not be logged: nothing was read or applied.
        assert (await store.load(TRUST)).users == {}
        assert [e.kind for e in report.unrecorded_events] == [AuditKind.IMPORT_STARTED, AuditKind.IMPORT_FAILED]


async def test_two_trusts_importing_into_one_file_at_once_each_converge(tmp_path: Path) -> None:
    """Two trusts of one host share a SQLite file; their imports run at the same time."""
    from calm_azure_sync import GroupMapping, InMemoryAuditSink, Reconciler, Site, SqliteUserStore, SyncConfig
    from calm_azure_sync import TrustHierarchy as Hierarchy

    path = tmp_path / "shared.sqlite"
    hierarchy = Hierarchy([Site("oak"), Site("oak-school", parent_id="oak"), Site("elm"), Site("elm-school", parent_id="elm")])
    runs = []
    for trust, seed in (("oak", 1), ("elm", 2)):
        tenant = generate_tenant(users=400, groups=12, seed=seed, domain=f"{trust}.sch.uk")
        config = SyncConfig(
            trust,
            [GroupMapping(m.group_id, f"{trust}-school", m.roles) for m in tenant.config.mappings.mappings],
        )
        # Entra object ids are unique across tenants: give each tenant its own.
        fixture = json.loads(json.dumps(tenant.fixture).replace('"u0', f'"{trust}-u0'))
        directory = InMemoryDirectory.from_dict(fixture)
        runs.append((trust, directory, config, SqliteUserStore(path)))
    reports = await asyncio.gather(
        *(Reconciler(d, store, InMemoryAuditSink(), hierarchy, batch_size=50).run(c, actor=SYSTEM) for _, d, c, store in runs)
    )
    assert all(report.ok for report in reports), [report.errors for report in reports]
    for trust, directory, config, store in runs:
        assert synced_access_of(await store.load(trust)) == expected_access(directory, config)
        assert (await Reconciler(directory, store, InMemoryAuditSink(), hierarchy).plan(config, actor=SYSTEM)).changes == ()
