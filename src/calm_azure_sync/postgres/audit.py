"""The PostgreSQL Import Log: events in one table, queried newest first like SqliteAuditSink."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Sequence
from typing import Any, Final

from psycopg_pool import AsyncConnectionPool

from .._text import clean_text
from ..audit.events import AuditEvent, AuditKind
from ..sqlite.audit import ImportLogCursor, ImportLogPage, ImportLogQuery, page_of
from ._codec import from_db, from_db_optional, to_db
from ._db import Database, Migrations, OnDatabase

__all__ = ["PostgresAuditSink"]

SCHEMA_VERSION: Final = 2

MIGRATIONS: Final[Migrations] = {
    1: (
        # ``seq`` is the insertion order: it breaks ties between events with one ``at``.
        # ``detail`` is json, not jsonb: it keeps the text as recorded, and
        # jsonb cannot hold the escape \u0000 that JSON allows.
        """CREATE TABLE {schema}.audit_events (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at timestamptz NOT NULL,
            trust_site_id text NOT NULL,
            kind text NOT NULL,
            message text NOT NULL,
            run_id text,
            actor_id text,
            subject text,
            detail json NOT NULL DEFAULT '{{}}'
        )""",
        "CREATE INDEX audit_events_by_trust_at ON {schema}.audit_events (trust_site_id, at DESC, seq DESC)",
        "CREATE INDEX audit_events_by_run ON {schema}.audit_events (run_id) WHERE run_id IS NOT NULL",
    ),
    # Text columns are written through postgres/_codec.py from version 2 on: escape its
    # escape character U+FFFF in the rows written before, so they read back as written.
    2: (
        """UPDATE {schema}.audit_events SET
            trust_site_id = replace(trust_site_id, chr(65535), chr(65535) || chr(65535)),
            message = replace(message, chr(65535), chr(65535) || chr(65535)),
            run_id = replace(run_id, chr(65535), chr(65535) || chr(65535)),
            actor_id = replace(actor_id, chr(65535), chr(65535) || chr(65535)),
            subject = replace(subject, chr(65535), chr(65535) || chr(65535))
        WHERE strpos(concat(trust_site_id, message, run_id, actor_id, subject), chr(65535)) > 0""",
    ),
}

_COPY_EVENTS: Final = "COPY {schema}.audit_events (at, trust_site_id, kind, message, run_id, actor_id, subject, detail) FROM STDIN"


def _text(value: str | None) -> str | None:
    # As the SQLite Import Log keeps it: a lone surrogate (from Graph JSON) becomes U+FFFD
    # (clean_text, as in every log on disk), a NUL is kept, through the store's text codec.
    return None if value is None else to_db(clean_text(value))


def _event_from_row(row: Sequence[Any]) -> AuditEvent:
    _seq, at, trust, kind, message, run, actor, subject, detail = row
    return AuditEvent(
        at=at,
        trust_site_id=from_db(trust),
        kind=kind,
        message=from_db(message),
        run_id=from_db_optional(run),
        actor_id=from_db_optional(actor),
        subject=from_db_optional(subject),
        detail=detail,
    )


def _cursor_from_row(row: Sequence[Any]) -> ImportLogCursor:
    return ImportLogCursor(at=row[1], seq=row[0])


class PostgresAuditSink(OnDatabase):
    """An :class:`~calm_azure_sync.AuditSink` in PostgreSQL, with :meth:`query` for the Import Log.

    Takes a conninfo string or a host's :class:`psycopg_pool.AsyncConnectionPool`
    and a ``schema`` (may be the user store's: its table is ``audit_events``).
    Each :meth:`record` call is one transaction (a ``COPY``). Text is kept as
    :class:`~calm_azure_sync.SqliteAuditSink` keeps it (a NUL character too,
    through the store's text codec; a lone surrogate becomes U+FFFD).
    Close it when done (``async with``, or ``await sink.aclose()``). Pages like
    :class:`~calm_azure_sync.SqliteAuditSink`::

        page = await sink.query("trust-1", limit=50)
        older = await sink.query("trust-1", limit=50, before=page.next_before)
    """

    def __init__(
        self,
        conninfo: str | AsyncConnectionPool[Any],
        *,
        schema: str = "calm_azure_sync",
        pool_size: int = 2,
    ) -> None:
        self._db = Database(
            conninfo, schema=schema, component="import_log", migrations=MIGRATIONS, pool_size=pool_size
        )

    def __repr__(self) -> str:
        return f"PostgresAuditSink(schema={self._db.schema!r})"

    async def record(self, events: Sequence[AuditEvent]) -> None:
        """Store ``events`` in one transaction, in order."""
        if not events:
            return
        async with self._db.connection() as connection, connection.transaction():
            cursor = connection.cursor()
            async with cursor.copy(self._db.q(_COPY_EVENTS)) as copy:
                for event in events:
                    await copy.write_row(
                        (
                            event.at,
                            _text(event.trust_site_id),
                            event.kind.value,
                            _text(event.message),
                            _text(event.run_id),
                            _text(event.actor_id),
                            _text(event.subject),
                            # json.dumps escapes U+0000 itself: the detail column never holds a NUL.
                            clean_text(json.dumps(event.detail, ensure_ascii=False, sort_keys=True)),
                        )
                    )

    async def query(
        self,
        trust_site_id: str,
        run_id: str | None = None,
        kinds: Collection[AuditKind | str] | None = None,
        limit: int | None = 100,
        before: dt.datetime | ImportLogCursor | None = None,
    ) -> ImportLogPage:
        """The Import Log of ``trust_site_id``, newest first (events with one time: last recorded first).

        Same arguments and answer as :meth:`SqliteAuditSink.query
        <calm_azure_sync.SqliteAuditSink.query>`: ``run_id`` keeps one run's
        events; ``kinds`` keeps those kinds; ``before`` is a timezone-aware datetime or a previous
        page's :attr:`~calm_azure_sync.audit.sqlite.ImportLogPage.next_before`;
        ``limit`` caps the page (``None``: no cap). A bad argument raises
        :class:`~calm_azure_sync.ConfigError` naming it and what it accepts.
        """
        query = ImportLogQuery.checked(trust_site_id, run_id, kinds, limit, before)
        where = ["trust_site_id = %s"]
        parameters: list[Any] = [to_db(clean_text(query.trust_site_id))]
        if query.run_id is not None:
            where.append("run_id = %s")
            parameters.append(to_db(clean_text(query.run_id)))
        if query.kinds is not None:
            where.append("kind = ANY(%s)")
            parameters.append(query.kinds)
        if isinstance(query.before, ImportLogCursor):
            where.append("(at, seq) < (%s, %s)")
            parameters.extend([query.before.at, query.before.seq])
        elif query.before is not None:
            where.append("at < %s")
            parameters.append(query.before)
        statement = (
            "SELECT seq, at, trust_site_id, kind, message, run_id, actor_id, subject, detail "
            "FROM {schema}.audit_events WHERE " + " AND ".join(where) + " ORDER BY at DESC, seq DESC"
        )
        if query.limit is not None:
            # One row more than asked tells whether there is a next page.
            statement += " LIMIT %s"
            parameters.append(query.limit + 1)
        async with self._db.connection() as connection:
            cursor = await connection.execute(self._db.q(statement), parameters)
            rows = await cursor.fetchall()
        return page_of(rows, query.limit, _event_from_row, _cursor_from_row)
