"""The durable ledger: SQLite through aiosqlite (WAL, ``synchronous=FULL``). The only module that
writes SQL.

Every label purchase is recorded *before* ShipStation is called (intent), each package's result
*before* the client is answered, and every write-back to Cin7 Core is an outbox row, so nothing is
lost or done twice across crashes and restarts. Migrations are numbered; a database is moved
forward one version at a time at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
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
    # 3: a sale label claims its fulfilment as well as the client's key; purchase attempts are
    # durable; a package "buying" when the process stopped, or tried and left "pending" on a
    # live label (the old time-out on a last attempt), has an unknown outcome
    """
    ALTER TABLE purchases ADD COLUMN fulfilment_key TEXT;
    UPDATE purchases SET fulfilment_key = 'sale:' || lower(sale_id) || ':' || lower(task_id)
        WHERE sale_id IS NOT NULL AND task_id IS NOT NULL
          AND status NOT IN ('voided', 'failed')
          AND rowid = (SELECT MAX(p.rowid) FROM purchases p
                       WHERE p.account = purchases.account
                         AND lower(p.sale_id) = lower(purchases.sale_id)
                         AND lower(p.task_id) = lower(purchases.task_id)
                         AND p.status NOT IN ('voided', 'failed'));
    UPDATE purchases SET idem_key = NULL WHERE idem_key LIKE 'sale:%';
    CREATE UNIQUE INDEX purchases_fulfilment ON purchases(account, fulfilment_key)
        WHERE fulfilment_key IS NOT NULL;
    ALTER TABLE packages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    UPDATE packages SET state = 'unknown' WHERE state = 'buying'
        OR (state = 'pending' AND attempt_at IS NOT NULL AND label_id IN
            (SELECT label_id FROM purchases WHERE status NOT IN ('failed', 'voided')));
    CREATE INDEX outbox_label ON outbox(label_id);
    CREATE INDEX outbox_open ON outbox(state, id);
    CREATE INDEX purchases_status ON purchases(status);
    CREATE INDEX purchases_request ON purchases(account, request_hash);
    """,
    # 4: the customs form ShipStation returns for an international package, kept like its label
    """
    ALTER TABLE packages ADD COLUMN customs_pdf_path TEXT;
    """,
    # 5: the sale's order number, so a person finds a label by it
    """
    ALTER TABLE purchases ADD COLUMN order_number TEXT;
    UPDATE purchases SET order_number = (
        SELECT e.order_number FROM events e WHERE e.account = purchases.account
        AND lower(e.sale_id) = lower(purchases.sale_id) AND e.order_number IS NOT NULL
        ORDER BY e.rowid DESC LIMIT 1
    ) WHERE sale_id IS NOT NULL;
    """,
]

SQLITE_MAX_VARIABLES = 500  # stay well under SQLite's limit on "?" in one statement


STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the ledger's UTC time stamps


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime(STAMP_FORMAT)


def parse_stamp(text: str) -> dt.datetime:
    """A ledger time stamp as an aware UTC datetime (ValueError when it is not one)."""
    return dt.datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=dt.UTC)


def format_stamp(moment: dt.datetime) -> str:
    """A UTC datetime as the ledger writes its time stamps."""
    return moment.strftime(STAMP_FORMAT)


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
    fulfilment_key: str | None = None  # "sale:<sale>:<task>" while the label holds it
    order_number: str | None = None  # the sale's order number, when the label is for a sale


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
    attempts: int = 0  # createlabel calls that may have reached ShipStation
    customs_pdf_path: str | None = None  # the customs form of an international package


@dataclass(frozen=True)
class OutboxRow:
    id: int
    label_id: str
    kind: str
    state: str  # pending | running | done | cancelled
    attempts: int
    next_at: str
    last_error: str | None
    account: str = ""
    sale_id: str | None = None


@dataclass(frozen=True)
class JobResult:
    """What happens to an outbox job in the same transaction as a label's status change."""

    id: int
    state: str  # done | pending (retry at next_at) | cancelled
    error: str | None = None
    next_at: dt.datetime | None = None


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


@dataclass(frozen=True)
class Backlog:
    """What an account has waiting, counted (``GET /v1/status``): open write-back jobs and when
    the oldest was queued; events and labels by status (only the statuses asked for)."""

    write_backs: int
    oldest_write_back_at: str | None
    events: dict[str, int]
    labels: dict[str, int]


OPEN_EVENT_STATUSES = ("received", "failed")  # still to be processed (now or after a back-off)


class IdempotencyConflict(Exception):
    """Another purchase already holds this idempotency key (``by_key``) or this fulfilment."""

    def __init__(self, existing: PurchaseRow, *, by_key: bool = True) -> None:
        super().__init__(existing.label_id)
        self.existing = existing
        self.by_key = by_key


class IllegalTransition(Exception):
    """The row was not in a state the change may start from; nothing was written."""

    def __init__(self, label_id: str, current: str | None, to: str) -> None:
        super().__init__(f"{label_id}: {current} -> {to} is not allowed")
        self.label_id = label_id
        self.current = current
        self.to = to


def _casefold(value: object) -> object:
    """SQL ``casefold(x)``: Unicode case folding (SQLite's ``lower`` folds ASCII only)."""
    return value.casefold() if isinstance(value, str) else value


def chunks(values: Sequence[str]) -> list[Sequence[str]]:
    """``values`` cut in pieces small enough for one ``IN (...)`` list."""
    return [
        values[i : i + SQLITE_MAX_VARIABLES] for i in range(0, len(values), SQLITE_MAX_VARIABLES)
    ]


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
        await self._db.create_function("casefold", 1, _casefold, deterministic=True)
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

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` under the lock; rolled back on any exception."""
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def _one(self, sql: str, args: Sequence[Any]) -> Any:
        async with self.db.execute(sql, args) as cursor:
            return await cursor.fetchone()

    async def create_purchase(
        self,
        row: PurchaseRow,
        packages: Sequence[tuple[int, str | None, str]],
    ) -> None:
        """Record the intent to buy (``packages``: n, box, purchase key) in one transaction.

        Raises :class:`IdempotencyConflict` when the account already used the client's key
        (``by_key``), or when a live label already holds the fulfilment (``by_key=False``).
        """
        async with self._transaction() as db:
            if row.idem_key is not None:
                existing = await self._one(
                    "SELECT * FROM purchases WHERE account = ? AND idem_key = ?",
                    (row.account, row.idem_key),
                )
                if existing is not None:
                    raise IdempotencyConflict(PurchaseRow(*existing))
            if row.fulfilment_key is not None:
                holder = await self._one(
                    "SELECT * FROM purchases WHERE account = ? AND fulfilment_key = ?",
                    (row.account, row.fulfilment_key),
                )
                if holder is not None:
                    raise IdempotencyConflict(PurchaseRow(*holder), by_key=False)
            columns = ", ".join(f.name for f in dataclasses.fields(PurchaseRow))
            values = dataclasses.astuple(row)
            await db.execute(
                f"INSERT INTO purchases ({columns}) VALUES ({','.join('?' * len(values))})",
                values,
            )
            await db.executemany(
                "INSERT INTO packages (label_id, n, box, purchase_key, state) VALUES (?,?,?,?,?)",
                [(row.label_id, n, box, key, "pending") for n, box, key in packages],
            )

    async def purchase_by_key(self, account: str, idem_key: str) -> PurchaseRow | None:
        rows = await self._fetch(
            "SELECT * FROM purchases WHERE account = ? AND idem_key = ?", (account, idem_key)
        )
        return PurchaseRow(*rows[0]) if rows else None

    async def purchase_by_fulfilment(self, account: str, fulfilment_key: str) -> PurchaseRow | None:
        """The live label holding this fulfilment, if any."""
        rows = await self._fetch(
            "SELECT * FROM purchases WHERE account = ? AND fulfilment_key = ?",
            (account, fulfilment_key),
        )
        return PurchaseRow(*rows[0]) if rows else None

    async def live_purchase_by_request(self, account: str, request_hash: str) -> PurchaseRow | None:
        """The live sale label a keyless request with this body made, if any."""
        rows = await self._fetch(
            "SELECT * FROM purchases WHERE account = ? AND request_hash = ? AND idem_key IS NULL "
            "AND fulfilment_key IS NOT NULL ORDER BY rowid DESC LIMIT 1",
            (account, request_hash),
        )
        return PurchaseRow(*rows[0]) if rows else None

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
        search: str | None = None,
    ) -> list[PurchaseRow]:
        """Newest first; ``after`` is the ``label_id`` the previous page ended with. ``search``:
        the sale's order number, the sale id or a package's tracking number contains it
        (case-insensitive; ``%`` and ``_`` are taken literally)."""
        if search is not None and "\x00" in search:  # LIKE would stop at it: match-all
            return []
        rows = await self._page(
            "purchases", "label_id", account, sale_id, status, after, limit, search=search
        )
        return [PurchaseRow(*row) for row in rows]

    async def _page(
        self, table: str, id_column: str, account: str, sale_id: str | None,
        status: str | None, after: str | None, limit: int, *, search: str | None = None,
    ) -> list[Any]:  # fmt: skip
        """One page of an account's rows of ``table`` (a name from this module), newest first."""
        sql = f"SELECT * FROM {table} WHERE account = ?"
        args: list[Any] = [account]
        for column, value in (("sale_id", sale_id), ("status", status)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if search is not None:  # purchases only
            folded = search.casefold()  # casefold() in SQL too: SQLite's own folds ASCII only
            pattern = folded.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            sql += (
                " AND (casefold(order_number) LIKE ? ESCAPE '\\'"
                " OR casefold(sale_id) LIKE ? ESCAPE '\\'"
                " OR label_id IN (SELECT label_id FROM packages WHERE casefold(tracking_number)"
                " LIKE ? ESCAPE '\\'))"
            )
            args += [f"%{pattern}%"] * 3
        if after is not None:
            sql += f" AND rowid < (SELECT rowid FROM {table} WHERE {id_column} = ?)"
            args.append(after)
        sql += " ORDER BY rowid DESC LIMIT ?"
        args.append(limit)
        return await self._fetch(sql, args)

    async def unfinished_purchases(self) -> list[PurchaseRow]:
        """Purchases a unit must still drive: buying, or with a package whose outcome is
        unknown (whatever the label's status)."""
        rows = await self._fetch(
            "SELECT * FROM purchases WHERE status = 'purchasing' OR (status = 'attention' AND "
            "label_id IN (SELECT label_id FROM packages WHERE state = 'unknown')) ORDER BY rowid"
        )
        return [PurchaseRow(*row) for row in rows]

    async def transition(
        self,
        label_id: str,
        to: str,
        allowed_from: Collection[str],
        *,
        fields: Mapping[str, Any] | None = None,
        enqueue: str | None = None,
        job: JobResult | None = None,
        release: bool = False,
        cancel_write_back: bool = False,
        unchanged_since: str | None = None,
    ) -> PurchaseRow:
        """Move a purchase to ``to`` in one transaction with what goes with it: other
        ``fields``, an outbox job queued (``enqueue``: its kind) or settled (``job``), pending
        write-back jobs cancelled, and, with ``release``, the fulfilment and client key given
        up. Raises :class:`IllegalTransition` (writing nothing) when the current status is not
        in ``allowed_from``, or (``unchanged_since``: an ``updated_at`` read before) when the
        row was changed since."""
        async with self._transaction() as db:
            current = await self._one(
                "SELECT status, updated_at FROM purchases WHERE label_id = ?", (label_id,)
            )
            if (
                current is None
                or current[0] not in allowed_from
                or (unchanged_since is not None and current[1] != unchanged_since)
            ):
                raise IllegalTransition(label_id, current[0] if current else None, to)
            columns: dict[str, Any] = {"status": to, "updated_at": now_text(), **(fields or {})}
            if release:
                columns.update(fulfilment_key=None, idem_key=None)
            assignments = ", ".join(f"{name} = ?" for name in columns)
            await db.execute(
                f"UPDATE purchases SET {assignments} WHERE label_id = ?",
                (*columns.values(), label_id),
            )
            if enqueue is not None:
                await self._enqueue(label_id, enqueue)
            if job is not None:
                await self._settle_job(job)
            if cancel_write_back:
                await db.execute(
                    "UPDATE outbox SET state = 'cancelled', updated_at = ? "
                    "WHERE label_id = ? AND kind = 'write_back' AND state = 'pending'",
                    (now_text(), label_id),
                )
            row = await self._one("SELECT * FROM purchases WHERE label_id = ?", (label_id,))
        return PurchaseRow(*row)

    async def void(
        self, label_id: str, allowed_from: Collection[str], *, partly: str | None = None
    ) -> tuple[PurchaseRow, bool]:
        """The void's transaction: the label ``voided`` (its fulfilment released; the client's
        key stays bound to it, so a replay answers the voided label), its bought packages
        ``voided``, a write-back that never started cancelled, and the correction of one that
        did (running, done, or tried before — read from the label, which outlives its jobs)
        queued. With ``partly`` (some boxes could not be voided) the label goes to
        ``attention`` with that detail instead, still holding its fulfilment; the write-back is
        stopped and corrected all the same. (the row, whether a correction was queued)."""
        to = "voided" if partly is None else "attention"
        async with self._transaction() as db:
            current = await self._one(
                "SELECT status, write_back_state, write_back_attempts FROM purchases "
                "WHERE label_id = ?",
                (label_id,),
            )
            if current is None or current[0] not in allowed_from:
                raise IllegalTransition(label_id, current[0] if current else None, to)
            running = await self._one(
                "SELECT COUNT(*) FROM outbox WHERE label_id = ? AND kind = 'write_back' AND "
                "(state IN ('running', 'done') OR attempts > 0)",
                (label_id,),
            )
            await db.execute(
                "UPDATE outbox SET state = 'cancelled', updated_at = ? "
                "WHERE label_id = ? AND kind = 'write_back' AND state = 'pending'",
                (now_text(), label_id),
            )
            write_back = current[1]
            corrected = bool(running[0]) or current[2] > 0 or write_back in ("done", "failed")
            if corrected:
                await self._enqueue(label_id, "void_correction")
            elif write_back == "pending":
                write_back = "cancelled"
            if partly is not None and write_back in ("pending", "failed"):
                # stopped for good (the correction clears the voided boxes): a label in attention
                # with a failed write-back is one its write-back holds, which this one is not
                write_back = "cancelled"
            stamp = now_text()
            if partly is not None:
                await db.execute(
                    "UPDATE purchases SET status = 'attention', detail = ?, updated_at = ?, "
                    "write_back_state = ? WHERE label_id = ?",
                    (partly, stamp, write_back, label_id),
                )
            else:
                await db.execute(
                    "UPDATE purchases SET status = 'voided', voided_at = ?, updated_at = ?, "
                    "fulfilment_key = NULL, write_back_state = ? WHERE label_id = ?",
                    (stamp, stamp, write_back, label_id),
                )
                await db.execute(
                    "UPDATE packages SET state = 'voided' WHERE label_id = ? AND state = 'bought'",
                    (label_id,),
                )
            row = await self._one("SELECT * FROM purchases WHERE label_id = ?", (label_id,))
        return PurchaseRow(*row), corrected

    async def half_voided(self) -> list[tuple[str, bool]]:
        """Live labels a void was cut off in: (label id, whether every package is voided) for
        each label with a voided package that is not ``attention``, or is ``attention`` with
        nothing left bought (a second void finished the boxes but not the label)."""
        rows = await self._fetch(
            "SELECT p.label_id, p.status, "
            "SUM(k.state = 'voided'), SUM(k.state NOT IN ('voided', 'failed')) "
            "FROM purchases p JOIN packages k ON k.label_id = p.label_id "
            "WHERE p.status IN ('purchased', 'completed', 'write_back_failed', 'attention') "
            "AND p.label_id IN (SELECT label_id FROM packages WHERE state = 'voided') "
            "GROUP BY p.label_id"
        )
        return [
            (str(label_id), not live)
            for label_id, status, _, live in rows
            if status != "attention" or not live
        ]

    async def set_detail(self, label_id: str, detail: str | None, **fields: Any) -> None:
        """Annotate a purchase without changing its status (``detail``, write-back counters)."""
        columns = {"detail": detail, "updated_at": now_text(), **fields}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        await self._execute(
            f"UPDATE purchases SET {assignments} WHERE label_id = ?", (*columns.values(), label_id)
        )

    # --- packages ----------------------------------------------------------------------------

    async def packages(self, label_id: str) -> list[PackageRow]:
        rows = await self._fetch(
            "SELECT * FROM packages WHERE label_id = ? ORDER BY n", (label_id,)
        )
        return [PackageRow(*row) for row in rows]

    async def packages_of(self, label_ids: Sequence[str]) -> dict[str, list[PackageRow]]:
        """The packages of several purchases (one query per chunk of ids)."""
        found: dict[str, list[PackageRow]] = {label_id: [] for label_id in label_ids}
        for part in chunks(label_ids):
            rows = await self._fetch(
                f"SELECT * FROM packages WHERE label_id IN ({','.join('?' * len(part))}) "
                "ORDER BY label_id, n",
                part,
            )
            for row in rows:
                found[row[0]].append(PackageRow(*row))
        return found

    async def move_package(
        self, label_id: str, n: int, to: str, allowed_from: Collection[str], **fields: Any
    ) -> PackageRow:
        """Move one package to ``to`` (with ``fields``) if it is in ``allowed_from``; raises
        :class:`IllegalTransition` otherwise."""
        columns = {"state": to, **fields}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        marks = ",".join("?" * len(allowed_from))
        async with self._transaction() as db:
            cursor = await db.execute(
                f"UPDATE packages SET {assignments} WHERE label_id = ? AND n = ? "
                f"AND state IN ({marks})",
                (*columns.values(), label_id, n, *allowed_from),
            )
            row = await self._one(
                "SELECT * FROM packages WHERE label_id = ? AND n = ?", (label_id, n)
            )
            if cursor.rowcount != 1:
                raise IllegalTransition(f"{label_id}:{n}", row[4] if row else None, to)
        return PackageRow(*row)

    # --- outbox ------------------------------------------------------------------------------

    async def _enqueue(self, label_id: str, kind: str) -> None:
        stamp = now_text()
        await self.db.execute(
            "INSERT INTO outbox (label_id, kind, state, next_at, created_at, updated_at) "
            "VALUES (?, ?, 'pending', ?, ?, ?)",
            (label_id, kind, stamp, stamp, stamp),
        )

    async def _settle_job(self, job: JobResult) -> None:
        if job.state == "pending":
            assert job.next_at is not None
            await self.db.execute(
                "UPDATE outbox SET state = 'pending', attempts = attempts + 1, last_error = ?, "
                "next_at = ?, updated_at = ? WHERE id = ?",
                (job.error, format_stamp(job.next_at), now_text(), job.id),
            )
        else:
            await self.db.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, "
                "updated_at = ? WHERE id = ?",
                (job.state, job.error, now_text(), job.id),
            )

    async def settle_job(self, job: JobResult) -> None:
        """Settle a job that changes no label status."""
        async with self._transaction():
            await self._settle_job(job)

    async def claim_jobs(self, limit: int = 10) -> list[OutboxRow]:
        """Due jobs, at most one per sale and none of a sale that has one running, oldest first;
        each is marked ``running`` (a later job of a sale waits for the earlier ones)."""
        now = now_text()
        async with self._transaction() as db:
            # the head (oldest open job) of every sale's queue; only a due, pending head is taken
            async with db.execute(
                "SELECT o.id, o.label_id, o.kind, o.state, o.attempts, o.next_at, o.last_error, "
                "p.account, p.sale_id FROM outbox o JOIN purchases p ON p.label_id = o.label_id "
                "WHERE o.id IN (SELECT MIN(q.id) FROM outbox q JOIN purchases r "
                "ON r.label_id = q.label_id WHERE q.state IN ('pending', 'running') "
                "GROUP BY r.account, COALESCE(r.sale_id, r.label_id)) "
                "AND o.state = 'pending' AND o.next_at <= ? ORDER BY o.next_at, o.id LIMIT ?",
                (now, limit),
            ) as cursor:
                claimed = [OutboxRow(*row) for row in await cursor.fetchall()]
            for job in claimed:
                await db.execute(
                    "UPDATE outbox SET state = 'running', updated_at = ? WHERE id = ?",
                    (now, job.id),
                )
        return [dataclasses.replace(job, state="running") for job in claimed]

    async def due_now(self, label_id: str) -> int:
        """The label's waiting jobs (write-back, void correction) are due now, not after their
        back-off; a running one is left alone. How many were waiting."""
        stamp = now_text()
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE outbox SET next_at = ?, updated_at = ? WHERE label_id = ? "
                "AND state = 'pending'",
                (stamp, stamp, label_id),
            )
            return cursor.rowcount

    async def release_running_jobs(self) -> int:
        """At start-up: jobs a previous process was running are due again (each step of a job
        looks before it writes, so doing one again is harmless)."""
        async with self._transaction() as db:
            cursor = await db.execute("UPDATE outbox SET state = 'pending' WHERE state = 'running'")
            return cursor.rowcount

    async def next_due_at(self) -> str | None:
        rows = await self._fetch("SELECT MIN(next_at) FROM outbox WHERE state = 'pending'")
        return str(rows[0][0]) if rows and rows[0][0] else None

    async def jobs(self, label_id: str) -> list[OutboxRow]:
        rows = await self._fetch(
            "SELECT id, label_id, kind, state, attempts, next_at, last_error FROM outbox "
            "WHERE label_id = ? ORDER BY id",
            (label_id,),
        )
        return [OutboxRow(*row) for row in rows]

    async def purchases_for_sales(self, account: str, sale_ids: Sequence[str]) -> list[PurchaseRow]:
        """Every purchase of these sales (for the poller)."""
        return [PurchaseRow(*row) for row in await self._of_sales("purchases", account, sale_ids)]

    async def _of_sales(self, table: str, account: str, sale_ids: Sequence[str]) -> list[Any]:
        """The account's rows of ``table`` (a name from this module) for these sales: one query
        per chunk of ids, so no ``IN`` list exceeds SQLite's limit on parameters."""
        found: list[Any] = []
        for part in chunks(sale_ids):
            found += await self._fetch(
                f"SELECT * FROM {table} WHERE account = ? AND sale_id IN "
                f"({','.join('?' * len(part))})",
                (account, *part),
            )
        return found

    async def backlog(
        self, account: str, *, event_statuses: Sequence[str], label_statuses: Sequence[str]
    ) -> Backlog:
        """Counts only (indexed): cheap enough to answer every status request."""
        jobs = await self._fetch(
            "SELECT COUNT(*), MIN(o.created_at) FROM outbox o JOIN purchases p "
            "ON p.label_id = o.label_id WHERE o.state IN ('pending', 'running') AND p.account = ?",
            (account,),
        )
        counts: list[dict[str, int]] = []
        for table, statuses in (("events", event_statuses), ("purchases", label_statuses)):
            marks = ",".join("?" * len(statuses))
            rows = await self._fetch(
                f"SELECT status, COUNT(*) FROM {table} WHERE account = ? AND status IN ({marks}) "
                "GROUP BY status",
                (account, *statuses),
            )
            counts.append({status: 0 for status in statuses} | {str(s): int(n) for s, n in rows})
        return Backlog(
            write_backs=int(jobs[0][0]), oldest_write_back_at=jobs[0][1],
            events=counts[0], labels=counts[1],
        )  # fmt: skip

    # --- retention ---------------------------------------------------------------------------

    async def purge(self, before: dt.datetime) -> tuple[int, int, list[str]]:
        """Forget what finished before ``before``: settled events and outbox jobs are deleted;
        (events, jobs, PDF paths of finished labels to delete: labels and customs forms) — the paths
        are cleared here."""
        cutoff = format_stamp(before)
        async with self._transaction() as db:
            events = await db.execute(
                "DELETE FROM events WHERE status IN ('processed', 'ignored') AND updated_at < ?",
                (cutoff,),
            )
            jobs = await db.execute(
                "DELETE FROM outbox WHERE state IN ('done', 'cancelled') AND updated_at < ?",
                (cutoff,),
            )
            finished = (
                "SELECT label_id FROM purchases WHERE status IN ('completed', 'voided', "
                "'failed') AND updated_at < ? AND label_id NOT IN "
                "(SELECT label_id FROM outbox WHERE state IN ('pending', 'running'))"
            )
            async with db.execute(
                f"SELECT pdf_path, customs_pdf_path FROM packages WHERE (pdf_path IS NOT NULL "
                f"OR customs_pdf_path IS NOT NULL) AND label_id IN ({finished})",
                (cutoff,),
            ) as cursor:
                paths = [str(path) for row in await cursor.fetchall() for path in row if path]
            await db.execute(
                f"UPDATE packages SET pdf_path = NULL, customs_pdf_path = NULL "
                f"WHERE label_id IN ({finished})",
                (cutoff,),
            )
        return events.rowcount, jobs.rowcount, paths

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
        return [EventRow(*row) for row in await self._of_sales("events", account, sale_ids)]

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
