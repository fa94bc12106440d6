"""Rate shopping: one shipment, every eligible carrier at once, partial results as data.

:meth:`Rater.rate` plans one leg per (carrier × package), runs them all concurrently under one
absolute deadline (each leg inside ``asyncio.timeout_at``, stragglers cancelled and awaited by the
``TaskGroup``), and turns the rows into quotes:

* a leg is answered from the cache when its entry is younger than ``max_age_s``, else by
  ShipStation through :class:`~ratesvc.quotes.SingleFlight`; when the key pair's limiter cannot
  serve it before the deadline, a cached answer up to ``max_stale_s`` old is used instead and the
  quote says ``stale`` with its age;
* with several packages a quote covers all of them: costs are summed per service (and per package
  variant) and a service missing for any package is not offered; a carrier with any failed leg
  offers nothing and is listed in ``errors``;
* markup (percent of shipment + other cost, plus flat) is added in ``Decimal``; each figure is
  rounded half-up to cents once, and ``total`` is the sum of the rounded figures;
* quotes are sorted by total, then carrier, service, name and package code, and remembered in the
  :class:`~ratesvc.quotes.QuoteStore` until they expire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from ratesvc.accounts import AccountServices
from ratesvc.errors import (
    InvalidRequest,
    UpstreamFailure,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ratesvc.legs import Leg, make_leg
from ratesvc.models import (
    Address,
    CarrierCatalogEntry,
    LegError,
    Quote,
    QuotePackage,
    RateRow,
    RatesResponse,
    ShipmentIn,
)
from ratesvc.quotes import CachedLeg, LegCache, QuoteStore, SingleFlight, StoredQuote
from ratesvc.units import to_cents

CURRENCY = "USD"  # ShipStation v1 prices in the account's currency; US accounts are USD


@dataclass(frozen=True)
class LegAnswer:
    rows: list[RateRow]
    quoted_at: dt.datetime
    cached: bool
    stale: bool = False


@dataclass(frozen=True)
class _Priced:
    """One upstream row, as one package's share of a quote."""

    row: RateRow
    package_code: str | None
    answer: LegAnswer
    variant: str  # which package variant the row is ("" when the leg asked for one package type)


class Rater:
    """Rates shipments for every account of the app; shares cache, flights and quote store."""

    def __init__(self, *, cache: LegCache, store: QuoteStore, max_stale_s: float) -> None:
        self._cache = cache
        self._store = store
        self._flights: SingleFlight[CachedLeg] = SingleFlight()
        self._max_stale_s = max_stale_s

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
    ) -> RatesResponse:
        account = services.account
        ship_from = shipment.ship_from or account.ship_from
        if ship_from is None:
            raise InvalidRequest.field(
                "shipment.ship_from", "is required: the account has no default ship-from"
            )
        catalog = await services.catalog.get(deadline=deadline)
        plan = _plan_carriers(catalog.carriers, carriers, service_codes)
        legs: dict[tuple[str, int], Leg] = {}
        for carrier_code, service_code in plan:
            for index, package in enumerate(shipment.packages):
                legs[carrier_code, index] = make_leg(
                    key_prefix=account.shipstation.key_id(),
                    carrier_code=carrier_code,
                    service_code=service_code,
                    package=package,
                    ship_from=ship_from,
                    ship_to=shipment.ship_to,
                    confirmation=shipment.confirmation,
                )
        max_age = account.quote_ttl_s if max_age_s is None else max_age_s
        outcomes = await self._run_legs(services, legs, max_age, deadline)

        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        quotes: list[Quote] = []
        errors: list[LegError] = []
        answered = 0
        timeouts_only = True
        packages_by_name = {c.carrier_code: {p.name: p.package_code for p in c.packages}
                            for c in catalog.carriers}  # fmt: skip
        for carrier_code, _ in plan:
            carrier_failures = [
                (index, outcome)
                for (code, index), outcome in outcomes.items()
                if code == carrier_code and isinstance(outcome, UpstreamFailure)
            ]
            if carrier_failures:
                for index, failure in carrier_failures:
                    assert isinstance(failure, UpstreamFailure)
                    timeouts_only &= isinstance(failure, UpstreamTimeout)
                    errors.append(_leg_error(carrier_code, failure, shipment, index))
                continue
            answered += 1
            per_package = [
                _priced_rows(outcomes[carrier_code, i], legs[carrier_code, i],  # type: ignore[arg-type]
                             packages_by_name.get(carrier_code, {}), service_codes)
                for i in range(len(shipment.packages))
            ]  # fmt: skip
            for shares in _combine(per_package):
                quote, stored = self._quote(
                    services, carrier_code, shares, shipment, ship_from, now,
                    sale_id=sale_id, task_id=task_id,
                )  # fmt: skip
                quotes.append(quote)
                self._store.put(stored)
        if plan and answered == 0:
            detail = "; ".join(f"{e.carrier_code}: {e.message}" for e in errors)
            if timeouts_only:
                raise UpstreamTimeout(f"no carrier answered before the deadline ({detail})")
            raise UpstreamUnavailable(f"every carrier failed ({detail})")
        quotes.sort(key=lambda q: (Decimal(q.total), q.carrier_code, q.service_code,
                                   q.service_name, q.package_code or ""))  # fmt: skip
        return RatesResponse(
            quotes=quotes, errors=errors, complete=not errors, sale_id=sale_id, task_id=task_id
        )

    def stored(self, quote_id: str) -> StoredQuote | None:
        return self._store.get(quote_id)

    # --- legs ------------------------------------------------------------------------------------

    async def _run_legs(
        self,
        services: AccountServices,
        legs: dict[tuple[str, int], Leg],
        max_age_s: float,
        deadline: float,
    ) -> dict[tuple[str, int], LegAnswer | UpstreamFailure]:
        async def one(leg: Leg) -> LegAnswer | UpstreamFailure:
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._answer(services, leg, max_age_s, deadline)
            except TimeoutError:
                return UpstreamTimeout(
                    f"no answer within {services.account.request_deadline_s:g} s",
                    upstream="shipstation", endpoint="getrates",
                )  # fmt: skip
            except UpstreamFailure as failure:
                return failure

        async with asyncio.TaskGroup() as group:
            tasks = {where: group.create_task(one(leg)) for where, leg in legs.items()}
        return {where: task.result() for where, task in tasks.items()}

    async def _answer(
        self, services: AccountServices, leg: Leg, max_age_s: float, deadline: float
    ) -> LegAnswer:
        cached = await self._cache.get(leg.key)
        age = _age_s(cached)
        if cached is not None and age <= max_age_s:
            return LegAnswer(rows=cached.rows, quoted_at=cached.quoted_at, cached=True)

        async def fetch() -> CachedLeg:
            rows = await services.shipstation.get_rates(leg.rate_request(), deadline=deadline)
            entry = CachedLeg(rows=rows, quoted_at=dt.datetime.now(dt.UTC).replace(microsecond=0))
            await self._cache.put(leg.key, entry)
            return entry

        try:
            entry = await self._flights.run(leg.key, fetch)
        except UpstreamThrottled:
            if cached is not None and age <= self._max_stale_s:
                return LegAnswer(
                    rows=cached.rows, quoted_at=cached.quoted_at, cached=True, stale=True
                )
            raise
        return LegAnswer(rows=entry.rows, quoted_at=entry.quoted_at, cached=False)

    # --- quotes ----------------------------------------------------------------------------------

    def _quote(
        self,
        services: AccountServices,
        carrier_code: str,
        shares: list[_Priced],
        shipment: ShipmentIn,
        ship_from: Address,
        now: dt.datetime,
        *,
        sale_id: str | None,
        task_id: str | None,
    ) -> tuple[Quote, StoredQuote]:
        account = services.account
        shipment_cost = sum((s.row.shipment_cost for s in shares), Decimal(0))
        other_cost = sum((s.row.other_cost for s in shares), Decimal(0))
        rule = account.markup.for_carrier(carrier_code)
        markup = (shipment_cost + other_cost) * rule.percent / 100 + rule.flat
        figures = [to_cents(shipment_cost), to_cents(other_cost), to_cents(markup)]
        total = sum(figures, Decimal(0))
        codes = [s.package_code for s in shares]
        quoted_at = min(s.answer.quoted_at for s in shares)
        stale = any(s.answer.stale for s in shares)
        quote_id = "qt_" + secrets.token_urlsafe(16)
        expires_at = now + dt.timedelta(seconds=account.quote_ttl_s)
        quote = Quote(
            quote_id=quote_id,
            carrier_code=carrier_code,
            service_code=shares[0].row.service_code,
            service_name=shares[0].row.service_name,
            package_code=codes[0] if len(set(codes)) == 1 else None,
            shipment_cost=str(figures[0]),
            other_cost=str(figures[1]),
            markup=str(figures[2]),
            total=str(total),
            currency=CURRENCY,
            packages=len(shares),
            cached=all(s.answer.cached for s in shares),
            quoted_at=quoted_at,
            expires_at=expires_at,
            stale=stale,
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
        stored = StoredQuote(
            quote_id=quote_id, account=account.name, carrier_code=carrier_code,
            service_code=quote.service_code, service_name=quote.service_name,
            package_codes=codes, shipment=shipment, ship_from=ship_from, total=quote.total,
            currency=CURRENCY, quoted_at=quoted_at, expires_at=expires_at,
            sale_id=sale_id, task_id=task_id,
        )  # fmt: skip
        return quote, stored


def _age_s(cached: CachedLeg | None) -> float:
    if cached is None:
        return float("inf")
    return (dt.datetime.now(dt.UTC) - cached.quoted_at).total_seconds()


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
        priced.append(_Priced(row=row, package_code=code, answer=answer, variant=variant))
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
