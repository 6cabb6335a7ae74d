"""Tables for people: one HTML builder for every notebook table (``_repr_html_``), one for text.

The cells hold text from Azure (display names, group names, reasons naming
them), so both builders treat every cell as untrusted, in one place: HTML
escapes it, and both spell out the characters that would let a name take
over its surroundings (:func:`visible`).
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Iterable, Sequence

import attrs

__all__ = ["Cell", "html_table", "text_table", "visible"]

#: Rows a text table shows before it says how many more there are (HTML shows 200).
TEXT_ROWS = 50
#: Characters a text cell shows before it is cut (the last column gets ``TEXT_LAST_CELL``).
TEXT_CELL = 40
TEXT_LAST_CELL = 120

# Control characters (a terminal obeys ESC sequences; a newline breaks a row)
# and the bidirectional embeddings, overrides and isolates that make a line
# read in another order than it is written ("Trojan Source"). Joiners and
# marks that scripts need (ZWJ, ZWNJ, LRM, RLM) are left alone.
_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    r"""``text`` with control and bidi-override characters spelled out (``\n``, ``\x1b``, ``\u202e``)."""
    return _HIDDEN.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


@attrs.frozen
class Cell:
    """A table cell that shows ``text`` and, on hover, ``title`` (an object id behind a name)."""

    text: object
    title: str | None = None


def _text(value: object) -> str:
    if isinstance(value, Cell):
        value = value.text
    return "" if value is None else visible(str(value))


def _html_cell(value: object) -> str:
    title = value.title if isinstance(value, Cell) else None
    title_attribute = f' title="{html.escape(visible(title))}"' if title else ""
    return f"<td{title_attribute}>{html.escape(_text(value))}</td>"


#: Rows an HTML table shows before it says how many more there are.
HTML_ROWS = 200
#: Rows past which an HTML table scrolls in a box of its own.
SCROLL_ROWS = 20


def _first(
    rows: Iterable[Sequence[object]], limit: int, total: int | None
) -> tuple[list[Sequence[object]], int]:
    """The first ``limit`` rows and how many are left out; given ``total``, the rest is never read."""
    iterator = iter(rows)
    shown = list(itertools.islice(iterator, limit))
    hidden = total - len(shown) if total is not None else sum(1 for _ in iterator)
    return shown, hidden


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    limit: int = HTML_ROWS,
    total: int | None = None,
) -> str:
    """An escaped HTML table; past ``limit`` rows, a line says how many more there are.

    A cell is any value (``None`` shows empty) or a :class:`Cell` with a title.
    ``total``, when the caller knows it, is the number of rows ``rows`` would
    give: a lazy ``rows`` is then read no further than ``limit`` (a plan of
    100,000 changes shows its first 200 without describing the rest).
    """
    head = "".join(f"<th>{html.escape(visible(str(header)))}</th>" for header in headers)
    shown, hidden = _first(rows, limit, total)
    body = "".join(f"<tr>{''.join(_html_cell(cell) for cell in row)}</tr>" for row in shown)
    more = f"<p>… and {hidden} more</p>" if hidden > 0 else ""
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if len(shown) > SCROLL_ROWS:
        # A long table scrolls in its own box, so what follows it in a notebook cell stays in view.
        table = f'<div style="max-height: 32em; overflow-y: auto">{table}</div>'
    return table + more


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    limit: int = TEXT_ROWS,
    total: int | None = None,
) -> list[str]:
    """A plain-text table, one line a row, for ``__str__``; the same cells :func:`html_table` takes.

    Columns empty in every shown row are left out; long cells are cut; past
    ``limit`` rows, a line says how many more there are (``total`` as for
    :func:`html_table`). No rows, no lines.
    """
    last = len(headers) - 1
    first, hidden = _first(rows, limit, total)
    shown = [
        [_cut(_text(cell), TEXT_LAST_CELL if index == last else TEXT_CELL) for index, cell in enumerate(row)]
        for row in first
    ]
    if not shown:
        return []
    columns = [index for index in range(len(headers)) if any(row[index] for row in shown)]
    widths = {index: max(len(headers[index]), *(len(row[index]) for row in shown)) for index in columns}
    lines = ["  ".join(headers[index].ljust(widths[index]) for index in columns).rstrip()]
    lines += ["  ".join(row[index].ljust(widths[index]) for index in columns).rstrip() for row in shown]
    if hidden > 0:
        lines.append(f"… and {hidden} more")
    return lines
