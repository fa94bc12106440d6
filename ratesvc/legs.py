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
are sent). The route and each parcel are made canonical once per request and shared by the legs.
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
_RESIDENTIAL = {True: "res", False: "com", None: "unk"}


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


@dataclass(frozen=True)
class Route:
    """Origin and destination as the key sees them; the full addresses (postal code and state
    made canonical, once for every leg of the request) go upstream."""

    ship_from: Address
    ship_to: Address
    key: str

    @classmethod
    def of(cls, ship_from: Address, ship_to: Address, confirmation: str) -> Route:
        parts = []
        for address in (ship_from, ship_to):
            postal = normal_postal_code(address.postal_code, address.country)
            parts += [address.country, (address.state or "").upper(), postal]
        parts += [_RESIDENTIAL[ship_to.residential], confirmation]
        return cls(ship_from=normal_address(ship_from), ship_to=normal_address(ship_to),
                   key="|".join(parts))  # fmt: skip


@dataclass(frozen=True)
class Parcel:
    """One package in canonical units."""

    weight_oz: Decimal
    sides_in: tuple[Decimal, Decimal, Decimal] | None
    package_code: str | None  # None: every package type (variants)
    key: str

    @classmethod
    def of(cls, package: PackageIn) -> Parcel:
        weight = _up(
            convert_weight(package.weight.amount, package.weight.unit, "oz"), WEIGHT_STEP_OZ
        )
        sides: tuple[Decimal, Decimal, Decimal] | None = None
        if package.dimensions is not None:
            unit = package.dimensions.unit
            a, b, c = sorted(
                (
                    _up(convert_length(side, unit, "in"), LENGTH_STEP_IN)
                    for side in package.dimensions.sides()
                ),
                reverse=True,
            )
            sides = (a, b, c)
        code = package.requested_package_code
        dims = "x".join(str(s) for s in sides) + "in" if sides else "-"
        return cls(weight_oz=weight, sides_in=sides, package_code=code,
                   key=f"{code or '*'}|{weight}oz|{dims}")  # fmt: skip


@dataclass(frozen=True)
class Leg:
    carrier_code: str
    service_code: str | None
    route: Route
    parcel: Parcel
    key: str

    @property
    def package_code(self) -> str | None:
        return self.parcel.package_code

    def rate_request(self) -> RateRequest:
        dimensions = None
        if self.parcel.sides_in is not None:
            length, width, height = (float(side) for side in self.parcel.sides_in)
            dimensions = Dimensions(length=length, width=width, height=height, unit="in")
        confirmation = self.route.key.rsplit("|", 1)[1]
        return RateRequest(
            carrier_code=self.carrier_code,
            service_code=self.service_code,
            package_code=self.parcel.package_code,
            ship_from=self.route.ship_from,
            ship_to=self.route.ship_to,
            weight=Weight(value=float(self.parcel.weight_oz), unit="oz"),
            dimensions=dimensions,
            confirmation=None if confirmation == "none" else confirmation,  # type: ignore[arg-type]
        )


def make_leg(
    *, key_prefix: str, carrier_code: str, service_code: str | None, route: Route, parcel: Parcel
) -> Leg:
    """``key_prefix`` names the ShipStation key pair: accounts may have different rates."""
    key = f"{key_prefix}|{carrier_code}|{service_code or '*'}|{route.key}|{parcel.key}"
    return Leg(carrier_code=carrier_code, service_code=service_code, route=route, parcel=parcel,
               key=key)  # fmt: skip
