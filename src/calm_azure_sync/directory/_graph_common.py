"""What every GraphDirectory read shares: Graph's error shapes, readable-user checks, JSON bodies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import httpx

from ..errors import DirectoryAccessError, DirectoryError, GroupNotFoundError

_T = TypeVar("_T")

MESSAGE_LIMIT = 300
GROUP_READ_PERMISSIONS = ("GroupMember.Read.All", "Directory.Read.All")
USER_READ_PERMISSIONS = ("User.Read.All", "Directory.Read.All")


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def limited_information(item: Mapping[str, Any]) -> bool:
    """Whether a user item is Graph's "limited information" shape, not a readable user.

    Without a user permission Graph lists member users with their ``id`` and
    ``@odata.type`` and every other property ``null`` (permissions-overview:
    "Limited information returned for inaccessible member objects"), or, in
    the older shape, without the other properties at all. We ``$select``
    ``accountEnabled`` and ``userPrincipalName``; a readable user always
    carries both keys and its ``accountEnabled`` is never ``null`` (Entra
    requires it). So: ``accountEnabled`` null or absent, or
    ``userPrincipalName`` absent, is unreadable. Reading such a user anyway
    would make a disabled user look enabled and everyone look emailless.
    """
    return item.get("accountEnabled") is None or "userPrincipalName" not in item


def users_not_readable(operation: str) -> DirectoryAccessError:
    return DirectoryAccessError(
        f"{operation}: Graph returned users with only their id and type (every other property null "
        "or missing), so the app may read memberships but not users",
        missing_permissions=USER_READ_PERMISSIONS,
        code="users_not_readable",
    )


def error_fields(body: object, request_id: str | None) -> tuple[str | None, str | None, str | None]:
    """Graph's error ``code``, ``message`` and request id from a parsed error body."""
    code = message = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        inner = error.get("innerError") or error.get("innererror")
        if isinstance(inner, dict) and isinstance(inner.get("request-id"), str):
            request_id = inner["request-id"]
    return code or None, None if message is None else short(message), request_id


def graph_error(response: httpx.Response) -> tuple[str | None, str | None, str | None]:
    """Graph's error ``code``, ``message`` and request id, read defensively."""
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        body = None
    return error_fields(body, response.headers.get("request-id"))


def status_error(
    status: int,
    code: str | None,
    message: str | None,
    request_id: str | None,
    *,
    operation: str,
    group_id: str | None,
    permissions: tuple[str, ...],
    attempts: object = None,
) -> DirectoryError:
    """The DirectoryError for a Graph error answer (also a $batch sub-response's)."""
    said = f"HTTP {status}" + (f": {message}" if message else "")
    if status == 401:
        return DirectoryAccessError(
            f"{operation}: Microsoft Graph did not accept the app's token ({said}); check the tenant, "
            "the client secret or certificate, and that an administrator granted consent. "
            "The app needs User.Read.All and GroupMember.Read.All",
            missing_permissions=permissions,
            code=code,
            status=status,
            request_id=request_id,
        )
    if status == 403:
        return DirectoryAccessError(
            f"{operation}: Microsoft Graph denied the request ({said}); the app needs the application "
            "permissions User.Read.All and GroupMember.Read.All, or Directory.Read.All",
            missing_permissions=permissions,
            code=code,
            status=status,
            request_id=request_id,
        )
    if status == 404 and group_id is not None:
        return GroupNotFoundError(group_id, code=code, status=status, request_id=request_id)
    tried = f" after {attempts} attempts" if isinstance(attempts, int) and attempts > 1 else ""
    return DirectoryError(
        f"{operation}: Microsoft Graph answered {said}{tried}",
        code=code,
        status=status,
        request_id=request_id,
    )


def json_object(content: bytes, operation: str, *, status: int, response: httpx.Response | None) -> dict[str, Any]:
    """A JSON object from Graph, or a DirectoryError saying what came instead."""
    request_id = None if response is None else response.headers.get("request-id")
    try:
        page = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        kind = "no content type" if response is None else response.headers.get("Content-Type", "no content type")
        raise DirectoryError(
            f"{operation}: Graph's answer is not valid JSON (HTTP {status}, {len(content)} bytes, {kind})",
            code="invalid_response",
            status=status,
            request_id=request_id,
        ) from None
    if not isinstance(page, dict):
        raise DirectoryError(
            f"{operation}: Graph's answer is not a JSON object",
            code="invalid_response",
            status=status,
            request_id=request_id,
        )
    return page


async def all_or_nothing(awaitables: list[Awaitable[_T]]) -> list[_T]:
    """Await every one concurrently; on the first failure cancel the rest (no retry left running) and raise it."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
