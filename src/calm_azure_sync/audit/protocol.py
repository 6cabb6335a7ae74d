"""Where Import Log events go."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Protocol, runtime_checkable

from .events import AuditEvent, AuditKind

__all__ = ["AuditSink", "ImportLogQuery", "select_events"]


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


@runtime_checkable
class ImportLogQuery(Protocol):
    """An optional capability of an :class:`AuditSink`: reading the Import Log back, newest first.

    :meth:`~calm_azure_sync.Reconciler.status` uses it to read a trust's
    recent runs. Implemented by every shipped sink (in memory, JSON Lines,
    SQLite, PostgreSQL); a sink without it gives a status that says it cannot
    read the log.
    """

    async def query(
        self,
        trust_site_id: str,
        run_id: str | None = None,
        kinds: Collection[AuditKind | str] | None = None,
        limit: int | None = 100,
    ) -> Sequence[AuditEvent]:
        """The trust's events, newest first (events with one time: last recorded first), at most ``limit``.

        ``run_id`` keeps one run's events, ``kinds`` those kinds (an unknown
        kind raises ``ValueError``).
        """
        ...


def select_events(
    newest_first: Iterable[AuditEvent],
    trust_site_id: str,
    run_id: str | None = None,
    kinds: Collection[AuditKind | str] | None = None,
    limit: int | None = 100,
) -> list[AuditEvent]:
    """What :meth:`ImportLogQuery.query` answers, from events given newest first (read no further than needed)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: must be a positive integer or None, got {limit!r:.20}")
    wanted = None if kinds is None else {AuditKind(kind) for kind in kinds}
    found: list[AuditEvent] = []
    for event in newest_first:
        if event.trust_site_id != trust_site_id or (run_id is not None and event.run_id != run_id):
            continue
        if wanted is not None and event.kind not in wanted:
            continue
        found.append(event)
        if limit is not None and len(found) >= limit:
            break
    return found
