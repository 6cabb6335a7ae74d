"""The SQLite store's ``sync_state`` table: one row of JSON per trust (see :class:`~calm_azure_sync.SyncState`)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Final

from ..core.state import SyncState
from ..errors import ConfigError
from ..store.rules import state_from_json, state_to_json
from ._db import Fence, iso_utc, write_transaction

__all__ = ["SYNC_STATE_TABLE", "load_sync_state", "save_sync_state", "write_sync_state"]

SYNC_STATE_TABLE: Final = """CREATE TABLE IF NOT EXISTS sync_state (
    trust_site_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    saved_at TEXT NOT NULL
)"""


def load_sync_state(connection: sqlite3.Connection, trust_site_id: str, where: str) -> SyncState:
    row = connection.execute(
        "SELECT version, state FROM sync_state WHERE trust_site_id = ?", (trust_site_id,)
    ).fetchone()
    if row is None:
        return SyncState()
    version, text = row
    state = state_from_json(text, where=where)
    if version != state.version:
        raise ConfigError(f"{where}: the row says version {version!r} but holds a version {state.version} state")
    return state


def save_sync_state(
    connection: sqlite3.Connection, trust_site_id: str, state: SyncState, where: str, fence: Fence | None = None
) -> None:
    """Replace the trust's row in a transaction of its own (``fence``: see ``write_transaction``)."""
    text = state_to_json(state, where=where)
    with write_transaction(connection, fence):
        _write_text(connection, trust_site_id, state, text)


def write_sync_state(connection: sqlite3.Connection, trust_site_id: str, state: SyncState, where: str) -> None:
    """Replace the trust's row inside the caller's write transaction (a batch's: see ``apply_with_state``)."""
    _write_text(connection, trust_site_id, state, state_to_json(state, where=where))


def _write_text(connection: sqlite3.Connection, trust_site_id: str, state: SyncState, text: str) -> None:
    connection.execute(
        "INSERT INTO sync_state (trust_site_id, version, state, saved_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (trust_site_id) DO UPDATE SET "
        "version = excluded.version, state = excluded.state, saved_at = excluded.saved_at",
        (trust_site_id, state.version, text, iso_utc(dt.datetime.now(dt.UTC))),
    )
