"""From a Cin7 Core sale id to the shipment to rate (or a clear refusal).

The sale is read fresh from Cin7 Core every time: its state is the truth (a webhook or an old
answer is only a hint). The fulfilment is the one named by ``task_id``, else the first whose Pack
is AUTHORISED and whose Ship is not. Refusals: 404 when the sale (or the named fulfilment) does not
exist, 409 ``already_shipped`` when the fulfilment has tracking or its Ship is authorised, 409
``sale_not_ready`` when its Pack is not authorised or the sale is voided, 422 when its address
cannot be shipped to.
Product weights and sizes come from the sale's order lines (no extra Cin7 Core calls); what had
to be assumed is returned as ``defaults``.

An international sale (see :func:`ratesvc.customs.is_international`) also gets its customs
declaration, built from the packed boxes and the product records (read through the account's
:class:`~ratesvc.customs.products.ProductRecords`, so once per request and briefly cached). A
complete declaration is put on the shipment (each package declares its own box), so a quote made
from it records it; an incomplete one is kept as ``customs`` for the label path to refuse with
422 ``customs_incomplete`` (rating needs no declaration, so rates are still given).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.customs import Declaration, Incomplete, declaration_for_sale, is_international
from ratesvc.customs.packages import declared, refusal
from ratesvc.errors import (
    AlreadyShipped,
    InvalidRequest,
    NotFound,
    SaleNotReady,
    UpstreamFailure,
    UpstreamNotFound,
)
from ratesvc.models import Address, ShipmentIn
from ratesvc.sales import SHIPPED_STATES, STATUS_AUTHORISED, Fulfilment, Sale, parcels_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaleShipment:
    sale: Sale
    fulfilment: Fulfilment
    shipment: ShipmentIn
    defaults: list[str]
    # None: not international (or no ship-from to tell); else the declaration, or what it lacks
    customs: Declaration | Incomplete | None = None

    def require_customs(self) -> None:
        """422 ``customs_incomplete`` when the sale is international and cannot be declared."""
        if isinstance(self.customs, Incomplete):
            raise refusal(self.sale.sale_id, self.customs)


async def shipment_for_sale(
    services: AccountServices,
    sale_id: str,
    task_id: str | None,
    *,
    deadline: float,
    relabel: bool = False,
    declare: bool = True,
) -> SaleShipment:
    """``relabel``: the sale's earlier labels were voided, so a Ship left authorised without
    tracking (Cin7 Core cannot un-authorise it) may be labelled again. ``declare=False``
    (rating): the declaration is wanted but not needed, so product records that cannot be read
    within half the time left leave the shipment undeclared (``customs`` None; a quote made from
    it is declared when bought) instead of failing the request."""
    if services.cin7 is None:
        raise InvalidRequest.field(
            "sale_id",
            "this account has no Cin7 Core credentials (RATESVC_CIN7_ACCOUNT_ID and "
            "RATESVC_CIN7_APPLICATION_KEY, or the account's cin7 table)",
        )
    try:
        sale = await services.cin7.get_sale(sale_id, deadline=deadline)
    except UpstreamNotFound as exc:
        raise NotFound(f"Cin7 Core has no sale {sale_id}") from exc
    if sale.voided:
        raise SaleNotReady(f"sale {sale_id} is voided in Cin7 Core: nothing may be shipped for it")
    fulfilment = sale.fulfilment(task_id)
    if relabel and task_id is None and fulfilment is None:
        fulfilment = sale.relabelable()
    if fulfilment is None:
        if task_id is not None:
            raise NotFound(f"sale {sale_id} has no fulfilment {task_id}")
        if sale.fulfilments and all(_shipped(f) for f in sale.fulfilments):
            raise AlreadyShipped(f"every fulfilment of sale {sale_id} is already shipped")
        raise SaleNotReady(
            f"no fulfilment of sale {sale_id} is packed and unshipped: authorise its Pack in "
            "Cin7 Core first"
        )
    if fulfilment.has_tracking or (fulfilment.ship_status in SHIPPED_STATES and not relabel):
        raise AlreadyShipped(
            f"fulfilment {fulfilment.task_id} of sale {sale_id} already has tracking or an "
            "authorised Ship; void its labels to ship it again"
        )
    if fulfilment.pack_status != STATUS_AUTHORISED:
        raise SaleNotReady(
            f"fulfilment {fulfilment.task_id} of sale {sale_id}: Pack is "
            f"{fulfilment.pack_status}, it must be AUTHORISED"
        )
    ship_to = fulfilment.ship_to or sale.ship_to
    if ship_to is None:
        raise InvalidRequest.field("sale_id", f"sale {sale_id}: {sale.ship_to_problem}")
    parcels = parcels_for(fulfilment, sale.products, services.account.packaging)
    if not parcels.packages:
        raise SaleNotReady(f"fulfilment {fulfilment.task_id} of sale {sale_id} packs no boxes")
    ship_from = None
    if services.account.ship_from is None and sale.location:
        ship_from = await _location_address(services, sale.location, deadline)
    shipment = ShipmentIn(ship_to=ship_to, packages=parcels.packages, ship_from=ship_from)
    from_country = (ship_from or services.account.ship_from or ship_to).country
    customs: Declaration | Incomplete | None = None
    if is_international(from_country, ship_to):
        wait_until = deadline
        if not declare:  # half the time left at most: the rates need the rest
            now = asyncio.get_running_loop().time()
            wait_until = now + max(0.0, deadline - now) / 2
        try:
            customs = await _declaration(services, sale, fulfilment, ship_to.country, wait_until)
        except UpstreamFailure as exc:
            if declare:
                raise
            log.warning("sale %s rated without its declaration: %s", sale_id, exc.detail)
        if isinstance(customs, Declaration):
            shipment = declared(shipment, customs)
    return SaleShipment(
        sale=sale, fulfilment=fulfilment, shipment=shipment, defaults=parcels.defaults,
        customs=customs,
    )  # fmt: skip


async def _declaration(
    services: AccountServices, sale: Sale, fulfilment: Fulfilment, destination: str,
    deadline: float,
) -> Declaration | Incomplete:  # fmt: skip
    """The fulfilment's declaration, from the records of the products it packs."""
    assert services.products is not None  # an account with Cin7 Core credentials has them
    products = await services.products.read(
        (packed.product_id for packed in fulfilment.packed), deadline=deadline
    )
    result = declaration_for_sale(
        sale, fulfilment, products, services.account.customs, destination=destination
    )
    if isinstance(result, Incomplete):  # read them again at the retry: they may be fixed
        services.products.forget(p.product_id for p in result.problems if p.product_id)
    return result


async def _location_address(
    services: AccountServices, location: str, deadline: float
) -> Address | None:
    """The sale's warehouse address, when the account sets no ship-from of its own."""
    assert services.cin7 is not None
    for item in await services.cin7.locations(deadline=deadline):
        if item.Name.lower() == location.lower() and item.AddressZipPostCode:
            try:
                return msgspec.convert(
                    {"name": item.Name, "street1": item.AddressLine1, "street2": item.AddressLine2,
                     "city": item.AddressCitySuburb, "state": item.AddressStateProvince,
                     "postal_code": item.AddressZipPostCode, "country": item.AddressCountry or ""},
                    Address,
                )  # fmt: skip
            except msgspec.ValidationError:
                return None
    return None


def _shipped(fulfilment: Fulfilment) -> bool:
    return fulfilment.has_tracking or fulfilment.ship_status in SHIPPED_STATES
