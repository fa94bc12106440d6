"""ShipStation v1 JSON, field for field. Lenient: unknown fields are ignored, optional ones default.

Money fields are ``Decimal`` decoded straight from the JSON text (``4.0100`` keeps its scale);
postal codes are strings. Requests are encoded with decimals as JSON numbers, as ShipStation
expects. Nothing outside ``ratesvc.upstreams.shipstation`` imports this module.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec


class _Wire(msgspec.Struct, kw_only=True):
    pass


class Carrier(_Wire, kw_only=True):
    name: str = ""
    code: str
    accountNumber: str | None = None
    requiresFundedAccount: bool | None = None
    balance: Decimal | None = None
    nickname: str | None = None
    shippingProviderId: int | None = None
    primary: bool | None = None


class ServiceOrPackage(_Wire, kw_only=True):
    """``listservices`` and ``listpackages`` items share this shape."""

    carrierCode: str | None = None
    code: str
    name: str = ""
    domestic: bool | None = None
    international: bool | None = None


class Weight(_Wire, kw_only=True, omit_defaults=True):
    value: Decimal
    units: str
    WeightUnits: int | None = None


class Dimensions(_Wire, kw_only=True):
    units: str
    length: Decimal
    width: Decimal
    height: Decimal


class RateRequest(_Wire, kw_only=True):
    carrierCode: str
    serviceCode: str | None = None
    packageCode: str | None = None
    fromPostalCode: str
    fromCity: str | None = None
    fromState: str | None = None
    toState: str | None = None
    toCountry: str
    toPostalCode: str
    toCity: str | None = None
    weight: Weight
    dimensions: Dimensions | None = None
    confirmation: str | None = None
    residential: bool | None = None


class Rate(_Wire, kw_only=True):
    serviceName: str = ""
    serviceCode: str
    shipmentCost: Decimal
    otherCost: Decimal = Decimal(0)


class Address(_Wire, kw_only=True):
    name: str | None = None
    company: str | None = None
    street1: str | None = None
    street2: str | None = None
    street3: str | None = None
    city: str | None = None
    state: str | None = None
    postalCode: str | None = None
    country: str | None = None
    phone: str | None = None
    residential: bool | None = None


class AdvancedOptions(_Wire, kw_only=True):
    customField1: str | None = None
    customField2: str | None = None
    customField3: str | None = None


class CustomsItem(_Wire, kw_only=True):
    description: str
    quantity: int
    value: Decimal  # the line's value in USD, sent as a JSON number
    harmonizedTariffCode: str | None = None
    countryOfOrigin: str


class InternationalOptions(_Wire, kw_only=True):
    contents: str
    nonDelivery: str
    customsItems: list[CustomsItem]


class CreateLabelRequest(_Wire, kw_only=True):
    carrierCode: str
    serviceCode: str
    packageCode: str
    confirmation: str | None = None
    shipDate: str
    weight: Weight
    dimensions: Dimensions | None = None
    shipFrom: Address
    shipTo: Address
    insuranceOptions: None = None
    internationalOptions: InternationalOptions | None = None
    advancedOptions: AdvancedOptions | None = None
    testLabel: bool = False


class Shipment(_Wire, kw_only=True):
    """A created label (``createlabel``) or a list item (``GET /shipments``)."""

    shipmentId: int
    orderId: int | None = None
    createDate: str | None = None
    shipDate: str | None = None
    shipmentCost: Decimal = Decimal(0)
    insuranceCost: Decimal | None = None
    trackingNumber: str | None = None
    carrierCode: str | None = None
    serviceCode: str | None = None
    packageCode: str | None = None
    confirmation: str | None = None
    voided: bool | None = False
    voidDate: str | None = None
    shipTo: Address | None = None
    weight: Weight | None = None
    advancedOptions: AdvancedOptions | None = None
    labelData: str | None = None
    formData: str | None = None


class ShipmentList(_Wire, kw_only=True):
    shipments: list[Shipment] = []
    total: int = 0
    page: int = 1
    pages: int = 0


class VoidRequest(_Wire, kw_only=True):
    shipmentId: int


class VoidResponse(_Wire, kw_only=True):
    approved: bool = False
    message: str = ""


class ModelStateError(_Wire, kw_only=True):
    """400: ``{"Message": "The request is invalid.", "ModelState": {"request.x": ["..."]}}``."""

    Message: str | None = None
    ModelState: dict[str, list[str]] | None = None
    ExceptionMessage: str | None = None
    ExceptionType: str | None = None
    message: str | None = None


encoder = msgspec.json.Encoder(decimal_format="number")
