"""Carrier catalogues replicas share: :class:`~ratesvc.catalog.CatalogSharing` in Redis.

Per account scope (:func:`~ratesvc.catalog.catalog_scope`: the account's name and a digest of
its key pair and carrier allow-list, so a replica configured otherwise never adopts the copy),
a hash ``<prefix>catalog:v1:<scope>`` holds ``body`` (the
:class:`~ratesvc.models.CarriersResponse` as msgpack), ``version`` and ``refresh_at`` (ms, Redis's
clock), and ``<prefix>catalog-lock:v1:<scope>`` is the claim of the one replica loading it. A
version is the publishing moment in milliseconds (or the previous version + 1 if that is not
larger), so versions only grow, also across a Redis restart that lost them, and never equal the
negative versions of copies a replica keeps alone during an outage.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from ratesvc.catalog import SharedCopy
from ratesvc.errors import StorageUnavailable
from ratesvc.models import CarriersResponse
from ratesvc.storage.redis_health import REDIS_ERRORS, RedisHealth

_KEEP_MS = 7 * 24 * 3600 * 1000  # an account no replica serves any more leaves nothing behind

# KEYS: catalog; ARGV: the version the caller has -> {version, due (0/1), body or nothing}
_READ = """
local v = redis.call('hget', KEYS[1], 'version')
if not v then return nil end
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = 0
if now >= tonumber(redis.call('hget', KEYS[1], 'refresh_at') or '0') then due = 1 end
if v == ARGV[1] then return {v, due} end
return {v, due, redis.call('hget', KEYS[1], 'body')}
"""
# KEYS: catalog, lock; ARGV: token, body, refresh in (ms), keep (ms) -> the new version
_PUBLISH = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = tonumber(redis.call('hget', KEYS[1], 'version') or '0')
if now > v then v = now else v = v + 1 end
redis.call('hset', KEYS[1], 'version', string.format('%d', v), 'body', ARGV[2],
           'refresh_at', string.format('%d', now + tonumber(ARGV[3])))
redis.call('pexpire', KEYS[1], ARGV[4])
if redis.call('get', KEYS[2]) == ARGV[1] then redis.call('del', KEYS[2]) end
return string.format('%d', v)
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(CarriersResponse).decode


class RedisCatalogSharing:
    def __init__(self, client: aioredis.Redis, *, prefix: str, health: RedisHealth) -> None:
        self._client = client
        self._prefix = prefix
        self._health = health
        self._read = client.register_script(_READ)
        self._publish = client.register_script(_PUBLISH)
        self._release = client.register_script(_RELEASE)

    def key(self, account: str) -> str:
        return f"{self._prefix}catalog:v1:{account}"

    def lock_key(self, account: str) -> str:
        return f"{self._prefix}catalog-lock:v1:{account}"

    async def read(self, account: str, *, known_version: int) -> SharedCopy | None:
        reply = await self._call(
            lambda: self._read(keys=[self.key(account)], args=[str(known_version)])
        )
        if reply is None:
            return None
        try:
            version, due = int(reply[0]), bool(int(reply[1]))
            snapshot = None if len(reply) < 3 else _decode(reply[2])
        except (msgspec.DecodeError, TypeError, ValueError):  # another format: load it again
            return None
        return SharedCopy(version=version, snapshot=snapshot, refresh_due=due)

    async def claim(self, account: str, *, hold_s: float) -> str | None:
        token = secrets.token_urlsafe(12)
        taken = await self._call(lambda: self._client.set(
            self.lock_key(account), token, nx=True, px=max(1, int(hold_s * 1000))
        ))  # fmt: skip
        return token if taken else None

    async def publish(
        self, account: str, token: str, snapshot: CarriersResponse, *, refresh_in_s: float
    ) -> int:
        reply = await self._call(lambda: self._publish(
            keys=[self.key(account), self.lock_key(account)],
            args=[token, _encode(snapshot), int(refresh_in_s * 1000), _KEEP_MS],
        ))  # fmt: skip
        return int(reply)

    async def release(self, account: str, token: str) -> None:
        await self._call(lambda: self._release(keys=[self.lock_key(account)], args=[token]))

    async def _call(self, request: Callable[[], Awaitable[Any]]) -> Any:
        if not self._health.usable():
            raise StorageUnavailable("Redis is not answering")
        try:
            async with self._health.guard():
                return await request()
        except REDIS_ERRORS as exc:
            raise StorageUnavailable(f"Redis is not answering ({type(exc).__name__})") from exc
