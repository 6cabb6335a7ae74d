"""The PostgreSQL user store's run lock and its fence (see the ``postgres.store`` module docstring).

A session-level ``pg_try_advisory_lock`` on a connection of its own holds a
trust for a run; each writing transaction of that trust first takes the
trust's fence key in shared mode and checks that the lock's own session
still holds the lock, and the next holder takes the fence exclusively before
its run starts, so it waits for any write checked under the old holder.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import attrs
import psycopg

from ..errors import ImportAlreadyRunningError, RunLockLostError

__all__ = ["HeldLock", "check_fence", "check_session", "take_lock", "unlock"]

# The store's logger: the lock's messages keep the name they were always logged under.
logger = logging.getLogger("calm_azure_sync.postgres.store")

# Whether the run lock is still held by the very session that took it (its pid *and* its start
# time: after a server restart a new backend may get the old pid, and even hold the lock), first
# taking the trust's fence in shared mode for the writing transaction: a run that takes the lock
# next waits for that fence (exclusively) before it starts, so no write checked under the old
# holder can commit after the new holder's run has begun.
_FENCED_LOCK_HELD: Final = (
    "WITH fence AS (SELECT pg_advisory_xact_lock_shared(%s)) "
    "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.pid = %s AND a.backend_start = %s "
    "AND l.objsubid = 1 AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid) FROM fence"
)


@attrs.frozen
class HeldLock:
    connection: psycopg.AsyncConnection[Any]
    key: int
    fence_key: int
    backend_pid: int
    backend_start: Any  # the lock session's pg_stat_activity.backend_start (a datetime)

    @property
    def lock_ids(self) -> tuple[int, int]:
        """(classid, objid) as ``pg_locks`` shows a bigint advisory key."""
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        return unsigned >> 32, unsigned & 0xFFFF_FFFF


def _alive(connection: psycopg.AsyncConnection[Any]) -> bool:
    return not (connection.closed or connection.broken)


async def check_fence(connection: psycopg.AsyncConnection[Any], held: HeldLock, trust_site_id: str) -> None:
    """In a writing transaction on ``connection``: take the fence shared, and refuse if ``held`` is gone.

    Raises :class:`~calm_azure_sync.RunLockLostError` (and logs it) once the
    lock's own session no longer holds the lock.
    """
    still_held = False
    if _alive(held.connection):
        classid, objid = held.lock_ids
        cursor = await connection.execute(
            _FENCED_LOCK_HELD, (held.fence_key, held.backend_pid, held.backend_start, classid, objid)
        )
        row = await cursor.fetchone()
        still_held = bool(row and row[0])
    if not still_held:
        logger.error(
            "the run lock of trust %r was lost (its connection closed); writing nothing more",
            trust_site_id,
        )
        raise RunLockLostError(trust_site_id, "its PostgreSQL connection closed")


async def check_session(held: HeldLock, trust_site_id: str) -> None:
    """Raise :class:`~calm_azure_sync.RunLockLostError` unless the lock's own session still answers."""
    if _alive(held.connection):
        try:
            await held.connection.execute("SELECT 1")
            return
        except psycopg.Error:
            pass
    raise RunLockLostError(trust_site_id, "its PostgreSQL connection closed")


async def take_lock(
    connection: psycopg.AsyncConnection[Any], trust_site_id: str, key: int, fence_key: int
) -> HeldLock:
    """Take the run lock on ``connection`` (never waiting for it), then wait out the fence."""
    cursor = await connection.execute(
        "SELECT pg_try_advisory_lock(%s), pg_backend_pid(), "
        "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())",
        (key,),
    )
    row = await cursor.fetchone()
    if not (row and row[0]):
        raise ImportAlreadyRunningError(trust_site_id)
    # Wait for the writes a previous holder checked before it lost the lock: each holds the
    # fence shared until it commits or rolls back (see check_fence). Writes only wait for it.
    await connection.execute("SELECT pg_advisory_lock(%s), pg_advisory_unlock(%s)", (fence_key, fence_key))
    return HeldLock(connection, key, fence_key, row[1], row[2])


async def unlock(connection: psycopg.AsyncConnection[Any], trust_site_id: str, key: int) -> None:
    """Release the run lock; never raises (a lock whose connection is gone is released already)."""
    # Releasing must never mask how the import ended.
    if not _alive(connection):
        logger.warning("the run lock connection of trust %r was lost before the run ended", trust_site_id)
        return
    try:
        cursor = await connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
        row = await cursor.fetchone()
    except psycopg.Error:
        logger.warning("releasing the run lock of trust %r failed", trust_site_id, exc_info=True)
        return
    if not (row and row[0]):
        logger.warning("the run lock of trust %r was no longer held at release", trust_site_id)
