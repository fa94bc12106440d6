"""Domain and public API Structs.

Inbound Structs (what clients send) derive from :class:`Inbound`: unknown fields are rejected and
strings are trimmed, so typos surface as 422s. Outbound Structs are plain frozen Structs. Wire
formats of the upstreams never appear here; see ``ratesvc.upstreams``.

Validation that a type annotation cannot express is done in ``__post_init__``, raising
``ValueError("<field>: <message>")``; the API edge turns that into a field path.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from ratesvc.countries import ISO_3166_ALPHA2
from ratesvc.units import LengthUnit, WeightUnit, exact_decimal

Confirmation = Literal["none", "delivery", "signature", "adult_signature", "direct_signature"]

ShortText = Annotated[str, msgspec.Meta(max_length=200)]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]
# A Cin7 Core sale or task id. Blank (white space only) is refused by require_text, with a
# clearer message than a failed pattern; the pattern tells the OpenAPI document the same rule.
SaleRef = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, extra_json_schema={"pattern": r"\S"})
]


class Inbound(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Base of request Structs: strict about fields, tolerant about surrounding white space.

    ``gc=False``: these hold only values and other Structs, never cycles, so the garbage
    collector need not track the many thousands the quote store and caches keep alive.
    """

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, str) and value != value.strip():
                msgspec.structs.force_setattr(self, name, value.strip())


def require_text(struct: Inbound, *names: str) -> None:
    """Refuse fields that were white space only (trimmed to ``""`` by :class:`Inbound`)."""
    for name in names:
        if getattr(struct, name) == "":
            raise ValueError(f"{name}: must not be blank")


class Address(Inbound, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A postal address. ``country`` is ISO 3166-1 alpha-2; ``residential`` may be unknown."""

    country: Annotated[str, msgspec.Meta(max_length=10)]
    postal_code: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]
    name: ShortText | None = None
    company: ShortText | None = None
    street1: ShortText | None = None
    street2: ShortText | None = None
    street3: ShortText | None = None
    city: ShortText | None = None
    state: ShortText | None = None
    phone: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    residential: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        country = self.country.upper()
        if country not in ISO_3166_ALPHA2:
            raise ValueError("country: must be an ISO 3166-1 alpha-2 code such as US or DE")
        msgspec.structs.force_setattr(self, "country", country)
        if not self.postal_code:
            raise ValueError("postal_code: must not be blank")


class Weight(Inbound, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``{"value": 3.5, "unit": "oz"}``; the value is kept as the decimal the client wrote."""

    value: Annotated[float, msgspec.Meta(gt=0, le=100_000)]
    unit: WeightUnit

    @property
    def amount(self) -> Decimal:
        return exact_decimal(self.value)


class Dimensions(Inbound, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Outer box size. All three sides are > 0."""

    length: Annotated[float, msgspec.Meta(gt=0, le=100_000)]
    width: Annotated[float, msgspec.Meta(gt=0, le=100_000)]
    height: Annotated[float, msgspec.Meta(gt=0, le=100_000)]
    unit: LengthUnit

    def sides(self) -> tuple[Decimal, Decimal, Decimal]:
        return (exact_decimal(self.length), exact_decimal(self.width), exact_decimal(self.height))


# --- carriers: what ShipStation has connected to the account ----------------------------------


class ServiceInfo(msgspec.Struct, frozen=True, kw_only=True):
    service_code: str
    name: str
    domestic: bool
    international: bool


class PackageInfo(msgspec.Struct, frozen=True, kw_only=True):
    package_code: str
    name: str
    domestic: bool = True
    international: bool = True


class CarrierInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A connected carrier account, as ShipStation lists it."""

    carrier_code: str
    name: str
    nickname: str | None = None
    account_number: str | None = None
    requires_funded_account: bool = False
    balance: Decimal | None = None
    primary: bool = False
    shipping_provider_id: int | None = None


class CarrierCatalogEntry(msgspec.Struct, frozen=True, kw_only=True):
    carrier_code: str
    name: str
    nickname: str | None = None
    services: list[ServiceInfo]
    packages: list[PackageInfo]


class CarriersResponse(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /v1/carriers``: ``refreshed_at`` says how old the cached catalogue is."""

    carriers: list[CarrierCatalogEntry]
    refreshed_at: dt.datetime


# --- rating and labels at ShipStation (upstream-neutral) --------------------------------------


class RateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One ``getrates`` call: one carrier, optionally one service and one package type."""

    carrier_code: str
    ship_from: Address
    ship_to: Address
    weight: Weight
    service_code: str | None = None
    package_code: str | None = None
    dimensions: Dimensions | None = None
    confirmation: Confirmation | None = None


class RateRow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One priced service (or service + package variant) for one package."""

    service_code: str
    service_name: str
    shipment_cost: Decimal
    other_cost: Decimal


class LabelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One ``createlabel`` call: one package. ``purchase_key`` travels in customField1."""

    carrier_code: str
    service_code: str
    package_code: str
    ship_date: dt.date
    ship_from: Address
    ship_to: Address
    weight: Weight
    dimensions: Dimensions | None = None
    confirmation: Confirmation | None = None
    test_label: bool = False
    purchase_key: str | None = None
    customs: CustomsDeclaration | None = None  # international only


class ShipmentRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A shipment (label) at ShipStation: from ``createlabel`` or the ``GET /shipments`` list."""

    shipment_id: int
    carrier_code: str | None
    service_code: str | None
    package_code: str | None
    tracking_number: str | None
    shipment_cost: Decimal
    insurance_cost: Decimal
    ship_date: dt.date | None
    created_at: dt.datetime | None
    voided: bool = False
    label_pdf: bytes | None = None
    ship_to_postal_code: str | None = None
    ship_to_country: str | None = None
    custom_field1: str | None = None
    weight: Weight | None = None
    customs_form_pdf: bytes | None = None


class ShipmentPage(msgspec.Struct, frozen=True, kw_only=True):
    shipments: list[ShipmentRecord]
    total: int
    page: int
    pages: int


class ShipmentQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of ``GET /shipments``; datetimes are UTC and converted at the edge."""

    carrier_code: str | None = None
    service_code: str | None = None
    tracking_number: str | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    ship_date_from: dt.date | None = None
    page: int = 1
    page_size: int = 100


class VoidResult(msgspec.Struct, frozen=True, kw_only=True):
    approved: bool
    message: str


# --- customs (international shipments) ---------------------------------------------------------

CustomsContents = Literal["merchandise", "documents", "gift", "returned_goods", "sample"]
NonDelivery = Literal["return_to_sender", "treat_as_abandoned"]
# A money string ≥ 0 with at most two decimals ("50.00"); a regex on ASCII digits, length-bound.
Money = Annotated[
    str, msgspec.Meta(min_length=1, max_length=13, pattern=r"^[0-9]{1,10}(\.[0-9]{1,2})?$")
]
# 6 to 10 digits, optionally dotted ("0902.10", "6109.10.0012").
HsCode = Annotated[str, msgspec.Meta(max_length=19, pattern=r"^(?:[0-9]\.?){5,9}[0-9]$")]


class CustomsIn(Inbound, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The declaration's header: what the parcels hold and what happens if they cannot be
    delivered."""

    contents: CustomsContents = "merchandise"
    non_delivery: NonDelivery = "return_to_sender"


DESCRIPTION_MAX = 100
UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})  # Unicode categories


def description_problem(text: str) -> str | None:
    """Why ``text`` (trimmed) cannot describe goods to customs, or None: 3 to 100 characters,
    printable (no control, format or invisible characters), with at least one letter."""
    if any(unicodedata.category(c) in UNPRINTABLE for c in text):
        return "must be printable text (no control or invisible characters)"
    if not 3 <= len(text) <= DESCRIPTION_MAX:
        return f"must be 3 to {DESCRIPTION_MAX} characters besides surrounding white space"
    if not any(c.isalpha() for c in text):
        return "must describe the goods in words (a number or code alone is not a description)"
    return None


class CustomsItem(Inbound, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One line of a package's customs declaration. ``value`` is the line's total in USD."""

    # the length is checked once trimmed (``description_problem``); this bounds the raw text
    description: Annotated[str, msgspec.Meta(min_length=3, max_length=4 * DESCRIPTION_MAX)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    value: Money
    country_of_origin: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]
    hs_code: HsCode | None = None
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        problem = description_problem(self.description)
        if problem is not None:
            raise ValueError(f"description: {problem}")
        require_text(self, "sku")
        if self.country_of_origin not in ISO_3166_ALPHA2:
            raise ValueError("country_of_origin: must be an ISO 3166-1 alpha-2 code such as CN")

    @property
    def amount(self) -> Decimal:
        return Decimal(self.value)


class CustomsDeclaration(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one package's label declares to customs, however it was obtained."""

    contents: CustomsContents
    non_delivery: NonDelivery
    items: list[CustomsItem]


# --- POST /v1/rates ----------------------------------------------------------------------------


class PackageIn(Inbound, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One packed box. ``package_code`` absent means ``package``; ``null`` asks every package type
    the carrier has (stamps_com then answers one row per service *and* package type)."""

    weight: Weight
    dimensions: Dimensions | None = None
    package_code: Code | msgspec.UnsetType | None = msgspec.UNSET
    box: ShortText | None = None
    # [] is the same as absent: nothing declared
    customs_items: Annotated[list[CustomsItem], msgspec.Meta(max_length=100)] | None = None

    @property
    def requested_package_code(self) -> str | None:
        return "package" if self.package_code is msgspec.UNSET else self.package_code


class ShipmentIn(Inbound, frozen=True, kw_only=True, forbid_unknown_fields=True):
    ship_to: Address
    packages: Annotated[list[PackageIn], msgspec.Meta(min_length=1, max_length=50)]
    ship_from: Address | None = None
    confirmation: Confirmation = "none"
    customs: CustomsIn | None = None


class RatesRequest(Inbound, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Exactly one of ``sale_id`` or ``shipment``."""

    sale_id: SaleRef | None = None
    task_id: SaleRef | None = None
    shipment: ShipmentIn | None = None
    carriers: Annotated[list[Code], msgspec.Meta(min_length=1, max_length=50)] | None = None
    services: Annotated[list[Code], msgspec.Meta(min_length=1, max_length=200)] | None = None
    max_age_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require_text(self, "sale_id", "task_id")
        if (self.sale_id is None) == (self.shipment is None):
            raise ValueError("shipment: give exactly one of sale_id or shipment")
        if self.task_id is not None and self.sale_id is None:
            raise ValueError("task_id: only goes with sale_id")


class QuotePackage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one box of a multi-package quote costs."""

    box: str | None
    package_code: str | None
    shipment_cost: str
    other_cost: str


class Quote(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    quote_id: str
    carrier_code: str
    service_code: str
    service_name: str
    package_code: str | None
    shipment_cost: str
    other_cost: str
    markup: str
    total: str
    currency: str
    packages: int
    cached: bool
    quoted_at: dt.datetime
    expires_at: dt.datetime
    stale: bool = False
    age_s: int | None = None
    breakdown: list[QuotePackage] = []


class LegError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    carrier_code: str
    code: str
    message: str
    box: str | None = None


class RatesResponse(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """``defaults`` lists what had to be assumed about a sale's boxes (missing product data)."""

    quotes: list[Quote]
    errors: list[LegError]
    complete: bool
    sale_id: str | None
    task_id: str | None
    defaults: list[str] = []
