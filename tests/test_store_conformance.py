"""The public store conformance suite, run against both shipped stores."""

from __future__ import annotations

from pathlib import Path

from calm_azure_sync import InMemoryUserStore, SqliteUserStore
from calm_azure_sync.testing.store_conformance import ConformantUserStore, UserStoreConformance


class TestInMemoryUserStore(UserStoreConformance):
    async def make_store(self, tmp_path: Path) -> ConformantUserStore:
        return InMemoryUserStore()


class TestSqliteUserStore(UserStoreConformance):
    async def make_store(self, tmp_path: Path) -> ConformantUserStore:
        return SqliteUserStore(tmp_path / "calm.db")
