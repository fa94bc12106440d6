"""The durable ledger: label purchases, their packages and PDFs, the write-back outbox and the
automation events — on SQLite (embedded) or PostgreSQL (several replicas). The only module that
writes SQL.

Every label purchase is recorded *before* ShipStation is called (intent), each package's result
— with its label PDF and customs form, in the same transaction — *before* the client is answered,
and every write-back to Cin7 Core is an outbox row, so nothing is lost or done twice across
crashes and restarts. The schema is moved forward at start-up (:mod:`.migrations`).

The SQL is written once for both engines (:mod:`.sql`). On SQLite a transaction is the only
writer; on PostgreSQL others run beside it, so each method that reads and then writes says how it
stays right when another replica writes at the same moment: the rows it read are locked
(``for_update``), the write is conditional on what was read (its row count says who won), or a
unique index decides.

Work is claimed, not assumed (:mod:`.leases`): a purchase is driven, and the poller of an
account runs, under a named lease (``leases``); an outbox job and an automation event are
claimed on their own rows (``owner``, ``lease_until``). Writes only the holder may make are
*fenced*: they check, in their own transaction, that the lease is still this ledger's
:attr:`Ledger.owner`, and raise :class:`LeaseLost` (writing nothing) when it is not.
"""

from __future__ import annotations

from ratesvc.config import sqlite_path
from ratesvc.storage.ledger_events import EventRecords
from ratesvc.storage.ledger_leases import LeaseRecords
from ratesvc.storage.ledger_outbox import OutboxRecords
from ratesvc.storage.ledger_purchases import PurchaseRecords
from ratesvc.storage.migrations import SCHEMA_VERSION
from ratesvc.storage.postgres_engine import PostgresEngine
from ratesvc.storage.records import (
    CUSTOMS,
    LABEL,
    OPEN_EVENT_STATUSES,
    STAMP_FORMAT,
    Backlog,
    EventRow,
    IdempotencyConflict,
    IllegalTransition,
    JobResult,
    LeaseLost,
    OutboxRow,
    PackageRow,
    PurchaseRow,
    Purged,
    format_stamp,
    now_text,
    parse_stamp,
)
from ratesvc.storage.sql import Engine, LedgerUnavailable
from ratesvc.storage.sqlite_engine import SQLiteEngine

__all__ = [
    "CUSTOMS",
    "LABEL",
    "OPEN_EVENT_STATUSES",
    "SCHEMA_VERSION",
    "STAMP_FORMAT",
    "Backlog",
    "EventRow",
    "IdempotencyConflict",
    "IllegalTransition",
    "JobResult",
    "LeaseLost",
    "Ledger",
    "LedgerUnavailable",
    "OutboxRow",
    "PackageRow",
    "PurchaseRow",
    "Purged",
    "engine_for",
    "format_stamp",
    "now_text",
    "parse_stamp",
]


def engine_for(url: str) -> Engine:
    """The engine of a ``RATESVC_DATABASE_URL`` (``sqlite:///…`` or ``postgresql://…``)."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SQLiteEngine(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        return PostgresEngine(url)
    raise ValueError(f"no ledger engine for {scheme}:// URLs")


class Ledger(LeaseRecords, PurchaseRecords, OutboxRecords, EventRecords):
    """The ledger on one engine; every write is its own committed transaction. Its parts, each
    in a module of its own: :mod:`.ledger_leases`, :mod:`.ledger_purchases`,
    :mod:`.ledger_outbox` (with retention), :mod:`.ledger_events`; what they share is
    :mod:`.ledger_core`."""

    @classmethod
    def from_url(cls, url: str) -> Ledger:
        return cls(engine_for(url))

    async def open(self) -> None:
        """Connect and migrate; raises :class:`LedgerUnavailable` saying why it cannot."""
        await self._engine.open()

    async def close(self) -> None:
        await self._engine.close()

    async def version(self) -> int:
        rows = await self._engine.fetch("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def writable(self) -> bool:
        """Raises when the ledger cannot take a write now (readiness)."""
        await self._engine.writable()
        return True
