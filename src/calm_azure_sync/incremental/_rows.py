"""The delta cache as table rows, both ways: what the SQLite and PostgreSQL stores write and read. Pure.

Four tables per store, all keyed by trust: one meta row (format version,
the opaque cursor as JSON, the mapped group ids, when the directory was last
read in full), one row per tracked group, one per direct membership
``(group id, member id)``, and one per cached user with a column per
:class:`~calm_azure_sync.DirectoryUser` field. Reading rows back checks every
value; anything off raises :class:`UnreadableCache`, and the store then
answers "no cache" so the run reads in full and rebuilds it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..model import DirectoryUser
from .cache import CACHE_VERSION, DeltaCache, DeltaCacheWrite, DeltaHead
from .partial import DeltaRows

__all__ = [
    "USER_COLUMNS",
    "UnreadableCache",
    "cache_from_rows",
    "delta_rows",
    "groups_to_track",
    "head_from_rows",
    "meta_row",
    "user_row",
]

USER_COLUMNS = (
    "user_id",
    "display_name",
    "mail",
    "user_principal_name",
    "given_name",
    "surname",
    "account_enabled",
    "user_type",
    "assigned_license_count",
    "on_premises_sync_enabled",
    "creation_type",
)
"""The user table's columns after the trust, in the order :func:`user_row` gives them."""


class UnreadableCache(ValueError):
    """Stored delta cache rows that cannot be read back (corrupt, or of another version)."""


def meta_row(cursor: Any, mapped: Iterable[str], full_read_at: dt.datetime) -> tuple[int, str, str, str]:
    """``(version, cursor JSON, mapped JSON, full_read_at ISO)`` for the meta row.

    ASCII JSON: any text in the opaque cursor (a lone surrogate too) is an
    escape, so every store keeps it and reads it back exactly. (Rows written
    with raw non-ASCII text, before, read back the same.)
    """
    return (
        CACHE_VERSION,
        json.dumps(cursor, sort_keys=True, allow_nan=False),
        json.dumps(sorted(mapped)),
        full_read_at.isoformat(),
    )


def groups_to_track(write: DeltaCacheWrite) -> list[str]:
    """The group rows a write adds: its new groups and every group a new membership names.

    As :meth:`DeltaCacheWrite.applied_to` has it; without the second part a
    membership row could name an untracked group, which a load refuses.
    """
    return sorted(write.added_groups | {group for group, _ in write.added_members})


def user_row(user: DirectoryUser) -> tuple[Any, ...]:
    """The user's values in :data:`USER_COLUMNS` order (booleans as they are; SQLite stores 0/1)."""
    return (
        user.id,
        user.display_name,
        user.mail,
        user.user_principal_name,
        user.given_name,
        user.surname,
        user.account_enabled,
        user.user_type,
        user.assigned_license_count,
        user.on_premises_sync_enabled,
        user.creation_type,
    )


def _text(value: object, column: str) -> str | None:
    """An optional text column: ``None``, or text (empty allowed)."""
    if value is None:
        return None
    if type(value) is not str:
        raise UnreadableCache(f"delta cache user column {column}: expected text, got {type(value).__name__}")
    return value


def _required(value: object, label: str) -> str:
    """A required text value (an id, a type): non-empty text, or :class:`UnreadableCache` naming ``label``."""
    if type(value) is not str or not value:
        raise UnreadableCache(f"delta cache {label}: expected text, got {type(value).__name__}")
    return value


def _flag(value: object, column: str, *, optional: bool) -> bool | None:
    if value is None and optional:
        return None
    if type(value) is bool:
        return value
    if type(value) is int and value in (0, 1):  # SQLite has no boolean type
        return bool(value)
    raise UnreadableCache(f"delta cache user column {column}: expected true/false, got {value!r:.40}")


def _user(row: Sequence[Any]) -> DirectoryUser:
    if len(row) != len(USER_COLUMNS):
        raise UnreadableCache(f"delta cache user row: expected {len(USER_COLUMNS)} columns, got {len(row)}")
    licenses = row[8]
    if licenses is not None and (type(licenses) is not int or licenses < 0):
        raise UnreadableCache(f"delta cache user column assigned_license_count: got {licenses!r:.40}")
    enabled = _flag(row[6], "account_enabled", optional=False)
    assert enabled is not None
    return DirectoryUser(
        _required(row[0], "user column user_id"),
        display_name=_text(row[1], "display_name"),
        mail=_text(row[2], "mail"),
        user_principal_name=_text(row[3], "user_principal_name"),
        given_name=_text(row[4], "given_name"),
        surname=_text(row[5], "surname"),
        account_enabled=enabled,
        user_type=_required(row[7], "user column user_type"),
        assigned_license_count=licenses,
        on_premises_sync_enabled=_flag(row[9], "on_premises_sync_enabled", optional=True),
        creation_type=_text(row[10], "creation_type"),
    )


def _meta(meta: Sequence[Any]) -> tuple[dict[str, Any], frozenset[str], dt.datetime]:
    if len(meta) != 4:
        raise UnreadableCache(f"delta cache meta row: expected 4 columns, got {len(meta)}")
    version, cursor_text, mapped_text, at_value = meta
    if version != CACHE_VERSION or type(version) is not int:
        raise UnreadableCache(f"delta cache version {version!r:.20} (this library reads {CACHE_VERSION})")
    try:
        cursor = json.loads(cursor_text)
        mapped = json.loads(mapped_text)
        at = at_value if isinstance(at_value, dt.datetime) else dt.datetime.fromisoformat(at_value)
    except (TypeError, ValueError) as error:
        raise UnreadableCache(f"delta cache meta row: {error}") from None
    if type(cursor) is not dict or type(mapped) is not list or not all(type(g) is str for g in mapped):
        raise UnreadableCache("delta cache meta row: the cursor must be an object and mapped a list of ids")
    if at.tzinfo is None:
        raise UnreadableCache("delta cache meta row: full_read_at has no time zone")
    return cursor, frozenset(mapped), at


def head_from_rows(meta: Sequence[Any], groups: Iterable[Sequence[Any]]) -> DeltaHead:
    """The cache head from the meta row and the ``(group_id,)`` rows; :class:`UnreadableCache` as below."""
    cursor, mapped, at = _meta(meta)
    tracked = frozenset(_required(group_id, "user column group_id") for (group_id,) in groups)
    return DeltaHead(cursor, mapped, at, tracked)


def cache_from_rows(
    meta: Sequence[Any],
    groups: Iterable[Sequence[Any]],
    members: Iterable[Sequence[Any]],
    users: Iterable[Sequence[Any]],
) -> DeltaCache:
    """The cache from its rows (meta as :func:`meta_row`; ``(group_id,)``; ``(group_id, member_id)``; users).

    Raises :class:`UnreadableCache` on a version other than
    :data:`~calm_azure_sync.incremental.cache.CACHE_VERSION` or any value it cannot read.
    """
    cursor, mapped, at = _meta(meta)
    kept: dict[str, set[str]] = {}
    for (group_id,) in groups:
        kept[_required(group_id, "user column group_id")] = set()
    for group_id, member_id in members:
        if group_id not in kept:
            raise UnreadableCache(f"delta cache membership of untracked group {group_id!r:.60}")
        kept[group_id].add(_required(member_id, "user column member_id"))
    cached = {user.id: user for user in map(_user, users)}
    return DeltaCache(
        cursor,
        {group_id: frozenset(ids) for group_id, ids in kept.items()},
        cached,
        mapped,
        at,
    )


def delta_rows(held: Iterable[Sequence[Any]], users: Iterable[Sequence[Any]], user_count: object) -> DeltaRows:
    """Some rows of a cache (``(member_id, group_id)`` rows; user rows; the count of cached users) as :class:`DeltaRows`.

    Raises :class:`UnreadableCache` on any value it cannot read, as :func:`cache_from_rows` does.
    """
    groups_of: dict[str, set[str]] = {}
    for member_id, group_id in held:
        groups_of.setdefault(_required(member_id, "column member_id"), set()).add(_required(group_id, "column group_id"))
    if type(user_count) is not int or user_count < 0:
        raise UnreadableCache(f"delta cache user count: got {user_count!r:.40}")
    return DeltaRows(
        {member: frozenset(groups) for member, groups in groups_of.items()},
        {user.id: user for user in map(_user, users)},
        user_count,
    )
