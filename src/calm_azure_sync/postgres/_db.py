"""Connections, the host-chosen schema and versioned migrations, shared by the store and the sink.

A :class:`Database` wraps either a conninfo string (it then owns a small
:class:`psycopg_pool.AsyncConnectionPool`, opened on first use and closed by
:meth:`Database.close`) or a pool the host passes in (never closed here).
Every statement names its tables through the schema identifier, quoted by
:mod:`psycopg.sql`, so the schema a host chooses can never inject SQL.

Each component (the user store, the Import Log) keeps its own version in
``<schema>.calm_schema_versions``. :meth:`Database.migrate` brings it to the
library's version in one transaction under a transaction-scoped advisory
lock, so two processes starting at once migrate once; a database whose
version is newer than this library's is refused with a
:class:`~calm_azure_sync.ConfigError` before anything is read or written.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from .._async_closing import AsyncClosing
from .._text import clean_text
from ..errors import ConfigError, StoreError

__all__ = ["Database", "OnDatabase", "advisory_key", "database_errors", "describe_error", "validate_schema"]

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# What a driver message could carry of a conninfo: "password=…" and "scheme://user:secret@host".
_SECRETS: Final = re.compile(r"(password\s*=\s*)('[^']*'|\S+)|(://[^:/@\s]*:)[^@\s]*@", re.IGNORECASE)


def describe_error(error: BaseException) -> str:
    """A driver error as one line for a person: the server's message, never a password.

    PostgreSQL's primary message when the server sent one (``terminating
    connection due to administrator command``), else the driver's first line
    (``connection is lost``), with anything shaped like a password removed.
    """
    diag = getattr(error, "diag", None)
    message = getattr(diag, "message_primary", None) or str(error) or type(error).__name__
    line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    line = _SECRETS.sub(lambda m: f"{m.group(1)}***" if m.group(1) else f"{m.group(3)}***@", line)
    return clean_text(line)


@contextlib.contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Translate a psycopg error in the block into a :class:`~calm_azure_sync.StoreError`: ``what`` failed, and why.

    The driver's error is chained as ``__cause__``. Library errors raised in
    the block (a lost run lock, a ConfigError) pass through as they are.
    """
    try:
        yield
    except psycopg.Error as error:
        raise StoreError(f"{what}: {describe_error(error)}") from error

Migrations = Mapping[int, Sequence[LiteralString]]
"""Version -> the statements that bring a component from the version before it to this one.

Statements name the schema as ``{schema}``; version 1 creates the tables."""


def validate_schema(schema: object) -> str:
    """``schema`` if it is a plain Postgres identifier we may create, else a ConfigError naming it."""
    if not isinstance(schema, str) or not _IDENTIFIER.fullmatch(schema):
        raise ConfigError(
            f"schema: {schema!r:.80} is not a valid schema name (letters, digits and _, "
            "not starting with a digit, at most 63 characters)"
        )
    if schema.lower().startswith("pg_"):
        raise ConfigError(f"schema: {schema!r} starts with pg_, which PostgreSQL reserves")
    return schema


def advisory_key(*parts: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``, from text parts.

    BLAKE2b, not :func:`hash`: it must be the same in every process and on
    every machine (Python salts ``hash`` of strings per process).
    """
    digest = hashlib.blake2b("\0".join(("calm_azure_sync", *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Database:
    """A pool and a schema, migrated for one component on first use."""

    def __init__(
        self,
        source: str | AsyncConnectionPool[Any],
        *,
        schema: str,
        component: str,
        migrations: Migrations,
        pool_size: int,
    ) -> None:
        self.schema = validate_schema(schema)
        self.component = component
        self._migrations = migrations
        self.version: Final = max(migrations)
        if isinstance(source, str):
            self.conninfo: str | None = source
            self._pool: AsyncConnectionPool[Any] | None = None
            self._owns_pool = True
        elif isinstance(source, AsyncConnectionPool):
            self.conninfo = None
            self._pool = source
            self._owns_pool = False
        else:
            raise ConfigError(
                f"conninfo: expected a conninfo string or a psycopg_pool.AsyncConnectionPool, "
                f"got {type(source).__name__}"
            )
        self._pool_size = pool_size
        self._migrated = False
        self._migrate_lock = asyncio.Lock()
        self._closed = False
        self._statements: dict[str, sql.Composed] = {}

    def q(self, template: LiteralString) -> sql.Composed:
        """``template`` with ``{schema}`` replaced by the quoted schema name (cached)."""
        statement = self._statements.get(template)
        if statement is None:
            statement = sql.SQL(template).format(schema=sql.Identifier(self.schema))
            self._statements[template] = statement
        return statement

    async def pool(self) -> AsyncConnectionPool[Any]:
        """The pool, opened on first use."""
        if self._closed:
            raise RuntimeError(f"the {self.component} is closed")
        if self._pool is None:
            assert self.conninfo is not None
            # autocommit: a transaction is exactly a ``conn.transaction()``
            # block, and a read never leaves a connection idle in transaction.
            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.conninfo,
                min_size=1,
                max_size=self._pool_size,
                kwargs={"autocommit": True},
                # A connection a server restart or an idle timeout closed is found on checkout and
                # replaced, rather than failing the next call (one empty query per checkout).
                check=AsyncConnectionPool.check_connection,
                open=False,
                name=f"calm_azure_sync.{self.component}",
            )
            await pool.open(wait=True, timeout=30)
            self._pool = pool
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A migrated pool connection for the block."""
        pool = await self.pool()
        if not self._migrated:
            await self.migrate()
        async with pool.connection() as connection:
            yield connection

    async def connect_dedicated(self) -> psycopg.AsyncConnection[Any]:
        """A connection outside the pool's rotation, in autocommit mode (for a session-level lock).

        From a conninfo it is a new connection; from a host's pool it is taken
        out of the pool until :meth:`release_dedicated` gives it back.
        """
        pool = await self.pool()
        if not self._migrated:
            await self.migrate()
        if self.conninfo is not None:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        connection: psycopg.AsyncConnection[Any] = await pool.getconn()
        try:
            await connection.set_autocommit(True)
        except BaseException:
            await pool.putconn(connection)
            raise
        return connection

    async def release_dedicated(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """Close a dedicated connection, or hand it back to the host's pool."""
        if self.conninfo is not None or self._pool is None:
            await connection.close()
            return
        await self._pool.putconn(connection)

    async def migrate(self) -> int:
        """Create or upgrade this component's tables; return the version now in the database.

        Idempotent and safe to run from several processes at once. Raises
        :class:`~calm_azure_sync.ConfigError` when the database was migrated
        by a newer calm-azure-sync (upgrade the library; never downgrade the
        database by hand).
        """
        async with self._migrate_lock:
            pool = await self.pool()
            async with pool.connection() as connection, connection.transaction():
                # Serialise concurrent migrations (CREATE SCHEMA IF NOT EXISTS
                # itself races) on one lock per schema, released at commit.
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (advisory_key("migrate", self.schema),)
                )
                await connection.execute(self.q("CREATE SCHEMA IF NOT EXISTS {schema}"))
                await connection.execute(
                    self.q(
                        "CREATE TABLE IF NOT EXISTS {schema}.calm_schema_versions "
                        "(component text PRIMARY KEY, version integer NOT NULL)"
                    )
                )
                cursor = await connection.execute(
                    self.q("SELECT version FROM {schema}.calm_schema_versions WHERE component = %s"),
                    (self.component,),
                )
                row = await cursor.fetchone()
                current = 0 if row is None else int(row[0])
                if current > self.version:
                    raise ConfigError(
                        f"postgres schema {self.schema!r}: the {self.component} tables are version {current}, "
                        f"newer than this calm-azure-sync reads (version {self.version}); "
                        "upgrade calm-azure-sync"
                    )
                for version in range(current + 1, self.version + 1):
                    for statement in self._migrations[version]:
                        await connection.execute(self.q(statement))
                if current != self.version:
                    await connection.execute(
                        self.q(
                            "INSERT INTO {schema}.calm_schema_versions (component, version) VALUES (%s, %s) "
                            "ON CONFLICT (component) DO UPDATE SET version = excluded.version"
                        ),
                        (self.component, self.version),
                    )
            self._migrated = True
            return self.version

    async def close(self) -> None:
        """Close the pool if this object opened it."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            await pool.close()


class OnDatabase(AsyncClosing):
    """What the Postgres store and Import Log share around their :class:`Database`: the schema,
    ``async with``, ``aclose()`` and ``migrate()``. Subclasses set ``_db`` in ``__init__``."""

    _db: Database

    @property
    def schema(self) -> str:
        """The Postgres schema holding this component's tables."""
        return self._db.schema

    async def aclose(self) -> None:
        """Close the component's own pool (a host's pool is left open). Safe to call again."""
        await self._db.close()

    async def close(self) -> None:
        """The same as :meth:`aclose` (kept from v0.3: it was this class's only way to close)."""
        await self.aclose()

    async def migrate(self) -> int:
        """Create or upgrade this component's tables now; returns the schema version.

        Otherwise this happens on first use. Safe to run from many processes at once.
        """
        return await self._db.migrate()
