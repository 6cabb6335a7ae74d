"""The SQLite Import Log's documented import path: ``from calm_azure_sync.audit.sqlite import SqliteAuditSink``.

The sink lives in the :mod:`calm_azure_sync.sqlite` package (``sqlite/audit.py``),
laid out like :mod:`calm_azure_sync.postgres`; this module re-exports its names.
"""

from __future__ import annotations

from ..sqlite.audit import ImportLogCursor, ImportLogPage, ImportLogQuery, SqliteAuditSink, page_of

__all__ = ["ImportLogCursor", "ImportLogPage", "ImportLogQuery", "SqliteAuditSink", "page_of"]
