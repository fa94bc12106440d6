"""A sale's declaration on the shipment it labels: each package declares only its own box.

The seam between :mod:`ratesvc.customs.declaration` (the domain: Decimal cents, what is missing)
and the shipment the label path buys (``customs`` header, per-package ``customs_items`` as the
API's money strings): a sale's label and a shipment's label are then bought the same way.
"""

from __future__ import annotations

import msgspec

from ratesvc.customs.declaration import CustomsItem, Declaration, Incomplete
from ratesvc.errors import CustomsIncomplete, FieldError
from ratesvc.models import CustomsIn, PackageIn, ShipmentIn
from ratesvc.models import CustomsItem as DeclaredItem

_SKU_MAX = 100


def declared(shipment: ShipmentIn, declaration: Declaration) -> ShipmentIn:
    """``shipment`` (one package per packed box, in the fulfilment's box order) with each
    package's customs items and the declaration's header."""
    packages: list[PackageIn] = []
    for package in shipment.packages:
        box = declaration.for_box(package.box or "")
        items = [_item(item) for item in box.items] if box is not None else []
        packages.append(msgspec.structs.replace(package, customs_items=items or None))
    header = CustomsIn(contents=declaration.contents, non_delivery=declaration.non_delivery)
    return msgspec.structs.replace(shipment, packages=packages, customs=header)


def contents(shipment: ShipmentIn) -> list[list[tuple[str | None, int]]]:
    """Per package, what it declares (SKU and quantity, in order): a quote's boxes against the
    sale's boxes now."""
    return [
        [(item.sku, item.quantity) for item in package.customs_items or ()]
        for package in shipment.packages
    ]


def refusal(sale_id: str, incomplete: Incomplete) -> CustomsIncomplete:
    """422 ``customs_incomplete``: every product and field, in words to act on in Cin7 Core."""
    errors = [
        FieldError(field=_field(problem.sku or problem.product_id, problem.field),
                   message=problem.message)
        for problem in incomplete.problems
    ]  # fmt: skip
    return CustomsIncomplete(
        f"sale {sale_id} cannot be declared to customs, so nothing was bought: "
        + "; ".join(incomplete.errors())
        + ". Fix these in Cin7 Core, then try again.",
        errors,
    )


def _field(product: str | None, field: str) -> str:
    if product is None:
        return f"sale.{field}"
    return f"products[{product}].{field}"


def _item(item: CustomsItem) -> DeclaredItem:
    sku = item.sku.strip()[:_SKU_MAX] if item.sku and item.sku.strip() else None
    return DeclaredItem(
        description=item.description, quantity=item.quantity, value=f"{item.value:.2f}",
        country_of_origin=item.country_of_origin, hs_code=item.hs_code, sku=sku,
    )  # fmt: skip
