"""Customs on the label path: which shipments are international, and what each package declares.

A shipment is international when ship-from and ship-to countries differ, or when the ship-to is a
US military address (state ``AA``, ``AE`` or ``AP``: USPS wants customs forms for APO/FPO/DPO mail
although the country is US). Rating needs nothing more; buying needs a declaration per package.

The seam: a :class:`~ratesvc.labels.models.LabelPlan` carries one header (``customs``) and, per
package, ``customs_items`` — from the request's shipment or built from a Cin7 Core sale, this
module does not care which.
"""

from __future__ import annotations

from collections.abc import Sequence

from ratesvc.customs.rules import is_international as _crosses_border
from ratesvc.errors import CustomsRequired, FieldError
from ratesvc.models import Address, CustomsDeclaration, CustomsIn, PackageIn

_NO_HEADER = CustomsIn()


def is_international(ship_from: Address, ship_to: Address) -> bool:
    return _crosses_border(ship_from.country, ship_to)


def require_items(
    ship_from: Address, ship_to: Address, packages: Sequence[PackageIn], *, at: str | None
) -> None:
    """422 ``customs_required`` naming each package of an international shipment that declares
    nothing, before anything is recorded: ShipStation would refuse it with a 500 that reads like
    an unknown outcome. ``at``: where the packages are in the request (``shipment.packages``);
    None for a sale's packed boxes (the field named is then ``sale_id``)."""
    if not is_international(ship_from, ship_to):
        return
    missing = [i for i, package in enumerate(packages) if not package.customs_items]
    if not missing:
        return
    if ship_from.country == ship_to.country:
        why = f"a US military address (state {ship_to.state})"
    else:
        why = f"{ship_from.country} to {ship_to.country}"
    boxes = [packages[i].box or f"package {i + 1}" for i in missing]
    message = f"is required: the shipment is international ({why})"
    errors = [
        FieldError(field=f"{at}[{i}].customs_items", message=message)
        if at is not None
        else FieldError(field="sale_id", message=f"{box} declares no customs items")
        for i, box in zip(missing, boxes, strict=True)
    ]
    raise CustomsRequired(
        f"a customs declaration is required: the shipment is international ({why}); nothing "
        f"was bought. Declare each package's contents (description, quantity, value in USD, "
        f"country of origin, HS code) — missing for {', '.join(boxes)}",
        errors,
    )


def declaration(
    ship_from: Address, ship_to: Address, header: CustomsIn | None, package: PackageIn
) -> CustomsDeclaration | None:
    """What ``package``'s label declares: None when the shipment is not international."""
    if not is_international(ship_from, ship_to) or not package.customs_items:
        return None
    header = header or _NO_HEADER
    return CustomsDeclaration(
        contents=header.contents, non_delivery=header.non_delivery, items=package.customs_items
    )
