"""Text as the PostgreSQL store keeps it: any Python ``str``, stored reversibly. Pure.

PostgreSQL ``text`` cannot hold U+0000 (NUL), and no UTF-8 database can hold
a lone surrogate (U+D800 to U+DFFF). Graph JSON can carry both (``"\\u0000"``,
``"\\ud83d"``), and SQLite and the in-memory store keep whatever the shared
rules let through, NUL included. So every text value the PostgreSQL store and
Import Log write goes through :func:`to_db`, and every one they read through
:func:`from_db`, here and nowhere else.

The encoding escapes with U+FFFF, a Unicode *noncharacter* (reserved for a
program's internal use, never assigned; valid UTF-8, so PostgreSQL takes it):

========================  ====================================
in the ``str``            in the database
========================  ====================================
U+0000                    U+FFFF ``0``
U+FFFF                    U+FFFF U+FFFF
a lone surrogate U+DXXX   U+FFFF ``dxxx`` (four lowercase hex digits)
anything else             itself
========================  ====================================

It is injective and deterministic, so equality, ``= ANY(...)`` lookups,
primary keys and the unique indexes (``email_key``, ``external_id``) behave
on stored values exactly as on the text. Text without those three characters
(all ordinary text) is stored as it is, and checking it costs one scan.
Rows written before the codec existed were escaped by the schema migration
that introduced it (user store version 5, Import Log version 2): only a
U+FFFF needed escaping, since the database could hold neither of the others.
``json`` columns (the Import Log's ``detail``) do not use it: JSON text
escapes U+0000 itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

__all__ = [
    "ESCAPE",
    "from_db",
    "from_db_list",
    "from_db_optional",
    "from_db_row",
    "to_db",
    "to_db_list",
    "to_db_optional",
    "to_db_rows",
]

ESCAPE: Final = "\uffff"

_NEEDS_ESCAPE: Final = re.compile("[\x00\uffff\ud800-\udfff]")
_ESCAPED: Final = re.compile("\uffff(\uffff|0|d[89a-f][0-9a-f]{2})")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\x00":
        return ESCAPE + "0"
    if char == ESCAPE:
        return ESCAPE + ESCAPE
    return f"{ESCAPE}{ord(char):04x}"


def _unescape(match: re.Match[str]) -> str:
    tag = match.group(1)
    if tag == ESCAPE:
        return ESCAPE
    if tag == "0":
        return "\x00"
    return chr(int(tag, 16))


def to_db(text: str) -> str:
    """``text`` as stored: PostgreSQL and UTF-8 take any result (see the table above)."""
    if "\x00" not in text and (text.isascii() or _NEEDS_ESCAPE.search(text) is None):
        return text
    return _NEEDS_ESCAPE.sub(_escape, text)


def from_db(stored: str) -> str:
    """The text :func:`to_db` stored as ``stored`` (an escape it never writes is left as it is)."""
    # For ASCII text the search for a non-ASCII character returns at once.
    if ESCAPE not in stored:
        return stored
    return _ESCAPED.sub(_unescape, stored)


def to_db_optional(text: str | None) -> str | None:
    """:func:`to_db`, ``None`` kept."""
    return None if text is None else to_db(text)


def from_db_optional(stored: str | None) -> str | None:
    """:func:`from_db`, ``None`` kept."""
    return None if stored is None else from_db(stored)


def _all_plain(joined: str) -> bool:
    """Whether text (several values joined) holds nothing :func:`to_db` escapes."""
    return "\x00" not in joined and (joined.isascii() or _NEEDS_ESCAPE.search(joined) is None)


def to_db_list(texts: Iterable[str]) -> list[str]:
    """Each of ``texts`` as stored (for a ``text[]`` column or an ``= ANY(%s)`` parameter).

    All of them are checked at once (joined): almost every batch holds only plain text.
    """
    values = list(texts)
    return values if _all_plain("".join(values)) else [to_db(text) for text in values]


def to_db_rows(rows: list[tuple[Any, ...]], text_columns: Sequence[int]) -> list[tuple[Any, ...]]:
    """``rows`` with each value of ``text_columns`` (``str`` or ``None``) as stored; other columns as they are.

    Checked column by column at once, so a batch of plain text (almost every
    one) costs one scan per column instead of a call per value.
    """
    if not rows:
        return rows
    by_column = list(zip(*rows, strict=True))
    if all(_all_plain("".join(filter(None, by_column[index]))) for index in text_columns):
        return rows
    texts = frozenset(text_columns)
    return [
        tuple(to_db_optional(value) if index in texts else value for index, value in enumerate(row)) for row in rows
    ]


def from_db_list(stored: Iterable[str]) -> list[str]:
    """Each stored value read back."""
    return [from_db(text) for text in stored]


def from_db_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """``row`` with every text value read back (other values, ``None`` included, as they are)."""
    return tuple(from_db(value) if type(value) is str else value for value in row)

