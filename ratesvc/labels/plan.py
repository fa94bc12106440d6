"""From a ``POST /v1/labels`` body to a :class:`LabelPlan`: exactly what will be bought.

Everything that can be known before buying is checked here, before anything is recorded: the
quote is the account's and unexpired, the sale is still packed and unshipped and still packs what
was quoted (``sale_changed`` otherwise; for an international sale, the same products in each
box), an international sale can be declared to customs (``customs_incomplete`` otherwise; a
quote's recorded declaration is used as it was quoted), the carrier offers the service and
package, and the plan round-trips through the ledger's format (a box too heavy to record is a
422 naming the box, not a row that cannot be read back).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import zoneinfo

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.config import Account
from ratesvc.customs import packages
from ratesvc.errors import FieldError, InvalidRequest, NotFound, QuoteExpired, SaleChanged
from ratesvc.labels.customs import require_items
from ratesvc.labels.models import LabelPlan, LabelsRequest
from ratesvc.quotes import QuoteStoreProtocol, StoredQuote
from ratesvc.sale_shipments import SaleShipment, shipment_for_sale

_PLAN_CODEC = msgspec.json.Decoder(LabelPlan)
_AT_PACKAGE = re.compile(r"\$\.packages\[(?P<i>[0-9]+)\]\.(?P<field>[\w.\[\]]+)")


def fulfilment_key(sale_id: str, task_id: str) -> str:
    """What a sale label claims besides the client's key: one live label per fulfilment."""
    return f"sale:{sale_id.lower()}:{task_id.lower()}"


def today(account: Account) -> dt.date:
    """Today where the account ships (its ``timezone``; the machine's zone when unset)."""
    if account.timezone is None:
        return dt.datetime.now().astimezone().date()
    return dt.datetime.now(zoneinfo.ZoneInfo(account.timezone)).date()


async def stored_quote(quotes: QuoteStoreProtocol, account: Account, quote_id: str) -> StoredQuote:
    stored = await quotes.get(quote_id)
    if stored is None or stored.account != account.name:
        raise NotFound(f"no quote {quote_id}")
    if stored.expires_at <= dt.datetime.now(dt.UTC):
        raise QuoteExpired(f"quote {quote_id} expired; rate again")
    return stored


async def make_plan(
    services: AccountServices,
    request: LabelsRequest,
    quotes: QuoteStoreProtocol,
    *,
    sale_checked: bool,
    relabel: bool,
) -> LabelPlan:
    """``sale_checked``: the caller read the quoted sale moments ago (automation); ``relabel``:
    the sale's earlier labels were voided (its Ship may stay authorised without tracking)."""
    account = services.account
    ship_date = request.ship_date or today(account)
    if request.write_back and request.sale_id is None and request.quote_id is None:
        raise InvalidRequest.field("write_back", "only goes with a sale_id (or its quote)")
    if ship_date < today(account) - dt.timedelta(days=1):
        raise InvalidRequest.field("ship_date", "must not be in the past")
    deadline = asyncio.get_running_loop().time() + account.request_deadline_s
    if request.quote_id is not None:
        stored = await stored_quote(quotes, account, request.quote_id)
        shipment, ship_from = stored.shipment, stored.ship_from
        carrier, service = stored.carrier_code, stored.service_code
        codes = [code or "package" for code in stored.package_codes]
        sale_id, task_id = stored.sale_id, stored.task_id
        order_number = stored.order_number
        charge: str | None = stored.total
        if sale_id is not None and not sale_checked:  # it may have moved on since quoted
            now = await shipment_for_sale(
                services, sale_id, task_id, deadline=deadline, relabel=relabel
            )
            _check_unchanged(stored, now)
            order_number = now.sale.order_number
            if now.customs is not None and not any(p.customs_items for p in shipment.packages):
                now.require_customs()  # quoted before the sale could be declared: declare now
                shipment = now.shipment
    else:
        carrier, service = request.carrier_code or "", request.service_code or ""
        sale_id = task_id = order_number = None
        charge = None
        if request.sale_id is not None:
            prepared = await shipment_for_sale(
                services, request.sale_id, request.task_id, deadline=deadline, relabel=relabel
            )
            prepared.require_customs()
            shipment = prepared.shipment
            sale_id, task_id = prepared.sale.sale_id, prepared.fulfilment.task_id
            order_number = prepared.sale.order_number
        else:
            assert request.shipment is not None
            shipment = request.shipment
        ship_from_or_none = shipment.ship_from or account.ship_from
        if ship_from_or_none is None:
            raise InvalidRequest.field(
                "shipment.ship_from", "is required: the account has no default ship-from"
            )
        ship_from = ship_from_or_none
        codes = [request.package_code or "package"] * len(shipment.packages)
        await _check_offered(services, carrier, service, codes[0], deadline)
    at = "shipment.packages" if sale_id is None else None
    require_items(ship_from, shipment.ship_to, shipment.packages, at=at)
    plan = LabelPlan(
        carrier_code=carrier, service_code=service, package_codes=codes, ship_from=ship_from,
        ship_to=shipment.ship_to, packages=shipment.packages,
        confirmation=shipment.confirmation, ship_date=ship_date,
        test_label=request.test_label,
        write_back=sale_id is not None and request.write_back is not False,
        sale_id=sale_id, task_id=task_id, quote_id=request.quote_id, charge=charge,
        customs=shipment.customs, order_number=order_number,
    )  # fmt: skip
    return _recordable(plan)


def _check_unchanged(stored: StoredQuote, sale_now: SaleShipment) -> None:
    """The sale still packs the boxes, and ships to the address, that were quoted; when the
    quote declared its boxes' contents, they still hold the same products (whether or not the
    sale can be declared now)."""
    then, now = stored.shipment, sale_now.shipment
    changed = []
    if [(p.weight, p.dimensions) for p in then.packages] != [
        (p.weight, p.dimensions) for p in now.packages
    ]:
        changed.append("its packed boxes")
    if then.ship_to != now.ship_to:
        changed.append("its ship-to address")
    held_then, customs_now = packages.contents(then), sale_now.customs
    if any(held_then) and customs_now is not None and held_then != packages.held(customs_now):
        changed.append("what its boxes hold")  # (SKU, quantity) per box
    if changed:
        raise SaleChanged(
            f"sale {stored.sale_id}: {' and '.join(changed)} changed since quote "
            f"{stored.quote_id} was made; rate it again"
        )


def _recordable(plan: LabelPlan) -> LabelPlan:
    """The plan as the ledger will read it back; what it cannot hold is the caller's 422."""
    try:
        return _PLAN_CODEC.decode(msgspec.json.encode(plan))
    except msgspec.ValidationError as exc:
        match = _AT_PACKAGE.search(str(exc))
        if match is None:
            raise InvalidRequest(f"the label cannot be recorded: {exc}") from exc
        index = int(match["i"])
        parcel = plan.packages[index]
        box = parcel.box or f"box {index + 1}"
        message = (
            f"{box} ({parcel.weight.value:g} {parcel.weight.unit}) cannot be labelled: "
            f"{str(exc).split(' - at ')[0]} for {match['field']}"
        )
        field = f"packages[{index}].{match['field']}"
        raise InvalidRequest(message, [FieldError(field=field, message=message)]) from exc


async def _check_offered(
    services: AccountServices, carrier: str, service: str, package: str, deadline: float
) -> None:
    """Refuse, before buying, what the carrier catalogue says cannot be bought."""
    catalog = await services.catalog.get(deadline=deadline)
    entry = next((c for c in catalog.carriers if c.carrier_code == carrier), None)
    if entry is None:
        connected = ", ".join(c.carrier_code for c in catalog.carriers)
        raise InvalidRequest.field(
            "carrier_code", f"{carrier!r} is not connected to this account ({connected})"
        )
    if entry.services and service not in {s.service_code for s in entry.services}:
        raise InvalidRequest.field("service_code", f"{carrier} offers no service {service!r}")
    if entry.packages and package not in {p.package_code for p in entry.packages}:
        raise InvalidRequest.field("package_code", f"{carrier} has no package type {package!r}")
