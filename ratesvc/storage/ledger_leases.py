"""The ledger's named leases (see :mod:`.leases` for what holds them and why)."""

from __future__ import annotations

import datetime as dt

from ratesvc.storage.ledger_core import LedgerCore


class LeaseRecords(LedgerCore):
    """Named leases (a purchase, a void, an account's poller) on the database's clock."""

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

    async def expired_leases(self, prefix: str, *, for_s: float = 0.0) -> list[str]:
        """The leases named ``prefix…`` whose holder let them expire (on the database's clock)
        at least ``for_s`` ago and nobody took since: work cut off by a replica that died or
        stopped (a graceful end gives its leases back)."""
        rows = await self._engine.fetch(
            f"SELECT name FROM leases WHERE substr(name, 1, ?) = ? AND expires_at < {self._now} "
            "- ? ORDER BY name",
            (len(prefix), prefix, float(for_s)),
        )
        return [str(row[0]) for row in rows]

    async def release_own_leases(self, prefix: str) -> int:
        """Give back every lease named ``prefix…`` this owner holds (at a graceful stop, after
        the work under them stopped)."""
        return await self._engine.execute(
            "DELETE FROM leases WHERE substr(name, 1, ?) = ? AND owner = ?",
            (len(prefix), prefix, self.owner),
        )
