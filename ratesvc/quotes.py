"""Saving upstream calls: the per-leg quote cache, single-flight of identical calls, quote store.

* :class:`LegCache` keeps each *successful* leg's rate rows (aiocache; the in-memory backend is
  bounded by a number of entries and an estimate of the bytes they hold). Entries live for the
  longest staleness ever accepted (``RATESVC_QUOTE_MAX_STALE_S``); whether one is fresh enough is
  decided per request from its ``quoted_at``.
* :class:`SingleFlight` lets identical legs in flight at the same moment share one upstream call.
  A waiter that leaves (deadline, client gone) does not cancel the call for the others; the call
  is cancelled only when its last waiter leaves. A finished call is forgotten at once, so a
  failure is never handed to a later request.
* :class:`QuoteStore` remembers the quotes handed out, so ``POST /v1/labels`` can buy exactly what
  was quoted, within a byte budget: the oldest answers go first when it is full, so a busy service
  may forget a quote before it expires. Quotes are kept per answer (one batch, one random token),
  since the quotes of one answer share their shipment and expiry.

These are the embedded (one process) implementations of :class:`LegCacheProtocol`,
:class:`QuoteStoreProtocol` and :class:`SharedFlights`; :mod:`ratesvc.storage.shared_quotes`
builds them, or their Redis counterparts that several replicas share.

Memory is bounded by *estimates* (:func:`held_bytes`): the msgpack size of what an entry keeps,
times how much larger the same data is as Python objects, plus a fixed cost per entry. The
factors were measured with ``tracemalloc`` (``tests/test_quotes.py`` keeps them honest).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Protocol, TypeVar

import msgspec
from aiocache import SimpleMemoryCache

from ratesvc.byte_lru import ByteLRU
from ratesvc.models import Address, RateRow, ShipmentIn

T = TypeVar("T")

MIB = 1 << 20
ENTRY_BYTES = 400  # an entry's own cost: the map's node and slot, its key, the size kept with it
_msgpack = msgspec.msgpack.Encoder()


AwareDatetime = Annotated[dt.datetime, msgspec.Meta(tz=True)]
"""A moment kept for later (in Redis too): decoding one without a zone fails, so a foreign or
damaged entry is a miss, never a naive datetime subtracted from an aware one."""

_INDEX = re.compile(r"0|[1-9a-f][0-9a-f]{0,7}")  # as quote_id() writes it


def held_bytes(value: object, *, per_encoded_byte: float, extra: int = 0) -> int:
    """Estimated memory an entry holding ``value`` costs (see the module docstring)."""
    return int(len(_msgpack.encode(value)) * per_encoded_byte) + ENTRY_BYTES + extra


class CachedLeg(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    rows: list[RateRow]
    quoted_at: AwareDatetime


class LegCacheProtocol(Protocol):
    """Rate rows of successful legs, by canonical leg key (what :class:`Rater` reads and fills)."""

    @property
    def held_bytes(self) -> int: ...

    async def get(self, key: str) -> CachedLeg | None: ...

    async def get_many(self, keys: list[str]) -> list[CachedLeg | None]: ...

    async def put(self, key: str, value: CachedLeg) -> None: ...

    async def close(self) -> None: ...


class SharedFlights(Protocol):
    """One upstream call per leg across replicas (behind the in-process :class:`SingleFlight`).

    ``call`` asks ShipStation and puts the answer in the cache; ``known`` is the entry the caller
    saw in the cache (None: none), so a fresher one another replica wrote meanwhile is taken
    instead of calling again.
    """

    async def run(
        self,
        key: str,
        call: Callable[[], Awaitable[CachedLeg]],
        *,
        known: CachedLeg | None,
        deadline: float,
    ) -> CachedLeg: ...


# Per msgpack byte, what each kind of entry costs as Python objects: measured with tracemalloc on
# unshared copies of real answers (8 carriers, 1-3 packages), so the estimates are within about
# 10 % of that and above what the service holds (its quotes share strings with the cached legs).
LEG_PER_ENCODED_BYTE = 4.2  # mostly Decimals and short strings


class _BoundedMemoryCache(SimpleMemoryCache):  # type: ignore[misc]
    """aiocache's memory backend, under ``max_entries`` and ``max_bytes``, oldest out first.

    Every entry lives for the same ``ttl_s``, so the oldest entry is also the first to expire:
    expired entries are dropped from the old end as new ones arrive and never read, with no
    timer per entry.
    """

    def __init__(self, *, max_entries: int, max_bytes: int, ttl_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._held: ByteLRU[str, tuple[float, Any]] = ByteLRU(max_bytes)

    @property
    def held_bytes(self) -> int:
        return self._held.bytes

    def _live(self, key: str, now: float) -> Any:
        held = self._held.get(key)
        return None if held is None or held[0] <= now else held[1]

    async def _get(self, key: str, encoding: str = "utf-8", _conn: Any = None) -> Any:
        return self._live(key, time.monotonic())

    async def _multi_get(self, keys: list[str], encoding: str = "utf-8", _conn: Any = None) -> Any:
        now = time.monotonic()
        return [self._live(key, now) for key in keys]

    async def _set(self, key: str, value: Any, ttl: float | None = None, **kwargs: Any) -> Any:
        now = time.monotonic()
        size = held_bytes(value, per_encoded_byte=LEG_PER_ENCODED_BYTE, extra=len(key))
        self._held.put(key, (now + self._ttl_s, value), size)
        while len(self._held) > self._max_entries:
            self._held.pop_oldest()
        while (oldest := self._held.oldest()) is not None and oldest[0] <= now:
            self._held.pop_oldest()
        return True

    async def _delete(self, key: str, _conn: Any = None) -> int:
        return 0 if self._held.pop(key) is None else 1

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        self._held.clear()
        return True


class LegCache:
    """Rate rows of successful legs, by canonical leg key."""

    def __init__(self, *, backend: str, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        if backend != "memory":
            raise ValueError(f"unknown quote cache backend {backend!r}")
        # timeout=None: no asyncio.wait_for (a task per call) around in-memory dict operations
        self._cache = _BoundedMemoryCache(
            max_entries=max_entries, max_bytes=max_bytes, ttl_s=ttl_s, timeout=None
        )

    @property
    def held_bytes(self) -> int:
        """The estimate of what the cached legs hold in memory."""
        return self._cache.held_bytes

    async def get(self, key: str) -> CachedLeg | None:
        value = await self._cache.get(key)
        return value if isinstance(value, CachedLeg) else None

    async def get_many(self, keys: list[str]) -> list[CachedLeg | None]:
        values = await self._cache.multi_get(keys)
        return [value if isinstance(value, CachedLeg) else None for value in values]

    async def put(self, key: str, value: CachedLeg) -> None:
        await self._cache.set(key, value)

    async def close(self) -> None:
        await self._cache.clear()


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


class SingleFlight(Generic[T]):
    """One in-flight call per key, shared by everyone who asks while it runs."""

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(task=asyncio.create_task(self._fly(key, call)))
            self._flights[key] = flight
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # the last waiter left: nobody wants the answer
                self._forget(key, flight.task)

    async def _fly(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        finally:
            self._forget(key, asyncio.current_task())

    def _forget(self, key: str, task: object) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]


class StoredQuote(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Everything needed to buy a quote later: what, for which parcels, from where to where."""

    quote_id: str
    account: str
    carrier_code: str
    service_code: str
    service_name: str
    package_codes: list[str | None]
    shipment: ShipmentIn
    ship_from: Address
    total: str
    currency: str
    quoted_at: dt.datetime
    expires_at: dt.datetime
    sale_id: str | None = None
    task_id: str | None = None
    order_number: str | None = None  # the sale's, for people looking for its label


class QuoteLine(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    carrier_code: str
    service_code: str
    service_name: str
    package_codes: list[str | None]
    total: str
    quoted_at: AwareDatetime


class QuoteBatch(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The quotes of one ``POST /v1/rates`` answer: they share a shipment and an expiry.

    Quote ids are ``qt_`` + the batch's token + the quote's index in hexadecimal.
    """

    token: str
    account: str
    shipment: ShipmentIn
    ship_from: Address
    currency: str
    expires_at: AwareDatetime
    lines: list[QuoteLine]
    sale_id: str | None = None
    task_id: str | None = None
    order_number: str | None = None


TOKEN_LENGTH = 22  # secrets.token_urlsafe(16)


class _TokenPool:
    """Tokens drawn from the OS 256 at a time (one ``os.urandom`` call instead of one each);
    emptied in a forked child, so two workers never hand out the same token."""

    def __init__(self) -> None:
        self._tokens: list[str] = []
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._tokens = []

    def take(self) -> str:
        if not self._tokens:
            self._tokens = new_tokens(256)
        return self._tokens.pop()


def new_token() -> str:
    """22 URL-safe characters, 128 random bits (as ``secrets.token_urlsafe(16)``)."""
    return _POOL.take()


def new_tokens(count: int) -> list[str]:
    """``count`` tokens like :func:`new_token`'s, drawn at once."""
    drawn = base64.urlsafe_b64encode(secrets.token_bytes(18 * count)).decode()
    return [drawn[i : i + TOKEN_LENGTH] for i in range(0, 24 * count, 24)]


_POOL = _TokenPool()


def quote_id(token: str, index: int) -> str:
    return f"qt_{token}{index:x}"


BATCH_PER_ENCODED_BYTE = 3.5  # see LEG_PER_ENCODED_BYTE


def lines_bytes(lines: list[QuoteLine]) -> int:
    """The share of quote lines in a batch's estimate (answers made alike share one figure)."""
    return int(len(_msgpack.encode(lines)) * BATCH_PER_ENCODED_BYTE)


def batch_bytes(batch: QuoteBatch, *, lines: int | None = None) -> int:
    """Estimated memory of ``batch``; ``lines``: the share of its lines, when already known."""
    if lines is None:
        return held_bytes(batch, per_encoded_byte=BATCH_PER_ENCODED_BYTE)
    rest = (batch.shipment, batch.ship_from)
    return held_bytes(rest, per_encoded_byte=BATCH_PER_ENCODED_BYTE, extra=lines)


class QuoteStoreProtocol(Protocol):
    """Where the quotes handed out are kept until they are bought (or expire)."""

    @property
    def held_bytes(self) -> int: ...

    async def put(self, batch: QuoteBatch, *, size: int | None = None) -> None:
        """Keep ``batch``; ``size`` is its :func:`batch_bytes`, when the caller knows it."""

    async def get(self, quote_id: str) -> StoredQuote | None:
        """The quote, expired or not, or None when it is unknown (or forgotten)."""


def split_quote_id(quote_id: str) -> tuple[str, int] | None:
    """(batch token, index) of a well-formed quote id, else None."""
    token, index = quote_id[3 : 3 + TOKEN_LENGTH], quote_id[3 + TOKEN_LENGTH :]
    if not quote_id.startswith("qt_") or len(token) != TOKEN_LENGTH:
        return None
    if not _INDEX.fullmatch(index):  # int() also takes "-1", " 0", "0_0", "٠"
        return None
    return token, int(index, 16)


def stored_quote(batch: QuoteBatch, quote_id: str, index: int) -> StoredQuote | None:
    """Quote ``index`` of ``batch``, named ``quote_id``; None past the batch's last quote."""
    try:
        line = batch.lines[index]
    except IndexError:
        return None
    return StoredQuote(
        quote_id=quote_id, account=batch.account, carrier_code=line.carrier_code,
        service_code=line.service_code, service_name=line.service_name,
        package_codes=line.package_codes, shipment=batch.shipment, ship_from=batch.ship_from,
        total=line.total, currency=batch.currency, quoted_at=line.quoted_at,
        expires_at=batch.expires_at, sale_id=batch.sale_id, task_id=batch.task_id,
        order_number=batch.order_number,
    )  # fmt: skip


class QuoteStore:
    """Quote batches by token, in memory, under ``max_bytes`` (estimated), oldest out first.

    An expired quote is kept for ``grace`` more, so asking for it says *expired* (410), not
    *unknown* (404); past that it is dropped when it is the oldest.
    """

    def __init__(
        self, *, max_bytes: int = 64 * MIB, grace: dt.timedelta = dt.timedelta(days=1)
    ) -> None:
        self.grace = grace
        self._batches: ByteLRU[str, QuoteBatch] = ByteLRU(max_bytes)

    @property
    def held_bytes(self) -> int:
        """The estimate of what the stored quotes hold in memory."""
        return self._batches.bytes

    def __len__(self) -> int:
        """Answers (batches of quotes) held."""
        return len(self._batches)

    def size_of(self, token: str) -> int | None:
        """The estimate a batch was stored with, if it is still here."""
        return self._batches.size_of(token)

    async def put(self, batch: QuoteBatch, *, size: int | None = None) -> None:
        """Keep ``batch``; ``size`` is its :func:`batch_bytes`, when the caller knows it."""
        self.keep(batch, size=size)

    async def get(self, quote_id: str) -> StoredQuote | None:
        return self.find(quote_id)

    def keep(
        self, batch: QuoteBatch, *, size: int | None = None, now: dt.datetime | None = None
    ) -> None:
        """:meth:`put`, without waiting: the store is in this process. ``now``: the caller's
        reading of the clock, when it has one."""
        self._batches.put(batch.token, batch, batch_bytes(batch) if size is None else size)
        now = dt.datetime.now(dt.UTC) if now is None else now
        while (oldest := self._batches.oldest()) is not None and oldest is not batch:
            if oldest.expires_at + self.grace > now:
                return
            self._batches.pop_oldest()

    def batches(self) -> list[QuoteBatch]:
        """The batches held, oldest first (a copy)."""
        return self._batches.values()

    def drop(self, token: str) -> None:
        """Forget a batch (kept elsewhere now)."""
        self._batches.pop(token)

    def find(self, quote_id: str) -> StoredQuote | None:
        """:meth:`get`, without waiting."""
        where = split_quote_id(quote_id)
        batch = None if where is None else self._batches.get(where[0])
        if where is None or batch is None:
            return None
        return stored_quote(batch, quote_id, where[1])
