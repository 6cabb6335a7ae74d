"""A progress bar for long imports, in terminals and notebooks (tqdm, when installed).

>>> from calm_azure_sync.progress import tqdm_progress
>>> progress = tqdm_progress(disable=True)   # Reconciler(..., progress=progress)
>>> progress("read", 1, 4); progress.close()
"""

from __future__ import annotations

from typing import Any

__all__ = ["TqdmProgress", "tqdm_progress"]


class TqdmProgress:
    """A ``progress(stage, done, total)`` callback drawing one tqdm bar per stage.

    Uses ``tqdm.auto``, so a notebook gets a widget and a terminal a text bar.
    Extra keyword arguments go to each ``tqdm`` bar.
    """

    def __init__(self, **tqdm_options: Any) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError as error:  # an optional extra: say how to get it
            raise ImportError(
                "progress bars need tqdm: pip install 'calm-azure-sync[progress]'"
            ) from error
        self._tqdm = tqdm
        self._options = tqdm_options
        self._stage: str | None = None
        self._bar: Any = None

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = self._tqdm(total=total, desc=stage, unit="item", **self._options)
        bar = self._bar
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        """Finish the current bar (the next stage also does this)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stage = None


def tqdm_progress(**tqdm_options: Any) -> TqdmProgress:
    """A progress callback for :class:`~calm_azure_sync.Reconciler` that draws tqdm bars."""
    return TqdmProgress(**tqdm_options)
