"""What rating keeps — legs, in-flight calls, quotes, replays, carrier catalogues — in this process
or, given a Redis client, shared by every replica.

:func:`build_rating_state` chooses. Without Redis: the embedded implementations
(:mod:`ratesvc.quotes`, :mod:`ratesvc.replay`), exactly as a single process always had them. With
Redis, under the key prefix ``P`` (``settings.redis_prefix``), each namespace followed by the
format version of its values (``v1``; a release changing a format bumps it, so a rolling deploy
never reads the other release's values):

=================================  ==============================================  ============
key                                holds                                           lives
=================================  ==============================================  ============
``P leg:v1:<canonical leg key>``   a leg's rate rows (msgpack ``CachedLeg``)        cache TTL
``P leg-lock:v1:<leg key>``        the replica calling ShipStation for the leg      3 s, renewed
``P leg-done:v1:<token>``          that call's outcome, for waiters missing the     10 s
                                   message
``P leg-flights:v1`` (channel)     the outcomes, as they happen                     —
``P quote:v1:<token>``             an answer's quotes (msgpack ``QuoteBatch``), or  expiry + 60 s
                                   ``@<token>``: a replayed copy of that one
``P replay:v1:<sha256>``           an answer to replay for (account, its rating     while fresh
                                   configuration, body)
``P catalog:v1:<scope>``           the carrier catalogue, its version, refresh at   7 days
                                   (scope: account, digest of key pair and
                                   carrier allow-list)
``P catalog-lock:v1:<scope>``      the replica loading or refreshing it             its deadline
=================================  ==============================================  ============

Each replica keeps, for ``near_ttl_s`` (a few seconds), the legs it read (a near-cache) and the
answers it replayed with copies of their batch stored ahead, and its in-process single-flight in
front of Redis: a hot cached quote costs no Redis round trip most of the time.

When Redis cannot be reached, rating never fails for it: legs are cached (for their whole life)
and coalesced in the process, quotes kept there, replays skipped, catalogues loaded per replica
— logged once per outage (:class:`~ratesvc.storage.redis_health.RedisHealth`). Reading a quote
then answers 503 ``storage_unavailable`` unless this replica holds it. When Redis answers again,
each replica writes the quotes it kept to it, so any replica can read and sell them.

The client must not decode responses (``decode_responses=False``, the default). Give it a short
connect timeout and few retries: each Redis call is bounded by ``RedisHealth.op_timeout_s``
anyway, and an outage is detected by the first call that fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from ratesvc.accounts import AccountServices
from ratesvc.catalog import CatalogSharing, catalog_scope
from ratesvc.config import Settings
from ratesvc.quotes import (
    LegCache,
    LegCacheProtocol,
    QuoteStore,
    QuoteStoreProtocol,
    SharedFlights,
)
from ratesvc.replay import AnswerReplay, ReplayProtocol, rating_fingerprint
from ratesvc.storage.redis_catalog import RedisCatalogSharing
from ratesvc.storage.redis_flights import RedisFlights
from ratesvc.storage.redis_health import RedisHealth
from ratesvc.storage.redis_legs import RedisLegCache
from ratesvc.storage.redis_quotes import RedisAnswerReplay, RedisQuoteStore


@dataclass
class RatingState:
    """What :class:`~ratesvc.rating.Rater` and ``POST /v1/rates`` work with; ``flights``,
    ``catalogs`` and ``health`` only when shared."""

    cache: LegCacheProtocol
    store: QuoteStoreProtocol
    replay: ReplayProtocol
    flights: SharedFlights | None = None
    catalogs: CatalogSharing | None = None
    health: RedisHealth | None = None
    _closing: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def share_catalogs(self, accounts: Iterable[AccountServices]) -> None:
        """Make the accounts' carrier catalogues shared ones (nothing without Redis)."""
        if self.catalogs is not None:
            for services in accounts:
                services.catalog.share(self.catalogs, scope=catalog_scope(services.account))

    async def close(self) -> None:
        """Stop what runs in the background; the Redis client is the caller's to close."""
        for close in self._closing:
            await close()
        await self.cache.close()


def build_rating_state(
    redis: aioredis.Redis | None,
    prefix: str,
    settings: Settings,
    *,
    near_ttl_s: float = 3.0,
    lease_s: float = 3.0,
) -> RatingState:
    """The embedded state (``redis`` None) or the one shared through ``redis`` under ``prefix``.

    Budgets: the quote store gets ``quote_store_max_bytes`` and the replay a quarter of it (shared:
    a quarter for the answers a replica keeps alone during an outage and a sixteenth for the replays
    it answers ahead); the leg near-cache an eighth of the leg cache's entries and bytes, and the
    legs a replica caches alone during an outage a quarter. ``near_ttl_s``: how long a replica uses
    what it read without asking Redis again; ``lease_s``: a leg lock's lease (renewed while its call
    runs).
    """
    budget = settings.quote_store_max_bytes
    ttl_s = max(settings.quote_max_stale_s, *(a.quote_ttl_s for a in settings.accounts.values()))
    if redis is None:
        store = QuoteStore(max_bytes=budget)
        return RatingState(
            cache=LegCache(backend=settings.quote_cache,
                           max_entries=settings.quote_cache_max_entries,
                           max_bytes=settings.quote_cache_max_bytes, ttl_s=ttl_s),
            store=store,
            replay=AnswerReplay(store, max_bytes=budget // 4),
        )  # fmt: skip
    health = RedisHealth()
    cache = RedisLegCache(
        redis, prefix=prefix, ttl_s=ttl_s, health=health, near_ttl_s=near_ttl_s,
        near_max_entries=max(1, settings.quote_cache_max_entries // 8),
        near_max_bytes=settings.quote_cache_max_bytes // 8,
        local_max_entries=max(1, settings.quote_cache_max_entries // 4),
        local_max_bytes=settings.quote_cache_max_bytes // 4,
    )  # fmt: skip
    flights = RedisFlights(redis, cache=cache, health=health, lease_s=lease_s)
    shared_store = RedisQuoteStore(
        redis, prefix=prefix, health=health, local=QuoteStore(max_bytes=budget // 4)
    )
    fingerprints = {a.name: rating_fingerprint(a) for a in settings.accounts.values()}
    replay = RedisAnswerReplay(redis, prefix=prefix, health=health, store=shared_store,
                               fingerprints=fingerprints, near_ttl_s=near_ttl_s,
                               near_max_bytes=budget // 16)  # fmt: skip
    return RatingState(
        cache=cache,
        store=shared_store,
        replay=replay,
        flights=flights,
        catalogs=RedisCatalogSharing(redis, prefix=prefix, health=health),
        health=health,
        _closing=[flights.close, replay.close, shared_store.close],
    )
