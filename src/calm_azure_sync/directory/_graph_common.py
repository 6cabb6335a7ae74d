"""What every GraphDirectory read shares: Graph's error shapes, readable-user checks, JSON bodies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx

from ..errors import DirectoryAccessError, DirectoryError, GroupNotFoundError
from ._items import USER_READ_PERMISSIONS, limited_information, users_not_readable

_T = TypeVar("_T")

__all__ = [
    "GROUP_READ_PERMISSIONS",
    "USER_READ_PERMISSIONS",
    "all_or_nothing",
    "error_fields",
    "graph_error",
    "json_object",
    "limited_information",
    "short",
    "status_error",
    "users_not_readable",
]

MESSAGE_LIMIT = 300
GROUP_READ_PERMISSIONS = ("GroupMember.Read.All", "Directory.Read.All")


def short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


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
