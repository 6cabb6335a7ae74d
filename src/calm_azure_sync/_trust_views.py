"""The reconciler's read-only views of a trust, and what it tells ``on_attention``.

:meth:`Reconciler.explain <calm_azure_sync.Reconciler.explain>` (one
person's access and the next run's changes for them),
:meth:`Reconciler.status <calm_azure_sync.Reconciler.status>` (a trust's
sync at a glance, from its sync state and the newest Import Log entries) and
the attention a run's end or refusal hands the host. The rules are in
:mod:`~calm_azure_sync.review.explain` and :mod:`~calm_azure_sync.review.status`; this is
the IO around them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .audit.events import AuditEvent, AuditKind
from .audit.protocol import ImportLogQuery
from .core.plan import Plan
from .core.planner import PlanContext
from .core.state import Hold, SyncState
from .directory.delta import DeltaDirectory
from .errors import ConfigError
from .incremental import choose_mode
from .model import DirectoryUser, Role
from .policies.config import SyncConfig
from .review.explain import (
    Explanation,
    explain_person,
    person_snapshot,
    person_state,
    person_sync_state,
    stored_user_for,
)
from .review.explain_read import PersonRead, read_person
from .review.report import ImportReport
from .review.status import (
    RUN_KINDS,
    Attention,
    SyncStatus,
    attention_after_run,
    failure_streak,
    runs_from_log,
    sync_status,
)
from .store.protocol import Grant, GrantReader, StoredUser, StoreState

if TYPE_CHECKING:
    from .reconciler import AttentionCallback, Reconciler

logger = logging.getLogger("calm_azure_sync")

#: The newest run entries (starts, ends, refusals) a status reads: about 100 runs.
STATUS_RUN_ENTRIES = 200
#: The newest run's error entries a status reads.
STATUS_ERROR_ENTRIES = 100


# ---------------------------------------------------------------------- explain


async def explain(reconciler: Reconciler, config: SyncConfig, who: str) -> Explanation:
    """:meth:`Reconciler.explain` once the actor, the configuration and the tenant passed."""
    if not isinstance(who, str) or not who.strip():
        raise ConfigError(
            f"who: expected an email, an Entra object id or a store user id, got {type(who).__name__} {who!r:.60}"
        )
    who = who.strip()
    trust = config.trust_site_id
    state = await reconciler.store.load(trust)
    sync_state = await reconciler._state_store.load_state(trust)
    stored = stored_user_for(state, who)
    read = await read_person(
        reconciler._directory_for(config), config, who, stored, reconciler._reader(config),
        reconciler.max_concurrent_reads,
    )
    user = read.user
    if stored is None and user is not None:
        stored = stored_user_for(state, user.id) or (stored_user_for(state, user.email) if user.email else None)
    ids = {ext for ext in (user.id if user else None, stored.external_id if stored else None) if ext}
    plan = await _person_plan(reconciler, config, read, user, stored, ids, state, sync_state)
    synced: dict[tuple[str, str], Role] = {}
    for ext in ids:
        synced.update(state.synced_access.get(ext, {}))
    site_names = reconciler._site_names()
    roots = {site.id: reconciler.hierarchy.root_of(site.id).id for site in reconciler.hierarchy.sites}
    return explain_person(
        who=who,
        config=config,
        trust_name=site_names[trust],
        site_names=site_names,
        trust_of_site={site_id: (root, site_names[root]) for site_id, root in roots.items()},
        user=user,
        stored=stored,
        groups=read.groups,
        group_names={**{gid: g.display_name for gid, g in state.groups.items()}, **read.group_names},
        grants=await _person_grants(reconciler, stored),
        synced_access=synced,
        plan=plan,
        pending=sync_state.hold,
        unread_groups=read.unreadable,
        directory_read=read.how,
        not_found_reason=read.not_found_reason,
        notes=read.notes,
    )


async def _person_plan(
    reconciler: Reconciler,
    config: SyncConfig,
    read: PersonRead,
    user: DirectoryUser | None,
    stored: StoredUser | None,
    ids: set[str],
    state: StoreState,
    sync_state: SyncState,
) -> Plan | None:
    """The next run's plan for this one person (``None``: neither the directory nor the store knows them)."""
    if not ids:
        return None
    email = (user.email if user else None) or (stored.email if stored else None)
    snapshot = person_snapshot(
        config, user, read.member_of, unreadable=read.unreadable, stale=read.stale, group_names=read.group_names
    )
    context = PlanContext(
        person_sync_state(sync_state, ids), None, run_id="explain", now=reconciler.clock(),
        mirror_groups=reconciler._mirrors_groups,
    )
    return await reconciler._build_plan(config, snapshot, person_state(state, ids, email), context)


async def _person_grants(reconciler: Reconciler, stored: StoredUser | None) -> list[Grant] | None:
    """The stored person's grants, sorted (``[]``: not in the store; ``None``: the store cannot say)."""
    if stored is not None and isinstance(reconciler.store, GrantReader):
        return sorted(await reconciler.store.grants(stored.user_id), key=lambda g: (g.site_id, g.module, g.source))
    if stored is None:
        return []
    return None


# ---------------------------------------------------------------------- status


async def status(reconciler: Reconciler, trust_site_id: str, trust_name: str) -> SyncStatus:
    """:meth:`Reconciler.status` once the actor passed."""
    sync_state = await reconciler._state_store.load_state(trust_site_id)
    runs_log, errors = await _recent_runs(reconciler, trust_site_id)
    reader = reconciler._reader(None)
    head, _ = await reader._load_head(trust_site_id, sync_state)
    mode, why = choose_mode(
        "auto", cache=head, mapped=head.mapped if head is not None else frozenset(),
        supports_delta=isinstance(reader.directory, DeltaDirectory), now=reconciler.clock(),
        full_resync_interval=reconciler.full_resync_interval,
    )
    if head is not None and mode == "incremental":
        why += " (if the mapped groups stay as they are)"
    return sync_status(
        trust_site_id=trust_site_id, trust_name=trust_name, now=reconciler.clock(), hold=sync_state.hold,
        runs_log=runs_log, last_run_errors=errors, mode_next=mode, mode_next_reason=why,
    )


async def _recent_runs(reconciler: Reconciler, trust_site_id: str) -> tuple[list[AuditEvent] | None, list[AuditEvent]]:
    """The newest run entries and the newest run's errors (``None``: the Import Log cannot be queried)."""
    audit = reconciler.audit
    if not isinstance(audit, ImportLogQuery):
        return None, []
    try:
        runs_log = list(await audit.query(trust_site_id, kinds=RUN_KINDS, limit=STATUS_RUN_ENTRIES))
        runs = runs_from_log(runs_log)
        errors: list[AuditEvent] = []
        if runs:
            errors = list(await audit.query(
                trust_site_id, run_id=runs[0].run_id, kinds=[AuditKind.ERROR], limit=STATUS_ERROR_ENTRIES
            ))
    except Exception:  # a status is for people: an unreadable log is said, not raised
        logger.warning("reading the Import Log of %s failed", trust_site_id, exc_info=True)
        return None, []
    return runs_log, errors


# ---------------------------------------------------------------------- on_attention


async def tell(callback: AttentionCallback | None, items: Sequence[Attention]) -> None:
    """Hand new attention items to the host; a callback that fails is logged, never raised."""
    if callback is None or not items:
        return
    try:
        result = callback(tuple(items))
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.error("the on_attention callback failed for %d items", len(items), exc_info=True)


async def attention_after(
    reconciler: Reconciler, report: ImportReport, hold_before: Hold | None, hold_after: Hold | None
) -> list[Attention]:
    """What this run brought that needs an admin (see :func:`~calm_azure_sync.review.status.attention_after_run`)."""
    streak: int | None = None
    abandoned: list[AuditEvent] = []
    audit = reconciler.audit
    if isinstance(audit, ImportLogQuery):
        try:
            runs_log = await audit.query(report.trust_site_id, kinds=RUN_KINDS, limit=STATUS_RUN_ENTRIES)
            streak = failure_streak(runs_from_log(runs_log))
            abandoned = [
                event for event in runs_log
                if event.kind == AuditKind.IMPORT_ABANDONED and event.run_id == report.run_id
            ]
        except Exception:
            logger.warning("reading the Import Log of %s failed", report.trust_site_id, exc_info=True)
    return attention_after_run(
        now=reconciler.clock(), hold_before=hold_before, hold_after=hold_after, streak=streak, abandoned=abandoned
    )


async def tell_refusal(
    reconciler: Reconciler, callback: AttentionCallback | None, trust_site_id: str, reason: str, error: BaseException
) -> None:
    """A refusal is news for an admin, except another run being busy (a scheduler's overlap)."""
    if callback is None or reason == "already_running":
        return
    name = reconciler._site_names().get(trust_site_id, trust_site_id)
    message = f"An import of {name} was refused ({reason.replace('_', ' ')}): {error}"
    await tell(callback, [Attention("import_refused", message, reconciler.clock())])
