"""An import into PostgreSQL killed with SIGKILL mid-apply, then run again.

The child process imports a synthetic trust in small batches and prints its
progress; the parent kills it at a random point of the apply stage. After each
kill: every synced user is whole (all of its grants or none of it), nothing is
duplicated, the advisory run lock is free again at once (the server dropped it
with the dead connection), and the next run converges.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from calm_azure_sync import Actor, InMemoryAuditSink, InMemoryDirectory, Reconciler
from calm_azure_sync.testing.synthetic import generate_tenant

from .conftest import scaled
from .helpers import CRASH_CHILD, assert_whole, expected_access, kill_during_apply, synced_access_of

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from calm_azure_sync.postgres import PostgresUserStore  # noqa: E402

USERS = 600

def _import_and_kill(conninfo: str, schema: str, kill_after: int) -> bool:
    """Run the child; SIGKILL it once it has applied ``kill_after`` changes. True if killed."""
    return kill_during_apply(CRASH_CHILD, [str(USERS), "20", "postgres", conninfo, schema], kill_after)


def _check_whole(conninfo: str, schema: str, expected: dict) -> int:
    """Every synced user holds exactly its expected grants; no duplicates. Returns users found."""
    with psycopg.connect(conninfo) as connection:
        emails = [row[0] for row in connection.execute(f'SELECT lower(email) FROM "{schema}".users')]

    async def load():
        async with PostgresUserStore(conninfo, schema=schema) as store:
            return await store.load("trust")

    return assert_whole(asyncio.run(load()), emails, expected)


def _lock_is_free(conninfo: str, schema: str) -> bool:
    """The dead child's advisory lock is gone: another holder gets it (allowing the server a moment)."""

    async def take() -> bool:
        async with PostgresUserStore(conninfo, schema=schema) as store:
            deadline = time.monotonic() + 5
            while True:
                try:
                    async with store.run_lock("trust"):
                        return True
                except Exception:
                    if time.monotonic() > deadline:
                        return False
                    await asyncio.sleep(0.05)

    return asyncio.run(take())


@pytest.mark.parametrize("kills", scaled("CALM_PG_CRASH_KILLS", quick=3, soak=20))
def test_a_killed_import_leaves_no_half_written_user_and_the_lock_free(
    postgres_url: str, postgres_schema: str, kills: int
) -> None:
    tenant = generate_tenant(users=USERS, groups=20)
    directory = InMemoryDirectory.from_dict(tenant.fixture)
    expected = expected_access(directory, tenant.config)
    total_changes = sum(1 + len(access) for access in expected.values())
    rng = random.Random(kills)

    async def finish():
        async with PostgresUserStore(postgres_url, schema=postgres_schema) as store:
            reconciler = Reconciler(directory, store, InMemoryAuditSink(), tenant.hierarchy)
            report = await reconciler.run(tenant.config, actor=Actor.system("crash-test"))
            again = await reconciler.plan(tenant.config, actor=Actor.system("crash-test"))
            return report, await store.load("trust"), again

    for kill in range(kills):
        if kill:  # every case starts from an empty store
            with psycopg.connect(postgres_url, autocommit=True) as connection:
                connection.execute(
                    f'TRUNCATE "{postgres_schema}".users, "{postgres_schema}".grants, "{postgres_schema}".group_members, '
                    f'"{postgres_schema}".sync_states'
                )
        assert _import_and_kill(postgres_url, postgres_schema, rng.randrange(50, total_changes - 50))
        found = _check_whole(postgres_url, postgres_schema, expected)
        assert 0 < found < len(expected), "the kill should land mid-import"
        assert _lock_is_free(postgres_url, postgres_schema), f"the lock outlived killed import #{kill + 1}"
        report, state, again = asyncio.run(finish())
        assert report.ok, report.errors
        assert _check_whole(postgres_url, postgres_schema, expected) == len(expected)
        assert synced_access_of(state) == expected
        assert again.changes == ()
