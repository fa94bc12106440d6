"""The ShipStation sandbox's carriers and its deterministic, plausible price model.

A price depends on what a real one depends on: the zone (distance from origin to destination,
derived from ZIP prefixes, or the country when abroad), the billable weight (the larger of the
actual and the dimensional weight, rounded up to a whole pound as carriers do), the residential
surcharge, the delivery confirmation and a fuel surcharge. Same input, same price, always.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal

from ratesvc.units import convert_length, convert_weight


@dataclass(frozen=True)
class Service:
    code: str
    name: str
    domestic: bool
    international: bool
    base: Decimal
    per_lb: Decimal
    max_lb: Decimal


@dataclass(frozen=True)
class PackageType:
    code: str
    name: str
    domestic: bool = True
    international: bool = True
    flat_price: Decimal | None = None  # flat-rate packaging: price ignores weight and zone


@dataclass(frozen=True)
class Carrier:
    code: str
    name: str
    nickname: str | None
    account_number: str | None
    requires_funded_account: bool
    services: tuple[Service, ...]
    packages: tuple[PackageType, ...]
    dim_divisor: Decimal  # cubic inches per pound of dimensional weight
    dim_threshold_in3: Decimal  # dimensional weight applies above this volume
    fuel_percent: Decimal
    residential_surcharge: Decimal
    confirmation_fees: dict[str, Decimal]
    state_required: bool = False  # UPS wants toState for US/CA destinations


D = Decimal


def _svc(
    code: str, name: str, dom: bool, intl: bool, base: str, per_lb: str, max_lb: str
) -> Service:
    return Service(code, name, dom, intl, D(base), D(per_lb), D(max_lb))


CARRIERS: dict[str, Carrier] = {
    "stamps_com": Carrier(
        code="stamps_com", name="Stamps.com", nickname="Free", account_number=None,
        requires_funded_account=True,
        services=(
            _svc("usps_first_class_mail", "USPS First Class Mail", True, False, "3.42", "2.10", "0.999"),
            _svc("usps_media_mail", "USPS Media Mail", True, False, "3.19", "0.67", "70"),
            _svc("usps_parcel_select", "USPS Parcel Select Ground", True, False, "7.05", "0.91", "70"),
            _svc("usps_priority_mail", "USPS Priority Mail", True, False, "7.31", "1.02", "70"),
            _svc("usps_priority_mail_express", "USPS Priority Mail Express", True, False, "26.35", "2.64", "70"),
            _svc("usps_first_class_mail_international", "USPS First Class Mail Intl", False, True, "14.10", "6.25", "3.99"),
            _svc("usps_priority_mail_international", "USPS Priority Mail Intl", False, True, "41.20", "4.36", "66"),
            _svc("usps_priority_mail_express_international", "USPS Priority Mail Express Intl", False, True, "58.95", "5.12", "66"),
        ),
        packages=(
            PackageType("package", "Package"),
            PackageType("flat_rate_envelope", "Flat Rate Envelope", flat_price=D("9.85")),
            PackageType("flat_rate_legal_envelope", "Flat Rate Legal Envelope", flat_price=D("10.15")),
            PackageType("flat_rate_padded_envelope", "Flat Rate Padded Envelope", flat_price=D("10.60")),
            PackageType("large_envelope_or_flat", "Large Envelope or Flat"),
            PackageType("large_flat_rate_box", "Large Flat Rate Box", flat_price=D("22.80")),
            PackageType("large_package", 'Large Package (any side > 12")'),
            PackageType("letter", "Letter"),
            PackageType("medium_flat_rate_box", "Medium Flat Rate Box", flat_price=D("17.10")),
            PackageType("regional_rate_box_a", "Regional Rate Box A", international=False),
            PackageType("regional_rate_box_b", "Regional Rate Box B", international=False),
            PackageType("small_flat_rate_box", "Small Flat Rate Box", flat_price=D("10.40")),
            PackageType("thick_envelope", "Thick Envelope"),
        ),
        dim_divisor=D(166), dim_threshold_in3=D(1728), fuel_percent=D(0),
        residential_surcharge=D(0),
        confirmation_fees={"delivery": D(0), "signature": D("3.65"), "adult_signature": D("8.40"),
                           "direct_signature": D("3.65")},
    ),
    "ups": Carrier(
        code="ups", name="UPS", nickname=None, account_number="A1B2C3",
        requires_funded_account=False,
        services=(
            _svc("ups_ground", "UPS® Ground", True, False, "9.12", "0.88", "150"),
            _svc("ups_3_day_select", "UPS 3 Day Select®", True, False, "14.60", "1.71", "150"),
            _svc("ups_2nd_day_air", "UPS 2nd Day Air®", True, False, "19.85", "2.36", "150"),
            _svc("ups_next_day_air_saver", "UPS Next Day Air Saver®", True, False, "39.40", "3.95", "150"),
            _svc("ups_next_day_air", "UPS Next Day Air®", True, False, "45.75", "4.40", "150"),
            _svc("ups_worldwide_saver", "UPS Worldwide Saver®", False, True, "88.30", "7.85", "150"),
            _svc("ups_standard_international", "UPS Standard®", False, True, "31.90", "3.15", "150"),
        ),
        packages=(
            PackageType("package", "Package"),
            PackageType("ups_letter", "UPS Letter"),
            PackageType("ups_pak", "UPS Pak"),
            PackageType("ups_tube", "UPS Tube"),
        ),
        dim_divisor=D(139), dim_threshold_in3=D(0), fuel_percent=D("0.145"),
        residential_surcharge=D("5.10"),
        confirmation_fees={"delivery": D("0"), "signature": D("6.20"), "adult_signature": D("7.60"),
                           "direct_signature": D("6.20")},
        state_required=True,
    ),
    "fedex": Carrier(
        code="fedex", name="FedEx", nickname="FEDEX", account_number="123456789",
        requires_funded_account=False,
        services=(
            _svc("fedex_ground", "FedEx Ground®", True, False, "8.25", "0.86", "150"),
            _svc("fedex_home_delivery", "FedEx Home Delivery®", True, False, "8.95", "0.86", "150"),
            _svc("fedex_express_saver", "FedEx Express Saver®", True, False, "14.28", "1.64", "150"),
            _svc("fedex_2day", "FedEx 2Day®", True, False, "20.03", "2.21", "150"),
            _svc("fedex_2day_am", "FedEx 2Day® A.M.", True, False, "23.04", "2.40", "150"),
            _svc("fedex_standard_overnight", "FedEx Standard Overnight®", True, False, "46.96", "4.12", "150"),
            _svc("fedex_priority_overnight", "FedEx Priority Overnight®", True, False, "50.23", "4.40", "150"),
            _svc("fedex_first_overnight", "FedEx First Overnight®", True, False, "87.80", "5.02", "150"),
            _svc("fedex_international_economy", "FedEx International Economy®", False, True, "62.15", "6.80", "150"),
            _svc("fedex_international_priority", "FedEx International Priority®", False, True, "79.40", "7.95", "150"),
        ),
        packages=(
            PackageType("package", "Package"),
            PackageType("fedex_envelope", "FedEx Envelope"),
            PackageType("fedex_pak", "FedEx Pak"),
            PackageType("fedex_box_small", "FedEx Small Box"),
        ),
        dim_divisor=D(139), dim_threshold_in3=D(0), fuel_percent=D("0.04"),
        residential_surcharge=D("4.85"),
        confirmation_fees={"delivery": D("0"), "signature": D("6.20"), "adult_signature": D("7.60"),
                           "direct_signature": D("7.10")},
    ),
    "dhl_express_worldwide": Carrier(
        code="dhl_express_worldwide", name="DHL Express", nickname=None,
        account_number="960000000", requires_funded_account=False,
        services=(
            _svc("dhl_express_worldwide", "DHL Express Worldwide", False, True, "54.60", "6.10", "150"),
            _svc("dhl_express_12_00", "DHL Express 12:00", False, True, "71.25", "7.05", "150"),
            _svc("dhl_express_domestic", "DHL Express Domestic", True, False, "24.30", "2.45", "150"),
        ),
        packages=(PackageType("package", "Package"), PackageType("dhl_express_envelope", "DHL Envelope")),
        dim_divisor=D(139), dim_threshold_in3=D(0), fuel_percent=D("0.21"),
        residential_surcharge=D("0"),
        confirmation_fees={"delivery": D("0"), "signature": D("5.00"), "adult_signature": D("7.50"),
                           "direct_signature": D("5.00")},
    ),
}  # fmt: skip

# More carrier accounts seen on real ShipStation accounts, for benchmarks that rate eight at once.
CARRIERS["ups_walleted"] = replace(
    CARRIERS["ups"],
    code="ups_walleted",
    name="UPS by ShipStation",
    account_number=None,
    services=tuple(replace(s, base=s.base * D("0.93")) for s in CARRIERS["ups"].services),
)
CARRIERS["endicia"] = replace(
    CARRIERS["stamps_com"],
    code="endicia",
    name="Endicia",
    nickname=None,
    services=tuple(replace(s, base=s.base + D("0.05")) for s in CARRIERS["stamps_com"].services),
)
CARRIERS["dhl_ecommerce_wallet"] = Carrier(
    code="dhl_ecommerce_wallet",
    name="DHL eCommerce",
    nickname=None,
    account_number=None,
    requires_funded_account=True,
    services=(
        _svc("dhl_parcel_ground", "DHL SM Parcel Ground", True, False, "6.10", "0.74", "25"),
        _svc("dhl_parcel_expedited", "DHL SM Parcel Expedited", True, False, "7.05", "0.81", "25"),
        _svc(
            "dhl_parcel_international_direct",
            "DHL Parcel International Direct",
            False,
            True,
            "17.90",
            "4.10",
            "44",
        ),
    ),
    packages=(PackageType("package", "Package"),),
    dim_divisor=D(166),
    dim_threshold_in3=D(1728),
    fuel_percent=D("0.05"),
    residential_surcharge=D(0),
    confirmation_fees={"signature": D("3.10")},
)
CARRIERS["globalpost"] = Carrier(
    code="globalpost",
    name="GlobalPost",
    nickname=None,
    account_number=None,
    requires_funded_account=True,
    services=(
        _svc("gp_economy", "GlobalPost Economy", False, True, "11.60", "5.20", "44"),
        _svc("gp_standard", "GlobalPost Standard", False, True, "15.30", "5.95", "66"),
        _svc("gp_domestic_ground", "GlobalPost Domestic Ground", True, False, "6.80", "0.79", "70"),
    ),
    packages=(PackageType("package", "Package"),),
    dim_divisor=D(166),
    dim_threshold_in3=D(1728),
    fuel_percent=D(0),
    residential_surcharge=D(0),
    confirmation_fees={"signature": D("3.30")},
)

_NEIGHBOURS = {"CA", "MX"}
FLAT_RATE_SERVICES = frozenset({"usps_priority_mail"})


def zone(from_postal: str, to_country: str, to_postal: str) -> int:
    """2-8 within the US by ZIP prefix distance, 9 for Canada/Mexico, 10 for the rest."""
    if to_country != "US":
        return 9 if to_country in _NEIGHBOURS else 10
    a, b = from_postal.strip()[:1], to_postal.strip()[:1]
    if not (a.isdigit() and b.isdigit()):
        return 5
    return 2 + min(6, abs(int(a) - int(b)))


def billable_pounds(
    carrier: Carrier,
    weight: Decimal,
    weight_unit: str,
    dims: tuple[Decimal, Decimal, Decimal] | None,
    dims_unit: str | None,
) -> Decimal:
    """Max of actual and dimensional weight, rounded up to a whole pound (to 1 oz under 1 lb)."""
    actual = convert_weight(weight, weight_unit, "lb")
    billable = actual
    if dims is not None and dims_unit is not None:
        inches = [convert_length(side, dims_unit, "in") for side in dims]
        volume = inches[0] * inches[1] * inches[2]
        if volume > carrier.dim_threshold_in3:
            billable = max(billable, volume / carrier.dim_divisor)
    if billable < 1:
        return D(math.ceil(billable * 16)) / 16
    return D(math.ceil(billable))


def _cents(value: Decimal) -> Decimal:
    return value.quantize(D("0.01"), rounding=ROUND_HALF_UP)


def price(
    carrier: Carrier,
    service: Service,
    package: PackageType,
    *,
    zone_number: int,
    billable_lb: Decimal,
    residential: bool,
    confirmation: str | None,
) -> tuple[Decimal, Decimal] | None:
    """(shipmentCost, otherCost), or None when the service cannot carry this package."""
    if package.flat_price is not None:
        if service.code not in FLAT_RATE_SERVICES:
            return None
        shipment = package.flat_price
    elif billable_lb > service.max_lb:
        return None
    else:
        zone_factor = 1 + D("0.085") * (zone_number - 2)
        shipment = (service.base + service.per_lb * billable_lb) * zone_factor
    shipment = _cents(shipment)
    other = shipment * carrier.fuel_percent
    if residential:
        other += carrier.residential_surcharge
    other += carrier.confirmation_fees.get(confirmation or "none", D(0))
    return shipment, _cents(other)
