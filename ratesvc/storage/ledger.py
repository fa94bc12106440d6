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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ratesvc.config import sqlite_path
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
    OutboxRow,
    PackageRow,
    PurchaseRow,
    Purged,
    columns,
    format_stamp,
    now_text,
    parse_stamp,
)
from ratesvc.storage.sql import Connection, Engine, LedgerUnavailable, RetryTransaction, Row
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

MAX_IN_LIST = 500  # values in one IN (...) list: well under SQLite's limit on "?" in a statement

_PURCHASE = columns(PurchaseRow)
_EVENT = columns(EventRow)
_PACKAGE = (
    columns(PackageRow, "k.")
    + ", EXISTS (SELECT 1 FROM documents d WHERE d.label_id = k.label_id AND d.n = k.n "
    f"AND d.kind = '{LABEL}')"
    + ", EXISTS (SELECT 1 FROM documents d WHERE d.label_id = k.label_id AND d.n = k.n "
    f"AND d.kind = '{CUSTOMS}')"
)
_OUTBOX = "id, label_id, kind, state, attempts, next_at, last_error"
_COLUMNS = {"purchases": _PURCHASE, "events": _EVENT}  # tables read by _page and _of_sales


def _package(row: Row) -> PackageRow:
    """A package row with its two ``EXISTS (documents …)`` columns."""
    package = PackageRow(*row[:-2])
    return dataclasses.replace(package, pdf_stored=bool(row[-2]), customs_pdf_stored=bool(row[-1]))


def _marks(values: Collection[Any]) -> str:
    return ",".join("?" * len(values))


def chunks(values: Sequence[str]) -> list[Sequence[str]]:
    """``values`` cut in pieces small enough for one ``IN (...)`` list."""
    return [values[i : i + MAX_IN_LIST] for i in range(0, len(values), MAX_IN_LIST)]


def engine_for(url: str) -> Engine:
    """The engine of a ``RATESVC_DATABASE_URL`` (``sqlite:///…`` or ``postgresql://…``)."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return SQLiteEngine(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        return PostgresEngine(url)
    raise ValueError(f"no ledger engine for {scheme}:// URLs")


class Ledger:
    """The ledger on one engine; every write is its own committed transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._for_update = engine.for_update

    @classmethod
    def from_url(cls, url: str) -> Ledger:
        return cls(engine_for(url))

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def where(self) -> str:
        """Where the ledger lives, for messages (never a password)."""
        return self._engine.where

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

    # --- purchases ---------------------------------------------------------------------------

    async def create_purchase(
        self,
        row: PurchaseRow,
        packages: Sequence[tuple[int, str | None, str]],
    ) -> None:
        """Record the intent to buy (``packages``: n, box, purchase key) in one transaction.

        Raises :class:`IdempotencyConflict` when the account already used the client's key
        (``by_key``), or when a live label already holds the fulfilment (``by_key=False``).
        Concurrent writers: the unique indexes on (account, key) and (account, fulfilment)
        decide; a purchase another replica recorded after the checks read is found when the
        transaction runs again.
        """

        async def record(tx: Connection) -> None:
            if row.idem_key is not None:
                existing = await tx.fetchone(
                    f"SELECT {_PURCHASE} FROM purchases WHERE account = ? AND idem_key = ?",
                    (row.account, row.idem_key),
                )
                if existing is not None:
                    raise IdempotencyConflict(PurchaseRow(*existing))
            if row.fulfilment_key is not None:
                holder = await tx.fetchone(
                    f"SELECT {_PURCHASE} FROM purchases WHERE account = ? AND fulfilment_key = ?",
                    (row.account, row.fulfilment_key),
                )
                if holder is not None:
                    raise IdempotencyConflict(PurchaseRow(*holder), by_key=False)
            values = dataclasses.astuple(row)
            inserted = await tx.execute(
                f"INSERT INTO purchases ({_PURCHASE}) VALUES ({_marks(values)}) "
                "ON CONFLICT DO NOTHING",
                values,
            )
            if inserted != 1:  # recorded by another writer since the checks: read them again
                raise RetryTransaction
            await tx.executemany(
                "INSERT INTO packages (label_id, n, box, purchase_key, state) VALUES (?,?,?,?,?)",
                [(row.label_id, n, box, key, "pending") for n, box, key in packages],
            )

        await self._engine.run(record)

    async def _purchase_where(self, condition: str, args: Sequence[Any]) -> PurchaseRow | None:
        rows = await self._engine.fetch(
            f"SELECT {_PURCHASE} FROM purchases WHERE {condition}", args
        )
        return PurchaseRow(*rows[0]) if rows else None

    async def purchase_by_key(self, account: str, idem_key: str) -> PurchaseRow | None:
        return await self._purchase_where("account = ? AND idem_key = ?", (account, idem_key))

    async def purchase_by_fulfilment(self, account: str, fulfilment_key: str) -> PurchaseRow | None:
        """The live label holding this fulfilment, if any."""
        return await self._purchase_where(
            "account = ? AND fulfilment_key = ?", (account, fulfilment_key)
        )

    async def live_purchase_by_request(self, account: str, request_hash: str) -> PurchaseRow | None:
        """The live sale label a keyless request with this body made, if any."""
        return await self._purchase_where(
            "account = ? AND request_hash = ? AND idem_key IS NULL "
            "AND fulfilment_key IS NOT NULL ORDER BY rowid DESC LIMIT 1",
            (account, request_hash),
        )

    async def purchase(self, label_id: str) -> PurchaseRow | None:
        return await self._purchase_where("label_id = ?", (label_id,))

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
    ) -> list[Row]:  # fmt: skip
        """One page of an account's rows of ``table`` (a name from this module), newest first."""
        sql = f"SELECT {_COLUMNS[table]} FROM {table} WHERE account = ?"
        args: list[Any] = [account]
        for column, value in (("sale_id", sale_id), ("status", status)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        if search is not None:  # purchases only
            folded = search.casefold()  # casefold() in SQL too: lower() folds ASCII only
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
        return await self._engine.fetch(sql, args)

    async def unfinished_purchases(self) -> list[PurchaseRow]:
        """Purchases a unit must still drive: buying, or with a package whose outcome is
        unknown (whatever the label's status)."""
        rows = await self._engine.fetch(
            f"SELECT {_PURCHASE} FROM purchases WHERE status = 'purchasing' OR "
            "(status = 'attention' AND label_id IN "
            "(SELECT label_id FROM packages WHERE state = 'unknown')) ORDER BY rowid"
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
        row was changed since. The row is locked from the check to the commit."""

        async def move(tx: Connection) -> PurchaseRow:
            current = await tx.fetchone(
                f"SELECT status, updated_at FROM purchases WHERE label_id = ?{self._for_update}",
                (label_id,),
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
            await tx.execute(
                f"UPDATE purchases SET {assignments} WHERE label_id = ?",
                (*columns.values(), label_id),
            )
            if enqueue is not None:
                await self._enqueue(tx, label_id, enqueue)
            if job is not None:
                await self._settle_job(tx, job)
            if cancel_write_back:
                await tx.execute(
                    "UPDATE outbox SET state = 'cancelled', updated_at = ? "
                    "WHERE label_id = ? AND kind = 'write_back' AND state = 'pending'",
                    (now_text(), label_id),
                )
            return await self._locked_purchase(tx, label_id)

        return await self._engine.run(move)

    @staticmethod
    async def _locked_purchase(tx: Connection, label_id: str) -> PurchaseRow:
        row = await tx.fetchone(
            f"SELECT {_PURCHASE} FROM purchases WHERE label_id = ?", (label_id,)
        )
        assert row is not None  # the transaction holds it
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
        stopped and corrected all the same. (the row, whether a correction was queued).

        The label and its write-back jobs are locked before they are read: a job another
        replica claims meanwhile is seen running (and corrected), never cancelled unseen."""
        to = "voided" if partly is None else "attention"

        async def void(tx: Connection) -> tuple[PurchaseRow, bool]:
            current = await tx.fetchone(
                "SELECT status, write_back_state, write_back_attempts FROM purchases "
                f"WHERE label_id = ?{self._for_update}",
                (label_id,),
            )
            if current is None or current[0] not in allowed_from:
                raise IllegalTransition(label_id, current[0] if current else None, to)
            await tx.fetch(
                f"SELECT id FROM outbox WHERE label_id = ? AND kind = 'write_back'"
                f"{self._for_update}",
                (label_id,),
            )
            running = await tx.fetchone(
                "SELECT COUNT(*) FROM outbox WHERE label_id = ? AND kind = 'write_back' AND "
                "(state IN ('running', 'done') OR attempts > 0)",
                (label_id,),
            )
            assert running is not None
            await tx.execute(
                "UPDATE outbox SET state = 'cancelled', updated_at = ? "
                "WHERE label_id = ? AND kind = 'write_back' AND state = 'pending'",
                (now_text(), label_id),
            )
            write_back = current[1]
            corrected = bool(running[0]) or current[2] > 0 or write_back in ("done", "failed")
            if corrected:
                await self._enqueue(tx, label_id, "void_correction")
            elif write_back == "pending":
                write_back = "cancelled"
            if partly is not None and write_back in ("pending", "failed"):
                # stopped for good (the correction clears the voided boxes): a label in attention
                # with a failed write-back is one its write-back holds, which this one is not
                write_back = "cancelled"
            stamp = now_text()
            if partly is not None:
                await tx.execute(
                    "UPDATE purchases SET status = 'attention', detail = ?, updated_at = ?, "
                    "write_back_state = ? WHERE label_id = ?",
                    (partly, stamp, write_back, label_id),
                )
            else:
                await tx.execute(
                    "UPDATE purchases SET status = 'voided', voided_at = ?, updated_at = ?, "
                    "fulfilment_key = NULL, write_back_state = ? WHERE label_id = ?",
                    (stamp, stamp, write_back, label_id),
                )
                await tx.execute(
                    "UPDATE packages SET state = 'voided' WHERE label_id = ? AND state = 'bought'",
                    (label_id,),
                )
            return await self._locked_purchase(tx, label_id), corrected

        return await self._engine.run(void)

    async def half_voided(self) -> list[tuple[str, bool]]:
        """Live labels a void was cut off in: (label id, whether every package is voided) for
        each label with a voided package that is not ``attention``, or is ``attention`` with
        nothing left bought (a second void finished the boxes but not the label)."""
        rows = await self._engine.fetch(
            "SELECT p.label_id, p.status, "
            "SUM(CASE WHEN k.state = 'voided' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN k.state NOT IN ('voided', 'failed') THEN 1 ELSE 0 END) "
            "FROM purchases p JOIN packages k ON k.label_id = p.label_id "
            "WHERE p.status IN ('purchased', 'completed', 'write_back_failed', 'attention') "
            "AND p.label_id IN (SELECT label_id FROM packages WHERE state = 'voided') "
            "GROUP BY p.label_id, p.status"
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
        await self._engine.execute(
            f"UPDATE purchases SET {assignments} WHERE label_id = ?", (*columns.values(), label_id)
        )

    # --- packages and their documents --------------------------------------------------------

    async def packages(self, label_id: str) -> list[PackageRow]:
        rows = await self._engine.fetch(
            f"SELECT {_PACKAGE} FROM packages k WHERE k.label_id = ? ORDER BY k.n", (label_id,)
        )
        return [_package(row) for row in rows]

    async def packages_of(self, label_ids: Sequence[str]) -> dict[str, list[PackageRow]]:
        """The packages of several purchases (one query per chunk of ids)."""
        found: dict[str, list[PackageRow]] = {label_id: [] for label_id in label_ids}
        for part in chunks(label_ids):
            rows = await self._engine.fetch(
                f"SELECT {_PACKAGE} FROM packages k WHERE k.label_id IN ({_marks(part)}) "
                "ORDER BY k.label_id, k.n",
                part,
            )
            for row in rows:
                found[row[0]].append(_package(row))
        return found

    async def move_package(
        self,
        label_id: str,
        n: int,
        to: str,
        allowed_from: Collection[str],
        *,
        documents: Mapping[str, bytes] | None = None,
        **fields: Any,
    ) -> PackageRow:
        """Move one package to ``to`` (with ``fields``) if it is in ``allowed_from``, and keep
        its ``documents`` (kind → PDF: :data:`LABEL`, :data:`CUSTOMS`) in the same transaction;
        raises :class:`IllegalTransition` otherwise. The update is conditional on the state, so
        of two writers moving the same package only one succeeds."""
        columns = {"state": to, **fields}
        assignments = ", ".join(f"{name} = ?" for name in columns)

        async def move(tx: Connection) -> PackageRow:
            changed = await tx.execute(
                f"UPDATE packages SET {assignments} WHERE label_id = ? AND n = ? "
                f"AND state IN ({_marks(allowed_from)})",
                (*columns.values(), label_id, n, *allowed_from),
            )
            if changed != 1:
                current = await tx.fetchone(
                    "SELECT state FROM packages WHERE label_id = ? AND n = ?", (label_id, n)
                )
                raise IllegalTransition(f"{label_id}:{n}", current[0] if current else None, to)
            stamp = now_text()
            for kind, content in (documents or {}).items():
                await tx.execute(
                    "INSERT INTO documents (label_id, n, kind, content, created_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (label_id, n, kind) "
                    "DO UPDATE SET content = excluded.content, created_at = excluded.created_at",
                    (label_id, n, kind, content, stamp),
                )
            row = await tx.fetchone(
                f"SELECT {_PACKAGE} FROM packages k WHERE k.label_id = ? AND k.n = ?",
                (label_id, n),
            )
            assert row is not None
            return _package(row)

        return await self._engine.run(move)

    async def document(self, label_id: str, n: int, kind: str) -> bytes | None:
        """A package's PDF of ``kind`` kept in the ledger, if it is."""
        rows = await self._engine.fetch(
            "SELECT content FROM documents WHERE label_id = ? AND n = ? AND kind = ?",
            (label_id, n, kind),
        )
        return bytes(rows[0][0]) if rows else None

    async def documents(self, label_id: str, kind: str) -> dict[int, bytes]:
        """Every package's PDF of ``kind`` kept in the ledger, by package number."""
        rows = await self._engine.fetch(
            "SELECT n, content FROM documents WHERE label_id = ? AND kind = ?", (label_id, kind)
        )
        return {int(n): bytes(content) for n, content in rows}

    # --- outbox ------------------------------------------------------------------------------

    @staticmethod
    async def _enqueue(tx: Connection, label_id: str, kind: str) -> None:
        stamp = now_text()
        await tx.execute(
            "INSERT INTO outbox (label_id, kind, state, next_at, created_at, updated_at) "
            "VALUES (?, ?, 'pending', ?, ?, ?)",
            (label_id, kind, stamp, stamp, stamp),
        )

    @staticmethod
    async def _settle_job(tx: Connection, job: JobResult) -> None:
        if job.state == "pending":
            assert job.next_at is not None
            await tx.execute(
                "UPDATE outbox SET state = 'pending', attempts = attempts + 1, last_error = ?, "
                "next_at = ?, updated_at = ? WHERE id = ?",
                (job.error, format_stamp(job.next_at), now_text(), job.id),
            )
        else:
            await tx.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, "
                "updated_at = ? WHERE id = ?",
                (job.state, job.error, now_text(), job.id),
            )

    async def settle_job(self, job: JobResult) -> None:
        """Settle a job that changes no label status."""

        async def settle(tx: Connection) -> None:
            await self._settle_job(tx, job)

        await self._engine.run(settle)

    async def claim_jobs(self, limit: int = 10) -> list[OutboxRow]:
        """Due jobs, at most one per sale and none of a sale that has one running, oldest first;
        each is marked ``running`` (a later job of a sale waits for the earlier ones). A job is
        taken only if it is still pending when it is marked (its row count says so), so a job
        two writers both found is claimed by one of them."""
        now = now_text()

        async def claim(tx: Connection) -> list[OutboxRow]:
            # the head (oldest open job) of every sale's queue; only a due, pending head is taken
            heads = await tx.fetch(
                "SELECT o.id, o.label_id, o.kind, o.state, o.attempts, o.next_at, o.last_error, "
                "p.account, p.sale_id FROM outbox o JOIN purchases p ON p.label_id = o.label_id "
                "WHERE o.id IN (SELECT MIN(q.id) FROM outbox q JOIN purchases r "
                "ON r.label_id = q.label_id WHERE q.state IN ('pending', 'running') "
                "GROUP BY r.account, COALESCE(r.sale_id, r.label_id)) "
                "AND o.state = 'pending' AND o.next_at <= ? ORDER BY o.next_at, o.id LIMIT ?",
                (now, limit),
            )
            claimed: list[OutboxRow] = []
            for row in heads:
                job = OutboxRow(*row)
                taken = await tx.execute(
                    "UPDATE outbox SET state = 'running', updated_at = ? "
                    "WHERE id = ? AND state = 'pending'",
                    (now, job.id),
                )
                if taken == 1:
                    claimed.append(dataclasses.replace(job, state="running"))
            return claimed

        return await self._engine.run(claim)

    async def due_now(self, label_id: str) -> int:
        """The label's waiting jobs (write-back, void correction) are due now, not after their
        back-off; a running one is left alone. How many were waiting."""
        stamp = now_text()
        return await self._engine.execute(
            "UPDATE outbox SET next_at = ?, updated_at = ? WHERE label_id = ? "
            "AND state = 'pending'",
            (stamp, stamp, label_id),
        )

    async def release_running_jobs(self) -> int:
        """At start-up: jobs a previous process was running are due again (each step of a job
        looks before it writes, so doing one again is harmless)."""
        return await self._engine.execute(
            "UPDATE outbox SET state = 'pending' WHERE state = 'running'"
        )

    async def next_due_at(self) -> str | None:
        rows = await self._engine.fetch("SELECT MIN(next_at) FROM outbox WHERE state = 'pending'")
        return str(rows[0][0]) if rows and rows[0][0] else None

    async def jobs(self, label_id: str) -> list[OutboxRow]:
        rows = await self._engine.fetch(
            f"SELECT {_OUTBOX} FROM outbox WHERE label_id = ? ORDER BY id", (label_id,)
        )
        return [OutboxRow(*row) for row in rows]

    async def purchases_for_sales(self, account: str, sale_ids: Sequence[str]) -> list[PurchaseRow]:
        """Every purchase of these sales (for the poller)."""
        return [PurchaseRow(*row) for row in await self._of_sales("purchases", account, sale_ids)]

    async def _of_sales(self, table: str, account: str, sale_ids: Sequence[str]) -> list[Row]:
        """The account's rows of ``table`` (a name from this module) for these sales: one query
        per chunk of ids, so no ``IN`` list exceeds SQLite's limit on parameters."""
        found: list[Row] = []
        for part in chunks(sale_ids):
            found += await self._engine.fetch(
                f"SELECT {_COLUMNS[table]} FROM {table} WHERE account = ? AND sale_id IN "
                f"({_marks(part)})",
                (account, *part),
            )
        return found

    async def backlog(
        self, account: str, *, event_statuses: Sequence[str], label_statuses: Sequence[str]
    ) -> Backlog:
        """Counts only (indexed): cheap enough to answer every status request."""
        jobs = await self._engine.fetch(
            "SELECT COUNT(*), MIN(o.created_at) FROM outbox o JOIN purchases p "
            "ON p.label_id = o.label_id WHERE o.state IN ('pending', 'running') AND p.account = ?",
            (account,),
        )
        counts: list[dict[str, int]] = []
        for table, statuses in (("events", event_statuses), ("purchases", label_statuses)):
            rows = await self._engine.fetch(
                f"SELECT status, COUNT(*) FROM {table} WHERE account = ? "
                f"AND status IN ({_marks(statuses)}) GROUP BY status",
                (account, *statuses),
            )
            counts.append({status: 0 for status in statuses} | {str(s): int(n) for s, n in rows})
        return Backlog(
            write_backs=int(jobs[0][0]), oldest_write_back_at=jobs[0][1],
            events=counts[0], labels=counts[1],
        )  # fmt: skip

    # --- retention ---------------------------------------------------------------------------

    async def purge(self, before: dt.datetime) -> Purged:
        """Forget what finished before ``before``: settled events and outbox jobs, and the PDFs
        of finished labels — those kept in the ledger are deleted here, the paths of older ones
        kept as files are cleared here and returned (for the caller to delete the files). The
        finished labels are locked while their PDFs are forgotten: a label voided or retried
        meanwhile (no longer finished, or changed since ``before``) keeps them."""
        cutoff = format_stamp(before)

        async def purge(tx: Connection) -> Purged:
            events = await tx.execute(
                "DELETE FROM events WHERE status IN ('processed', 'ignored') AND updated_at < ?",
                (cutoff,),
            )
            jobs = await tx.execute(
                "DELETE FROM outbox WHERE state IN ('done', 'cancelled') AND updated_at < ?",
                (cutoff,),
            )
            finished = await tx.fetch(
                "SELECT label_id FROM purchases WHERE status IN ('completed', 'voided', 'failed') "
                "AND updated_at < ? AND label_id NOT IN "
                "(SELECT label_id FROM outbox WHERE state IN ('pending', 'running')) "
                "AND (label_id IN (SELECT label_id FROM documents) OR label_id IN "
                "(SELECT label_id FROM packages WHERE pdf_path IS NOT NULL "
                f"OR customs_pdf_path IS NOT NULL)){self._for_update}",
                (cutoff,),
            )
            documents, paths = 0, []
            for part in chunks([str(row[0]) for row in finished]):
                marks = _marks(part)
                rows = await tx.fetch(
                    f"SELECT pdf_path, customs_pdf_path FROM packages WHERE label_id IN ({marks})",
                    part,
                )
                paths += [str(path) for row in rows for path in row if path]
                await tx.execute(
                    "UPDATE packages SET pdf_path = NULL, customs_pdf_path = NULL "
                    f"WHERE label_id IN ({marks})",
                    part,
                )
                documents += await tx.execute(
                    f"DELETE FROM documents WHERE label_id IN ({marks})", part
                )
            return Purged(events=events, jobs=jobs, documents=documents, paths=paths)

        return await self._engine.run(purge)

    # --- automation events -------------------------------------------------------------------

    async def record_event(self, row: EventRow) -> tuple[EventRow, bool]:
        """(the event, True) when new; (the one recorded earlier, False) for a repeat of it.
        The unique index on (account, dedup_key) decides between concurrent writers."""

        async def record(tx: Connection) -> tuple[EventRow, bool]:
            values = dataclasses.astuple(row)
            inserted = await tx.execute(
                f"INSERT INTO events ({_EVENT}) VALUES ({_marks(values)}) ON CONFLICT DO NOTHING",
                values,
            )
            if inserted == 1:
                return row, True
            existing = await tx.fetchone(
                f"SELECT {_EVENT} FROM events WHERE account = ? AND dedup_key = ?",
                (row.account, row.dedup_key),
            )
            if existing is None:  # the one it repeats was forgotten just now: record it anew
                raise RetryTransaction
            return EventRow(*existing), False

        return await self._engine.run(record)

    async def event(self, event_id: str) -> EventRow | None:
        rows = await self._engine.fetch(
            f"SELECT {_EVENT} FROM events WHERE event_id = ?", (event_id,)
        )
        return EventRow(*rows[0]) if rows else None

    async def set_event(self, event_id: str, **fields: Any) -> None:
        columns = {**fields, "updated_at": now_text()}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        await self._engine.execute(
            f"UPDATE events SET {assignments} WHERE event_id = ?", (*columns.values(), event_id)
        )

    async def due_events(self, limit: int = 20) -> list[EventRow]:
        rows = await self._engine.fetch(
            f"SELECT {_EVENT} FROM events WHERE status IN ({_marks(OPEN_EVENT_STATUSES)}) "
            "AND next_at <= ? ORDER BY next_at, rowid LIMIT ?",
            (*OPEN_EVENT_STATUSES, now_text(), limit),
        )
        return [EventRow(*row) for row in rows]

    async def next_event_due_at(self) -> str | None:
        rows = await self._engine.fetch(
            f"SELECT MIN(next_at) FROM events WHERE status IN ({_marks(OPEN_EVENT_STATUSES)})",
            OPEN_EVENT_STATUSES,
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

        async def requeue(tx: Connection) -> EventRow | None:
            changed = await tx.execute(
                "UPDATE events SET status = 'received', reason = ?, label_id = NULL, "
                "attempts = 0, sale_updated = NULL, next_at = ?, updated_at = ? "
                f"WHERE event_id = ? AND status IN ({_marks(statuses)})",
                (reason, stamp, stamp, event_id, *statuses),
            )
            if changed != 1:
                return None
            row = await tx.fetchone(f"SELECT {_EVENT} FROM events WHERE event_id = ?", (event_id,))
            return EventRow(*row) if row else None

        return await self._engine.run(requeue)
