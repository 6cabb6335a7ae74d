"""One way to close: ``aclose()`` and ``async with`` on every shipped store, sink and directory."""

from __future__ import annotations

from typing import Self

__all__ = ["AsyncClosing"]


class AsyncClosing:
    """``async with thing:`` closes ``thing`` with ``await thing.aclose()`` on the way out.

    A class that holds a resource (a database connection, a pool, an HTTP
    client) overrides :meth:`aclose`; one that holds nothing keeps this
    no-op, so host code can close every store, sink and directory alike.
    ``aclose()`` may be called more than once.
    """

    __slots__ = ()

    async def aclose(self) -> None:
        """Release what this object holds (here: nothing). Safe to call again."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
