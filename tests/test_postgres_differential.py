"""Differential: random change sequences give the same results and the same state on SQLite and PostgreSQL.

Both stores decide changes with the same shared rules; what could differ is
everything around them: which rows a batch loads, how writes are ordered and
collapsed (COPY, executemany), email-key and boolean round trips, the slow
path. Hypothesis drives batches over a small pool of ids and emails (so
collisions, case clashes, relinks of taken emails, re-creates,
deactivations with grants left, and memberships of groups that do not exist
yet or were retired are common) and compares every result's
outcome and error presence, and the loaded state, after every batch.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calm_azure_sync import SqliteUserStore

from .conftest import budget
from .store_differential import change_specs, comparable, resolve

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from calm_azure_sync.postgres import PostgresUserStore  # noqa: E402

TRUSTS = ("trust-oak", "trust-elm")
EXTERNAL_IDS = ("e0", "e1", "e2", "e3")
MANUAL_IDS = ("m0", "m1")
GROUP_IDS = ("g1", "g2")
NAMES = ("Ann", "Émile", "O'Brien")
EMAILS = ("ann@oak.example", "ANN@oak.example", "bob@oak.example", "cat@oak.example", "Cat@Oak.Example", "dan@oak.example")

_change_specs = change_specs(
    external_ids=EXTERNAL_IDS, manual_ids=MANUAL_IDS, emails=EMAILS, names=NAMES, sites=("s1", "s2"), groups=GROUP_IDS
)
_batches = st.lists(
    st.tuples(st.sampled_from(TRUSTS), st.lists(_change_specs, min_size=1, max_size=10)), min_size=1, max_size=5
)


async def _compare(batches: Sequence[tuple[str, Sequence[tuple[object, ...]]]], conninfo: str, schema: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as connection:
        # Emptying the tables is much faster than a new schema per example.
        if connection.execute("SELECT to_regclass(%s)", (f'"{schema}".users',)).fetchone() != (None,):
            connection.execute(f'TRUNCATE "{schema}".users, "{schema}".grants, "{schema}".sync_states, "{schema}".synced_groups CASCADE')
    with tempfile.TemporaryDirectory() as folder:
        async with SqliteUserStore(Path(folder) / "calm.db") as sqlite_store, PostgresUserStore(
            conninfo, schema=schema, pool_size=1
        ) as postgres_store:
            for store in (sqlite_store, postgres_store):
                await store.add_user("ann@oak.example", "Ann", user_id="m0")
                await store.add_user("eve@oak.example", "Eve", user_id="m1")
                await store.grant("m1", "s1", "risk", "Member")
            for trust, specs in batches:
                answers = []
                for store in (sqlite_store, postgres_store):
                    state = await store.load(trust)
                    results = await store.apply(trust, [resolve(spec, state) for spec in specs])
                    answers.append([(result.outcome, result.error is None) for result in results])
                assert answers[0] == answers[1], f"batch {specs} of {trust}"
                for each in TRUSTS:
                    assert comparable(await postgres_store.load(each), MANUAL_IDS) == comparable(
                        await sqlite_store.load(each), MANUAL_IDS
                    ), f"state of {each} after batch {specs}"


def test_sqlite_and_postgres_give_the_same_results_and_state(postgres_url: str, postgres_schema: str) -> None:
    @settings(
        max_examples=budget("CALM_PG_DIFFERENTIAL_EXAMPLES", 25, 300),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(batches=_batches)
    def check(batches: list[tuple[str, list[tuple[object, ...]]]]) -> None:
        asyncio.run(_compare(batches, postgres_url, postgres_schema))

    check()
