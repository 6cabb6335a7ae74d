"""Retrying Graph requests inside the SDK's middleware pipeline (see :mod:`.graph`).

Kiota's ``RetryHandler`` parses ``Retry-After`` with ``int()`` (Graph's
documented sample is ``2.128``) and gives up after three retries;
:class:`GraphRetryHandler` honours fractional values exactly, backs off with
jitter otherwise, retries connection errors and cut-off bodies, and stops at
a per-read time budget (:class:`RetryPolicy`).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import httpx

from ..errors import ConfigError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kiota_abstractions.request_option import RequestOption
    from kiota_http.kiota_client_factory import KiotaClientFactory
    from kiota_http.middleware import MiddlewarePipeline, RetryHandler
    from kiota_http.middleware.async_kiota_transport import AsyncKiotaTransport
    from kiota_http.middleware.middleware import REQUEST_OPTIONS_KEY, BaseMiddleware

__all__ = ["GraphRetryHandler", "RetryPolicy", "Sleep", "parse_retry_after"]

logger = logging.getLogger("calm_azure_sync.graph")

ATTEMPTS_KEY = "calm_azure_sync.attempts"
"""Where a response's ``extensions`` say how many attempts it took."""


class Sleep(Protocol):
    """How the retry handler waits: ``asyncio.sleep`` unless a test injects another."""

    def __call__(self, seconds: float, /) -> Awaitable[None]:
        """Wait ``seconds``."""
        ...


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0 or math.isnan(value):
        raise ConfigError(f"RetryPolicy.{attribute.name}: must be a number >= 0, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """When and how long to retry a Graph request that was throttled or failed.

    - ``max_attempts``: attempts per request, the first included.
    - ``base_delay`` / ``max_delay``: the exponential backoff used when Graph
      sends no ``Retry-After``: ``base_delay * 2 ** (retry - 1)``, capped at
      ``max_delay``, then shortened by a random fraction of up to ``jitter``
      (0 to 1) so that concurrent readers do not retry in step.
    - ``Retry-After`` (seconds, fractions included, or an HTTP date) is
      honoured exactly, even above ``max_delay``: retrying earlier than Graph
      asks only earns another 429.
    - ``total_budget_seconds``: the most one read (one ``list_groups`` or
      ``group_members`` call, all its pages) may spend waiting between
      retries; a wait that would exceed it ends the read with the last error.
    - ``retry_statuses``: the HTTP statuses retried (429, 503, 504).
      Connection errors, timeouts and bodies cut short are retried too.

    >>> RetryPolicy().delay(1, retry_after="2.128", jitter_draw=0.5)
    2.128
    >>> RetryPolicy(base_delay=1.0, jitter=0.0).delay(3, retry_after=None, jitter_draw=0.5)
    4.0
    """

    max_attempts: int = attrs.field(default=6)
    base_delay: float = attrs.field(default=1.0, validator=_positive)
    max_delay: float = attrs.field(default=32.0, validator=_positive)
    total_budget_seconds: float = attrs.field(default=120.0, validator=_positive)
    jitter: float = attrs.field(default=0.5)
    retry_statuses: frozenset[int] = attrs.field(default=frozenset({429, 503, 504}), converter=frozenset)

    @max_attempts.validator
    def _check_attempts(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"RetryPolicy.max_attempts: must be an integer >= 1, got {value!r}")

    @jitter.validator
    def _check_jitter(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"RetryPolicy.jitter: must be between 0 and 1, got {value!r}")

    def delay(self, retry: int, *, retry_after: str | None, jitter_draw: float) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry).

        ``jitter_draw`` is a random number in [0, 1).
        """
        honoured = parse_retry_after(retry_after)
        if honoured is not None:
            return honoured
        backoff: float = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        return backoff * (1.0 - self.jitter * jitter_draw)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (``"2.128"`` → 2.128), or ``None``.

    Delta-seconds may be fractional (Graph's own sample is); an HTTP date
    gives the seconds until then (never negative). Anything else is ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            return None
        current = time.time() if now is None else now
        return max(0.0, moment.timestamp() - current)
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        return None
    return seconds


class RetryBudget:
    """Seconds of retry waiting one read may still spend (shared by its pages)."""

    __slots__ = ("remaining",)

    def __init__(self, seconds: float) -> None:
        self.remaining = seconds

    def allows(self, delay: float) -> bool:
        return delay <= self.remaining

    def spend(self, delay: float) -> None:
        self.remaining -= delay


class RetryBudgetOption(RequestOption):
    """Carries a read's retry budget to the retry handler through kiota's request options."""

    KEY = "calm_azure_sync.retry_budget"

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    @staticmethod
    def get_key() -> str:
        return RetryBudgetOption.KEY


class GraphRetryHandler(BaseMiddleware):
    """Kiota middleware that retries throttled and failed Graph requests per a :class:`RetryPolicy`.

    :class:`GraphDirectory` puts it in the SDK pipeline in place of kiota's
    ``RetryHandler``. Hosts that build their own ``GraphServiceClient`` can
    do the same through ``GraphClientFactory.create_with_custom_middleware``.
    ``sleep`` and ``random`` are injectable so tests need not wait.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        sleep: Sleep | None = None,
        random_draw: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.policy = policy or RetryPolicy()
        self._sleep: Sleep = sleep or asyncio.sleep
        self._random_draw = random_draw or random.Random().random

    async def send(self, request: httpx.Request, transport: httpx.AsyncBaseTransport) -> httpx.Response:
        """Send ``request`` down the pipeline, retrying as the policy says."""
        budget = self._budget(request)
        policy = self.policy
        retry = 0
        while True:
            response: httpx.Response | None = None
            failure: httpx.TransportError | None = None
            try:
                response = await super().send(request, transport)
                if response.status_code not in policy.retry_statuses:
                    # Read here so that a body cut short is retried like a reset.
                    await response.aread()
                    response.extensions[ATTEMPTS_KEY] = retry + 1
                    return response
            except httpx.TransportError as error:
                failure = error
                if response is not None:
                    # The body broke off: release the connection, retry like a reset.
                    await response.aclose()
                    response = None
            retry += 1
            retry_after = None if response is None else response.headers.get("Retry-After")
            what = type(failure).__name__ if response is None else f"HTTP {response.status_code}"
            failed = f"Graph {request.method} {request.url.path} failed with {what}"
            if not await self.wait_before_retry(retry, retry_after, budget, failed, before=response):
                if response is None:
                    assert failure is not None
                    raise failure
                await response.aread()
                response.extensions[ATTEMPTS_KEY] = retry
                return response
            request.headers["Retry-Attempt"] = str(retry)

    async def wait_before_retry(
        self,
        attempt: int,
        retry_after: str | None,
        budget: RetryBudget,
        failed: str,
        *,
        before: httpx.Response | None = None,
    ) -> bool:
        """Wait before retrying after failed ``attempt`` (1 for the first), as the policy says; False: give up.

        Gives up (without waiting) when the attempts are used up or the wait
        would overrun ``budget``. ``failed`` says what failed, for the log;
        ``before``, a response to release before waiting (when not giving up).
        Used by :meth:`send` and by the ``$batch`` lookups, whose throttled
        sub-requests are retried outside the pipeline.
        """
        policy = self.policy
        delay = policy.delay(attempt, retry_after=retry_after, jitter_draw=self._random_draw())
        if attempt >= policy.max_attempts or not budget.allows(delay):
            logger.warning(
                "%s after %d attempt(s); not retrying (next wait %.3f s, budget left %.3f s)",
                failed,
                attempt,
                delay,
                budget.remaining,
            )
            return False
        if before is not None:
            await before.aclose()
        logger.info("%s; retry %d in %.3f s", failed, attempt, delay)
        budget.spend(delay)
        await self._sleep(delay)
        return True

    def _budget(self, request: httpx.Request) -> RetryBudget:
        options = request.extensions.get(REQUEST_OPTIONS_KEY) or {}
        option = options.get(RetryBudgetOption.KEY)
        if isinstance(option, RetryBudgetOption):
            return option.budget
        return RetryBudget(self.policy.total_budget_seconds)


def install_retry_handler(http_client: httpx.AsyncClient, handler: GraphRetryHandler) -> str:
    """Put ``handler`` in the client's kiota pipeline(s) in place of any retry handler.

    Returns ``"replaced"`` or ``"added"``: a client without a kiota pipeline
    gets one holding just our handler.
    """
    transports: list[Any] = [http_client._transport, *http_client._mounts.values()]
    outcome = "added"
    for transport in transports:
        pipeline = getattr(transport, "pipeline", None)
        if not isinstance(pipeline, MiddlewarePipeline):
            continue
        previous: Any = None
        current = pipeline._first_middleware
        while current is not None:
            if isinstance(current, RetryHandler | GraphRetryHandler):
                handler.next = current.next
                if previous is None:
                    pipeline._first_middleware = handler
                else:
                    previous.next = handler
                if pipeline._current_middleware is current:
                    pipeline._current_middleware = handler
                outcome = "replaced"
                break
            previous, current = current, current.next
        else:
            handler.next = pipeline._first_middleware
            pipeline._first_middleware = handler
            if pipeline._current_middleware is None:
                pipeline._current_middleware = handler
    if not any(isinstance(getattr(t, "pipeline", None), MiddlewarePipeline) for t in transports):
        pipeline = KiotaClientFactory.create_middleware_pipeline([handler], http_client._transport)
        http_client._transport = AsyncKiotaTransport(transport=http_client._transport, pipeline=pipeline)
    return outcome
