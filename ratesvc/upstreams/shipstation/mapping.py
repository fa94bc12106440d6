"""Pure translation between ShipStation v1 wire Structs and ratesvc's domain Structs.

Nothing here does I/O; every function is tested against the JSON samples in ``tests/data``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec

from ratesvc.errors import (
    UpstreamAuth,
    UpstreamError,
    UpstreamFailure,
    UpstreamThrottled,
    UpstreamUnavailable,
)
from ratesvc.models import (
    Address,
    CarrierInfo,
    CustomsDeclaration,
    Dimensions,
    LabelRequest,
    PackageInfo,
    RateRequest,
    RateRow,
    ServiceInfo,
    ShipmentPage,
    ShipmentQuery,
    ShipmentRecord,
    VoidResult,
    Weight,
)
from ratesvc.units import convert_length, convert_weight
from ratesvc.upstreams.shipstation import wire

# ShipStation's timestamps are US Pacific wall-clock time without an offset.
PACIFIC = ZoneInfo("America/Los_Angeles")

_WEIGHT_UNITS = {"oz": ("ounces", "oz"), "lb": ("pounds", "lb"), "g": ("grams", "g")}
_WIRE_WEIGHT_UNITS = {"ounces": "oz", "pounds": "lb", "grams": "g"}


def carriers_from_wire(items: list[wire.Carrier]) -> list[CarrierInfo]:
    return [
        CarrierInfo(
            carrier_code=item.code,
            name=item.name or item.code,
            nickname=item.nickname,
            account_number=item.accountNumber,
            requires_funded_account=bool(item.requiresFundedAccount),
            balance=item.balance,
            primary=bool(item.primary),
            shipping_provider_id=item.shippingProviderId,
        )
        for item in items
    ]


def services_from_wire(items: list[wire.ServiceOrPackage]) -> list[ServiceInfo]:
    return [
        ServiceInfo(
            service_code=item.code,
            name=item.name or item.code,
            domestic=item.domestic is not False,
            international=bool(item.international),
        )
        for item in items
    ]


def packages_from_wire(items: list[wire.ServiceOrPackage]) -> list[PackageInfo]:
    return [
        PackageInfo(
            package_code=item.code,
            name=item.name or item.code,
            domestic=item.domestic is not False,
            international=item.international is not False,
        )
        for item in items
    ]


def weight_to_wire(weight: Weight) -> wire.Weight:
    """``oz``/``lb``/``g`` pass through; ``kg`` becomes grams (ShipStation has no kilograms)."""
    amount = weight.amount
    if weight.unit == "kg":
        return wire.Weight(value=convert_weight(amount, "kg", "g"), units="grams")
    return wire.Weight(value=amount, units=_WEIGHT_UNITS[weight.unit][0])


def weight_from_wire(weight: wire.Weight) -> Weight | None:
    unit = _WIRE_WEIGHT_UNITS.get(weight.units.lower())
    if unit is None or weight.value <= 0:
        return None
    return Weight(value=float(weight.value), unit=unit)  # type: ignore[arg-type]


def dimensions_to_wire(dimensions: Dimensions) -> wire.Dimensions:
    """``in`` and ``cm`` pass through; ``mm`` and ``m`` become centimetres, exactly."""
    if dimensions.unit == "in":
        units, target = "inches", "in"
    else:
        units, target = "centimeters", "cm"
    length, width, height = (
        convert_length(side, dimensions.unit, target) for side in dimensions.sides()
    )
    return wire.Dimensions(units=units, length=length, width=width, height=height)


def rate_request_to_wire(request: RateRequest) -> wire.RateRequest:
    return wire.RateRequest(
        carrierCode=request.carrier_code,
        serviceCode=request.service_code,
        packageCode=request.package_code,
        fromPostalCode=request.ship_from.postal_code,
        fromCity=request.ship_from.city,
        fromState=request.ship_from.state,
        toState=request.ship_to.state,
        toCountry=request.ship_to.country,
        toPostalCode=request.ship_to.postal_code,
        toCity=request.ship_to.city,
        weight=weight_to_wire(request.weight),
        dimensions=dimensions_to_wire(request.dimensions) if request.dimensions else None,
        confirmation=request.confirmation,
        residential=request.ship_to.residential,
    )


def rates_from_wire(items: list[wire.Rate]) -> list[RateRow]:
    """Every row is kept, including repeated ``serviceCode`` rows (package variants)."""
    return [
        RateRow(
            service_code=item.serviceCode,
            service_name=item.serviceName or item.serviceCode,
            shipment_cost=item.shipmentCost,
            other_cost=item.otherCost,
        )
        for item in items
    ]


def address_to_wire(address: Address) -> wire.Address:
    return wire.Address(
        name=address.name,
        company=address.company,
        street1=address.street1,
        street2=address.street2,
        street3=address.street3,
        city=address.city,
        state=address.state,
        postalCode=address.postal_code,
        country=address.country,
        phone=address.phone,
        residential=address.residential,
    )


def customs_to_wire(customs: CustomsDeclaration) -> wire.InternationalOptions:
    """Items go unchanged: the value (a USD money string) as a number, the HS code as written."""
    return wire.InternationalOptions(
        contents=customs.contents,
        nonDelivery=customs.non_delivery,
        customsItems=[
            wire.CustomsItem(
                description=item.description,
                quantity=item.quantity,
                value=item.amount,
                harmonizedTariffCode=item.hs_code,
                countryOfOrigin=item.country_of_origin,
            )
            for item in customs.items
        ],
    )


def label_request_to_wire(request: LabelRequest) -> wire.CreateLabelRequest:
    return wire.CreateLabelRequest(
        carrierCode=request.carrier_code,
        serviceCode=request.service_code,
        packageCode=request.package_code,
        confirmation=request.confirmation,
        shipDate=request.ship_date.isoformat(),
        weight=weight_to_wire(request.weight),
        dimensions=dimensions_to_wire(request.dimensions) if request.dimensions else None,
        shipFrom=address_to_wire(request.ship_from),
        shipTo=address_to_wire(request.ship_to),
        internationalOptions=customs_to_wire(request.customs) if request.customs else None,
        advancedOptions=(
            wire.AdvancedOptions(customField1=request.purchase_key)
            if request.purchase_key
            else None
        ),
        testLabel=request.test_label,
    )


def parse_pacific(value: str | None) -> dt.datetime | None:
    """``2014-10-03T06:51:33.6270000`` (Pacific, 7 fraction digits) → aware UTC datetime."""
    if not value:
        return None
    main, _, fraction = value.partition(".")
    try:
        naive = dt.datetime.fromisoformat(main)
    except ValueError:
        return None
    if fraction.isdigit():
        naive = naive.replace(microsecond=int(fraction[:6].ljust(6, "0")))
    return naive.replace(tzinfo=PACIFIC).astimezone(dt.UTC)


def format_pacific(value: dt.datetime) -> str:
    """Aware datetime → ShipStation's Pacific wall-clock query format."""
    return value.astimezone(PACIFIC).strftime("%Y-%m-%d %H:%M:%S")


def _parse_date(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def _base64(data: str | None) -> bytes | None:
    if not data:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def shipment_from_wire(item: wire.Shipment) -> ShipmentRecord:
    return ShipmentRecord(
        shipment_id=item.shipmentId,
        carrier_code=item.carrierCode,
        service_code=item.serviceCode,
        package_code=item.packageCode,
        tracking_number=item.trackingNumber or None,
        shipment_cost=item.shipmentCost,
        insurance_cost=item.insuranceCost if item.insuranceCost is not None else Decimal(0),
        ship_date=_parse_date(item.shipDate),
        created_at=parse_pacific(item.createDate),
        voided=bool(item.voided),
        label_pdf=_base64(item.labelData),
        customs_form_pdf=_base64(item.formData),
        ship_to_postal_code=item.shipTo.postalCode if item.shipTo else None,
        ship_to_country=item.shipTo.country if item.shipTo else None,
        custom_field1=item.advancedOptions.customField1 if item.advancedOptions else None,
        weight=weight_from_wire(item.weight) if item.weight else None,
    )


def shipment_page_from_wire(page: wire.ShipmentList) -> ShipmentPage:
    return ShipmentPage(
        shipments=[shipment_from_wire(item) for item in page.shipments],
        total=page.total,
        page=page.page,
        pages=page.pages,
    )


def shipment_query_to_params(query: ShipmentQuery) -> dict[str, str]:
    params: dict[str, str] = {
        "page": str(query.page),
        "pageSize": str(query.page_size),
        "sortBy": "CreateDate",
        "sortDir": "ASC",
    }
    if query.carrier_code:
        params["carrierCode"] = query.carrier_code
    if query.service_code:
        params["serviceCode"] = query.service_code
    if query.tracking_number:
        params["trackingNumber"] = query.tracking_number
    if query.created_from:
        params["createDateStart"] = format_pacific(query.created_from)
    if query.created_to:
        params["createDateEnd"] = format_pacific(query.created_to)
    if query.ship_date_from:
        params["shipDateStart"] = query.ship_date_from.isoformat()
    return params


def void_from_wire(item: wire.VoidResponse) -> VoidResult:
    return VoidResult(approved=item.approved, message=item.message)


_AUTH_HINT = (
    "ShipStation rejected the API key and secret (401). If the keys were regenerated in "
    "ShipStation (Settings → API Settings), the old pair stopped working at once: update "
    "RATESVC_SHIPSTATION_API_KEY and RATESVC_SHIPSTATION_API_SECRET (or the account's "
    "shipstation table) with the new pair. A ShipStation v2 key does not work on the v1 API."
)


def error_from_response(status: int, body: bytes, endpoint: str) -> UpstreamFailure:
    """The one place a ShipStation error answer becomes a typed error."""
    try:
        parsed = msgspec.json.decode(body, type=wire.ModelStateError) if body else None
    except (msgspec.DecodeError, msgspec.ValidationError):
        parsed = None

    def make(kind: type[UpstreamFailure], detail: str) -> UpstreamFailure:
        return kind(detail, upstream="shipstation", endpoint=endpoint, upstream_status=status)

    if status == 401:
        return make(UpstreamAuth, _AUTH_HINT)
    if status == 429:
        return make(UpstreamThrottled, "ShipStation's rate limit is exhausted for this key pair")
    if status == 400:
        return make(UpstreamError, "ShipStation refused the request: " + _model_state_text(parsed))
    if status == 500 and parsed is not None and parsed.ExceptionMessage:
        return make(UpstreamError, f"ShipStation: {parsed.ExceptionMessage}")
    if status in (500, 502, 503, 504):
        return make(
            UpstreamUnavailable, f"ShipStation is failing ({status}) on {endpoint}; try again"
        )
    text = (parsed.Message or parsed.message) if parsed is not None else None
    return make(
        UpstreamError,
        f"ShipStation answered {status} on {endpoint}" + (f": {text}" if text else ""),
    )


def _model_state_text(parsed: wire.ModelStateError | None) -> str:
    if parsed is None:
        return "no details given"
    if parsed.ModelState:
        return "; ".join(
            f"{field.removeprefix('request.')}: {' '.join(messages)}"
            for field, messages in parsed.ModelState.items()
        )
    return parsed.ExceptionMessage or parsed.Message or parsed.message or "no details given"
