"""The ledger's write-back outbox, its backlog counts, and retention (what is forgotten when)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from ratesvc.storage.ledger_core import (
    _HEADS,
    _OUTBOX,
    MIN_PURGE_BATCH,
    PURGE_BATCH,
    LedgerCore,
    _marks,
    chunks,
)
from ratesvc.storage.records import (
    Backlog,
    JobResult,
    OutboxRow,
    Purged,
    format_stamp,
    now_text,
)
from ratesvc.storage.sql import Connection


class OutboxRecords(LedgerCore):
    """The write-back outbox (jobs claimed by one replica at a time) and retention."""

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
