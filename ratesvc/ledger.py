"""The durable ledger: SQLite through aiosqlite (WAL, ``synchronous=FULL``). The only module that
writes SQL.

Every label purchase is recorded *before* ShipStation is called (intent), each package's result
*before* the client is answered, and every write-back to Cin7 Core is an outbox row, so nothing is
lost or done twice across crashes and restarts. Migrations are numbered; a database is moved
forward one version at a time at start-up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

MIGRATIONS: list[str] = [
    # 1: purchases, their packages, the write-back outbox
    """
    CREATE TABLE purchases (
        label_id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        idem_key TEXT,
        request_hash TEXT NOT NULL,
        plan BLOB NOT NULL,
        status TEXT NOT NULL,
        detail TEXT,
        sale_id TEXT,
        task_id TEXT,
        write_back_state TEXT NOT NULL,
        write_back_attempts INTEGER NOT NULL DEFAULT 0,
        write_back_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        voided_at TEXT
    );
    CREATE UNIQUE INDEX purchases_idem ON purchases(account, idem_key) WHERE idem_key IS NOT NULL;
    CREATE INDEX purchases_sale ON purchases(account, sale_id);
    CREATE TABLE packages (
        label_id TEXT NOT NULL REFERENCES purchases(label_id),
        n INTEGER NOT NULL,
        box TEXT,
        purchase_key TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        attempt_at TEXT,
        shipment_id INTEGER,
        tracking_number TEXT,
        cost TEXT,
        insurance_cost TEXT,
        pdf_path TEXT,
        PRIMARY KEY (label_id, n)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        label_id TEXT NOT NULL REFERENCES purchases(label_id),
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at TEXT NOT NULL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX outbox_due ON outbox(state, next_at);
    """,
    # 2: automation events (Cin7 Core webhooks and what the poller found)
    """
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        source TEXT NOT NULL,
        event_type TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        sale_id TEXT,
        task_id TEXT,
        order_number TEXT,
        sale_updated TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        label_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at TEXT NOT NULL,
        payload BLOB NOT NULL,
        received_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE UNIQUE INDEX events_dedup ON events(account, dedup_key);
    CREATE INDEX events_due ON events(status, next_at);
    CREATE INDEX events_sale ON events(account, sale_id);
    """,
]


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class PurchaseRow:
    label_id: str
    account: str
    idem_key: str | None
    request_hash: str
    plan: bytes
    status: str
    detail: str | None
    sale_id: str | None
    task_id: str | None
    write_back_state: str
    write_back_attempts: int
    write_back_error: str | None
    created_at: str
    updated_at: str
    voided_at: str | None


@dataclass(frozen=True)
class PackageRow:
    label_id: str
    n: int
    box: str | None
    purchase_key: str
    state: str
    attempt_at: str | None
    shipment_id: int | None
    tracking_number: str | None
    cost: str | None
    insurance_cost: str | None
    pdf_path: str | None


@dataclass(frozen=True)
class OutboxRow:
    id: int
    label_id: str
    kind: str
    state: str
    attempts: int
    next_at: str
    last_error: str | None


@dataclass(frozen=True)
class EventRow:
    event_id: str
    account: str
    source: str  # webhook | poller
    event_type: str
    dedup_key: str
    sale_id: str | None
    task_id: str | None
    order_number: str | None
    sale_updated: str | None  # the sale list's Updated stamp, for events the poller found
    status: str  # see ratesvc.automation.EVENT_STATUSES
    reason: str | None
    label_id: str | None
    attempts: int
    next_at: str
    payload: bytes
    received_at: str
    updated_at: str


OPEN_EVENT_STATUSES = ("received", "failed")  # still to be processed (now or after a back-off)


class IdempotencyConflict(Exception):
    """Another purchase already holds this idempotency key."""

    def __init__(self, existing: PurchaseRow) -> None:
        super().__init__(existing.label_id)
        self.existing = existing


class Ledger:
    """One connection, used from one event loop; every write is its own committed transaction.

    Everything goes through one lock: on a shared connection, a statement issued while another
    coroutine's transaction is open would join that transaction (and share its fate).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def _execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        async with self._lock:
            await self.db.execute(sql, args)

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        async with self._lock, self.db.execute(sql, args) as cursor:
            return list(await cursor.fetchall())

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._migrate()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the ledger is not open")
        return self._db

    async def _migrate(self) -> None:
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )
        async with self.db.execute("SELECT MAX(version) FROM schema_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, script.split(";")):
                    await self.db.execute(statement)
                await self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def version(self) -> int:
        rows = await self._fetch("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    async def writable(self) -> bool:
        """A write that is rolled back: proves the file and its directory accept writes."""
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            await self.db.execute("ROLLBACK")
        return True

    # --- purchases ---------------------------------------------------------------------------

    async def create_purchase(
        self,
        row: PurchaseRow,
        packages: Sequence[tuple[int, str | None, str]],
    ) -> None:
        """Record the intent to buy (``packages``: n, box, purchase key). Raises
        :class:`IdempotencyConflict` when the account already used the idempotency key."""
        async with self._lock:
            await self._create_purchase(row, packages)

    async def _create_purchase(
        self, row: PurchaseRow, packages: Sequence[tuple[int, str | None, str]]
    ) -> None:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            if row.idem_key is not None:
                existing = await self._purchase_by_key(row.account, row.idem_key)
                if existing is not None:
                    await self.db.execute("ROLLBACK")
                    raise IdempotencyConflict(existing)
            await self.db.execute(
                "INSERT INTO purchases VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.label_id, row.account, row.idem_key, row.request_hash, row.plan, row.status,
                 row.detail, row.sale_id, row.task_id, row.write_back_state,
                 row.write_back_attempts, row.write_back_error, row.created_at, row.updated_at,
                 row.voided_at),
            )  # fmt: skip
            await self.db.executemany(
                "INSERT INTO packages (label_id, n, box, purchase_key, state) VALUES (?,?,?,?,?)",
                [(row.label_id, n, box, key, "pending") for n, box, key in packages],
            )
            await self.db.execute("COMMIT")
        except IdempotencyConflict:
            raise
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise

    async def _purchase_by_key(self, account: str, idem_key: str) -> PurchaseRow | None:
        async with self.db.execute(
            "SELECT * FROM purchases WHERE account = ? AND idem_key = ?", (account, idem_key)
        ) as cursor:
            row = await cursor.fetchone()
        return PurchaseRow(*row) if row else None

    async def purchase(self, label_id: str) -> PurchaseRow | None:
        rows = await self._fetch("SELECT * FROM purchases WHERE label_id = ?", (label_id,))
        return PurchaseRow(*rows[0]) if rows else None

    async def purchases(
        self,
        account: str,
        *,
        sale_id: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> list[PurchaseRow]:
        """Newest first; ``after`` is the ``label_id`` the previous page ended with."""
        rows = await self._page("purchases", "label_id", account, sale_id, status, after, limit)
        return [PurchaseRow(*row) for row in rows]

    async def _page(
        self, table: str, id_column: str, account: str, sale_id: str | None,
        status: str | None, after: str | None, limit: int,
    ) -> list[Any]:  # fmt: skip
        """One page of an account's rows of ``table`` (a name from this module), newest first."""
        sql = f"SELECT * FROM {table} WHERE account = ?"
        args: list[Any] = [account]
        for column, value in (("sale_id", sale_id), ("status", status)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if after is not None:
            sql += f" AND rowid < (SELECT rowid FROM {table} WHERE {id_column} = ?)"
            args.append(after)
        sql += " ORDER BY rowid DESC LIMIT ?"
        args.append(limit)
        return await self._fetch(sql, args)

    async def unfinished_purchases(self) -> list[PurchaseRow]:
        rows = await self._fetch(
            "SELECT * FROM purchases WHERE status = 'purchasing' ORDER BY rowid"
        )
        return [PurchaseRow(*row) for row in rows]

    async def set_status(self, label_id: str, status: str, **fields: Any) -> None:
        """Change the status (and any other ``fields``, e.g. ``detail``) of a purchase."""
        columns = {"status": status, "updated_at": now_text(), **fields}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        await self._execute(
            f"UPDATE purchases SET {assignments} WHERE label_id = ?",
            (*columns.values(), label_id),
        )

    async def release_key(self, label_id: str) -> None:
        """Free the idempotency key (after a void or a purchase that bought nothing)."""
        await self._execute("UPDATE purchases SET idem_key = NULL WHERE label_id = ?", (label_id,))

    # --- packages ----------------------------------------------------------------------------

    async def packages(self, label_id: str) -> list[PackageRow]:
        rows = await self._fetch(
            "SELECT * FROM packages WHERE label_id = ? ORDER BY n", (label_id,)
        )
        return [PackageRow(*row) for row in rows]

    async def set_package(self, label_id: str, n: int, **fields: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        await self._execute(
            f"UPDATE packages SET {assignments} WHERE label_id = ? AND n = ?",
            (*fields.values(), label_id, n),
        )

    # --- outbox ------------------------------------------------------------------------------

    async def enqueue(self, label_id: str, kind: str) -> None:
        stamp = now_text()
        await self._execute(
            "INSERT INTO outbox (label_id, kind, state, next_at, created_at, updated_at) "
            "VALUES (?, ?, 'pending', ?, ?, ?)",
            (label_id, kind, stamp, stamp, stamp),
        )

    async def due_jobs(self, limit: int = 10) -> list[OutboxRow]:
        rows = await self._fetch(
            "SELECT id, label_id, kind, state, attempts, next_at, last_error FROM outbox "
            "WHERE state = 'pending' AND next_at <= ? ORDER BY id LIMIT ?",
            (now_text(), limit),
        )
        return [OutboxRow(*row) for row in rows]

    async def next_due_at(self) -> str | None:
        rows = await self._fetch("SELECT MIN(next_at) FROM outbox WHERE state = 'pending'")
        return str(rows[0][0]) if rows and rows[0][0] else None

    async def finish_job(self, job_id: int) -> None:
        await self._execute(
            "UPDATE outbox SET state = 'done', updated_at = ? WHERE id = ?", (now_text(), job_id)
        )

    async def retry_job(self, job_id: int, error: str, next_at: dt.datetime) -> None:
        await self._execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_at = ?, "
            "updated_at = ? WHERE id = ?",
            (error, next_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), now_text(), job_id),
        )

    async def purchases_for_sales(self, account: str, sale_ids: Sequence[str]) -> list[PurchaseRow]:
        """Every purchase of these sales (one query, for the poller)."""
        if not sale_ids:
            return []
        marks = ",".join("?" * len(sale_ids))
        rows = await self._fetch(
            f"SELECT * FROM purchases WHERE account = ? AND sale_id IN ({marks})",
            (account, *sale_ids),
        )
        return [PurchaseRow(*row) for row in rows]

    # --- automation events -------------------------------------------------------------------

    async def record_event(self, row: EventRow) -> tuple[EventRow, bool]:
        """(the event, True) when new; (the one recorded earlier, False) for a repeat of it."""
        async with self._lock:
            cursor = await self.db.execute(
                "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.event_id, row.account, row.source, row.event_type, row.dedup_key, row.sale_id,
                 row.task_id, row.order_number, row.sale_updated, row.status, row.reason,
                 row.label_id, row.attempts, row.next_at, row.payload, row.received_at,
                 row.updated_at),
            )  # fmt: skip
            if cursor.rowcount == 1:
                return row, True
            async with self.db.execute(
                "SELECT * FROM events WHERE account = ? AND dedup_key = ?",
                (row.account, row.dedup_key),
            ) as found:
                existing = await found.fetchone()
        assert existing is not None  # the insert was ignored because this row exists
        return EventRow(*existing), False

    async def event(self, event_id: str) -> EventRow | None:
        rows = await self._fetch("SELECT * FROM events WHERE event_id = ?", (event_id,))
        return EventRow(*rows[0]) if rows else None

    async def set_event(self, event_id: str, **fields: Any) -> None:
        columns = {**fields, "updated_at": now_text()}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        await self._execute(
            f"UPDATE events SET {assignments} WHERE event_id = ?", (*columns.values(), event_id)
        )

    async def due_events(self, limit: int = 20) -> list[EventRow]:
        marks = ",".join("?" * len(OPEN_EVENT_STATUSES))
        rows = await self._fetch(
            f"SELECT * FROM events WHERE status IN ({marks}) AND next_at <= ? "
            "ORDER BY next_at, rowid LIMIT ?",
            (*OPEN_EVENT_STATUSES, now_text(), limit),
        )
        return [EventRow(*row) for row in rows]

    async def next_event_due_at(self) -> str | None:
        marks = ",".join("?" * len(OPEN_EVENT_STATUSES))
        rows = await self._fetch(
            f"SELECT MIN(next_at) FROM events WHERE status IN ({marks})", OPEN_EVENT_STATUSES
        )
        return str(rows[0][0]) if rows and rows[0][0] else None

    async def events(
        self,
        account: str,
        *,
        status: str | None = None,
        sale_id: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> list[EventRow]:
        """Newest first; ``after`` is the ``event_id`` the previous page ended with."""
        rows = await self._page("events", "event_id", account, sale_id, status, after, limit)
        return [EventRow(*row) for row in rows]

    async def events_for_sales(self, account: str, sale_ids: Sequence[str]) -> list[EventRow]:
        if not sale_ids:
            return []
        marks = ",".join("?" * len(sale_ids))
        rows = await self._fetch(
            f"SELECT * FROM events WHERE account = ? AND sale_id IN ({marks})",
            (account, *sale_ids),
        )
        return [EventRow(*row) for row in rows]

    async def requeue_event(
        self, event_id: str, *, statuses: Sequence[str], reason: str | None
    ) -> EventRow | None:
        """Put an event back in the queue — due now, no attempts counted, waiting for no label,
        the sale's ``Updated`` stamp forgotten (the poller notes it afresh if the event needs a
        person again) — if its status is one of ``statuses`` (checked and changed in one
        statement); the event as it is now, or None when it was not in one of them."""
        stamp = now_text()
        marks = ",".join("?" * len(statuses))
        async with self._lock:
            cursor = await self.db.execute(
                "UPDATE events SET status = 'received', reason = ?, label_id = NULL, attempts = 0, "
                "sale_updated = NULL, next_at = ?, updated_at = ? "
                f"WHERE event_id = ? AND status IN ({marks})",
                (reason, stamp, stamp, event_id, *statuses),
            )
            if cursor.rowcount != 1:
                return None
            async with self.db.execute(
                "SELECT * FROM events WHERE event_id = ?", (event_id,)
            ) as found:
                row = await found.fetchone()
        return EventRow(*row) if row else None
