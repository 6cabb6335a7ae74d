"""SQLite plumbing shared by the SQLite user store and the SQLite Import Log.

How every shipped SQLite component opens a file (:func:`open_sqlite`), uses
one connection from worker threads (:class:`ThreadedConnection`) and writes
(:func:`write_transaction`). Private: hosts use
:class:`~calm_azure_sync.SqliteUserStore` and
:class:`~calm_azure_sync.SqliteAuditSink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import attrs

__all__ = ["Fence", "ThreadedConnection", "iso_utc", "open_sqlite", "write_transaction"]

_T = TypeVar("_T")


def iso_utc(moment: dt.datetime) -> str:
    """``moment`` as the store's timestamp text: UTC, ISO 8601, to the microsecond."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def open_sqlite(path: str | os.PathLike[str], *, busy_timeout_ms: int) -> sqlite3.Connection:
    """Open ``path`` the way every shipped SQLite component does.

    WAL (readers never block the writer), foreign keys on, a busy timeout so
    two processes on one file wait for each other instead of failing, and
    autocommit mode so transactions are exactly the ``BEGIN``s we issue.
    Parent directories are created.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _use_wal(connection, busy_timeout_ms)
        # FULL: a batch reported as applied survives a power cut, not just a
        # process crash; one fsync per batch is cheap next to the batch itself.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA cache_size = -32768")
    except BaseException:
        connection.close()
        raise
    return connection


def _use_wal(connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Switch the file to WAL, waiting for other connections as the busy timeout allows.

    WAL is a property of the file: once one connection set it, everyone sees
    it. Setting it needs the file to itself, and SQLite answers "database is
    locked" at once (without its busy handler) while another connection opens
    the same new file, so the switch is retried here.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            return
        try:
            connection.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


@attrs.define
class ThreadedConnection:
    """One SQLite connection used from its own worker thread, one call at a time.

    ``run(fn, *args)`` calls ``fn(connection, *args)`` in that thread under a
    lock; the connection is opened (and ``setup`` run on it) on first use.
    One thread per connection, not the event loop's pool: each pool thread
    that touched SQLite kept its own malloc arena, about 36 MB of a 100k
    first import's peak (docs/performance.md). A process forked after first
    use starts a thread of its own.
    """

    path: str | os.PathLike[str]
    setup: Callable[[sqlite3.Connection], None]
    busy_timeout_ms: int = 30_000
    _connection: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _worker: ThreadPoolExecutor | None = attrs.field(default=None, init=False)
    _worker_pid: int = attrs.field(default=0, init=False)

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.path}: the store is closed")
            if self._connection is None:
                connection = open_sqlite(self.path, busy_timeout_ms=self.busy_timeout_ms)
                try:
                    self.setup(connection)
                except BaseException:
                    connection.close()
                    raise
                self._connection = connection
            return fn(self._connection, *args)

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(connection, *args)`` in the connection's thread and return its result."""
        call = functools.partial(contextvars.copy_context().run, self._call, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._thread(), call)

    def _thread(self) -> ThreadPoolExecutor:
        worker, pid = self._worker, os.getpid()
        if worker is None or self._worker_pid != pid:  # a forked child has none of its parent's threads
            worker = self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="calm-sqlite")
            self._worker_pid = pid
        return worker

    def close(self) -> None:
        """Close the connection (waiting for a call in progress to finish)."""
        with self._lock:
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=False)  # may be called from that very thread (aclose)


Fence = Callable[[sqlite3.Connection], None]
"""Called first inside a write transaction; raises to refuse the write (the run lock's check)."""


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection, fence: Fence | None = None) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; roll back on any exception.

    ``fence``, when given, runs first inside the transaction (which holds the
    file's write lock): whatever it raises refuses the whole write.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        if fence is not None:
            fence(connection)
        yield
    except BaseException:
        # SQLite rolls back by itself on some errors (a full disk, an I/O
        # error); a second ROLLBACK would then hide the original exception.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
