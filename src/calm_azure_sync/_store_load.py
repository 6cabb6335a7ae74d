"""How a run reads the store: the whole trust while the directory is read, or only some people's rows.

A run that plans everyone loads the whole trust, started while the
directory is read so the two waits overlap. A run that plans by difference
(:mod:`calm_azure_sync.incremental.difference`) loads only the rows of the
people its search names, round by round, from a
:class:`~calm_azure_sync.PeopleStore`; from any other store it loads the
whole trust and narrows it in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import attrs

from .incremental.difference import PeopleSearch
from .store.protocol import PeopleIndex, PeopleRows, PeopleStore, StoreState, UserStore

__all__ = ["StoreLoad"]


@attrs.define
class StoreLoad:
    """One run's reads of the store."""

    store: UserStore
    trust_site_id: str
    loading: asyncio.Future[StoreState] | None = None

    def begin(self, narrowable: bool = False) -> None:
        """Start loading the whole trust (the reader calls this once it is clear the run plans).

        ``narrowable``: the run may plan by difference, so a
        :class:`~calm_azure_sync.PeopleStore` is not loaded whole (only the
        rows of the people its search names, by :meth:`people`).
        """
        if self.loading is not None:
            return
        if narrowable and isinstance(self.store, PeopleStore):
            return
        self.loading = asyncio.ensure_future(self.store.load(self.trust_site_id))

    async def cancel(self) -> None:
        """The read failed: stop the whole load, if one started."""
        if self.loading is not None:
            self.loading.cancel()
            await asyncio.gather(self.loading, return_exceptions=True)

    async def whole(self) -> StoreState:
        """The whole trust's state."""
        self.begin()
        assert self.loading is not None
        return await self.loading

    async def people(
        self, search: PeopleSearch, learn: Callable[[Iterable[str]], Awaitable[None]] | None = None
    ) -> PeopleRows:
        """The rows of everyone ``search`` ends up naming, loaded round by round until it names no one new.

        ``learn(people)``: called before each round with everyone named so
        far, to load what else the search needs of them (their cache rows,
        when the round was read from part of the cache).
        """
        store = self.store
        index = None
        if self.loading is not None or not isinstance(store, PeopleStore):
            index = PeopleIndex(await self.whole())
        rows: PeopleRows | None = None
        while True:
            if learn is not None:
                await learn(search.people)
            if (asked := search.wanted()) is None:
                break
            if index is not None:
                rows = index.rows(*asked)
            else:
                assert isinstance(store, PeopleStore)
                rows = await store.load_people(self.trust_site_id, *asked)
            search.found(rows.state)
        assert rows is not None  # the first round always asks
        return rows
