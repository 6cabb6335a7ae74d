"""The public store conformance suite, run against both shipped stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from calm_azure_sync import InMemoryUserStore, SqliteUserStore
from calm_azure_sync.testing.store_conformance import ConformantUserStore, UserStoreConformance


class TestInMemoryUserStore(UserStoreConformance):
    async def make_store(self, tmp_path: Path) -> ConformantUserStore:
        return InMemoryUserStore()

    async def write_raw_state(self, store: ConformantUserStore, trust_site_id: str, text: str) -> None:
        assert isinstance(store, InMemoryUserStore)
        store._states[trust_site_id] = text


class TestSqliteUserStore(UserStoreConformance):
    async def make_store(self, tmp_path: Path) -> ConformantUserStore:
        return SqliteUserStore(tmp_path / "calm.db")

    async def open_again(self, store: ConformantUserStore, tmp_path: Path) -> ConformantUserStore:
        return SqliteUserStore(tmp_path / "calm.db")

    async def write_raw_state(self, store: ConformantUserStore, trust_site_id: str, text: str) -> None:
        with sqlite3.connect(store.path) as connection:  # type: ignore[attr-defined]
            connection.execute(
                "UPDATE sync_state SET state = ? WHERE trust_site_id = ?", (text, trust_site_id)
            )
        connection.close()
