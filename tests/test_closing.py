"""One way to close: every shipped store, sink and directory has ``aclose()`` and ``async with``.

Those that hold a resource (a SQLite connection, a PostgreSQL pool, an HTTP
client) release it; those that hold nothing accept the same calls, so a
host closes them all alike. ``aclose()`` may be called twice, and the sync
``close()`` of the SQLite ones (and the awaited one of PostgreSQL) stays.
The store query arguments are checked here too (ConfigError naming them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from calm_azure_sync import (
    ConfigError,
    GraphDirectory,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    JsonlAuditSink,
    SqliteAuditSink,
    SqliteUserStore,
)
from calm_azure_sync.testing import FakeCredential


def _graph_directory(_: Path) -> GraphDirectory:
    return GraphDirectory.from_credential(FakeCredential(), base_url="http://127.0.0.1:9/v1.0")


MAKERS: dict[str, Callable[[Path], Any]] = {
    "SqliteUserStore": lambda tmp: SqliteUserStore(tmp / "calm.db"),
    "SqliteAuditSink": lambda tmp: SqliteAuditSink(tmp / "calm.db"),
    "JsonlAuditSink": lambda tmp: JsonlAuditSink(tmp / "log.jsonl"),
    "InMemoryUserStore": lambda tmp: InMemoryUserStore(),
    "InMemoryAuditSink": lambda tmp: InMemoryAuditSink(),
    "InMemoryDirectory": lambda tmp: InMemoryDirectory.from_dict({"users": [], "groups": [], "members": {}}),
    "GraphDirectory": _graph_directory,
}


async def _use(thing: Any) -> None:
    """One call that needs the resource (opens the SQLite connection)."""
    if isinstance(thing, SqliteUserStore):
        await thing.users()
    elif isinstance(thing, SqliteAuditSink):
        await thing.query("trust")


@pytest.mark.parametrize("name", sorted(MAKERS))
async def test_every_shipped_store_sink_and_directory_closes_with_async_with_and_aclose(
    name: str, tmp_path: Path
) -> None:
    made = MAKERS[name](tmp_path)
    async with made as entered:
        assert entered is made
        await _use(made)
    await made.aclose()  # a second close is harmless
    again = MAKERS[name](tmp_path)
    await _use(again)
    await again.aclose()
    await again.aclose()


@pytest.mark.parametrize("name", ["SqliteUserStore", "SqliteAuditSink"])
async def test_a_closed_sqlite_store_or_sink_refuses_work_and_keeps_its_sync_close(name: str, tmp_path: Path) -> None:
    async with MAKERS[name](tmp_path) as made:
        await _use(made)
    with pytest.raises(RuntimeError, match="closed"):
        await _use(made)
    kept = MAKERS[name](tmp_path)
    await _use(kept)
    kept.close()  # v0.3's synchronous close stays
    with pytest.raises(RuntimeError, match="closed"):
        await _use(kept)


async def test_sqlite_aclose_does_not_block_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # close() waits for a call in progress; aclose() waits in a worker thread, so other tasks run meanwhile.
    from calm_azure_sync.sqlite._db import ThreadedConnection

    store = SqliteUserStore(tmp_path / "calm.db")
    await store.users()
    real_close = ThreadedConnection.close

    def slow_close(self: ThreadedConnection) -> None:
        time.sleep(0.3)
        real_close(self)

    monkeypatch.setattr(ThreadedConnection, "close", slow_close)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    await store.aclose()
    task.cancel()
    assert ticks >= 10, ticks


async def test_graph_directory_aclose_closes_its_http_client() -> None:
    directory = _graph_directory(Path())
    client = directory._owned_http_client
    assert client is not None and not client.is_closed
    async with directory:
        pass
    assert client.is_closed
    await directory.aclose()


# ----------------------------------------------------------- PostgreSQL


@pytest.fixture
def postgres_pair(postgres_url: str, postgres_schema: str) -> tuple[Any, Any]:
    from calm_azure_sync.postgres import PostgresAuditSink, PostgresUserStore

    return PostgresUserStore(postgres_url, schema=postgres_schema), PostgresAuditSink(postgres_url, schema=postgres_schema)


async def test_postgres_store_and_sink_close_alike(postgres_pair: tuple[Any, Any]) -> None:
    store, sink = postgres_pair
    async with store, sink:
        await store.users()
        await sink.query("trust")
    for closed in (store.users(), sink.query("trust")):
        with pytest.raises(RuntimeError, match="closed"):
            await closed
    await store.aclose()
    await sink.aclose()
    await store.close()  # v0.3's awaited close stays, and is the same
    await sink.close()


# ----------------------------------------------------------- store query arguments


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield InMemoryUserStore()
    elif request.param == "sqlite":
        async with SqliteUserStore(tmp_path / "calm.db") as made:
            yield made
    else:
        from calm_azure_sync.postgres import PostgresUserStore

        url = request.getfixturevalue("postgres_url")
        async with PostgresUserStore(url, schema=request.getfixturevalue("postgres_schema")) as made:
            yield made


STORE_QUERIES: list[tuple[str, Callable[[Any, Any], Awaitable[Any]]]] = [
    ("trust_site_id", lambda store, bad: store.load(bad)),
    ("user_id", lambda store, bad: store.grants(bad)),
    ("user_id", lambda store, bad: store.user(bad)),
    ("trust_site_id", lambda store, bad: store.groups(bad)),
    ("group_external_id", lambda store, bad: store.group_members(bad)),
    ("trust_site_id", lambda store, bad: store.group_members("g1", bad)),
]


@pytest.mark.parametrize(("name", "call"), STORE_QUERIES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(STORE_QUERIES)])
@pytest.mark.parametrize("bad", [["x"], 5, b"id"], ids=["list", "int", "bytes"])
async def test_store_queries_refuse_a_bad_argument_with_a_config_error_naming_it(
    store: Any, name: str, call: Callable[[Any, Any], Awaitable[Any]], bad: Any
) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: must be a string, got {type(bad).__name__}"):
        await call(store, bad)
