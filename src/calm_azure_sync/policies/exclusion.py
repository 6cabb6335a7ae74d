"""Who to leave out of a sync: email globs and user ids (:class:`ExclusionPolicy`).

Theory of operation
-------------------
An :class:`ExclusionPolicy` holds email globs and Entra object ids. A glob has
two wildcards only, ``*`` (any run of characters, empty included) and ``?``
(exactly one character); every other character stands for itself. Globs are
matched against the *whole* email, both sides lowered with ``str.lower`` (not
``casefold``: ``ß`` and ``ss`` are different mailboxes).

Globs are compiled once, when the policy is built, by the linear-time engine
in :mod:`calm_azure_sync.policies._glob` (its opening comment says why matching never
backtracks). :meth:`ExclusionPolicy.suggest` finds system accounts with the
rule table of :mod:`calm_azure_sync.policies.autodetect`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from .._text import show
from ..errors import ConfigError
from ..model import DirectoryUser
from ._glob import MAX_PATTERN_LENGTH, PatternIndex, pattern_problem
from .autodetect import ExclusionSuggestion, Suggestions, suggest

# ExclusionSuggestion and Suggestions live with the detection that makes them;
# they are re-exported here, where hosts have always imported them from.
__all__ = ["MAX_PATTERN_LENGTH", "ExclusionPolicy", "ExclusionSuggestion", "Suggestions"]


def _string_items(value: object, field: str) -> tuple[tuple[object, ...], list[str]]:
    """The items of a list-like value, or the problem that it is not one."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        return (), [f"{field}: expected a list of strings, got {type(value).__name__}"]
    return tuple(value), []


def _to_patterns(value: Iterable[str]) -> tuple[str, ...]:
    items, problems = _string_items(value, "patterns")
    for index, item in enumerate(items):
        if not isinstance(item, str):
            problems.append(f"patterns[{index}]: must be a string, got {type(item).__name__}")
        elif (problem := pattern_problem(item)) is not None:
            problems.append(f"patterns[{index}]: {problem}")
    if problems:
        raise ConfigError(problems)
    return items  # type: ignore[return-value]  # every item was checked to be a str


def _to_user_ids(value: Iterable[str]) -> tuple[str, ...]:
    items, problems = _string_items(value, "user_ids")
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            problems.append(f"user_ids[{index}]: must be a non-empty string, got {show(item)}")
    if problems:
        raise ConfigError(problems)
    return items  # type: ignore[return-value]  # every item was checked to be a str


# --------------------------------------------------------------------------
# The public policy
# --------------------------------------------------------------------------


@attrs.frozen
class ExclusionPolicy:
    """Whom a sync leaves out: email globs and Entra object ids.

    Patterns are globs (``*`` any run of characters, ``?`` one character),
    matched case-insensitively against the whole email. Bad input raises one
    :class:`ConfigError` listing every bad item with its index::

        >>> policy = ExclusionPolicy(patterns=["*service*", "noreply@*"])
        >>> policy.matches("Print.Service@school.org")
        '*service*'
        >>> ExclusionPolicy(patterns=["a b", ""])
        Traceback (most recent call last):
        ...
        calm_azure_sync.errors.ConfigError: 2 problems:
        - patterns[0]: 'a b' has characters that cannot appear in a pattern: ' ' (U+0020, whitespace) at position 1
        - patterns[1]: must not be empty
    """

    patterns: tuple[str, ...] = attrs.field(default=(), converter=_to_patterns)
    user_ids: tuple[str, ...] = attrs.field(default=(), converter=_to_user_ids)
    # Compiled once per policy: the planner asks about every user of a tenant.
    _index: PatternIndex = attrs.field(init=False, repr=False, eq=False, hash=False)
    _user_id_set: frozenset[str] = attrs.field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_index", PatternIndex([pattern.lower() for pattern in self.patterns]))
        # Entra object ids are GUIDs: an id typed in upper case is the same id.
        object.__setattr__(self, "_user_id_set", frozenset(user_id.lower() for user_id in self.user_ids))

    def matches(self, email: str | None) -> str | None:
        """The first pattern (as written in the policy) matching ``email``, or None."""
        if email is None:
            return None
        index = self._index.first_match(email.lower())
        return None if index is None else self.patterns[index]

    def reason_excluded(self, user: DirectoryUser) -> str | None:
        """Why ``user`` is excluded (its id is listed, or its email matches a pattern), or None."""
        if self._user_id_set and user.id.lower() in self._user_id_set:
            return "excluded by user id"
        pattern = self.matches(user.email)
        if pattern is None:
            return None
        return f"email matches exclusion pattern {pattern!r}"

    def with_patterns(self, patterns: Iterable[str]) -> ExclusionPolicy:
        """A new policy with ``patterns`` added after the existing ones.

        Patterns already present (ignoring case) are not added twice, so
        ``policy.with_patterns(s.pattern for s in ExclusionPolicy.suggest(users))``
        accepts every suggestion.
        """
        known = {pattern.lower() for pattern in self.patterns}
        added: list[str] = []
        for pattern in _to_patterns(patterns):
            if pattern.lower() not in known:
                known.add(pattern.lower())
                added.append(pattern)
        return attrs.evolve(self, patterns=(*self.patterns, *added))

    def with_user_ids(self, user_ids: Iterable[str]) -> ExclusionPolicy:
        """A new policy with ``user_ids`` added; ids already listed are not added twice."""
        known = set(self.user_ids)
        added = [user_id for user_id in dict.fromkeys(_to_user_ids(user_ids)) if user_id not in known]
        return attrs.evolve(self, user_ids=(*self.user_ids, *added))

    @staticmethod
    def suggest(users: Sequence[DirectoryUser]) -> Suggestions:
        """Find the accounts among ``users`` that look like no person, with a glob and reasons each.

        One suggestion per user id with an email, sorted by email. The rules
        are the table of :mod:`calm_azure_sync.policies.autodetect` (see
        docs/exclusions.md). Each pattern matches its own account and no
        account of ``users`` that is not suggested too; an account for which no such pattern exists (another,
        unsuggested account has the same address) is left out. Nothing is
        changed: pass the patterns to :meth:`with_patterns` to accept them.
        """
        return suggest(users)

    def to_dict(self) -> dict[str, Any]:
        """The plain JSON form (what ``SyncConfig.to_dict`` stores under ``exclusions``)."""
        return {"patterns": list(self.patterns), "user_ids": list(self.user_ids)}
