"""What every part of the ledger (:mod:`.ledger`) shares: column lists, ``IN``-list helpers,
the engine and this ledger's lease owner, fenced writes, and queries several parts run."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

from ratesvc.storage.leases import new_owner, owner_is_gone
from ratesvc.storage.records import (
    CUSTOMS,
    LABEL,
    EventRow,
    JobResult,
    LeaseLost,
    PackageRow,
    PurchaseRow,
    columns,
    format_stamp,
    now_text,
)
from ratesvc.storage.sql import Connection, Engine, Row

V = TypeVar("V")
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
_HEADS = (  # the head (oldest open job) of every sale's outbox queue
    "SELECT MIN(q.id) FROM outbox q JOIN purchases r ON r.label_id = q.label_id "
    "WHERE q.state IN ('pending', 'running') GROUP BY r.account, COALESCE(r.sale_id, r.label_id)"
)


PURGE_BATCH = 5000  # rows per retention transaction (a quarter of it, and so on, past the cap)
MIN_PURGE_BATCH = 50


def _package(row: Row) -> PackageRow:
    """A package row with its two ``EXISTS (documents …)`` columns."""
    package = PackageRow(*row[:-2])
    return dataclasses.replace(package, pdf_stored=bool(row[-2]), customs_pdf_stored=bool(row[-1]))


def _marks(values: Collection[Any]) -> str:
    return ",".join("?" * len(values))


def chunks(values: Sequence[V]) -> list[Sequence[V]]:
    """``values`` cut in pieces small enough for one ``IN (...)`` list."""
    return [values[i : i + MAX_IN_LIST] for i in range(0, len(values), MAX_IN_LIST)]


class LedgerCore:
    """What every part of the ledger shares: the engine, this ledger's lease owner, fencing, and
    the queries several parts run."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._for_update = engine.for_update
        self._now = engine.now_s
        self._owner = new_owner()
        self._owner_pid = os.getpid()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def where(self) -> str:
        """Where the ledger lives, for messages (never a password)."""
        return self._engine.where

    @property
    def owner(self) -> str:
        """The name this ledger's user (one process, one replica) takes leases under:
        ``host:pid:token``, drawn again in a forked child."""
        if self._owner_pid != os.getpid():
            self._owner, self._owner_pid = new_owner(), os.getpid()
        return self._owner

    @property
    def single_process(self) -> bool:
        """Only one process uses this ledger (SQLite: ``serve --workers`` above 1 needs
        PostgreSQL), so at start-up whatever a previous process held is abandoned."""
        return self._engine.dialect == "sqlite"

    async def _fence(self, tx: Connection, lease: str | None) -> None:
        """Inside a transaction: raises :class:`LeaseLost` unless ``lease`` is ours. The lease
        row stays locked until the commit, so it cannot change hands meanwhile."""
        if lease is None:
            return
        held = await tx.fetchone(
            f"SELECT 1 FROM leases WHERE name = ? AND owner = ?{self._for_update}",
            (lease, self.owner),
        )
        if held is None:
            raise LeaseLost(lease)

    @staticmethod
    async def _enqueue(tx: Connection, label_id: str, kind: str) -> None:
        stamp = now_text()
        await tx.execute(
            "INSERT INTO outbox (label_id, kind, state, next_at, created_at, updated_at) "
            "VALUES (?, ?, 'pending', ?, ?, ?)",
            (label_id, kind, stamp, stamp, stamp),
        )

    @staticmethod
    async def _locked_purchase(tx: Connection, label_id: str) -> PurchaseRow:
        row = await tx.fetchone(
            f"SELECT {_PURCHASE} FROM purchases WHERE label_id = ?", (label_id,)
        )
        assert row is not None  # the transaction holds it
        return PurchaseRow(*row)

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

    async def _settle_job(self, tx: Connection, job: JobResult) -> None:
        """Settle a job this ledger's owner is running (its claim given up with it); raises
        :class:`LeaseLost` — and so rolls back the transaction, label status and all — when
        another owner adopted it since (its result is the adopter's to write)."""
        if job.state == "pending":
            assert job.next_at is not None
            settled = await tx.execute(
                "UPDATE outbox SET state = 'pending', attempts = attempts + 1, last_error = ?, "
                "next_at = ?, updated_at = ?, owner = NULL, lease_until = NULL "
                "WHERE id = ? AND state = 'running' AND owner = ?",
                (job.error, format_stamp(job.next_at), now_text(), job.id, self.owner),
            )
        else:
            settled = await tx.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, "
                "updated_at = ?, owner = NULL, lease_until = NULL "
                "WHERE id = ? AND state = 'running' AND owner = ?",
                (job.state, job.error, now_text(), job.id, self.owner),
            )
        if settled != 1:
            raise LeaseLost(f"outbox:{job.id}")

    async def _gone_owners(self, sql: str, args: Sequence[Any]) -> list[str]:
        """The owners ``sql`` lists whose process is known to be gone (not ours now)."""
        rows = await self._engine.fetch(sql, args)
        return [
            str(row[0]) for row in rows
            if row[0] is not None and row[0] != self.owner and owner_is_gone(str(row[0]))
        ]  # fmt: skip

    async def _renew_claims(
        self, table: str, key: str, ids: Sequence[Any], ttl_s: float
    ) -> list[Any]:
        renewed: list[Any] = []
        for part in chunks(list(ids)):

            async def renew(tx: Connection, part: Sequence[Any] = part) -> list[Row]:
                return await tx.fetch(
                    f"UPDATE {table} SET lease_until = {self._now} + ? "
                    f"WHERE {key} IN ({_marks(part)}) AND owner = ? RETURNING {key}",
                    (float(ttl_s), *part, self.owner),
                )

            renewed += [row[0] for row in await self._engine.run(renew)]
        return renewed
