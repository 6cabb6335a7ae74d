"""How a run cuts its plan into batches, and which changes wait on a creation that failed. Pure."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .core.plan import AddGroupMember, RemoveGroupMember

__all__ = ["batches", "depends_on"]


def depends_on(change: Any, failed: set[tuple[str, str]]) -> bool:
    """Whether a group membership change needs a user or group whose creation failed in this run."""
    if not failed or not isinstance(change, (AddGroupMember, RemoveGroupMember)):
        return False
    return ("group", change.group_external_id) in failed or ("user", change.external_id) in failed


def batches(changes: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Batches of about ``size`` changes, never splitting one user's changes."""
    batch: list[Any] = []
    for change in changes:
        if len(batch) >= size and batch[-1].external_id != change.external_id:
            yield batch
            batch = []
        batch.append(change)
    if batch:
        yield batch
