"""Start Import: the IO edge around the pure planner.

A run reads as its steps: authorize -> lock -> load the sync state -> read the
directory -> load the store -> plan -> record -> remember the hold -> apply ->
record -> remember the rest. The rules live elsewhere: who is in scope and what
changes in :mod:`~calm_azure_sync.core.planner`, what is held in
:mod:`~calm_azure_sync.core.guards`, what the Import Log says in
:mod:`~calm_azure_sync.core.journal`.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import attrs

from . import _trust_views
from ._import_run import _Run
from ._trust_views import STATUS_ERROR_ENTRIES as STATUS_ERROR_ENTRIES
from ._trust_views import STATUS_RUN_ENTRIES as STATUS_RUN_ENTRIES
from .audit.events import AuditEvent, utc_now
from .audit.protocol import AuditSink
from .core._plan_names import KnownNames
from .core.journal import Journal, RefusalReason
from .core.plan import Plan
from .core.planner import DirectorySnapshot, PlanContext, build_plan, skip_reason
from .core.state import Hold, HoldScope, SyncState, SyncStateStore
from .directory._deadline import interactive_call
from .directory.protocol import Directory, GroupDiscovery, UserLookup
from .directory.tenants import directory_for_listing, directory_for_trust
from .errors import (
    ChildSiteConfigurationError,
    ConfigError,
    DirectoryError,
    HoldMismatchError,
    ImportAlreadyRunningError,
    NotAuthorizedError,
    StoreError,
    TenantMismatchError,
)
from .incremental import ReadMode
from .incremental.reader import DirectoryReader
from .model import DirectoryGroup, DirectoryUser, Site
from .policies.autodetect import Suggestions
from .policies.check import ConfigProblem, config_problems
from .policies.config import SyncConfig
from .policies.exclusion import ExclusionPolicy
from .policies.hierarchy import Actor, TrustHierarchy, authorize
from .review.explain import Explanation
from .review.report import ImportReport
from .review.status import Attention, SyncStatus
from .store.protocol import StoreState, UserStore, VersionedStore

__all__ = ["AttentionCallback", "ImportReport", "ProgressCallback", "Reconciler"]

logger = logging.getLogger("calm_azure_sync")


class ProgressCallback(Protocol):
    """Called as ``progress(stage, done, total)``; ``stage`` is "read", "plan" or "apply"."""

    def __call__(self, stage: str, done: int, total: int | None) -> None: ...


AttentionCallback = Callable[[Sequence[Attention]], Any]
"""Called as ``on_attention(items)`` at the end of a run with what is new; may be a coroutine function."""


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


def _tenant_words(config: object) -> dict[str, Any]:
    """The Journal's tenant settings for a trust with several tenants (its groups' tenants, their names)."""
    if not isinstance(config, SyncConfig) or len(config.tenant_ids) <= 1:
        return {}
    return {"tenant_of": config.tenant_of, "tenant_label": config.tenant_label}


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

    ``directory`` is one :class:`~calm_azure_sync.Directory`, or a mapping of
    tenant id to ``Directory`` for trusts with several tenants (API §13): each
    run reads its own trust's tenants, each directory checked against its key.

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

    directory: Directory | Mapping[str, Directory]
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
    async def discover(
        self, site_id: str, *, actor: Actor, search: str | None = None, tenant_ids: Iterable[str] | None = None
    ) -> list[DirectoryGroup]:
        """List the directory's groups for the Group Mapping screen, and log the discovery.

        ``search``, when given, narrows the list by display name on the
        directory's side (Graph ``$search``), for tenants with many groups.
        ``tenant_ids``: the trust's tenants, required when the reconciler was
        given several directories (API §13), so an admin sees only their own
        trust's groups; each group says its ``tenant_id``.
        """
        trust = self._authorize(site_id, actor)
        directory = directory_for_listing(self.directory, trust.id, tenant_ids)
        if not search:
            listed = await directory.list_groups()
        elif isinstance(directory, GroupDiscovery):
            listed = await directory.list_groups(search=search)
        else:
            raise ConfigError(
                f"search: {type(directory).__name__} cannot search groups (it is no GroupDiscovery directory)"
            )
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
        # A configuration found wrong still lists its own tenants' groups (those with a directory), no other's.
        directory = (
            directory_for_listing(self.directory, trust.id, config.tenant_ids or None, lenient=True)
            if invalid else self._directory_for(config)
        )
        # A trust with several tenants: a group counts only in the tenant its mapping names.
        groups = [
            group for group in await directory.list_groups()
            if group.tenant_id is None or config.tenant_of(group.id) in (None, group.tenant_id)
        ]
        existing = {group.id for group in groups}
        discovery = directory if isinstance(directory, GroupDiscovery) else None
        member_counts: dict[str, int] = {}
        for group_id in sorted(config.mappings.group_ids & existing):
            if discovery is not None:
                member_counts[group_id] = await discovery.group_member_count(group_id)
            else:
                member_counts[group_id] = len(await directory.group_members(group_id))
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
        :mod:`calm_azure_sync.review.explain_read`: a few requests, whatever the
        tenant's size), the store and the trust's sync state. Writes nothing
        and logs nothing. See :class:`~calm_azure_sync.Explanation`.
        """
        self._admit(config, actor)
        return await _trust_views.explain(self, config, who)

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
        return await _trust_views.status(self, trust.id, trust.name or trust.id)

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
            **_tenant_words(config),
        )
        lock = await self._lock_or_refuse(config, actor, journal, callback, mode, confirm_hold, confirm_only)
        report: ImportReport | None = None
        try:
            runner = await self._start(config, journal, callback, confirm_hold, mode, confirm_only)
            hold_before = runner.sync_state.hold
            report = await runner.execute()
        finally:
            report = await self._unlock(lock, config.trust_site_id, report)
        assert report is not None
        if callback is not None:
            await _trust_views.tell(
                callback, await _trust_views.attention_after(self, report, hold_before, runner.sync_state.hold)
            )
        return report

    async def _lock_or_refuse(
        self,
        config: SyncConfig,
        actor: Actor,
        journal: Journal,
        callback: AttentionCallback | None,
        mode: ReadMode,
        confirm_hold: str | None,
        confirm_only: HoldScope | None,
    ) -> AbstractAsyncContextManager[None]:
        """The checks before a run starts, then the trust's run lock, held; a refusal is logged, told and raised."""
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
            await _trust_views.tell_refusal(self, callback, journal.trust_site_id, reason, error)
            raise
        return lock

    async def _start(
        self,
        config: SyncConfig,
        journal: Journal,
        callback: AttentionCallback | None,
        confirm_hold: str | None,
        mode: ReadMode,
        confirm_only: HoldScope | None,
    ) -> _Run:
        """Under the lock: the trust's sync state loaded (or the run refused), and the run that starts from it."""
        try:
            sync_state = await self._load_state_or_refuse(config, confirm_hold, journal)
        except ConfigError as error:
            reason = _refusal_reason(error) if isinstance(error, HoldMismatchError) else "unreadable_state"
            await _trust_views.tell_refusal(self, callback, journal.trust_site_id, reason, error)
            raise
        return _Run(self, config, journal, sync_state, confirm_hold, mode, confirm_only)

    async def _unlock(
        self, lock: AbstractAsyncContextManager[None], trust_site_id: str, report: ImportReport | None
    ) -> ImportReport | None:
        """Release the run lock; the import is over, so a failure is in the report (if any), never raised."""
        try:
            await lock.__aexit__(None, None, None)
        except Exception as error:
            logger.warning("releasing the run lock of %s failed", trust_site_id, exc_info=True)
            if report is not None:
                report = attrs.evolve(
                    report,
                    errors=(*report.errors, f"releasing the run lock failed: {type(error).__name__}: {error}"),
                    ok=False,
                )
        return report

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
        """A trust is only ever synced from its own tenants (see :meth:`_directory_for`)."""
        self._directory_for(config)

    def _directory_for(self, config: SyncConfig | None) -> Directory:
        """The directory a trust's run reads (``None``: every directory given, for listings); see :func:`directory_for_trust`."""
        return directory_for_trust(self.directory, config)

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

    def _reader(self, config: SyncConfig | None) -> DirectoryReader:
        """The run's reader: of ``config``'s directory (``None``: for the delta cache only, no directory read)."""
        return DirectoryReader(
            self._directory_for(config), self._state_store, self.max_concurrent_reads, self.clock, self.full_resync_interval,
            self._progress,
        )

    async def _read(self, config: SyncConfig) -> DirectorySnapshot:
        """Read every mapped group in full (see :meth:`DirectoryReader.read_all`)."""
        return await self._reader(config).read_all(config)

    async def _build_plan(
        self, config: SyncConfig, snapshot: DirectorySnapshot, state: StoreState, context: PlanContext,
        *, names_from: DirectorySnapshot | None = None,
    ) -> Plan:
        """Plan; when an email conflict could be settled by asking the directory, ask and plan again.

        ``names_from``: the whole read when the plan covers some people only
        (reviews name anyone the run read by name).
        """
        self._progress("plan", 0, 1)
        plan = build_plan(config, snapshot, state, context)
        directory = self._directory_for(config)
        if plan.lookups_needed and isinstance(directory, UserLookup):
            try:
                found: Mapping[str, DirectoryUser | None] = await directory.lookup_users(
                    sorted(plan.lookups_needed)
                )
            except Exception:  # the conflicts stay conflicts: safe, and reported
                logger.warning("looking up %d conflicting users failed", len(plan.lookups_needed), exc_info=True)
            else:
                plan = build_plan(config, snapshot, state, attrs.evolve(context, lookups=found))
        self._progress("plan", 1, 1)
        # Reviews name sites by Site.name, and anyone the run knows by name (not only those it changes).
        read = snapshot if names_from is None else names_from
        return attrs.evolve(plan, site_names=self._site_names(), people=KnownNames(plan.people, read.members, state))

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
