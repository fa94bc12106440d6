"""Rate shopping: one shipment, every eligible carrier at once, partial results as data.

:meth:`Rater.rate` plans one leg per (carrier × package), runs them all concurrently under one
absolute deadline (each leg inside ``asyncio.timeout_at``, stragglers cancelled and awaited by the
``TaskGroup``), and turns the rows into quotes:

* a leg is answered from the cache when its entry is younger than ``max_age_s``, else by
  ShipStation through :class:`~ratesvc.quotes.SingleFlight` (and, when replicas share a cache,
  their :class:`~ratesvc.quotes.SharedFlights`: one call whichever replica asks); when the key
  pair's limiter cannot serve it before the deadline, a cached answer up to ``max_stale_s`` old
  is used instead and the quote says ``stale`` with its age;
* with several packages a quote covers all of them: costs are summed per service (and per package
  variant) and a service missing for any package is not offered; a carrier with any failed leg
  offers nothing and is listed in ``errors``;
* markup (percent of shipment + other cost, plus flat; a carrier's markup overrides only the
  fields it sets, see :class:`~ratesvc.config.Markup`) is added in ``Decimal``; each figure is
  rounded half-up to cents once, and ``total`` is the sum of the rounded figures;
* quotes are sorted by total, then carrier, service, name and package code, and remembered in the
  :class:`~ratesvc.quotes.QuoteStore` until they expire (or its byte budget needs the room).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.byte_lru import ByteLRU
from ratesvc.config import Account, MarkupRule
from ratesvc.errors import (
    InvalidRequest,
    UpstreamFailure,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ratesvc.legs import Leg, Parcel, Route, make_leg
from ratesvc.models import (
    CarrierCatalogEntry,
    LegError,
    Quote,
    QuotePackage,
    RateRow,
    RatesResponse,
    ShipmentIn,
)
from ratesvc.quotes import (
    LEG_PER_ENCODED_BYTE,
    MIB,
    CachedLeg,
    LegCacheProtocol,
    QuoteBatch,
    QuoteLine,
    QuoteStoreProtocol,
    SharedFlights,
    SingleFlight,
    StoredQuote,
    batch_bytes,
    held_bytes,
    lines_bytes,
    new_token,
    quote_id,
)
from ratesvc.units import to_cents

CURRENCY = "USD"  # ShipStation v1 prices in the account's currency; US accounts are USD


@dataclass(frozen=True)
class LegAnswer:
    entry: CachedLeg  # the cache entry the rows come from (its identity keys the quote memo)
    cached: bool
    stale: bool = False

    @property
    def rows(self) -> list[RateRow]:
        return self.entry.rows

    @property
    def quoted_at(self) -> dt.datetime:
        return self.entry.quoted_at


@dataclass(frozen=True)
class _Made:
    """What a set of leg outcomes makes: quote templates (no id or expiry), lines and errors."""

    quotes: list[Quote]
    lines: list[QuoteLine]
    errors: list[LegError]
    lines_bytes: int  # the lines' share of the estimate of every batch holding them


MADE_PER_ENCODED_BYTE = 3.2  # quotes and lines (see ratesvc.quotes.LEG_PER_ENCODED_BYTE)


class _Memo:
    """The last things made, by key, under ``max_bytes`` (least recently used goes first).

    Keys hold ``id()`` of cache entries; the values keep those entries alive via the quotes'
    shares, so an id cannot be reused while its key is here (the entries are counted too).
    """

    def __init__(self, max_bytes: int) -> None:
        self._items: ByteLRU[object, tuple[_Made, list[LegAnswer]]] = ByteLRU(max_bytes)

    @property
    def held_bytes(self) -> int:
        return self._items.bytes

    def get(self, key: object) -> _Made | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.touch(key)
        return item[0]

    def put(self, key: object, made: _Made, answers: list[LegAnswer]) -> None:
        legs = sum(held_bytes(a.entry, per_encoded_byte=LEG_PER_ENCODED_BYTE) for a in answers)
        size = held_bytes((made.quotes, made.errors), per_encoded_byte=MADE_PER_ENCODED_BYTE,
                          extra=made.lines_bytes + legs + _key_bytes(key))  # fmt: skip
        self._items.put(key, (made, answers), size)


def _key_bytes(key: object) -> int:
    """What a memo key holds: it can be large (a request's list of up to 200 service codes)."""
    if isinstance(key, tuple):
        return sys.getsizeof(key) + sum(_key_bytes(part) for part in key)
    return sys.getsizeof(key)


@dataclass(frozen=True)
class _Priced:
    """One upstream row, as one package's share of a quote."""

    carrier_code: str
    row: RateRow
    package_code: str | None
    answer: LegAnswer
    variant: str  # which package variant the row is ("" when the leg asked for one package type)


@dataclass(frozen=True)
class Rating:
    """An answer, the quote batch it handed out, and whether it may be replayed."""

    response: RatesResponse
    batch: QuoteBatch
    replayable: bool
    fresh_until: dt.datetime


class Rater:
    """Rates shipments for every account of the app; shares cache, flights and quote store."""

    def __init__(
        self,
        *,
        cache: LegCacheProtocol,
        store: QuoteStoreProtocol,
        max_stale_s: float,
        memo_max_bytes: int = 8 * MIB,
        shared_flights: SharedFlights | None = None,
    ) -> None:
        self._cache = cache
        self._store = store
        self._flights: SingleFlight[CachedLeg] = SingleFlight()
        self._shared = shared_flights
        self._max_stale_s = max_stale_s
        self._made = _Memo(max_bytes=memo_max_bytes)

    async def rate(
        self,
        services: AccountServices,
        shipment: ShipmentIn,
        *,
        carriers: list[str] | None,
        service_codes: list[str] | None,
        max_age_s: float | None,
        deadline: float,
        sale_id: str | None = None,
        task_id: str | None = None,
        order_number: str | None = None,
    ) -> Rating:
        account = services.account
        ship_from = shipment.ship_from or account.ship_from
        if ship_from is None:
            raise InvalidRequest.field(
                "shipment.ship_from", "is required: the account has no default ship-from"
            )
        catalog = await services.catalog.get(deadline=deadline)
        plan = _plan_carriers(catalog.carriers, carriers, service_codes)
        plan = _fit_package_codes(catalog.carriers, plan, shipment)
        route = Route.of(ship_from, shipment.ship_to, shipment.confirmation)
        parcels = [Parcel.of(package) for package in shipment.packages]
        prefix = account.shipstation.cache_id()  # never key_id(): 32 bits collide
        legs = {
            (carrier_code, index): make_leg(
                key_prefix=prefix, carrier_code=carrier_code, service_code=service_code,
                route=route, parcel=parcel,
            )
            for carrier_code, service_code in plan
            for index, parcel in enumerate(parcels)
        }  # fmt: skip
        max_age = account.quote_ttl_s if max_age_s is None else max_age_s
        outcomes = await self._answer_legs(services, legs, max_age, deadline)

        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        token = new_token()
        expires_at = now + dt.timedelta(seconds=account.quote_ttl_s)
        answers = [o for o in outcomes.values() if isinstance(o, LegAnswer)]
        memo_key: tuple[object, ...] | None = None
        if len(answers) == len(outcomes) and not any(a.stale for a in answers):
            memo_key = (
                account.name, services.catalog.version, tuple(service_codes or ()),
                tuple(p.box for p in shipment.packages),
                tuple(plan), tuple((id(a.entry), a.cached) for a in answers),
            )  # fmt: skip
        made = self._made.get(memo_key) if memo_key is not None else None
        if made is None:
            made = self._make(
                account, catalog.carriers, plan, legs, outcomes, shipment, service_codes, now
            )
            if memo_key is not None:
                self._made.put(memo_key, made, answers)
        templates, errors = made.quotes, made.errors
        quotes = [
            msgspec.structs.replace(q, quote_id=quote_id(token, i), expires_at=expires_at)
            for i, q in enumerate(templates)
        ]
        batch = QuoteBatch(
            token=token, account=account.name, shipment=shipment, ship_from=ship_from,
            currency=CURRENCY, expires_at=expires_at, sale_id=sale_id, task_id=task_id,
            order_number=order_number,
            lines=made.lines,
        )  # fmt: skip
        await self._store.put(batch, size=batch_bytes(batch, lines=made.lines_bytes))
        oldest = min((a.quoted_at for a in answers), default=now)
        return Rating(
            response=RatesResponse(quotes=quotes, errors=errors, complete=not errors,
                                   sale_id=sale_id, task_id=task_id),
            batch=batch,
            replayable=not errors and all(a.cached and not a.stale for a in answers),
            fresh_until=oldest + dt.timedelta(seconds=max_age),
        )  # fmt: skip

    def _make(
        self,
        account: Account,
        carriers: list[CarrierCatalogEntry],
        plan: list[tuple[str, str | None]],
        legs: dict[tuple[str, int], Leg],
        outcomes: dict[tuple[str, int], LegAnswer | UpstreamFailure],
        shipment: ShipmentIn,
        service_codes: list[str] | None,
        now: dt.datetime,
    ) -> _Made:
        """Quotes (without id and expiry yet) and errors from the legs' outcomes."""
        packages_by_name = {c.carrier_code: {p.name: p.package_code for p in c.packages}
                            for c in carriers}  # fmt: skip
        count = len(shipment.packages)
        priced: list[list[_Priced]] = []
        errors: list[LegError] = []
        answered = 0
        failed: list[UpstreamFailure] = []
        for carrier_code, _ in plan:
            failures = [(i, outcomes[carrier_code, i]) for i in range(count)
                        if isinstance(outcomes[carrier_code, i], UpstreamFailure)]  # fmt: skip
            if failures:
                for index, failure in failures:
                    assert isinstance(failure, UpstreamFailure)
                    failed.append(failure)
                    errors.append(_leg_error(carrier_code, failure, shipment, index))
                continue
            answered += 1
            per_package = []
            for i in range(count):
                answer = outcomes[carrier_code, i]
                assert isinstance(answer, LegAnswer)
                per_package.append(
                    _priced_rows(answer, legs[carrier_code, i],
                                 packages_by_name.get(carrier_code, {}), service_codes)
                )  # fmt: skip
            priced += _combine(per_package)
        if plan and answered == 0:
            raise _every_leg_failed(failed, errors)
        drafts = sorted(
            (_draft(account.markup.for_carrier(shares[0].carrier_code), shares)
             for shares in priced),
            key=lambda d: d.order,
        )  # fmt: skip
        lines = [d.line() for d in drafts]
        return _Made(
            quotes=[d.quote("", now, now, shipment) for d in drafts],
            lines=lines,
            errors=errors,
            lines_bytes=lines_bytes(lines),
        )

    @property
    def quotes(self) -> QuoteStoreProtocol:
        return self._store

    @property
    def cache(self) -> LegCacheProtocol:
        return self._cache

    @property
    def memo_bytes(self) -> int:
        """The estimate of what the memo of quotes made from cache entries holds in memory."""
        return self._made.held_bytes

    async def stored(self, quote_id: str) -> StoredQuote | None:
        return await self._store.get(quote_id)

    # --- legs ------------------------------------------------------------------------------------

    async def _answer_legs(
        self,
        services: AccountServices,
        legs: dict[tuple[str, int], Leg],
        max_age_s: float,
        deadline: float,
    ) -> dict[tuple[str, int], LegAnswer | UpstreamFailure]:
        """Cached legs straight from the cache (one read); the rest concurrently upstream."""
        unique = {leg.key: leg for leg in legs.values()}
        entries = dict(zip(unique, await self._cache.get_many(list(unique)), strict=True))
        answers: dict[str, LegAnswer | UpstreamFailure] = {}
        missing: dict[str, CachedLeg | None] = {}
        for key, cached in entries.items():
            if cached is not None and _age_s(cached) <= max_age_s:
                answers[key] = LegAnswer(entry=cached, cached=True)
            else:
                missing[key] = cached

        async def one(leg: Leg, cached: CachedLeg | None) -> LegAnswer | UpstreamFailure:
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._fetch(services, leg, cached, deadline)
            except TimeoutError:
                return UpstreamTimeout(
                    f"no answer within {services.account.request_deadline_s:g} s",
                    upstream="shipstation", endpoint="getrates",
                )  # fmt: skip
            except UpstreamFailure as failure:
                return failure

        if missing:
            async with asyncio.TaskGroup() as group:
                tasks = {key: group.create_task(one(unique[key], cached))
                         for key, cached in missing.items()}  # fmt: skip
            answers.update((key, task.result()) for key, task in tasks.items())
        return {where: answers[leg.key] for where, leg in legs.items()}

    async def _fetch(
        self, services: AccountServices, leg: Leg, cached: CachedLeg | None, deadline: float
    ) -> LegAnswer:
        async def upstream() -> CachedLeg:
            rows = await services.shipstation.get_rates(leg.rate_request(), deadline=deadline)
            entry = CachedLeg(rows=rows, quoted_at=dt.datetime.now(dt.UTC).replace(microsecond=0))
            await self._cache.put(leg.key, entry)
            return entry

        async def call() -> CachedLeg:
            if self._shared is None:
                return await upstream()
            return await self._shared.run(leg.key, upstream, known=cached, deadline=deadline)

        try:
            entry = await self._flights.run(leg.key, call)
        except UpstreamThrottled:
            if cached is not None and _age_s(cached) <= self._max_stale_s:
                return LegAnswer(entry=cached, cached=True, stale=True)
            raise
        return LegAnswer(entry=entry, cached=False)


@dataclass(frozen=True)
class _Draft:
    """A quote before it gets its id: figures already rounded, sort order fixed."""

    carrier_code: str
    shares: list[_Priced]
    figures: tuple[Decimal, Decimal, Decimal, Decimal]  # shipment, other, markup, total
    package_code: str | None  # the one package type of every share, else None

    @property
    def order(self) -> tuple[Decimal, str, str, str, str]:
        row = self.shares[0].row
        return (self.figures[3], self.carrier_code, row.service_code, row.service_name,
                self.package_code or "")  # fmt: skip

    def line(self) -> QuoteLine:
        row = self.shares[0].row
        return QuoteLine(
            carrier_code=self.carrier_code, service_code=row.service_code,
            service_name=row.service_name, package_codes=[s.package_code for s in self.shares],
            total=str(self.figures[3]), quoted_at=min(s.answer.quoted_at for s in self.shares),
        )  # fmt: skip

    def quote(
        self, quote_id: str, expires_at: dt.datetime, now: dt.datetime, shipment: ShipmentIn
    ) -> Quote:
        row, shares = self.shares[0].row, self.shares
        quoted_at = min(s.answer.quoted_at for s in shares)
        stale = any(s.answer.stale for s in shares)
        return Quote(
            quote_id=quote_id, carrier_code=self.carrier_code, service_code=row.service_code,
            service_name=row.service_name, package_code=self.package_code,
            shipment_cost=str(self.figures[0]), other_cost=str(self.figures[1]),
            markup=str(self.figures[2]), total=str(self.figures[3]), currency=CURRENCY,
            packages=len(shares), cached=all(s.answer.cached for s in shares),
            quoted_at=quoted_at, expires_at=expires_at, stale=stale,
            age_s=int((now - quoted_at).total_seconds()) if stale else None,
            breakdown=[
                QuotePackage(
                    box=package.box, package_code=share.package_code,
                    shipment_cost=str(to_cents(share.row.shipment_cost)),
                    other_cost=str(to_cents(share.row.other_cost)),
                )
                for package, share in zip(shipment.packages, shares, strict=True)
            ] if len(shares) > 1 else [],
        )  # fmt: skip


def _draft(rule: MarkupRule, shares: list[_Priced]) -> _Draft:
    shipment_cost = sum((s.row.shipment_cost for s in shares), Decimal(0))
    other_cost = sum((s.row.other_cost for s in shares), Decimal(0))
    markup = (shipment_cost + other_cost) * rule.percent / 100 + rule.flat
    rounded = (to_cents(shipment_cost), to_cents(other_cost), to_cents(markup))
    codes = {s.package_code for s in shares}
    return _Draft(carrier_code=shares[0].carrier_code, shares=shares,
                  figures=(*rounded, sum(rounded, Decimal(0))),
                  package_code=codes.pop() if len(codes) == 1 else None)  # fmt: skip


def _age_s(cached: CachedLeg | None) -> float:
    if cached is None:
        return float("inf")
    return (dt.datetime.now(dt.UTC) - cached.quoted_at).total_seconds()


def _every_leg_failed(failed: list[UpstreamFailure], errors: list[LegError]) -> UpstreamFailure:
    """The error of a rating no carrier answered: a timeout when all timed out, throttled (with
    the soonest reset, for Retry-After) when all were rate-limited, else unavailable."""
    detail = "; ".join(f"{e.carrier_code}: {e.message}" for e in errors)
    if all(isinstance(f, UpstreamTimeout) for f in failed):
        return UpstreamTimeout(f"no carrier answered before the deadline ({detail})")
    if all(isinstance(f, UpstreamThrottled) for f in failed):
        resets = [f.reset_after_s for f in failed
                  if isinstance(f, UpstreamThrottled) and f.reset_after_s is not None]  # fmt: skip
        return UpstreamThrottled(
            f"every carrier is rate-limited ({detail})", reset_after_s=min(resets, default=None)
        )
    return UpstreamUnavailable(f"every carrier failed ({detail})")


def _plan_carriers(
    connected: list[CarrierCatalogEntry],
    carriers: list[str] | None,
    service_codes: list[str] | None,
) -> list[tuple[str, str | None]]:
    """(carrier, the single service to ask for or None) for each carrier worth calling."""
    codes = [c.carrier_code for c in connected]
    if carriers is not None:
        for i, code in enumerate(carriers):
            if code not in codes:
                raise InvalidRequest.field(
                    f"carriers[{i}]",
                    f"{code!r} is not connected to this account (connected: {', '.join(codes)})",
                )
    plan: list[tuple[str, str | None]] = []
    for entry in connected:
        if carriers is not None and entry.carrier_code not in carriers:
            continue
        if service_codes is None:
            plan.append((entry.carrier_code, None))
            continue
        if not entry.services:  # services unknown (not listed): ask for all, filter the rows
            plan.append((entry.carrier_code, None))
            continue
        offered = [s.service_code for s in entry.services if s.service_code in service_codes]
        if offered:  # a carrier offering none of the services is not called at all
            plan.append((entry.carrier_code, offered[0] if len(offered) == 1 else None))
    if service_codes is not None and not plan:
        raise InvalidRequest.field(
            "services", "none of these services is offered by the carriers asked for"
        )
    return plan


def _fit_package_codes(
    connected: list[CarrierCatalogEntry], plan: list[tuple[str, str | None]], shipment: ShipmentIn
) -> list[tuple[str, str | None]]:
    """The plan without the carriers that lack a package type asked for (ShipStation answers an
    unknown ``packageCode`` with a 500); 422 when no carrier of the plan has it. A carrier whose
    package types could not be listed is kept: only ShipStation can tell."""
    if not plan:
        return plan
    listed = {c.carrier_code: {p.package_code for p in c.packages} for c in connected}
    kept = plan
    for i, package in enumerate(shipment.packages):
        code = package.requested_package_code
        if code is None:
            continue
        fits = [(c, s) for c, s in kept if not listed.get(c) or code in listed[c]]
        if not fits:
            known = ", ".join(sorted(set().union(*(listed.get(c, set()) for c, _ in plan))))
            raise InvalidRequest.field(
                f"shipment.packages[{i}].package_code",
                f"{code!r} is not a package type of the carriers asked for (known: {known})",
            )
        kept = fits
    return kept


def _priced_rows(
    answer: LegAnswer, leg: Leg, packages_by_name: dict[str, str], service_codes: list[str] | None
) -> list[_Priced]:
    priced = []
    for row in answer.rows:
        if service_codes is not None and row.service_code not in service_codes:
            continue
        code, variant = leg.package_code, ""
        if code is None:  # a package variant: "USPS Priority Mail - Medium Flat Rate Box"
            _, _, suffix = row.service_name.rpartition(" - ")
            code = packages_by_name.get(suffix)
            variant = code or row.service_name
        priced.append(
            _Priced(carrier_code=leg.carrier_code, row=row, package_code=code, answer=answer,
                    variant=variant)
        )  # fmt: skip
    return priced


def _combine(per_package: list[list[_Priced]]) -> list[list[_Priced]]:
    """Group each package's rows into quotes; keep only groups every package has a row in.

    Rows match by service and package variant. A repeat of the same match within one package
    (two rows nobody can tell apart) is kept apart by its position, so no row is ever dropped.
    """

    def keyed(rows: list[_Priced]) -> dict[tuple[str, str, int], _Priced]:
        seen: dict[tuple[str, str], int] = defaultdict(int)
        out = {}
        for priced in rows:
            base = (priced.row.service_code, priced.variant)
            out[(*base, seen[base])] = priced
            seen[base] += 1
        return out

    if len(per_package) == 1:
        return [[priced] for priced in per_package[0]]
    tables = [keyed(rows) for rows in per_package]
    common = [key for key in tables[0] if all(key in table for table in tables[1:])]
    return [[table[key] for table in tables] for key in common]


def _leg_error(
    carrier_code: str, failure: UpstreamFailure, shipment: ShipmentIn, index: int
) -> LegError:
    box = shipment.packages[index].box if len(shipment.packages) > 1 else None
    if box is None and len(shipment.packages) > 1:
        box = f"package {index + 1}"
    return LegError(
        carrier_code=carrier_code, code=failure.leg_code, message=failure.detail, box=box
    )
