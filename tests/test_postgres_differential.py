"""Differential: the in-memory, SQLite and PostgreSQL stores answer the same to the same steps (API.md §11).

All three decide changes with the same shared rules; what could differ is
everything around them: which rows a batch loads (the PostgreSQL membership
probe after a relink), how writes are ordered and collapsed (COPY,
executemany, unnest), text a database cannot hold as it is (NUL, lone
surrogates), email keys, booleans, timestamps and JSON round trips. The one
driver, ``tests/store_differential.py``, runs a Hypothesis state machine of
change batches, relinks followed by membership changes, host helpers,
sync-state saves with holds and delta cache writes over odd text, and
compares every result and everything each store answers after every step.

``memory-sqlite`` runs everywhere; ``memory-sqlite-postgres`` needs the
throwaway server (it skips without one, and fails in CI, see conftest.py).
The quick budget keeps the default run to seconds; ``CALM_SOAK=1`` (``nox -s
soak``) or ``CALM_STORE_DIFFERENTIAL_EXAMPLES`` raise it, and the ``soak``
parameters run the soak budget under ``--run-slow``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from calm_azure_sync import InMemoryUserStore, SqliteUserStore

from .conftest import budget
from .store_differential import StoreFactory, check_stores_agree


async def _memory(exits: AsyncExitStack) -> Any:
    return InMemoryUserStore()


def _sqlite(folder: Path) -> StoreFactory:
    counter = iter(range(1_000_000))

    async def open_store(exits: AsyncExitStack) -> Any:
        # A new file per example: the machine starts from an empty store.
        return await exits.enter_async_context(SqliteUserStore(folder / f"calm-{next(counter)}.db"))

    return open_store


def _postgres(conninfo: str, schema: str) -> StoreFactory:
    import psycopg

    from calm_azure_sync.postgres import PostgresUserStore

    async def open_store(exits: AsyncExitStack) -> Any:
        store = await exits.enter_async_context(PostgresUserStore(conninfo, schema=schema, pool_size=1))
        await store.migrate()
        # Emptying the tables is much faster than a new schema per example.
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
            await connection.execute(
                f'TRUNCATE "{schema}".users, "{schema}".grants, "{schema}".sync_states, "{schema}".synced_groups, '
                f'"{schema}".group_members, "{schema}".delta_meta, "{schema}".delta_groups, '
                f'"{schema}".delta_members, "{schema}".delta_users'
            )
        return store

    return open_store


def _budgets(quick: int) -> list[Any]:
    """(examples, steps): the quick figure of the default run, and the soak one under ``--run-slow``."""
    return [
        pytest.param(budget("CALM_STORE_DIFFERENTIAL_EXAMPLES", quick, 200), 12, id="quick"),
        pytest.param(budget("CALM_STORE_DIFFERENTIAL_EXAMPLES", 200, 200), 25, id="soak", marks=pytest.mark.slow),
    ]


@pytest.mark.parametrize(("examples", "steps"), _budgets(quick=40))
def test_memory_and_sqlite_stores_agree(tmp_path: Path, examples: int, steps: int) -> None:
    check_stores_agree([("memory", _memory), ("sqlite", _sqlite(tmp_path))], examples=examples, steps=steps)


@pytest.mark.parametrize(("examples", "steps"), _budgets(quick=20))
def test_memory_sqlite_and_postgres_stores_agree(
    tmp_path: Path, postgres_url: str, postgres_schema: str, examples: int, steps: int
) -> None:
    check_stores_agree(
        [("memory", _memory), ("sqlite", _sqlite(tmp_path)), ("postgres", _postgres(postgres_url, postgres_schema))],
        examples=examples,
        steps=steps,
    )
