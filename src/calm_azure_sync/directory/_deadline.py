"""The interactive deadline: how long a screen waits for Microsoft Graph to answer one request.

A click on the Group Mapping screen (``Reconciler.discover``, ``check``,
``suggest_exclusions``; ``explain`` too) must not sit through the patient
retries of a scheduled run (six attempts, about 23 s, when Graph is
unreachable). The reconciler opens :func:`answer_within` around such a call;
every Graph request made inside it, retries included, must then be answered
within the deadline or the call fails with
``DirectoryError(code="timeout")``. Once one request timed out, the others
of the same call fail at once: Graph is unreachable, and a screen over many
groups must not wait once per group. A big read from a Graph that answers
takes as long as it takes: the deadline is per request, not per call.

It is carried by a context variable, so it reaches every task the call
starts and no other call; :meth:`GraphDirectory._send` applies it through
:func:`request_deadline`. Outside an interactive call nothing changes. A
method becomes an interactive call with the :func:`interactive_call`
decorator, which reads its object's ``interactive_timeout`` (the
reconciler's one setting)::

    @interactive_call
    async def explain(self, config, who, *, actor): ...
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from ..errors import DirectoryError

__all__ = ["answer_within", "current_deadline", "interactive_call", "request_deadline"]


class _Deadline:
    """One interactive call's deadline, shared by the tasks it starts (they copy the context, not this)."""

    __slots__ = ("seconds", "timed_out")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.timed_out: str | None = None  # the first request that timed out, once one has


_DEADLINE: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "calm_azure_sync.interactive_deadline", default=None
)


@contextlib.contextmanager
def answer_within(seconds: float | None) -> Iterator[None]:
    """Directory requests made inside must each be answered within ``seconds`` (``None``: no deadline)."""
    token = _DEADLINE.set(None if seconds is None else _Deadline(seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def current_deadline() -> float | None:
    """The deadline in force here, in seconds (``None`` outside an interactive call)."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline.seconds


def _timeout_error(operation: str, deadline: _Deadline) -> DirectoryError:
    return DirectoryError(
        f"{operation}: Microsoft Graph did not answer within {deadline.seconds:g} s "
        "(the interactive deadline, Reconciler.interactive_timeout); it may be unreachable, try again later",
        code="timeout",
    )


@contextlib.asynccontextmanager
async def request_deadline(operation: str) -> AsyncIterator[None]:
    """Bound one directory request (its retries included) by the deadline in force, if any."""
    deadline = _DEADLINE.get()
    if deadline is None:
        yield
        return
    if deadline.timed_out is not None:
        raise _timeout_error(operation, deadline)
    timeout = asyncio.timeout(deadline.seconds)
    try:
        async with timeout:
            yield
    except TimeoutError as error:
        if not timeout.expired():
            raise  # a TimeoutError of the request itself, not ours
        deadline.timed_out = operation
        raise _timeout_error(operation, deadline) from error


class _Interactive(Protocol):
    """An object with the deadline setting: the reconciler."""

    @property
    def interactive_timeout(self) -> dt.timedelta | None: ...


_Self = TypeVar("_Self", bound=_Interactive)
_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


def interactive_call(
    method: Callable[Concatenate[_Self, _Params], Awaitable[_Result]],
) -> Callable[Concatenate[_Self, _Params], Coroutine[Any, Any, _Result]]:
    """Make ``method`` an interactive call: its directory requests answer within ``self.interactive_timeout``."""

    @functools.wraps(method)
    async def bounded(owner: _Self, /, *args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        timeout = owner.interactive_timeout
        with answer_within(None if timeout is None else timeout.total_seconds()):
            return await method(owner, *args, **kwargs)

    return bounded

