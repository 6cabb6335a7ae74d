"""The SQLite store and Import Log, one package as :mod:`calm_azure_sync.postgres` is.

``store.py`` (the user store) with its schema, reads, writes, host helpers,
run lock, sync state and delta cache tables; ``audit.py`` (the Import Log);
``_db.py``, how both open a file, share a connection across threads and write.
``calm_azure_sync.store.sqlite`` and ``calm_azure_sync.audit.sqlite`` stay
the documented import paths.
"""

from __future__ import annotations

from .audit import SqliteAuditSink
from .store import SqliteUserStore

__all__ = ["SqliteAuditSink", "SqliteUserStore"]
