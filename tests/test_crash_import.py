"""An import into SQLite killed with SIGKILL mid-apply, then run again.

The child process imports a synthetic trust in small batches and prints its
progress; the parent kills it at a random point of the apply stage. After
each kill, every synced user in the file must be whole (all of its grants or
none of it), nothing may be duplicated, and the next run must converge.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

import pytest

from calm_azure_sync import InMemoryAuditSink, InMemoryDirectory, Reconciler, SqliteUserStore
from calm_azure_sync.testing.synthetic import generate_tenant

from .helpers import CRASH_CHILD, SYSTEM, assert_whole, expected_access, kill_during_apply, synced_access_of

USERS = 1500
KILLS = int(os.environ.get("CALM_CRASH_KILLS", "3"))

def _import_and_kill(path: Path, kill_after: int) -> bool:
    """Run the child; SIGKILL it once it has applied ``kill_after`` changes. True if killed."""
    return kill_during_apply(CRASH_CHILD, [str(USERS), "30", "sqlite", str(path)], kill_after)


def _check_whole(path: Path, expected: dict) -> int:
    """Every synced user holds exactly its expected grants; no duplicates. Returns users found."""
    with sqlite3.connect(path) as connection:
        emails = [row[0] for row in connection.execute("SELECT lower(email) FROM users")]
    import asyncio

    return assert_whole(asyncio.run(SqliteUserStore(path).load("trust")), emails, expected)


@pytest.mark.parametrize("seed", range(KILLS))
def test_a_killed_import_leaves_no_half_written_user_and_the_rerun_converges(tmp_path, seed):
    tenant = generate_tenant(users=USERS, groups=30)
    directory = InMemoryDirectory.from_dict(tenant.fixture)
    expected = expected_access(directory, tenant.config)
    path = tmp_path / "calm.sqlite"
    rng = random.Random(seed)
    total_changes = sum(1 + len(access) for access in expected.values())
    assert _import_and_kill(path, rng.randrange(50, total_changes - 50))
    found = _check_whole(path, expected)
    assert 0 < found < len(expected)
    # Kill the re-run too, then let a third run finish.
    _import_and_kill(path, rng.randrange(1, max(2, (total_changes - found * 4) // 2)))
    _check_whole(path, expected)
    import asyncio

    store = SqliteUserStore(path)
    report = asyncio.run(Reconciler(directory, store, InMemoryAuditSink(), tenant.hierarchy).run(tenant.config, actor=SYSTEM))
    assert report.ok, report.errors
    assert _check_whole(path, expected) == len(expected)
    assert synced_access_of(asyncio.run(store.load("trust"))) == expected
    again = asyncio.run(Reconciler(directory, store, InMemoryAuditSink(), tenant.hierarchy).plan(tenant.config, actor=SYSTEM))
    assert again.changes == ()
    json.dumps(report.to_dict())
