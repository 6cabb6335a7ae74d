"""What a run's read leaves of the stored delta cache: one :data:`CacheAction`. Pure.

Keep it (:class:`KeepCache`), drop it (:class:`DropCache`), write a new one
as the difference from the one loaded (:class:`WriteCache`), move only its
cursor on (:class:`MoveCursor`: the trust is settled), or write a round's own
rows (:class:`WriteRows`: the round was read from some rows of the cache).
:meth:`DirectoryReader.keep_cache <calm_azure_sync.incremental.reader.DirectoryReader.keep_cache>`
carries the action out after the run; :func:`kept_json` is what it leaves
of a cache kept as JSON in the sync state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, assert_never

import attrs

from ..directory.delta import DeltaCursor
from .cache import DeltaCache, DeltaCacheWrite, DeltaHead, cache_write
from .settled import Settled

__all__ = ["CacheAction", "DropCache", "KeepCache", "MoveCursor", "WriteCache", "WriteRows", "kept_json"]



@attrs.frozen
class KeepCache:
    """Leave the stored cache as it is: a full read that starts none, or a round that failed partway."""

    @property
    def next_cursor(self) -> Mapping[str, Any] | None:
        return None  # nothing new is known: the run cannot be settled on it


@attrs.frozen
class DropCache:
    """Drop the stored cache (a full read whose first rounds failed): the next run reads in full."""

    @property
    def next_cursor(self) -> Mapping[str, Any] | None:
        return None


@attrs.frozen
class WriteCache:
    """Keep ``cache``, written as the difference from ``previous`` (the one loaded), or whole when that is ``None``."""

    cache: DeltaCache
    previous: DeltaCache | None

    @property
    def next_cursor(self) -> Mapping[str, Any] | None:
        return self.cache.cursor

    @property
    def rows(self) -> DeltaCacheWrite:
        """What a table store writes."""
        return cache_write(self.previous, self.cache)


@attrs.frozen
class MoveCursor:
    """Only the cursor moves on: the round brought nothing and the trust is ``settled`` (that run's record).

    The cache's memberships and users are never loaded: a table store writes
    one row (``head`` with the new ``cursor``), the JSON copy only its cursor.
    """

    head: DeltaHead
    cursor: DeltaCursor
    settled: Settled

    @property
    def next_cursor(self) -> Mapping[str, Any] | None:
        return self.cursor

    @property
    def rows(self) -> DeltaCacheWrite:
        """What a table store writes: the head's meta row with the new cursor."""
        return DeltaCacheWrite(self.cursor, self.head.mapped, self.head.full_read_at, replace=False)


@attrs.frozen
class WriteRows:
    """Write ``rows``, a round's own rows (:meth:`RoundPart.write <calm_azure_sync.incremental.partial.RoundPart.write>`).

    The cache was never loaded whole: the round was read from some of its rows.
    """

    rows: DeltaCacheWrite

    @property
    def next_cursor(self) -> Mapping[str, Any] | None:
        return self.rows.cursor


CacheAction = KeepCache | DropCache | WriteCache | MoveCursor | WriteRows
"""What a run's read leaves of the stored delta cache: exactly one of these."""


def kept_json(action: CacheAction, delta: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``SyncState.delta`` JSON after ``action``, from the one loaded (a store with no cache tables)."""
    match action:
        case KeepCache():
            return delta
        case DropCache():
            return {}
        case WriteCache(cache=cache):
            return cache.to_dict()
        case MoveCursor(cursor=cursor):
            # Only the cursor moved: the cache's JSON stays as it was read (no parse, no rewrite).
            return {**delta, "cursor": dict(cursor)}
        case WriteRows(rows=rows):
            return rows.applied_to(DeltaCache.from_dict(delta)).to_dict()
        case _:
            assert_never(action)
