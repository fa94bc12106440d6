"""The leg cache replicas share: aiocache's Redis backend behind a small per-process near-cache.

* Entries are :class:`~ratesvc.quotes.CachedLeg` as msgpack (:class:`MsgspecSerializer`: exact,
  ``Decimal`` and ``datetime`` included), under ``<prefix>leg:v1:<canonical leg key>``, living
  ``ttl_s`` (the longest staleness ever accepted) like the embedded cache's.
* :class:`NearCache` keeps what this process read or wrote for ``near_ttl_s`` (a few seconds,
  never past the entry's own life in Redis), bounded by entries and by an estimate of bytes, so a
  hot leg is not fetched from Redis for every request. A copy may be up to ``near_ttl_s`` behind
  Redis: a request finding it too old for its ``max_age_s`` asks for a fresh leg, and the shared
  single-flight (:mod:`.redis_flights`) then takes the newer entry another replica wrote, if any,
  instead of calling ShipStation.
* Redis unreachable: legs are written to a bounded cache of this process (an embedded
  :class:`~ratesvc.quotes.LegCache`, entries living ``ttl_s`` like Redis's), read after the
  near-cache and after Redis, so a shipment quoted again during an outage costs no upstream
  call for as long as it would have with Redis (or one process). The request is never failed
  for it (see :mod:`.redis_health`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import msgspec
import redis.asyncio as aioredis
from aiocache import RedisCache
from aiocache.serializers import BaseSerializer

from ratesvc.byte_lru import ByteLRU
from ratesvc.quotes import LEG_PER_ENCODED_BYTE, CachedLeg, LegCache, held_bytes
from ratesvc.storage.redis_health import REDIS_ERRORS, RedisHealth

log = logging.getLogger(__name__)


class MsgspecSerializer(BaseSerializer):  # type: ignore[misc]
    """aiocache serializer of one msgspec type as msgpack; what cannot be decoded is a miss."""

    DEFAULT_ENCODING = None  # bytes in, bytes out

    def __init__(self, kind: type[Any]) -> None:
        super().__init__()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(kind)

    def dumps(self, value: Any) -> bytes:
        return self._encoder.encode(value)

    def loads(self, value: bytes | None) -> Any:
        if value is None:
            return None
        try:
            return self._decoder.decode(value)
        except msgspec.DecodeError:  # another version's format, or damaged: fetch it again
            log.debug("undecodable cache entry of %d bytes ignored", len(value))
            return None


class _Backend(RedisCache):  # type: ignore[misc]
    """aiocache's Redis backend on a client the application owns (closed by it, not here)."""

    def __init__(self, client: aioredis.Redis, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # builds an unused connection pool: no I/O
        self.client = client


class NearCache:
    """Legs this process saw lately, each until its own expiry, oldest out first."""

    def __init__(self, *, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._held: ByteLRU[str, tuple[float, CachedLeg]] = ByteLRU(max_bytes)

    @property
    def held_bytes(self) -> int:
        return self._held.bytes

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: str, now: float) -> CachedLeg | None:
        held = self._held.get(key)
        if held is None:
            return None
        if held[0] <= now:
            self._held.pop(key)
            return None
        return held[1]

    def put(self, key: str, value: CachedLeg, *, until: float) -> None:
        """Keep ``value`` until ``until`` (monotonic), or ``ttl_s`` from now if sooner."""
        now = time.monotonic()
        until = min(until, now + self.ttl_s)
        if until <= now:
            return
        size = held_bytes(value, per_encoded_byte=LEG_PER_ENCODED_BYTE, extra=len(key))
        self._held.put(key, (until, value), size)
        while len(self._held) > self.max_entries:
            self._held.pop_oldest()

    def clear(self) -> None:
        self._held.clear()


class RedisLegCache:
    """:class:`~ratesvc.quotes.LegCacheProtocol` on Redis, with a :class:`NearCache` in front
    and a local cache (``local``) for what could not be written to Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        ttl_s: float,
        health: RedisHealth,
        near_ttl_s: float = 3.0,
        near_max_entries: int = 20_000,
        near_max_bytes: int = 8 << 20,
        local_max_entries: int = 25_000,
        local_max_bytes: int = 16 << 20,
    ) -> None:
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.health = health
        self.serializer = MsgspecSerializer(CachedLeg)
        self.near = NearCache(max_entries=near_max_entries, max_bytes=near_max_bytes,
                              ttl_s=near_ttl_s)  # fmt: skip
        self.local = LegCache(backend="memory", max_entries=local_max_entries,
                              max_bytes=local_max_bytes, ttl_s=ttl_s)  # fmt: skip
        self._kept_locally = False  # read ``local`` only once something was written there
        # timeout=None: RedisHealth bounds each call (without a task per call)
        self._redis = _Backend(client, serializer=self.serializer, key_builder=self._key,
                               timeout=None)  # fmt: skip

    def key(self, key: str) -> str:
        """The Redis key of a canonical leg key."""
        return f"{self.prefix}leg:v1:{key}"

    def _key(self, key: str, namespace: str | None = None) -> str:
        return self.key(key)

    @property
    def held_bytes(self) -> int:
        """The estimate of what the near-cache and the local cache hold in this process."""
        return self.near.held_bytes + self.local.held_bytes

    async def get(self, key: str) -> CachedLeg | None:
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: list[str]) -> list[CachedLeg | None]:
        now = time.monotonic()
        found = [self.near.get(key, now) for key in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        if missing and self.health.usable():
            try:
                async with self.health.guard():
                    values = await self._redis.multi_get([keys[i] for i in missing])
            except REDIS_ERRORS:
                values = [None] * len(missing)
            for i, value in zip(missing, values, strict=True):
                if isinstance(value, CachedLeg):
                    found[i] = value
                    self.remember(keys[i], value)
            missing = [i for i in missing if found[i] is None]
        if missing and self._kept_locally:  # what an outage kept here, Redis lacking it
            kept = await self.local.get_many([keys[i] for i in missing])
            for i, value in zip(missing, kept, strict=True):
                found[i] = value
        return found

    async def put(self, key: str, value: CachedLeg) -> None:
        self.remember(key, value)
        if self.health.usable():
            try:
                async with self.health.guard():
                    await self._redis.set(key, value, ttl=float(self.ttl_s))
                return
            except REDIS_ERRORS:
                pass
        await self.local.put(key, value)  # for its whole life, here; other replicas call again
        self._kept_locally = True

    def remember(self, key: str, value: CachedLeg) -> None:
        """Keep a leg read from (or written to) Redis in the near-cache, for no longer than it
        lives there."""
        left = self.ttl_s - (dt.datetime.now(dt.UTC) - value.quoted_at).total_seconds()
        self.near.put(key, value, until=time.monotonic() + left)

    async def close(self) -> None:
        self.near.clear()  # the client is the application's; Redis keeps the entries
        await self.local.close()
