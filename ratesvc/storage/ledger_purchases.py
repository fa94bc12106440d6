"""The ledger's label purchases, their packages and their documents (label PDFs, customs forms)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ratesvc.storage.ledger_core import _PACKAGE, _PURCHASE, LedgerCore, _marks, _package, chunks
from ratesvc.storage.records import (
    IdempotencyConflict,
    IllegalTransition,
    JobResult,
    PackageRow,
    PurchaseRow,
    now_text,
)
from ratesvc.storage.sql import Connection, RetryTransaction


class PurchaseRecords(LedgerCore):
    """Label purchases, their packages and the PDFs kept with them."""

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

    async def void(
        self,
        label_id: str,
        allowed_from: Collection[str],
        *,
        partly: str | None = None,
        lease: str | None = None,
    ) -> tuple[PurchaseRow, bool]:
        """The void's transaction: the label ``voided`` (its fulfilment released; the client's
        key stays bound to it, so a replay answers the voided label), its bought packages
        ``voided``, a write-back that never started cancelled, and the correction of one that
        did (running, done, or tried before — read from the label, which outlives its jobs)
        queued. With ``partly`` (some boxes could not be voided) the label goes to
        ``attention`` with that detail instead, still holding its fulfilment; the write-back is
        stopped and corrected all the same. (the row, whether a correction was queued).

        The label and its write-back jobs are locked before they are read: a job another
        replica claims meanwhile is seen running (and corrected), never cancelled unseen.
        Fenced on ``lease`` (the void's), when given."""
        to = "voided" if partly is None else "attention"

        async def void(tx: Connection) -> tuple[PurchaseRow, bool]:
            await self._fence(tx, lease)
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

    async def purchases_for_sales(self, account: str, sale_ids: Sequence[str]) -> list[PurchaseRow]:
        """Every purchase of these sales (for the poller)."""
        return [PurchaseRow(*row) for row in await self._of_sales("purchases", account, sale_ids)]

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
