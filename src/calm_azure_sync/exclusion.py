"""PLACEHOLDER — being replaced by the full implementation (globs + auto-detect)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from .errors import ConfigError
from .model import DirectoryUser

__all__ = ["ExclusionPolicy", "ExclusionSuggestion"]


@attrs.frozen
class ExclusionSuggestion:
    user_id: str
    email: str | None
    pattern: str
    reasons: tuple[str, ...]


def _tuple(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ConfigError("expected a list of strings, got one string")
    return tuple(values)


@attrs.frozen
class ExclusionPolicy:
    patterns: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    user_ids: tuple[str, ...] = attrs.field(default=(), converter=_tuple)

    def reason_excluded(self, user: DirectoryUser) -> str | None:
        if user.id in self.user_ids:
            return "excluded by user id"
        email = (user.email or "").lower()
        for pattern in self.patterns:
            if fnmatch.fnmatchcase(email, pattern.lower()):
                return f"email matches exclusion pattern {pattern!r}"
        return None

    @staticmethod
    def suggest(users: Sequence[DirectoryUser]) -> list[ExclusionSuggestion]:
        return []

    def to_dict(self) -> dict[str, Any]:
        return {"patterns": list(self.patterns), "user_ids": list(self.user_ids)}
