"""Leases in the ledger, on both engines: one owner at a time, expiry on the database's clock,
renewal and release by the owner only; outbox jobs and automation events claimed with an owner
and an expiry, adopted once it passed, settled only by their current owner. Two ledgers on one
database are two replicas (two owners)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ratesvc.storage.leases import Claims, Lease
from ratesvc.storage.ledger import JobResult, LeaseLost, Ledger
from tests.ledger_sql import ledger_sql
from tests.test_ledger import event, purchase

TTL = 30.0
LATER = dt.datetime(2999, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def ledger_url(ledger_env: dict[str, str], tmp_path: Path) -> str:
    return ledger_env.get("RATESVC_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")


@pytest.fixture
async def pair(ledger_url: str) -> AsyncIterator[tuple[Ledger, Ledger]]:
    """Two replicas' ledgers on one database."""
    a, b = Ledger.from_url(ledger_url), Ledger.from_url(ledger_url)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def expire(url: str, table: str = "leases") -> None:
    """Every lease (or claim) in ``table`` expired, as if its holder had died long ago."""
    column = "expires_at" if table == "leases" else "lease_until"
    await ledger_sql(url, f"UPDATE {table} SET {column} = 0 WHERE {column} IS NOT NULL")


# --- the named lease -------------------------------------------------------------------------


async def test_a_lease_has_one_owner_until_it_expires(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    a, b = pair
    assert a.owner != b.owner

    assert await a.acquire_lease("purchase:lb_1", TTL)
    assert not await b.acquire_lease("purchase:lb_1", TTL)
    assert await a.acquire_lease("purchase:lb_1", TTL)  # ours: extended
    assert await b.acquire_lease("purchase:lb_2", TTL)  # another name is another lease
    owner, left = await b.lease("purchase:lb_1") or ("", 0.0)
    assert owner == a.owner and TTL - 5 < left <= TTL

    await expire(ledger_url)
    assert await b.acquire_lease("purchase:lb_1", TTL)
    assert not await a.acquire_lease("purchase:lb_1", TTL)
    assert (await a.lease("purchase:lb_1") or ("",))[0] == b.owner


async def test_a_short_lease_expires_on_the_database_clock(pair: tuple[Ledger, Ledger]) -> None:
    a, b = pair
    assert await a.acquire_lease("poller:acme", 0.3)
    assert not await b.acquire_lease("poller:acme", TTL)
    await asyncio.sleep(0.5)
    assert await b.acquire_lease("poller:acme", TTL)


async def test_only_the_owner_renews_or_releases(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    a, b = pair
    assert await a.acquire_lease("purchase:lb_1", TTL)

    assert not await b.renew_lease("purchase:lb_1", TTL)
    assert not await b.release_lease("purchase:lb_1")
    assert await a.renew_lease("purchase:lb_1", TTL)
    assert (await a.lease("purchase:lb_1") or ("",))[0] == a.owner

    await expire(ledger_url)
    assert await a.renew_lease("purchase:lb_1", TTL)  # expired but not taken: still a's
    assert await a.release_lease("purchase:lb_1")
    assert await a.lease("purchase:lb_1") is None
    assert await b.acquire_lease("purchase:lb_1", TTL)
    assert not await a.renew_lease("purchase:lb_1", TTL)  # b's now


async def test_replicas_racing_for_one_lease_one_wins(postgres_url: str) -> None:
    ledgers = [Ledger.from_url(postgres_url) for _ in range(4)]
    for ledger in ledgers:
        await ledger.open()
    try:
        for round_ in range(10):
            name = f"purchase:lb_{round_}"
            won = await asyncio.gather(*(ledger.acquire_lease(name, TTL) for ledger in ledgers))
            assert sum(won) == 1, won
            winner = ledgers[won.index(True)]
            assert (await winner.lease(name) or ("",))[0] == winner.owner
    finally:
        for ledger in ledgers:
            await ledger.close()


async def test_abandoning_at_start_takes_every_lease_only_with_one_process(
    pair: tuple[Ledger, Ledger],
) -> None:
    a, b = pair
    assert await a.acquire_lease("purchase:lb_1", TTL)
    assert await a.acquire_lease("poller:acme", TTL)

    abandoned = await b.abandon_leases("purchase:")

    if b.single_process:  # SQLite: the previous process is gone
        assert abandoned == 1 and await b.acquire_lease("purchase:lb_1", TTL)
    else:  # PostgreSQL: a's lease is a live replica's
        assert abandoned == 0 and not await b.acquire_lease("purchase:lb_1", TTL)
    assert not await b.acquire_lease("poller:acme", TTL)


async def test_expired_leases_are_listed_by_prefix_for_the_sweep_of_cut_off_work(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    """A void whose replica died leaves its ``void:`` lease to expire: the other replicas find
    it there (a live one, another prefix's, or one given back is not listed)."""
    a, b = pair
    for name in ("void:lb_1", "void:lb_2", "void:lb_3", "purchase:lb_1"):
        assert await a.acquire_lease(name, TTL)
    assert await b.expired_leases("void:") == []
    await expire(ledger_url)
    assert await a.acquire_lease("void:lb_2", TTL)  # renewed after all: live again
    assert await a.release_lease("void:lb_3")  # given back: nothing was cut off

    assert await b.expired_leases("void:") == ["void:lb_1"]
    assert await b.acquire_lease("void:lb_1", TTL)  # taken by the sweeper: no longer expired
    assert await b.expired_leases("void:") == []


async def test_a_fenced_write_is_refused_once_the_lease_changed_hands(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    a, b = pair
    await a.create_purchase(purchase("lb_1", key=None), [(1, None, "lb_1:1")])
    assert await a.acquire_lease("purchase:lb_1", TTL)
    await a.move_package("lb_1", 1, "unknown", {"pending"}, lease="purchase:lb_1", attempts=1)
    await expire(ledger_url)
    assert await b.acquire_lease("purchase:lb_1", TTL)  # adopted

    with pytest.raises(LeaseLost):
        await a.move_package("lb_1", 1, "pending", {"unknown"}, lease="purchase:lb_1")
    with pytest.raises(LeaseLost):
        await a.transition("lb_1", "failed", {"purchasing"}, lease="purchase:lb_1")
    with pytest.raises(LeaseLost):
        await a.set_detail("lb_1", "a's", lease="purchase:lb_1")

    (package,) = await b.packages("lb_1")
    row = await b.purchase("lb_1")
    assert package.state == "unknown" and row is not None and row.status == "purchasing"
    assert row.detail is None
    await b.move_package("lb_1", 1, "bought", {"unknown"}, lease="purchase:lb_1")


async def test_the_lease_helper_renews_and_stops_believing_when_taken(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    a, b = pair
    lease = Lease(a, "purchase:lb_1", ttl_s=0.6)
    assert await lease.acquire()
    try:
        await asyncio.sleep(1.0)  # past the TTL: renewed meanwhile
        assert lease.held and not await b.acquire_lease("purchase:lb_1", TTL)

        # b adopted it (as after an expiry a's renewals missed)
        await ledger_sql(ledger_url, "UPDATE leases SET owner = ?", (b.owner,))
        await asyncio.sleep(0.4)  # the next renewal finds it b's
        assert not lease.held
        with pytest.raises(LeaseLost):
            lease.check()
    finally:
        await lease.release()  # not ours: left alone
    assert (await b.lease("purchase:lb_1") or ("",))[0] == b.owner


# --- outbox jobs -----------------------------------------------------------------------------


async def queued(ledger: Ledger, label_id: str) -> None:
    await ledger.create_purchase(purchase(label_id, key=None), [(1, None, f"{label_id}:1")])
    await ledger.transition(label_id, "purchased", {"purchasing"}, enqueue="write_back")


async def test_a_running_job_is_not_taken_until_its_claim_expires(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    a, b = pair
    await queued(a, "lb_1")
    (job,) = await a.claim_jobs(ttl_s=TTL)

    await b.release_running_jobs()  # b starting up
    taken_by_b = await b.claim_jobs(ttl_s=TTL)

    if b.single_process:  # SQLite: one process by construction — released at its start
        assert [j.id for j in taken_by_b] == [job.id]
        return
    assert taken_by_b == []
    await expire(ledger_url, "outbox")
    (adopted,) = await b.claim_jobs(ttl_s=TTL)
    assert adopted.id == job.id and adopted.state == "running"
    rows = await ledger_sql(ledger_url, "SELECT owner FROM outbox WHERE id = ?", (job.id,))
    assert rows == [(b.owner,)]


async def test_a_late_settle_by_the_replica_that_lost_the_job_changes_nothing(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    a, b = pair
    await queued(a, "lb_1")
    (job,) = await a.claim_jobs(ttl_s=TTL)
    await expire(ledger_url, "outbox")
    (adopted,) = await b.claim_jobs(ttl_s=TTL)
    await b.transition("lb_1", "completed", {"purchased"}, job=JobResult(adopted.id, "done"),
                       fields={"write_back_state": "done"})  # fmt: skip

    with pytest.raises(LeaseLost):  # a's outcome arrives late: refused, label and all
        await a.transition("lb_1", "write_back_failed", {"purchased", "completed"},
                           job=JobResult(job.id, "pending", "late", LATER))  # fmt: skip
    with pytest.raises(LeaseLost):
        await a.settle_job(JobResult(job.id, "cancelled", "late"))

    (settled,) = await a.jobs("lb_1")
    row = await a.purchase("lb_1")
    assert (settled.state, settled.attempts, settled.last_error) == ("done", 1, None)
    assert row is not None and row.status == "completed"


async def test_renewing_jobs_keeps_only_our_own(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    a, b = pair
    for label_id in ("lb_1", "lb_2"):
        await queued(a, label_id)
    first, second = await a.claim_jobs(ttl_s=TTL)
    await ledger_sql(ledger_url, "UPDATE outbox SET lease_until = 0 WHERE id = ?", (second.id,))
    (adopted,) = await b.claim_jobs(ttl_s=TTL)

    assert adopted.id == second.id
    assert await a.renew_jobs([first.id, second.id], TTL) == {first.id}
    assert await b.renew_jobs([first.id, second.id], TTL) == {second.id}


async def test_one_job_of_a_sale_at_a_time_across_replicas(pair: tuple[Ledger, Ledger]) -> None:
    a, b = pair
    sale = dataclasses.replace(purchase("lb_1", key=None), sale_id="s1")
    await a.create_purchase(sale, [(1, None, "lb_1:1")])
    await a.transition("lb_1", "purchased", {"purchasing"}, enqueue="write_back")
    await a.void("lb_1", {"purchased"})  # nothing ran: the write-back is cancelled
    await a.transition("lb_1", "purchased", {"voided"}, enqueue="write_back")
    await a.transition("lb_1", "voided", {"purchased"}, enqueue="void_correction")

    (first,) = await a.claim_jobs(ttl_s=TTL)

    assert first.kind == "write_back"
    assert await b.claim_jobs(ttl_s=TTL) == []  # the correction waits for it


# --- automation events -----------------------------------------------------------------------


async def test_an_event_is_claimed_by_one_replica_and_adopted_after_expiry(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    a, b = pair
    await a.record_event(event("ev1", "d1"))

    first, second = await asyncio.gather(a.claim_events(ttl_s=TTL), b.claim_events(ttl_s=TTL))

    assert sorted([e.event_id for e in first + second]) == ["ev1"]
    holder, other = (a, b) if first else (b, a)
    assert await other.claim_events(ttl_s=TTL) == []
    assert await other.requeue_event("ev1", statuses=("received",), reason="r") is None
    await expire(ledger_url, "events")
    (adopted,) = await other.claim_events(ttl_s=TTL)
    assert adopted.event_id == "ev1"
    with pytest.raises(LeaseLost):
        await holder.set_event("ev1", claimed=True, status="processed")
    await other.set_event("ev1", claimed=True, status="processed")
    processed = await a.event("ev1")
    assert processed is not None and processed.status == "processed"
    assert await ledger_sql(ledger_url, "SELECT owner, lease_until FROM events") == [(None, None)]


async def test_a_sale_whose_event_is_claimed_waits(pair: tuple[Ledger, Ledger]) -> None:
    a, b = pair
    await a.record_event(event("ev1", "d1"))
    await a.record_event(event("ev2", "d2"))  # the same sale

    (claimed,) = await a.claim_events(ttl_s=TTL)

    assert claimed.event_id == "ev1"
    assert await b.claim_events(ttl_s=TTL) == []
    await a.set_event("ev1", claimed=True, status="processed")
    assert [e.event_id for e in await b.claim_events(ttl_s=TTL)] == ["ev2"]


async def test_claims_cancel_the_work_of_a_claim_another_owner_adopted(
    pair: tuple[Ledger, Ledger], ledger_url: str
) -> None:
    a, b = pair
    await a.record_event(event("ev1", "d1"))
    loop = asyncio.get_running_loop()
    sent = loop.time()
    (claimed,) = await a.claim_events(ttl_s=0.6)
    claims: Claims[str] = Claims("event", lambda ids: a.renew_events(ids, 0.6), ttl_s=0.6)
    work = asyncio.create_task(asyncio.sleep(30))
    claims.add(claimed.event_id, work, sent)
    try:
        await asyncio.sleep(0.9)  # renewed: still ours
        assert not work.done() and await b.claim_events(ttl_s=TTL) == []
        await expire(ledger_url, "events")
        assert [e.event_id for e in await b.claim_events(ttl_s=TTL)] == ["ev1"]
        await asyncio.wait([work], timeout=2)
        assert work.cancelled()
    finally:
        work.cancel()
        await claims.stop()


async def test_claims_stop_the_work_when_its_claim_runs_out_while_a_renewal_hangs() -> None:
    """Regression (review round 4, finding 1): a replica's renewal statement hangs — PostgreSQL
    stops answering it without refusing, or the pool is exhausted: up to the engine's 10 s
    acquire and command time-outs. Meanwhile the claim expires in the database and another
    replica adopts the job. Claims used to cancel a task only once a renewal round returned, so
    the holder went on working — writing to Cin7 Core — for seconds after its claim was gone.
    The task is stopped when its claim runs out on the holder's clock, renewal pending or not,
    and the hung renewal is given up with it."""
    renewing = asyncio.Event()
    renewal_given_up = asyncio.Event()

    async def hangs(ids: object) -> set[int]:
        renewing.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            renewal_given_up.set()
            raise
        return {1}

    claims: Claims[int] = Claims("job", hangs, ttl_s=0.6)
    loop = asyncio.get_running_loop()
    claimed_at = loop.time()
    work = asyncio.create_task(asyncio.sleep(30))
    claims.add(1, work, claimed_at)
    try:
        await asyncio.wait([work], timeout=3)
        stopped_after = loop.time() - claimed_at
        assert renewing.is_set() and work.cancelled(), "the work outlived its claim"
        assert 0.55 <= stopped_after < 0.9, f"stopped {stopped_after:.2f} s after the claim"
        await asyncio.wait_for(renewal_given_up.wait(), 1)
    finally:
        work.cancel()
        await claims.stop()


async def test_claims_keep_the_work_going_while_renewals_succeed() -> None:
    """The timer that stops work whose claim ran out is moved on by every renewal: work whose
    renewals succeed runs as long as it needs (here four claim lifetimes)."""
    renewed: list[float] = []

    async def renew(ids: object) -> set[int]:
        renewed.append(asyncio.get_running_loop().time())
        return {1}

    claims: Claims[int] = Claims("job", renew, ttl_s=0.3)
    work = asyncio.create_task(asyncio.sleep(1.2))
    claims.add(1, work, asyncio.get_running_loop().time())
    try:
        await asyncio.wait([work], timeout=3)
        assert work.done() and not work.cancelled() and len(renewed) >= 8, renewed
    finally:
        work.cancel()
        await claims.stop()


async def test_a_claim_survives_one_renewal_that_hangs_until_the_statement_timeout() -> None:
    """A renewal that fails after hanging (PostgreSQL's 10 s statement timeout, a third of the
    default 30 s TTL) was followed by a whole renewal period, so the next renewal went out as
    the claim ran out and the claim's timer stopped the task first: one 10 s stall of
    PostgreSQL cancelled every write-back in progress, mid Cin7 Core write, on every replica.
    Rounds keep their cadence and a failed one is retried a quarter period later. Scaled
    down: TTL 0.9 s, one renewal that fails after 0.3 s, then healthy ones."""
    ttl = 0.9
    renewals: list[float] = []
    loop = asyncio.get_running_loop()

    async def renew(keys: Any) -> set[int]:
        renewals.append(loop.time())
        if len(renewals) == 1:
            await asyncio.sleep(ttl / 3)  # the statement timeout
            raise TimeoutError
        return set(keys)

    claims: Claims[int] = Claims("job", renew, ttl_s=ttl)
    work = asyncio.create_task(asyncio.sleep(3 * ttl))
    claims.add(1, work, loop.time())
    try:
        await asyncio.gather(work, return_exceptions=True)
    finally:
        await claims.stop()

    assert not work.cancelled(), (
        f"cancelled after one slow failed renewal (renewals at "
        f"{[round(t - renewals[0], 2) for t in renewals]} s after the first)"
    )
