"""A rating leg: one ShipStation ``getrates`` call (one carrier, one package), in canonical form.

Two legs that would get the same prices must look the same, so they share a cache entry and an
in-flight call. Canonical form (and exactly what is sent upstream, so a cached answer is the
answer to the key):

* postal codes trimmed and upper-cased; US ZIP+4 cut to the 5-digit ZIP; states upper-cased;
* weight in ounces rounded **up** to 0.1 oz, sides in inches rounded **up** to 0.1 in and sorted
  longest first: never lighter or smaller than the parcel, so never under-quoted;
* residential ``true`` / ``false`` / unknown kept apart; the confirmation; the carrier, the one
  service asked for (if any) and the package type.

City, street and names do not change a rate, so they are not part of the key (the first caller's
are sent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

import msgspec

from ratesvc.models import Address, Dimensions, PackageIn, RateRequest, Weight
from ratesvc.units import convert_length, convert_weight

WEIGHT_STEP_OZ = Decimal("0.1")
LENGTH_STEP_IN = Decimal("0.1")
_ZIP_PLUS_4 = re.compile(r"^(\d{5})-?\d{4}$")


def normal_postal_code(postal_code: str, country: str) -> str:
    code = postal_code.strip().upper()
    if country == "US":
        match = _ZIP_PLUS_4.match(code)
        if match:
            return match[1]
    return code


def normal_address(address: Address) -> Address:
    return msgspec.structs.replace(
        address,
        postal_code=normal_postal_code(address.postal_code, address.country),
        state=address.state.upper() if address.state else None,
    )


def _up(value: Decimal, step: Decimal) -> Decimal:
    """Round up to a multiple of ``step`` (a power of ten), always written with its places."""
    return value.quantize(step, rounding=ROUND_CEILING)


def parcel_weight_oz(package: PackageIn) -> Decimal:
    return _up(convert_weight(package.weight.amount, package.weight.unit, "oz"), WEIGHT_STEP_OZ)


def parcel_sides_in(package: PackageIn) -> tuple[Decimal, Decimal, Decimal] | None:
    if package.dimensions is None:
        return None
    unit = package.dimensions.unit
    a, b, c = sorted(
        (
            _up(convert_length(side, unit, "in"), LENGTH_STEP_IN)
            for side in package.dimensions.sides()
        ),
        reverse=True,
    )
    return a, b, c


@dataclass(frozen=True)
class Leg:
    carrier_code: str
    service_code: str | None
    package_code: str | None
    ship_from: Address
    ship_to: Address
    weight_oz: Decimal
    sides_in: tuple[Decimal, Decimal, Decimal] | None
    confirmation: str
    key: str

    def rate_request(self) -> RateRequest:
        dimensions = None
        if self.sides_in is not None:
            length, width, height = (float(side) for side in self.sides_in)
            dimensions = Dimensions(length=length, width=width, height=height, unit="in")
        return RateRequest(
            carrier_code=self.carrier_code,
            service_code=self.service_code,
            package_code=self.package_code,
            ship_from=self.ship_from,
            ship_to=self.ship_to,
            weight=Weight(value=float(self.weight_oz), unit="oz"),
            dimensions=dimensions,
            confirmation=None if self.confirmation == "none" else self.confirmation,  # type: ignore[arg-type]
        )


def make_leg(
    *,
    key_prefix: str,
    carrier_code: str,
    service_code: str | None,
    package: PackageIn,
    ship_from: Address,
    ship_to: Address,
    confirmation: str,
) -> Leg:
    """``key_prefix`` names the ShipStation key pair: accounts may have different rates."""
    origin, destination = normal_address(ship_from), normal_address(ship_to)
    weight = parcel_weight_oz(package)
    sides = parcel_sides_in(package)
    package_code = package.requested_package_code
    residential = {True: "res", False: "com", None: "unk"}[destination.residential]
    key = "|".join(
        (
            key_prefix, carrier_code, service_code or "*", package_code or "*",
            origin.country, origin.state or "", origin.postal_code,
            destination.country, destination.state or "", destination.postal_code, residential,
            f"{weight}oz", "x".join(str(s) for s in sides) + "in" if sides else "-", confirmation,
        )
    )  # fmt: skip
    return Leg(
        carrier_code=carrier_code,
        service_code=service_code,
        package_code=package_code,
        ship_from=origin,
        ship_to=destination,
        weight_oz=weight,
        sides_in=sides,
        confirmation=confirmation,
        key=key,
    )
