"""Cin7 Core sales as ratesvc sees them (upstream-neutral), and how a packed sale becomes a
shipment.

A fulfilment ships its packed boxes: one package per ``Box`` named on the Pack lines. Boxes carry
no weight or size in Cin7 Core, so they are worked out from the products in them:

* weight = Σ quantity × product weight (converted exactly) + the account's tare per box; a product
  whose weight is missing or zero counts the account's default product weight instead;
* size = the account's box catalogue entry for that box name, else the largest product's size
  (sides sorted), else no dimensions;

and every value that had to be defaulted is reported, so a person can fix the product data.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import msgspec

from ratesvc.models import Address, Dimensions, PackageIn, Weight
from ratesvc.units import convert_length, convert_weight

STATUS_AUTHORISED = "AUTHORISED"
SHIPPED_STATES = frozenset({"AUTHORISED", "PARTIALLY AUTHORISED"})
_WEIGHT_UNITS = {"g": "g", "kg": "kg", "lb": "lb", "lbs": "lb", "oz": "oz", "mg": "mg"}
_LENGTH_UNITS = {"mm": "mm", "cm": "cm", "m": "m", "in": "in", "ft": "ft"}


class SaleLine(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    product_id: str
    sku: str | None
    name: str | None
    quantity: Decimal
    price: Decimal | None = None  # per unit, in the sale's currency, before the discount
    discount: Decimal = Decimal(0)  # percent
    total: Decimal | None = None


class PackedItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    product_id: str
    sku: str | None
    quantity: Decimal
    box: str


class ShipLine(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    box: str | None
    carrier: str | None
    tracking_number: str | None
    tracking_url: str | None
    shipped: bool


class Fulfilment(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    task_id: str
    number: int | None
    pick_status: str
    pack_status: str
    ship_status: str
    packed: list[PackedItem]
    ship_to: Address | None
    ship_lines: list[ShipLine]

    @property
    def boxes(self) -> list[str]:
        """Box names in the order they first appear on the Pack lines."""
        return list(dict.fromkeys(item.box for item in self.packed))

    @property
    def has_tracking(self) -> bool:
        return any(line.tracking_number for line in self.ship_lines)

    @property
    def ready(self) -> bool:
        return self.pack_status == STATUS_AUTHORISED and self.ship_status not in SHIPPED_STATES


class Product(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    product_id: str
    sku: str | None
    weight: Decimal | None
    weight_unit: str | None
    sides: tuple[Decimal, Decimal, Decimal] | None
    length_unit: str | None
    name: str | None = None
    hs_code: str | None = None
    origin: str | None = None  # ISO alpha-2 country of origin, when it could be read
    origin_given: str | None = None  # what the record says, when it could not be read


class Currency(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A sale's currencies: ``rate`` is base-currency units per customer-currency unit."""

    customer: str | None = None
    base: str | None = None
    rate: Decimal | None = None


class Sale(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    sale_id: str
    order_number: str | None
    customer: str | None
    phone: str | None
    email: str | None
    ship_to: Address | None
    ship_to_problem: str | None
    carrier: str | None
    location: str | None
    lines: list[SaleLine]
    products: dict[str, Product]  # from the order lines' product fields
    fulfilments: list[Fulfilment]
    attachments: list[str] = []  # file names
    status: str | None = None  # the sale's status in Cin7 Core (e.g. PACKED, VOIDED)
    currency: Currency = Currency()

    @property
    def voided(self) -> bool:
        return (self.status or "").upper() == "VOIDED"

    def relabelable(self) -> Fulfilment | None:
        """After a void: the first packed fulfilment without tracking, Ship authorised or not."""
        return next(
            (f for f in self.fulfilments
             if f.pack_status == STATUS_AUTHORISED and not f.has_tracking), None
        )  # fmt: skip

    def fulfilment(self, task_id: str | None) -> Fulfilment | None:
        """The one asked for, else the first whose Pack is AUTHORISED and Ship is not."""
        if task_id is not None:
            return next((f for f in self.fulfilments if f.task_id.lower() == task_id.lower()), None)
        return next((f for f in self.fulfilments if f.ready), None)


class Packaging(msgspec.Struct, frozen=True, kw_only=True):
    """An account's rules for turning packed boxes into parcels."""

    tare: Weight | None = None
    default_product_weight: Weight = Weight(value=1, unit="lb")
    boxes: dict[str, Dimensions] = {}


@dataclass(frozen=True)
class Parcels:
    packages: list[PackageIn]
    defaults: list[str]  # what had to be assumed, in words


def parcels_for(fulfilment: Fulfilment, products: dict[str, Product], rules: Packaging) -> Parcels:
    """One package per packed box (see the module docstring)."""
    defaults: list[str] = []
    packages: list[PackageIn] = []
    for box in fulfilment.boxes:
        items = [item for item in fulfilment.packed if item.box == box]
        grams = Decimal(0)
        largest: tuple[Decimal, Decimal, Decimal] | None = None
        for item in items:
            product = products.get(item.product_id)
            label = item.sku or item.product_id
            unit = _WEIGHT_UNITS.get((product.weight_unit or "").lower()) if product else None
            if product is None or not product.weight or product.weight <= 0 or unit is None:
                fallback = rules.default_product_weight
                defaults.append(
                    f"{box}: no weight for {label}; assumed {fallback.value:g} {fallback.unit} each"
                )
                each = convert_weight(fallback.amount, fallback.unit, "g")
            else:
                each = convert_weight(product.weight, unit, "g")
            grams += each * item.quantity
            if product is not None and product.sides is not None and product.length_unit:
                length_unit = _LENGTH_UNITS.get(product.length_unit.lower())
                if length_unit is not None:
                    sides = tuple(
                        sorted((convert_length(s, length_unit, "cm") for s in product.sides),
                               reverse=True)
                    )  # fmt: skip
                    if largest is None or _volume(sides) > _volume(largest):
                        largest = sides  # type: ignore[assignment]
        if rules.tare is not None:
            grams += convert_weight(rules.tare.amount, rules.tare.unit, "g")
        dimensions = rules.boxes.get(box)
        if dimensions is None and largest is not None and all(s > 0 for s in largest):
            dimensions = Dimensions(
                length=float(largest[0]), width=float(largest[1]), height=float(largest[2]),
                unit="cm",
            )  # fmt: skip
            defaults.append(f"{box}: size not in the box catalogue; used the largest product's")
        elif dimensions is None:
            defaults.append(f"{box}: no size known; rated by weight only")
        packages.append(
            PackageIn(
                weight=Weight(value=float(max(grams, Decimal(1))), unit="g"),
                dimensions=dimensions,
                box=box,
            )
        )
    return Parcels(packages=packages, defaults=defaults)


def _volume(sides: tuple[Decimal, ...]) -> Decimal:
    return sides[0] * sides[1] * sides[2]
