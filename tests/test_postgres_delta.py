"""PostgresUserStore's delta cache tables beyond the conformance suite (a real server: .ci/services.sh).

The v2 -> v3 migration, rows that cannot be read back (the cache counts as
missing, is logged without its cursor, and the next whole write rebuilds it),
text Postgres cannot store, and what a write costs: statements per write, not
per row, and a no-change write that is the meta row alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

from calm_azure_sync import (
    DeltaCacheStore,
    DirectoryUser,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    SyncConfig,
)
from calm_azure_sync.incremental import DeltaCache, cache_write
from calm_azure_sync.incremental._rows import USER_COLUMNS
from calm_azure_sync.testing._store_conformance_delta import sample_cache

from .helpers import OAK_BIRCH as HIERARCHY
from .helpers import SYSTEM, synced_access_of

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from calm_azure_sync.postgres import PostgresUserStore, _delta  # noqa: E402
from calm_azure_sync.postgres._db import Database  # noqa: E402
from calm_azure_sync.postgres._schema import MIGRATIONS, SCHEMA_VERSION  # noqa: E402

TRUST = "trust-oak"
SECRET = "SeCrEtDeLtAtOkEn42"
AT = dt.datetime(2026, 12, 1, 7, 30, tzinfo=dt.UTC)


@pytest.fixture
async def store(postgres_url: str, postgres_schema: str) -> AsyncIterator[PostgresUserStore]:
    async with PostgresUserStore(postgres_url, schema=postgres_schema) as made:
        await made.migrate()
        yield made


def _sql(postgres_url: str, statement: str, *parameters: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        cursor = connection.execute(statement, parameters or None)
        return cursor.fetchall() if cursor.description else []


def _secret_cache(seed: int = 1, **sizes: int) -> DeltaCache:
    """A sample cache whose cursor carries a delta token that must never be logged."""
    cache = sample_cache(seed, **sizes)
    cursor = {**cache.cursor, "users": f"https://graph.microsoft.com/v1.0/users/delta?$deltatoken={SECRET}"}
    return attrs.evolve(cache, cursor=cursor)


def _big_cache(users: int, *, groups: int = 100, generation: int = 0) -> DeltaCache:
    """A trust of ``users`` users in ``groups`` groups (each user in two), like the benchmarks' 10k trust."""
    people = {
        f"u{i:06d}": DirectoryUser(
            f"u{i:06d}",
            display_name=f"User {i} v{generation}",
            mail=f"u{i}@oak.sch.uk",
            user_principal_name=f"u{i}@oak.sch.uk",
            account_enabled=i % 50 != 0,
            assigned_license_count=1,
        )
        for i in range(users)
    }
    ids = sorted(people)
    members = {
        f"g{g:03d}": frozenset(ids[j] for j in range(len(ids)) if j % groups == g or (j + 1) % groups == g)
        for g in range(groups)
    }
    cursor = {"version": 1, "users": f"https://graph.microsoft.com/v1.0/users/delta?$deltatoken={SECRET}"}
    return DeltaCache(cursor, members, people, frozenset(members), AT)


# -- schema -------------------------------------------------------------------


def test_the_statements_name_the_codecs_user_columns_in_order() -> None:
    assert ", ".join(USER_COLUMNS) == _delta._USER_LIST
    assert _delta._USER_TYPES.count("%b") == len(USER_COLUMNS)


async def test_the_user_table_has_a_column_per_codec_column(store: PostgresUserStore, postgres_url: str) -> None:
    names = _sql(
        postgres_url,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'delta_users' "
        "ORDER BY ordinal_position",
        store.schema,
    )
    assert tuple(name for (name,) in names) == ("trust_site_id", *USER_COLUMNS)


async def test_a_version_2_database_migrates_in_place(postgres_url: str, postgres_schema: str) -> None:
    # A database as the previous release left it: migrations 1 and 2 only, with a user, a grant and a state.
    old = Database(
        postgres_url, schema=postgres_schema, component="user_store",
        migrations={version: MIGRATIONS[version] for version in (1, 2)}, pool_size=1,
    )
    try:
        assert await old.migrate() == 2
    finally:
        await old.close()
    schema = f'"{postgres_schema}"'
    _sql(
        postgres_url,
        f"INSERT INTO {schema}.users (id, email, email_key, display_name, external_id) "
        "VALUES ('u1', 'ann@oak.example', 'ann@oak.example', 'Ann', 'e1')",
    )
    _sql(
        postgres_url,
        f"INSERT INTO {schema}.grants VALUES ('u1', 'oak-primary', 'risk', 'azure', 'Member', %s)",
        TRUST,
    )
    _sql(postgres_url, f"INSERT INTO {schema}.sync_states (trust_site_id, state) VALUES (%s, '{{}}')", TRUST)
    async with PostgresUserStore(postgres_url, schema=postgres_schema) as store:
        assert isinstance(store, DeltaCacheStore)
        assert await store.load_delta(TRUST) is None  # migrates on first use
        state = await store.load(TRUST)
        assert [user.email for user in state.users.values()] == ["ann@oak.example"]
        assert state.synced_access == {"e1": {("oak-primary", "risk"): state.synced_access["e1"][("oak-primary", "risk")]}}
        cache = sample_cache(2)
        await store.save_delta(TRUST, cache_write(None, cache))
        assert await store.load_delta(TRUST) == cache
        assert await store.migrate() == SCHEMA_VERSION
        assert await store.data_version() == 0  # migration 4 starts the count
    assert _sql(postgres_url, f"SELECT version FROM {schema}.calm_schema_versions WHERE component = 'user_store'") == [
        (SCHEMA_VERSION,)
    ]


# -- unreadable rows -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corruption:
    name: str
    statement: str  # {t} is the schema-qualified table prefix; %s the trust


CORRUPTIONS = [
    Corruption("another cache version", "UPDATE {t}delta_meta SET version = 2 WHERE trust_site_id = %s"),
    Corruption(
        "a membership of an untracked group",
        "INSERT INTO {t}delta_members VALUES (%s, 'group-not-tracked', 'user-1')",
    ),
    Corruption(
        "a negative licence count",
        "UPDATE {t}delta_users SET assigned_license_count = -1 WHERE trust_site_id = %s",
    ),
    Corruption("an empty user type", "UPDATE {t}delta_users SET user_type = '' WHERE trust_site_id = %s"),
    Corruption(
        "a cursor that is JSON but not an object",
        f"UPDATE {{t}}delta_meta SET cursor = '[\"https://graph.microsoft.com/v1.0/users/delta?$deltatoken={SECRET}\"]' "
        "WHERE trust_site_id = %s",
    ),
    Corruption(
        "a cursor that is not JSON",
        f"UPDATE {{t}}delta_meta SET cursor = 'https://graph.microsoft.com/v1.0/users/delta?$deltatoken={SECRET}' "
        "WHERE trust_site_id = %s",
    ),
    Corruption("mapped ids that are not a list", "UPDATE {t}delta_meta SET mapped = '{{\"a\": 1}}' WHERE trust_site_id = %s"),
]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=lambda corruption: corruption.name)
async def test_unreadable_rows_are_no_cache_logged_without_the_cursor_and_a_whole_write_rebuilds(
    store: PostgresUserStore, postgres_url: str, corruption: Corruption, caplog: pytest.LogCaptureFixture
) -> None:
    cache = _secret_cache(1)
    await store.save_delta(TRUST, cache_write(None, cache))
    await store.save_delta("trust-elm", cache_write(None, cache))
    _sql(postgres_url, corruption.statement.format(t=f'"{store.schema}".'), TRUST)
    with caplog.at_level(logging.WARNING, logger="calm_azure_sync"):
        assert await store.load_delta(TRUST) is None
    assert "delta cache of trust 'trust-oak'" in caplog.text
    assert "reads in full" in caplog.text
    assert SECRET not in caplog.text and "deltatoken" not in caplog.text
    assert await store.load_delta("trust-elm") == cache  # another trust's cache is untouched
    rebuilt = _secret_cache(2)
    await store.save_delta(TRUST, cache_write(None, rebuilt))
    assert await store.load_delta(TRUST) == rebuilt


async def test_a_wrongly_typed_user_value_is_no_cache(
    store: PostgresUserStore, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A host that altered a column: the codec checks each value's type, not only the table's.
    await store.save_delta(TRUST, cache_write(None, _secret_cache(3)))
    _sql(
        postgres_url,
        f'ALTER TABLE "{store.schema}".delta_users ALTER COLUMN account_enabled TYPE text USING account_enabled::text',
    )
    with caplog.at_level(logging.WARNING, logger="calm_azure_sync"):
        assert await store.load_delta(TRUST) is None
    assert "account_enabled" in caplog.text and SECRET not in caplog.text


async def test_rows_without_a_meta_row_are_no_cache_and_a_whole_write_drops_them(
    store: PostgresUserStore, postgres_url: str
) -> None:
    await store.save_delta(TRUST, cache_write(None, sample_cache(4, users=40, groups=8)))
    _sql(postgres_url, f'DELETE FROM "{store.schema}".delta_meta')
    assert await store.load_delta(TRUST) is None
    smaller = sample_cache(5, users=10, groups=3)
    await store.save_delta(TRUST, cache_write(None, smaller))
    assert await store.load_delta(TRUST) == smaller


async def test_a_nul_in_a_cached_name_is_kept_as_sqlite_keeps_it(store: PostgresUserStore) -> None:
    before = _secret_cache(6)
    await store.save_delta(TRUST, cache_write(None, before))
    user_id = sorted(before.users)[0]
    nul = attrs.evolve(before.users[user_id], display_name="Ann\x00Example")
    after = attrs.evolve(before, users={**before.users, user_id: nul})
    await store.save_delta(TRUST, cache_write(before, after))  # a difference (unnest)
    assert await store.load_delta(TRUST) == after
    await store.save_delta(TRUST, cache_write(None, after))  # a whole write (COPY) too
    assert await store.load_delta(TRUST) == after


async def test_a_value_postgres_refuses_leaves_no_cache_not_a_wrong_one(
    store: PostgresUserStore, caplog: pytest.LogCaptureFixture
) -> None:
    before = _secret_cache(6)
    await store.save_delta(TRUST, cache_write(None, before))
    user_id = sorted(before.users)[0]
    # More licences than the integer column holds: a value the database refuses (any text is stored).
    huge = attrs.evolve(before.users[user_id], assigned_license_count=2**40)
    after = attrs.evolve(before, users={**before.users, user_id: huge})
    with caplog.at_level(logging.WARNING, logger="calm_azure_sync"):
        await store.save_delta(TRUST, cache_write(before, after))
    assert await store.load_delta(TRUST) is None
    assert "could not be stored" in caplog.text and SECRET not in caplog.text
    await store.save_delta(TRUST, cache_write(None, after))  # a whole write (COPY) too
    assert await store.load_delta(TRUST) is None
    # The next run reads in full and writes the cache whole; without the value it is kept again.
    await store.save_delta(TRUST, cache_write(None, before))
    assert await store.load_delta(TRUST) == before


# -- what a write costs --------------------------------------------------------------


def _install_counters(postgres_url: str, schema: str) -> None:
    """Count statements (COPY included) and rows written to the delta tables, by any connection."""
    tables = ("delta_meta", "delta_groups", "delta_members", "delta_users")
    body = [
        f'CREATE TABLE "{schema}".test_counts (kind text PRIMARY KEY, n bigint NOT NULL)',
        f"""INSERT INTO "{schema}".test_counts VALUES ('statements', 0), ('rows', 0)""",
        f"""CREATE FUNCTION "{schema}".count_statement() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN UPDATE "{schema}".test_counts SET n = n + 1 WHERE kind = 'statements'; RETURN NULL; END $$""",
        f"""CREATE FUNCTION "{schema}".count_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN UPDATE "{schema}".test_counts SET n = n + 1 WHERE kind = 'rows'; RETURN NULL; END $$""",
    ]
    for table in tables:
        body.append(
            f'CREATE TRIGGER {table}_statements AFTER INSERT OR UPDATE OR DELETE ON "{schema}".{table} '
            f'FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".count_statement()'
        )
        body.append(
            f'CREATE TRIGGER {table}_rows AFTER INSERT OR UPDATE OR DELETE ON "{schema}".{table} '
            f'FOR EACH ROW EXECUTE FUNCTION "{schema}".count_row()'
        )
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        for statement in body:
            connection.execute(statement)


def _counts(postgres_url: str, schema: str) -> dict[str, int]:
    rows = _sql(postgres_url, f'SELECT kind, n FROM "{schema}".test_counts')
    _sql(postgres_url, f'UPDATE "{schema}".test_counts SET n = 0')
    return {kind: int(n) for kind, n in rows}


async def test_writes_cost_statements_per_kind_of_change_not_per_row(store: PostgresUserStore, postgres_url: str) -> None:
    _install_counters(postgres_url, store.schema)
    cache = _big_cache(5_000, groups=20)
    write = cache_write(None, cache)
    assert write.rows > 15_000
    await store.save_delta(TRUST, write)
    counts = _counts(postgres_url, store.schema)
    # Three deletes, three COPYs, the meta upsert (INSERT ... ON CONFLICT fires INSERT and UPDATE triggers).
    assert counts["statements"] <= 8
    assert counts["rows"] == write.rows + 1
    assert await store.load_delta(TRUST) == cache

    # No change but a new cursor: the meta row alone.
    moved = attrs.evolve(cache, cursor={"version": 1, "users": "https://graph.example/users/delta?$deltatoken=next"})
    quiet = cache_write(cache, moved)
    assert quiet.rows == 0
    await store.save_delta(TRUST, quiet)
    counts = _counts(postgres_url, store.schema)
    assert counts["rows"] == 1 and counts["statements"] <= 2
    assert await store.load_delta(TRUST) == moved

    # A little churn: one statement per kind of change, one row per changed row.
    ids = sorted(cache.users)
    users = {user_id: user for user_id, user in moved.users.items() if user_id not in ids[:25]}
    users.update({user_id: attrs.evolve(users[user_id], display_name="Renamed") for user_id in ids[25:75]})
    groups = {group: members - set(ids[:25]) for group, members in moved.groups.items()}
    groups["g000"] = groups["g000"] | set(ids[100:150])
    del groups["g019"]
    groups["g-new"] = frozenset(ids[200:210])
    churned = attrs.evolve(moved, groups=groups, users=users, mapped=frozenset(groups))
    churn = cache_write(moved, churned)
    await store.save_delta(TRUST, churn)
    counts = _counts(postgres_url, store.schema)
    assert counts["statements"] <= 10
    assert counts["rows"] == churn.rows + 1
    assert await store.load_delta(TRUST) == churned


async def test_a_10k_user_replace_and_a_no_change_write_load_back_exactly(store: PostgresUserStore) -> None:
    # What they cost is measured, not asserted: the statement counts are checked above, the
    # timings are in docs/stores.md (no timed assertions in the suite).
    cache = _big_cache(10_000)
    await store.save_delta(TRUST, cache_write(None, cache))
    assert await store.load_delta(TRUST) == cache
    moved = attrs.evolve(cache, cursor={"version": 1, "next": "x"})
    await store.save_delta(TRUST, cache_write(cache, moved))
    assert await store.load_delta(TRUST) == moved


async def test_any_write_loads_back_as_applied_to_says_even_overlapping_ones(store: PostgresUserStore) -> None:
    # Writes cache_write never makes, applied_to defines: the same group, membership and user both
    # removed and added, a membership naming a group not otherwise added, one user given twice.
    from calm_azure_sync.incremental import DeltaCacheWrite

    before = sample_cache(7)
    await store.save_delta(TRUST, cache_write(None, before))
    first, second = sorted(before.users)[:2]
    renamed = attrs.evolve(before.users[first], display_name="Second name")
    write = DeltaCacheWrite(
        {"version": 1, "next": "n"}, frozenset({"group-0", "group-x"}), AT, replace=False,
        added_groups=frozenset({"group-1"}),
        removed_groups=frozenset({"group-1", "group-2"}),
        added_members=frozenset({("group-0", "user-999"), ("group-new", first), ("group-3", second)}),
        removed_members=frozenset({("group-3", second), ("group-0", "not-a-member")}),
        users=(attrs.evolve(renamed, display_name="First name"), renamed),
        removed_users=frozenset({first, second}),
    )
    expected = write.applied_to(before)
    assert "group-new" in expected.groups and expected.groups["group-1"] == frozenset()
    await store.save_delta(TRUST, write)
    assert await store.load_delta(TRUST) == expected


# -- through the reconciler ------------------------------------------------------------

CONFIG = SyncConfig("oak", [GroupMapping("g0", "birch", {"Risk": "Member"}), GroupMapping("g1", "birch", {"Risk": "Manager"})])


def _directory() -> InMemoryDirectory:
    users = [f"u{i}" for i in range(8)]
    return InMemoryDirectory.from_dict({
        "users": [{"id": u, "displayName": u.upper(), "mail": f"{u}@oak.sch.uk", "userPrincipalName": f"{u}@oak.sch.uk",
                   "accountEnabled": True} for u in users],
        "groups": [{"id": g, "displayName": g.upper()} for g in ("g0", "g1", "nested")],
        "members": {"g0": ["u0", "u1", "nested"], "g1": ["u2", "u3"], "nested": ["u4"]},
    })


def _reconciler(directory: InMemoryDirectory, store: Any) -> Reconciler:
    return Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY, clock=lambda: AT)


async def test_runs_over_postgres_keep_the_cache_in_tables_and_end_where_a_full_run_ends(
    store: PostgresUserStore, postgres_url: str
) -> None:
    directory = _directory()
    first = await _reconciler(directory, store).run(CONFIG, actor=SYSTEM)
    assert first.ok and first.mode == "full", first.mode_reason
    assert (await store.load_state("oak")).delta == {}  # no JSON copy: the tables hold it
    members = _sql(postgres_url, f'SELECT group_id, member_id FROM "{store.schema}".delta_members ORDER BY 1, 2')
    assert members == [("g0", "nested"), ("g0", "u0"), ("g0", "u1"), ("g1", "u2"), ("g1", "u3"), ("nested", "u4")]
    directory.add_member("nested", "u5")
    directory.remove_member("g1", "u3")
    directory.put_user(attrs.evolve(directory.users["u0"], display_name="Renamed"))
    second = await _reconciler(directory, store).run(CONFIG, actor=SYSTEM)
    assert second.ok and second.mode == "incremental", second.mode_reason
    fresh = InMemoryUserStore()
    assert (await _reconciler(directory, fresh).run(CONFIG, actor=SYSTEM)).mode == "full"
    assert synced_access_of(await store.load("oak")) == synced_access_of(await fresh.load("oak"))
    # Unreadable rows: the next run reads in full and rebuilds them; the one after is incremental again.
    _sql(postgres_url, f'UPDATE "{store.schema}".delta_meta SET version = 7')
    directory.add_member("g1", "u6")
    third = await _reconciler(directory, store).run(CONFIG, actor=SYSTEM)
    assert third.ok and third.mode == "full" and third.mode_reason == "no usable delta state yet"
    assert "u6" in synced_access_of(await store.load("oak"))
    assert (await _reconciler(directory, store).run(CONFIG, actor=SYSTEM)).mode == "incremental"
