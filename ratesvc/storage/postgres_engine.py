"""The shared engine: PostgreSQL through asyncpg, for several replicas on one ledger.

Why asyncpg (over psycopg 3): it is maintained (MagicStack, releases following PostgreSQL's),
speaks PostgreSQL's binary protocol natively instead of wrapping libpq, is the fastest asyncio
driver in its own and independent benchmarks, prepares and caches every statement it runs (the
ledger's statements are a small fixed set), and ships a connection pool — no extra package.

Transactions run at ``READ COMMITTED`` in a pooled connection. Unlike SQLite's single writer,
writers here run side by side (in one process and across replicas), so the ledger makes each of
its read-then-write steps safe explicitly: it locks the rows it read (``SELECT … FOR UPDATE``,
:attr:`PostgresEngine.for_update`), writes conditionally (``UPDATE … WHERE state IN (…)``, the
row count telling who won), or lets a unique index decide (``INSERT … ON CONFLICT DO NOTHING``).
A transaction PostgreSQL aborts for a deadlock or a serialization failure is run again.

Migrations run under ``pg_advisory_xact_lock``: replicas starting together queue on the lock, the
first migrates, the others then read the new version and have nothing to do.

A PostgreSQL that hangs (a network partition, a stuck server) rather than refuses must not hold
requests forever: every statement is abandoned after :data:`COMMAND_TIMEOUT_S` and waiting for
a pooled connection after :data:`ACQUIRE_TIMEOUT_S` (``TimeoutError``, which the HTTP edge
answers as 503 ``storage_unavailable``: :mod:`ratesvc.storage.outage`). A connection whose
statement was abandoned (or whose task was cancelled) is terminated, not given back: asyncpg's
release would first wait — shielded, up to the acquire timeout — for the server to acknowledge
the cancellation, which a hung server never does, and the caller would wait twice as long
(:meth:`PostgresEngine._connection`). A transaction is not rolled back on such a connection
either (the ROLLBACK would wait the same way); closing the connection ends it on the server.
Migrations, which may wait for another replica's and may rewrite a table, have an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ratesvc.storage.migrations import postgresql_migrations
from ratesvc.storage.sql import (
    Connection,
    Dialect,
    LedgerUnavailable,
    RetryTransaction,
    Row,
    numbered,
    rowcount,
)

T = TypeVar("T")

POOL_SIZE = 10  # connections per process; replicas × this must stay under max_connections
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 10.0  # one statement; the ledger's take milliseconds
ACQUIRE_TIMEOUT_S = 10.0  # a pooled connection (a new one included), and its release
MIGRATION_TIMEOUT_S = 3600.0
RETRIES = 5  # a transaction aborted by a deadlock or serialization failure is run again
MIGRATION_LOCK = 0x7261746573766301  # "ratesvc" + 1: the advisory lock migrations run under
_RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError, RetryTransaction)


def address(url: str) -> str:
    """``host:port/database`` of a PostgreSQL URL — never its user or password."""
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        host = parts.hostname or query.get("host", ["localhost"])[0]
        port = parts.port or int(query.get("port", ["5432"])[0])
    except ValueError:
        return "(an address that cannot be read)"
    database = parts.path.lstrip("/") or query.get("dbname", [""])[0] or "(default database)"
    return f"{host}:{port}/{database}"


class _Connection:
    """A pooled connection inside a transaction."""

    def __init__(self, connection: PoolConnectionProxy[Any]) -> None:
        self._connection = connection

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return rowcount(await self._connection.execute(numbered(sql), *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._connection.executemany(numbered(sql), rows)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return [tuple(record) for record in await self._connection.fetch(numbered(sql), *args)]

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        record = await self._connection.fetchrow(numbered(sql), *args)
        return None if record is None else tuple(record)


class PostgresEngine:
    dialect: Dialect = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    now_s = "(EXTRACT(EPOCH FROM clock_timestamp())::float8)"

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        self._url = url
        self._pool_size = pool_size
        try:  # config._backend_url has checked the URL; never fail (or show it) here anyway
            self._password = urlsplit(url).password or ""
        except ValueError:
            self._password = ""
        self.where = f"PostgreSQL at {address(url)}"
        self._pool: asyncpg.Pool[Any] | None = None

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            raise RuntimeError("the ledger is not open")
        return self._pool

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for secret in {self._password, unquote(self._password)} - {""}:
            text = text.replace(secret, "***")
        return text

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self._pool_size, timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S, server_settings={"application_name": "ratesvc"},
            )  # fmt: skip
        except asyncpg.ClientConfigurationError as exc:  # an option asyncpg refuses, named
            raise LedgerUnavailable(f"cannot use {self.where}: {self._scrub(exc)}") from None
        except ValueError:  # the URL as asyncpg reads it: its text may show part of it
            raise LedgerUnavailable(
                f"cannot use {self.where}: asyncpg cannot read the URL or one of its options "
                "(percent-encode / # ? @ % [ ] in the user and password)"
            ) from None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerUnavailable(f"cannot reach {self.where}: {self._scrub(exc)}") from None
        try:
            await self._migrate()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise LedgerUnavailable(
                f"cannot migrate the ledger on {self.where}: {self._scrub(exc)}"
            ) from None

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _migrate(self) -> None:
        """Each missing migration in its own transaction, under the advisory lock, the version
        read after the lock is held (``CREATE TABLE IF NOT EXISTS`` is not safe to race either)."""
        migrations = postgresql_migrations()
        wait = MIGRATION_TIMEOUT_S
        async with self.pool.acquire() as connection:
            while True:
                async with connection.transaction():
                    await connection.execute(
                        "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK, timeout=wait
                    )
                    await connection.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
                        timeout=wait,
                    )
                    version = await connection.fetchval(
                        "SELECT MAX(version) FROM schema_version", timeout=wait
                    )
                    version = int(version or 0)
                    if version >= len(migrations):
                        return
                    await connection.execute(migrations[version], timeout=wait)  # several
                    await connection.execute(
                        "INSERT INTO schema_version (version) VALUES ($1)", version + 1,
                        timeout=wait,
                    )  # fmt: skip

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[PoolConnectionProxy[Any]]:
        """A pooled connection for one operation. When a statement was abandoned (its timeout)
        or the task was cancelled, the connection is terminated before it is given back, so
        the caller hears of a hung server after one :data:`COMMAND_TIMEOUT_S`, not two."""
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as connection:
            try:
                yield connection
            except (TimeoutError, asyncio.CancelledError):
                connection.terminate()
                raise

    async def run(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        for attempt in range(RETRIES):
            try:
                async with self._connection() as connection:
                    transaction = connection.transaction()
                    await transaction.start()
                    try:
                        result = await body(_Connection(connection))
                    except (TimeoutError, asyncio.CancelledError):
                        raise  # no ROLLBACK: the connection is terminated (see the module)
                    except BaseException:
                        if not connection.is_closed():
                            await transaction.rollback()
                        raise
                    await transaction.commit()
                    return result
            except _RETRYABLE:
                if attempt == RETRIES - 1:
                    raise
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._connection() as connection:
            return [tuple(record) for record in await connection.fetch(numbered(sql), *args)]

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._connection() as connection:
            return rowcount(await connection.execute(numbered(sql), *args))

    async def writable(self) -> None:
        """A server in recovery (a standby) or read-only by default takes no writes."""
        async with self._connection() as connection:
            read_only = await connection.fetchval(
                "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"
            )
        if read_only:
            raise RuntimeError(f"{self.where} is read-only (a standby?)")
