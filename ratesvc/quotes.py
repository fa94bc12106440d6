"""Saving upstream calls: the per-leg quote cache, single-flight of identical calls, quote store.

* :class:`LegCache` keeps each *successful* leg's rate rows (aiocache; the in-memory backend is
  bounded by a maximum number of entries). Entries live for the longest staleness ever accepted
  (``RATESVC_QUOTE_MAX_STALE_S``); whether one is fresh enough is decided per request from its
  ``quoted_at``.
* :class:`SingleFlight` lets identical legs in flight at the same moment share one upstream call.
  A waiter that leaves (deadline, client gone) does not cancel the call for the others; the call
  is cancelled only when its last waiter leaves. A finished call is forgotten at once, so a
  failure is never handed to a later request.
* :class:`QuoteStore` remembers every quote handed out until it expires, so ``POST /v1/labels``
  can buy exactly what was quoted. Quotes are kept per answer (one batch, one random token),
  since the quotes of one answer share their shipment and expiry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from aiocache import SimpleMemoryCache

from ratesvc.models import Address, RateRow, ShipmentIn

T = TypeVar("T")


class CachedLeg(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    rows: list[RateRow]
    quoted_at: dt.datetime


class _BoundedMemoryCache(SimpleMemoryCache):  # type: ignore[misc]
    """aiocache's memory backend, evicting the oldest entries beyond ``max_entries``."""

    def __init__(self, *, max_entries: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_entries = max_entries

    async def _set(self, key: str, value: Any, ttl: float | None = None, **kwargs: Any) -> Any:
        self._cache.pop(key, None)  # re-inserting moves the key to the young end
        result = await super()._set(key, value, ttl=ttl, **kwargs)
        while len(self._cache) > self._max_entries:
            await self._delete(next(iter(self._cache)))
        return result


class LegCache:
    """Rate rows of successful legs, by canonical leg key."""

    def __init__(self, *, backend: str, max_entries: int, ttl_s: float) -> None:
        if backend != "memory":
            raise ValueError(f"unknown quote cache backend {backend!r}")
        # timeout=None: no asyncio.wait_for (a task per call) around in-memory dict operations
        self._cache = _BoundedMemoryCache(max_entries=max_entries, timeout=None)
        self._ttl_s = ttl_s

    async def get(self, key: str) -> CachedLeg | None:
        value = await self._cache.get(key)
        return value if isinstance(value, CachedLeg) else None

    async def get_many(self, keys: list[str]) -> list[CachedLeg | None]:
        values = await self._cache.multi_get(keys)
        return [value if isinstance(value, CachedLeg) else None for value in values]

    async def put(self, key: str, value: CachedLeg) -> None:
        await self._cache.set(key, value, ttl=self._ttl_s)

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


class QuoteLine(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    carrier_code: str
    service_code: str
    service_name: str
    package_codes: list[str | None]
    total: str
    quoted_at: dt.datetime


class QuoteBatch(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The quotes of one ``POST /v1/rates`` answer: they share a shipment and an expiry.

    Quote ids are ``qt_`` + the batch's token + the quote's index in hexadecimal.
    """

    token: str
    account: str
    shipment: ShipmentIn
    ship_from: Address
    currency: str
    expires_at: dt.datetime
    lines: list[QuoteLine]
    sale_id: str | None = None
    task_id: str | None = None


TOKEN_LENGTH = 22  # secrets.token_urlsafe(16)


def new_token() -> str:
    return secrets.token_urlsafe(16)


def quote_id(token: str, index: int) -> str:
    return f"qt_{token}{index:x}"


@dataclass
class QuoteStore:
    """Quote batches by token, in memory, bounded by ``max_entries`` batches.

    An expired quote is kept for ``grace`` more, so asking for it says *expired* (410), not
    *unknown* (404).
    """

    max_entries: int = 100_000
    grace: dt.timedelta = dt.timedelta(days=1)
    _batches: OrderedDict[str, QuoteBatch] = field(default_factory=OrderedDict)

    def put(self, batch: QuoteBatch) -> None:
        self._batches[batch.token] = batch
        while len(self._batches) > self.max_entries:
            self._batches.popitem(last=False)
        now = dt.datetime.now(dt.UTC)
        while self._batches:
            oldest = next(iter(self._batches.values()))
            if oldest.expires_at + self.grace > now:
                return
            self._batches.popitem(last=False)

    def get(self, quote_id: str) -> StoredQuote | None:
        token, index = quote_id[3 : 3 + TOKEN_LENGTH], quote_id[3 + TOKEN_LENGTH :]
        batch = self._batches.get(token)
        if not quote_id.startswith("qt_") or batch is None:
            return None
        try:
            line = batch.lines[int(index, 16)]
        except (ValueError, IndexError):
            return None
        return StoredQuote(
            quote_id=quote_id, account=batch.account, carrier_code=line.carrier_code,
            service_code=line.service_code, service_name=line.service_name,
            package_codes=line.package_codes, shipment=batch.shipment, ship_from=batch.ship_from,
            total=line.total, currency=batch.currency, quoted_at=line.quoted_at,
            expires_at=batch.expires_at, sale_id=batch.sale_id, task_id=batch.task_id,
        )  # fmt: skip
