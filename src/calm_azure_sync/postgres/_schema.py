"""The PostgreSQL store's tables, as versioned migrations (run by :meth:`PostgresUserStore.migrate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._db import Migrations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

SCHEMA_VERSION: Final = 8

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
    # Every text value is written through postgres/_codec.py from now on, which escapes
    # U+0000, lone surrogates and its escape character U+FFFF. Rows written before could
    # hold neither of the first two, so escaping U+FFFF (doubling it) makes them read
    # back as they were written. Only rows holding one are touched; the users, grants,
    # groups and memberships that reference each other are changed in one statement, so
    # the foreign keys are checked once, on the new values.
    5: (
        """WITH users AS (
            UPDATE {schema}.users SET
                id = replace(id, chr(65535), chr(65535) || chr(65535)),
                email = replace(email, chr(65535), chr(65535) || chr(65535)),
                email_key = replace(email_key, chr(65535), chr(65535) || chr(65535)),
                display_name = replace(display_name, chr(65535), chr(65535) || chr(65535)),
                given_name = replace(given_name, chr(65535), chr(65535) || chr(65535)),
                surname = replace(surname, chr(65535), chr(65535) || chr(65535)),
                external_id = replace(external_id, chr(65535), chr(65535) || chr(65535))
            WHERE strpos(concat(id, email, email_key, display_name, given_name, surname, external_id),
                         chr(65535)) > 0
            RETURNING 1
        ), grants AS (
            UPDATE {schema}.grants SET
                user_id = replace(user_id, chr(65535), chr(65535) || chr(65535)),
                site_id = replace(site_id, chr(65535), chr(65535) || chr(65535)),
                module = replace(module, chr(65535), chr(65535) || chr(65535)),
                trust_site_id = replace(trust_site_id, chr(65535), chr(65535) || chr(65535))
            WHERE strpos(concat(user_id, site_id, module, trust_site_id), chr(65535)) > 0
            RETURNING 1
        ), groups AS (
            UPDATE {schema}.synced_groups SET
                trust_site_id = replace(trust_site_id, chr(65535), chr(65535) || chr(65535)),
                external_id = replace(external_id, chr(65535), chr(65535) || chr(65535)),
                display_name = replace(display_name, chr(65535), chr(65535) || chr(65535)),
                site_ids = ARRAY(SELECT replace(site, chr(65535), chr(65535) || chr(65535))
                                 FROM unnest(site_ids) WITH ORDINALITY AS s (site, n) ORDER BY n)
            WHERE strpos(concat(trust_site_id, external_id, display_name, array_to_string(site_ids, '')),
                         chr(65535)) > 0
            RETURNING 1
        ), members AS (
            UPDATE {schema}.group_members SET
                trust_site_id = replace(trust_site_id, chr(65535), chr(65535) || chr(65535)),
                group_external_id = replace(group_external_id, chr(65535), chr(65535) || chr(65535)),
                user_id = replace(user_id, chr(65535), chr(65535) || chr(65535))
            WHERE strpos(concat(trust_site_id, group_external_id, user_id), chr(65535)) > 0
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM grants), (SELECT count(*) FROM groups),
               (SELECT count(*) FROM members)""",
        # sync_states.state is ASCII JSON (state_to_json), so only its key can hold U+FFFF.
        """UPDATE {schema}.sync_states SET
            trust_site_id = replace(trust_site_id, chr(65535), chr(65535) || chr(65535))
        WHERE strpos(trust_site_id, chr(65535)) > 0""",
        """UPDATE {schema}.delta_meta SET
            trust_site_id = replace(trust_site_id, chr(65535), chr(65535) || chr(65535)),
            cursor = replace(cursor, chr(65535), chr(65535) || chr(65535)),
            mapped = replace(mapped, chr(65535), chr(65535) || chr(65535))
        WHERE strpos(concat(trust_site_id, cursor, mapped), chr(65535)) > 0""",
        """UPDATE {schema}.delta_groups SET
            trust_site_id = replace(trust_site_id, chr(65535), chr(65535) || chr(65535)),
            group_id = replace(group_id, chr(65535), chr(65535) || chr(65535))
        WHERE strpos(concat(trust_site_id, group_id), chr(65535)) > 0""",
        """UPDATE {schema}.delta_members SET
            trust_site_id = replace(trust_site_id, chr(65535), chr(65535) || chr(65535)),
            group_id = replace(group_id, chr(65535), chr(65535) || chr(65535)),
            member_id = replace(member_id, chr(65535), chr(65535) || chr(65535))
        WHERE strpos(concat(trust_site_id, group_id, member_id), chr(65535)) > 0""",
        """UPDATE {schema}.delta_users SET
            trust_site_id = replace(trust_site_id, chr(65535), chr(65535) || chr(65535)),
            user_id = replace(user_id, chr(65535), chr(65535) || chr(65535)),
            display_name = replace(display_name, chr(65535), chr(65535) || chr(65535)),
            mail = replace(mail, chr(65535), chr(65535) || chr(65535)),
            user_principal_name = replace(user_principal_name, chr(65535), chr(65535) || chr(65535)),
            given_name = replace(given_name, chr(65535), chr(65535) || chr(65535)),
            surname = replace(surname, chr(65535), chr(65535) || chr(65535)),
            user_type = replace(user_type, chr(65535), chr(65535) || chr(65535)),
            creation_type = replace(creation_type, chr(65535), chr(65535) || chr(65535))
        WHERE strpos(concat(trust_site_id, user_id, display_name, mail, user_principal_name, given_name,
                            surname, user_type, creation_type), chr(65535)) > 0""",
    ),
    # v0.4: the synced account's tenant (API §13), written through the codec like
    # every text. Rows synced before stay NULL; the next run's UpdateUser qualifies them.
    6: ("ALTER TABLE {schema}.users ADD COLUMN tenant_id text",),
    # v0.4: a member's groups, for reading some rows of a cache (load_delta_rows).
    7: ("CREATE INDEX delta_members_by_member ON {schema}.delta_members (trust_site_id, member_id)",),
    # v0.4: the three foreign keys of grants and group_members become one check per
    # statement. A foreign key checks each inserted row by a trigger of its own (a
    # lookup and a row lock), which was about half of a first import's COPY time;
    # these check a statement's rows at once (transition tables), with the same
    # locks (FOR KEY SHARE) and the same error (SQLSTATE 23503). Removing or
    # renaming a referenced user or group is refused as before, row by row (rare).
    # See docs/stores.md, "Referential checks".
    8: (
        "ALTER TABLE {schema}.grants DROP CONSTRAINT grants_user_id_fkey",
        "ALTER TABLE {schema}.group_members DROP CONSTRAINT group_members_user_id_fkey",
        "ALTER TABLE {schema}.group_members DROP CONSTRAINT group_members_trust_site_id_group_external_id_fkey",
        # Every user a statement's new rows name exists, locked as a foreign key locks it.
        """CREATE FUNCTION {schema}.calm_users_exist() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            wanted text[];
            found bigint;
        BEGIN
            SELECT array_agg(DISTINCT user_id) INTO wanted FROM new_rows;
            PERFORM 1 FROM {schema}.users WHERE id = ANY(wanted) ORDER BY id FOR KEY SHARE;
            GET DIAGNOSTICS found = ROW_COUNT;
            IF found <> coalesce(cardinality(wanted), 0) THEN
                RAISE foreign_key_violation USING
                    MESSAGE = format('a row of %I names a user that does not exist', TG_TABLE_NAME);
            END IF;
            RETURN NULL;
        END $$""",
        # Every (trust, group) the statement's new memberships name exists, locked likewise.
        """CREATE FUNCTION {schema}.calm_groups_exist() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            wanted bigint;
            found bigint;
        BEGIN
            SELECT count(*) INTO wanted FROM (SELECT DISTINCT trust_site_id, group_external_id FROM new_rows) AS k;
            PERFORM 1 FROM {schema}.synced_groups AS g
                JOIN (SELECT DISTINCT trust_site_id, group_external_id FROM new_rows) AS k
                ON g.trust_site_id = k.trust_site_id AND g.external_id = k.group_external_id
                ORDER BY g.trust_site_id, g.external_id FOR KEY SHARE OF g;
            GET DIAGNOSTICS found = ROW_COUNT;
            IF found <> wanted THEN
                RAISE foreign_key_violation USING
                    MESSAGE = 'a row of group_members names a group that does not exist';
            END IF;
            RETURN NULL;
        END $$""",
        # A user row that goes (deleted, or its id changed) while grants or memberships name it.
        """CREATE FUNCTION {schema}.calm_user_unreferenced() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM {schema}.users WHERE id = OLD.id) AND (
                EXISTS (SELECT 1 FROM {schema}.grants WHERE user_id = OLD.id)
                OR EXISTS (SELECT 1 FROM {schema}.group_members WHERE user_id = OLD.id)
            ) THEN
                RAISE foreign_key_violation USING
                    MESSAGE = 'a user that grants or group memberships name cannot be removed or renamed';
            END IF;
            RETURN NULL;
        END $$""",
        """CREATE FUNCTION {schema}.calm_group_unreferenced() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NOT EXISTS (
                SELECT 1 FROM {schema}.synced_groups
                WHERE trust_site_id = OLD.trust_site_id AND external_id = OLD.external_id
            ) AND EXISTS (
                SELECT 1 FROM {schema}.group_members
                WHERE trust_site_id = OLD.trust_site_id AND group_external_id = OLD.external_id
            ) THEN
                RAISE foreign_key_violation USING
                    MESSAGE = 'a group that group memberships name cannot be removed or renamed';
            END IF;
            RETURN NULL;
        END $$""",
        # TRUNCATE fires no row triggers: a truncated users or synced_groups table may not
        # leave rows naming it behind. Checked after the statement, so truncating the
        # referencing tables in the same statement passes; CASCADE no longer reaches them.
        """CREATE FUNCTION {schema}.calm_truncated_unreferenced() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF EXISTS (SELECT 1 FROM {schema}.group_members)
                OR (TG_TABLE_NAME = 'users' AND EXISTS (SELECT 1 FROM {schema}.grants)) THEN
                RAISE foreign_key_violation USING
                    MESSAGE = format('%I cannot be truncated while rows name it', TG_TABLE_NAME),
                    HINT = 'Truncate grants and group_members in the same statement.';
            END IF;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER users_referenced_on_truncate AFTER TRUNCATE ON {schema}.users "
        "FOR EACH STATEMENT EXECUTE FUNCTION {schema}.calm_truncated_unreferenced()",
        "CREATE TRIGGER groups_referenced_on_truncate AFTER TRUNCATE ON {schema}.synced_groups "
        "FOR EACH STATEMENT EXECUTE FUNCTION {schema}.calm_truncated_unreferenced()",
        # Transition tables need one trigger per event.
        "CREATE TRIGGER grants_users_on_insert AFTER INSERT ON {schema}.grants REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION {schema}.calm_users_exist()",
        "CREATE TRIGGER grants_users_on_update AFTER UPDATE ON {schema}.grants REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION {schema}.calm_users_exist()",
        "CREATE TRIGGER members_users_on_insert AFTER INSERT ON {schema}.group_members "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {schema}.calm_users_exist()",
        "CREATE TRIGGER members_users_on_update AFTER UPDATE ON {schema}.group_members "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {schema}.calm_users_exist()",
        "CREATE TRIGGER members_groups_on_insert AFTER INSERT ON {schema}.group_members "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {schema}.calm_groups_exist()",
        "CREATE TRIGGER members_groups_on_update AFTER UPDATE ON {schema}.group_members "
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {schema}.calm_groups_exist()",
        "CREATE TRIGGER users_referenced_on_delete AFTER DELETE ON {schema}.users "
        "FOR EACH ROW EXECUTE FUNCTION {schema}.calm_user_unreferenced()",
        "CREATE TRIGGER users_referenced_on_rename AFTER UPDATE OF id ON {schema}.users FOR EACH ROW "
        "WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION {schema}.calm_user_unreferenced()",
        "CREATE TRIGGER groups_referenced_on_delete AFTER DELETE ON {schema}.synced_groups "
        "FOR EACH ROW EXECUTE FUNCTION {schema}.calm_group_unreferenced()",
        "CREATE TRIGGER groups_referenced_on_rename AFTER UPDATE OF trust_site_id, external_id ON "
        "{schema}.synced_groups FOR EACH ROW WHEN (OLD.trust_site_id IS DISTINCT FROM NEW.trust_site_id "
        "OR OLD.external_id IS DISTINCT FROM NEW.external_id) EXECUTE FUNCTION {schema}.calm_group_unreferenced()",
    ),
}
