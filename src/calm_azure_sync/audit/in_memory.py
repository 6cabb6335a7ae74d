"""The in-memory Import Log: events kept in a list, for tests, demos and notebooks."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from .._async_closing import AsyncClosing
from .events import AuditEvent

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
