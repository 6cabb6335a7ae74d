"""What auto-detect returns: :class:`ExclusionSuggestion` values in :class:`Suggestions`, a list that reads as a table.

Pure values; :func:`calm_azure_sync.policies.autodetect.suggest` makes them
(and re-exports both, as :mod:`calm_azure_sync.policies.exclusion` does).
"""

from __future__ import annotations

import attrs

from .._html import html_table

__all__ = ["ExclusionSuggestion", "Suggestions"]


@attrs.frozen
class ExclusionSuggestion:
    """An account :meth:`ExclusionPolicy.suggest` thinks is no person.

    ``pattern`` is a glob that matches this account's email and no account of
    the same input that was not suggested too; ``reasons`` say why, in the
    order of the rule table. ``suggest`` only suggests accounts with an
    email, so ``email`` is always set there.
    """

    user_id: str
    email: str | None
    pattern: str
    reasons: tuple[str, ...]


class Suggestions(list[ExclusionSuggestion]):
    """A list of :class:`ExclusionSuggestion` that reads as a table (text, and HTML in notebooks)."""

    @property
    def patterns(self) -> list[str]:
        """The distinct suggested patterns, in order: what to pass to ``with_patterns``."""
        return list(dict.fromkeys(suggestion.pattern for suggestion in self))

    def __str__(self) -> str:
        if not self:
            return "no suggestions"
        width = max(len(suggestion.pattern) for suggestion in self)
        return "\n".join(
            f"{suggestion.pattern:{width}}  {suggestion.email}  ({'; '.join(suggestion.reasons)})"
            for suggestion in self
        )

    def _repr_html_(self) -> str:
        return html_table(
            ["pattern", "account", "why"],
            ((suggestion.pattern, suggestion.email, "; ".join(suggestion.reasons)) for suggestion in self),
        )
