"""A progress bar for long imports, in terminals and notebooks (tqdm, when installed).

Each stage's bar is closed as soon as the stage is finished, that is when
``done == total``, so no bar is left open (or later drawn into another cell)
once a run returns. :meth:`TqdmProgress.close`, or a ``with`` block, closes a
bar that a failed or cancelled run left part-way:

>>> from calm_azure_sync.progress import tqdm_progress
>>> with tqdm_progress(disable=True) as progress:   # Reconciler(..., progress=progress)
...     progress("read", 1, 4)
"""

from __future__ import annotations

import importlib.util
import sys
from types import TracebackType
from typing import Any

__all__ = ["TqdmProgress", "tqdm_progress"]


def _tqdm_class() -> Any:
    """``tqdm.auto``'s bar, or the text bar when ipywidgets is missing.

    In a notebook without ipywidgets, importing ``tqdm.auto`` prints a red
    ``TqdmWarning`` ("IProgress not found") and then falls back to the text
    bar anyway; choosing the text bar ourselves gives the same bar without
    the warning. Widgets need ipywidgets, so its absence is the whole test.
    """
    try:
        from tqdm.asyncio import tqdm as text_tqdm
    except ImportError as error:  # an optional extra: say how to get it
        raise ImportError("progress bars need tqdm: pip install 'calm-azure-sync[progress]'") from error
    # find_spec looks without importing (None too when sys.modules blocks the name).
    if sys.modules.get("ipywidgets") is None and importlib.util.find_spec("ipywidgets") is None:
        return text_tqdm  # what tqdm.auto gives in a terminal too
    from tqdm.auto import tqdm

    return tqdm


class TqdmProgress:
    """A ``progress(stage, done, total)`` callback drawing one tqdm bar per stage.

    Uses ``tqdm.auto`` (a widget in notebooks, a text bar in terminals), or
    the text bar everywhere when ipywidgets is not installed. A stage's bar
    is closed when ``done == total`` (``total`` not None) or when another
    stage starts; the same stage reported again later opens a new bar.
    Extra keyword arguments go to each ``tqdm`` bar.
    """

    def __init__(self, **tqdm_options: Any) -> None:
        self._tqdm = _tqdm_class()
        self._options = tqdm_options
        self._stage: str | None = None
        self._bar: Any = None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage != self._stage or self._bar is None:
            self.close()
            self._stage = stage
            self._bar = self._tqdm(total=total, desc=stage, unit="item", **self._options)
        bar = self._bar
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if total is not None and done >= total:
            self.close()

    def close(self) -> None:
        """Close the bar still open, if any: one a failed or cancelled run left part-way."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stage = None

    def __enter__(self) -> TqdmProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def tqdm_progress(**tqdm_options: Any) -> TqdmProgress:
    """A progress callback for :class:`~calm_azure_sync.Reconciler` that draws tqdm bars.

    Use it in a ``with`` block (or call ``close()`` at the end) so that a run
    that fails part-way does not leave its bar open.
    """
    return TqdmProgress(**tqdm_options)
