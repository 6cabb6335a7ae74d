"""The SQLite user store's schema: its tables, the versioned migrations, and opening a file's schema."""

from __future__ import annotations

import sqlite3
from typing import Final

from ._db import write_transaction
from ._delta import DELTA_INDEXES, DELTA_TABLES
from ._state import SYNC_STATE_TABLE as _SYNC_STATE_TABLE

__all__ = ["SCHEMA_VERSION", "MIGRATIONS", "setup_store"]

SCHEMA_VERSION: Final = 6

_GROUP_TABLES: Final = (
    """CREATE TABLE IF NOT EXISTS synced_groups (
    trust_site_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    site_ids TEXT NOT NULL DEFAULT '[]',
    retired INTEGER NOT NULL DEFAULT 0 CHECK (retired IN (0, 1)),
    PRIMARY KEY (trust_site_id, external_id)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS group_members (
    trust_site_id TEXT NOT NULL,
    group_external_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id),
    PRIMARY KEY (trust_site_id, group_external_id, user_id),
    FOREIGN KEY (trust_site_id, group_external_id) REFERENCES synced_groups (trust_site_id, external_id)
) WITHOUT ROWID""",
)

# Indexes are created IF NOT EXISTS with the schema on every open (no version of their own): a
# member's delta groups (DELTA_INDEXES) serve the reads of some rows of a delta cache. (An index of
# group_members by user, tried for load_people, cost a 100k first import 10 s of its 16.)

# One row: a number every write of users, grants and groups changes (data_version()).
_DATA_VERSION_TABLE: Final = "CREATE TABLE IF NOT EXISTS data_version (version INTEGER NOT NULL)"

# Version -> the statements that bring a store of that version to the next.
MIGRATIONS: Final = {
    1: (
        "ALTER TABLE users ADD COLUMN deactivated_by_sync INTEGER NOT NULL DEFAULT 0 "
        "CHECK (deactivated_by_sync IN (0, 1))",
    ),
    2: (_SYNC_STATE_TABLE,),
    3: _GROUP_TABLES,
    4: (*DELTA_TABLES, _DATA_VERSION_TABLE),
    # v0.4: the synced account's tenant (API §13). Rows synced before stay
    # NULL; the next run's UpdateUser qualifies them.
    5: ("ALTER TABLE users ADD COLUMN tenant_id TEXT",),
}

_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS calm_store_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    email_key TEXT NOT NULL,
    display_name TEXT NOT NULL,
    given_name TEXT,
    surname TEXT,
    external_id TEXT,
    active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    deactivated_by_sync INTEGER NOT NULL DEFAULT 0 CHECK (deactivated_by_sync IN (0, 1)),
    tenant_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS users_by_email_key ON users (email_key);
CREATE UNIQUE INDEX IF NOT EXISTS users_by_external_id ON users (external_id);
CREATE TABLE IF NOT EXISTS grants (
    user_id TEXT NOT NULL REFERENCES users (id),
    site_id TEXT NOT NULL,
    module TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('Member', 'Manager', 'Admin')),
    source TEXT NOT NULL CHECK (source IN ('manual', 'azure')),
    trust_site_id TEXT,
    PRIMARY KEY (user_id, site_id, module, source)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grants_synced_by_trust ON grants (trust_site_id) WHERE source = 'azure';
CREATE INDEX IF NOT EXISTS grants_manual_by_user ON grants (user_id) WHERE source = 'manual';
{_SYNC_STATE_TABLE};
{_GROUP_TABLES[0]};
{_GROUP_TABLES[1]};
{DELTA_TABLES[0]};
{DELTA_TABLES[1]};
{DELTA_TABLES[2]};
{DELTA_TABLES[3]};
{DELTA_INDEXES[0]};
{_DATA_VERSION_TABLE};
INSERT INTO data_version (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM data_version);
CREATE TABLE IF NOT EXISTS run_locks (
    trust_site_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    pid INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
"""


def setup_store(connection: sqlite3.Connection) -> None:
    """Create or migrate the store's tables in one write transaction (a newer version is refused)."""
    with write_transaction(connection):
        connection.execute("CREATE TABLE IF NOT EXISTS calm_store_schema (version INTEGER NOT NULL)")
        row = connection.execute("SELECT version FROM calm_store_schema").fetchone()
        version = SCHEMA_VERSION if row is None else row[0]
        if version > SCHEMA_VERSION or (version < SCHEMA_VERSION and version not in MIGRATIONS):
            # Refused before anything is written: a newer library's file is never misread.
            raise RuntimeError(
                f"the user store schema is version {version}; this calm-azure-sync reads version {SCHEMA_VERSION}"
            )
        while version < SCHEMA_VERSION:
            for statement in MIGRATIONS[version]:
                connection.execute(statement)
            version += 1
        # Every table and index, IF NOT EXISTS: a new file gets them all, a
        # migrated one whatever its old version lacked.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                connection.execute(statement)
        if row is None:
            connection.execute("INSERT INTO calm_store_schema (version) VALUES (?)", (version,))
        elif row[0] != version:
            connection.execute("UPDATE calm_store_schema SET version = ?", (version,))
