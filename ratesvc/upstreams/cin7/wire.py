"""Cin7 Core API v2 JSON, field for field. Lenient: unknown fields ignored, optional ones default.

Reads say ``Boxes`` where writes say ``Box`` (ship lines). Numbers that are money or measures
are ``Decimal``. Nothing outside ``ratesvc.upstreams.cin7`` imports this module.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec


class _Wire(msgspec.Struct, kw_only=True):
    pass


class Address(_Wire, kw_only=True):
    Line1: str | None = None
    Line2: str | None = None
    City: str | None = None
    State: str | None = None
    Postcode: str | None = None
    Country: str | None = None
    Company: str | None = None
    Contact: str | None = None
    ShipToOther: bool | None = None


class OrderLine(_Wire, kw_only=True):
    ProductID: str | None = None
    SKU: str | None = None
    Name: str | None = None
    Quantity: Decimal = Decimal(0)
    Price: Decimal | None = None  # per unit, in the customer's currency, before the discount
    Discount: Decimal | None = None  # percent; null or absent: none
    Total: Decimal | None = None
    ProductWeight: Decimal | None = None
    WeightUnits: str | None = None
    ProductLength: Decimal | None = None
    ProductWidth: Decimal | None = None
    ProductHeight: Decimal | None = None
    DimensionsUnits: str | None = None


class Order(_Wire, kw_only=True):
    SaleOrderNumber: str | None = None
    Status: str | None = None
    Lines: list[OrderLine] = []


class StepLine(_Wire, kw_only=True):
    """A Pick or Pack line."""

    ProductID: str | None = None
    SKU: str | None = None
    Name: str | None = None
    Quantity: Decimal = Decimal(0)
    Box: str | None = None


class Step(_Wire, kw_only=True):
    Status: str = "NOT AVAILABLE"
    Lines: list[StepLine] = []


class ShipLineRead(_Wire, kw_only=True):
    ID: str | None = None
    ShipmentDate: str | None = None
    Carrier: str | None = None
    Boxes: str | None = None
    Box: str | None = None
    TrackingNumber: str | None = None
    TrackingURL: str | None = None
    IsShipped: bool | None = None


class ShipStep(_Wire, kw_only=True):
    Status: str = "NOT AVAILABLE"
    RequireBy: str | None = None
    ShippingAddress: Address | None = None
    ShippingNotes: str | None = None
    Lines: list[ShipLineRead] = []


class Fulfilment(_Wire, kw_only=True):
    TaskID: str
    FulfillmentNumber: int | None = None
    Pick: Step = msgspec.field(default_factory=Step)
    Pack: Step = msgspec.field(default_factory=Step)
    Ship: ShipStep = msgspec.field(default_factory=ShipStep)


class Attachment(_Wire, kw_only=True):
    ID: str | None = None
    FileName: str | None = None
    ContentType: str | None = None
    DownloadUrl: str | None = None


class Sale(_Wire, kw_only=True):
    ID: str
    Customer: str | None = None
    Contact: str | None = None
    Phone: str | None = None
    Email: str | None = None
    ShippingAddress: Address | None = None
    Carrier: str | None = None
    Location: str | None = None
    Status: str | None = None
    CustomerCurrency: str | None = None
    BaseCurrency: str | None = None
    CurrencyRate: Decimal | None = None  # base-currency units per customer-currency unit
    Order: Order = msgspec.field(default_factory=Order)
    Fulfilments: list[Fulfilment] = []
    Attachments: list[Attachment] = []


class Product(_Wire, kw_only=True):
    ID: str
    SKU: str | None = None
    Name: str | None = None
    Weight: Decimal | None = None
    WeightUnits: str | None = None
    Length: Decimal | None = None
    Width: Decimal | None = None
    Height: Decimal | None = None
    DimensionsUnits: str | None = None
    HSCode: str | None = None
    CountryOfOrigin: str | None = None  # a country name ("China")
    CountryOfOriginCode: str | None = None  # ISO alpha-3 ("CHN")


class ProductList(_Wire, kw_only=True):
    Total: int = 0
    Page: int = 1
    Products: list[Product] = []


class SaleListItem(_Wire, kw_only=True):
    SaleID: str
    OrderNumber: str | None = None
    Status: str | None = None
    Customer: str | None = None
    Updated: str | None = None


class SaleList(_Wire, kw_only=True):
    Total: int = 0
    Page: int = 1
    SaleList: list[SaleListItem] = []


class Location(_Wire, kw_only=True):
    ID: str | None = None
    Name: str
    AddressLine1: str | None = None
    AddressLine2: str | None = None
    AddressCitySuburb: str | None = None
    AddressStateProvince: str | None = None
    AddressZipPostCode: str | None = None
    AddressCountry: str | None = None


class LocationList(_Wire, kw_only=True):
    Total: int = 0
    Page: int = 1
    LocationList: list[Location] = []


class ShipLineWrite(_Wire, kw_only=True):
    ShipmentDate: str
    Carrier: str
    Box: str
    TrackingNumber: str
    TrackingURL: str
    IsShipped: bool = True


class ShipWrite(_Wire, kw_only=True):
    TaskID: str
    Status: str
    RequireBy: str | None = None
    ShippingAddress: Address | None = None
    ShippingNotes: str | None = None
    Lines: list[ShipLineWrite]
    AddTrackingNumbers: bool | None = None


class AttachmentWrite(_Wire, kw_only=True):
    SaleID: str
    FileName: str
    Content: str


class AttachmentAnswer(_Wire, kw_only=True):
    SaleID: str | None = None
    Lines: list[Attachment] = []


class InvoiceCharge(_Wire, kw_only=True, omit_defaults=True):
    """An additional charge on a sale invoice (shapes inferred from the public v2 reference)."""

    Description: str
    Quantity: Decimal | None = None  # required when written (at least 1): never omitted then
    Price: Decimal
    Discount: Decimal | None = None
    Tax: Decimal | None = None
    Total: Decimal | None = None
    TaxRule: str | None = None
    Account: str | None = None
    Comment: str | None = None


class Invoice(_Wire, kw_only=True):
    """The fields of a sale invoice ratesvc reads; the rest is kept in :class:`InvoiceDocument`."""

    TaskID: str
    InvoiceNumber: str | None = None
    Status: str = "DRAFT"
    AdditionalCharges: list[InvoiceCharge] = []


class InvoiceDocument(msgspec.Struct, frozen=True, kw_only=True):
    """One invoice as read. ``POST /sale/invoice`` replaces the whole invoice, so it goes back as
    ``document``, the JSON object that came (every field, those ratesvc does not model too;
    fractional numbers as ``Decimal``); ``fields`` are the ones ratesvc reads."""

    fields: Invoice
    document: dict[str, Any]


class Invoices(_Wire, kw_only=True):
    """``GET /sale/invoice``, each invoice kept as the JSON object it is."""

    SaleID: str | None = None
    Invoices: list[dict[str, Any]] = []


class WebhookHeader(_Wire, kw_only=True):
    Key: str
    Value: str


class Webhook(_Wire, kw_only=True, omit_defaults=True):
    ID: str | None = None
    Type: str
    IsActive: bool = True
    ExternalURL: str
    ExternalAuthorizationType: str = "noauth"
    ExternalUserName: str | None = None
    ExternalPassword: str | None = None
    ExternalBearerToken: str | None = None
    ExternalHeaders: list[WebhookHeader] = []


class WebhookList(_Wire, kw_only=True):
    Webhooks: list[Webhook] = []


class Error(_Wire, kw_only=True):
    ErrorCode: int | None = None
    Exception: str | None = None


encoder = msgspec.json.Encoder(decimal_format="number")
invoices_decoder = msgspec.json.Decoder(Invoices, float_hook=Decimal)
