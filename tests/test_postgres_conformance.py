"""The public store and audit sink conformance suites against PostgreSQL (a real server: .ci/services.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from calm_azure_sync.testing.audit_conformance import AuditSinkConformance
from calm_azure_sync.testing.store_conformance import ConformantUserStore, UserStoreConformance


class TestPostgresUserStore(UserStoreConformance):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str, postgres_schema: str) -> None:
        self.conninfo, self.schema = postgres_url, postgres_schema

    async def make_store(self, tmp_path: Path) -> ConformantUserStore:
        from calm_azure_sync.postgres import PostgresUserStore

        return PostgresUserStore(self.conninfo, schema=self.schema)

    async def write_raw_state(self, store: ConformantUserStore, trust_site_id: str, text: str) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as connection:
            await connection.execute(
                f'UPDATE "{self.schema}".sync_states SET state = %s WHERE trust_site_id = %s', (text, trust_site_id)
            )

    async def open_again(self, store: ConformantUserStore, tmp_path: Path) -> ConformantUserStore:
        from calm_azure_sync.postgres import PostgresUserStore

        return PostgresUserStore(self.conninfo, schema=self.schema)


class TestPostgresAuditSink(AuditSinkConformance):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_url: str, postgres_schema: str) -> None:
        self.conninfo, self.schema = postgres_url, postgres_schema

    async def make_sink(self, tmp_path):
        from calm_azure_sync.postgres import PostgresAuditSink

        return PostgresAuditSink(self.conninfo, schema=self.schema)

    async def read_back(self, sink, trust_site_id):
        return list(reversed(await sink.query(trust_site_id, limit=None)))
