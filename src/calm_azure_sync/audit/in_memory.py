"""The in-memory Import Log: events kept in a list, for tests, demos and notebooks."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import attrs

from .._async_closing import AsyncClosing
from .events import AuditEvent, AuditKind
from .protocol import select_events

__all__ = ["InMemoryAuditSink"]


@attrs.define
class InMemoryAuditSink(AsyncClosing):
    """An :class:`~calm_azure_sync.AuditSink` that keeps every event in ``events``, oldest first.

    >>> sink = InMemoryAuditSink()
    >>> sink.events
    []
    """

    events: list[AuditEvent] = attrs.field(factory=list)

    async def record(self, events: Sequence[AuditEvent]) -> None:
        """Append ``events`` to :attr:`events`."""
        self.events.extend(events)

    async def query(
        self,
        trust_site_id: str,
        run_id: str | None = None,
        kinds: Collection[AuditKind | str] | None = None,
        limit: int | None = 100,
    ) -> list[AuditEvent]:
        """The trust's events newest first, as :class:`~calm_azure_sync.audit.protocol.ImportLogQuery` says."""
        return select_events(reversed(self.events), trust_site_id, run_id, kinds, limit)
