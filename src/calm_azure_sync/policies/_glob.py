"""The linear-time glob engine behind exclusion patterns and auto-detect.

A glob has two wildcards only, ``*`` (any run of characters, empty included)
and ``?`` (exactly one character); every other character stands for itself.
Callers lower both sides before matching. This module also says which
characters a pattern may hold (:func:`pattern_problem`).

Matching never backtracks exponentially. A glob is compiled once, when the
policy is built, into the literal head before its first ``*``, the literal
tail after its last ``*``, and the segments in between. The head and tail are
checked in place; each middle segment is found with ``str.find`` at its
earliest position after the previous one. Taking the earliest position is
always right, because whatever a later position could match, the earliest
leaves at least as much text for the segments after it; so each segment is
looked for once and ``*a*a*a*a*a*a*b`` against a 10,000 character address
costs a handful of scans, not an explosion. Globs without wildcards are a
dictionary look-up, and pure ``prefix*`` / ``*suffix`` globs are one
``startswith`` / ``endswith`` call for all of them at once: the planner asks
for every user of a tenant.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Callable, Sequence

from .._text import shorten

__all__ = [
    "MAX_PATTERN_LENGTH",
    "WILDCARD_RUN",
    "Glob",
    "PatternIndex",
    "character_problem",
    "pattern_problem",
]

#: The longest pattern accepted: no email address is longer (RFC 5321 path limit).
MAX_PATTERN_LENGTH = 254

# The punctuation RFC 5322 allows in an unquoted local part, plus "@".
_PATTERN_PUNCTUATION = frozenset(".!#$%&'+/=^_`{|}~-@")
_WILDCARDS = frozenset("*?")
# Characters someone writing a regular expression would reach for.
_REGEX_CHARACTERS = frozenset("[]()\\,;:<>\"")
WILDCARD_RUN = re.compile(r"[*?]+")


def character_problem(character: str) -> str | None:
    """Why ``character`` cannot appear in a pattern, or None when it can."""
    if character in _PATTERN_PUNCTUATION or character in _WILDCARDS:
        return None
    category = unicodedata.category(character)
    # Letters of any script come with their combining marks (Devanagari vowel signs, é written as e and a combining accent).
    if category[0] in "LM" or category == "Nd":
        return None
    if character.isspace():
        return "whitespace"
    if category == "Cc":
        return "a control character"
    if category[0] == "C":
        return "an invisible or unassigned character"
    if character in _REGEX_CHARACTERS:
        return "not allowed (patterns are globs with * and ?, not regular expressions)"
    return "not allowed in an email pattern"


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with one pattern string, or None."""
    if not pattern:
        return "must not be empty"
    if len(pattern) > MAX_PATTERN_LENGTH:
        return (
            f"is {len(pattern)} characters long; an email address has at most {MAX_PATTERN_LENGTH}"
        )
    bad: dict[str, tuple[int, str]] = {}
    for position, character in enumerate(pattern):
        if character not in bad:
            kind = character_problem(character)
            if kind is not None:
                bad[character] = (position, kind)
    if not bad:
        return None
    shown = ", ".join(
        f"{character!r} (U+{ord(character):04X}, {kind}) at position {position}"
        for character, (position, kind) in list(bad.items())[:5]
    )
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return f"{shorten(repr(pattern))} has characters that cannot appear in a pattern: {shown}{more}"


class _Segment:
    """Pattern text without ``*``: literal characters and ``?``."""

    __slots__ = ("anchor", "anchor_offset", "length", "pieces", "text", "wild")

    def __init__(self, text: str) -> None:
        self.text = text
        self.length = len(text)
        self.wild = "?" in text
        # The literal runs between "?"s, with their offsets: a "?" segment is
        # checked piece by piece and found through its longest piece.
        self.pieces: tuple[tuple[int, str], ...] = ()
        self.anchor = ""
        self.anchor_offset = 0
        if self.wild:
            pieces = []
            offset = 0
            for piece in text.split("?"):
                if piece:
                    pieces.append((offset, piece))
                offset += len(piece) + 1
            self.pieces = tuple(pieces)
            if pieces:
                self.anchor_offset, self.anchor = max(pieces, key=lambda item: len(item[1]))

    def matches_at(self, text: str, start: int) -> bool:
        """Whether this segment matches ``text`` starting exactly at ``start``."""
        if not self.wild:
            return text.startswith(self.text, start)
        if start + self.length > len(text):
            return False
        return all(text.startswith(piece, start + offset) for offset, piece in self.pieces)

    def find(self, text: str, start: int, end: int) -> int:
        """The earliest position ``>= start`` where this segment matches, ending by ``end``; -1 if none."""
        if not self.wild:
            return text.find(self.text, start, end)
        last = end - self.length
        if not self.anchor:
            return start if start <= last else -1
        probe = start + self.anchor_offset
        stop = last + self.anchor_offset + len(self.anchor)
        while True:
            hit = text.find(self.anchor, probe, stop)
            if hit < 0:
                return -1
            candidate = hit - self.anchor_offset
            if self.matches_at(text, candidate):
                return candidate
            probe = hit + 1


class Glob:
    """One compiled, lowered glob; :meth:`match` is O(len(text) · len(pattern)) at worst."""

    __slots__ = ("head", "middle", "min_length", "pattern", "starred", "tail")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        parts = pattern.split("*")
        self.starred = len(parts) > 1
        self.head = _Segment(parts[0])
        self.tail = _Segment(parts[-1] if self.starred else "")
        # Empty middles come from "**": a run of stars is one star.
        self.middle = tuple(_Segment(part) for part in parts[1:-1] if part)
        self.min_length = sum(len(part) for part in parts)

    def match(self, text: str) -> bool:
        """Whether the whole of ``text`` (already lowered) matches."""
        size = len(text)
        if not self.starred:
            return size == self.min_length and self.head.matches_at(text, 0)
        if size < self.min_length or not self.head.matches_at(text, 0):
            return False
        tail_start = size - self.tail.length
        if not self.tail.matches_at(text, tail_start):
            return False
        position = self.head.length
        for segment in self.middle:
            found = segment.find(text, position, tail_start)
            if found < 0:
                return False
            position = found + segment.length
        return True


class PatternIndex:
    """All of a policy's globs, grouped so that the common shapes cost one C call."""

    __slots__ = (
        "any_needed",
        "contains",
        "exact",
        "general",
        "needs_scan",
        "prefix_entries",
        "prefixes",
        "suffix_entries",
        "suffixes",
    )

    def __init__(self, lowered_patterns: Sequence[str]) -> None:
        self.exact: dict[str, int] = {}
        self.prefix_entries: list[tuple[int, str]] = []
        self.suffix_entries: list[tuple[int, str]] = []
        self.contains: list[tuple[int, str]] = []
        # With the glob's longest literal piece: an "in" test rules most texts out cheaply.
        self.general: list[tuple[int, str, Glob]] = []
        for index, pattern in enumerate(lowered_patterns):
            stars = pattern.count("*")
            literal = pattern.strip("*")
            if "?" in pattern or "*" in literal:
                self.general.append((index, max(WILDCARD_RUN.split(pattern), key=len), Glob(pattern)))
            elif stars == 0:
                self.exact.setdefault(pattern, index)
            elif not pattern.startswith("*"):
                self.prefix_entries.append((index, literal))
            elif not pattern.endswith("*"):
                self.suffix_entries.append((index, literal))
            else:
                self.contains.append((index, literal))
        self.prefixes = tuple(literal for _, literal in self.prefix_entries)
        self.suffixes = tuple(literal for _, literal in self.suffix_entries)
        # Every "contains" and general glob needs one literal somewhere in the
        # text. One search for all those literals at once (escaped: a set of
        # plain strings, no pattern semantics, so no backtracking) rules out
        # most texts in C instead of a Python loop per pattern.
        needed = [literal for _, literal in self.contains] + [required for _, required, _ in self.general]
        self.needs_scan = bool(needed)
        self.any_needed: re.Pattern[str] | None = None
        if needed and all(needed):
            self.any_needed = re.compile("|".join(re.escape(literal) for literal in sorted(set(needed))))

    def first_match(self, text: str) -> int | None:
        """The index of the first pattern (in policy order) matching lowered ``text``."""
        exact = self.exact.get(text)
        limit = sys.maxsize if exact is None else exact
        if self.prefixes and text.startswith(self.prefixes):
            limit = _earliest(self.prefix_entries, limit, text.startswith)
        if self.suffixes and text.endswith(self.suffixes):
            limit = _earliest(self.suffix_entries, limit, text.endswith)
        if self.needs_scan and (self.any_needed is None or self.any_needed.search(text) is not None):
            limit = _earliest(self.contains, limit, text.__contains__)
            for index, required, glob in self.general:
                if index >= limit:
                    break
                if required in text and glob.match(text):
                    limit = index
                    break
        return None if limit == sys.maxsize else limit


def _earliest(entries: list[tuple[int, str]], limit: int, test: Callable[[str], bool]) -> int:
    """The smaller of ``limit`` and the first entry index (before ``limit``) whose literal passes ``test``."""
    for index, literal in entries:
        if index >= limit:
            break
        if test(literal):
            return index
    return limit
