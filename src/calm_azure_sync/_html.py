"""HTML tables for notebooks (``_repr_html_``): one builder for every table the library shows."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

__all__ = ["html_table"]


def html_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, limit: int = 200) -> str:
    """An escaped HTML table; past ``limit`` rows, a line says how many more there are."""
    head = "".join(f"<th>{html.escape(str(header))}</th>" for header in headers)
    shown: list[str] = []
    hidden = 0
    for row in rows:
        if len(shown) < limit:
            cells = "".join(f"<td>{html.escape('' if cell is None else str(cell))}</td>" for cell in row)
            shown.append(f"<tr>{cells}</tr>")
        else:
            hidden += 1
    more = f"<p>… and {hidden} more</p>" if hidden else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(shown)}</tbody></table>{more}"
