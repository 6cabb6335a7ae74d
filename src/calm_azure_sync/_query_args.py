"""Checked arguments of the public queries (Import Log pages, store look-ups): a bad one is a ConfigError.

Each reader names the argument and says what it accepts, so a host that
passes a typo (``kinds=["hold_confirmd"]``) or a wrong type gets one
:class:`~calm_azure_sync.ConfigError` it can show, never a bare
``ValueError`` from an enum or a driver's binding error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from ._text import show
from .audit.events import AuditKind
from .errors import ConfigError

__all__ = ["checked_id", "checked_kinds", "checked_limit", "checked_moment", "checked_optional_id"]


def checked_id(name: str, value: Any) -> str:
    """``value`` when it is a string (an id, a trust's site id); else a ConfigError naming ``name``."""
    if not isinstance(value, str):
        raise ConfigError(f"{name}: must be a string, got {type(value).__name__} {show(value)}")
    return value


def checked_optional_id(name: str, value: Any) -> str | None:
    """Like :func:`checked_id`, ``None`` allowed (no filter)."""
    return None if value is None else checked_id(name, value)


def checked_kinds(value: Any) -> list[str]:
    """An Import Log ``kinds`` filter as stored values: :class:`AuditKind` members or their names.

    One kind given bare (an ``AuditKind`` is a ``str`` too) is one kind, not
    its letters. Anything else, or an unknown kind, is a ConfigError listing
    the allowed values.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Collection):
        raise ConfigError(f"kinds: must be a list of Import Log kinds or None, got {type(value).__name__}")
    allowed = [kind.value for kind in AuditKind]
    unknown = [kind for kind in value if not isinstance(kind, str) or kind not in allowed]
    if unknown:
        raise ConfigError(
            f"kinds: {', '.join(show(kind) for kind in unknown)} "
            f"{'is not an Import Log kind' if len(unknown) == 1 else 'are not Import Log kinds'}; "
            f"allowed: {', '.join(allowed)}"
        )
    return [AuditKind(kind).value for kind in value]


def checked_limit(value: Any) -> int | None:
    """A page size: an integer of at least 1, or ``None`` for no cap."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"limit: must be an integer of at least 1 or None, got {show(value)}")
    return value


def checked_moment(name: str, value: Any) -> dt.datetime:
    """A timezone-aware ``datetime``; a naive one or anything else is a ConfigError naming ``name``."""
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise ConfigError(f"{name}: must be a timezone-aware datetime, got {show(value)}")
    return value
