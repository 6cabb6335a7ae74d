"""Closing whatever a conformance suite was given to test."""

from __future__ import annotations

import inspect

__all__ = ["close_if_closable"]


async def close_if_closable(resource: object) -> None:
    """Call ``resource.aclose()`` or ``resource.close()`` (awaiting it if needed), when it has one."""
    for name in ("aclose", "close"):
        close = getattr(resource, name, None)
        if callable(close):
            outcome = close()
            if inspect.isawaitable(outcome):
                await outcome
            return
