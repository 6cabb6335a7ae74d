"""The audit sink conformance suite: check that any AuditSink keeps the Import Log faithfully.

Subclass :class:`AuditSinkConformance` in a test module, say how to build a
fresh sink and how to read back what it recorded, and pytest runs every
check against it::

    from calm_azure_sync.testing.audit_conformance import AuditSinkConformance

    class TestMySink(AuditSinkConformance):
        async def make_sink(self, tmp_path):
            return MySink(tmp_path / "log")

        async def read_back(self, sink, trust_site_id):
            return await sink.events_of(trust_site_id)   # oldest first

The suite needs pytest and pytest-asyncio. What it pins: every event comes
back with every field intact (timezone-aware UTC times, kinds, run and actor
ids, subjects, JSON details with non-ASCII text), in the order recorded,
across many ``record`` calls; an empty batch is a no-op; trusts are kept
apart; recording never changes the events it was given; and an event
holding text UTF-8 cannot encode (a lone surrogate, which Graph JSON can
carry) never costs its batch: it is kept as it is or with U+FFFD in place of
each surrogate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_asyncio

from ..audit.events import AuditEvent, AuditKind
from ..audit.protocol import AuditSink
from ._closing import close_if_closable

__all__ = ["AuditSinkConformance"]

TRUST = "trust-oak"
OTHER_TRUST = "trust-elm"
_START = dt.datetime(2026, 9, 1, 8, 30, tzinfo=dt.UTC)


def _event(index: int, trust: str = TRUST, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "at": _START + dt.timedelta(seconds=index),
        "trust_site_id": trust,
        "kind": list(AuditKind)[index % len(AuditKind)],
        "message": f"event {index}: Zoë Ångström\u2019s access",
        "run_id": f"run-{index // 10}",
        "actor_id": "head-of-it" if index % 2 else None,
        "subject": f"00000000-0000-0000-0000-{index:012d}",
        "detail": {"index": index, "groups": ["g-1", "g-2"], "note": "naïve café", "nested": {"ok": True}},
    }
    values.update(fields)
    return AuditEvent(**values)


class AuditSinkConformance:
    """The behavioural checks every :class:`~calm_azure_sync.AuditSink` must pass.

    Subclass it as ``TestSomething`` and implement :meth:`make_sink` and :meth:`read_back`.
    """

    async def make_sink(self, tmp_path: Path) -> AuditSink:
        """Return a new, empty sink. ``tmp_path`` is a fresh directory, for sinks that keep files."""
        raise NotImplementedError("subclasses of AuditSinkConformance implement make_sink()")

    async def read_back(self, sink: AuditSink, trust_site_id: str) -> Sequence[AuditEvent]:
        """Every event the sink holds for ``trust_site_id``, oldest first."""
        raise NotImplementedError("subclasses of AuditSinkConformance implement read_back()")

    async def close_sink(self, sink: AuditSink) -> None:
        """Release the sink after a test: calls its ``close()`` or ``aclose()`` when it has one."""
        await close_if_closable(sink)

    @pytest_asyncio.fixture
    async def sink(self, tmp_path: Path) -> AsyncIterator[AuditSink]:
        """A fresh sink, closed after the test."""
        made = await self.make_sink(tmp_path)
        try:
            yield made
        finally:
            await self.close_sink(made)

    @pytest.mark.asyncio
    async def test_every_field_comes_back_intact(self, sink: AuditSink) -> None:
        events = [_event(index) for index in range(len(AuditKind))]
        await sink.record(events)
        assert list(await self.read_back(sink, TRUST)) == events

    @pytest.mark.asyncio
    async def test_times_stay_timezone_aware_utc(self, sink: AuditSink) -> None:
        offset = dt.timezone(dt.timedelta(hours=1))
        await sink.record([_event(0, at=dt.datetime(2026, 9, 1, 9, 30, tzinfo=offset))])
        [back] = await self.read_back(sink, TRUST)
        assert back.at == dt.datetime(2026, 9, 1, 8, 30, tzinfo=dt.UTC)
        assert back.at.utcoffset() == dt.timedelta(0)

    @pytest.mark.asyncio
    async def test_order_is_kept_across_many_record_calls(self, sink: AuditSink) -> None:
        events = [_event(index) for index in range(60)]
        for start in range(0, 60, 7):
            await sink.record(events[start:start + 7])
        assert list(await self.read_back(sink, TRUST)) == events

    @pytest.mark.asyncio
    async def test_events_with_one_time_keep_their_recorded_order(self, sink: AuditSink) -> None:
        events = [_event(index, at=_START) for index in range(5)]
        await sink.record(events)
        assert list(await self.read_back(sink, TRUST)) == events

    @pytest.mark.asyncio
    async def test_an_empty_batch_records_nothing(self, sink: AuditSink) -> None:
        await sink.record([])
        assert list(await self.read_back(sink, TRUST)) == []

    @pytest.mark.asyncio
    async def test_trusts_are_kept_apart(self, sink: AuditSink) -> None:
        oak, elm = _event(1), _event(2, trust=OTHER_TRUST)
        await sink.record([oak, elm])
        assert list(await self.read_back(sink, TRUST)) == [oak]
        assert list(await self.read_back(sink, OTHER_TRUST)) == [elm]

    @pytest.mark.asyncio
    async def test_an_event_with_a_lone_surrogate_never_costs_its_batch(self, sink: AuditSink) -> None:
        bad = _event(
            1,
            message="Created user Zo\ud83d",
            subject="Zo\udc00",
            detail={"display_name": "Zo\ud83d", "Zo\udfff": ["\ud800"]},
        )
        events = [_event(0), bad, _event(2)]
        await sink.record(events)
        await sink.record([_event(3)])  # the sink still takes more afterwards
        back = list(await self.read_back(sink, TRUST))
        assert len(back) == 4
        assert [back[0], back[2], back[3]] == [events[0], events[2], _event(3)]
        replaced = attrs.evolve(
            bad,
            message="Created user Zo\ufffd",
            subject="Zo\ufffd",
            detail={"display_name": "Zo\ufffd", "Zo\ufffd": ["\ufffd"]},
        )
        assert back[1] in (bad, replaced)

    @pytest.mark.asyncio
    async def test_recording_leaves_the_given_events_unchanged(self, sink: AuditSink) -> None:
        events = [_event(index) for index in range(3)]
        copies = [AuditEvent.from_dict(event.to_dict()) for event in events]
        await sink.record(events)
        assert events == copies
