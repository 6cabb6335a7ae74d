"""The shipped stores keep the same rows for the same changes, for any text Graph can send (API.md §11).

Each test runs against the in-memory, SQLite and PostgreSQL stores (the last
skips outside CI without a server, and fails in CI without one) and asks for
exactly what the in-memory store, which keeps Python values as they are,
answers. The random sequences are tests/test_stores_agree.py's; these are the
cases found by them, written out.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calm_azure_sync import (
    AddGroupMember,
    Assign,
    AuditEvent,
    AuditKind,
    CreateUser,
    DirectoryUser,
    InMemoryAuditSink,
    InMemoryUserStore,
    RelinkUser,
    RemoveGroupMember,
    Role,
    SqliteAuditSink,
    SqliteUserStore,
    SyncState,
    UpsertGroup,
)
from calm_azure_sync.incremental import DeltaCache, cache_write

STORES = ("memory", "sqlite", "postgres")
T0 = dt.datetime(2026, 9, 1, 8, 0, tzinfo=dt.UTC)

# Text Graph can send that some database cannot hold as it is.
ODD = (
    "nul\x00inside",
    "\x00",
    "esc\uffffape",  # the PostgreSQL codec's escape character, as text
    "\uffff0",  # ... followed by what it escapes NUL with
    "\uffff\uffff",
    "\u202eRTL override",
    "emoji \U0001f469\u200d\U0001f52c",
    "\u00df vs ss",
    "\x01\x1f control",
    "x" * 5000,
)


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason="the postgres extra is not installed")
@settings(deadline=None)  # the first example imports psycopg
@given(
    st.text(
        alphabet=st.characters(codec=None)
        | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
        | st.sampled_from("\x00\uffff0d8")
    )
)
def test_the_postgres_text_codec_stores_any_text_and_reads_it_back(text: str) -> None:
    from calm_azure_sync.postgres._codec import from_db, to_db

    stored = to_db(text)
    assert from_db(stored) == text
    assert "\x00" not in stored
    stored.encode("utf-8")  # no lone surrogate left
    if not any(char in text for char in "\x00\uffff") and text.encode("utf-8", "surrogatepass").decode(
        "utf-8", "replace"
    ) == text:
        assert stored == text  # ordinary text is stored as it is


_ANY_TEXT = st.text(
    alphabet=st.characters(codec=None)
    | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
    | st.sampled_from("\x00\uffff0d8"),
    max_size=8,
)


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason="the postgres extra is not installed")
@settings(deadline=None)
@given(
    st.lists(st.tuples(_ANY_TEXT, st.none() | _ANY_TEXT | st.sampled_from(ODD), st.booleans(), _ANY_TEXT), max_size=6)
)
def test_a_batch_of_rows_or_a_list_is_stored_as_each_value_alone_would_be(rows: list[tuple[Any, ...]]) -> None:
    # to_db_rows and to_db_list check a whole batch at once; they must say what to_db says per value.
    from calm_azure_sync.postgres._codec import to_db, to_db_list, to_db_optional, to_db_rows

    stored = to_db_rows(rows, (0, 1, 3))
    assert stored == [(to_db(a), to_db_optional(b), flag, to_db(d)) for a, b, flag, d in rows]
    assert to_db_rows(rows, (0,)) == [(to_db(a), b, flag, d) for a, b, flag, d in rows]  # other columns as they are
    texts = [a for a, _, _, _ in rows]
    assert to_db_list(iter(texts)) == [to_db(text) for text in texts]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield InMemoryUserStore()
    elif request.param == "sqlite":
        async with SqliteUserStore(tmp_path / "calm.db") as opened:
            yield opened
    else:
        from calm_azure_sync.postgres import PostgresUserStore

        url = request.getfixturevalue("postgres_url")
        async with PostgresUserStore(url, schema=request.getfixturevalue("postgres_schema")) as opened:
            yield opened


@pytest.fixture(params=STORES)
async def sink(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield InMemoryAuditSink()
    elif request.param == "sqlite":
        opened = SqliteAuditSink(tmp_path / "log.db")
        yield opened
        opened.close()
    else:
        from calm_azure_sync.postgres import PostgresAuditSink

        url = request.getfixturevalue("postgres_url")
        async with PostgresAuditSink(url, schema=request.getfixturevalue("postgres_schema")) as opened:
            yield opened


@pytest.mark.parametrize("text", ODD)
async def test_odd_text_in_every_column_is_stored_and_read_back_exactly(store: Any, text: str) -> None:
    trust = f"trust {text}"
    changes = [
        UpsertGroup(f"g {text}", f"Group {text}", (f"site {text}",)),
        CreateUser(f"e {text}", f"ann{text}@oak.example", f"Ann {text}", given_name=text, surname=text),
        Assign(f"e {text}", f"site {text}", f"module {text}", Role.MANAGER),
        AddGroupMember(f"g {text}", f"e {text}"),
    ]
    results = await store.apply(trust, changes)
    assert [(result.outcome, result.error) for result in results] == [("applied", None)] * 4
    state = await store.load(trust)
    (user,) = state.users.values()
    assert (user.email, user.display_name, user.given_name, user.surname, user.external_id) == (
        f"ann{text}@oak.example", f"Ann {text}", text, text, f"e {text}"
    )
    assert state.synced_access == {f"e {text}": {(f"site {text}", f"module {text}"): Role.MANAGER}}
    assert state.groups[f"g {text}"].display_name == f"Group {text}"
    assert state.groups[f"g {text}"].site_ids == (f"site {text}",)
    assert state.group_members == {f"g {text}": frozenset({f"e {text}"})}
    assert [group.display_name for group in await store.groups(trust)] == [f"Group {text}"]
    assert await store.group_members(f"g {text}", trust) == {f"e {text}"}
    # The same changes again: every row compares equal to what is stored.
    assert [result.outcome for result in await store.apply(trust, changes)] == ["unchanged"] * 4
    # A manual user and grant with the text, through the host helpers.
    manual = await store.add_user(f"bob{text}@oak.example", f"Bob {text}", user_id=f"m {text}")
    await store.grant(manual, f"site {text}", f"module {text}", "Admin")
    assert (await store.user(manual)).display_name == f"Bob {text}"
    assert {(g.site_id, g.module, g.source) for g in await store.grants(manual)} == {
        (f"site {text}", f"module {text}", "manual")
    }
    with pytest.raises(ValueError, match="already"):
        await store.add_user(f"BOB{text}@oak.example", "Bob again")


async def test_a_sync_state_and_a_delta_cache_with_odd_text_read_back_exactly(store: Any) -> None:
    for text in ODD:
        trust = f"trust {text}"
        state = SyncState(baselines={f"g {text}": 3})
        await store.save_state(trust, state)
        assert await store.load_state(trust) == state
        user = DirectoryUser.from_graph(
            {"id": f"u {text}", "displayName": f"Ann {text}\ud83d", "mail": f"ann{text}@oak.example",
             "givenName": text, "userType": "Member", "creationType": text}
        )
        cache = DeltaCache(
            {"link": f"https://graph.example/delta?token={text}\ud800"},
            {f"g {text}": frozenset({f"u {text}"}), "empty": frozenset()},
            {user.id: user},
            frozenset({f"g {text}"}),
            T0,
        )
        await store.save_delta(trust, cache_write(None, cache))
        assert await store.load_delta(trust) == cache, repr(text)
        renamed = DeltaCache(
            cache.cursor, {**cache.groups, f"g2 {text}": frozenset({f"u {text}"})},
            {user.id: DirectoryUser(user.id, display_name=f"Zoe {text}")}, cache.mapped, T0,
        )
        await store.save_delta(trust, cache_write(cache, renamed))
        assert await store.load_delta(trust) == renamed, repr(text)


async def test_a_member_removal_after_a_relink_in_the_same_batch_removes_the_membership(store: Any) -> None:
    trust = "trust-oak"
    setup = [
        UpsertGroup("g1", "Staff", ("s1",)),
        CreateUser("old", "ann@oak.example", "Ann"),
        AddGroupMember("g1", "old"),
    ]
    assert all(result.ok for result in await store.apply(trust, setup))
    (ann,) = (await store.load(trust)).users
    # Ann's account was re-created: the store user takes the new object id, then leaves the group.
    batch = [RelinkUser("new", ann, "old", "ann@oak.example", "Ann"), RemoveGroupMember("g1", "new")]
    results = await store.apply(trust, batch)
    assert [result.outcome for result in results] == ["applied", "applied"]
    assert (await store.load(trust)).group_members == {"g1": frozenset()}
    # And joining after a relink, in one batch, finds the membership already there.
    again = [
        AddGroupMember("g1", "new"),
        RelinkUser("newer", ann, "new", "ann@oak.example", "Ann"),
        AddGroupMember("g1", "newer"),
        RemoveGroupMember("g1", "new"),
    ]
    assert [result.outcome for result in await store.apply(trust, again)] == [
        "applied", "applied", "unchanged", "unchanged"
    ]
    assert (await store.load(trust)).group_members == {"g1": frozenset({"newer"})}


@pytest.mark.parametrize("text", ODD)
async def test_the_import_log_keeps_odd_text_as_the_sqlite_log_does(sink: Any, text: str) -> None:
    trust = f"trust {text}"
    event = AuditEvent(
        at=T0, trust_site_id=trust, kind=AuditKind.USER_CREATED, message=f"created {text}\ud83d",
        run_id=f"run {text}", actor_id=f"actor {text}", subject=f"e {text}", detail={"name": text},
    )
    await sink.record([event])
    if isinstance(sink, InMemoryAuditSink):
        (stored,) = sink.events
    else:
        (stored,) = await sink.query(trust, run_id=f"run {text}")
    # A lone surrogate becomes U+FFFD in every log on disk (clean_text); everything else is kept.
    expected = {"message": f"created {text}\ufffd"} if not isinstance(sink, InMemoryAuditSink) else {}
    assert stored.to_dict() == {**event.to_dict(), **expected}


async def test_rows_written_before_the_postgres_text_codec_read_back_as_written(
    postgres_url: str, postgres_schema: str
) -> None:
    """Version 5 of the user store and 2 of the Import Log escape U+FFFF in the rows already there."""
    import psycopg

    from calm_azure_sync.postgres import PostgresAuditSink, PostgresUserStore
    from calm_azure_sync.postgres._db import Database
    from calm_azure_sync.postgres._schema import MIGRATIONS
    from calm_azure_sync.postgres.audit import MIGRATIONS as LOG_MIGRATIONS

    for component, migrations, last in (("user_store", MIGRATIONS, 4), ("import_log", LOG_MIGRATIONS, 1)):
        old = Database(
            postgres_url, schema=postgres_schema, component=component,
            migrations={version: migrations[version] for version in range(1, last + 1)}, pool_size=1,
        )
        try:
            assert await old.migrate() == last
        finally:
            await old.close()
    odd = "o\uffff0\uffffd800\uffff"  # what the codec would read as escapes, had it not been migrated
    trust, user_id, external_id = f"trust {odd}", f"u {odd}", f"e {odd}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema = f'"{postgres_schema}"'
        for statement, values in [
            ("users (id, email, email_key, display_name, given_name, external_id) VALUES (%s, %s, %s, %s, %s, %s)",
             (user_id, f"Ann{odd}@oak.example", f"ann{odd}@oak.example", f"Ann {odd}", odd, external_id)),
            ("grants VALUES (%s, %s, %s, 'azure', 'Member', %s)", (user_id, f"s {odd}", f"m {odd}", trust)),
            ("synced_groups VALUES (%s, %s, %s, %s, false)", (trust, f"g {odd}", f"G {odd}", ["s1", f"s {odd}"])),
            ("group_members VALUES (%s, %s, %s)", (trust, f"g {odd}", user_id)),
            ("sync_states (trust_site_id, state) VALUES (%s, %s)", (trust, '{"version": 1}')),
            ("delta_meta VALUES (%s, 1, %s, %s, %s)", (trust, f'{{"link": "{odd}"}}', f'["g {odd}"]', T0)),
            ("delta_groups VALUES (%s, %s)", (trust, f"g {odd}")),
            ("delta_members VALUES (%s, %s, %s)", (trust, f"g {odd}", f"u {odd}")),
            ("delta_users (trust_site_id, user_id, display_name, account_enabled, user_type) "
             "VALUES (%s, %s, %s, true, 'Member')", (trust, f"u {odd}", f"Ann {odd}")),
            ("audit_events (at, trust_site_id, kind, message, run_id) VALUES (%s, %s, 'user_created', %s, %s)",
             (T0, trust, f"created {odd}", f"run {odd}")),
        ]:
            connection.execute(f"INSERT INTO {schema}.{statement}", values)  # type: ignore[arg-type]
    async with PostgresUserStore(postgres_url, schema=postgres_schema) as store, PostgresAuditSink(
        postgres_url, schema=postgres_schema
    ) as sink:
        state = await store.load(trust)
        (user,) = state.users.values()
        assert (user.user_id, user.email, user.display_name, user.given_name, user.external_id) == (
            user_id, f"Ann{odd}@oak.example", f"Ann {odd}", odd, external_id
        )
        assert state.synced_access == {external_id: {(f"s {odd}", f"m {odd}"): Role.MEMBER}}
        assert state.groups[f"g {odd}"].site_ids == ("s1", f"s {odd}")
        assert state.group_members == {f"g {odd}": frozenset({external_id})}
        assert await store.load_state(trust) == SyncState()
        cache = await store.load_delta(trust)
        assert cache is not None and cache.cursor == {"link": odd} and cache.mapped == {f"g {odd}"}
        assert cache.groups == {f"g {odd}": frozenset({f"u {odd}"})}
        assert cache.users[f"u {odd}"].display_name == f"Ann {odd}"
        # The unique email key still finds the migrated row.
        with pytest.raises(ValueError, match="already"):
            await store.add_user(f"ANN{odd}@oak.example", "Ann again")
        (event,) = await sink.query(trust, run_id=f"run {odd}")
        assert event.message == f"created {odd}"


async def test_an_import_of_text_with_nul_is_whole_and_the_next_run_reads_incrementally(store: Any) -> None:
    """The symptom on PostgreSQL: the group and its memberships failed, the user was never created,
    and the delta cache was dropped every run (so every run read in full)."""
    from calm_azure_sync import GroupMapping, InMemoryDirectory, Reconciler, SyncConfig

    from .helpers import OAK_BIRCH, SYSTEM

    directory = InMemoryDirectory.from_dict({
        "users": [
            {"id": "u\x001", "displayName": "Ann\x00Example", "mail": "ann@oak.example", "givenName": "Ann\x00",
             "accountEnabled": True},
            {"id": "u2", "displayName": "Bob", "mail": "bob@oak.example", "accountEnabled": True},
        ],
        "groups": [{"id": "g\x00staff", "displayName": "Staff\x00"}],
        "members": {"g\x00staff": ["u\x001", "u2"]},
    })
    config = SyncConfig("oak", [GroupMapping("g\x00staff", "birch", {"Risk": "Member"})])

    def reconciler() -> Reconciler:
        return Reconciler(directory, store, InMemoryAuditSink(), OAK_BIRCH, clock=lambda: T0)

    first = await reconciler().run(config, actor=SYSTEM)
    assert first.ok and first.mode == "full", (first.errors, first.mode_reason)
    state = await store.load("oak")
    assert {user.external_id: user.display_name for user in state.users.values()} == {
        "u\x001": "Ann\x00Example", "u2": "Bob"
    }
    assert state.groups["g\x00staff"].display_name == "Staff\x00"
    assert state.group_members == {"g\x00staff": frozenset({"u\x001", "u2"})}
    assert set(state.synced_access) == {"u\x001", "u2"}
    directory.remove_member("g\x00staff", "u2")
    second = await reconciler().run(config, actor=SYSTEM)
    assert second.ok and second.mode == "incremental", (second.errors, second.mode_reason)
    assert (await store.load("oak")).group_members == {"g\x00staff": frozenset({"u\x001"})}
