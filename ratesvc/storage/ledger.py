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

import dataclasses
import datetime as dt
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

from ratesvc.config import sqlite_path
from ratesvc.storage.leases import new_owner, owner_is_gone
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
        self._now = engine.now_s
        self._owner = new_owner()
        self._owner_pid = os.getpid()

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

    # --- leases ------------------------------------------------------------------------------

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

    async def clock(self) -> dt.datetime:
        """The database's time now (UTC): what every replica measures a purchase attempt's age
        by, so replicas whose own clocks disagree still agree on it."""
        rows = await self._engine.fetch(f"SELECT {self._now}")
        return dt.datetime.fromtimestamp(float(rows[0][0]), dt.UTC)

    async def acquire_lease(self, name: str, ttl_s: float) -> bool:
        """Take the lease ``name`` for ``ttl_s`` seconds: when nobody holds it, its holder let it
        expire, or it is already ours (then it is extended). One statement — an upsert whose
        update only applies to an expired or own lease — so of replicas racing for it exactly
        one wins (its row count says so).

        Whose clock: **the database's** (:attr:`Engine.now_s`), for taking, renewing and
        expiring alike. The replicas' clocks may disagree by seconds (NTP steps, a paused VM);
        on one clock a lease cannot be seen expired by one replica while its holder's clock
        says it is still valid, so skew between replicas never makes two owners. The holder
        only measures durations, on its monotonic clock (:class:`.leases.Lease`)."""
        now = self._now
        taken = await self._engine.execute(
            f"INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, {now} + ?) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
            f"expires_at = excluded.expires_at WHERE leases.expires_at < {now} "
            "OR leases.owner = excluded.owner",
            (name, self.owner, float(ttl_s)),
        )
        return taken == 1

    async def renew_lease(self, name: str, ttl_s: float) -> bool:
        """Extend our lease to ``ttl_s`` from now; False when it is another owner's (or gone).
        A lease that expired without being taken is still ours: nobody can have acted on it."""
        renewed = await self._engine.execute(
            f"UPDATE leases SET expires_at = {self._now} + ? WHERE name = ? AND owner = ?",
            (float(ttl_s), name, self.owner),
        )
        return renewed == 1

    async def release_lease(self, name: str) -> bool:
        """Give our lease back (another owner's is left alone)."""
        released = await self._engine.execute(
            "DELETE FROM leases WHERE name = ? AND owner = ?", (name, self.owner)
        )
        return released == 1

    async def lease(self, name: str) -> tuple[str, float] | None:
        """(owner, seconds left — negative once expired) of the lease ``name``, if recorded."""
        rows = await self._engine.fetch(
            f"SELECT owner, expires_at - {self._now} FROM leases WHERE name = ?", (name,)
        )
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    async def abandon_leases(self, prefix: str) -> int:
        """At start-up: the leases named ``prefix…`` a previous process left. Expired ones are
        tidied away; with one process per ledger (:attr:`single_process`, SQLite) so are those
        whose owner is known to be gone (:func:`~ratesvc.storage.leases.owner_is_gone`: a dead
        pid on this host), so a restart resumes at once. A live owner's are left alone — a
        second process on the same SQLite file must not take over a purchase being bought."""
        deleted = await self._engine.execute(
            f"DELETE FROM leases WHERE substr(name, 1, ?) = ? AND expires_at < {self._now}",
            (len(prefix), prefix),
        )
        if self.single_process:
            for owner in await self._gone_owners(
                "SELECT DISTINCT owner FROM leases WHERE substr(name, 1, ?) = ?",
                (len(prefix), prefix),
            ):
                deleted += await self._engine.execute(
                    "DELETE FROM leases WHERE substr(name, 1, ?) = ? AND owner = ?",
                    (len(prefix), prefix, owner),
                )
        return deleted

    async def expired_leases(self, prefix: str) -> list[str]:
        """The leases named ``prefix…`` whose holder let them expire (on the database's clock)
        and nobody took since: work cut off by a replica that died or stopped (a graceful end
        gives its leases back)."""
        rows = await self._engine.fetch(
            f"SELECT name FROM leases WHERE substr(name, 1, ?) = ? AND expires_at < {self._now} "
            "ORDER BY name",
            (len(prefix), prefix),
        )
        return [str(row[0]) for row in rows]

    async def _gone_owners(self, sql: str, args: Sequence[Any]) -> list[str]:
        """The owners ``sql`` lists whose process is known to be gone (not ours now)."""
        rows = await self._engine.fetch(sql, args)
        return [
            str(row[0]) for row in rows
            if row[0] is not None and row[0] != self.owner and owner_is_gone(str(row[0]))
        ]  # fmt: skip

    async def release_own_leases(self, prefix: str) -> int:
        """Give back every lease named ``prefix…`` this owner holds (at a graceful stop, after
        the work under them stopped)."""
        return await self._engine.execute(
            "DELETE FROM leases WHERE substr(name, 1, ?) = ? AND owner = ?",
            (len(prefix), prefix, self.owner),
        )

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

    async def adoptable_purchases(self) -> list[PurchaseRow]:
        """The :meth:`unfinished_purchases` nobody drives: their lease (``purchase:<label id>``)
        is free or expired."""
        rows = await self._engine.fetch(
            f"SELECT {_PURCHASE} FROM purchases WHERE (status = 'purchasing' OR "
            "(status = 'attention' AND label_id IN "
            "(SELECT label_id FROM packages WHERE state = 'unknown'))) AND NOT EXISTS "
            "(SELECT 1 FROM leases l WHERE l.name = 'purchase:' || purchases.label_id "
            f"AND l.expires_at >= {self._now}) ORDER BY rowid"
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
        lease: str | None = None,
    ) -> PurchaseRow:
        """Move a purchase to ``to`` in one transaction with what goes with it: other
        ``fields``, an outbox job queued (``enqueue``: its kind) or settled (``job``), pending
        write-back jobs cancelled, and, with ``release``, the fulfilment and client key given
        up. Raises :class:`IllegalTransition` (writing nothing) when the current status is not
        in ``allowed_from``, or (``unchanged_since``: an ``updated_at`` read before) when the
        row was changed since. The row is locked from the check to the commit. With ``lease``
        (or a ``job`` no longer ours), raises :class:`LeaseLost` unless it is still ours."""

        async def move(tx: Connection) -> PurchaseRow:
            await self._fence(tx, lease)
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

    async def half_voided(self, label_id: str | None = None) -> list[tuple[str, bool]]:
        """Live labels a void was cut off in: (label id, whether every package is voided) for
        each label with a voided package that is not ``attention``, or is ``attention`` with
        nothing left bought (a second void finished the boxes but not the label). With
        ``label_id``: that label, if it is one of them."""
        one = "" if label_id is None else "AND p.label_id = ? "
        rows = await self._engine.fetch(
            "SELECT p.label_id, p.status, "
            "SUM(CASE WHEN k.state = 'voided' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN k.state NOT IN ('voided', 'failed') THEN 1 ELSE 0 END) "
            "FROM purchases p JOIN packages k ON k.label_id = p.label_id "
            "WHERE p.status IN ('purchased', 'completed', 'write_back_failed', 'attention') "
            f"{one}AND p.label_id IN (SELECT label_id FROM packages WHERE state = 'voided') "
            "GROUP BY p.label_id, p.status",
            () if label_id is None else (label_id,),
        )
        return [
            (str(label_id), not live)
            for label_id, status, _, live in rows
            if status != "attention" or not live
        ]

    async def set_detail(
        self, label_id: str, detail: str | None, *, lease: str | None = None, **fields: Any
    ) -> None:
        """Annotate a purchase without changing its status (``detail``, write-back counters);
        with ``lease``, only while it is ours (:class:`LeaseLost` otherwise)."""
        columns = {"detail": detail, "updated_at": now_text(), **fields}
        assignments = ", ".join(f"{name} = ?" for name in columns)

        async def annotate(tx: Connection) -> None:
            await self._fence(tx, lease)
            await tx.execute(
                f"UPDATE purchases SET {assignments} WHERE label_id = ?",
                (*columns.values(), label_id),
            )

        await self._engine.run(annotate)

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
        lease: str | None = None,
        **fields: Any,
    ) -> PackageRow:
        """Move one package to ``to`` (with ``fields``) if it is in ``allowed_from``, and keep
        its ``documents`` (kind → PDF: :data:`LABEL`, :data:`CUSTOMS`) in the same transaction;
        raises :class:`IllegalTransition` otherwise. The update is conditional on the state, so
        of two writers moving the same package only one succeeds. With ``lease``, only while it
        is ours (:class:`LeaseLost` otherwise)."""
        columns = {"state": to, **fields}
        assignments = ", ".join(f"{name} = ?" for name in columns)

        async def move(tx: Connection) -> PackageRow:
            await self._fence(tx, lease)
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

    async def settle_job(self, job: JobResult) -> None:
        """Settle a job that changes no label status (:class:`LeaseLost`: no longer ours)."""

        async def settle(tx: Connection) -> None:
            await self._settle_job(tx, job)

        await self._engine.run(settle)

    async def claim_jobs(self, limit: int = 10, *, ttl_s: float = 30.0) -> list[OutboxRow]:
        """Due jobs, at most one per sale and none of a sale that has one running, oldest first;
        each is marked ``running``, owned by this ledger's :attr:`owner` for ``ttl_s`` seconds
        (renewed by :meth:`renew_jobs`; a later job of a sale waits for the earlier ones). A
        running job whose claim expired (its replica died) is a due head too: it is adopted.

        Replicas claiming together: the scan skips the rows another claim has locked
        (``skip_locked``), and a job is taken only if it is still pending, or still expired,
        when it is marked (its row count says so) — each job is claimed by one of them. A
        round with nothing to claim only reads (no write lock taken)."""
        now, clock = now_text(), self._now
        claimable = (
            "(state = 'pending' OR (state = 'running' AND "
            f"(lease_until IS NULL OR lease_until < {clock})))"
        )
        # the head (oldest open job) of every sale's queue; only a due pending head, or a
        # running one whose claim expired, is taken
        due = (
            f"FROM outbox o WHERE o.id IN ({_HEADS}) AND ((o.state = 'pending' AND "
            "o.next_at <= ?) OR (o.state = 'running' AND "
            f"(o.lease_until IS NULL OR o.lease_until < {clock})))"
        )
        if not await self._engine.fetch(f"SELECT 1 {due} LIMIT 1", (now,)):
            return []

        async def claim(tx: Connection) -> list[OutboxRow]:
            heads = await tx.fetch(
                "SELECT o.id, o.label_id, o.kind, o.state, o.attempts, o.next_at, o.last_error, "
                "(SELECT p.account FROM purchases p WHERE p.label_id = o.label_id), "
                "(SELECT p.sale_id FROM purchases p WHERE p.label_id = o.label_id) "
                f"{due} ORDER BY o.next_at, o.id LIMIT ?{self._engine.skip_locked}",
                (now, limit),
            )
            claimed: list[OutboxRow] = []
            for row in heads:
                job = OutboxRow(*row)
                taken = await tx.execute(
                    f"UPDATE outbox SET state = 'running', owner = ?, lease_until = {clock} + ?, "
                    f"updated_at = ? WHERE id = ? AND {claimable}",
                    (self.owner, float(ttl_s), now, job.id),
                )
                if taken == 1:
                    claimed.append(dataclasses.replace(job, state="running"))
            return claimed

        return await self._engine.run(claim)

    async def renew_jobs(self, ids: Sequence[int], ttl_s: float) -> set[int]:
        """Extend this owner's claims on running jobs ``ids`` to ``ttl_s`` from now; the ids
        still ours (a job adopted by another owner after its claim expired is not)."""
        return {int(key) for key in await self._renew_claims("outbox", "id", ids, ttl_s)}

    async def job_claim_left(self, job_id: int) -> float | None:
        """Seconds left on this owner's claim on the running job ``job_id``, on the database's
        clock (negative once it expired); None when the job is not running or is another
        owner's. Read right before a write-back writes to Cin7 Core."""
        rows = await self._engine.fetch(
            f"SELECT lease_until - {self._now} FROM outbox "
            "WHERE id = ? AND state = 'running' AND owner = ?",
            (job_id, self.owner),
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def release_own_jobs(self) -> int:
        """Every job this owner has running is pending again (its worker stopped gracefully —
        including a claim that committed as the worker was cancelled), so another replica
        takes it now rather than once its claim expires."""
        return await self._engine.execute(
            "UPDATE outbox SET state = 'pending', owner = NULL, lease_until = NULL "
            "WHERE state = 'running' AND owner = ?",
            (self.owner,),
        )

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
        looks before it writes, so doing one again is harmless) — those whose claim expired,
        and with one process per ledger (:attr:`single_process`) those whose owner is known to
        be gone (a dead pid on this host); a live process's running job is left to it."""
        released = await self._engine.execute(
            "UPDATE outbox SET state = 'pending', owner = NULL, lease_until = NULL "
            f"WHERE state = 'running' AND (lease_until IS NULL OR lease_until < {self._now})"
        )
        if self.single_process:
            for owner in await self._gone_owners(
                "SELECT DISTINCT owner FROM outbox WHERE state = 'running'", ()
            ):
                released += await self._engine.execute(
                    "UPDATE outbox SET state = 'pending', owner = NULL, lease_until = NULL "
                    "WHERE state = 'running' AND owner = ?",
                    (owner,),
                )
        return released

    async def next_due_at(self) -> str | None:
        """When the next job :meth:`claim_jobs` could take is due: the earliest pending head of
        a sale's queue (a job behind a running one waits for it to end, not for a time)."""
        rows = await self._engine.fetch(
            f"SELECT MIN(next_at) FROM outbox WHERE state = 'pending' AND id IN ({_HEADS})"
        )
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

    async def purge(self, before: dt.datetime, *, batch: int = PURGE_BATCH) -> Purged:
        """Forget what finished before ``before``: settled events and outbox jobs, and the PDFs
        of finished labels — those kept in the ledger are deleted here, the paths of older ones
        kept as files are cleared here and returned (for the caller to delete the files). The
        finished labels are locked while their PDFs are forgotten: a label voided or retried
        meanwhile (no longer finished, or changed since ``before``) keeps them.

        In transactions of at most ``batch`` rows each, until nothing is left: a first purge of
        a ledger with years of history never holds one transaction (or one statement, capped at
        10 s on PostgreSQL) for all of it, and writers wait for one batch at most. Replicas may
        purge at once: a row is deleted once, whoever gets it (the label scan skips rows another
        purge has locked)."""
        cutoff = format_stamp(before)
        events = await self._delete_batches(
            "events", "status", ("processed", "ignored"), "event_id", cutoff, batch
        )
        jobs = await self._delete_batches(
            "outbox", "state", ("done", "cancelled"), "id", cutoff, batch
        )
        documents, paths = 0, []
        while True:
            deleted, cleared, seen = await self._engine.run(
                lambda tx: self._purge_documents(tx, cutoff, batch)
            )
            documents += deleted
            paths += cleared
            if seen < batch:
                break
        # leases given up by their holders are deleted; these were left by dead ones
        await self._engine.execute(f"DELETE FROM leases WHERE expires_at < {self._now} - 86400")
        return Purged(events=events, jobs=jobs, documents=documents, paths=paths)

    async def _delete_batches(
        self, table: str, column: str, states: tuple[str, ...], key: str, cutoff: str, batch: int
    ) -> int:
        """Rows of ``table`` in one of ``states`` (its ``column``) and last changed before
        ``cutoff``, deleted ``batch`` at a time, each batch a statement and a transaction of its
        own: how many.

        Each state's rows are walked in ``(updated_at, key)`` order along the index migration 8
        made, each batch starting where the last ended: no batch scans again what an earlier
        one deleted (PostgreSQL keeps dead rows in its indexes until vacuumed), so the time per
        batch stays flat however big the backlog. A batch that runs into the statement cap is
        retried a quarter the size; what earlier batches deleted stays deleted, so even a purge
        that gives up has made progress for the next one."""
        deleted = 0
        for state in states:
            after: tuple[Any, ...] = ()  # (updated_at, key) the last batch ended at
            while True:
                where = f"{column} = ? AND updated_at < ?" + (
                    f" AND (updated_at, {key}) > (?, ?)" if after else ""
                )
                args = (state, cutoff, *after)
                try:
                    found = await self._engine.fetch(
                        f"SELECT updated_at, {key} FROM {table} WHERE {where} "
                        f"ORDER BY updated_at, {key} LIMIT 1 OFFSET ?",
                        (*args, batch - 1),
                    )
                    upto = f" AND (updated_at, {key}) <= (?, ?)" if found else ""
                    deleted += await self._engine.execute(
                        f"DELETE FROM {table} WHERE {where}{upto}",
                        (*args, *(found[0] if found else ())),
                    )
                except TimeoutError:
                    if batch <= MIN_PURGE_BATCH:
                        raise
                    batch = max(MIN_PURGE_BATCH, batch // 4)
                    continue
                if not found:
                    break
                after = tuple(found[0])
        return deleted

    async def _purge_documents(
        self, tx: Connection, cutoff: str, batch: int
    ) -> tuple[int, list[str], int]:
        """One batch of finished labels' PDFs: (documents deleted, file paths cleared, labels
        seen)."""
        finished = await tx.fetch(
            "SELECT label_id FROM purchases WHERE status IN ('completed', 'voided', 'failed') "
            "AND updated_at < ? AND label_id NOT IN "
            "(SELECT label_id FROM outbox WHERE state IN ('pending', 'running')) "
            "AND (label_id IN (SELECT label_id FROM documents) OR label_id IN "
            "(SELECT label_id FROM packages WHERE pdf_path IS NOT NULL "
            "OR customs_pdf_path IS NOT NULL)) "
            f"ORDER BY label_id LIMIT ?{self._engine.skip_locked}",
            (cutoff, batch),
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
        return documents, paths, len(finished)

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

    async def set_event(self, event_id: str, *, claimed: bool = False, **fields: Any) -> None:
        """Change an event's ``fields``. ``claimed``: the outcome of this owner's claim on it,
        which is given up with it — raises :class:`LeaseLost` (writing nothing) when another
        owner adopted the event since."""
        columns = {**fields, "updated_at": now_text()}
        if claimed:
            columns.update(owner=None, lease_until=None)
        assignments = ", ".join(f"{name} = ?" for name in columns)
        sql, args = f"UPDATE events SET {assignments} WHERE event_id = ?", [*columns.values()]
        args.append(event_id)
        if claimed:
            sql += " AND owner = ?"
            args.append(self.owner)
        changed = await self._engine.execute(sql, args)
        if claimed and changed != 1:
            raise LeaseLost(f"event:{event_id}")

    async def claim_events(self, limit: int = 20, *, ttl_s: float = 30.0) -> list[EventRow]:
        """Due open events nobody holds — unclaimed, or claimed by a replica that let the claim
        expire (adopted) — none of a sale another live claim is working on, oldest first; each
        is claimed by this ledger's :attr:`owner` for ``ttl_s`` seconds (renewed by
        :meth:`renew_events`, given up by ``set_event(claimed=True)``). An event is taken only
        if it is still unclaimed when it is marked (its row count says so), so of replicas
        that found the same event one processes it. A round with nothing to claim only reads
        (no write lock taken)."""
        clock, now = self._now, now_text()
        free = f"(lease_until IS NULL OR lease_until < {clock})"
        statuses = _marks(OPEN_EVENT_STATUSES)
        due = f"FROM events e WHERE {self._claimable_event} AND next_at <= ?"
        if not await self._engine.fetch(f"SELECT 1 {due} LIMIT 1", (*OPEN_EVENT_STATUSES, now)):
            return []

        async def claim(tx: Connection) -> list[EventRow]:
            rows = await tx.fetch(
                f"SELECT {_EVENT} {due} ORDER BY next_at, rowid LIMIT ?{self._engine.skip_locked}",
                (*OPEN_EVENT_STATUSES, now, limit),
            )
            claimed: list[EventRow] = []
            sales: set[tuple[str, str | None]] = set()
            for row in rows:
                event = EventRow(*row)
                if event.sale_id is not None and (event.account, event.sale_id) in sales:
                    continue  # one event of a sale at a time
                sales.add((event.account, event.sale_id))
                taken = await tx.execute(
                    f"UPDATE events SET owner = ?, lease_until = {clock} + ? "
                    f"WHERE event_id = ? AND status IN ({statuses}) AND {free}",
                    (self.owner, float(ttl_s), event.event_id, *OPEN_EVENT_STATUSES),
                )
                if taken == 1:
                    claimed.append(event)
            return claimed

        return await self._engine.run(claim)

    async def renew_events(self, ids: Sequence[str], ttl_s: float) -> set[str]:
        """Extend this owner's claims on events ``ids``; the ids still ours."""
        return {str(key) for key in await self._renew_claims("events", "event_id", ids, ttl_s)}

    async def release_events(self, ids: Sequence[str] | None = None) -> int:
        """Give up this owner's claims on events ``ids`` — on every event it holds, without —
        (they stay as they are otherwise)."""
        if ids is None:
            return await self._engine.execute(
                "UPDATE events SET owner = NULL, lease_until = NULL WHERE owner = ?",
                (self.owner,),
            )
        released = 0
        for part in chunks(list(ids)):
            released += await self._engine.execute(
                "UPDATE events SET owner = NULL, lease_until = NULL "
                f"WHERE event_id IN ({_marks(part)}) AND owner = ?",
                (*part, self.owner),
            )
        return released

    async def release_claimed_events(self) -> int:
        """At start-up with one process per ledger (:attr:`single_process`): the claims on
        events whose owner is known to be gone are given up, so those events are processed now
        rather than once the claims expire (a live process's claims are left to it)."""
        if not self.single_process:
            return 0
        released = 0
        for owner in await self._gone_owners(
            "SELECT DISTINCT owner FROM events WHERE owner IS NOT NULL", ()
        ):
            released += await self._engine.execute(
                "UPDATE events SET owner = NULL, lease_until = NULL WHERE owner = ?", (owner,)
            )
        return released

    async def due_events(self, limit: int = 20) -> list[EventRow]:
        rows = await self._engine.fetch(
            f"SELECT {_EVENT} FROM events WHERE status IN ({_marks(OPEN_EVENT_STATUSES)}) "
            "AND next_at <= ? ORDER BY next_at, rowid LIMIT ?",
            (*OPEN_EVENT_STATUSES, now_text(), limit),
        )
        return [EventRow(*row) for row in rows]

    async def next_event_due_at(self) -> str | None:
        """When the next event :meth:`claim_events` could take is due (one held by a live claim,
        or of a sale another live claim works on, waits for that, not for a time)."""
        rows = await self._engine.fetch(
            f"SELECT MIN(next_at) FROM events e WHERE {self._claimable_event}",
            OPEN_EVENT_STATUSES,
        )
        return str(rows[0][0]) if rows and rows[0][0] else None

    @property
    def _claimable_event(self) -> str:
        """An open event (``OPEN_EVENT_STATUSES`` bound first) of alias ``e`` nobody holds, of a
        sale no other live claim works on."""
        clock = self._now
        return (
            f"status IN ({_marks(OPEN_EVENT_STATUSES)}) "
            f"AND (lease_until IS NULL OR lease_until < {clock}) "
            "AND NOT EXISTS (SELECT 1 FROM events x WHERE x.account = e.account "
            "AND x.sale_id = e.sale_id AND x.event_id <> e.event_id "
            f"AND x.lease_until >= {clock})"
        )

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
        person again) — if its status is one of ``statuses`` and no replica is processing it
        (checked and changed in one statement); the event as it is now, or None when it was
        not requeued."""
        stamp = now_text()

        async def requeue(tx: Connection) -> EventRow | None:
            changed = await tx.execute(
                "UPDATE events SET status = 'received', reason = ?, label_id = NULL, "
                "attempts = 0, sale_updated = NULL, next_at = ?, updated_at = ? "
                f"WHERE event_id = ? AND status IN ({_marks(statuses)}) "
                f"AND (lease_until IS NULL OR lease_until < {self._now})",
                (reason, stamp, stamp, event_id, *statuses),
            )
            if changed != 1:
                return None
            row = await tx.fetchone(f"SELECT {_EVENT} FROM events WHERE event_id = ?", (event_id,))
            return EventRow(*row) if row else None

        return await self._engine.run(requeue)
