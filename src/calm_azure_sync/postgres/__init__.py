"""PostgreSQL for many trusts and many worker machines: ``pip install 'calm-azure-sync[postgres]'``.

- :class:`PostgresUserStore`: the user store and the sync state, with a run
  lock that holds across machines (``pg_try_advisory_lock``);
- :class:`PostgresAuditSink`: the Import Log, queried like
  :class:`~calm_azure_sync.SqliteAuditSink`.

Both take a conninfo string or a :class:`psycopg_pool.AsyncConnectionPool`
and a schema name the host chooses. ``import calm_azure_sync`` never imports
this package (nor psycopg); importing it without the extra installed raises
an ImportError that says what to install.
"""

from __future__ import annotations

try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "calm_azure_sync.postgres needs psycopg 3 and psycopg-pool: pip install 'calm-azure-sync[postgres]'"
    ) from error

from .audit import PostgresAuditSink
from .store import PostgresUserStore

__all__ = ["PostgresAuditSink", "PostgresUserStore"]
