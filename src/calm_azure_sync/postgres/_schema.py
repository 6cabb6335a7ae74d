"""The PostgreSQL store's tables, as versioned migrations (run by :meth:`PostgresUserStore.migrate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._db import Migrations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

SCHEMA_VERSION: Final = 4

MIGRATIONS: Final[Migrations] = {
    1: (
        """CREATE TABLE {schema}.users (
            id text PRIMARY KEY,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            email text NOT NULL,
            email_key text NOT NULL,
            display_name text NOT NULL,
            given_name text,
            surname text,
            external_id text,
            active boolean NOT NULL DEFAULT true,
            deactivated_by_sync boolean NOT NULL DEFAULT false,
            CONSTRAINT users_email_key_unique UNIQUE (email_key),
            CONSTRAINT users_external_id_unique UNIQUE (external_id)
        )""",
        """CREATE TABLE {schema}.grants (
            user_id text NOT NULL REFERENCES {schema}.users (id),
            site_id text NOT NULL,
            module text NOT NULL,
            source text NOT NULL CHECK (source IN ('manual', 'azure')),
            role text NOT NULL CHECK (role IN ('Member', 'Manager', 'Admin')),
            trust_site_id text,
            PRIMARY KEY (user_id, site_id, module, source)
        )""",
        "CREATE INDEX grants_synced_by_trust ON {schema}.grants (trust_site_id, user_id) WHERE source = 'azure'",
        "CREATE INDEX grants_manual_by_user ON {schema}.grants (user_id) WHERE source = 'manual'",
        # text: exactly what state_to_json wrote; reading it back checks it (a
        # corrupt or newer state is refused, never reset).
        """CREATE TABLE {schema}.sync_states (
            trust_site_id text PRIMARY KEY,
            state text NOT NULL,
            saved_at timestamptz NOT NULL DEFAULT now()
        )""",
    ),
    2: (
        """CREATE TABLE {schema}.synced_groups (
            trust_site_id text NOT NULL,
            external_id text NOT NULL,
            display_name text NOT NULL,
            site_ids text[] NOT NULL DEFAULT '{{}}',
            retired boolean NOT NULL DEFAULT false,
            PRIMARY KEY (trust_site_id, external_id)
        )""",
        """CREATE TABLE {schema}.group_members (
            trust_site_id text NOT NULL,
            group_external_id text NOT NULL,
            user_id text NOT NULL REFERENCES {schema}.users (id),
            PRIMARY KEY (trust_site_id, group_external_id, user_id),
            FOREIGN KEY (trust_site_id, group_external_id) REFERENCES {schema}.synced_groups (trust_site_id, external_id)
        )""",
        "CREATE INDEX group_members_by_user ON {schema}.group_members (user_id)",
    ),
    # The incremental sync's delta cache (postgres/_delta.py), as rows the
    # shared codec (incremental/_rows.py) writes and checks. No foreign keys and no
    # CHECKs: a row that breaks the cache's rules is caught when read back
    # (the cache then counts as missing and is rebuilt), never a failed write.
    3: (
        # cursor and mapped: text, exactly the JSON meta_row wrote (jsonb
        # would reorder and re-render it).
        """CREATE TABLE {schema}.delta_meta (
            trust_site_id text PRIMARY KEY,
            version integer NOT NULL,
            cursor text NOT NULL,
            mapped text NOT NULL,
            full_read_at timestamptz NOT NULL
        )""",
        """CREATE TABLE {schema}.delta_groups (
            trust_site_id text NOT NULL,
            group_id text NOT NULL,
            PRIMARY KEY (trust_site_id, group_id)
        )""",
        """CREATE TABLE {schema}.delta_members (
            trust_site_id text NOT NULL,
            group_id text NOT NULL,
            member_id text NOT NULL,
            PRIMARY KEY (trust_site_id, group_id, member_id)
        )""",
        """CREATE TABLE {schema}.delta_users (
            trust_site_id text NOT NULL,
            user_id text NOT NULL,
            display_name text,
            mail text,
            user_principal_name text,
            given_name text,
            surname text,
            account_enabled boolean NOT NULL,
            user_type text NOT NULL,
            assigned_license_count integer,
            on_premises_sync_enabled boolean,
            creation_type text,
            PRIMARY KEY (trust_site_id, user_id)
        )""",
    ),
    4: (
        # One row: a number every write of users, grants and groups changes (data_version()).
        "CREATE TABLE {schema}.data_version (version bigint NOT NULL)",
        "INSERT INTO {schema}.data_version (version) VALUES (0)",
    ),
}
