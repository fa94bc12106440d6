"""Single-flight, the leg cache, the quote store and the answer replay, each within its bounds."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import os
import tracemalloc
from collections.abc import Callable
from decimal import Decimal

import msgspec
import pytest

from ratesvc.byte_lru import ByteLRU
from ratesvc.config import Markup, MarkupRule, load_settings
from ratesvc.models import Address, PackageIn, RateRow, ShipmentIn, Weight
from ratesvc.quotes import (
    MIB,
    TOKEN_LENGTH,
    CachedLeg,
    LegCache,
    QuoteBatch,
    QuoteLine,
    QuoteStore,
    SingleFlight,
    new_token,
    quote_id,
)
from ratesvc.replay import AnswerReplay, rating_fingerprint


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


def entry(n: int, services: int = 1) -> CachedLeg:
    rows = [
        RateRow(service_code=f"s{n}_{i}", service_name=f"Service {n} number {i}",
                shipment_cost=Decimal(n) + Decimal(i) / 100, other_cost=Decimal("0.25"))
        for i in range(services)
    ]  # fmt: skip
    return CachedLeg(rows=rows, quoted_at=dt.datetime.now(dt.UTC))


async def test_the_leg_cache_keeps_at_most_max_entries_evicting_the_oldest() -> None:
    cache = LegCache(backend="memory", max_entries=3, max_bytes=MIB, ttl_s=60)
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


async def test_the_leg_cache_stays_within_its_byte_budget_keeping_the_newest() -> None:
    cache = LegCache(backend="memory", max_entries=1_000_000, max_bytes=MIB, ttl_s=60)
    over = []
    for n in range(3_000):
        await cache.put(f"leg-{n}", entry(n, services=5))
        over.append(cache.held_bytes > MIB)

    assert not any(over)
    found = [await cache.get(f"leg-{n}") is not None for n in range(3_000)]
    kept = found.index(True)
    assert 100 < kept < 3_000 - 100  # many entries were dropped and many kept...
    assert all(found[kept:])  # ...the newest ones, without a gap
    await cache.close()
    assert cache.held_bytes == 0


async def test_the_leg_cache_forgets_entries_after_their_ttl() -> None:
    cache = LegCache(backend="memory", max_entries=10, max_bytes=MIB, ttl_s=0.05)
    await cache.put("k", entry(1))
    one = cache.held_bytes

    assert await cache.get("k") is not None
    await asyncio.sleep(0.1)
    assert await cache.get_many(["k"]) == [None]
    await cache.put("j", entry(2))  # the expired entry is dropped as a new one arrives
    assert cache.held_bytes == one


def test_an_unknown_cache_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown quote cache backend"):
        LegCache(backend="memcached", max_entries=1, max_bytes=MIB, ttl_s=1)


def test_a_byte_lru_drops_the_oldest_but_never_the_entry_just_put() -> None:
    lru: ByteLRU[str, str] = ByteLRU(max_bytes=100)
    lru.put("a", "A", 40)
    lru.put("b", "B", 40)
    lru.touch("a")  # "b" is now the oldest

    lru.put("c", "C", 40)
    assert (lru.get("a"), lru.get("b"), lru.get("c"), lru.bytes) == ("A", None, "C", 80)

    lru.put("huge", "H", 500)
    assert (len(lru), lru.get("huge"), lru.bytes) == (1, "H", 500)
    lru.put("huge", "H2", 10)  # replacing an entry counts it once
    assert (len(lru), lru.bytes) == (1, 10)


def batch(token: str, expires_in: dt.timedelta, lines: int = 2) -> QuoteBatch:
    now = dt.datetime.now(dt.UTC)
    to = Address(postal_code="10001", country="US")
    rows = [
        QuoteLine(carrier_code="ups", service_code=f"ups_{token}_{i}",
                  service_name=f"UPS Service {i} for {token}", package_codes=["package"],
                  total=f"{i}.99", quoted_at=now)
        for i in range(lines)
    ]  # fmt: skip
    return QuoteBatch(
        token=token.ljust(TOKEN_LENGTH, "x"), account="default",
        shipment=ShipmentIn(ship_to=to, packages=[
            PackageIn(weight=Weight(value=len(token), unit="lb"))
        ]),
        ship_from=to, currency="USD", expires_at=now + expires_in, lines=rows,
    )  # fmt: skip


def first_quote(token: str) -> str:
    return quote_id(token.ljust(TOKEN_LENGTH, "x"), 0)


def test_quotes_are_found_by_batch_token_and_index() -> None:
    store = QuoteStore()
    store.keep(batch("b1", dt.timedelta(minutes=5)))
    token = "b1".ljust(TOKEN_LENGTH, "x")

    found = store.find(quote_id(token, 1))

    assert found is not None
    assert (found.quote_id, found.carrier_code, found.total) == (f"qt_{token}1", "ups", "1.99")
    assert store.find(quote_id(token, 2)) is None
    assert store.find(f"qt_{token}zz") is None
    assert store.find("qt_short") is None
    assert store.find("xx_" + token + "0") is None


def test_the_quote_store_stays_within_its_byte_budget_keeping_the_newest() -> None:
    store = QuoteStore(max_bytes=MIB)
    over = []
    for n in range(5_000):
        store.keep(batch(f"q{n}", dt.timedelta(minutes=15), lines=10))
        over.append(store.held_bytes > MIB)

    assert not any(over)
    found = [store.find(first_quote(f"q{n}")) is not None for n in range(5_000)]
    kept = found.index(True)
    assert 100 < kept < 5_000 - 100  # many answers were forgotten and many kept...
    assert all(found[kept:])  # ...the most recent ones, without a gap
    assert len(store) == 5_000 - kept


def test_expired_quotes_are_kept_for_a_grace_period_then_dropped() -> None:
    store = QuoteStore(grace=dt.timedelta(hours=1))
    store.keep(batch("gone", dt.timedelta(hours=-2)))  # past expiry and grace
    store.keep(batch("grace", dt.timedelta(minutes=-30)))  # expired, within the grace period

    store.keep(batch("new", dt.timedelta(minutes=5)))

    assert store.find(first_quote("gone")) is None
    assert store.find(first_quote("grace")) is not None  # answered 410, not 404
    assert store.find(first_quote("new")) is not None
    assert len(store) == 2


def traced_growth(fill: Callable[[], object]) -> tuple[int, object]:
    """Bytes still allocated after ``fill()``, with what it returned kept alive."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, kept
    finally:
        tracemalloc.stop()


def test_the_byte_estimate_follows_the_memory_really_held() -> None:
    encoded = [
        msgspec.msgpack.encode(batch(new_token(), dt.timedelta(minutes=15), lines=1 + n % 30))
        for n in range(2_000)
    ]

    def fill() -> QuoteStore:
        store = QuoteStore(max_bytes=1 << 40)
        for raw in encoded:  # decoded: every string and date its own object, nothing shared
            store.keep(msgspec.msgpack.decode(raw, type=QuoteBatch))
        return store

    held, store = traced_growth(fill)

    assert isinstance(store, QuoteStore)
    assert 0.8 <= store.held_bytes / held <= 1.25, (store.held_bytes, held)


async def test_the_answer_replay_stays_within_its_byte_budget() -> None:
    store = QuoteStore()
    replay = AnswerReplay(store, max_bytes=MIB)
    fresh = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    for n in range(2_000):
        kept = batch(f"r{n}", dt.timedelta(minutes=15))
        answer = b'{"quotes": "' + kept.token.encode() + b'"}' + b" " * 2_000
        await replay.keep("default", f"body {n}".encode(), answer, kept, fresh_until=fresh,
                    catalog_version=1)  # fmt: skip
        assert replay.held_bytes <= MIB

    assert await replay.replay("default", b"body 0", 1) is None
    again = await replay.replay("default", b"body 1999", 1)
    assert again is not None and b"r1999" not in again  # a new token in the quote ids


def test_the_rating_fingerprint_names_what_an_answer_depends_on() -> None:
    """Replicas key the answers they replay by it (through Redis, across restarts): a
    configuration change it missed would replay answers made on the old one."""
    account = load_settings({
        "RATESVC_API_TOKEN": "token-0123456789abcdef",
        "RATESVC_SHIPSTATION_API_KEY": "ss-key-value",
        "RATESVC_SHIPSTATION_API_SECRET": "ss-secret-value",
    }).accounts["default"]  # fmt: skip
    other_key = msgspec.structs.replace(
        account.shipstation, api_secret=type(account.shipstation.api_secret)("another")
    )
    here = Address(name="W", street1="1 Main", city="Austin", state="TX", postal_code="78703",
                   country="US")  # fmt: skip
    changed = [
        msgspec.structs.replace(account, markup=Markup(default=MarkupRule(percent=Decimal(10)))),
        msgspec.structs.replace(account, ship_from=here),
        msgspec.structs.replace(account, carriers=("ups",)),
        msgspec.structs.replace(account, shipstation=other_key),
        msgspec.structs.replace(account, quote_ttl_s=60.0),
    ]

    fingerprints = {rating_fingerprint(a) for a in [account, *changed]}

    assert len(fingerprints) == 1 + len(changed)
    assert rating_fingerprint(account) == rating_fingerprint(msgspec.structs.replace(account))
    assert rating_fingerprint(msgspec.structs.replace(account, request_deadline_s=3.0)) == (
        rating_fingerprint(account)
    )  # what does not change an answer does not change it


def test_tokens_are_drawn_in_blocks_yet_never_repeat_in_a_forked_worker() -> None:
    """Quote tokens come from a pool drawn 256 at a time; ``serve --workers`` forks after the
    service has handed some out. A child inheriting the parent's pool would hand out the very
    tokens the parent is about to (two workers, one quote id, two different quotes)."""
    first = new_token()  # the pool is filled now, before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next tokens, to the parent
        os.close(read)
        os.write(write, "".join(new_token() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(new_token() for _ in range(8))
    assert len(first) == TOKEN_LENGTH and len(child) == 8 * TOKEN_LENGTH
    assert child != parent
    assert not {child[i : i + TOKEN_LENGTH] for i in range(0, len(child), TOKEN_LENGTH)} & {
        parent[i : i + TOKEN_LENGTH] for i in range(0, len(parent), TOKEN_LENGTH)
    }
