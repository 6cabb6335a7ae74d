"""The SQLite Import Log: events in one table, queried newest first for the Import Log screen."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Final

import attrs

from .._async_closing import AsyncClosing
from .._html import html_table
from .._query_args import checked_id, checked_kinds, checked_limit, checked_moment, checked_optional_id
from .._text import clean_text, show
from ..audit.events import AuditEvent, AuditKind
from ..errors import ConfigError
from ._db import ThreadedConnection, write_transaction

__all__ = [
    "ImportLogCursor",
    "ImportLogPage",
    "ImportLogQuery",
    "SqliteAuditSink",
    "page_of",
]

SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS calm_audit_schema (version INTEGER NOT NULL)",
    # ``seq`` is the insertion order: it breaks ties between events with one ``at``.
    """CREATE TABLE IF NOT EXISTS audit_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        trust_site_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        run_id TEXT,
        actor_id TEXT,
        subject TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
    # The index ends in the rowid (``seq``), so "newest first" is an index walk.
    "CREATE INDEX IF NOT EXISTS audit_events_by_trust_at ON audit_events (trust_site_id, at)",
    "CREATE INDEX IF NOT EXISTS audit_events_by_run ON audit_events (run_id) WHERE run_id IS NOT NULL",
)


def _clean_or_none(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def _stored_at(moment: dt.datetime) -> str:
    # Fixed-width UTC ISO 8601, so text order is time order.
    return checked_moment("before", moment).astimezone(dt.UTC).isoformat(timespec="microseconds")


@attrs.frozen
class ImportLogCursor:
    """Where a page of the Import Log ended: pass it as ``before`` to get the next page.

    Unlike a bare datetime it also remembers the event's place among events
    with the same time, so paging never skips or repeats an event.
    """

    at: dt.datetime
    seq: int


class ImportLogPage(list[AuditEvent]):
    """One page of the Import Log, newest first: a list of :class:`AuditEvent`.

    ``next_before`` is the cursor for the following page (``None`` when this
    page is the last). Prints as a small table, and as HTML in notebooks.
    """

    next_before: ImportLogCursor | None

    def __init__(self, events: Iterable[AuditEvent] = (), next_before: ImportLogCursor | None = None) -> None:
        super().__init__(events)
        self.next_before = next_before

    def __str__(self) -> str:
        if not self:
            return "(no Import Log events)"
        return "\n".join(
            f"{event.at:%Y-%m-%d %H:%M:%S}  {event.kind.value:<19} {event.subject or '':<24} {event.message}"
            for event in self
        )

    def _repr_html_(self) -> str:
        return html_table(
            ("at", "kind", "subject", "message", "run"),
            (
                (f"{event.at:%Y-%m-%d %H:%M:%S}", event.kind.value, event.subject, event.message, event.run_id)
                for event in self
            ),
            limit=len(self),
        )


def _setup(connection: sqlite3.Connection) -> None:
    with write_transaction(connection):
        for statement in _SCHEMA:
            connection.execute(statement)
        row = connection.execute("SELECT version FROM calm_audit_schema").fetchone()
        if row is None:
            connection.execute("INSERT INTO calm_audit_schema (version) VALUES (?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise RuntimeError(
                f"the Import Log schema is version {row[0]}; this calm-azure-sync reads version {SCHEMA_VERSION}"
            )


def _insert(connection: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    with write_transaction(connection):
        connection.executemany(
            "INSERT INTO audit_events (at, trust_site_id, kind, message, run_id, actor_id, subject, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def _select(connection: sqlite3.Connection, sql: str, parameters: list[Any]) -> list[tuple[Any, ...]]:
    return connection.execute(sql, parameters).fetchall()


@attrs.frozen
class ImportLogQuery:
    """The checked arguments of an Import Log query, shared by the SQLite and PostgreSQL sinks."""

    trust_site_id: str
    run_id: str | None
    kinds: list[str] | None
    limit: int | None
    before: dt.datetime | ImportLogCursor | None

    @classmethod
    def checked(cls, trust_site_id: Any, run_id: Any, kinds: Any, limit: Any, before: Any) -> ImportLogQuery:
        """Every argument checked: a bad one is a ``ConfigError`` naming it and what it accepts."""
        if isinstance(before, ImportLogCursor):
            checked_moment("before.at", before.at)
            if not isinstance(before.seq, int) or isinstance(before.seq, bool):
                raise ConfigError(f"before.seq: must be an integer, got {show(before.seq)}")
        elif before is not None and not isinstance(before, dt.datetime):
            raise ConfigError(
                "before: must be a timezone-aware datetime, an ImportLogCursor (a page's next_before) "
                f"or None, got {show(before)}"
            )
        elif before is not None:
            checked_moment("before", before)
        return cls(
            checked_id("trust_site_id", trust_site_id),
            checked_optional_id("run_id", run_id),
            None if kinds is None else checked_kinds(kinds),
            checked_limit(limit),
            before,
        )


def page_of(
    rows: Sequence[Sequence[Any]],
    limit: int | None,
    event_of: Callable[[Sequence[Any]], AuditEvent],
    cursor_of: Callable[[Sequence[Any]], ImportLogCursor],
) -> ImportLogPage:
    """An Import Log page from rows read with ``LIMIT limit + 1``: the extra row says a next page exists."""
    has_more = limit is not None and len(rows) > limit
    shown = rows[:limit] if limit is not None else rows
    return ImportLogPage([event_of(row) for row in shown], cursor_of(shown[-1]) if has_more else None)


def _event_from_row(row: Sequence[Any]) -> AuditEvent:
    _seq, at, trust, kind, message, run, actor, subject, detail = row
    return AuditEvent(
        at=dt.datetime.fromisoformat(at),
        trust_site_id=trust,
        kind=kind,
        message=message,
        run_id=run,
        actor_id=actor,
        subject=subject,
        detail=json.loads(detail),
    )


def _cursor_from_row(row: Sequence[Any]) -> ImportLogCursor:
    return ImportLogCursor(at=dt.datetime.fromisoformat(row[1]), seq=row[0])


@attrs.define
class SqliteAuditSink(AsyncClosing):
    """An :class:`~calm_azure_sync.AuditSink` in a SQLite file, with :meth:`query` for the Import Log.

    It may share a file with :class:`~calm_azure_sync.SqliteUserStore` (its
    table is ``audit_events``). Each :meth:`record` call is one transaction.
    ``detail`` is stored as JSON text. Text UTF-8 cannot encode (a lone
    surrogate) is stored with U+FFFD instead, so no event refuses its batch.
    Close it when done: ``async with``, ``await sink.aclose()``, or the
    synchronous :meth:`close`.

    A host's Import Log screen pages like this::

        page = await sink.query("trust-1", limit=50)
        older = await sink.query("trust-1", limit=50, before=page.next_before)
    """

    path: str | os.PathLike[str]
    busy_timeout_ms: int = 30_000
    _db: ThreadedConnection = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._db = ThreadedConnection(self.path, _setup, self.busy_timeout_ms)

    async def aclose(self) -> None:
        """Close the database connection, in a worker thread (it waits for a call in progress)."""
        await asyncio.to_thread(self._db.close)

    def close(self) -> None:
        """Close the database connection (synchronous: blocks until a call in progress ends)."""
        self._db.close()

    async def record(self, events: Sequence[AuditEvent]) -> None:
        """Store ``events`` in one transaction."""
        if not events:
            return
        # Text UTF-8 cannot encode (a lone surrogate from Graph JSON) is
        # stored with U+FFFD: one odd name must never cost the batch.
        rows = [
            (
                _stored_at(event.at),
                clean_text(event.trust_site_id),
                event.kind.value,
                clean_text(event.message),
                _clean_or_none(event.run_id),
                _clean_or_none(event.actor_id),
                _clean_or_none(event.subject),
                clean_text(json.dumps(event.detail, ensure_ascii=False, sort_keys=True)),
            )
            for event in events
        ]
        await self._db.run(_insert, rows)

    async def query(
        self,
        trust_site_id: str,
        run_id: str | None = None,
        kinds: Collection[AuditKind | str] | None = None,
        limit: int | None = 100,
        before: dt.datetime | ImportLogCursor | None = None,
    ) -> ImportLogPage:
        """The Import Log of ``trust_site_id``, newest first (events with one time: last recorded first).

        ``run_id`` keeps one run's events; ``kinds`` keeps those kinds
        (:class:`AuditKind` or their string values); ``before`` keeps
        events strictly older than a timezone-aware datetime, or older than the end of a previous page
        (its :attr:`ImportLogPage.next_before`); ``limit`` caps the page
        (``None``: no cap). A bad argument (an unknown kind, a naive
        datetime, a limit below 1, a wrong type) raises
        :class:`~calm_azure_sync.ConfigError` naming it and what it accepts.
        """
        query = ImportLogQuery.checked(trust_site_id, run_id, kinds, limit, before)
        where = ["trust_site_id = ?"]
        parameters: list[Any] = [query.trust_site_id]
        if query.run_id is not None:
            where.append("run_id = ?")
            parameters.append(query.run_id)
        if query.kinds is not None:
            where.append(f"kind IN ({', '.join('?' for _ in query.kinds)})" if query.kinds else "0")
            parameters.extend(query.kinds)
        if isinstance(query.before, ImportLogCursor):
            where.append("(at < ? OR (at = ? AND seq < ?))")
            parameters.extend([_stored_at(query.before.at), _stored_at(query.before.at), query.before.seq])
        elif query.before is not None:
            where.append("at < ?")
            parameters.append(_stored_at(query.before))
        sql = (
            "SELECT seq, at, trust_site_id, kind, message, run_id, actor_id, subject, detail FROM audit_events "
            f"WHERE {' AND '.join(where)} ORDER BY at DESC, seq DESC"
        )
        if query.limit is not None:
            # One row more than asked tells whether there is a next page.
            sql += " LIMIT ?"
            parameters.append(query.limit + 1)
        rows = await self._db.run(_select, sql, parameters)
        return page_of(rows, query.limit, _event_from_row, _cursor_from_row)
