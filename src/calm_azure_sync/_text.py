"""Small text helpers shared by the modules that show or store outside text.

Two jobs, each written once:

* :func:`shorten` and :func:`show` put a bad value into an error message
  without the message growing without bound (a 1 MB display name) or failing
  (``repr`` of deeply nested data raises ``RecursionError``).
* :func:`clean_text` makes text from outside (Graph JSON) storable: every
  store and sink writes UTF-8, and the one thing a Python ``str`` can hold
  that UTF-8 cannot encode is a surrogate code point (U+D800 to U+DFFF; JSON
  allows a lone ``"\\ud83d"`` escape, and ``json.loads`` keeps it). Each is
  replaced with U+FFFD, the Unicode replacement character, so one odd display
  name costs one odd display name, not the batch it is in.
"""

from __future__ import annotations

import re
import reprlib

__all__ = ["REPLACEMENT_CHARACTER", "clean_text", "is_clean", "shorten", "show"]

REPLACEMENT_CHARACTER = "\ufffd"

#: The default length of a value shown in an error message.
SHOWN_LENGTH = 60

_SURROGATE = re.compile("[\ud800-\udfff]")



def _bounded_repr(limit: int) -> reprlib.Repr:
    # Bounded depth and length: the value may be deeply nested or huge.
    bounded = reprlib.Repr()
    bounded.maxlevel = 2
    bounded.maxstring = bounded.maxother = max(limit - 3, 3)
    return bounded


_REPRS = {SHOWN_LENGTH: _bounded_repr(SHOWN_LENGTH)}


def shorten(text: str, limit: int = SHOWN_LENGTH) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def show(value: object, limit: int = SHOWN_LENGTH) -> str:
    """A ``repr`` of ``value`` for an error message: at most ``limit`` characters, never raising."""
    try:
        bounded = _REPRS.get(limit) or _REPRS.setdefault(limit, _bounded_repr(limit))
        shown = bounded.repr(value)
    except Exception:  # a hostile __repr__: say what it is, not what it claims
        shown = f"<{type(value).__name__} object>"
    return shorten(shown, limit)


def is_clean(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 as it is (ASCII is checked first: almost all text is)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_text(text: str) -> str:
    """``text`` with every surrogate code point replaced by U+FFFD; clean text is returned as is."""
    if is_clean(text):
        return text
    return _SURROGATE.sub(REPLACEMENT_CHARACTER, text)
