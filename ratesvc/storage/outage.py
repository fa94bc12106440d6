"""Is an exception the ledger's database being out of reach? For the HTTP edge.

The ledger's callers (purchases, label reads, the write-back, automation) do not each handle a
PostgreSQL that went away: what they raise reaches the edge, which answers 503
``storage_unavailable`` with Retry-After instead of a 500: a transaction cut off rolls back
with its connection, what was committed stays, and a client retrying with the same
Idempotency-Key resumes what it asked for (a purchase is never bought twice). The cause is
logged, not shown to the client.

An outage is:

* :class:`~ratesvc.storage.sql.LedgerUnavailable`;
* asyncpg's connection errors (class 08, ``ConnectionDoesNotExistError`` among them), its
  ``InterfaceError`` (a connection closed under it, a pool closing), an operator's intervention
  (class 57: shutting down, starting up, a statement cancelled), too many connections (53300)
  and a read-only transaction (25006: the server is now a standby);
* SQLite's errors that say the file cannot be written now rather than that a statement is wrong:
  a full disk (``SQLITE_FULL``), a lock not granted within the busy timeout (another process on
  the file: ``SQLITE_BUSY``, ``SQLITE_LOCKED``), an I/O error, a read-only or unopenable file,
  out of memory (:data:`_SQLITE_OUTAGES`, by ``sqlite_errorname``). A corrupt file or a bad
  statement stays a 500: retrying will not help, and it must be looked at;
* ``OSError`` (connection refused or reset, DNS, ``TimeoutError``) raised from inside asyncpg or
  the ledger's engines — never one from elsewhere (an upstream's is its client's business, and
  one reaching the edge is a bug: a 500). SQLite's errors count only from there too.
"""

from __future__ import annotations

import sqlite3
import traceback

import asyncpg

from ratesvc.errors import StorageUnavailable
from ratesvc.storage.sql import LedgerUnavailable

RETRY_AFTER_S = 5  # a restarting or failing-over PostgreSQL takes seconds, not milliseconds
_OUTAGES = (
    LedgerUnavailable,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)
# SQLite result codes (primary, or the prefix of an extended one) that are an outage
_SQLITE_OUTAGES = (
    "SQLITE_FULL",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_NOMEM",
    "SQLITE_PROTOCOL",
)
_LEDGER_MODULES = (
    "ratesvc.storage.ledger",
    "ratesvc.storage.sql",
    "ratesvc.storage.postgres_engine",
    "ratesvc.storage.sqlite_engine",
)


def _raised_in_the_ledger(exc: BaseException) -> bool:
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        module = str(frame.f_globals.get("__name__", ""))
        if module in _LEDGER_MODULES or module == "asyncpg" or module.startswith("asyncpg."):
            return True
    return False


def _sqlite_outage(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", None) if isinstance(exc, sqlite3.Error) else None
    return isinstance(name, str) and name.startswith(_SQLITE_OUTAGES)


def ledger_outage(exc: BaseException) -> StorageUnavailable | None:
    """The 503 to answer when ``exc`` says the ledger cannot be reached now, else None."""
    if isinstance(exc, _OUTAGES) or (
        (isinstance(exc, OSError) or _sqlite_outage(exc)) and _raised_in_the_ledger(exc)
    ):
        return StorageUnavailable(
            "the ledger cannot be reached now; what it holds is kept: retry shortly (with the "
            "same Idempotency-Key a purchase is never bought twice)",
            retry_after_s=RETRY_AFTER_S,
        )
    return None
