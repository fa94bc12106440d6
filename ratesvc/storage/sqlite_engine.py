"""The embedded engine: one SQLite file through aiosqlite — no server to run, one machine.

WAL (readers never wait for the writer), ``synchronous=FULL`` (a committed purchase survives a
power cut), foreign keys on. One connection serves the whole process, behind one lock: on a
shared connection a statement issued while another coroutine's transaction is open would join
that transaction (and share its fate). Transactions start with ``BEGIN IMMEDIATE``, which takes
the file's write lock up front, so what a transaction reads stays true until it commits — the
ledger's read-then-write steps rely on that here, and on row locks on PostgreSQL.

A statement is run by aiosqlite's one thread, in the order statements were sent, even when the
task awaiting it was cancelled meanwhile (a claim that ran out, shutdown, a timeout). So every
``BEGIN`` is inside the block that ends with ``ROLLBACK`` on any exception: the ``ROLLBACK`` is
queued after the ``BEGIN`` and undoes it whether or not the ``BEGIN`` had run when the task was
cancelled, and the shared connection is never left inside a transaction nobody owns. SQLite
rolls some failed transactions back itself (a full disk, an I/O error, a lock not granted), so
the ``ROLLBACK`` finding none is no error; the original one is raised.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from ratesvc.storage.migrations import SQLITE_MIGRATIONS
from ratesvc.storage.sql import Connection, Dialect, LedgerUnavailable, RetryTransaction, Row

T = TypeVar("T")
RETRIES = 5  # a transaction that raised RetryTransaction is run again at most this often


def _casefold(value: object) -> object:
    """SQL ``casefold(x)``: Unicode case folding (SQLite's ``lower`` folds ASCII only)."""
    return value.casefold() if isinstance(value, str) else value


class _Connection:
    """The connection inside a transaction the engine's lock is held for."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        cursor = await self._db.execute(sql, args)
        count = cursor.rowcount
        await cursor.close()
        return count

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._db.executemany(sql, rows)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._db.execute(sql, args) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        async with self._db.execute(sql, args) as cursor:
            row: Row | None = await cursor.fetchone()
            return row


class SQLiteEngine:
    dialect: Dialect = "sqlite"
    for_update = ""  # BEGIN IMMEDIATE already holds the only write lock there is
    skip_locked = ""
    now_s = "((julianday('now') - 2440587.5) * 86400.0)"  # 'now' is fixed within a statement

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"the SQLite file {path}"
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        """The connection (for tests and tools that look at SQLite itself)."""
        if self._db is None:
            raise RuntimeError("the ledger is not open")
        return self._db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.create_function("casefold", 1, _casefold, deterministic=True)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=FULL")
            await self._db.execute("PRAGMA foreign_keys=ON")
            await self._db.execute("PRAGMA busy_timeout=5000")
            await self._migrate()
        except (OSError, sqlite3.Error) as exc:
            await self.close()  # its thread must not outlive the failure
            raise LedgerUnavailable(f"cannot open the ledger {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _rollback(self, db: aiosqlite.Connection) -> None:
        """Roll back the transaction begun last, if it is still open (see the module's text)."""
        try:
            await db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            if db.in_transaction:  # pragma: no cover - a ROLLBACK that failed otherwise
                raise
            # "cannot rollback - no transaction is active": its BEGIN failed, or SQLite ended it

    async def _migrate(self) -> None:
        """Each missing migration in its own ``BEGIN IMMEDIATE`` transaction; the version is read
        inside it, so two processes opening one file never run a migration twice."""
        db = self.db
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        while True:
            try:
                await db.execute("BEGIN IMMEDIATE")
                async with db.execute("SELECT MAX(version) FROM schema_version") as cursor:
                    row = await cursor.fetchone()
                version = int(row[0]) if row and row[0] is not None else 0
                if version >= len(SQLITE_MIGRATIONS):
                    await db.execute("COMMIT")
                    return
                for statement in filter(str.strip, SQLITE_MIGRATIONS[version].split(";")):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
                await db.execute("COMMIT")
            except BaseException:
                await self._rollback(db)
                raise

    async def run(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        for attempt in range(RETRIES):
            async with self._lock:
                db = self.db
                try:
                    await db.execute("BEGIN IMMEDIATE")
                    result = await body(_Connection(db))
                    await db.execute("COMMIT")
                except RetryTransaction:
                    await self._rollback(db)
                    if attempt == RETRIES - 1:
                        raise
                    continue
                except BaseException:
                    await self._rollback(db)
                    raise
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            return await _Connection(self.db).fetch(sql, args)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        async with self._lock:
            return await _Connection(self.db).execute(sql, args)

    async def writable(self) -> None:
        """A write lock taken and given back: proves the file and its directory accept writes."""
        async with self._lock:
            db = self.db
            try:
                await db.execute("BEGIN IMMEDIATE")
            finally:
                await self._rollback(db)
