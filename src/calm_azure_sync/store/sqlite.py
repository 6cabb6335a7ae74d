"""The SQLite user store's documented import path: ``from calm_azure_sync.store.sqlite import SqliteUserStore``.

The store lives in the :mod:`calm_azure_sync.sqlite` package (``sqlite/store.py``
and its parts), laid out like :mod:`calm_azure_sync.postgres`; this module
re-exports its public names.
"""

from __future__ import annotations

from ..sqlite.store import SCHEMA_VERSION, SqliteUserStore

__all__ = ["SCHEMA_VERSION", "SqliteUserStore"]
