"""SqliteUserStore beyond the conformance suite: crashes, processes, the run lock lease, the slow path."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import calm_azure_sync.sqlite.store as sqlite_module
from calm_azure_sync import (
    AddGroupMember,
    Assign,
    ConfigError,
    CreateUser,
    ImportAlreadyRunningError,
    RetireGroup,
    Role,
    SqliteUserStore,
    StoreError,
    StoreState,
    SyncState,
    UpdateUser,
    UpsertGroup,
)
from calm_azure_sync.core.plan import Change
from calm_azure_sync.sqlite._db import open_sqlite
from calm_azure_sync.sqlite._lock import process_host

TRUST = "trust-oak"
MODULES = ("risk", "policies", "incidents")


def _batch(first: int, count: int) -> list[Change]:
    """``count`` new users from number ``first``, each created then given three grants."""
    changes: list[Change] = []
    for number in range(first, first + count):
        external_id = f"e{number:04d}"
        changes.append(CreateUser(external_id, f"user{number}@oak.example", f"User {number}"))
        changes.extend(Assign(external_id, "oak-primary", module, Role.MEMBER) for module in MODULES)
    return changes


def _run_child(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteUserStore]:
    opened = SqliteUserStore(tmp_path / "calm.db")
    yield opened
    opened.close()


# -- crash safety ---------------------------------------------------------------------------

_KILL_MID_APPLY = """
    import asyncio, os, signal, sys
    sys.path.insert(0, sys.argv[4])
    from tests.test_sqlite_store import _batch
    from calm_azure_sync import SqliteUserStore

    path, statement, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen = 0

    def trace(sql):
        global seen
        if sql.startswith(statement):
            seen += 1
            if seen == after:
                os.kill(os.getpid(), signal.SIGKILL)

    async def main():
        store = SqliteUserStore(path)
        await store.load("trust-oak")  # opens the connection, so the trace can be set on it
        store._db._connection.set_trace_callback(trace)
        await store.apply("trust-oak", _batch(50, 100))
        print("applied without being killed")

    asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("statement", "after"),
    [
        pytest.param("INSERT INTO users", 1, id="first-user-row"),
        pytest.param("INSERT INTO grants", 150, id="half-the-grants"),
        pytest.param("COMMIT", 1, id="just-before-commit"),
    ],
)
async def test_a_crash_mid_apply_leaves_no_half_written_user_and_a_rerun_converges(
    tmp_path: Path, statement: str, after: int
) -> None:
    path = tmp_path / "calm.db"
    async with SqliteUserStore(path) as store:
        assert all(result.ok for result in await store.apply(TRUST, _batch(0, 50)))

    child = _run_child(_KILL_MID_APPLY, str(path), statement, str(after), str(Path(__file__).parent.parent))
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr

    async with SqliteUserStore(path) as store:
        state = await store.load(TRUST)
        # The killed batch is gone entirely; the committed one is whole.
        assert sorted(user.external_id or "" for user in state.users.values()) == [
            f"e{number:04d}" for number in range(50)
        ]
        assert all(len(access) == len(MODULES) for access in state.synced_access.values())
        assert len(state.synced_access) == 50

        results = await store.apply(TRUST, _batch(50, 100))
        assert all(result.ok for result in results)
        converged = await store.load(TRUST)
        assert len(converged.users) == 150
        assert converged.synced_access == {
            f"e{number:04d}": {("oak-primary", module): Role.MEMBER for module in MODULES}
            for number in range(150)
        }
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute("PRAGMA foreign_key_check").fetchall() == []
    check.close()


# -- several processes ----------------------------------------------------------------------

_HOLD_LOCK = """
    import asyncio, sys
    from calm_azure_sync import SqliteUserStore

    async def main():
        async with SqliteUserStore(sys.argv[1]) as store, store.run_lock("trust-oak"):
            print("locked", flush=True)
            await asyncio.to_thread(sys.stdin.readline)

    asyncio.run(main())
"""


def _start_lock_holder(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLD_LOCK), str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked", holder.stderr.read() if holder.stderr else ""
    return holder


async def test_a_lock_held_by_another_process_refuses_then_is_released_on_exit(
    store: SqliteUserStore, tmp_path: Path
) -> None:
    holder = _start_lock_holder(tmp_path / "calm.db")
    try:
        with pytest.raises(ImportAlreadyRunningError):
            async with store.run_lock(TRUST):
                pass  # pragma: no cover - the lock must not be granted
        holder.communicate("done\n", timeout=30)
        assert holder.returncode == 0
    finally:
        if holder.poll() is None:  # pragma: no cover - only when an assertion above failed
            holder.kill()
            holder.communicate()
    async with store.run_lock(TRUST):
        pass


async def test_a_lock_whose_holder_was_killed_is_taken_over(store: SqliteUserStore, tmp_path: Path) -> None:
    holder = _start_lock_holder(tmp_path / "calm.db")
    holder.kill()
    holder.communicate(timeout=30)  # reaped: the pid is really gone
    async with store.run_lock(TRUST):
        rows = await asyncio.to_thread(_lock_rows, tmp_path / "calm.db")
        assert [(pid, hostname) for _holder, pid, hostname, _expires in rows] == [
            (os.getpid(), process_host())
        ]
    assert await asyncio.to_thread(_lock_rows, tmp_path / "calm.db") == []


def _lock_rows(path: Path) -> list[tuple[str, int, str, str]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT holder, pid, hostname, expires_at FROM run_locks").fetchall()
    finally:
        connection.close()


def _plant_lock(path: Path, *, pid: int, hostname: str, expires_in: dt.timedelta) -> None:
    now = dt.datetime.now(dt.UTC)
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(
                "INSERT INTO run_locks VALUES (?, 'planted', ?, ?, ?, ?)",
                (TRUST, pid, hostname, now.isoformat(), (now + expires_in).isoformat()),
            )
    finally:
        connection.close()


def _dead_pid() -> int:
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()
    return probe.pid


async def test_a_lock_left_by_a_dead_pid_on_this_host_is_recovered(
    store: SqliteUserStore, tmp_path: Path
) -> None:
    await store.load(TRUST)  # creates the schema
    _plant_lock(
        tmp_path / "calm.db", pid=_dead_pid(), hostname=process_host(), expires_in=dt.timedelta(hours=1)
    )
    async with store.run_lock(TRUST):
        pass


async def test_a_live_lock_on_another_host_holds_until_its_lease_ends(
    store: SqliteUserStore, tmp_path: Path
) -> None:
    await store.load(TRUST)
    # The pid is alive here, but it is another host's: only the lease can tell.
    _plant_lock(
        tmp_path / "calm.db", pid=os.getpid(), hostname="other-host", expires_in=dt.timedelta(hours=1)
    )
    with pytest.raises(ImportAlreadyRunningError):
        async with store.run_lock(TRUST):
            pass  # pragma: no cover - the lock must not be granted


async def test_an_expired_lease_is_taken_over(store: SqliteUserStore, tmp_path: Path) -> None:
    await store.load(TRUST)
    _plant_lock(
        tmp_path / "calm.db", pid=os.getpid(), hostname="other-host", expires_in=-dt.timedelta(seconds=1)
    )
    async with store.run_lock(TRUST):
        pass


async def test_the_holder_renews_its_lease_while_it_runs(tmp_path: Path) -> None:
    lease = dt.timedelta(seconds=0.4)
    async with SqliteUserStore(tmp_path / "calm.db", lock_lease=lease) as store, store.run_lock(TRUST):
        await asyncio.sleep(1.0)  # more than two leases
        [(_holder, _pid, _hostname, expires_at)] = await asyncio.to_thread(_lock_rows, tmp_path / "calm.db")
        assert dt.datetime.fromisoformat(expires_at) > dt.datetime.now(dt.UTC)


_WRITER = """
    import asyncio, sys
    sys.path.insert(0, sys.argv[3])
    from tests.test_sqlite_store import _batch
    from calm_azure_sync import SqliteUserStore

    async def main():
        first = int(sys.argv[2])
        async with SqliteUserStore(sys.argv[1]) as store:
            for start in range(first, first + 200, 10):
                results = await store.apply("trust-oak", _batch(start, 10))
                assert all(result.ok for result in results), results
                await store.load("trust-oak")

    asyncio.run(main())
"""


def test_two_processes_apply_to_one_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "calm.db"
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(_WRITER),
                str(path),
                str(first),
                str(Path(__file__).parent.parent),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for first in (0, 1000)
    ]
    for writer in writers:
        _out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err

    async def read() -> StoreState:
        async with SqliteUserStore(path) as store:
            return await store.load(TRUST)

    state = asyncio.run(read())
    assert len(state.users) == 400
    assert len(state.synced_access) == 400


# -- the slow path, schema ------------------------------------------------------------------


async def test_a_write_the_database_refuses_fails_alone(store: SqliteUserStore, tmp_path: Path) -> None:
    await store.load(TRUST)
    connection = sqlite3.connect(tmp_path / "calm.db")
    with connection:
        # A host's own rule the sync knows nothing about.
        connection.execute(
            "CREATE TRIGGER no_finance BEFORE INSERT ON grants WHEN NEW.module = 'finance' "
            "BEGIN SELECT RAISE(ABORT, 'finance is managed by hand'); END"
        )
    connection.close()
    changes: list[Change] = [
        *_batch(0, 2),
        Assign("e0000", "oak-primary", "finance", Role.ADMIN),
        *_batch(2, 2),
    ]
    results = await store.apply(TRUST, changes)
    failed = [result for result in results if not result.ok]
    assert [result.change for result in failed] == [changes[8]]
    assert "finance is managed by hand" in (failed[0].error or "")
    state = await store.load(TRUST)
    assert len(state.users) == 4
    assert all(len(access) == len(MODULES) for access in state.synced_access.values())


async def test_reapplying_an_applied_batch_writes_no_row(store: SqliteUserStore, tmp_path: Path) -> None:
    batch = _batch(0, 5)
    await store.apply(TRUST, batch)
    connection = sqlite3.connect(tmp_path / "calm.db")
    with connection:
        connection.execute("CREATE TABLE row_writes (n INTEGER)")
        for table in ("users", "grants"):
            for event in ("INSERT", "UPDATE", "DELETE"):
                connection.execute(
                    f"CREATE TRIGGER count_{table}_{event.lower()} AFTER {event} ON {table} "
                    "BEGIN INSERT INTO row_writes VALUES (1); END"
                )
    try:
        results = await store.apply(TRUST, batch)
        assert all(result.ok for result in results)
        assert connection.execute("SELECT count(*) FROM row_writes").fetchone() == (0,)
        # The counter itself works: a real change is counted.
        await store.apply(TRUST, [Assign("e0000", "oak-primary", "risk", Role.ADMIN)])
        assert connection.execute("SELECT count(*) FROM row_writes").fetchone() == (1,)
    finally:
        connection.close()


async def test_a_schema_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    async with SqliteUserStore(tmp_path / "calm.db") as store:
        await store.load(TRUST)
    connection = sqlite3.connect(tmp_path / "calm.db")
    with connection:
        connection.execute("UPDATE calm_store_schema SET version = 99")
    connection.close()
    async with SqliteUserStore(tmp_path / "calm.db") as store:
        with pytest.raises(RuntimeError, match="version 99"):
            await store.load(TRUST)


async def test_the_schema_has_the_documented_indexes_and_pragmas(
    store: SqliteUserStore, tmp_path: Path
) -> None:
    await store.load(TRUST)
    connection = sqlite3.connect(tmp_path / "calm.db")
    try:
        indexes = {
            row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert {"users_by_email_key", "users_by_external_id"} <= indexes
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()


async def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = SqliteUserStore(tmp_path / "calm.db")
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.load(TRUST)


# -- the same answers as the in-memory store -------------------------------------------------
# tests/test_postgres_differential.py runs the one store differential (tests/store_differential.py)
# on the in-memory and SQLite stores, and on PostgreSQL too when a server is there.


async def test_a_version_1_store_is_migrated_and_keeps_its_users(tmp_path):
    import sqlite3

    from calm_azure_sync import SqliteUserStore

    path = tmp_path / "v1.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(
            """
            CREATE TABLE calm_store_schema (version INTEGER NOT NULL);
            INSERT INTO calm_store_schema VALUES (1);
            CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL, email_key TEXT NOT NULL,
                display_name TEXT NOT NULL, given_name TEXT, surname TEXT, external_id TEXT,
                active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)));
            INSERT INTO users VALUES ('s1', 'Ann@x.org', 'ann@x.org', 'Ann', NULL, NULL, 'e1', 0);
            """
        )
    store = SqliteUserStore(path)
    user = (await store.load("trust")).users["s1"]
    assert (user.email, user.external_id, user.active, user.deactivated_by_sync) == ("Ann@x.org", "e1", False, False)
    store.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM calm_store_schema").fetchone() == (sqlite_module.SCHEMA_VERSION,)


async def test_a_dead_looking_pid_in_another_pid_namespace_is_not_taken_over(
    store: SqliteUserStore, tmp_path: Path
) -> None:
    # Same hostname, different PID namespace (another container): the pid says nothing here.
    await store.load(TRUST)
    _plant_lock(
        tmp_path / "calm.db",
        pid=_dead_pid(),
        hostname=f"{socket.gethostname()} pid:[1]",
        expires_in=dt.timedelta(hours=1),
    )
    with pytest.raises(ImportAlreadyRunningError):
        async with store.run_lock(TRUST):
            pass


def test_opening_a_new_file_waits_for_another_connection_instead_of_failing(tmp_path: Path) -> None:
    # Switching a fresh file to WAL needs it to itself; SQLite says "locked" at
    # once (no busy handler) while another connection is writing to it.
    import threading

    path = tmp_path / "new.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    timer = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    timer.start()
    connection = open_sqlite(path, busy_timeout_ms=10_000)  # waits for the writer
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert holder.execute("SELECT count(*) FROM t").fetchone() == (1,)  # the writer's row committed first
    finally:
        timer.join()
        connection.close()
        holder.close()


# -- the sync state ----------------------------------------------------------------------

_V2_SCHEMA = """
CREATE TABLE calm_store_schema (version INTEGER NOT NULL);
INSERT INTO calm_store_schema VALUES (2);
CREATE TABLE users (
    id TEXT PRIMARY KEY, email TEXT NOT NULL, email_key TEXT NOT NULL, display_name TEXT NOT NULL,
    given_name TEXT, surname TEXT, external_id TEXT,
    active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    deactivated_by_sync INTEGER NOT NULL DEFAULT 0 CHECK (deactivated_by_sync IN (0, 1))
);
CREATE UNIQUE INDEX users_by_email_key ON users (email_key);
CREATE UNIQUE INDEX users_by_external_id ON users (external_id);
CREATE TABLE grants (
    user_id TEXT NOT NULL REFERENCES users (id), site_id TEXT NOT NULL, module TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('Member', 'Manager', 'Admin')),
    source TEXT NOT NULL CHECK (source IN ('manual', 'azure')), trust_site_id TEXT,
    PRIMARY KEY (user_id, site_id, module, source)
) WITHOUT ROWID;
CREATE INDEX grants_synced_by_trust ON grants (trust_site_id) WHERE source = 'azure';
CREATE INDEX grants_manual_by_user ON grants (user_id) WHERE source = 'manual';
CREATE TABLE run_locks (
    trust_site_id TEXT PRIMARY KEY, holder TEXT NOT NULL, pid INTEGER NOT NULL, hostname TEXT NOT NULL,
    acquired_at TEXT NOT NULL, expires_at TEXT NOT NULL
);
INSERT INTO users VALUES ('u1', 'Ann@x.org', 'ann@x.org', 'Ann', NULL, NULL, 'e1', 1, 0);
INSERT INTO users VALUES ('u2', 'bo@x.org', 'bo@x.org', 'Bo', NULL, NULL, NULL, 1, 0);
INSERT INTO grants VALUES ('u1', 's1', 'risk', 'Admin', 'azure', 'trust-oak');
INSERT INTO grants VALUES ('u2', 's1', 'risk', 'Member', 'manual', NULL);
"""


def _v2_file(path: Path) -> Path:
    with sqlite3.connect(path) as connection:
        connection.executescript(_V2_SCHEMA)
    connection.close()
    return path


async def test_a_version_2_store_is_migrated_in_place_and_keeps_its_users_and_grants(tmp_path: Path) -> None:
    path = _v2_file(tmp_path / "v2.sqlite")
    async with SqliteUserStore(path) as store:
        state = await store.load(TRUST)
        assert set(state.users) == {"u1", "u2"}
        assert state.synced_access == {"e1": {("s1", "risk"): Role.ADMIN}}
        assert state.manual_access_user_ids == frozenset({"u2"})
        assert await store.load_state(TRUST) == SyncState()
        await store.save_state(TRUST, SyncState(baselines={"g1": 12}))
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM calm_store_schema").fetchall() == [
            (sqlite_module.SCHEMA_VERSION,)
        ]
        assert connection.execute("SELECT trust_site_id, version FROM sync_state").fetchall() == [(TRUST, 1)]
    connection.close()
    async with SqliteUserStore(path) as store:  # opening a migrated file again changes nothing
        assert (await store.load_state(TRUST)).baselines == {"g1": 12}


async def test_a_migration_that_fails_leaves_the_file_at_its_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _v2_file(tmp_path / "v2.sqlite")
    monkeypatch.setitem(sqlite_module._MIGRATIONS, 2, ("CREATE TABLE sync_state (x)", "SELECT no_such_function()"))
    async with SqliteUserStore(path) as store:
        with pytest.raises(StoreError) as raised:  # v0.4: a StoreError, sqlite3's error as its cause
            await store.load(TRUST)
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM calm_store_schema").fetchall() == [(2,)]
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "sync_state" not in tables
    connection.close()


async def test_sync_state_survives_closing_and_reopening_the_file(tmp_path: Path) -> None:
    state = SyncState(baselines={"g1": 40}, left_scope={"e1": True}, delta={"g1": {"link": "x"}})
    async with SqliteUserStore(tmp_path / "calm.db") as store:
        await store.save_state(TRUST, state)
    async with SqliteUserStore(tmp_path / "calm.db") as store:
        assert await store.load_state(TRUST) == state


async def test_a_state_row_whose_version_column_disagrees_is_refused(tmp_path: Path) -> None:
    async with SqliteUserStore(tmp_path / "calm.db") as store:
        await store.save_state(TRUST, SyncState(baselines={"g1": 1}))
        with sqlite3.connect(tmp_path / "calm.db") as connection:
            connection.execute("UPDATE sync_state SET version = 2")
        connection.close()
        with pytest.raises(ConfigError, match="version 2"):
            await store.load_state(TRUST)


# -- text the database cannot encode ------------------------------------------------------


async def test_one_lone_surrogate_in_a_name_costs_neither_the_batch_nor_the_rerun(store: SqliteUserStore) -> None:
    changes: list[Change] = [CreateUser(f"e{n}", f"u{n}@oak.example", f"User {n}") for n in range(50)]
    changes.insert(17, CreateUser("zoe", "zoe@oak.example", "Zo\ud83d", given_name="Zo\ud83d", surname="\udc00"))
    results = await store.apply(TRUST, changes)
    assert [result.outcome for result in results] == ["applied"] * 51
    state = await store.load(TRUST)
    zoe = next(user for user in state.users.values() if user.external_id == "zoe")
    assert (zoe.display_name, zoe.given_name, zoe.surname) == ("Zo\ufffd", "Zo\ufffd", "\ufffd")
    # The same text again is what is stored: nothing to change.
    update = UpdateUser("zoe", zoe.user_id, "zoe@oak.example", "Zo\ud83d", "Zo\ud83d", "\udc00")
    assert [result.outcome for result in await store.apply(TRUST, [update])] == ["unchanged"]


async def test_an_identifier_utf8_cannot_encode_fails_alone(store: SqliteUserStore) -> None:
    results = await store.apply(
        TRUST,
        [
            CreateUser("e1", "a@oak.example", "A"),
            Assign("e1", "site\ud800", "risk", Role.MEMBER),
            CreateUser("e\udfff", "b@oak.example", "B"),
            Assign("e1", "s1", "risk", Role.MEMBER),
        ],
    )
    assert [result.outcome for result in results] == ["applied", "failed", "failed", "applied"]
    assert "surrogate" in (results[1].error or "")
    assert (await store.load(TRUST)).synced_access == {"e1": {("s1", "risk"): Role.MEMBER}}


# -- synced groups ----------------------------------------------------------------------


async def test_a_reapplied_group_batch_writes_no_row(store: SqliteUserStore, tmp_path: Path) -> None:
    batch: list[Change] = [
        UpsertGroup("g1", "Oak Teachers", ("s1",)),
        UpsertGroup("g2", "Oak Staff", ("s1", "s2")),
        *[CreateUser(f"e{n}", f"u{n}@oak.example", f"User {n}") for n in range(5)],
        *[AddGroupMember("g1", f"e{n}") for n in range(5)],
        *[AddGroupMember("g2", f"e{n}") for n in (0, 2)],
    ]
    await store.apply(TRUST, batch)
    connection = sqlite3.connect(tmp_path / "calm.db")
    try:
        connection.execute("CREATE TABLE row_writes (n INTEGER)")
        for table in ("synced_groups", "group_members", "users", "grants"):
            for event in ("INSERT", "UPDATE", "DELETE"):
                connection.execute(
                    f"CREATE TRIGGER count_{table}_{event.lower()} AFTER {event} ON {table} "
                    "BEGIN INSERT INTO row_writes VALUES (1); END"
                )
        connection.commit()
        assert {result.outcome for result in await store.apply(TRUST, batch)} == {"unchanged"}
        assert connection.execute("SELECT count(*) FROM row_writes").fetchone() == (0,)
        await store.apply(TRUST, [RetireGroup("g2")])  # two memberships deleted, one group row updated
        assert connection.execute("SELECT count(*) FROM row_writes").fetchone() == (3,)
    finally:
        connection.close()


async def test_memberships_reference_users_and_groups(store: SqliteUserStore, tmp_path: Path) -> None:
    await store.apply(TRUST, [UpsertGroup("g1", "Oak"), CreateUser("e1", "a@oak.example", "A"), AddGroupMember("g1", "e1")])
    connection = sqlite3.connect(tmp_path / "calm.db")
    try:
        connection.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute("INSERT INTO group_members VALUES (?, 'g1', 'no-such-user')", (TRUST,))
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute(
                "INSERT INTO group_members SELECT ?, 'no-such-group', id FROM users", (TRUST,)
            )
        assert connection.execute("SELECT * FROM synced_groups").fetchall() == [(TRUST, "g1", "Oak", "[]", 0)]
    finally:
        connection.close()


async def test_a_migrated_version_2_store_takes_groups(tmp_path: Path) -> None:
    path = _v2_file(tmp_path / "v2.sqlite")
    async with SqliteUserStore(path) as store:
        results = await store.apply(TRUST, [UpsertGroup("g1", "Oak", ("s1",)), AddGroupMember("g1", "e1")])
        assert [result.outcome for result in results] == ["applied", "applied"]
        assert (await store.load(TRUST)).group_members == {"g1": frozenset({"e1"})}
        assert await store.group_members("g1") == frozenset({"e1"})


async def test_a_synced_grant_on_a_user_without_an_external_id_counts_as_the_whole_load_counts(
    store: SqliteUserStore, tmp_path: Path
) -> None:
    # No change of the protocol leaves such a row (only an older file or a hand edit): load_people's
    # synced-user count subtracts them, as StoreState.synced_users (keyed by external id) never counts them.
    from calm_azure_sync.store.protocol import people_rows

    await store.apply(TRUST, _batch(1, 3))
    with sqlite3.connect(tmp_path / "calm.db") as side:
        side.execute(
            "INSERT INTO users (id, email, email_key, display_name) VALUES ('orphan', 'o@oak.example', "
            "'o@oak.example', 'Orphan')"
        )
        side.execute(
            "INSERT INTO grants (user_id, site_id, module, role, source, trust_site_id) "
            "VALUES ('orphan', 'oak-primary', 'risk', 'Member', 'azure', ?)", (TRUST,)
        )
    side.close()
    whole = await store.load(TRUST)
    assert whole.synced_users == 3
    assert (await store.load_people(TRUST, ["e0001"], ["o@oak.example"])).synced_users == 3
    assert await store.load_people(TRUST, ["e0001"], ["o@oak.example"]) == people_rows(
        whole, ["e0001"], ["o@oak.example"]
    )
