"""Pure translation between Cin7 Core wire Structs and ratesvc's sale domain; error mapping."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from ratesvc.countries import alpha2, alpha2_from_alpha3, alpha2_from_name
from ratesvc.errors import (
    UpstreamAuth,
    UpstreamError,
    UpstreamFailure,
    UpstreamNotFound,
    UpstreamThrottled,
    UpstreamUnavailable,
)
from ratesvc.models import Address
from ratesvc.sales import Currency, Fulfilment, PackedItem, Product, Sale, SaleLine, ShipLine
from ratesvc.upstreams.cin7 import wire

_THROTTLE_WORDS = ("calls per", "api limit")


def address_from_wire(
    address: wire.Address | None, *, phone: str | None, contact: str | None
) -> tuple[Address | None, str | None]:
    """The address, or None and why it cannot be used."""
    if address is None:
        return None, "the sale has no shipping address"
    try:
        return msgspec.convert(
            {
                "name": address.Contact or contact, "company": address.Company,
                "street1": address.Line1, "street2": address.Line2, "city": address.City,
                "state": address.State, "postal_code": address.Postcode or "",
                "country": address.Country or "", "phone": phone,
            },
            Address,
        ), None  # fmt: skip
    except msgspec.ValidationError as exc:
        return None, f"the shipping address cannot be used ({exc})"


def product_from_wire(item: wire.Product) -> Product:
    sides = None
    if item.Length and item.Width and item.Height:
        sides = (item.Length, item.Width, item.Height)
    origin = _origin(item.CountryOfOriginCode, item.CountryOfOrigin)
    given = None
    if origin is None:
        given = _text(item.CountryOfOriginCode) or _text(item.CountryOfOrigin)
    return Product(
        product_id=item.ID, sku=item.SKU, weight=item.Weight, weight_unit=item.WeightUnits,
        sides=sides, length_unit=item.DimensionsUnits, name=_text(item.Name),
        hs_code=_text(item.HSCode), origin=origin, origin_given=given,
    )  # fmt: skip


def _origin(code: str | None, name: str | None) -> str | None:
    """ISO alpha-2 from the product's origin: its alpha-3 code first, then its name; either
    field may hold an alpha-2 code instead ("US", "cn")."""
    return alpha2_from_alpha3(code) or alpha2(code) or alpha2_from_name(name) or alpha2(name)


def _text(value: str | None) -> str | None:
    """A text field with its spaces trimmed; None when nothing is left."""
    return value.strip() or None if value else None


def sale_from_wire(sale: wire.Sale) -> Sale:
    ship_to, problem = address_from_wire(
        sale.ShippingAddress, phone=sale.Phone, contact=sale.Contact
    )
    products: dict[str, Product] = {}
    for line in sale.Order.Lines:
        if line.ProductID and line.ProductID not in products:
            sides = None
            if line.ProductLength and line.ProductWidth and line.ProductHeight:
                sides = (line.ProductLength, line.ProductWidth, line.ProductHeight)
            products[line.ProductID] = Product(
                product_id=line.ProductID, sku=line.SKU, weight=line.ProductWeight,
                weight_unit=line.WeightUnits, sides=sides, length_unit=line.DimensionsUnits,
                name=_text(line.Name),
            )  # fmt: skip
    return Sale(
        sale_id=sale.ID,
        order_number=sale.Order.SaleOrderNumber,
        customer=sale.Customer,
        phone=sale.Phone,
        email=sale.Email,
        ship_to=ship_to,
        ship_to_problem=problem,
        carrier=sale.Carrier,
        location=sale.Location,
        lines=[
            SaleLine(
                product_id=line.ProductID,
                sku=line.SKU,
                name=line.Name,
                quantity=line.Quantity,
                price=line.Price,
                discount=line.Discount or Decimal(0),
                total=line.Total,
            )
            for line in sale.Order.Lines
            if line.ProductID
        ],
        products=products,
        fulfilments=[_fulfilment(f, sale) for f in sale.Fulfilments],
        attachments=[a.FileName for a in sale.Attachments if a.FileName],
        status=sale.Status,
        currency=Currency(
            customer=_code(sale.CustomerCurrency),
            base=_code(sale.BaseCurrency),
            rate=sale.CurrencyRate if sale.CurrencyRate and sale.CurrencyRate > 0 else None,
        ),
    )


def _code(value: str | None) -> str | None:
    return value.strip().upper() or None if value else None


def _fulfilment(item: wire.Fulfilment, sale: wire.Sale) -> Fulfilment:
    ship_to = None
    if item.Ship.ShippingAddress is not None:
        ship_to, _ = address_from_wire(
            item.Ship.ShippingAddress, phone=sale.Phone, contact=sale.Contact
        )
    return Fulfilment(
        task_id=item.TaskID,
        number=item.FulfillmentNumber,
        pick_status=item.Pick.Status,
        pack_status=item.Pack.Status,
        ship_status=item.Ship.Status,
        packed=[
            PackedItem(
                product_id=line.ProductID,
                sku=line.SKU,
                quantity=line.Quantity,
                box=line.Box or "Box 1",
            )
            for line in item.Pack.Lines
            if line.ProductID
        ],
        ship_to=ship_to,
        ship_lines=[
            ShipLine(
                box=line.Boxes or line.Box,
                carrier=line.Carrier,
                tracking_number=line.TrackingNumber or None,
                tracking_url=line.TrackingURL or None,
                shipped=bool(line.IsShipped),
            )
            for line in item.Ship.Lines
        ],
    )


def invoice_from_document(document: dict[str, Any]) -> wire.InvoiceDocument:
    """An invoice as read, whole, with the fields ratesvc reads (``msgspec.ValidationError`` when
    those cannot be read)."""
    return wire.InvoiceDocument(fields=msgspec.convert(document, wire.Invoice), document=document)


def invoice_with_charge(
    invoice: wire.InvoiceDocument, charge: wire.InvoiceCharge
) -> dict[str, Any]:
    """The invoice to send back: every field as it was read, ``charge`` added to its charges."""
    charges = invoice.document.get("AdditionalCharges") or []
    added = msgspec.to_builtins(charge, builtin_types=(Decimal,))
    return {**invoice.document, "AdditionalCharges": [*charges, added]}


def invoice_without_charge(invoice: wire.InvoiceDocument, comment: str) -> dict[str, Any]:
    """The invoice to send back: every field as it was read, the charges whose ``Comment`` is
    ``comment`` removed."""
    charges = invoice.document.get("AdditionalCharges") or []
    kept = [c for c in charges if not (isinstance(c, dict) and c.get("Comment") == comment)]
    return {**invoice.document, "AdditionalCharges": kept}


def error_texts(body: bytes) -> list[str]:
    """Cin7 Core's errors come as an array, an object, or plain text: read whatever came."""
    try:
        parsed = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()
        return [text] if text else []
    items = parsed if isinstance(parsed, list) else [parsed]
    texts: list[str] = []
    for item in items:
        if isinstance(item, dict):
            found = item.get("Exception") or item.get("Message") or item.get("message")
            if found:
                texts.append(str(found))
        elif isinstance(item, str) and item:
            texts.append(item)
    return texts


def is_throttled(status: int, body: bytes) -> bool:
    """503 (documented), 429 (newer) or a 400 whose text says a limit was reached."""
    if status in (429, 503):
        return True
    if status == 400:
        return any(word in text.lower() for text in error_texts(body) for word in _THROTTLE_WORDS)
    return False


_AUTH_HINT = (
    "Cin7 Core rejected the API credentials (403): check RATESVC_CIN7_ACCOUNT_ID and "
    "RATESVC_CIN7_APPLICATION_KEY (or the account's cin7 table) against Integrations → API in "
    "Cin7 Core; a deleted API application stops its key at once."
)
_MULTIPLE_HINT = (
    "Cin7 Core answered 300 Multiple Choices: the API user belongs to several organisations. "
    "Use one connection (API application key) per organisation: in each Cin7 Core organisation "
    "create its own API application under Integrations → API, and give each organisation its "
    "own ratesvc account with that account ID and key."
)


def error_from_response(status: int, body: bytes, endpoint: str) -> UpstreamFailure:
    """The one place a Cin7 Core error answer becomes a typed error."""
    texts = error_texts(body)
    detail = "; ".join(texts) or f"HTTP {status}"

    def make(kind: type[UpstreamFailure], message: str) -> UpstreamFailure:
        return kind(message, upstream="cin7", endpoint=endpoint, upstream_status=status)

    if is_throttled(status, body):
        return make(UpstreamThrottled, f"Cin7 Core's API limit was reached ({detail})")
    if status in (401, 403):
        return make(UpstreamAuth, _AUTH_HINT)
    if status == 300:
        return make(UpstreamAuth, _MULTIPLE_HINT)
    if status == 404 or "not found" in detail.lower():
        return make(UpstreamNotFound, f"Cin7 Core: {detail}")
    if status >= 500:
        return make(UpstreamUnavailable, f"Cin7 Core is failing ({status}) on {endpoint}: {detail}")
    return make(UpstreamError, f"Cin7 Core refused {endpoint}: {detail}")
