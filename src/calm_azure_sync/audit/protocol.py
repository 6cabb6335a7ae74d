"""Where Import Log events go."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .events import AuditEvent

__all__ = ["AuditSink"]


@runtime_checkable
class AuditSink(Protocol):
    """Receives Import Log events. Implemented by hosts and by the shipped
    :class:`~calm_azure_sync.InMemoryAuditSink`,
    :class:`~calm_azure_sync.JsonlAuditSink` and
    :class:`~calm_azure_sync.SqliteAuditSink`.

    ``record`` gets events in the order they happened, in batches. It should
    be durable when it returns. The reconciler never lets a failing sink undo
    or stop store changes: see docs/reliability.md.
    """

    async def record(self, events: Sequence[AuditEvent]) -> None:
        """Persist ``events``."""
        ...
