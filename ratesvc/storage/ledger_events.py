"""The ledger's automation events."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ratesvc.storage.ledger_core import _EVENT, LedgerCore, _marks, chunks
from ratesvc.storage.records import (
    OPEN_EVENT_STATUSES,
    EventRow,
    LeaseLost,
    now_text,
)
from ratesvc.storage.sql import Connection, RetryTransaction


class EventRecords(LedgerCore):
    """Automation events (Cin7 Core webhooks and what the poller found), claimed one at a time."""

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
