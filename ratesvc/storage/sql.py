"""The small interface the ledger writes SQL against, whichever engine is behind it.

The ledger's SQL is written once, with ``?`` placeholders and the subset both engines speak
(``ON CONFLICT``, no boolean arithmetic, ``rowid`` for insertion order, ``casefold()`` as a
function each engine provides); an engine runs it:

* :class:`ratesvc.storage.sqlite_engine.SQLiteEngine` — one file, one connection, one writer at a
  time (``BEGIN IMMEDIATE``): the embedded default;
* :class:`ratesvc.storage.postgres_engine.PostgresEngine` — a pool of connections shared by
  several replicas: writers run concurrently, so what a transaction reads and then writes on is
  locked (:attr:`Engine.for_update`) or guarded by a unique index.

A transaction is a function given to :meth:`Engine.run`, not a ``with`` block, so the engine can
run it again when PostgreSQL aborts it for a deadlock or a serialization failure — or when the
function itself raises :class:`RetryTransaction` (it lost a race it can only see after the fact).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")
Row = Sequence[Any]
Dialect = Literal["sqlite", "postgresql"]


class LedgerUnavailable(Exception):
    """The ledger cannot be opened (a file that is not a database, a server that cannot be
    reached, a migration that failed). The message names where, never a password."""


class RetryTransaction(Exception):
    """Raised inside a transaction that must be rolled back and run again from the start."""


class Connection(Protocol):
    """One transaction's statements (``?`` placeholders on every engine)."""

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None: ...


class Engine(Protocol):
    """A database the ledger can open, query, and run transactions on."""

    dialect: Dialect
    where: str  # e.g. "the SQLite file var/ledger.sqlite3" (never a password)
    for_update: str  # appended to a SELECT whose rows the transaction goes on to change
    # appended to a SELECT that scans for work to claim: rows another transaction is claiming
    # are passed over rather than waited for ("" on SQLite: its one writer never waits)
    skip_locked: str
    # an SQL expression: the database's clock, in seconds since the epoch (leases expire by it)
    now_s: str

    async def open(self) -> None:
        """Connect and migrate the schema forward; raises :class:`LedgerUnavailable`."""
        ...

    async def close(self) -> None: ...

    async def run(self, body: Callable[[Connection], Awaitable[T]]) -> T:
        """``body`` in one transaction: committed when it returns, rolled back when it raises."""
        ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """One read outside any transaction."""
        ...

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """One statement, committed on its own; the number of rows it changed."""
        ...

    async def writable(self) -> None:
        """Raises when the ledger cannot take a write now (read-only file or server)."""
        ...


def rowcount(status: str) -> int:
    """The row count of a PostgreSQL command tag (``UPDATE 3``, ``INSERT 0 1``; 0 for others)."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isascii() and last.isdecimal() else 0


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …`` (a ``?`` inside a quoted literal or
    identifier is left alone)."""
    out: list[str] = []
    quote: str | None = None
    n = 0
    for char in sql:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(char)
    return "".join(out)
