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
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import attrs

from .audit.events import AuditEvent, utc_now
from .audit.protocol import AuditSink
from .autodetect import Suggestions
from .check import ConfigProblem, config_problems
from .config import SyncConfig
from .directory.protocol import Directory
from .errors import (
    ChildSiteConfigurationError,
    ConfigError,
    HoldMismatchError,
    ImportAlreadyRunningError,
    NotAuthorizedError,
)
from .exclusion import ExclusionPolicy
from .guards import next_sync_state
from .hierarchy import Actor, TrustHierarchy, authorize
from .incremental import ReadMode
from .journal import Journal, RefusalReason
from .model import DirectoryGroup, DirectoryUser, Site
from .plan import (
    AddGroupMember,
    CreateUser,
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
from .reading import DirectoryReader, RunRead
from .report import ImportReport
from .review import skip_counts
from .settled import Settled, settled_key
from .state import Hold, SyncState, SyncStateStore
from .store.protocol import ChangeResult, StoreState, UserStore, VersionedStore

__all__ = ["ImportReport", "ProgressCallback", "Reconciler"]

logger = logging.getLogger("calm_azure_sync")


class ProgressCallback(Protocol):
    """Called as ``progress(stage, done, total)``; ``stage`` is "read", "plan" or "apply"."""

    def __call__(self, stage: str, done: int, total: int | None) -> None: ...


def _positive(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ConfigError(f"{attribute.name}: must be at least 1, got {value!r}")


def _refusal_reason(error: BaseException) -> RefusalReason:
    if isinstance(error, ChildSiteConfigurationError):
        return "child_site"
    if isinstance(error, NotAuthorizedError):
        return "not_authorized"
    if isinstance(error, ImportAlreadyRunningError):
        return "already_running"
    if isinstance(error, HoldMismatchError):
        return "hold_mismatch"
    if isinstance(error, ConfigError) and any(problem.startswith("tenant_id:") for problem in error.problems):
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

    async def suggest_exclusions(self, config: SyncConfig, *, actor: Actor) -> Suggestions:
        """Auto-detect for the Exclusions tab: system accounts the next import would bring in.

        Checked like :meth:`plan` (the actor, the configuration, the tenant),
        then the mapped groups are read and :meth:`ExclusionPolicy.suggest` runs
        over their members, keeping only users the sync would import now.
        """
        self._admit(config, actor)
        snapshot = await self._read(config)
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

    # ------------------------------------------------------------------ plan / run

    async def plan(self, config: SyncConfig, *, actor: Actor, confirm_hold: str | None = None) -> Plan:
        """What :meth:`run` would do now. Writes nothing; the Import Log gets only ``discovery``."""
        self._admit(config, actor)
        snapshot = await self._read(config)
        journal = self._journal(config.trust_site_id, actor)
        members = {group_id: len(users) for group_id, users in snapshot.members.items()}
        await self._record_safely(
            [journal.read_summary(members, snapshot.unreadable, sorted(config.mappings.group_ids))]
        )
        sync_state = await self._state_store.load_state(config.trust_site_id)
        state = await self.store.load(config.trust_site_id)
        context = PlanContext(
            sync_state, confirm_hold, run_id="preview", now=self.clock(), mirror_groups=self._mirrors_groups
        )
        return await self._build_plan(config, snapshot, state, context)

    async def run(
        self, config: SyncConfig, *, actor: Actor, confirm_hold: str | None = None, mode: ReadMode = "auto"
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
        """
        journal = Journal(
            config.trust_site_id if isinstance(config, SyncConfig) else "?", self.clock, uuid.uuid4().hex,
            actor.user_id if isinstance(actor, Actor) else None,
        )
        try:
            if mode not in ("full", "incremental", "auto"):
                raise ConfigError(f"mode: {mode!r:.40} is not one of full, incremental, auto")
            self._admit(config, actor)
            lock = self.store.run_lock(config.trust_site_id)
            await lock.__aenter__()
        except (NotAuthorizedError, ConfigError, ImportAlreadyRunningError) as error:
            await self._record_safely([journal.refused(_refusal_reason(error), error)])
            raise
        report: ImportReport | None = None
        try:
            sync_state = await self._load_state_or_refuse(config, confirm_hold, journal)
            report = await _Run(self, config, journal, sync_state, confirm_hold, mode).execute()
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
        """A trust connected to a tenant is only ever synced from that tenant.

        A directory that cannot say which tenant it reads is refused too: the
        check must not pass just because the answer is unknown.
        """
        if not config.tenant_id:
            return
        directory_tenant = getattr(self.directory, "tenant_id", None)
        if not directory_tenant:
            raise ConfigError(
                f"tenant_id: trust {config.trust_site_id!r} is connected to tenant {config.tenant_id!r}, "
                "but the directory does not say which tenant it reads; pass tenant_id to the directory"
            )
        if config.tenant_id.lower() != str(directory_tenant).lower():
            raise ConfigError(
                f"tenant_id: trust {config.trust_site_id!r} is connected to tenant {config.tenant_id!r}, "
                f"but the directory reads tenant {directory_tenant!r}; refusing to sync another organisation"
            )

    async def _load_state_or_refuse(self, config: SyncConfig, confirm_hold: str | None, journal: Journal) -> SyncState:
        try:
            sync_state = await self._state_store.load_state(config.trust_site_id)
            pending = sync_state.hold
            if confirm_hold is not None and (pending is None or pending.id != confirm_hold):
                raise HoldMismatchError(confirm_hold, pending.id if pending is not None else None)
        except ConfigError as error:
            reason = _refusal_reason(error) if isinstance(error, HoldMismatchError) else "unreadable_state"
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
        return plan

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
        return Journal(trust_site_id, self.clock, run_id, actor.user_id)

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
    group_users: dict[str, int] = attrs.field(factory=dict)  # users per mapped group read (the report's)

    @property
    def run_id(self) -> str:
        assert self.journal.run_id is not None
        return self.journal.run_id

    async def record(self, events: Sequence[AuditEvent]) -> None:
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
            await self.record([self.journal.started(len(self.config.mappings.group_ids))])
            plan, snapshot = await self._read_and_plan()
            if not snapshot.members and snapshot.unreadable:
                why = "no mapped group could be read"
            await self._remember_hold(plan)
            await self._apply(plan)
            await self._remember(plan, snapshot)
            completed = why is None
        except _AuditSinkDown:
            pass
        except asyncio.CancelledError:
            self.errors.append("import cancelled")
            await self._finish(started_at, plan, completed=False, why="the import was cancelled")
            raise
        except Exception as error:
            logger.exception("import %s of trust %s failed", self.run_id, self.config.trust_site_id)
            self.errors.append(f"import failed: {type(error).__name__}: {error}")
        return await self._finish(started_at, plan, completed=completed, why=why)

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
        )
        plan = await reconciler._build_plan(self.config, snapshot, state, context)
        self._learn_labels(plan)
        self.group_users = {group_id: len(users) for group_id, users in snapshot.members.items()}
        group_ids = sorted(self.config.mappings.group_ids)
        events = [
            self.journal.read_summary(
                self.group_users, snapshot.unreadable, group_ids, mode=self.read.mode, why=self.read.why
            )
        ]
        events += self.journal.read_errors(snapshot.unreadable, group_ids, stale=snapshot.stale)
        events.extend(self.journal.plan_events(plan, confirmed=self.confirm_hold))
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
        return settled_key(
            self.config, self.reconciler.hierarchy.sites, mirror_groups=self.reconciler._mirrors_groups,
            sync_state=state, data_version=self.data_version, cursor=cursor,
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

    async def _remember_hold(self, plan: Plan) -> None:
        """Save a new or changed hold before anything is applied: a crash must not forget it.

        A hold being confirmed stays pending until its removals are applied,
        so a crash half-way leaves the rest to confirm again, never released.
        """
        if plan.hold is None or plan.hold == self.sync_state.hold:
            return
        self.sync_state = attrs.evolve(self.sync_state, hold=plan.hold)
        await self.reconciler._state_store.save_state(self.config.trust_site_id, self.sync_state)

    async def _remember(self, plan: Plan, snapshot: DirectorySnapshot) -> None:
        settled_run = self.read is not None and self.read.settled is not None
        after = self.sync_state if settled_run else next_sync_state(
            self.sync_state,
            config=self.config,
            hold=plan.hold,
            member_counts={group: len(users) for group, users in snapshot.members.items()},
            in_scope=plan.in_scope_ids,
            results=self.removal_results,
            left_now=plan.left_scope,
            disputed=plan.held_groups if plan.held_removals else (),
        )
        if self.read is not None:
            settled = self._settles(plan, snapshot, after)
            after = await self.reconciler._reader.keep_cache(self.config.trust_site_id, self.read, after, settled)
        if after != self.sync_state:
            await self.reconciler._state_store.save_state(self.config.trust_site_id, after)
            self.sync_state = after

    async def _apply(self, plan: Plan) -> None:
        reconciler = self.reconciler
        total = len(plan.changes)
        done = 0
        reconciler._progress("apply", 0, total)
        failed: set[tuple[str, str]] = set()  # ("user" | "group", id) whose identity change failed
        for batch in _batches(plan.changes, reconciler.batch_size):
            dependent = [change for change in batch if _depends_on(change, failed)]
            to_apply = [change for change in batch if not dependent or change not in dependent]
            try:
                applied: Sequence[ChangeResult] = (
                    await reconciler.store.apply(self.config.trust_site_id, to_apply) if to_apply else []
                )
                if len(applied) != len(to_apply):
                    raise RuntimeError(f"store returned {len(applied)} results for {len(to_apply)} changes")
            except Exception as error:
                logger.warning("store.apply failed for a batch of %d changes", len(to_apply), exc_info=True)
                applied = [ChangeResult(change, f"{type(error).__name__}: {error}") for change in to_apply]
            # A membership of a user or group whose creation failed is not sent: it would only fail again.
            skipped = [ChangeResult(change, "not applied: its user or group failed earlier in this run")
                       for change in dependent]
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
        try:
            await self.record([final])
        except _AuditSinkDown:  # kept in unrecorded_events and errors
            ok = False
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
