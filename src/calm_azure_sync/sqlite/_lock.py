"""The SQLite store's run lock: one row per trust, held by a pid on a host, with a lease.

A lock whose lease ran out, or whose holder is a dead process on this host
(the same PID namespace), is taken over with a warning; otherwise a second
import of the trust is refused with
:class:`~calm_azure_sync.ImportAlreadyRunningError`. Private to
:mod:`calm_azure_sync.sqlite.store`, which re-exports these names.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import sqlite3
import sys

from ..errors import ImportAlreadyRunningError, RunLockLostError
from ._db import Fence, iso_utc, write_transaction

__all__ = ["acquire_lock", "check_holder", "fence", "pid_alive", "process_host", "release_lock", "renew_lock"]

# The store's own logger name, as before the lock moved here: hosts filter on it.
logger = logging.getLogger("calm_azure_sync.store.sqlite")


def process_host() -> str:
    """Where a pid means something: the hostname, plus the PID namespace on Linux.

    Containers can share a hostname without sharing process ids; a pid is only
    checked for liveness by a process in the same namespace.
    """
    hostname = socket.gethostname()
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return hostname
    return f"{hostname} {namespace}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (``True`` when it cannot tell)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # pragma: no cover - signal 0 is not a probe there; rely on the lease
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, it is just not ours
    return True


def acquire_lock(
    connection: sqlite3.Connection, trust_site_id: str, holder: str, lease: dt.timedelta
) -> None:
    """Take the trust's run lock for ``holder``, or raise ImportAlreadyRunningError."""
    now = dt.datetime.now(dt.UTC)
    hostname = process_host()
    with write_transaction(connection):
        row = connection.execute(
            "SELECT holder, pid, hostname, expires_at FROM run_locks WHERE trust_site_id = ?",
            (trust_site_id,),
        ).fetchone()
        if row is not None:
            _old_holder, pid, old_hostname, expires_at = row
            expired = dt.datetime.fromisoformat(expires_at) <= now
            holder_died = old_hostname == hostname and not pid_alive(pid)
            if not (expired or holder_died):
                raise ImportAlreadyRunningError(trust_site_id)
            logger.warning(
                "taking over the run lock of trust %r from %s pid %s (%s)",
                trust_site_id,
                old_hostname,
                pid,
                "lease expired" if expired else "holder is gone",
            )
        connection.execute(
            "INSERT OR REPLACE INTO run_locks (trust_site_id, holder, pid, hostname, acquired_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (trust_site_id, holder, os.getpid(), hostname, iso_utc(now), iso_utc(now + lease)),
        )


def renew_lock(connection: sqlite3.Connection, trust_site_id: str, holder: str, lease: dt.timedelta) -> bool:
    """Extend ``holder``'s lease; ``False`` when the lock is no longer theirs."""
    expires = iso_utc(dt.datetime.now(dt.UTC) + lease)
    with write_transaction(connection):
        cursor = connection.execute(
            "UPDATE run_locks SET expires_at = ? WHERE trust_site_id = ? AND holder = ?",
            (expires, trust_site_id, holder),
        )
    return cursor.rowcount == 1


def release_lock(connection: sqlite3.Connection, trust_site_id: str, holder: str) -> None:
    """Drop the trust's run lock if ``holder`` still holds it."""
    with write_transaction(connection):
        connection.execute(
            "DELETE FROM run_locks WHERE trust_site_id = ? AND holder = ?", (trust_site_id, holder)
        )


def check_holder(connection: sqlite3.Connection, trust_site_id: str, holder: str) -> None:
    """Raise :class:`~calm_azure_sync.RunLockLostError` unless ``holder`` still holds the trust's lock.

    One primary-key read. Inside a write transaction (see :func:`fence`) the
    answer holds until the commit: the transaction has the file's write lock,
    so no other import can take the lease over in between.
    """
    row = connection.execute("SELECT holder FROM run_locks WHERE trust_site_id = ?", (trust_site_id,)).fetchone()
    if row is None:
        raise RunLockLostError(trust_site_id, "its lock row is gone")
    if row[0] != holder:
        raise RunLockLostError(trust_site_id, "another import took its lease over")


def fence(trust_site_id: str, holder: str) -> Fence:
    """The check each write transaction of a run makes first: ``holder`` still holds the lock."""

    def check(connection: sqlite3.Connection) -> None:
        check_holder(connection, trust_site_id, holder)

    return check
