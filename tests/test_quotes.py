"""Single-flight, the bounded leg cache and the quote store."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import pytest

from ratesvc.models import Address, RateRow, ShipmentIn
from ratesvc.quotes import (
    TOKEN_LENGTH,
    CachedLeg,
    LegCache,
    QuoteBatch,
    QuoteLine,
    QuoteStore,
    SingleFlight,
    quote_id,
)


class Upstream:
    """A call that counts how often it starts, finishes and is cancelled."""

    def __init__(self, result: str = "rates", error: Exception | None = None) -> None:
        self.started = 0
        self.finished = 0
        self.cancelled = 0
        self.release = asyncio.Event()
        self.result = result
        self.error = error

    async def __call__(self) -> str:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.error is not None:
            raise self.error
        return self.result


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_call() -> None:
    flights: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    waiters = [asyncio.create_task(flights.run("leg", upstream)) for _ in range(50)]
    await settle()

    upstream.release.set()
    results = await asyncio.gather(*waiters)

    assert results == ["rates"] * 50
    assert upstream.started == 1
    assert not flights.in_flight("leg")


async def test_a_waiter_that_leaves_does_not_cancel_the_call_for_the_others() -> None:
    flights: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    leaving = [asyncio.create_task(flights.run("leg", upstream)) for _ in range(3)]
    staying = asyncio.create_task(flights.run("leg", upstream))
    await settle()

    for task in leaving:
        task.cancel()
    await asyncio.gather(*leaving, return_exceptions=True)
    await settle()
    assert upstream.cancelled == 0
    upstream.release.set()

    assert await staying == "rates"
    assert (upstream.started, upstream.finished) == (1, 1)


async def test_a_waiter_that_times_out_leaves_the_call_running_for_the_rest() -> None:
    flights: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    patient = asyncio.create_task(flights.run("leg", upstream))

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await flights.run("leg", upstream)
    upstream.release.set()

    assert await patient == "rates"
    assert upstream.cancelled == 0


async def test_the_call_is_cancelled_when_its_last_waiter_leaves() -> None:
    flights: SingleFlight[str] = SingleFlight()
    upstream = Upstream()
    waiters = [asyncio.create_task(flights.run("leg", upstream)) for _ in range(2)]
    await settle()

    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await settle()

    assert upstream.cancelled == 1
    assert not flights.in_flight("leg")
    again = Upstream(result="fresh")
    again.release.set()
    assert await flights.run("leg", again) == "fresh"


async def test_a_failure_reaches_the_waiters_of_that_call_but_no_later_caller() -> None:
    flights: SingleFlight[str] = SingleFlight()
    failing = Upstream(error=RuntimeError("carrier down"))
    waiters = [asyncio.create_task(flights.run("leg", failing)) for _ in range(3)]
    await settle()
    failing.release.set()

    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    later = Upstream(result="recovered")
    later.release.set()

    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert failing.started == 1
    assert await flights.run("leg", later) == "recovered"
    assert later.started == 1


async def test_different_keys_fly_separately() -> None:
    flights: SingleFlight[str] = SingleFlight()
    a, b = Upstream("a"), Upstream("b")
    a.release.set()
    b.release.set()

    assert await asyncio.gather(flights.run("a", a), flights.run("b", b)) == ["a", "b"]


def entry(n: int) -> CachedLeg:
    row = RateRow(
        service_code="s", service_name="S", shipment_cost=Decimal(n), other_cost=Decimal(0)
    )
    return CachedLeg(rows=[row], quoted_at=dt.datetime.now(dt.UTC))


async def test_the_leg_cache_keeps_at_most_max_entries_evicting_the_oldest() -> None:
    cache = LegCache(backend="memory", max_entries=3, ttl_s=60)
    for n in range(5):
        await cache.put(f"k{n}", entry(n))

    assert [await cache.get(f"k{n}") is not None for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    got = await cache.get("k4")
    assert got is not None and got.rows[0].shipment_cost == 4
    await cache.close()


async def test_the_leg_cache_forgets_entries_after_their_ttl() -> None:
    cache = LegCache(backend="memory", max_entries=10, ttl_s=0.05)
    await cache.put("k", entry(1))

    assert await cache.get("k") is not None
    await asyncio.sleep(0.1)
    assert await cache.get("k") is None


def test_an_unknown_cache_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown quote cache backend"):
        LegCache(backend="memcached", max_entries=1, ttl_s=1)


def batch(token: str, expires_in: dt.timedelta) -> QuoteBatch:
    now = dt.datetime.now(dt.UTC)
    to = Address(postal_code="10001", country="US")
    line = QuoteLine(carrier_code="ups", service_code="ups_ground", service_name="UPS Ground",
                     package_codes=["package"], total="9.99", quoted_at=now)  # fmt: skip
    return QuoteBatch(
        token=token.ljust(TOKEN_LENGTH, "x"), account="default",
        shipment=ShipmentIn(ship_to=to, packages=[]), ship_from=to, currency="USD",
        expires_at=now + expires_in, lines=[line, line],
    )  # fmt: skip


def test_quotes_are_found_by_batch_token_and_index() -> None:
    store = QuoteStore()
    store.put(batch("b1", dt.timedelta(minutes=5)))
    token = "b1".ljust(TOKEN_LENGTH, "x")

    found = store.get(quote_id(token, 1))

    assert found is not None
    assert (found.quote_id, found.carrier_code, found.total) == (f"qt_{token}1", "ups", "9.99")
    assert store.get(quote_id(token, 2)) is None
    assert store.get(f"qt_{token}zz") is None
    assert store.get("qt_short") is None
    assert store.get("xx_" + token + "0") is None


def test_the_quote_store_is_bounded_and_keeps_expired_quotes_for_a_grace_period() -> None:
    store = QuoteStore(max_entries=2, grace=dt.timedelta(hours=1))
    store.put(batch("q1", dt.timedelta(minutes=5)))
    store.put(batch("q2", dt.timedelta(minutes=-30)))  # expired, within the grace period
    store.put(batch("q3", dt.timedelta(minutes=5)))

    assert store.get(quote_id("q1".ljust(TOKEN_LENGTH, "x"), 0)) is None  # over max_entries
    assert store.get(quote_id("q2".ljust(TOKEN_LENGTH, "x"), 0)) is not None
    assert store.get(quote_id("q3".ljust(TOKEN_LENGTH, "x"), 0)) is not None


def test_quotes_past_expiry_and_grace_are_forgotten_as_new_ones_arrive() -> None:
    store = QuoteStore(max_entries=100, grace=dt.timedelta(hours=1))
    store.put(batch("old", dt.timedelta(hours=-2)))

    store.put(batch("new", dt.timedelta(minutes=5)))

    assert store.get(quote_id("old".ljust(TOKEN_LENGTH, "x"), 0)) is None
    assert store.get(quote_id("new".ljust(TOKEN_LENGTH, "x"), 0)) is not None
