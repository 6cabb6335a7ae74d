"""Start Import: the IO edge around the pure planner.

A run reads as its steps: authorize -> lock -> load the sync state -> read the
directory -> load the store -> plan -> record -> remember the hold -> apply ->
record -> remember the rest. The rules live elsewhere: who is in scope and what
changes in :mod:`~calm_azure_sync.planner`, what is held in
:mod:`~calm_azure_sync.guards`, what the Import Log says in
:mod:`~calm_azure_sync.journal`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

import attrs

from . import _version
from ._plan_names import KnownNames
from .audit.events import AuditEvent, AuditKind, utc_now
from .audit.protocol import AuditSink, ImportLogQuery
from .autodetect import Suggestions
from .check import ConfigProblem, config_problems
from .config import SyncConfig
from .directory._deadline import interactive_call
from .directory.delta import DeltaDirectory
from .directory.protocol import Directory
from .errors import (
    CalmAzureSyncError,
    ChildSiteConfigurationError,
    ConfigError,
    DirectoryError,
    HoldMismatchError,
    ImportAlreadyRunningError,
    NotAuthorizedError,
    RunLockLostError,
    StoreError,
    TenantMismatchError,
)
from .exclusion import ExclusionPolicy
from .explain import (
    Explanation,
    explain_person,
    person_snapshot,
    person_state,
    person_sync_state,
    stored_user_for,
)
from .explain_read import read_person
from .guards import next_sync_state
from .hierarchy import Actor, TrustHierarchy, authorize
from .incremental import ReadMode, choose_mode
from .incremental.reader import DirectoryReader, RunRead
from .incremental.settled import Settled, settled_key
from .journal import Journal, RefusalReason
from .model import DirectoryGroup, DirectoryUser, Role, Site
from .plan import (
    AddGroupMember,
    CreateUser,
    DeactivateUser,
    LinkUser,
    Plan,
    RelinkUser,
    RemoveGroupMember,
    UpdateUser,
    UpsertGroup,
    UserLabel,
    change_kind,
    is_removal,
)
from .planner import DirectorySnapshot, PlanContext, build_plan, skip_reason
from .report import ImportReport
from .review import skip_counts
from .state import Hold, HoldScope, RunningImport, SyncState, SyncStateStore
from .status import (
    RUN_KINDS,
    Attention,
    SyncStatus,
    attention_after_run,
    failure_streak,
    runs_from_log,
    sync_status,
)
from .store.protocol import (
    ChangeResult,
    FencedStore,
    GrantReader,
    StateWithChanges,
    StoreState,
    UserStore,
    VersionedStore,
    saves_state_with_changes,
)

__all__ = ["AttentionCallback", "ImportReport", "ProgressCallback", "Reconciler"]

logger = logging.getLogger("calm_azure_sync")


class ProgressCallback(Protocol):
    """Called as ``progress(stage, done, total)``; ``stage`` is "read", "plan" or "apply"."""

    def __call__(self, stage: str, done: int, total: int | None) -> None: ...


AttentionCallback = Callable[[Sequence[Attention]], Any]
"""Called as ``on_attention(items)`` at the end of a run with what is new; may be a coroutine function."""

#: The newest run entries (starts, ends, refusals) a status reads: about 100 runs.
STATUS_RUN_ENTRIES = 200
#: The newest run's error entries a status reads.
STATUS_ERROR_ENTRIES = 100


def _positive(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ConfigError(f"{attribute.name}: must be at least 1, got {value!r}")


def _check_confirm_only(confirm_hold: str | None, confirm_only: object) -> None:
    if confirm_only is None:
        return
    if not isinstance(confirm_only, HoldScope):
        raise ConfigError(f"confirm_only: expected a HoldScope, got {type(confirm_only).__name__}")
    if confirm_hold is None:
        raise ConfigError("confirm_only: a partial confirmation needs confirm_hold, the id of the hold reviewed")


def _positive_duration(instance: object, attribute: attrs.Attribute[Any], value: dt.timedelta | None) -> None:
    if value is not None and (not isinstance(value, dt.timedelta) or value <= dt.timedelta(0)):
        raise ConfigError(f"{attribute.name}: must be a positive datetime.timedelta or None, got {value!r}")


def _refusal_reason(error: BaseException) -> RefusalReason:
    if isinstance(error, ChildSiteConfigurationError):
        return "child_site"
    if isinstance(error, NotAuthorizedError):
        return "not_authorized"
    if isinstance(error, ImportAlreadyRunningError):
        return "already_running"
    if isinstance(error, HoldMismatchError):
        return "hold_mismatch"
    if isinstance(error, StoreError):
        return "store_failed"
    if isinstance(error, TenantMismatchError):
        return "tenant_mismatch"
    return "invalid_config"


@attrs.define
class Reconciler:
    """Runs imports of one host's trusts from one directory into one store.

    ``state`` keeps each trust's memory between runs (pending holds, group
    baselines); it defaults to the user store, which must then implement
    :class:`~calm_azure_sync.SyncStateStore` (both shipped stores do): there
    is no in-memory fallback that would forget a hold when the process restarts.

    ``batch_size`` is how many changes (rounded up to whole users) go to the
    store in one ``apply`` call; ``max_concurrent_reads`` bounds the mapped
    groups read at once (Graph throttles per app and tenant).

    ``interactive_timeout`` (default 5 s; ``None``: none) is how long the
    calls behind a screen — :meth:`discover`, :meth:`check`,
    :meth:`suggest_exclusions` — wait for the directory to answer one request,
    retries included, before they fail with
    ``DirectoryError(code="timeout")``; once one request timed out, the rest
    of that call fails at once. A big read from a directory that answers is
    not cut short. :meth:`run` and :meth:`plan` keep the directory's patient
    retries. :class:`~calm_azure_sync.GraphDirectory` applies it; an
    in-memory directory has nothing to wait for.

    Every method that reads or changes a trust takes ``actor`` as a required
    keyword: an :class:`~calm_azure_sync.Actor` who is Admin of the Trust, or
    ``Actor.system(name)`` for a scheduled job.

    >>> import asyncio
    >>> from calm_azure_sync import *
    >>> directory = InMemoryDirectory.from_dict({
    ...     "users": [{"id": "u1", "displayName": "Ann", "mail": "ann@birch.sch.uk"}],
    ...     "groups": [{"id": "g-staff"}], "members": {"g-staff": ["u1"]}})
    >>> hierarchy = TrustHierarchy([Site("oak", "Oak Trust"), Site("birch", "Birch", "oak")])
    >>> config = SyncConfig("oak", [GroupMapping("g-staff", "birch", {"Risk": "Member"})])
    >>> reconciler = Reconciler(directory, InMemoryUserStore(), InMemoryAuditSink(), hierarchy)
    >>> asyncio.run(reconciler.run(config, actor=Actor.system("docs"))).counts["create_user"]
    1
    """

    directory: Directory
    store: UserStore
    audit: AuditSink
    hierarchy: TrustHierarchy
    progress: ProgressCallback | None = attrs.field(default=None, kw_only=True)
    state: SyncStateStore | None = attrs.field(default=None, kw_only=True)
    # Measured (docs/performance.md): 5,000-change batches import 100k users into
    # SQLite in 10 s against 13 s at 500; 16 concurrent reads bring a no-change
    # re-run of a 10k trust at 100 ms Graph latency to 2.3 s (5.8 s at 4), for
    # about 640 resource units a second, under Graph's per-tenant budget.
    batch_size: int = attrs.field(default=5000, kw_only=True, validator=_positive)
    max_concurrent_reads: int = attrs.field(default=16, kw_only=True, validator=_positive)
    clock: Callable[[], dt.datetime] = attrs.field(default=utc_now, kw_only=True, repr=False)
    # Entra's own provisioning reads in full about once a day and incrementally between.
    full_resync_interval: dt.timedelta = attrs.field(default=dt.timedelta(hours=24), kw_only=True)
    # A screen's click gives up on Graph after this (each request, retries included); run() never does.
    interactive_timeout: dt.timedelta | None = attrs.field(
        default=dt.timedelta(seconds=5), kw_only=True, validator=_positive_duration
    )
    on_attention: AttentionCallback | None = attrs.field(default=None, kw_only=True, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.state is None:
            if not isinstance(self.store, SyncStateStore):
                raise ConfigError(
                    f"state: {type(self.store).__name__} does not keep the sync state (load_state/save_state); "
                    "pass state= a SyncStateStore, so a pending hold survives a restart"
                )
            self.state = self.store

    @property
    def _mirrors_groups(self) -> bool:
        return getattr(self.store, "mirrors_groups", False) is True

    @property
    def _state_store(self) -> SyncStateStore:
        assert self.state is not None
        return self.state

    # ------------------------------------------------------------------ screens

    @interactive_call
    async def discover(self, site_id: str, *, actor: Actor, search: str | None = None) -> list[DirectoryGroup]:
        """List the directory's groups for the Group Mapping screen, and log the discovery.

        ``search``, when given, narrows the list by display name on the
        directory's side (Graph ``$search``), for tenants with many groups.
        """
        trust = self._authorize(site_id, actor)
        listed = await (self.directory.list_groups(search=search) if search else self.directory.list_groups())  # type: ignore[call-arg]
        groups = sorted(listed, key=lambda g: ((g.display_name or "").lower(), g.id))
        await self._record_safely([self._journal(trust.id, actor).discovered(len(groups))])
        return groups

    @interactive_call
    async def suggest_exclusions(self, config: SyncConfig, *, actor: Actor) -> Suggestions:
        """Auto-detect for the Exclusions tab: system accounts the next import would bring in.

        Checked like :meth:`plan` (the actor, the configuration, the tenant),
        then the mapped groups are read and :meth:`ExclusionPolicy.suggest` runs
        over their members, keeping only users the sync would import now.
        """
        self._admit(config, actor)
        snapshot = await self._read(config)
        failed = {group: why for group, why in snapshot.unreadable.items() if group not in snapshot.stale}
        if failed:  # suggestions from part of the trust would look complete: say the read failed instead
            group, why = min(failed.items())
            raise DirectoryError(
                f"reading {len(failed)} mapped group(s) failed, first {group!r}: {why}", code="unreadable_groups"
            )
        seen: dict[str, DirectoryUser] = {}
        for members in snapshot.members.values():
            for user in members:
                seen.setdefault(user.id, user)
        users = [seen[user_id] for user_id in sorted(seen)]
        return Suggestions(
            suggestion
            for suggestion in ExclusionPolicy.suggest(users)
            if skip_reason(seen[suggestion.user_id], config) is None
        )

    @interactive_call
    async def check(self, config: SyncConfig, *, actor: Actor) -> list[ConfigProblem]:
        """The configuration checked against the live directory, for the Group Mapping screen.

        Returns every problem (an empty list: all good), never raising for
        them: mapped group ids that never existed (a typo, with the closest
        group names) told apart from groups that were deleted (stale), mapped
        groups without user members, and what :meth:`SyncConfig.validate`
        finds (sites outside the trust, unknown modules, duplicates). Raises
        only when ``actor`` may not configure the trust (or it is a child site).
        Writes nothing and logs nothing.
        """
        if not isinstance(config, SyncConfig):
            raise ConfigError(f"config: expected a SyncConfig, got {type(config).__name__}")
        trust = self._authorize(config.trust_site_id, actor)
        invalid: list[str] = []
        try:
            config.validate(self.hierarchy)
            self._check_tenant(config)
        except ConfigError as error:
            invalid = list(error.problems)
        groups = list(await self.directory.list_groups())
        existing = {group.id for group in groups}
        count = getattr(self.directory, "group_member_count", None)
        member_counts: dict[str, int] = {}
        for group_id in sorted(config.mappings.group_ids & existing):
            if count is not None:
                member_counts[group_id] = await count(group_id)
            else:
                member_counts[group_id] = len(await self.directory.group_members(group_id))
        # Seen before = read completely by an earlier run (its baseline). Not the store's mirrored
        # groups: a run mirrors every mapped group, a mistyped id that was never read included.
        seen = (await self._state_store.load_state(trust.id)).baselines
        return config_problems(config, invalid=invalid, groups=groups, member_counts=member_counts, seen_before=seen)

    async def pending_hold(self, trust_site_id: str, *, actor: Actor) -> Hold | None:
        """The trust's pending hold, for the review screen (``None``: nothing is held)."""
        trust = self._authorize(trust_site_id, actor)
        return (await self._state_store.load_state(trust.id)).hold

    async def explain(self, config: SyncConfig, who: str, *, actor: Actor) -> Explanation:
        """Why one person has (or lacks) the access this trust's sync gives, and what the next run changes for them.

        ``who`` is an email, an Entra object id or a store user id. Checked
        like :meth:`plan`; reads the directory for that one person (see
        :mod:`calm_azure_sync.explain_read`: a few requests, whatever the
        tenant's size), the store and the trust's sync state. Writes nothing
        and logs nothing. See :class:`~calm_azure_sync.Explanation`.
        """
        self._admit(config, actor)
        if not isinstance(who, str) or not who.strip():
            raise ConfigError(
                f"who: expected an email, an Entra object id or a store user id, got {type(who).__name__} {who!r:.60}"
            )
        who = who.strip()
        trust = config.trust_site_id
        state = await self.store.load(trust)
        sync_state = await self._state_store.load_state(trust)
        stored = stored_user_for(state, who)
        read = await read_person(self.directory, config, who, stored, self._reader, self.max_concurrent_reads)
        user = read.user
        if stored is None and user is not None:
            stored = stored_user_for(state, user.id) or (stored_user_for(state, user.email) if user.email else None)
        ids = {ext for ext in (user.id if user else None, stored.external_id if stored else None) if ext}
        plan: Plan | None = None
        if ids:
            email = (user.email if user else None) or (stored.email if stored else None)
            snapshot = person_snapshot(
                config, user, read.member_of, unreadable=read.unreadable, stale=read.stale, group_names=read.group_names
            )
            context = PlanContext(
                person_sync_state(sync_state, ids), None, run_id="explain", now=self.clock(),
                mirror_groups=self._mirrors_groups,
            )
            plan = await self._build_plan(config, snapshot, person_state(state, ids, email), context)
        grants = None
        if stored is not None and isinstance(self.store, GrantReader):
            grants = sorted(await self.store.grants(stored.user_id), key=lambda g: (g.site_id, g.module, g.source))
        elif stored is None:
            grants = []
        synced: dict[tuple[str, str], Role] = {}
        for ext in ids:
            synced.update(state.synced_access.get(ext, {}))
        site_names = self._site_names()
        roots = {site.id: self.hierarchy.root_of(site.id).id for site in self.hierarchy.sites}
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
            grants=grants,
            synced_access=synced,
            plan=plan,
            pending=sync_state.hold,
            unread_groups=read.unreadable,
            directory_read=read.how,
            not_found_reason=read.not_found_reason,
            notes=read.notes,
        )

    async def status(self, trust_site_id: str, *, actor: Actor) -> SyncStatus:
        """The trust's sync at a glance: last runs, failure streak, pending hold, next read, what needs an admin.

        Cheap: reads the trust's sync state, the head of its delta cache and
        the newest Import Log entries (at most :data:`STATUS_RUN_ENTRIES` run
        entries and the last run's errors), never the directory. An audit
        sink that cannot be queried
        (:class:`~calm_azure_sync.audit.protocol.ImportLogQuery`) gives a
        status whose ``log_readable`` is false. Writes and logs nothing.
        See :class:`~calm_azure_sync.SyncStatus`.
        """
        trust = self._authorize(trust_site_id, actor)
        sync_state = await self._state_store.load_state(trust.id)
        runs_log, errors = await self._recent_runs(trust.id)
        reader = self._reader
        head, _ = await reader._load_head(trust.id, sync_state)
        mode, why = choose_mode(
            "auto", cache=head, mapped=head.mapped if head is not None else frozenset(),
            supports_delta=isinstance(self.directory, DeltaDirectory), now=self.clock(),
            full_resync_interval=self.full_resync_interval,
        )
        if head is not None and mode == "incremental":
            why += " (if the mapped groups stay as they are)"
        return sync_status(
            trust_site_id=trust.id, trust_name=trust.name or trust.id, now=self.clock(), hold=sync_state.hold,
            runs_log=runs_log, last_run_errors=errors, mode_next=mode, mode_next_reason=why,
        )

    async def _recent_runs(self, trust_site_id: str) -> tuple[list[AuditEvent] | None, list[AuditEvent]]:
        """The newest run entries and the newest run's errors (``None``: the Import Log cannot be queried)."""
        if not isinstance(self.audit, ImportLogQuery):
            return None, []
        try:
            runs_log = list(await self.audit.query(trust_site_id, kinds=RUN_KINDS, limit=STATUS_RUN_ENTRIES))
            runs = runs_from_log(runs_log)
            errors: list[AuditEvent] = []
            if runs:
                errors = list(await self.audit.query(
                    trust_site_id, run_id=runs[0].run_id, kinds=[AuditKind.ERROR], limit=STATUS_ERROR_ENTRIES
                ))
        except Exception:  # a status is for people: an unreadable log is said, not raised
            logger.warning("reading the Import Log of %s failed", trust_site_id, exc_info=True)
            return None, []
        return runs_log, errors

    async def _tell(self, callback: AttentionCallback | None, items: Sequence[Attention]) -> None:
        """Hand new attention items to the host; a callback that fails is logged, never raised."""
        if callback is None or not items:
            return
        try:
            result = callback(tuple(items))
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.error("the on_attention callback failed for %d items", len(items), exc_info=True)

    async def _attention_after(
        self, report: ImportReport, hold_before: Hold | None, hold_after: Hold | None
    ) -> list[Attention]:
        """What this run brought that needs an admin (see :func:`~calm_azure_sync.status.attention_after_run`)."""
        streak: int | None = None
        abandoned: list[AuditEvent] = []
        if isinstance(self.audit, ImportLogQuery):
            try:
                runs_log = await self.audit.query(report.trust_site_id, kinds=RUN_KINDS, limit=STATUS_RUN_ENTRIES)
                streak = failure_streak(runs_from_log(runs_log))
                abandoned = [
                    event for event in runs_log
                    if event.kind == AuditKind.IMPORT_ABANDONED and event.run_id == report.run_id
                ]
            except Exception:
                logger.warning("reading the Import Log of %s failed", report.trust_site_id, exc_info=True)
        return attention_after_run(
            now=self.clock(), hold_before=hold_before, hold_after=hold_after, streak=streak, abandoned=abandoned
        )

    def _site_names(self) -> dict[str, str]:
        """Each site's name for people to read (its id when it has none)."""
        return {site.id: site.name or site.id for site in self.hierarchy.sites}

    # ------------------------------------------------------------------ plan / run

    async def plan(self, config: SyncConfig, *, actor: Actor, confirm_hold: str | None = None) -> Plan:
        """What :meth:`run` would do now. Writes nothing; the Import Log gets only ``discovery``."""
        self._admit(config, actor)
        snapshot = await self._read(config)
        journal = self._journal(config.trust_site_id, actor)
        members = {group_id: len(users) for group_id, users in snapshot.members.items()}
        await self._record_safely(
            [journal.read_summary(members, snapshot.unreadable, sorted(config.mappings.group_ids),
                                 group_names=snapshot.group_names)]
        )
        sync_state = await self._state_store.load_state(config.trust_site_id)
        state = await self.store.load(config.trust_site_id)
        context = PlanContext(
            sync_state, confirm_hold, run_id="preview", now=self.clock(), mirror_groups=self._mirrors_groups,
            site_names=self._site_names(),
        )
        return await self._build_plan(config, snapshot, state, context)

    async def run(
        self,
        config: SyncConfig,
        *,
        actor: Actor,
        confirm_hold: str | None = None,
        mode: ReadMode = "auto",
        confirm_only: HoldScope | None = None,
        on_attention: AttentionCallback | None = None,
    ) -> ImportReport:
        """Start Import.

        Refuses before anything starts (each refusal is an ``import_refused``
        entry in the Import Log, then raised): an actor who may not import
        this trust, an invalid configuration, another tenant's directory, a
        run already holding the lock, a ``confirm_hold`` that is not the
        pending hold's id (:class:`~calm_azure_sync.HoldMismatchError`).
        Anything that fails after that is in the report (``ok=False``) and the
        Import Log. A cancelled run logs ``import_failed``, releases the lock
        and re-raises.

        ``mode``: ``"full"`` reads every mapped group in full and never touches
        the delta state; ``"incremental"`` reads only what changed since the
        last run (falling back to a full read, and saying why, when it cannot);
        ``"auto"`` reads incrementally when the delta state is usable and the
        last full read is younger than ``full_resync_interval``. Whatever the
        mode, the outcome is a full run's (see :mod:`calm_azure_sync.incremental`).

        ``confirm_only`` (with ``confirm_hold``): a partial confirmation; only
        the held removals inside that :class:`~calm_azure_sync.HoldScope` are
        applied, the rest stays held under a new hold id.

        ``on_attention`` (else the reconciler's) is called once at the end
        with what is new and needs an admin (:class:`~calm_azure_sync.Attention`:
        a hold created or grown, a refusal, a third failed run in a row, an
        abandoned run this one closed); a callback that raises is logged and
        never fails the run.
        """
        callback = on_attention if on_attention is not None else self.on_attention
        journal = Journal(
            config.trust_site_id if isinstance(config, SyncConfig) else "?", self.clock, uuid.uuid4().hex,
            actor.user_id if isinstance(actor, Actor) else None, site_names=self._site_names(),
        )
        try:
            if mode not in ("full", "incremental", "auto"):
                raise ConfigError(f"mode: {mode!r:.40} is not one of full, incremental, auto")
            _check_confirm_only(confirm_hold, confirm_only)
            self._admit(config, actor)
            lock = self.store.run_lock(config.trust_site_id)
            await lock.__aenter__()
        except (NotAuthorizedError, ConfigError, ImportAlreadyRunningError, StoreError) as error:
            reason = _refusal_reason(error)
            await self._record_safely([journal.refused(reason, error)])
            await self._tell_refusal(callback, journal.trust_site_id, reason, error)
            raise
        report: ImportReport | None = None
        hold_before: Hold | None = None
        runner: _Run | None = None
        try:
            try:
                sync_state = await self._load_state_or_refuse(config, confirm_hold, journal)
            except ConfigError as error:
                reason = _refusal_reason(error) if isinstance(error, HoldMismatchError) else "unreadable_state"
                await self._tell_refusal(callback, journal.trust_site_id, reason, error)
                raise
            hold_before = sync_state.hold
            runner = _Run(self, config, journal, sync_state, confirm_hold, mode, confirm_only)
            report = await runner.execute()
        finally:
            try:
                await lock.__aexit__(None, None, None)
            except Exception as error:  # the import is over: report, don't raise
                logger.warning("releasing the run lock of %s failed", config.trust_site_id, exc_info=True)
                if report is not None:
                    report = attrs.evolve(
                        report,
                        errors=(*report.errors, f"releasing the run lock failed: {type(error).__name__}: {error}"),
                        ok=False,
                    )
        assert report is not None
        assert runner is not None
        if callback is not None:
            await self._tell(callback, await self._attention_after(report, hold_before, runner.sync_state.hold))
        return report

    async def _tell_refusal(
        self, callback: AttentionCallback | None, trust_site_id: str, reason: str, error: BaseException
    ) -> None:
        """A refusal is news for an admin, except another run being busy (a scheduler's overlap)."""
        if callback is None or reason == "already_running":
            return
        name = self._site_names().get(trust_site_id, trust_site_id)
        message = f"An import of {name} was refused ({reason.replace('_', ' ')}): {error}"
        await self._tell(callback, [Attention("import_refused", message, self.clock())])

    # ------------------------------------------------------------------ steps

    def _authorize(self, site_id: str, actor: Actor) -> Site:
        if not isinstance(actor, Actor):
            raise NotAuthorizedError(
                f"actor is required: pass actor=Actor(user_id, admin_site_ids) for a person, or "
                f"actor=Actor.system(name) for a scheduled job (got {type(actor).__name__})"
            )
        return authorize(actor, site_id, self.hierarchy)

    def _admit(self, config: SyncConfig, actor: Actor) -> None:
        """The checks every trust-reading method makes first: the actor, the configuration, the tenant."""
        if not isinstance(config, SyncConfig):
            raise ConfigError(f"config: expected a SyncConfig, got {type(config).__name__}")
        self._authorize(config.trust_site_id, actor)
        config.validate(self.hierarchy)
        self._check_tenant(config)

    def _check_tenant(self, config: SyncConfig) -> None:
        """A trust connected to a tenant is only ever synced from that tenant.

        A directory that cannot say which tenant it reads is refused too: the
        check must not pass just because the answer is unknown.
        """
        if not config.tenant_id:
            return
        directory_tenant = getattr(self.directory, "tenant_id", None)
        if not directory_tenant:
            raise TenantMismatchError(
                f"trust {config.trust_site_id!r} is connected to tenant {config.tenant_id!r}, "
                "but the directory does not say which tenant it reads; pass tenant_id to the directory",
                expected=config.tenant_id, actual=None,
            )
        if config.tenant_id.lower() != str(directory_tenant).lower():
            raise TenantMismatchError(
                f"trust {config.trust_site_id!r} is connected to tenant {config.tenant_id!r}, "
                f"but the directory reads tenant {directory_tenant!r}; refusing to sync another organisation",
                expected=config.tenant_id, actual=str(directory_tenant),
            )

    async def _load_state_or_refuse(self, config: SyncConfig, confirm_hold: str | None, journal: Journal) -> SyncState:
        try:
            sync_state = await self._state_store.load_state(config.trust_site_id)
            pending = sync_state.hold
            if confirm_hold is not None and (pending is None or pending.id != confirm_hold):
                raise HoldMismatchError(confirm_hold, pending.id if pending is not None else None)
        except (ConfigError, StoreError) as error:
            unreadable = isinstance(error, ConfigError) and not isinstance(error, HoldMismatchError)
            reason = "unreadable_state" if unreadable else _refusal_reason(error)
            await self._record_safely([journal.refused(reason, error)])
            raise
        return sync_state

    @property
    def _reader(self) -> DirectoryReader:
        return DirectoryReader(
            self.directory, self._state_store, self.max_concurrent_reads, self.clock, self.full_resync_interval,
            self._progress,
        )

    async def _read(self, config: SyncConfig) -> DirectorySnapshot:
        """Read every mapped group in full (see :meth:`DirectoryReader.read_all`)."""
        return await self._reader.read_all(config)

    async def _build_plan(
        self, config: SyncConfig, snapshot: DirectorySnapshot, state: StoreState, context: PlanContext
    ) -> Plan:
        """Plan; when an email conflict could be settled by asking the directory, ask and plan again."""
        self._progress("plan", 0, 1)
        plan = build_plan(config, snapshot, state, context)
        lookup = getattr(self.directory, "lookup_users", None)
        if plan.lookups_needed and lookup is not None:
            try:
                found: Mapping[str, DirectoryUser | None] = await lookup(sorted(plan.lookups_needed))
            except Exception:  # the conflicts stay conflicts: safe, and reported
                logger.warning("looking up %d conflicting users failed", len(plan.lookups_needed), exc_info=True)
            else:
                plan = build_plan(config, snapshot, state, attrs.evolve(context, lookups=found))
        self._progress("plan", 1, 1)
        # Reviews name sites by Site.name, and anyone the run knows by name (not only those it changes).
        return attrs.evolve(
            plan, site_names=self._site_names(), people=KnownNames(plan.people, snapshot.members, state)
        )

    async def _data_version(self) -> int | None:
        """The store's data version, when it keeps one (see :class:`~calm_azure_sync.VersionedStore`)."""
        if not isinstance(self.store, VersionedStore):
            return None
        try:
            return int(await self.store.data_version())
        except Exception:  # the run just cannot be settled
            logger.warning("reading the store's data version failed", exc_info=True)
            return None

    def _progress(self, stage: str, done: int, total: int | None) -> None:
        if self.progress is None:
            return
        try:
            self.progress(stage, done, total)
        except Exception:  # a broken progress bar must not break an import
            logger.warning("progress callback failed", exc_info=True)

    def _journal(self, trust_site_id: str, actor: Actor, run_id: str | None = None) -> Journal:
        return Journal(trust_site_id, self.clock, run_id, actor.user_id, site_names=self._site_names())

    async def _record_safely(self, events: Sequence[AuditEvent]) -> str | None:
        """Record events; on failure return why (never raise: the store is the truth)."""
        if not events:
            return None
        try:
            await self.audit.record(events)
        except Exception as error:
            logger.error("audit sink failed to record %d events", len(events), exc_info=True)
            return f"audit sink failed: {type(error).__name__}: {error}"
        return None


class _AuditSinkDown(Exception):
    """The audit sink refused events: stop applying so the log stays complete."""


@attrs.define
class _Run:
    """One import, step by step: the state that lives as long as a run."""

    reconciler: Reconciler
    config: SyncConfig
    journal: Journal
    sync_state: SyncState
    confirm_hold: str | None
    mode: ReadMode = "auto"
    confirm_only: HoldScope | None = None
    read: RunRead | None = None
    errors: list[str] = attrs.field(factory=list)
    outcomes: Counter[str] = attrs.field(factory=Counter)
    # Only the removals' results: all next_sync_state reads (a first import of 100k users would
    # otherwise keep 938k results alive to the end, ~60 MB of its peak; docs/performance.md).
    removal_results: list[ChangeResult] = attrs.field(factory=list)
    unrecorded: list[AuditEvent] = attrs.field(factory=list)
    labels: dict[str, str] = attrs.field(factory=dict)
    people: Mapping[str, UserLabel] = attrs.field(factory=dict)
    existing_groups: frozenset[str] = frozenset()
    group_names: dict[str, str] = attrs.field(factory=dict)
    data_version: int | None = None
    # The state as the run opened it (with its RunningImport), and that state with the delta
    # cache this run leaves: the base of the memory saved with the last batch.
    opened: SyncState | None = None
    cache_kept: SyncState | None = None
    remembered: bool = False  # the final memory is saved (with the last batch, or on its own)
    lock_lost: bool = False
    started_recorded: bool = False
    group_users: dict[str, int] = attrs.field(factory=dict)  # users per mapped group read (the report's)

    @property
    def run_id(self) -> str:
        assert self.journal.run_id is not None
        return self.journal.run_id

    @property
    def _trust(self) -> str:
        return self.config.trust_site_id

    async def record(self, events: Sequence[AuditEvent], *, final: bool = False) -> None:
        """Record ``events``; unless they are the run's end, only while the run still holds its lock.

        A run that lost its lock (another import may be running now) logs
        nothing more but its own ``import_failed``: the check is one small
        query on a :class:`~calm_azure_sync.FencedStore`.
        """
        if not final and isinstance(self.reconciler.store, FencedStore):
            await self.reconciler.store.check_run_lock(self._trust)
        failure = await self.reconciler._record_safely(events)
        if failure is not None:
            # Retry once: a sink blip should not fail an import.
            failure = await self.reconciler._record_safely(events)
        if failure is not None:
            self.unrecorded.extend(events)
            self.errors.append(failure)
            raise _AuditSinkDown(failure)

    async def execute(self) -> ImportReport:
        reconciler = self.reconciler
        started_at = reconciler.clock()
        plan: Plan | None = None
        completed = False
        why: str | None = None
        try:
            await self._open()
            plan, snapshot = await self._read_and_plan()
            if not snapshot.members and snapshot.unreadable:
                why = "no mapped group could be read"
            await self._remember_before_apply(plan)
            await self._apply(plan, snapshot)
            if not self.remembered:
                await self._remember(plan, snapshot)
            completed = why is None
        except _AuditSinkDown:
            pass
        except asyncio.CancelledError:
            self.errors.append("import cancelled")
            await self._finish(started_at, plan, completed=False, why="the import was cancelled")
            raise
        except Exception as error:
            lost = error if isinstance(error, RunLockLostError) else await self._lost_lock(error)
            if lost is not None:
                # Another import may hold the lock now: stop, and log nothing but this run's end.
                logger.error("import %s of trust %s stopped: %s", self.run_id, self._trust, lost)
                self.lock_lost = True
                self.errors.append(str(lost))
                why = str(lost)
            else:
                logger.exception("import %s of trust %s failed", self.run_id, self._trust)
                self.errors.append(f"import failed: {_describe(error)}")
        return await self._finish(started_at, plan, completed=completed, why=why)

    async def _lost_lock(self, error: Exception) -> RunLockLostError | None:
        """After a database failure, whether it cost the run its lock (then that is what the run reports)."""
        store = self.reconciler.store
        if not isinstance(error, StoreError) or not isinstance(store, FencedStore):
            return None
        try:
            await store.check_run_lock(self._trust)
        except RunLockLostError as lost:
            return lost
        except Exception:  # the database is still failing: report the first failure
            return None
        return None

    async def _open(self) -> None:
        """Close a run that stopped without an end, mark this one running, then log its start.

        The mark is saved before ``import_started`` is recorded, so any run
        whose start is in the Import Log either records its end or leaves the
        mark for the next run to close with ``import_abandoned``.
        """
        dead = self.sync_state.running
        if dead is not None:
            await self.record([self.journal.abandoned(dead.run_id, dead.started_at)])
        started = self.journal.started(len(self.config.mappings.group_ids))
        self.sync_state = attrs.evolve(self.sync_state, running=RunningImport(self.run_id, started.at))
        try:
            await self.reconciler._state_store.save_state(self._trust, self.sync_state)
        finally:
            self.opened = self.sync_state
            # Even when the mark could not be saved, the start is logged with the end that follows.
            try:
                await self.record([started])
            except _AuditSinkDown:
                self.started_recorded = True  # handed over: in unrecorded_events
                raise
            self.started_recorded = True

    async def _read_and_plan(self) -> tuple[Plan, DirectorySnapshot]:
        reconciler = self.reconciler
        trust = self.config.trust_site_id
        self.data_version = await reconciler._data_version()  # before the store loads: see settled.py
        loading: asyncio.Future[StoreState] | None = None

        def begin_load() -> None:
            # The store loads while the directory is read: a no-change incremental run is
            # one round of requests and one store load, so overlapping them halves its wait.
            nonlocal loading
            if loading is None:
                loading = asyncio.ensure_future(reconciler.store.load(trust))

        try:
            self.read = await reconciler._reader.read_for_run(
                self.config, self.sync_state, self.mode, settled_key=self._settled_key, begin_load=begin_load
            )
        except BaseException:
            if loading is not None:
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
            raise
        if self.read.settled is not None:
            return await self._settled_plan(self.read.settled)
        snapshot = self.read.snapshot
        self.errors.extend(f"group {group_id}: {reason}" for group_id, reason in sorted(snapshot.unreadable.items()))
        begin_load()
        assert loading is not None
        state = await loading
        self.existing_groups = frozenset(state.groups)
        context = PlanContext(
            self.sync_state,
            self.confirm_hold,
            run_id=self.run_id,
            now=reconciler.clock(),
            mirror_groups=reconciler._mirrors_groups,
            confirm_only=self.confirm_only,
            site_names=reconciler._site_names(),
        )
        plan = await reconciler._build_plan(self.config, snapshot, state, context)
        self._learn_labels(plan)
        self.group_users = {group_id: len(users) for group_id, users in snapshot.members.items()}
        group_ids = sorted(self.config.mappings.group_ids)
        events = [
            self.journal.read_summary(
                self.group_users, snapshot.unreadable, group_ids, mode=self.read.mode, why=self.read.why,
                group_names=plan.group_names,
            )
        ]
        events += self.journal.read_errors(
            snapshot.unreadable, group_ids, stale=snapshot.stale, group_names=plan.group_names
        )
        events.extend(self.journal.plan_events(plan, confirmed=self.confirm_hold, scope=self.confirm_only))
        await self.record(events)
        return plan, snapshot

    async def _settled_plan(self, settled: Settled) -> tuple[Plan, DirectorySnapshot]:
        """Nothing changed since a run that planned nothing: plan nothing, and log the read and the skips as it did."""
        assert self.read is not None
        plan = Plan(
            self.config.trust_site_id, skipped=settled.skipped, users_in_scope=settled.users_in_scope,
            synced_users=settled.synced_users,
        )
        # One entry: the per-user skips were logged by the run that settled the trust; repeating
        # them every quiet run made the Import Log grow with the trust (docs/reconciler.md).
        self.group_users = dict(settled.group_users)
        summary = self.journal.read_summary(
            self.group_users, {}, sorted(self.config.mappings.group_ids), mode=self.read.mode, why=self.read.why,
            settled_by=settled.run_id, left_out=skip_counts(settled.skipped),
        )  # fmt: skip
        await self.record([summary])
        return plan, DirectorySnapshot(members={})

    def _settled_key(self, cursor: Mapping[str, Any], state: SyncState | None = None) -> str | None:
        """The key of this run's plan inputs with ``cursor`` (``None``: this run cannot be settled)."""
        state = self.sync_state if state is None else state
        if self.data_version is None or state.hold is not None or self.confirm_hold is not None:
            return None
        state = attrs.evolve(state, running=None)  # which run is open is no input of a plan
        return settled_key(
            self.config, self.reconciler.hierarchy.sites, mirror_groups=self.reconciler._mirrors_groups,
            sync_state=state, data_version=self.data_version, cursor=cursor,
            library_version=_version.__version__,
        )

    def _settles(self, plan: Plan, snapshot: DirectorySnapshot, after: SyncState) -> Settled | None:
        """The record this run leaves when it planned nothing at all (see settled.py), else ``None``."""
        read = self.read
        cursor = read.next_cursor if read is not None else None
        if read is None or cursor is None:
            return None
        if read.settled is not None:  # still settled: the same record, with the cursor moved on
            key = self._settled_key(cursor, after)
            return None if key is None else attrs.evolve(read.settled, key=key)
        quiet = not (
            plan.changes or plan.held_removals or plan.hold is not None or plan.unreadable_groups
            or snapshot.unreadable or self.errors or any(skip.conflict for skip in plan.skipped)
        )
        key = self._settled_key(cursor, after) if quiet else None
        if key is None:
            return None
        return Settled(
            key, self.run_id, plan.skipped, plan.users_in_scope, plan.synced_users,
            {group: len(users) for group, users in snapshot.members.items()},
        )

    async def _remember_before_apply(self, plan: Plan) -> None:
        """Save what must outlive a crash before anything is applied: a new hold, and the leavers.

        A hold being confirmed stays pending until its removals are applied,
        so a crash half-way leaves the rest to confirm again, never released.
        The users this plan unassigns because they left scope are remembered
        as leavers not yet deactivated (``left_scope`` ``False``) now: a
        superset of what the run will remember, so a crash after their
        unassigns landed cannot forget them (``deactivate`` mode would then
        never deactivate them).
        """
        leavers = {external_id: False for external_id in plan.left_scope if external_id not in self.sync_state.left_scope}
        hold = plan.hold if plan.hold is not None else self.sync_state.hold
        if hold == self.sync_state.hold and not leavers:
            return
        self.sync_state = attrs.evolve(self.sync_state, hold=hold, left_scope={**self.sync_state.left_scope, **leavers})
        await self.reconciler._state_store.save_state(self._trust, self.sync_state)

    def _final_memory(self, plan: Plan, snapshot: DirectorySnapshot, results: Sequence[ChangeResult]) -> SyncState:
        """What the trust remembers after this run applied ``results``: pure (a store may call it in its transaction)."""
        assert self.cache_kept is not None
        return next_sync_state(
            self.cache_kept,
            config=self.config,
            hold=plan.hold,
            member_counts={group: len(users) for group, users in snapshot.members.items()},
            in_scope=plan.in_scope_ids,
            results=results,
            left_now=plan.left_scope,
            disputed=plan.disputed_groups,
        )

    def _memory_so_far(self, results: Sequence[ChangeResult]) -> SyncState:
        """The memory while batches remain: the saved state plus the deactivations ``results`` applied (pure)."""
        return next_sync_state(
            self.sync_state, config=self.config, hold=self.sync_state.hold, member_counts={}, in_scope=(),
            results=results, left_now=(),
        )

    async def _keep_cache(self) -> None:
        """Write the delta cache this run leaves (its tables, if the store has them), before the last batch.

        The cache mirrors the directory, not the store: written before the
        last batch, a crash leaves it ahead of the store, and the next run's
        plan (a full comparison with the store) does what is missing.
        """
        assert self.opened is not None
        if self.read is None:
            self.cache_kept = self.opened
            return
        self.cache_kept = await self.reconciler._reader.keep_cache(self._trust, self.read, self.opened, None)

    async def _remember(self, plan: Plan, snapshot: DirectorySnapshot) -> None:
        """Save the final memory on its own: a run with no batch, or a store that cannot save it with one."""
        read = self.read
        if read is not None and read.settled is not None:  # nothing planned: only the cache's cursor moves
            after = self.sync_state
            after = await self.reconciler._reader.keep_cache(self._trust, read, after, self._settles(plan, snapshot, after))
        elif self.cache_kept is not None:  # the cache was written before a last batch that could not save this
            after = self._final_memory(plan, snapshot, self.removal_results)
        else:
            self.cache_kept = self.opened if self.opened is not None else self.sync_state
            after = self._final_memory(plan, snapshot, self.removal_results)
            if read is not None:
                settled = self._settles(plan, snapshot, after)
                after = await self.reconciler._reader.keep_cache(self._trust, read, after, settled)
        if after != self.sync_state:
            await self.reconciler._state_store.save_state(self._trust, after)
            self.sync_state = after
        self.remembered = True

    @property
    def _saves_state_with_changes(self) -> bool:
        store = self.reconciler.store
        return cast(object, self.reconciler._state_store) is store and saves_state_with_changes(store)

    def _memory_after_batch(
        self,
        plan: Plan,
        snapshot: DirectorySnapshot,
        skipped: Sequence[ChangeResult],
        *,
        last: bool,
        into: list[SyncState],
    ) -> Callable[[Sequence[ChangeResult]], SyncState]:
        """The pure function a store calls with a batch's results for the memory to commit with it.

        Each memory it returns is appended to ``into`` (a store may call it
        more than once, replaying a batch: the last call is what committed).
        """

        def memory_after(applied: Sequence[ChangeResult]) -> SyncState:
            results = [*self.removal_results, *applied, *skipped]
            memory = self._final_memory(plan, snapshot, results) if last else self._memory_so_far(results)
            into.append(memory)
            return memory

        return memory_after

    async def _apply(self, plan: Plan, snapshot: DirectorySnapshot) -> None:
        """Apply the plan in batches; the memory that accounts for a batch commits with it when the store can.

        On a :class:`~calm_azure_sync.StateWithChanges` store that also keeps
        the state, the last batch commits with the run's final memory, and a
        batch with a deactivation with the memory of it (so a person's later
        re-activation is never undone); other stores save it afterwards.
        """
        reconciler = self.reconciler
        total = len(plan.changes)
        done = 0
        reconciler._progress("apply", 0, total)
        failed: set[tuple[str, str]] = set()  # ("user" | "group", id) whose identity change failed
        batches = list(_batches(plan.changes, reconciler.batch_size))
        with_state = self._saves_state_with_changes
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            dependent = [change for change in batch if _depends_on(change, failed)]
            to_apply = [change for change in batch if not dependent or change not in dependent]
            # A membership of a user or group whose creation failed is not sent: it would only fail again.
            skipped = [ChangeResult(change, "not applied: its user or group failed earlier in this run")
                       for change in dependent]
            saved: list[SyncState] = []  # the memory committed with this batch, if any
            remember = with_state and to_apply and (last or any(isinstance(c, DeactivateUser) for c in to_apply))
            if remember and last:
                await self._keep_cache()
            try:
                if remember:
                    assert isinstance(reconciler.store, StateWithChanges)
                    applied: Sequence[ChangeResult] = await reconciler.store.apply_with_state(
                        self._trust, to_apply, self._memory_after_batch(plan, snapshot, skipped, last=last, into=saved)
                    )
                else:
                    applied = await reconciler.store.apply(self._trust, to_apply) if to_apply else []
                if len(applied) != len(to_apply):
                    raise RuntimeError(f"store returned {len(applied)} results for {len(to_apply)} changes")
            except RunLockLostError:
                raise  # another import may hold the lock now: nothing of the batch landed; stop
            except Exception as error:  # a StoreError too: the batch rolled back, its changes failed
                logger.warning("store.apply failed for a batch of %d changes", len(to_apply), exc_info=True)
                applied = [ChangeResult(change, _describe(error)) for change in to_apply]
                saved.clear()
            if saved:
                self.sync_state = saved[-1]
                self.remembered = last
            events = []
            for result in (*applied, *skipped):
                self._count(result, failed)
                entry = self.journal.change_entry(
                    result, self._label, self._group_label, existing_groups=self.existing_groups
                )
                if entry is not None:
                    events.append(entry)
            await self.record(events)
            done += len(batch)
            reconciler._progress("apply", done, total)

    def _count(self, result: ChangeResult, failed: set[tuple[str, str]]) -> None:
        change = result.change
        if is_removal(change):
            self.removal_results.append(result)
        if result.outcome == "applied":
            self.outcomes[change_kind(change)] += 1
            return
        self.outcomes[result.outcome] += 1
        if result.outcome == "failed":
            self.errors.append(f"{change_kind(change)} for {self._label(change.external_id)} failed: {result.error}")
            if isinstance(change, (CreateUser, LinkUser, RelinkUser)):
                failed.add(("user", change.external_id))
            elif isinstance(change, UpsertGroup):
                failed.add(("group", change.external_id))

    async def _finish(self, started_at: dt.datetime, plan: Plan | None, *, completed: bool, why: str | None) -> ImportReport:
        counts = self._counts(plan)
        ok = completed and not self.errors
        final = self.journal.finished(completed=completed, ok=ok, counts=counts, errors=self.errors, why=why)
        events = [final] if self.started_recorded else [self.journal.started(len(self.config.mappings.group_ids)), final]
        try:
            await self.record(events, final=True)
        except _AuditSinkDown:  # kept in unrecorded_events and errors, for the host to keep
            ok = False
        await self._close()
        return ImportReport(
            run_id=self.run_id,
            trust_site_id=self.config.trust_site_id,
            started_at=started_at,
            finished_at=self.reconciler.clock(),
            counts=counts,
            errors=tuple(self.errors),
            held_removals=plan.held_removals if plan else (),
            ok=completed and not self.errors,
            hold_reason=plan.hold_reason if plan else None,
            plan=plan,
            unrecorded_events=tuple(self.unrecorded),
            hold_id=plan.hold_id if plan else None,
            mode=self.read.mode if self.read else "full",
            mode_reason=self.read.why if self.read else None,
            group_users=dict(self.group_users),
        )

    async def _close(self) -> None:
        """The run's end is logged (or handed to the host in ``unrecorded_events``): clear its running mark.

        Not after a lost lock (the store refuses the write, and the next run
        may be closing this one already). If this fails, the next run closes
        this one again with ``import_abandoned``: a second end, never none.
        """
        if self.lock_lost or self.sync_state.running is None or self.sync_state.running.run_id != self.run_id:
            return
        try:
            await self.reconciler._state_store.save_state(self._trust, attrs.evolve(self.sync_state, running=None))
        except Exception:
            logger.warning("clearing the running mark of import %s failed", self.run_id, exc_info=True)

    def _learn_labels(self, plan: Plan) -> None:
        """How log messages name people: a change's new email, else the plan's label, asked for when logged.

        ``plan.people`` works labels out on demand; walking it here would build
        one for every user of a first import, most of which no message needs.
        """
        self.people = plan.people
        for change in plan.changes:
            if isinstance(change, (CreateUser, LinkUser, RelinkUser, UpdateUser)):
                self.labels[change.external_id] = change.email
        self.group_names = dict(plan.group_names)

    def _label(self, external_id: str) -> str:
        email = self.labels.get(external_id)
        if email is None:
            label = self.people.get(external_id)
            email = label.email if label is not None and label.email else external_id
        return email

    def _group_label(self, group_id: str) -> str:
        return self.group_names.get(group_id, group_id)

    def _counts(self, plan: Plan | None) -> dict[str, int]:
        kinds = [kind for kind in (plan.summary() if plan else Plan("").summary()) if kind != "conflict"]
        counts = {kind: self.outcomes.get(kind, 0) for kind in kinds}
        counts.update(skip_counts(plan.skipped if plan else ()))
        counts["unchanged"] = self.outcomes.get("unchanged", 0)
        counts["failed"] = self.outcomes.get("failed", 0)
        counts["held"] = len(plan.held_removals) if plan else 0
        return counts


def _describe(error: BaseException) -> str:
    """An error for the report and the Import Log: the library's own message, else the type and message."""
    if isinstance(error, CalmAzureSyncError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _depends_on(change: Any, failed: set[tuple[str, str]]) -> bool:
    """Whether a group membership change needs a user or group whose creation failed in this run."""
    if not failed or not isinstance(change, (AddGroupMember, RemoveGroupMember)):
        return False
    return ("group", change.group_external_id) in failed or ("user", change.external_id) in failed


def _batches(changes: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Batches of about ``size`` changes, never splitting one user's changes."""
    batch: list[Any] = []
    for change in changes:
        if len(batch) >= size and batch[-1].external_id != change.external_id:
            yield batch
            batch = []
        batch.append(change)
    if batch:
        yield batch
