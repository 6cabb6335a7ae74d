"""One import, step by step: the state that lives as long as a run.

:meth:`Reconciler.run <calm_azure_sync.Reconciler.run>` authorizes, refuses
and takes the lock; :class:`_Run` does the rest: open the run (close an
abandoned one, mark this one running, log the start) -> read and plan ->
remember what must outlive a crash -> apply in batches, the memory committed
with them when the store can -> remember the rest -> log the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs

from . import _version
from ._batches import batches as _batches
from ._batches import depends_on as _depends_on
from ._run_plan import plan_run
from ._store_load import StoreLoad
from .audit.events import AuditEvent
from .core.guards import next_sync_state
from .core.journal import Journal, skips_to_remember
from .core.plan import (
    CreateUser,
    DeactivateUser,
    LinkUser,
    Plan,
    RelinkUser,
    UpdateUser,
    UpsertGroup,
    UserLabel,
    change_kind,
    is_removal,
    skip_counts,
)
from .core.planner import DirectorySnapshot
from .core.state import HoldScope, RunningImport, SyncState
from .errors import CalmAzureSyncError, RunLockLostError, StoreError
from .incremental import ReadMode
from .incremental.difference import may_narrow
from .incremental.reader import RunRead
from .incremental.settled import Settled, leaves_no_question, run_key, settled_record, without_settled
from .policies.config import SyncConfig
from .review.report import ImportReport
from .store.protocol import ChangeResult, FencedStore, StateWithChanges, saves_state_with_changes

if TYPE_CHECKING:
    from .reconciler import Reconciler

logger = logging.getLogger("calm_azure_sync")


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
    people_planned: int | None = None  # planned by difference: how many people (None: everyone)
    last_record: Settled | None = None  # what the last run left (incremental/settled.py), read once
    written: int = 0  # batches sent to the store and answered: each moved a VersionedStore's data version once
    applied_all: bool = True  # every change so far was applied (else the run leaves no record of the store)

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
                why = _describe(error)  # the end entry says "Import failed: <why>"
                self.errors.append(f"import failed: {why}")
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
        self.data_version = await reconciler._data_version()  # before the store loads: see settled.py
        self.last_record = Settled.from_state(self.sync_state)
        loads = StoreLoad(reconciler.store, self._trust)  # no whole load when the run may plan by difference
        try:
            self.read = await reconciler._reader(self.config).read_for_run(
                self.config, self.sync_state, self.mode, last_record=self.last_record, settled_key=self._settled_key,
                begin_load=loads.begin, may_narrow=lambda key: may_narrow(self.last_record, key, self.config),
            )
        except BaseException:
            await loads.cancel()
            raise
        if self.read.settled is not None:
            return await self._settled_plan(self.read.settled)
        snapshot = self.read.snapshot
        self.errors.extend(f"group {group_id}: {reason}" for group_id, reason in sorted(snapshot.unreadable.items()))
        plan, snapshot = await plan_run(self, snapshot, loads)
        self._name_tenants(plan)
        self._learn_labels(plan)
        self.group_users = self._sizes(snapshot)
        group_ids = sorted(self.config.mappings.group_ids)
        events = [
            self.journal.read_summary(
                self.group_users, snapshot.unreadable, group_ids, mode=self.read.mode, why=self.read.why,
                group_names=plan.group_names, people_planned=self.people_planned,
            )
        ]
        events += self.journal.read_errors(
            snapshot.unreadable, group_ids, stale=snapshot.stale, group_names=plan.group_names
        )
        events += self.journal.plan_events(
            plan, confirmed=self.confirm_hold, scope=self.confirm_only, skips_logged=self.sync_state.skips_logged
        )
        # The hold is saved before the Import Log says so: a crash in between must not leave a hold
        # announced that no later run knows of (its removals would then be planned afresh).
        await self._remember_before_apply(plan)
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

    def _sizes(self, snapshot: DirectorySnapshot) -> dict[str, int]:
        """Users per mapped group read: the read's own count when it read part of the cache, else the snapshot's."""
        sizes = self.read.sizes if self.read is not None else None
        return dict(sizes) if sizes is not None else {group: len(users) for group, users in snapshot.members.items()}

    def _settled_key(
        self, cursor: Mapping[str, Any], state: SyncState | None = None, *, writes: int = 0
    ) -> str | None:
        """The key of this run's plan inputs with ``cursor`` (``None``: this run cannot be settled).

        ``writes``: the batches this run wrote, each of which moved the
        store's data version once (the key of the store as the run leaves it).
        """
        return run_key(
            self.config, self.reconciler.hierarchy.sites, mirror_groups=self.reconciler._mirrors_groups,
            sync_state=self.sync_state if state is None else state, confirming=self.confirm_hold is not None,
            data_version=None if self.data_version is None else self.data_version + writes,
            cursor=cursor, library_version=_version.__version__,
        )

    def _record(
        self, plan: Plan, snapshot: DirectorySnapshot, after: SyncState, *, writes: int, applied_all: bool
    ) -> Settled | None:
        """The record this run leaves for the next (incremental/settled.py, difference.py), else ``None``.

        Only after an incremental read, whose snapshot is the cache it
        leaves (a full read's cache is seeded by a round after it, which
        may already see more), and only when every planned change was applied.
        """
        read = self.read
        cursor = read.next_cursor if read is not None else None
        if read is None or cursor is None or read.mode != "incremental":
            return None
        if read.settled is not None:  # still settled: the same record, with the cursor moved on
            key = self._settled_key(cursor, after)
            return None if key is None else attrs.evolve(read.settled, key=key)
        if not leaves_no_question(plan, snapshot, errors=bool(self.errors)) or not applied_all:
            return None
        key = self._settled_key(cursor, after, writes=writes)
        return None if key is None else settled_record(key, self.run_id, plan, self._sizes(snapshot), quiet=not plan.changes)

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

    def _final_memory(
        self, plan: Plan, snapshot: DirectorySnapshot, results: Sequence[ChangeResult], *, last: Sequence[ChangeResult] = ()
    ) -> SyncState:
        """What the trust remembers after this run applied ``results``, with the record it leaves.

        Pure (a store may call it in its transaction); ``last``: the results
        of the batch being committed with it, if any.
        """
        after, record = self._memory_and_record(plan, snapshot, results, last)
        return after if record is None else record.kept_in(after)

    def _memory_and_record(
        self, plan: Plan, snapshot: DirectorySnapshot, results: Sequence[ChangeResult], last: Sequence[ChangeResult] = ()
    ) -> tuple[SyncState, Settled | None]:
        """The final memory without any record in it (never the last run's), and the record this run leaves (pure)."""
        assert self.cache_kept is not None
        after = next_sync_state(
            self.cache_kept,
            config=self.config,
            hold=plan.hold,
            member_counts=self._sizes(snapshot),
            in_scope=plan.in_scope_ids,
            results=results,
            left_now=plan.left_scope,
            disputed=plan.disputed_groups,
            skips_logged=skips_to_remember(plan.skipped),  # what plan_events told
        )
        after = without_settled(after)
        applied_all = self.applied_all and all(result.outcome == "applied" for result in last)
        return after, self._record(plan, snapshot, after, writes=self.written + bool(last), applied_all=applied_all)

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
        self.cache_kept = await self.reconciler._reader(self.config).keep_cache(self._trust, self.read, self.opened, None)

    async def _remember(self, plan: Plan, snapshot: DirectorySnapshot) -> None:
        """Save the final memory on its own: a run with no batch, or a store that cannot save it with one."""
        read = self.read
        if read is not None and read.settled is not None:  # nothing planned: only the cache's cursor moves
            after = self.sync_state
            record = self._record(plan, snapshot, after, writes=0, applied_all=True)
            after = await self.reconciler._reader(self.config).keep_cache(self._trust, read, after, record)
        elif self.cache_kept is not None:  # the cache was written before a last batch that could not save this
            after = self._final_memory(plan, snapshot, self.removal_results)
        else:
            self.cache_kept = self.opened if self.opened is not None else self.sync_state
            after, record = self._memory_and_record(plan, snapshot, self.removal_results)
            if read is not None:  # the cache's write leaves this run's record with it
                after = await self.reconciler._reader(self.config).keep_cache(self._trust, read, after, record)
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
            memory = self._final_memory(plan, snapshot, results, last=[*applied, *skipped]) if last else self._memory_so_far(results)
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
            self.written += bool(to_apply)  # a batch that failed leaves applied_all false: no record
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
        self.applied_all = False
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
        # A sink that is down puts its failure in errors (so the report is not ok), the events in unrecorded_events.
        with contextlib.suppress(_AuditSinkDown):
            await self.record(events, final=True)
        await self._close()
        return ImportReport(
            run_id=self.run_id,
            trust_site_id=self.config.trust_site_id,
            started_at=started_at,
            finished_at=self.reconciler.clock(),
            counts=counts,
            errors=tuple(self.errors),
            held_removals=plan.held_removals if plan else (),
            ok=completed and not self.errors,  # errors the end's record or the unlock added count too
            hold_reason=plan.hold_reason if plan else None,
            plan=plan,
            unrecorded_events=tuple(self.unrecorded),
            hold_id=plan.hold_id if plan else None,
            mode=self.read.mode if self.read else "full",
            mode_reason=self.read.why if self.read else None,
            group_users=dict(self.group_users),
            people_planned=self.people_planned,
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

    def _name_tenants(self, plan: Plan) -> None:
        """A trust with several tenants: the Import Log names each account's tenant from here on (API §13)."""
        if plan.tenants:
            by_group = self.config.tenant_of
            self.journal = attrs.evolve(
                self.journal, tenant_of=lambda subject: plan.tenants.get(subject) or by_group(subject)
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


def _describe(error: BaseException) -> str:
    """An error for the report and the Import Log: the library's own message, else the type and message."""
    if isinstance(error, CalmAzureSyncError):
        return str(error)
    return f"{type(error).__name__}: {error}"
