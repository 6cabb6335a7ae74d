"""The model of Graph's tokenized ``$search`` that the in-memory directory and the fake share.

Graph documents ``$search`` on ``displayName`` as tokenized, not a substring
match: names are split into words (at spaces and punctuation, and where a
lower-case letter meets a capital), and each word searched for must be the
start of a word of the name, ignoring case. ``"sci"`` finds "Year 9
Science" and "ScienceDept"'s "Science"; ``"ence"`` finds neither.
"""

from __future__ import annotations

import re

__all__ = ["name_matches", "words"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def words(text: str) -> list[str]:
    """The search words of ``text``, lower-cased.

    >>> words("Year9 Science-Dept  (KS3)")
    ['year9', 'science', 'dept', 'ks3']
    >>> words("ScienceDept")
    ['science', 'dept']
    """
    return [piece.lower() for token in _WORD.findall(text) for piece in _CAMEL.split(token) if piece]


def name_matches(name: str | None, search: str) -> bool:
    """Whether ``search`` finds ``name``: every word of it starts a word of the name.

    >>> name_matches("Year 9 Science", "sci year")
    True
    >>> name_matches("Year 9 Science", "ence")
    False
    """
    wanted = words(search)
    if not wanted:
        return True
    have = words(name or "")
    return all(any(word.startswith(part) for word in have) for part in wanted)
