"""A customs declaration built from a Cin7 Core sale: per packed box, one item per product in it.

* ``description``: the sale line's name, else the product's name, never a bare SKU (customs and
  UPS refuse part numbers as descriptions);
* ``quantity``: what the pack lines put in that box (a whole number);
* ``value``: unit price after the line's discount × quantity, in USD, rounded half-up to cents
  once per item. A USD sale is taken as it is; otherwise the sale's rate converts it to its base
  currency, which must then be USD. A sale where neither currency is USD is refused: ratesvc keeps
  no exchange rates of its own, and a declared value must be one the warehouse can stand behind;
* ``hs_code`` and ``country_of_origin`` (ISO alpha-2) from the product record, the account's
  default origin standing in for a missing one (never for one that is stated but is not a
  country ratesvc can read: that is reported, quoting it).

Whatever is missing is reported, every product and field at once, in words a warehouse person
can act on in Cin7 Core; nothing is guessed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from decimal import Decimal

import msgspec

from ratesvc.customs.rules import Contents, CustomsRules, NonDelivery
from ratesvc.models import DESCRIPTION_MAX, UNPRINTABLE
from ratesvc.sales import Fulfilment, Product, Sale, SaleLine
from ratesvc.units import to_cents

USD = "USD"
MAX_VALUE = Decimal("9999999999.99")  # what the API's money strings (and ledger) hold
MAX_QUANTITY = 1_000_000  # as models.CustomsItem
_HS_CODE = re.compile(r"[0-9]+(?:\.[0-9]+)*")  # digits, dots between groups (6-10 digits)


class CustomsItem(msgspec.Struct, frozen=True, kw_only=True):
    description: str
    quantity: int
    value: Decimal  # the item's total in USD, in cents
    hs_code: str | None
    country_of_origin: str
    sku: str | None


class BoxDeclaration(msgspec.Struct, frozen=True, kw_only=True):
    box: str
    items: list[CustomsItem]

    @property
    def value(self) -> Decimal:
        return sum((item.value for item in self.items), Decimal(0))


class Declaration(msgspec.Struct, frozen=True, kw_only=True):
    """What each package's label declares, in the fulfilment's box order."""

    contents: Contents
    non_delivery: NonDelivery
    boxes: list[BoxDeclaration]
    held: list[list[tuple[str | None, Decimal]]] = []  # per box: (SKU, quantity) as packed


class CustomsProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One missing or unusable fact; ``field`` is the customs item field it stops."""

    field: str  # description, quantity, value, hs_code, country_of_origin or currency
    message: str
    sku: str | None = None
    name: str | None = None
    product_id: str | None = None


class Incomplete(msgspec.Struct, frozen=True, kw_only=True):
    """Why no declaration could be built: fix these in Cin7 Core (or the account settings)."""

    problems: list[CustomsProblem]
    held: list[list[tuple[str | None, Decimal]]] = []  # per box: (SKU, quantity) as packed

    def errors(self) -> list[str]:
        return [problem.message for problem in self.problems]


class _Priced(msgspec.Struct, frozen=True, kw_only=True):
    """A product's net price in USD over its order lines and the quantity it is for (kept apart,
    so a box's value is one exact product and one division: a mean unit price rounded at
    Decimal's precision could tip a value on the half-cent the wrong way), its description, SKU
    and name."""

    usd_total: Decimal | None
    ordered: Decimal  # the quantity ``usd_total`` is for
    valued: bool  # the sale's currency converts to USD: no usd_total means no price
    description: str | None
    sku: str | None
    name: str | None


def declaration_for_sale(
    sale: Sale,
    fulfilment: Fulfilment,
    products: Mapping[str, Product],
    rules: CustomsRules,
    *,
    destination: str,
) -> Declaration | Incomplete:
    """The declaration for ``fulfilment``'s boxes, or every reason there cannot be one.

    ``products`` are the product records read from Cin7 Core (HS codes and origins); the sale's
    own order-line products fill in for any not given. ``destination`` is the ship-to country
    (ISO alpha-2): HS codes are required outside the US when ``rules.require_hs_code``."""
    problems: list[CustomsProblem] = []
    rate = _usd_rate(sale, problems)
    check = _Checks(problems, need_hs=rules.require_hs_code and destination.upper() != "US")
    priced: dict[str, _Priced] = {}
    boxes: list[BoxDeclaration] = []
    held: list[list[tuple[str | None, Decimal]]] = []
    for box in fulfilment.boxes:
        items: list[CustomsItem] = []
        held.append([])
        for product_id, quantity in _contents(fulfilment, box).items():
            product = products.get(product_id) or sale.products.get(product_id)
            info = priced.get(product_id)
            if info is None:
                info = priced[product_id] = _price(sale.lines, product_id, product, rate)
            held[-1].append((info.sku, quantity))
            item = check.item(box, quantity, product_id, product, info, rules.default_origin)
            if item is not None:
                items.append(item)
        boxes.append(BoxDeclaration(box=box, items=items))
    if problems:
        return Incomplete(problems=problems, held=held)
    return Declaration(
        contents=rules.contents, non_delivery=rules.non_delivery, boxes=boxes, held=held
    )


def _contents(fulfilment: Fulfilment, box: str) -> dict[str, Decimal]:
    """Product id → quantity packed in ``box`` (a product on several pack lines counted once)."""
    quantities: dict[str, Decimal] = {}
    for packed in fulfilment.packed:
        if packed.box == box:
            quantities[packed.product_id] = (
                quantities.get(packed.product_id, Decimal(0)) + packed.quantity
            )
    return quantities


class _Checks:
    """Turns one product in one box into an item, reporting each product's problem once."""

    def __init__(self, problems: list[CustomsProblem], *, need_hs: bool) -> None:
        self.problems = problems
        self.need_hs = need_hs
        self._reported: set[tuple[str, str]] = set()

    def item(
        self, box: str, quantity: Decimal, product_id: str, product: Product | None,
        info: _Priced, default_origin: str | None,
    ) -> CustomsItem | None:  # fmt: skip
        def report(field: str, what: str) -> None:
            if (product_id, field) not in self._reported:
                self._reported.add((product_id, field))
                self.problems.append(
                    CustomsProblem(
                        field=field, message=f"{_who(info, product_id)}: {what}", sku=info.sku,
                        name=info.name, product_id=product_id,
                    )
                )  # fmt: skip

        description = info.description
        if description is None:
            report("description", _NO_DESCRIPTION)
        elif len(description) < 3:
            report("description", _SHORT_DESCRIPTION.format(description))
        if quantity != quantity.to_integral_value() or quantity < 1:
            report("quantity", _NOT_WHOLE.format(box, quantity))
        elif quantity > MAX_QUANTITY:
            report("quantity", _TOO_MANY.format(box, quantity))
        value = None
        if info.usd_total is not None:
            try:
                value = to_cents(info.usd_total * quantity / info.ordered)
            except ArithmeticError:  # beyond Decimal's precision: a price no parcel is worth
                value = MAX_VALUE + 1
        if info.usd_total is None and info.valued:
            report("value", _NO_PRICE)
        elif value is not None and value <= 0:
            report("value", _ZERO_VALUE)
        elif value is not None and value > MAX_VALUE:
            report("value", _TOO_VALUABLE.format(box))
            value = None
        hs_code = product.hs_code if product is not None else None
        if hs_code is not None and not _hs_code_ok(hs_code):
            report("hs_code", _BAD_HS_CODE.format(hs_code))
        elif hs_code is None and self.need_hs:
            report("hs_code", _NO_HS_CODE)
        origin = product.origin if product is not None else None
        given = product.origin_given if product is not None else None
        if origin is None and not given:  # a stated origin that cannot be read is never replaced
            origin = default_origin
        if origin is None:
            report("country_of_origin", _no_origin(given))
        if description is None or value is None or origin is None:
            return None
        return CustomsItem(
            description=description, quantity=int(quantity), value=value, hs_code=hs_code,
            country_of_origin=origin, sku=info.sku,
        )  # fmt: skip


_NO_DESCRIPTION = (
    "no description: give the product a name in words in Cin7 Core (a SKU is not a description)"
)
_SHORT_DESCRIPTION = "the description {!r} is too short: name the product in words in Cin7 Core"
_NOT_WHOLE = "{} holds {:f} of it: customs quantities are whole numbers; pack whole units"
_NO_PRICE = "no price on the sale's order lines: price it on the sale in Cin7 Core"
_ZERO_VALUE = (
    "a zero value: customs needs the goods' value; price the line on the sale in Cin7 Core "
    "(a free item still declares what it is worth)"
)
_TOO_MANY = "{} holds {:f} of it: more than customs accepts on one line (1,000,000)"
_TOO_VALUABLE = (
    "its value in {} is more than customs forms accept (9,999,999,999.99 USD): check the "
    "line's price, discount and the sale's currency rate in Cin7 Core"
)
_NO_HS_CODE = "no HS code: set the product's HS Code in Cin7 Core (6-10 digits, e.g. 0902.10)"
_BAD_HS_CODE = "the HS code {!r} is not 6-10 digits: correct the product's HS Code in Cin7 Core"


def _no_origin(given: str | None) -> str:
    if given:
        return (
            f"the country of origin {given!r} is not a country: set the product's Country Of "
            "Origin in Cin7 Core"
        )
    return (
        "no country of origin: set the product's Country Of Origin in Cin7 Core (or the "
        "account's default origin, RATESVC_CUSTOMS_DEFAULT_ORIGIN)"
    )


def _who(info: _Priced, product_id: str) -> str:
    if info.sku and info.name:
        return f"{info.sku} ({info.name})"
    return info.sku or info.name or f"product {product_id}"


def _usd_rate(sale: Sale, problems: list[CustomsProblem]) -> Decimal | None:
    """USD per unit of the sale's (customer) currency; None, with a problem, when not known."""
    currency = sale.currency
    customer = currency.customer or currency.base
    if customer == USD or (customer is None and currency.base is None):
        return Decimal(1)  # no currency at all: a sale in the account's own (US) books
    if currency.base != USD:
        message = (
            f"the sale is in {customer} and the account's base currency is "
            f"{currency.base or 'not given'}: customs values are declared in USD and ratesvc "
            "keeps no exchange rates; price the sale in USD in Cin7 Core"
        )
    elif currency.rate is None:
        message = (
            f"the sale is in {customer} with no currency rate: set the sale's currency rate in "
            "Cin7 Core"
        )
    else:
        return currency.rate
    problems.append(CustomsProblem(field="currency", message=message))
    return None


def _price(
    lines: list[SaleLine], product_id: str, product: Product | None, rate: Decimal | None
) -> _Priced:
    """The product's net unit price in USD over its order lines (exact: a weighted mean when the
    product is on several lines at different prices), and how to describe it."""
    mine = [line for line in lines if line.product_id == product_id]
    sku = next((line.sku for line in mine if line.sku), None)
    if sku is None and product is not None:
        sku = product.sku
    names = [line.name for line in mine] + [product.name if product else None]
    description = next((n for n in (_words(name, sku) for name in names) if n), None)
    usd_total = None
    priced = [line for line in mine if line.price is not None and line.quantity > 0]
    quantity = sum((line.quantity for line in priced), Decimal(0))
    if rate is not None and priced:
        try:
            usd_total = sum((_net(line) * line.quantity for line in priced), Decimal(0)) * rate
        except ArithmeticError:  # beyond Decimal's range: reported as too valuable
            usd_total = Decimal("Infinity")
    return _Priced(
        usd_total=usd_total,
        ordered=quantity or Decimal(1),
        valued=rate is not None,
        description=description,
        sku=sku,
        name=description,
    )


def _net(line: SaleLine) -> Decimal:
    assert line.price is not None
    return line.price * (100 - line.discount) / 100


def _hs_code_ok(code: str) -> bool:
    return (
        bool(_HS_CODE.fullmatch(code)) and 6 <= sum(c.isascii() and c.isdigit() for c in code) <= 10
    )


def _words(name: str | None, sku: str | None) -> str | None:
    """A name as a description: control and invisible characters dropped, white space collapsed,
    at most 100 characters; None when nothing in words is left or it is only the SKU."""
    printable = "".join(c for c in name or "" if unicodedata.category(c) not in UNPRINTABLE)
    text = " ".join(printable.split())
    if not any(c.isalpha() for c in text) or (sku and text.casefold() == sku.strip().casefold()):
        return None
    return text[:DESCRIPTION_MAX].rstrip()
