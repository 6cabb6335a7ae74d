"""PostgresUserStore and PostgresAuditSink beyond the conformance suites.

Against the throwaway server of .ci/services.sh: schema names, migrations, the
advisory run lock across connections and processes, unique identities under
concurrent batches, the slow path, sync state, and the Import Log queries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest

from calm_azure_sync import (
    Assign,
    AuditEvent,
    AuditKind,
    ConfigError,
    CreateUser,
    DeactivateUser,
    ImportAlreadyRunningError,
    Role,
    SyncState,
    UpdateUser,
)
from calm_azure_sync.core.plan import Change
from calm_azure_sync.incremental import cache_write
from calm_azure_sync.testing._store_conformance_delta import sample_cache

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from calm_azure_sync.postgres import PostgresAuditSink, PostgresUserStore  # noqa: E402
from calm_azure_sync.postgres._schema import SCHEMA_VERSION  # noqa: E402

TRUST = "trust-oak"
MODULES = ("risk", "policies", "incidents")
T0 = dt.datetime(2026, 9, 1, 8, 0, tzinfo=dt.UTC)


def _batch(first: int, count: int, site: str = "oak-primary") -> list[Change]:
    changes: list[Change] = []
    for number in range(first, first + count):
        external_id = f"e{number:04d}"
        changes.append(CreateUser(external_id, f"user{number}@oak.example", f"User {number}"))
        changes.extend(Assign(external_id, site, module, Role.MEMBER) for module in MODULES)
    return changes


@pytest.fixture
async def store(postgres_url: str, postgres_schema: str) -> AsyncIterator[PostgresUserStore]:
    async with PostgresUserStore(postgres_url, schema=postgres_schema) as made:
        yield made


@pytest.fixture
async def sink(postgres_url: str, postgres_schema: str) -> AsyncIterator[PostgresAuditSink]:
    async with PostgresAuditSink(postgres_url, schema=postgres_schema) as made:
        yield made


def _sql(postgres_url: str, statement: str, *parameters: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        cursor = connection.execute(statement, parameters or None)
        return cursor.fetchall() if cursor.description else []


def test_importing_the_package_does_not_import_psycopg() -> None:
    code = (
        "import sys, calm_azure_sync as c; c.Reconciler; c.SqliteUserStore; print('psycopg' in sys.modules)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "False"


@pytest.mark.parametrize("schema", ["", "1abc", "a-b", 'x"; DROP TABLE users; --', "pg_mine", "a" * 64, 7])
def test_a_bad_schema_name_is_a_config_error_naming_it(schema: Any) -> None:
    with pytest.raises(ConfigError, match="schema"):
        PostgresUserStore("postgresql://nowhere", schema=schema)
    with pytest.raises(ConfigError, match="schema"):
        PostgresAuditSink("postgresql://nowhere", schema=schema)


def test_a_wrong_connection_argument_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="conninfo"):
        PostgresUserStore(42)  # type: ignore[arg-type]


def test_the_repr_never_shows_the_conninfo() -> None:
    store = PostgresUserStore("postgresql://app:s3cret-pw@db/calm", schema="calm")
    assert "s3cret" not in repr(store) and "calm" in repr(store)
    assert "s3cret" not in repr(PostgresAuditSink("postgresql://app:s3cret-pw@db/calm"))


async def test_migrate_creates_the_tables_in_the_chosen_schema_once(
    postgres_url: str, postgres_schema: str
) -> None:
    async with (
        PostgresUserStore(postgres_url, schema=postgres_schema) as one,
        PostgresUserStore(postgres_url, schema=postgres_schema) as two,
    ):
        # Two processes starting at once: both migrate, one creates.
        assert await asyncio.gather(one.migrate(), two.migrate()) == [SCHEMA_VERSION, SCHEMA_VERSION]
        assert await one.migrate() == SCHEMA_VERSION
    tables = {
        row[0]
        for row in _sql(
            postgres_url,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            postgres_schema,
        )
    }
    assert {
        "users", "grants", "sync_states", "synced_groups", "group_members", "calm_schema_versions",
        "delta_meta", "delta_groups", "delta_members", "delta_users", "data_version",
    } <= tables
    assert _sql(postgres_url, f'SELECT component, version FROM "{postgres_schema}".calm_schema_versions') == [
        ("user_store", SCHEMA_VERSION)
    ]
    assert _sql(postgres_url, f'SELECT version FROM "{postgres_schema}".data_version') == [(0,)]  # one row


async def test_two_schemas_in_one_database_are_separate_stores(
    postgres_url: str, postgres_schema: str
) -> None:
    other = postgres_schema + "_b"
    try:
        async with (
            PostgresUserStore(postgres_url, schema=postgres_schema) as one,
            PostgresUserStore(postgres_url, schema=other) as two,
        ):
            await one.add_user("ann@oak.example", "Ann")
            assert await two.users() == []
            await two.add_user("ann@oak.example", "Ann in another schema")
            # The run lock is per (schema, trust): both may import "the same" trust.
            async with one.run_lock(TRUST), two.run_lock(TRUST):
                pass
    finally:
        _sql(postgres_url, f'DROP SCHEMA IF EXISTS "{other}" CASCADE')


async def test_a_database_migrated_by_a_newer_library_is_refused(
    postgres_url: str, postgres_schema: str
) -> None:
    async with PostgresUserStore(postgres_url, schema=postgres_schema) as store:
        await store.migrate()
    _sql(postgres_url, f'UPDATE "{postgres_schema}".calm_schema_versions SET version = 99')
    async with PostgresUserStore(postgres_url, schema=postgres_schema) as store:
        with pytest.raises(ConfigError, match=r"version 99.*upgrade calm-azure-sync"):
            await store.load(TRUST)


async def test_the_store_works_on_a_pool_the_host_owns(postgres_url: str, postgres_schema: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(postgres_url, min_size=2, max_size=2, open=False) as pool:
        store = PostgresUserStore(pool, schema=postgres_schema)
        async with store.run_lock(TRUST):
            results = await store.apply(TRUST, _batch(0, 3))
            assert all(result.ok for result in results)
        await store.close()
        # Closing the store leaves the host's pool open and usable.
        async with pool.connection() as connection:
            cursor = await connection.execute(f'SELECT count(*) FROM "{postgres_schema}".users')
            assert (await cursor.fetchone()) == (3,)


async def test_a_batch_is_one_transaction_written_with_copy(
    store: PostgresUserStore, postgres_url: str
) -> None:
    results = await store.apply(TRUST, _batch(0, 50))
    assert all(result.ok and result.outcome == "applied" for result in results)
    state = await store.load(TRUST)
    assert len(state.users) == 50
    assert all(len(access) == 3 for access in state.synced_access.values())
    assert [user.external_id for user in await store.users()] == [f"e{n:04d}" for n in range(50)]


def install_write_counter(postgres_url: str, schema: str) -> None:
    """Count every row written to users and grants, by any connection (COPY included)."""
    _sql(
        postgres_url,
        f"""
        CREATE TABLE "{schema}".test_writes (n bigint NOT NULL);
        INSERT INTO "{schema}".test_writes VALUES (0);
        CREATE FUNCTION "{schema}".count_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN UPDATE "{schema}".test_writes SET n = n + 1; RETURN NULL; END $$;
        CREATE TRIGGER count_user_writes AFTER INSERT OR UPDATE OR DELETE ON "{schema}".users
            FOR EACH ROW EXECUTE FUNCTION "{schema}".count_write();
        CREATE TRIGGER count_grant_writes AFTER INSERT OR UPDATE OR DELETE ON "{schema}".grants
            FOR EACH ROW EXECUTE FUNCTION "{schema}".count_write();
        """,
    )


def writes(postgres_url: str, schema: str) -> int:
    return int(_sql(postgres_url, f'SELECT n FROM "{schema}".test_writes')[0][0])


async def test_reapplying_an_applied_batch_writes_no_row(store: PostgresUserStore, postgres_url: str) -> None:
    await store.migrate()
    install_write_counter(postgres_url, store.schema)
    batch = _batch(0, 20)
    await store.apply(TRUST, batch)
    assert writes(postgres_url, store.schema) == 20 * 4  # the counter sees COPY rows too
    results = await store.apply(TRUST, batch)
    assert all(result.ok for result in results)
    assert writes(postgres_url, store.schema) == 20 * 4


async def test_concurrent_batches_creating_the_same_users_never_duplicate_them(
    postgres_url: str, postgres_schema: str
) -> None:
    stores = [PostgresUserStore(postgres_url, schema=postgres_schema) for _ in range(4)]
    try:
        await stores[0].migrate()
        # Four workers (two trusts sharing people) create the same 40 users at once.
        outcomes = await asyncio.gather(
            *(
                store.apply(trust, _batch(0, 40, site=f"{trust}-site"))
                for store in stores
                for trust in ("trust-oak", "trust-elm")
            )
        )
    finally:
        for store in stores:
            await store.close()
    assert all(result.ok for results in outcomes for result in results)
    rows = _sql(postgres_url, f'SELECT external_id, count(*) FROM "{postgres_schema}".users GROUP BY 1')
    assert len(rows) == 40 and all(count == 1 for _external_id, count in rows)
    (grants,) = _sql(postgres_url, f'SELECT count(*) FROM "{postgres_schema}".grants')
    assert grants == (40 * 3 * 2,)


async def test_a_write_the_database_refuses_fails_alone(store: PostgresUserStore, postgres_url: str) -> None:
    await store.migrate()
    # A host's constraint the shared rules know nothing about.
    _sql(
        postgres_url,
        f"ALTER TABLE \"{store.schema}\".users ADD CONSTRAINT no_bots CHECK (display_name NOT LIKE '%%bot%%')",
    )
    changes: list[Change] = [
        CreateUser("e1", "ann@oak.example", "Ann"),
        Assign("e1", "oak-primary", "risk", Role.MEMBER),
        CreateUser("e2", "robot@oak.example", "A bot"),
        Assign("e2", "oak-primary", "risk", Role.MEMBER),
        CreateUser("e3", "cat@oak.example", "Cat\x00"),  # a NUL: stored (through the text codec), as SQLite does
        CreateUser("e4", "dan@oak.example", "Dan"),
    ]
    results = await store.apply(TRUST, changes)
    assert [result.ok for result in results] == [True, True, False, False, True, True]
    assert "refused" in (results[2].error or "") and "no_bots" in (results[2].error or "")
    assert results[3].error == "no user has external id 'e2'"
    state = await store.load(TRUST)
    assert sorted(user.external_id or "" for user in state.users.values()) == ["e1", "e3", "e4"]
    assert {user.display_name for user in state.users.values()} == {"Ann", "Cat\x00", "Dan"}


async def test_a_second_holder_anywhere_is_refused_at_once(
    store: PostgresUserStore, postgres_url: str, postgres_schema: str
) -> None:
    child = textwrap.dedent(
        """
        import asyncio, sys, time
        from calm_azure_sync import ImportAlreadyRunningError
        from calm_azure_sync.postgres import PostgresUserStore

        async def main():
            async with PostgresUserStore(sys.argv[1], schema=sys.argv[2]) as store:
                started = time.monotonic()
                try:
                    async with store.run_lock("trust-oak"):
                        print("got it", flush=True)
                except ImportAlreadyRunningError:
                    print("refused", round(time.monotonic() - started, 1), flush=True)

        asyncio.run(main())
        """
    )

    def other_process() -> str:
        return subprocess.run(
            [sys.executable, "-c", child, postgres_url, postgres_schema],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()

    async with store.run_lock(TRUST):
        answer = await asyncio.to_thread(other_process)
        assert answer.startswith("refused")
        assert float(answer.split()[1]) < 2.0
        with pytest.raises(ImportAlreadyRunningError):
            async with store.run_lock(TRUST):
                pass
        # Another trust is independent.
        async with store.run_lock("trust-elm"):
            pass
    assert await asyncio.to_thread(other_process) == "got it"


async def test_losing_the_lock_connection_frees_the_lock_and_stops_the_old_run_writing(
    store: PostgresUserStore, postgres_url: str, postgres_schema: str
) -> None:
    async with PostgresUserStore(postgres_url, schema=postgres_schema) as other, store.run_lock(TRUST):
        assert all(result.ok for result in await store.apply(TRUST, _batch(0, 2)))
        # The lock connection dies (a network cut, a killed backend). Only this store's: the
        # server is shared with other tests (and other suites) holding locks of their own.
        _sql(postgres_url, f"SELECT pg_terminate_backend({store._held[TRUST].backend_pid})")
        await asyncio.sleep(0.2)
        async with other.run_lock(TRUST):
            # The old holder may not write any more: its lock is gone.
            with pytest.raises(ImportAlreadyRunningError):
                await store.apply(TRUST, _batch(2, 1))
            with pytest.raises(ImportAlreadyRunningError):
                await store.save_state(TRUST, SyncState(baselines={"g": 1}))
            with pytest.raises(ImportAlreadyRunningError):
                await store.save_delta(TRUST, cache_write(None, sample_cache(1)))
            with pytest.raises(ImportAlreadyRunningError):
                await store.clear_delta(TRUST)
            assert all(result.ok for result in await other.apply(TRUST, _batch(2, 1)))
    assert len(await store.users()) == 3
    assert await store.load_state(TRUST) == SyncState()
    assert await store.load_delta(TRUST) is None
    # And the lock is free again for everyone.
    async with store.run_lock(TRUST):
        pass


async def test_sync_state_round_trips_and_an_unreadable_one_is_refused(
    store: PostgresUserStore, postgres_url: str
) -> None:
    assert await store.load_state(TRUST) == SyncState()
    state = SyncState(baselines={"g-1": 12, "g-2": 0}, left_scope={"e1": True}, delta={"users": "link"})
    async with store.run_lock(TRUST):
        await store.save_state(TRUST, state)
    assert await store.load_state(TRUST) == state
    assert await store.load_state("trust-elm") == SyncState()
    _sql(
        postgres_url,
        f"UPDATE \"{store.schema}\".sync_states SET state = jsonb_set(state::jsonb, '{{version}}', '99')::text",
    )
    with pytest.raises(ConfigError, match=r"trust-oak.*version 99"):
        await store.load_state(TRUST)


async def test_deactivate_waits_for_a_concurrent_manual_grant(store: PostgresUserStore) -> None:
    await store.apply(TRUST, [CreateUser("e1", "ann@oak.example", "Ann")])
    user_id = (await store.users())[0].user_id
    # The host grants by hand while the sync deactivates: whatever the order,
    # a user with a grant is never left inactive by the sync.
    await asyncio.gather(
        store.grant(user_id, "oak-primary", "risk", "Member"),
        store.apply(TRUST, [DeactivateUser("e1", user_id)]),
    )
    user = await store.user(user_id)
    assert await store.grants(user_id)
    assert user.active, "the sync deactivated a user who holds a manual grant"


async def test_host_helpers_raise_like_the_other_stores(store: PostgresUserStore) -> None:
    ann = await store.add_user("Ann@Oak.Example", "Ann", user_id="m-ann")
    with pytest.raises(ValueError, match="already used"):
        await store.add_user("ann@oak.example", "Ann again")
    with pytest.raises(ValueError, match="already taken"):
        await store.add_user("other@oak.example", "Other", user_id="m-ann")
    with pytest.raises(KeyError):
        await store.grant("nobody", "s", "risk", "Member")
    with pytest.raises(ConfigError):
        await store.grant(ann, "s", "risk", "Superuser")
    with pytest.raises(KeyError):
        await store.grants("nobody")
    with pytest.raises(KeyError):
        await store.user("nobody")
    with pytest.raises(KeyError):
        await store.set_active("nobody", False)
    await store.set_active(ann, False)
    assert not (await store.user(ann)).active
    await store.apply(TRUST, [UpdateUser("e-none", ann, "x@oak.example", "X")])
    assert (await store.user(ann)).email == "Ann@Oak.Example"


async def test_a_closed_store_says_so(postgres_url: str, postgres_schema: str) -> None:
    store = PostgresUserStore(postgres_url, schema=postgres_schema)
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.load(TRUST)


# -- the Import Log ----------------------------------------------------------------


def _event(minute: int, kind: AuditKind = AuditKind.USER_CREATED, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "at": T0 + dt.timedelta(minutes=minute),
        "trust_site_id": TRUST,
        "kind": kind,
        "message": f"event {minute}",
        "run_id": "run-1",
        "subject": f"user-{minute}",
    }
    values.update(fields)
    return AuditEvent(**values)


async def test_no_write_is_lost_under_concurrent_records_and_nul_is_kept(
    postgres_url: str, postgres_schema: str
) -> None:
    sinks = [PostgresAuditSink(postgres_url, schema=postgres_schema) for _ in range(3)]
    try:
        await sinks[0].migrate()
        await asyncio.gather(
            *(sink.record([_event(index * 100 + n)]) for index, sink in enumerate(sinks) for n in range(30))
        )
        await sinks[0].record([_event(999, message="bad\x00name", detail={"name": "a\x00b"})])
        everything = await sinks[0].query(TRUST, limit=None)
    finally:
        for sink in sinks:
            await sink.close()
    assert len(everything) == 91
    assert everything[0].message == "bad\x00name" and everything[0].detail == {"name": "a\x00b"}


async def test_the_sink_shares_a_schema_with_the_user_store(
    store: PostgresUserStore, sink: PostgresAuditSink
) -> None:
    await store.add_user("ann@oak.example", "Ann")
    await sink.record([_event(0)])
    assert len(await store.users()) == 1 and len(await sink.query(TRUST)) == 1


def test_the_services_script_is_documented() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "stores.md"), encoding="utf-8") as handle:
        assert ".ci/services.sh start" in handle.read()


async def test_a_synced_grant_on_a_user_without_an_external_id_counts_as_the_whole_load_counts(
    store: PostgresUserStore, postgres_url: str, postgres_schema: str
) -> None:
    # No change of the protocol leaves such a row (only a hand edit): load_people's synced-user count
    # subtracts them, as StoreState.synced_users (keyed by external id) never counts them.
    import psycopg

    from calm_azure_sync.store.protocol import people_rows

    await store.apply(TRUST, _batch(1, 3))
    with psycopg.connect(postgres_url, autocommit=True) as side:
        side.execute(
            f'INSERT INTO "{postgres_schema}".users (id, email, email_key, display_name) '
            "VALUES ('orphan', 'o@oak.example', 'o@oak.example', 'Orphan')"
        )
        side.execute(
            f'INSERT INTO "{postgres_schema}".grants (user_id, site_id, module, role, source, trust_site_id) '
            "VALUES ('orphan', 'oak-primary', 'risk', 'Member', 'azure', %s)", (TRUST,)
        )
    whole = await store.load(TRUST)
    first = next(iter(sorted(whole.synced_access)))
    assert whole.synced_users == 3
    rows = await store.load_people(TRUST, [first], ["o@oak.example"])
    assert rows.synced_users == 3
    assert rows == people_rows(whole, [first], ["o@oak.example"])
