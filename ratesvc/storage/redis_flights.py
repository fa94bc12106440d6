"""One ShipStation call per leg whichever replica asks: a lease per leg in Redis.

Behind each replica's in-process :class:`~ratesvc.quotes.SingleFlight` (so a replica asks Redis
once per leg, however many of its requests want it), :meth:`RedisFlights.run`:

1. In one round trip, ``SET <prefix>leg-lock:v1:<leg> <token> NX PX <lease> GET`` and ``GET`` the
   leg's cache entry. An entry newer than the one the caller saw was written by another replica
   meanwhile: it is the answer (no call).
2. The lock taken: this replica calls ShipStation (the call writes the cache), renewing the lease
   every third of it while the call runs, then — one script — records the outcome under
   ``<prefix>leg-done:v1:<token>`` (``OUTCOME_TTL_S``), frees the lock if still its own, and
   publishes the outcome on ``<prefix>leg-flights:v1``. The outcome is the entry, or the upstream
   failure (shared with the replicas waiting for that call, as in-process waiters share it), or
   *abandoned* (the call was cancelled: nobody waits for it here).
3. The lock held by another replica: wait for that holder's outcome, from the channel (one
   subscription per process) or, when a message is missed, by polling the outcome record and
   the lock with back-off. A lock that disappears without an outcome (abandoned, or the holder
   died and its lease ran out) is claimed again from step 1: someone takes over. Waiting is
   bounded by the caller's deadline.

Redis unreachable (:mod:`.redis_health`): the call is made here, as if unshared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from ratesvc.errors import (
    UpstreamAuth,
    UpstreamError,
    UpstreamFailure,
    UpstreamNotFound,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ratesvc.quotes import CachedLeg
from ratesvc.storage.redis_health import REDIS_ERRORS, RedisHealth
from ratesvc.storage.redis_legs import RedisLegCache

log = logging.getLogger(__name__)

OUTCOME_TTL_S = 10.0
_POLL_S = (0.05, 0.5)  # waiting without a message: first and longest pause between checks

# KEYS: lock, outcome record; ARGV: token, notice, record ttl (ms), channel
_FINISH = """
redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
redis.call('publish', ARGV[4], ARGV[2])
return 1
"""
# KEYS: lock; ARGV: token, lease (ms)
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class _Done(msgspec.Struct, frozen=True, tag="done"):
    entry: CachedLeg


class _Failed(msgspec.Struct, frozen=True, tag="failed"):
    kind: str
    detail: str
    upstream: str = ""
    endpoint: str = ""
    upstream_status: int | None = None
    reset_after_s: float | None = None


class _Abandoned(msgspec.Struct, frozen=True, tag="abandoned"):
    pass


_Outcome = _Done | _Failed | _Abandoned


class _Notice(msgspec.Struct, frozen=True, array_like=True):
    key: str
    outcome: _Outcome


_FAILURES: dict[str, type[UpstreamFailure]] = {
    cls.__name__: cls
    for cls in (UpstreamFailure, UpstreamError, UpstreamNotFound, UpstreamAuth,
                UpstreamUnavailable, UpstreamThrottled, UpstreamTimeout)
}  # fmt: skip
_encode = msgspec.msgpack.Encoder().encode
_decode_notice = msgspec.msgpack.Decoder(_Notice).decode


def _failed(failure: UpstreamFailure) -> _Failed:
    reset = failure.reset_after_s if isinstance(failure, UpstreamThrottled) else None
    kind = type(failure).__name__ if type(failure).__name__ in _FAILURES else "UpstreamFailure"
    return _Failed(kind=kind, detail=failure.detail, upstream=failure.upstream,
                   endpoint=failure.endpoint, upstream_status=failure.upstream_status,
                   reset_after_s=reset)  # fmt: skip


def _raise(failed: _Failed) -> None:
    where: dict[str, Any] = {"upstream": failed.upstream, "endpoint": failed.endpoint,
                             "upstream_status": failed.upstream_status}  # fmt: skip
    if failed.kind == "UpstreamThrottled":
        raise UpstreamThrottled(failed.detail, reset_after_s=failed.reset_after_s, **where)
    raise _FAILURES.get(failed.kind, UpstreamFailure)(failed.detail, **where)


class _Local(Exception):
    """Redis failed while waiting: make the call here."""


class RedisFlights:
    """:class:`~ratesvc.quotes.SharedFlights` on Redis (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        cache: RedisLegCache,
        health: RedisHealth,
        lease_s: float = 3.0,
    ) -> None:
        self._client = client
        self._cache = cache
        self._health = health
        self._prefix = cache.prefix
        self.lease_s = lease_s
        self.channel = f"{cache.prefix}leg-flights:v1"
        self._finish = client.register_script(_FINISH)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._waiting: dict[str, list[asyncio.Future[_Outcome]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()

    def lock_key(self, key: str) -> str:
        return f"{self._prefix}leg-lock:v1:{key}"

    def _outcome_key(self, token: bytes) -> bytes:
        """Bytes: a holder's token is whatever the lock holds, never decoded."""
        return f"{self._prefix}leg-done:v1:".encode() + token

    async def run(
        self,
        key: str,
        call: Callable[[], Awaitable[CachedLeg]],
        *,
        known: CachedLeg | None,
        deadline: float,
    ) -> CachedLeg:
        if not self._health.usable():
            return await call()
        self._listen()
        token = secrets.token_urlsafe(12)
        waiter = self._expect(key)  # before asking: a message arriving meanwhile is not lost
        try:
            while True:
                try:
                    holder, current = await self._claim(key, token)
                except REDIS_ERRORS:
                    return await call()
                if current is not None and (known is None or current.quoted_at > known.quoted_at):
                    if holder is None:
                        self._spawn(self._release(keys=[self.lock_key(key)], args=[token]))
                    return current  # another replica answered it meanwhile
                if holder is None:
                    self._forget(key, waiter)
                    return await self._hold(key, token, call)
                try:
                    outcome = await self._await(key, holder, waiter)
                except _Local:
                    return await call()
                if isinstance(outcome, _Done):
                    self._cache.remember(key, outcome.entry)
                    return outcome.entry
                if isinstance(outcome, _Failed):
                    _raise(outcome)
                self._forget(key, waiter)  # abandoned or gone: claim it again
                waiter = self._expect(key)
        finally:
            self._forget(key, waiter)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._background:  # outcomes being published: brief, each bounded by the health
            await asyncio.wait(self._background, timeout=2 * self._health.op_timeout_s)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # --- the holder ------------------------------------------------------------------------------

    async def _claim(self, key: str, token: str) -> tuple[bytes | None, CachedLeg | None]:
        """(the holder's token, or None when this replica now holds the lock; the entry)."""
        async with self._health.guard(), self._client.pipeline(transaction=False) as pipe:
            pipe.set(self.lock_key(key), token, nx=True, px=_ms(self.lease_s), get=True)
            pipe.get(self._cache.key(key))
            holder, raw = await pipe.execute()
        current = self._cache.serializer.loads(raw)
        return holder, current if isinstance(current, CachedLeg) else None

    async def _hold(
        self, key: str, token: str, call: Callable[[], Awaitable[CachedLeg]]
    ) -> CachedLeg:
        renewal = asyncio.create_task(self._keep(key, token))
        outcome: _Outcome = _Abandoned()
        try:
            entry = await call()
            outcome = _Done(entry=entry)
            return entry
        except UpstreamFailure as failure:
            outcome = _failed(failure)
            raise
        finally:
            renewal.cancel()
            # in the background: a cancelled holder must still say so to the replicas waiting
            self._spawn(self._publish(key, token, outcome))

    async def _keep(self, key: str, token: str) -> None:
        """Renew the lease while the call runs; stop when the lock is no longer this one's."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                async with self._health.guard():
                    mine = await self._renew(keys=[self.lock_key(key)],
                                             args=[token, _ms(self.lease_s)])  # fmt: skip
            except REDIS_ERRORS:
                continue
            if not mine:
                log.warning("the lease of leg %s ran out during its call; another replica may "
                            "call too", key)  # fmt: skip
                return

    async def _publish(self, key: str, token: str, outcome: _Outcome) -> None:
        notice = _encode(_Notice(key=key, outcome=outcome))
        with contextlib.suppress(*REDIS_ERRORS):  # waiters find the lock expired and take over
            async with self._health.guard():
                await self._finish(
                    keys=[self.lock_key(key), self._outcome_key(token.encode())],
                    args=[token, notice, _ms(OUTCOME_TTL_S), self.channel],
                )

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- the waiters ----------------------------------------------------------------------------

    async def _await(
        self, key: str, holder: bytes, waiter: asyncio.Future[_Outcome]
    ) -> _Outcome | None:
        """The outcome of ``holder``'s call; None when its lock went without one."""
        pause = _POLL_S[0]
        while True:
            await asyncio.wait([waiter], timeout=pause)
            if waiter.done():
                return waiter.result()
            try:
                async with self._health.guard(), self._client.pipeline(False) as pipe:
                    pipe.get(self._outcome_key(holder))
                    pipe.get(self.lock_key(key))
                    recorded, lock = await pipe.execute()
            except REDIS_ERRORS as exc:
                raise _Local from exc
            if recorded is not None:
                with contextlib.suppress(msgspec.DecodeError):
                    return _decode_notice(recorded).outcome
            if lock != holder:
                return None
            pause = min(pause * 2, _POLL_S[1])

    def _expect(self, key: str) -> asyncio.Future[_Outcome]:
        waiter: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(waiter)
        return waiter

    def _forget(self, key: str, waiter: asyncio.Future[_Outcome]) -> None:
        waiters = self._waiting.get(key)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiting[key]

    def _listen(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen_forever())

    async def _listen_forever(self) -> None:
        """One subscription per process, resubscribed after Redis comes back."""
        pause = 0.1
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                pause = 0.1
                async for message in pubsub.listen():
                    self._dispatch(message.get("data"))
            except REDIS_ERRORS as exc:
                self._health.failed(exc)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _dispatch(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        try:
            notice = _decode_notice(data)
        except msgspec.DecodeError:
            return
        for waiter in self._waiting.pop(notice.key, []):
            if not waiter.done():
                waiter.set_result(notice.outcome)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
