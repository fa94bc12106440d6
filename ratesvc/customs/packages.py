"""A sale's declaration on the shipment it labels: each package declares only its own box.

The seam between :mod:`ratesvc.customs.declaration` (the domain: Decimal cents, what is missing)
and the shipment the label path buys (``customs`` header, per-package ``customs_items`` as the
API's money strings): a sale's label and a shipment's label are then bought the same way.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from ratesvc.customs.declaration import CustomsItem, Declaration, Incomplete
from ratesvc.errors import CustomsIncomplete, FieldError
from ratesvc.models import CustomsIn, ShipmentIn
from ratesvc.models import CustomsItem as DeclaredItem

_SKU_MAX = 100
REFUSED = "cannot be declared to customs"  # in every refusal's detail (the poller looks for it)


def declared(shipment: ShipmentIn, declaration: Declaration) -> ShipmentIn:
    """``shipment`` (one package per packed box, in the fulfilment's box order, as the
    declaration's boxes are) with each package's customs items and the declaration's header."""
    # By position, not by name: a package's box name is trimmed, Cin7 Core's is not, and two
    # boxes may differ only by white space. Both lists follow the fulfilment's box order.
    if len(declaration.boxes) != len(shipment.packages):
        raise ValueError(
            f"{len(declaration.boxes)} declared boxes for {len(shipment.packages)} packages"
        )
    packages = [
        msgspec.structs.replace(package, customs_items=[_item(i) for i in box.items] or None)
        for package, box in zip(shipment.packages, declaration.boxes, strict=True)
    ]
    header = CustomsIn(contents=declaration.contents, non_delivery=declaration.non_delivery)
    return msgspec.structs.replace(shipment, packages=packages, customs=header)


def contents(shipment: ShipmentIn) -> list[list[tuple[str | None, Decimal]]]:
    """Per package, what it declares (SKU and quantity, in order): a quote's boxes against the
    sale's boxes now (:func:`held`)."""
    return [
        [(item.sku, Decimal(item.quantity)) for item in package.customs_items or ()]
        for package in shipment.packages
    ]


def held(customs: Declaration | Incomplete) -> list[list[tuple[str | None, Decimal]]]:
    """Per box, what the sale packs in it now, as :func:`contents` reads a declared shipment —
    whether or not the sale can be declared now."""
    return [[(_sku(sku), quantity) for sku, quantity in box] for box in customs.held]


def refusal(sale_id: str, incomplete: Incomplete) -> CustomsIncomplete:
    """422 ``customs_incomplete``: every product and field, in words to act on in Cin7 Core."""
    errors = [
        FieldError(field=_field(problem.sku or problem.product_id, problem.field),
                   message=problem.message)
        for problem in incomplete.problems
    ]  # fmt: skip
    return CustomsIncomplete(
        f"sale {sale_id} {REFUSED}, so nothing was bought: "
        + "; ".join(incomplete.errors())
        + ". Fix these in Cin7 Core, then try again.",
        errors,
    )


def _field(product: str | None, field: str) -> str:
    if product is None:
        return f"sale.{field}"
    return f"products[{product}].{field}"


def _sku(sku: str | None) -> str | None:
    return sku.strip()[:_SKU_MAX] if sku and sku.strip() else None


def _item(item: CustomsItem) -> DeclaredItem:
    sku = _sku(item.sku)
    return DeclaredItem(
        description=item.description, quantity=item.quantity, value=f"{item.value:.2f}",
        country_of_origin=item.country_of_origin, hs_code=item.hs_code, sku=sku,
    )  # fmt: skip
