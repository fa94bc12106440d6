"""Quotes shared by replicas through Redis (a real one): legs, in-flight calls, quotes, replays and
carrier catalogues, and what happens while Redis is away.

A *replica* here is a whole app (``create_app``) whose rating state is built on Redis, as the
integrator wires it from ``RATESVC_REDIS_URL``; two of them share one key prefix and one
ShipStation sandbox, which counts the calls it gets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from ratesvc import app as app_module
from ratesvc import keys
from ratesvc.accounts import build_accounts
from ratesvc.app import create_app
from ratesvc.catalog import CarrierCatalog
from ratesvc.config import load_settings
from ratesvc.errors import UpstreamUnavailable
from ratesvc.metrics import Metrics
from ratesvc.models import RateRow
from ratesvc.quotes import CachedLeg, QuoteStore
from ratesvc.rating import Rater
from ratesvc.sandbox.knobs import Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.storage.redis_catalog import RedisCatalogSharing
from ratesvc.storage.redis_client import open_redis
from ratesvc.storage.redis_flights import RedisFlights
from ratesvc.storage.redis_health import RedisHealth
from ratesvc.storage.redis_legs import MsgspecSerializer, NearCache, RedisLegCache
from ratesvc.storage.redis_quotes import RedisQuoteStore
from ratesvc.storage.shared_quotes import RatingState, build_rating_state
from tests.conftest import ACME_AUTH, AUTH, acme_settings, service_env
from tests.test_quotes import batch, first_quote

STATE = web.AppKey("shared_rating_state", RatingState)
TO = {"name": "A. Customer", "street1": "350 5th Ave", "city": "New York", "state": "NY",
      "postal_code": "10118", "country": "US"}  # fmt: skip
PARCEL = {"weight": {"value": 3, "unit": "lb"},
          "dimensions": {"length": 10, "width": 8, "height": 4, "unit": "in"}}  # fmt: skip


def shipment(postal_code: str = "10118", **extra: Any) -> dict[str, Any]:
    return {"shipment": {"ship_to": {**TO, "postal_code": postal_code}, "packages": [PARCEL]},
            **extra}  # fmt: skip


async def rate(
    client: TestClient, body: dict[str, Any], headers: dict[str, str] = AUTH
) -> dict[str, Any]:
    response = await client.post("/v1/rates", json=body, headers=headers)
    payload: dict[str, Any] = await response.json()
    assert response.status == 200, payload
    return payload


def getrates_calls(sandbox: ShipStationSandbox) -> dict[str, int]:
    return {k.split(":")[1]: v for k, v in sandbox.carrier_calls.items()
            if k.startswith("getrates")}  # fmt: skip


def token_of(quote_id: str) -> str:
    return quote_id[3:25]


async def until(check: Callable[[], Awaitable[bool] | bool], seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        outcome = check()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


def shared(app: web.Application, redis_url: str, prefix: str) -> web.Application:
    """``app`` with its rating state on Redis, wired as the integrator does it."""

    async def rating(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        client = open_redis(redis_url)  # the process's client, as the app opens it
        state = build_rating_state(client, prefix, settings)
        app[keys.RATER] = Rater(cache=state.cache, store=state.store,
                                shared_flights=state.flights,
                                max_stale_s=settings.quote_max_stale_s)  # fmt: skip
        app[keys.REPLAY] = state.replay
        app[STATE] = state
        state.share_catalogs(app[keys.ACCOUNTS].values())
        try:
            yield
        finally:
            await state.close()
            await client.aclose()

    contexts = app.cleanup_ctx
    contexts[contexts.index(app_module._rating)] = rating
    return app


MakeReplicas = Callable[[str, str], Awaitable[tuple[TestClient, TestClient]]]


@pytest.fixture
def make_replicas(aiohttp_client: Any, sandbox_url: str, tmp_path: Path) -> MakeReplicas:
    async def make(redis_url: str, prefix: str) -> tuple[TestClient, TestClient]:
        made = []
        for name in ("a", "b"):
            settings = load_settings(service_env(sandbox_url, tmp_path / name))
            made.append(await aiohttp_client(shared(create_app(settings), redis_url, prefix)))
        return made[0], made[1]

    return make


@pytest.fixture
async def replicas(
    make_replicas: MakeReplicas, redis_prefix: tuple[str, str]
) -> tuple[TestClient, TestClient]:
    return await make_replicas(*redis_prefix)


# --- across replicas ------------------------------------------------------------------------------


async def test_identical_cold_quotes_on_two_replicas_make_one_call_per_leg(
    replicas: tuple[TestClient, TestClient], sandbox: ShipStationSandbox
) -> None:
    a, b = replicas
    warm = shipment("10001", carriers=["fedex"])
    await asyncio.gather(rate(a, warm), rate(b, warm))  # the first requests: both wait for it
    assert sandbox.calls["/carriers"] == 1  # the catalogue: loaded once for both
    sandbox.knobs.latency = Latency(base_ms=200)  # every request finds the legs flying
    before = getrates_calls(sandbox)

    answers = await asyncio.gather(*(rate((a, b)[n % 2], shipment()) for n in range(20)))

    carriers = await (await b.get("/v1/carriers", headers=AUTH)).json()
    codes = {c["carrier_code"] for c in carriers["carriers"]}
    assert len(codes) >= 3
    calls = {k: v - before.get(k, 0) for k, v in getrates_calls(sandbox).items()}
    assert calls == dict.fromkeys(codes, 1)
    assert sandbox.calls["/carriers"] == 1
    prices = [[(q["service_code"], q["total"]) for q in answer["quotes"]] for answer in answers]
    assert all(p == prices[0] for p in prices) and prices[0]
    assert len({q["quote_id"] for answer in answers for q in answer["quotes"]}) == sum(
        len(answer["quotes"]) for answer in answers
    )  # every answer its own quote ids


async def test_a_failed_leg_is_one_call_and_the_failure_reaches_both_replicas(
    replicas: tuple[TestClient, TestClient], sandbox: ShipStationSandbox
) -> None:
    a, b = replicas
    for client in (a, b):  # both know the carriers already
        await rate(client, shipment("10001", carriers=["fedex"]))
    sandbox.knobs.error_rate["ups"] = 1.0
    sandbox.knobs.carrier_latency["ups"] = Latency(base_ms=300)  # every request finds it flying
    body = shipment(carriers=["ups", "fedex"])

    answers = await asyncio.gather(*(rate((a, b)[n % 2], body) for n in range(10)))

    assert getrates_calls(sandbox) == {"ups": 1, "fedex": 2}  # fedex: 10001, then this one
    for answer in answers:
        assert [e["carrier_code"] for e in answer["errors"]] == ["ups"]
        assert {q["carrier_code"] for q in answer["quotes"]} == {"fedex"}


async def test_a_quote_made_on_one_replica_is_read_and_bought_on_the_other(
    replicas: tuple[TestClient, TestClient], sandbox: ShipStationSandbox
) -> None:
    a, b = replicas
    quote = (await rate(a, shipment(carriers=["fedex"])))["quotes"][0]

    read = await b.get(f"/v1/quotes/{quote['quote_id']}", headers=AUTH)
    stored = await read.json()
    bought = await b.post("/v1/labels", json={"quote_id": quote["quote_id"]}, headers=AUTH)
    label = await bought.json()

    assert read.status == 200, stored
    assert (stored["service_code"], stored["total"]) == (quote["service_code"], quote["total"])
    assert stored["shipment"]["ship_to"]["postal_code"] == "10118"
    assert bought.status == 201, label
    assert (label["carrier_code"], label["service_code"]) == ("fedex", quote["service_code"])
    assert label["total_cost"] == quote["total"]
    assert sandbox.calls["/shipments/createlabel"] == 1
    unknown = await b.get(f"/v1/quotes/qt_{'x' * 22}0", headers=AUTH)
    assert unknown.status == 404


async def test_an_answer_kept_on_one_replica_is_replayed_on_the_other(
    replicas: tuple[TestClient, TestClient], redis_prefix: tuple[str, str]
) -> None:
    a, b = replicas
    body = shipment(carriers=["fedex", "ups"])
    await rate(a, body)  # cold: not replayable
    kept = await (await a.post("/v1/rates", json=body, headers=AUTH)).read()  # cached: kept

    replayed = await (await b.post("/v1/rates", json=body, headers=AUTH)).read()

    ids_kept = [q["quote_id"] for q in msgspec.json.decode(kept)["quotes"]]
    ids_replayed = [q["quote_id"] for q in msgspec.json.decode(replayed)["quotes"]]
    old, new = token_of(ids_kept[0]), token_of(ids_replayed[0])
    assert old != new
    assert replayed == kept.replace(old.encode(), new.encode())  # the same answer, byte for byte
    url, prefix = redis_prefix
    async with aioredis.Redis.from_url(url) as redis:
        assert await redis.get(f"{prefix}quote:v1:{new}") == b"@" + old.encode()  # a replay's copy
    quote = await b.get(f"/v1/quotes/{ids_replayed[1]}", headers=AUTH)
    assert quote.status == 200
    assert (await quote.json())["quote_id"] == ids_replayed[1]


async def test_an_answer_kept_before_a_markup_change_is_not_replayed_on_the_new_markup(
    aiohttp_client: Any, sandbox_url: str, tmp_path: Path, redis_prefix: tuple[str, str]
) -> None:
    """Kept answers outlive a restart in Redis (for the quote TTL, 15 min by default). An
    operator raising the markup (labels were sold at a loss) and restarting every replica must
    get the new totals at once: keyed by (account, body) alone, the new release replayed the
    old release's answers and their quotes were bought at the old price."""
    url, prefix = redis_prefix
    before = load_settings(service_env(sandbox_url, tmp_path / "old"))
    old = await aiohttp_client(shared(create_app(before), url, prefix))
    body = shipment(carriers=["ups"])
    await rate(old, body)  # cold
    kept = await rate(old, body)  # every leg cached: kept for replay, in Redis
    assert {q["markup"] for q in kept["quotes"]} == {"0.00"}

    after = load_settings(service_env(sandbox_url, tmp_path / "new", RATESVC_MARKUP_PERCENT="10"))
    new = await aiohttp_client(shared(create_app(after), url, prefix))  # the new release
    answer = await rate(new, body)
    again = await rate(new, body)  # kept anew, on the new markup: replayed as it is

    assert all(q["markup"] != "0.00" for q in answer["quotes"]), [
        (q["service_code"], q["markup"], q["total"]) for q in answer["quotes"]
    ]
    assert [q["total"] for q in again["quotes"]] == [q["total"] for q in answer["quotes"]]
    assert [q["total"] for q in (await rate(old, body))["quotes"]] == [
        q["total"] for q in kept["quotes"]
    ]  # an old replica still running (a rolling deploy) keeps its own


async def test_replays_answered_ahead_hand_out_quotes_every_replica_can_read(
    replicas: tuple[TestClient, TestClient],
) -> None:
    a, b = replicas
    body = shipment(carriers=["ups"])
    await rate(a, body)
    kept = await rate(a, body)

    replayed = [await rate(a, body) for _ in range(30)]  # copies stored ahead, blocks growing

    ids = [answer["quotes"][0]["quote_id"] for answer in replayed]
    assert len(set(ids)) == 30 and kept["quotes"][0]["quote_id"] not in ids
    assert all(answer["quotes"][0]["expires_at"] == kept["quotes"][0]["expires_at"]
               for answer in replayed)  # fmt: skip
    for quote_id in ids:
        read = await b.get(f"/v1/quotes/{quote_id}", headers=AUTH)
        assert read.status == 200
        assert (await read.json())["total"] == kept["quotes"][0]["total"]


async def test_the_carrier_catalogue_is_loaded_and_refreshed_once_across_replicas(
    sandbox: ShipStationSandbox, sandbox_url: str, tmp_path: Path, redis_prefix: tuple[str, str]
) -> None:
    url, prefix = redis_prefix
    settings = load_settings(service_env(sandbox_url, tmp_path))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session, aioredis.Redis.from_url(url) as redis:
        sharing = RedisCatalogSharing(redis, prefix=prefix, health=RedisHealth())
        catalogs = []
        for _ in range(2):  # each replica its own client, limiter and catalogue
            client = build_accounts(settings, session, Metrics())["default"].shipstation
            catalog = CarrierCatalog(client, account="default", ttl_s=1.0)
            catalog.share(sharing, sync_s=0.05)
            catalogs.append(catalog)
        try:
            deadline = loop.time() + 10
            first = await asyncio.gather(*(c.get(deadline=deadline) for c in catalogs * 5))
            version = catalogs[0].version

            assert sandbox.calls["/carriers"] == 1
            assert all(copy == first[0] for copy in first)
            assert version > 0 and catalogs[1].version == version

            await asyncio.sleep(1.1)  # the copy is due for a refresh
            await asyncio.gather(*(c.get(deadline=loop.time() + 10) for c in catalogs * 5))

            async def refreshed_everywhere() -> bool:
                versions = {await c.current_version() for c in catalogs}
                return len(versions) == 1 and versions != {version}

            await until(refreshed_everywhere, seconds=0.8)
            assert sandbox.calls["/carriers"] == 2
        finally:
            for catalog in catalogs:
                await catalog.close()


async def test_legs_are_keyed_in_redis_by_the_long_name_of_the_shipstation_account(
    replicas: tuple[TestClient, TestClient], redis_prefix: tuple[str, str]
) -> None:
    """One Redis serves every organisation an integrator hosts: a leg keyed by the short
    ``key_id()`` (32 bits) would be read by another organisation whose key id collides, quoting
    it negotiated rates that are not its own. Legs are keyed by ``cache_id()`` (128 bits)."""
    a, _ = replicas
    await rate(a, shipment(carriers=["ups"]))
    url, prefix = redis_prefix
    cache_id = a.server.app[keys.SETTINGS].accounts["default"].shipstation.cache_id()

    async with aioredis.Redis.from_url(url) as redis:
        found = [k.decode() async for k in redis.scan_iter(match=f"{prefix}leg:v1:*")]

    assert found and all(k.startswith(f"{prefix}leg:v1:{cache_id}|ups|") for k in found), found


async def test_a_carrier_removed_from_an_accounts_allow_list_is_not_quoted_after_a_restart(
    aiohttp_client: Any, sandbox_url: str, tmp_path: Path, redis_prefix: tuple[str, str]
) -> None:
    """The shared catalogue lives 7 days in Redis and is refreshed every ``carriers_ttl_s``
    (6 h). An operator removing a carrier from ``[accounts.acme] carriers`` (or pointing the
    account at another ShipStation account) and restarting every replica must not be quoted
    the removed carrier: keyed by the account's name alone, the new configuration adopted the
    catalogue the old one published, and its quotes (buyable) for up to 6 hours."""
    url, prefix = redis_prefix
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    before = acme_settings(tmp_path / "before", sandbox_url, 'carriers = ["ups", "fedex"]\n')
    old = await aiohttp_client(shared(create_app(before), url, prefix))
    quoted = await rate(old, shipment(), ACME_AUTH)
    assert {q["carrier_code"] for q in quoted["quotes"]} == {"ups", "fedex"}

    after = acme_settings(tmp_path / "after", sandbox_url, 'carriers = ["fedex"]\n')
    new = await aiohttp_client(shared(create_app(after), url, prefix))  # restarted, new config
    answer = await rate(new, shipment("10001"), ACME_AUTH)

    assert {q["carrier_code"] for q in answer["quotes"]} == {"fedex"}


# --- foreign or damaged values in Redis -----------------------------------------------------------


async def test_a_leg_entry_with_a_timestamp_without_a_zone_in_redis_is_a_miss(
    replicas: tuple[TestClient, TestClient], redis_prefix: tuple[str, str]
) -> None:
    """A leg whose ``quoted_at`` has no zone (a tool, or a release forgetting to bump ``v1``,
    writing under the prefix) must fail decoding like any foreign entry: taken as a datetime,
    rating subtracts it from an aware ``now`` (``TypeError``) and ``POST /v1/rates`` answers
    500 for every request needing that leg until the entry expires (24 h)."""
    a, b = replicas
    body = shipment(carriers=["ups"])
    await rate(a, body)  # cold: the leg is in Redis
    url, prefix = redis_prefix
    foreign = msgspec.msgpack.encode({"rows": [], "quoted_at": "2026-01-01T00:00:00"})
    async with aioredis.Redis.from_url(url) as redis:
        found = [k async for k in redis.scan_iter(match=f"{prefix}leg:v1:*")]
        assert found
        for key in found:
            await redis.set(key, foreign, px=60_000)

    response = await b.post("/v1/rates", json=body, headers=AUTH)  # b: nothing near-cached

    assert response.status == 200, await response.text()
    assert not (await response.json())["quotes"][0]["cached"]  # a miss: asked again


async def test_a_quote_batch_with_an_expiry_without_a_zone_in_redis_is_an_unknown_quote(
    replicas: tuple[TestClient, TestClient], redis_prefix: tuple[str, str]
) -> None:
    """A stored batch whose ``expires_at`` has no zone must be unknown (404): decoded, the
    expiry check compares it with an aware ``now`` and ``GET /v1/quotes/{id}`` answers 500."""
    a, b = replicas
    quote_id = (await rate(a, shipment(carriers=["ups"])))["quotes"][0]["quote_id"]
    url, prefix = redis_prefix
    async with aioredis.Redis.from_url(url) as redis:
        key = f"{prefix}quote:v1:{token_of(quote_id)}"
        batch = msgspec.msgpack.decode(await redis.get(key))
        batch["expires_at"] = "2999-01-01T00:00:00"
        await redis.set(key, msgspec.msgpack.encode(batch), px=60_000)

    read = await b.get(f"/v1/quotes/{quote_id}", headers=AUTH)

    assert read.status == 404, await read.text()


async def test_an_undecodable_quote_reference_in_redis_is_an_unknown_quote(
    replicas: tuple[TestClient, TestClient], redis_prefix: tuple[str, str]
) -> None:
    """A replayed copy is stored as ``@<token>``; a damaged reference (not a token: here not
    even UTF-8) must name no batch. Decoded unguarded, it raised ``UnicodeDecodeError`` and
    ``GET /v1/quotes/{id}`` and ``POST /v1/labels`` answered 500 instead of 404."""
    _, b = replicas
    url, prefix = redis_prefix
    token = "A" * 22
    async with aioredis.Redis.from_url(url) as redis:
        await redis.set(f"{prefix}quote:v1:{token}", b"@\xff\xfe damaged", px=60_000)

    read = await b.get(f"/v1/quotes/qt_{token}0", headers=AUTH)
    bought = await b.post("/v1/labels", json={"quote_id": f"qt_{token}0"}, headers=AUTH)

    assert (read.status, bought.status) == (404, 404), (await read.text(), await bought.text())


# --- the parts ------------------------------------------------------------------------------------


def leg(cost: str = "8.250", *, age_s: float = 0.0) -> CachedLeg:
    quoted_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)
    return CachedLeg(
        rows=[RateRow(service_code="ups_ground", service_name="UPS® Ground",
                      shipment_cost=Decimal(cost), other_cost=Decimal("0.00"))],
        quoted_at=quoted_at,
    )  # fmt: skip


def test_the_msgspec_serializer_round_trips_a_cached_leg_exactly() -> None:
    serializer = MsgspecSerializer(CachedLeg)
    original = leg("8.250")

    back = serializer.loads(serializer.dumps(original))

    assert back == original
    assert str(back.rows[0].shipment_cost) == "8.250"  # the exponent kept, not just the value
    assert str(back.rows[0].other_cost) == "0.00"
    assert back.quoted_at == original.quoted_at and back.quoted_at.tzinfo is not None
    assert back.rows[0].service_name == "UPS® Ground"
    assert serializer.loads(None) is None
    assert serializer.loads(b"\xc1 not msgpack") is None  # unreadable: a miss, not an error


def test_the_near_cache_is_bounded_by_entries_and_by_bytes() -> None:
    now = time.monotonic()
    far = now + 3600
    by_entries = NearCache(max_entries=3, max_bytes=1 << 20, ttl_s=60)
    for n in range(5):
        by_entries.put(f"k{n}", leg(f"{n}.00"), until=far)
    by_bytes = NearCache(max_entries=10_000, max_bytes=20_000, ttl_s=60)
    over = []
    for n in range(500):
        by_bytes.put(f"k{n}", leg(f"{n}.00"), until=far)
        over.append(by_bytes.held_bytes > 20_000)

    assert [by_entries.get(f"k{n}", now) is not None for n in range(5)] == [False, False] + [
        True
    ] * 3
    assert not any(over)
    assert 10 < len(by_bytes) < 500
    assert by_bytes.get("k499", now) is not None and by_bytes.get("k0", now) is None


async def test_legs_are_shared_through_redis_and_near_cached_no_longer_than_they_live(
    redis_prefix: tuple[str, str],
) -> None:
    url, prefix = redis_prefix
    async with aioredis.Redis.from_url(url) as redis:
        ttl = 60.0
        one = RedisLegCache(redis, prefix=prefix, ttl_s=ttl, health=RedisHealth(), near_ttl_s=0.2)
        other = RedisLegCache(redis, prefix=prefix, ttl_s=ttl, health=RedisHealth(),
                              near_ttl_s=0.2)  # fmt: skip
        fresh, old = leg("1.00"), leg("2.00", age_s=ttl - 0.05)  # old: 50 ms of life left

        await one.put("fresh", fresh)
        await one.put("old", old)
        assert 0 < await redis.pttl(one.key("fresh")) <= ttl * 1000
        assert await other.get_many(["fresh", "missing"]) == [fresh, None]  # via Redis
        await redis.delete(one.key("fresh"))
        assert await other.get("fresh") == fresh  # from its near-cache: no round trip

        await asyncio.sleep(0.1)  # past the old leg's life, within the near-cache's ttl
        assert one.near.get("old", time.monotonic()) is None
        assert one.near.get("fresh", time.monotonic()) == fresh
        await asyncio.sleep(0.15)  # past the near-cache's ttl
        assert await other.get("fresh") is None  # gone from Redis, and no longer near


async def test_a_leg_lock_whose_holder_died_is_taken_over_after_its_lease(
    redis_prefix: tuple[str, str],
) -> None:
    url, prefix = redis_prefix
    loop = asyncio.get_running_loop()
    async with aioredis.Redis.from_url(url) as redis:
        health = RedisHealth()
        cache = RedisLegCache(redis, prefix=prefix, ttl_s=60, health=health)
        flights = RedisFlights(redis, cache=cache, health=health, lease_s=0.3)
        await redis.set(flights.lock_key("leg"), "a-replica-that-died", px=300)
        calls = 0

        async def call() -> CachedLeg:
            nonlocal calls
            calls += 1
            entry = leg()
            await cache.put("leg", entry)
            return entry

        started = loop.time()
        got = await flights.run("leg", call, known=None, deadline=loop.time() + 5)
        waited = loop.time() - started
        await flights.close()

        assert calls == 1 and got == await cache.get("leg")
        assert 0.25 <= waited < 2.0, waited
        assert await redis.exists(flights.lock_key("leg")) == 0  # released after the call


async def test_a_leg_lock_holding_undecodable_bytes_is_waited_out_and_taken_over(
    redis_prefix: tuple[str, str],
) -> None:
    """A lock's value names its holder's outcome record. A value that is not UTF-8 (foreign or
    damaged) was decoded unguarded: ``UnicodeDecodeError`` out of rating, a 500 for every quote
    needing the leg while the lock lived. It is a holder like any other: waited for until its
    lease ends, then taken over."""
    url, prefix = redis_prefix
    loop = asyncio.get_running_loop()
    async with aioredis.Redis.from_url(url) as redis:
        health = RedisHealth()
        cache = RedisLegCache(redis, prefix=prefix, ttl_s=60, health=health)
        flights = RedisFlights(redis, cache=cache, health=health, lease_s=0.3)
        await redis.set(flights.lock_key("leg"), b"\xff\xfe not a token", px=300)
        entry = leg()

        async def call() -> CachedLeg:
            await cache.put("leg", entry)
            return entry

        try:
            got = await flights.run("leg", call, known=None, deadline=loop.time() + 5)
        finally:
            await flights.close()

        assert got == entry


async def test_replicas_waiting_for_a_leg_get_the_holders_answer_or_its_failure(
    redis_prefix: tuple[str, str],
) -> None:
    url, prefix = redis_prefix
    loop = asyncio.get_running_loop()
    async with aioredis.Redis.from_url(url) as redis:
        replicas = []
        for _ in range(3):
            health = RedisHealth()
            cache = RedisLegCache(redis, prefix=prefix, ttl_s=60, health=health)
            replicas.append((cache, RedisFlights(redis, cache=cache, health=health)))
        release = asyncio.Event()
        calls = 0

        def upstream(cache: RedisLegCache, outcome: CachedLeg | Exception) -> Any:
            async def call() -> CachedLeg:
                nonlocal calls
                calls += 1
                await release.wait()
                if isinstance(outcome, Exception):
                    raise outcome
                await cache.put("ok", outcome)
                return outcome

            return call

        entry = leg()
        deadline = loop.time() + 5
        asking = [asyncio.create_task(f.run("ok", upstream(c, entry), known=None,
                                            deadline=deadline)) for c, f in replicas]  # fmt: skip
        down = UpstreamUnavailable("503")
        failing = [asyncio.create_task(f.run("down", upstream(c, down), known=None,
                                             deadline=deadline)) for c, f in replicas]  # fmt: skip
        await until(lambda: calls == 2)
        release.set()
        answers = await asyncio.gather(*asking)
        failures = await asyncio.gather(*failing, return_exceptions=True)
        for _, flights in replicas:
            await flights.close()

        assert calls == 2  # one per leg, whichever replica holds it
        assert answers == [entry] * 3
        assert all(isinstance(f, UpstreamUnavailable) and f.detail == "503" for f in failures)


async def test_quotes_kept_during_an_outage_are_written_back_for_the_rest_of_their_life(
    redis_prefix: tuple[str, str],
) -> None:
    """What a replica kept alone goes to Redis when it returns (else only that replica could
    sell it), each batch for what is left of its life plus the tail, never longer; a batch
    past that is forgotten, not written."""
    url, prefix = redis_prefix
    async with aioredis.Redis.from_url(url) as redis:
        store = RedisQuoteStore(redis, prefix=prefix, health=RedisHealth(), local=QuoteStore(),
                                tail_s=60)  # fmt: skip
        live, gone = batch("live", dt.timedelta(minutes=5)), batch("gone", -dt.timedelta(hours=1))
        store.local.keep(live)
        store.local.keep(gone)

        await store.write_back()

        assert len(store.local) == 0
        assert 0 < await redis.pttl(store.key(live.token)) <= 360_000
        assert await redis.exists(store.key(gone.token)) == 0
        found = await store.get(first_quote("live"))
        assert found is not None and found.total == live.lines[0].total


# --- Redis going away -----------------------------------------------------------------------------


class ThrowawayRedis:
    """A redis-server of this test's own on a free port (never the shared one on 6379)."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with aioredis.Redis.from_url(self.url) as probe:

            async def answers() -> bool:
                try:
                    return bool(await probe.ping())
                except (OSError, aioredis.RedisError):
                    return False

            await until(answers, seconds=10)

    async def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            await asyncio.wait_for(self._process.wait(), timeout=10)
            self._process = None


@pytest.fixture
async def throwaway_redis() -> AsyncIterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    yield server
    await server.stop()


async def test_rating_survives_redis_going_away_and_is_shared_again_when_it_returns(
    make_replicas: MakeReplicas,
    sandbox: ShipStationSandbox,
    throwaway_redis: ThrowawayRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await throwaway_redis.start()
    a, b = await make_replicas(throwaway_redis.url, "outage:")
    before = (await rate(a, shipment(carriers=["fedex"])))["quotes"][0]["quote_id"]
    assert (await b.get(f"/v1/quotes/{before}", headers=AUTH)).status == 200

    await throwaway_redis.stop()
    for client in (a, b):  # cached and cold legs, on both: answered, never a 5xx
        assert (await rate(client, shipment(carriers=["fedex"])))["quotes"]
        assert (await rate(client, shipment("10001", carriers=["fedex", "ups"])))["quotes"]
    during = (await rate(a, shipment("10002", carriers=["ups"])))["quotes"][0]["quote_id"]
    kept_here = await a.get(f"/v1/quotes/{during}", headers=AUTH)
    unreadable = await b.get(f"/v1/quotes/{before}", headers=AUTH)
    problem = await unreadable.json()
    health_a, health_b = (c.server.app[STATE].health for c in (a, b))
    assert health_a is not None and health_b is not None
    assert not health_a.available and not health_b.available

    told = [r for r in caplog.records if r.getMessage().startswith("Redis cannot be reached")]
    assert len(told) == 2  # once per replica, not per request
    assert kept_here.status == 200  # kept by the replica that quoted it
    assert (unreadable.status, problem["code"]) == (503, "storage_unavailable")
    assert "Redis" in problem["detail"]

    await throwaway_redis.start()  # back, empty

    async def shared_again() -> bool:
        for client in (a, b):
            await rate(client, shipment(carriers=["fedex"]))
        return health_a.available and health_b.available

    await until(shared_again)
    calls = getrates_calls(sandbox)
    body = shipment("10003", carriers=["fedex", "ups"])
    await asyncio.gather(*(rate((a, b)[n % 2], body) for n in range(6)))
    after = (await rate(a, shipment("10004", carriers=["ups"])))["quotes"][0]["quote_id"]

    grown = {k: v - calls.get(k, 0) for k, v in getrates_calls(sandbox).items()}
    assert grown == {"fedex": 1, "ups": 2}  # 10003: one call per leg across both; 10004: ups
    assert (await b.get(f"/v1/quotes/{after}", headers=AUTH)).status == 200


async def test_while_redis_is_down_a_replica_caches_legs_for_their_life_not_seconds(
    aiohttp_client: Any, sandbox: ShipStationSandbox, sandbox_url: str, tmp_path: Path
) -> None:
    """The README: during a Redis outage "caches are this process's until it returns". Legs
    written only to the near-cache (3 s) made a warehouse screen refreshing a shipment every few
    seconds cost one ShipStation call per carrier per refresh, against a budget already cut to
    ``limit // RATESVC_REPLICAS``: it ran out and, with no cached leg left to serve stale,
    quotes failed as throttled, where one process would have answered from memory for the whole
    quote TTL (15 min)."""
    down = ThrowawayRedis()  # a free port nothing listens on: Redis is down from the start
    settings = load_settings(service_env(sandbox_url, tmp_path))
    client = await aiohttp_client(shared(create_app(settings), down.url, "down:"))
    body = shipment(carriers=["ups", "fedex"])
    await rate(client, body)
    first = getrates_calls(sandbox)
    assert first == {"ups": 1, "fedex": 1}

    await asyncio.sleep(3.5)  # past the near-cache's 3 s, far within the 900 s quote TTL
    again = await rate(client, body)

    assert getrates_calls(sandbox) == first  # answered from this process's cache
    assert all(q["cached"] for q in again["quotes"])
    assert client.server.app[STATE].cache.held_bytes > 0


async def test_a_quote_made_while_redis_was_down_is_bought_on_another_replica_once_it_is_back(
    make_replicas: MakeReplicas, throwaway_redis: ThrowawayRedis
) -> None:
    """A batch that could not be written to Redis is kept by the replica that quoted it. Kept
    there for good, a client buying it through the load balancer after the outage got **404
    not_found** from every other replica for a quote that exists, is unexpired and is buyable on
    one replica. When Redis answers again, each replica writes what it kept to it."""
    await throwaway_redis.start()
    a, b = await make_replicas(throwaway_redis.url, "back:")
    for client in (a, b):
        await rate(client, shipment(carriers=["fedex"]))
    await throwaway_redis.stop()
    quote_id = (await rate(a, shipment("10002", carriers=["ups"])))["quotes"][0]["quote_id"]
    assert (await a.get(f"/v1/quotes/{quote_id}", headers=AUTH)).status == 200
    store_a = a.server.app[STATE].store
    assert isinstance(store_a, RedisQuoteStore) and store_a.kept_locally(token_of(quote_id))

    await throwaway_redis.start()
    health_a, health_b = (c.server.app[STATE].health for c in (a, b))
    assert health_a is not None and health_b is not None

    async def shared_again() -> bool:
        for client in (a, b):
            await rate(client, shipment(carriers=["fedex"]))
        return health_a.available and health_b.available

    await until(shared_again)
    await until(lambda: not store_a.kept_locally(token_of(quote_id)))
    read = await b.get(f"/v1/quotes/{quote_id}", headers=AUTH)
    bought = await b.post("/v1/labels", json={"quote_id": quote_id}, headers=AUTH)

    assert (read.status, bought.status) == (200, 201), (await read.text(), await bought.text())
    assert store_a.held_bytes == 0  # written to Redis, forgotten here


async def test_a_quote_a_replica_hands_out_while_redis_is_down_is_readable_on_that_replica(
    make_replicas: MakeReplicas, throwaway_redis: ThrowawayRedis
) -> None:
    """A replica answers a busy body from copies of its batch stored ahead in Redis, for up to
    ``near_ttl_s`` (3 s) without asking Redis. Doing so once Redis is known to be away handed
    out quote ids whose batch only the unreachable Redis holds: the very replica that quoted
    answered 503 on ``GET /v1/quotes/{id}`` and ``POST /v1/labels`` a moment later. During an
    outage a replica rates (and keeps) its answers itself; only quotes another replica made are
    503."""
    await throwaway_redis.start()
    a, _ = await make_replicas(throwaway_redis.url, "ahead:")
    body = shipment(carriers=["ups"])
    await rate(a, body)  # cold
    await rate(a, body)  # kept for replay
    await rate(a, body)  # replayed: a block of copies stored ahead, near for 3 s
    await throwaway_redis.stop()
    health = a.server.app[STATE].health
    assert health is not None
    await until(lambda: not health.available)  # the replica's subscription saw it go

    quote_id = (await rate(a, body))["quotes"][0]["quote_id"]  # within the 3 s
    read = await a.get(f"/v1/quotes/{quote_id}", headers=AUTH)

    assert read.status == 200, await read.text()
