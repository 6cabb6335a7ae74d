"""How a run plans: everyone, or by difference (from the whole delta cache, or from part of it).

:func:`plan_run` is the planning step of :class:`~calm_azure_sync._import_run._Run`:
it plans everyone from the whole store, or, when the last run's record
allows it (:mod:`calm_azure_sync.incremental.difference`), only the people
the round touched and whoever shares an email with them. A round read from
part of the cache (:mod:`calm_azure_sync.incremental.partial`) brings its
own narrowing; the snapshot of the people planned is then built from the
cache rows loaded as the search names them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import attrs

from ._store_load import StoreLoad
from .core.plan import Plan
from .core.planner import DirectorySnapshot, PlanContext
from .incremental.difference import Narrowing, narrowing_for, narrowing_from, plan_inputs

if TYPE_CHECKING:
    from ._import_run import _Run

__all__ = ["plan_run"]


async def plan_run(run: _Run, snapshot: DirectorySnapshot, loads: StoreLoad) -> tuple[Plan, DirectorySnapshot]:
    """The run's plan, and the snapshot it was planned from (some people's, when read from part of the cache)."""
    reconciler = run.reconciler
    read = run.read
    assert read is not None
    context = PlanContext(
        run.sync_state, run.confirm_hold, run_id=run.run_id, now=reconciler.clock(),
        mirror_groups=reconciler._mirrors_groups, confirm_only=run.confirm_only, site_names=reconciler._site_names(),
    )  # fmt: skip
    record = run.last_record if read.narrowable else None  # the reader decided whether it stands for this run
    if read.part is not None:  # read from part of the cache: its snapshot is empty, so only by difference
        assert record is not None, "a round read from part of the cache is always narrowable"
        narrowing: Narrowing | None = narrowing_from(read.part, record)
    else:
        narrowing = narrowing_for(read.folded, record, run.config, snapshot)
    if narrowing is not None:
        return await _plan_some(run, narrowing, snapshot, context, loads, read.sizes)
    state = await loads.whole()
    run.existing_groups = frozenset(state.groups)
    return await reconciler._build_plan(run.config, snapshot, state, context), snapshot


async def _plan_some(
    run: _Run, narrowing: Narrowing, snapshot: DirectorySnapshot, context: PlanContext, loads: StoreLoad,
    sizes: Mapping[str, int] | None,
) -> tuple[Plan, DirectorySnapshot]:
    """Plan by difference: the people the round touched and whoever shares an email with them."""
    search = narrowing.search()
    part = narrowing.part
    reader = run.reconciler._reader(run.config)

    async def learn(people: Iterable[str]) -> None:
        """The cache rows of people the search named since (a round read from part of the cache)."""
        assert part is not None
        unknown = part.unknown(people)
        if unknown:
            rows = await reader.cache_rows(run.config.trust_site_id, unknown)
            part.learn(rows, unknown)
            search.known(rows.users)

    rows = await loads.people(search, None if part is None else learn)
    people = search.slice
    if part is not None:
        snapshot = part.snapshot(people.external_ids)
    some, narrowed, figures = plan_inputs(people, snapshot, rows, sizes)
    run.existing_groups = frozenset(rows.state.groups)
    context = attrs.evolve(context, figures=figures)
    plan = await run.reconciler._build_plan(run.config, some, narrowed, context, names_from=snapshot)
    run.people_planned = len(people.external_ids)
    return narrowing.merged(plan, people), snapshot
