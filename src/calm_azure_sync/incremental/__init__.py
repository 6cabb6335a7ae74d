"""Incremental sync: the delta cache, choosing the read mode, and a snapshot from kept memberships.

Graph has no delta of transitive members, so an incremental run keeps, in a
delta cache per trust, the **direct** memberships of every tracked group (the
mapped groups and the groups nested in them) and the selected fields of the
users in them. A round of :meth:`DeltaDirectory.changes
<calm_azure_sync.directory.delta.DeltaDirectory.changes>` updates that cache;
the snapshot the planner sees is then resolved from it exactly as a full read
resolves nesting (breadth first, cycles allowed, each user once), so an
incremental plan equals a full one on the same directory, and the guards judge
it the same way.

When a run reads in full (:func:`choose_mode`): ``mode="full"``; no usable
cache (none yet, unreadable, of another version, another directory kind); the
last full read is older than ``full_resync_interval`` (a periodic full read
heals drift, as Entra's own provisioning does); or the directory cannot do
deltas. A mapping added since the cache was made is not a reason to read
everything: the run reads the added groups in full and the rest from changes
(:func:`added_groups`); a mapping removed only prunes the cache. The reason is
in the report and the Import Log.

Where the cache lives: a store that is a :class:`DeltaCacheStore` keeps it in
tables of its own (rows of memberships and users, written as the difference
from the last run: :func:`cache_write`); any other
:class:`~calm_azure_sync.SyncStateStore` keeps it as JSON in
``SyncState.delta`` (:meth:`DeltaCache.to_dict`).

The package, one concept a module, the read on top of the pure parts:

- :mod:`~calm_azure_sync.incremental.cache`: the cache, its head, its writes
  and stores, and :func:`choose_mode` (pure);
- :mod:`~calm_azure_sync.incremental.fold`: a delta round folded into the
  kept memberships, and the snapshot resolved from them (pure);
- :mod:`~calm_azure_sync.incremental.partial`: a simple round read from
  some rows of the cache, for planning by difference (pure);
- :mod:`~calm_azure_sync.incremental.difference`: planning by difference,
  who is touched and who is planned (pure);
- :mod:`~calm_azure_sync.incremental.settled`: when a quiet run has nothing
  to plan (pure);
- :mod:`~calm_azure_sync.incremental._rows`: the cache as table rows, for the
  SQLite and PostgreSQL stores (pure);
- :mod:`~calm_azure_sync.incremental.reader`: ``DirectoryReader``, one run's
  read, in full or from changes, and what is kept of the cache (IO; not
  imported here, so importing this package does no IO).
"""

from __future__ import annotations

from .cache import (
    CACHE_VERSION,
    DeltaCache,
    DeltaCacheStore,
    DeltaCacheWrite,
    DeltaHead,
    DeltaHeadStore,
    ReadMode,
    added_groups,
    cache_write,
    choose_mode,
)
from .fold import Applied as Applied  # importable here as before the split (not in __all__, as before)
from .fold import apply_delta, resolve_members, tracked_groups
from .fold import snapshot_members as snapshot_members  # likewise
from .partial import DeltaRows, DeltaRowsStore

__all__ = [
    "CACHE_VERSION",
    "DeltaCache",
    "DeltaCacheStore",
    "DeltaCacheWrite",
    "DeltaHead",
    "DeltaHeadStore",
    "DeltaRows",
    "DeltaRowsStore",
    "ReadMode",
    "added_groups",
    "apply_delta",
    "cache_write",
    "choose_mode",
    "resolve_members",
    "tracked_groups",
]
