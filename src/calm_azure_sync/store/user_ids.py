"""Store user ids: :func:`new_user_id`, unique across processes and cheap. Nothing here does IO.

(``os.getpid`` is read, never a file or socket: a forked child must not
repeat its parent's ids.)
"""

from __future__ import annotations

import itertools
import os
import uuid

__all__ = ["new_user_id"]

_id_prefix: tuple[int, str] = (0, "")
_id_counter = itertools.count(1)


def new_user_id() -> str:
    """A fresh store user id, unique across processes.

    A random per-process prefix and a counter: as unique as a UUID4 but far
    cheaper, which matters when a first import creates 100k users.
    """
    global _id_prefix
    pid = os.getpid()
    if _id_prefix[0] != pid:  # a forked child must not repeat its parent's ids
        _id_prefix = (pid, uuid.uuid4().hex[:16])
    return f"{_id_prefix[1]}-{next(_id_counter):08x}"
