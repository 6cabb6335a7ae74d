"""The audit sink conformance suite against every shipped sink."""

from __future__ import annotations

from calm_azure_sync import InMemoryAuditSink, JsonlAuditSink, SqliteAuditSink
from calm_azure_sync.testing.audit_conformance import AuditSinkConformance


class TestInMemoryAuditSink(AuditSinkConformance):
    async def make_sink(self, tmp_path):
        return InMemoryAuditSink()

    async def read_back(self, sink, trust_site_id):
        return [event for event in sink.events if event.trust_site_id == trust_site_id]


class TestJsonlAuditSink(AuditSinkConformance):
    async def make_sink(self, tmp_path):
        return JsonlAuditSink(tmp_path / "log" / "import.jsonl")

    async def read_back(self, sink, trust_site_id):
        return [event for event in sink.read() if event.trust_site_id == trust_site_id]


class TestSqliteAuditSink(AuditSinkConformance):
    async def make_sink(self, tmp_path):
        return SqliteAuditSink(tmp_path / "log.sqlite")

    async def read_back(self, sink, trust_site_id):
        return list(reversed(await sink.query(trust_site_id, limit=None)))


class _ShufflingSink(InMemoryAuditSink):
    """Broken on purpose: keeps each batch in reverse and drops details."""

    async def record(self, events):
        import attrs

        self.events.extend(attrs.evolve(event, detail={}) for event in reversed(list(events)))


async def test_the_suite_fails_a_broken_sink(tmp_path):
    import pytest

    suite = TestInMemoryAuditSink()
    for check in (suite.test_every_field_comes_back_intact, suite.test_order_is_kept_across_many_record_calls):
        with pytest.raises(AssertionError):
            await check(_ShufflingSink())
