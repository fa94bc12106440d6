"""The quote store and the answer replay replicas share, in Redis.

* :class:`RedisQuoteStore`: each answer's :class:`~ratesvc.quotes.QuoteBatch` as msgpack under
  ``<prefix>quote:v1:<token>``, living until its quotes expire plus ``tail_s`` (so an expired quote
  answers 410 *expired* for a while, then 404 *unknown*). A replayed answer's batch is stored as
  a reference, ``@<token of the batch it copies>``: the copy expires with the original, so the
  original outlives it. A batch that cannot be written (Redis down) is kept in this process, so
  the replica that quoted it can still sell it, and written to Redis when Redis answers again
  (:meth:`RedisQuoteStore.write_back`), so every replica can; reading a quote Redis cannot be
  asked for is :class:`~ratesvc.errors.StorageUnavailable` (503), since it may well exist.
* :class:`RedisAnswerReplay`: a hash under ``<prefix>replay:v1:<SHA-256 of account, body and
  the account's rating configuration>`` (:func:`~ratesvc.replay.rating_fingerprint`: a release
  with another markup, ship-from, carriers or key pair never replays what an older one kept)
  holding the encoded answer, the token of the batch its quote ids name, the account, the
  carrier catalogue version (shared, see :mod:`ratesvc.catalog`) and until when it is fresh and
  its quotes valid; it lives while fresh. A trip to Redis for a replay is one script call
  (check, store copies of the batch ahead, return the answer); a replica then answers the same
  body from its copies for a few seconds. Anything unreadable is a miss, never an error.

Memory in Redis is bounded by these lives, not by a byte budget: give Redis a ``maxmemory`` with
a ``volatile-ttl`` (or ``volatile-lru``) policy, so that a full Redis forgets the quotes nearest
their end instead of refusing writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis

from ratesvc.byte_lru import ByteLRU
from ratesvc.errors import StorageUnavailable
from ratesvc.quotes import (
    ENTRY_BYTES,
    MIB,
    TOKEN_LENGTH,
    QuoteBatch,
    QuoteStore,
    StoredQuote,
    new_tokens,
    split_quote_id,
    stored_quote,
)
from ratesvc.replay import MAX_BODY_BYTES
from ratesvc.storage.redis_health import REDIS_ERRORS, RedisHealth

_REFERENCE = b"@"  # never the first byte of a msgpack map (a QuoteBatch)
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{%d}" % TOKEN_LENGTH)  # as new_token() draws them
_encode = msgspec.msgpack.Encoder().encode
_decode_batch = msgspec.msgpack.Decoder(QuoteBatch).decode


def _bytes(value: object) -> bytes | None:
    """A reply as bytes (the client must not decode responses: aiocache needs bytes too)."""
    return value if isinstance(value, bytes) else None


def _px(until: dt.datetime, *, extra_s: float = 0.0) -> int:
    """Milliseconds from now until ``until`` (+ ``extra_s``); at least 1."""
    left = (until - dt.datetime.now(dt.UTC)).total_seconds() + extra_s
    return max(1, int(left * 1000))


class RedisQuoteStore:
    """:class:`~ratesvc.quotes.QuoteStoreProtocol` in Redis, with a local store for outages."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        health: RedisHealth,
        local: QuoteStore,
        tail_s: float = 60.0,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._health = health
        self.local = local
        self.tail_s = tail_s
        self._writing_back: asyncio.Task[None] | None = None
        health.when_back(self._back)

    def key(self, token: str) -> str:
        return f"{self._prefix}quote:v1:{token}"

    @property
    def held_bytes(self) -> int:
        """What this process holds: the batches it kept while Redis was unreachable (until
        Redis answers again)."""
        return self.local.held_bytes

    def _back(self) -> None:
        """Redis answers again: share what was kept here meanwhile (in the background)."""
        busy = self._writing_back is not None and not self._writing_back.done()
        if len(self.local) and not busy:
            self._writing_back = asyncio.get_running_loop().create_task(self.write_back())

    async def write_back(self, *, chunk: int = 100) -> None:
        """Write the batches kept here to Redis, each for the rest of its life (as :meth:`put`
        would have), then forget them here; those past it are forgotten. Redis failing again
        leaves the rest here until it returns."""
        batches = self.local.batches()
        for start in range(0, len(batches), chunk):
            now = dt.datetime.now(dt.UTC)
            some = batches[start : start + chunk]
            live = [b for b in some if b.expires_at + dt.timedelta(seconds=self.tail_s) > now]
            if live:
                try:
                    async with (self._health.guard(),
                                self._client.pipeline(transaction=False) as pipe):  # fmt: skip
                        for batch in live:
                            pipe.set(self.key(batch.token), _encode(batch),
                                     px=_px(batch.expires_at, extra_s=self.tail_s))  # fmt: skip
                        await pipe.execute()
                except REDIS_ERRORS:
                    return
            for batch in some:
                self.local.drop(batch.token)

    async def close(self) -> None:
        if self._writing_back is not None:
            self._writing_back.cancel()
            await asyncio.gather(self._writing_back, return_exceptions=True)

    async def put(self, batch: QuoteBatch, *, size: int | None = None) -> None:
        if self._health.usable():
            try:
                async with self._health.guard():
                    await self._client.set(
                        self.key(batch.token), _encode(batch),
                        px=_px(batch.expires_at, extra_s=self.tail_s),
                    )  # fmt: skip
                return
            except REDIS_ERRORS:
                pass
        self.local.keep(batch, size=size)

    def kept_locally(self, token: str) -> bool:
        return self.local.size_of(token) is not None

    async def get(self, quote_id: str) -> StoredQuote | None:
        where = split_quote_id(quote_id)
        if where is None:
            return None
        local = self.local.find(quote_id)
        if local is not None:
            return local
        if not self._health.usable():
            raise _unavailable(quote_id)
        try:
            async with self._health.guard():
                raw = _bytes(await self._client.get(self.key(where[0])))
                if raw is not None and raw.startswith(_REFERENCE):
                    if not _TOKEN.fullmatch(raw, 1):
                        return None  # damaged or foreign: no batch it could name
                    raw = _bytes(await self._client.get(self.key(raw[1:].decode())))
        except REDIS_ERRORS as exc:
            raise _unavailable(quote_id) from exc
        if raw is None:
            return None
        try:
            batch = _decode_batch(raw)
        except msgspec.DecodeError:
            return None
        return stored_quote(batch, quote_id, where[1])


def _unavailable(quote_id: str) -> StorageUnavailable:
    return StorageUnavailable(
        f"quote {quote_id} cannot be looked up now: the store the replicas share quotes in "
        "(Redis) does not answer. Try again in a moment, or rate the shipment again"
    )


# KEYS: kept answer, then the batch keys of the copies to store; ARGV: account, catalogue
# version, now (ms), tail (ms) -> {token the answer's quote ids name, answer, fresh until (ms)}
# after storing one copy per further key (a reference to that token), or nil
_REPLAY = """
local f = redis.call('hmget', KEYS[1], 'account', 'version', 'fresh', 'expires', 'token')
if not f[1] or f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return nil end
local now = tonumber(ARGV[3])
if tonumber(f[3]) <= now then return nil end
local px = string.format('%d', math.max(1, tonumber(f[4]) - now + tonumber(ARGV[4])))
for i = 2, #KEYS do redis.call('set', KEYS[i], '@' .. f[5], 'PX', px) end
return {f[5], redis.call('hget', KEYS[1], 'answer'), f[3]}
"""
# KEYS: kept answer; ARGV: account, version, fresh (ms), expires (ms), token, answer, life (ms)
_KEEP = """
redis.call('hset', KEYS[1], 'account', ARGV[1], 'version', ARGV[2], 'fresh', ARGV[3],
           'expires', ARGV[4], 'token', ARGV[5], 'answer', ARGV[6])
redis.call('pexpire', KEYS[1], ARGV[7])
return 1
"""

BLOCK = (4, 64)  # copies stored ahead per trip to Redis: the first block, the largest


def _epoch_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass
class _Ahead:
    """A replayable answer this replica fetched, with copies of its batch already stored."""

    answer: bytes
    token: bytes  # the one the answer's quote ids name
    version: int
    fresh_until_ms: int
    until: float  # monotonic: the near life of this entry
    tokens: list[str]  # stored copies not handed out yet
    block: int


class RedisAnswerReplay:
    """:class:`~ratesvc.replay.ReplayProtocol` in Redis (see the module docstring).

    Every replayed answer needs its own batch token, stored before the answer is given, so that any
    replica can sell its quotes. A trip to Redis (one script: check the account, catalogue version
    and freshness, store copies, return the answer) stores a *block* of copies under fresh random
    tokens; this replica hands them out to the next replays of the same body for up to
    ``near_ttl_s`` without asking Redis again — not during an outage: those batches live in Redis
    only, so the quotes would be unreadable even here. A block used up within that time makes the
    next one twice as large (up to ``BLOCK[1]``). Copies never handed out expire with the batch;
    nobody knows their tokens.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        health: RedisHealth,
        store: RedisQuoteStore,
        fingerprints: Mapping[str, str],
        near_ttl_s: float = 3.0,
        near_max_bytes: int = 4 * MIB,
    ) -> None:
        """``fingerprints``: each account's :func:`~ratesvc.replay.rating_fingerprint`; an
        account without one is never replayed."""
        self._prefix = prefix
        self._fingerprints = dict(fingerprints)
        self._health = health
        self._store = store
        self.near_ttl_s = near_ttl_s
        self._ahead: ByteLRU[tuple[str, bytes], _Ahead] = ByteLRU(near_max_bytes)
        self._refills: dict[tuple[str, bytes], asyncio.Task[bool]] = {}
        self._replay = client.register_script(_REPLAY)
        self._keep = client.register_script(_KEEP)

    def key(self, account: str, body: bytes) -> str | None:
        """The kept answer's key; None for an account without a fingerprint."""
        fingerprint = self._fingerprints.get(account)
        if fingerprint is None:
            return None
        named = b"\0".join((account.encode(), fingerprint.encode(), body))
        return f"{self._prefix}replay:v1:{hashlib.sha256(named).hexdigest()}"

    async def close(self) -> None:
        refills = list(self._refills.values())
        for refill in refills:
            refill.cancel()
        await asyncio.gather(*refills, return_exceptions=True)
        self._ahead.clear()

    @property
    def held_bytes(self) -> int:
        """What this process holds: the answers it replays without asking Redis."""
        return self._ahead.bytes

    async def replay(self, account: str, body: bytes, catalog_version: int) -> bytes | None:
        if len(body) > MAX_BODY_BYTES or not self._health.available:
            return None  # Redis away: the copies ahead name batches only Redis holds
        key = (account, body)
        for _ in range(3):  # others may take the copies fetched before this request gets one
            ahead = self._ahead.get(key)
            block = BLOCK[0]
            if (ahead is not None and ahead.until > time.monotonic()
                    and ahead.version == catalog_version):  # fmt: skip
                if ahead.fresh_until_ms <= _epoch_ms(dt.datetime.now(dt.UTC)):
                    return None
                if ahead.tokens:
                    return ahead.answer.replace(ahead.token, ahead.tokens.pop().encode())
                block = min(BLOCK[1], ahead.block * 2)  # used up while near: a busy body
            refill = self._refills.get(key)
            if refill is None:  # one trip to Redis per body at a time, whoever waits for it
                refill = asyncio.create_task(self._fetch(account, body, catalog_version, block))
                self._refills[key] = refill
                refill.add_done_callback(lambda _: self._refills.pop(key, None))
            if not await asyncio.shield(refill):
                return None
        return None

    async def _fetch(self, account: str, body: bytes, catalog_version: int, block: int) -> bool:
        """Ask Redis for the answer to replay, storing ``block`` copies of its batch ahead."""
        key = self.key(account, body)
        if key is None or not self._health.usable():
            return False
        tokens = new_tokens(block)
        try:
            async with self._health.guard():
                reply = await self._replay(
                    keys=[key, *(self._store.key(t) for t in tokens)],
                    args=[account, catalog_version, _epoch_ms(dt.datetime.now(dt.UTC)),
                          int(self._store.tail_s * 1000)],
                )  # fmt: skip
        except REDIS_ERRORS:
            return False
        if not reply or len(reply) != 3:
            return False
        token, answer, fresh_until = reply
        if not isinstance(token, bytes) or not isinstance(answer, bytes):
            return False
        try:
            fresh_until_ms = int(fresh_until)
        except (TypeError, ValueError):  # a foreign hash: a miss
            return False
        ahead = _Ahead(answer=answer, token=token, version=catalog_version,
                       fresh_until_ms=fresh_until_ms, until=time.monotonic() + self.near_ttl_s,
                       tokens=tokens, block=block)  # fmt: skip
        size = ENTRY_BYTES + len(answer) + len(body) + block * (TOKEN_LENGTH + 50)
        self._ahead.put((account, body), ahead, size)
        return True

    async def keep(
        self,
        account: str,
        body: bytes,
        answer: bytes,
        batch: QuoteBatch,
        *,
        fresh_until: dt.datetime,
        catalog_version: int,
    ) -> None:
        key = self.key(account, body)
        if key is None or len(body) > MAX_BODY_BYTES or not self._health.usable():
            return
        self._ahead.pop((account, body))
        if self._store.kept_locally(batch.token):  # copies of it could not be read elsewhere
            return
        until = min(fresh_until, batch.expires_at)
        if until <= dt.datetime.now(dt.UTC):
            return
        try:
            async with self._health.guard():
                await self._keep(
                    keys=[key],
                    args=[account, catalog_version, _epoch_ms(until),
                          _epoch_ms(batch.expires_at), batch.token, answer, _px(until)],
                )  # fmt: skip
        except REDIS_ERRORS:
            pass
