"""Canonical legs: equal prices, equal keys; never lighter or smaller than the parcel."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from ratesvc.legs import make_leg, normal_postal_code
from ratesvc.models import Address, PackageIn
from ratesvc.units import convert_length, convert_weight

FROM = Address(postal_code="78703", country="US", state="TX")


def leg_key(package: dict[str, Any], to: Address, **kwargs: Any) -> str:
    leg = make_leg(
        key_prefix="k", carrier_code=kwargs.get("carrier", "ups"), service_code=None,
        package=msgspec.convert(package, PackageIn), ship_from=FROM, ship_to=to,
        confirmation=kwargs.get("confirmation", "none"),
    )  # fmt: skip
    return leg.key


def test_postal_codes_are_normalised_for_the_us_only() -> None:
    assert normal_postal_code(" 10118-0110 ", "US") == "10118"
    assert normal_postal_code("101180110", "US") == "10118"
    assert normal_postal_code("02110", "US") == "02110"
    assert normal_postal_code("sw1a 1aa", "GB") == "SW1A 1AA"
    assert normal_postal_code("1234-5678", "BR") == "1234-5678"


def test_what_changes_a_price_changes_the_key() -> None:
    to = Address(postal_code="10001", country="US", state="NY", residential=False)
    base = {"weight": {"value": 2, "unit": "lb"}}
    key = leg_key(base, to)

    assert leg_key(base, msgspec.structs.replace(to, residential=True)) != key
    assert leg_key(base, msgspec.structs.replace(to, residential=None)) != key
    assert leg_key(base, msgspec.structs.replace(to, postal_code="10002")) != key
    assert leg_key({"weight": {"value": 2.1, "unit": "lb"}}, to) != key
    assert leg_key({**base, "package_code": "ups_pak"}, to) != key
    assert leg_key(base, to, carrier="fedex") != key
    assert leg_key(base, to, confirmation="signature") != key
    assert (
        leg_key({**base, "dimensions": {"length": 1, "width": 1, "height": 1, "unit": "in"}}, to)
        != key
    )
    assert leg_key(base, msgspec.structs.replace(to, city="Brooklyn", name="X")) == key


weights = st.decimals(min_value=Decimal("0.001"), max_value=Decimal(2000), places=3)
units = st.sampled_from(["oz", "lb", "g", "kg"])


@given(weights, units)
def test_the_canonical_weight_is_never_lighter_and_at_most_a_step_heavier(
    value: Decimal, unit: str
) -> None:
    to = Address(postal_code="10001", country="US")
    leg = make_leg(
        key_prefix="k", carrier_code="ups", service_code=None,
        package=msgspec.convert({"weight": {"value": float(value), "unit": unit}}, PackageIn),
        ship_from=FROM, ship_to=to, confirmation="none",
    )  # fmt: skip

    exact = convert_weight(value, unit, "oz")
    assert exact <= leg.weight_oz < exact + Decimal("0.1")
    assert leg.weight_oz == leg.weight_oz.quantize(Decimal("0.1"))


@given(st.lists(st.decimals(min_value=Decimal("0.1"), max_value=Decimal(500), places=2),
                min_size=3, max_size=3),
       st.sampled_from(["in", "cm", "mm", "m"]))  # fmt: skip
def test_canonical_sides_are_sorted_and_never_smaller(sides: list[Decimal], unit: str) -> None:
    to = Address(postal_code="10001", country="US")
    dims = dict(zip(("length", "width", "height"), (float(s) for s in sides), strict=True))
    leg = make_leg(
        key_prefix="k", carrier_code="ups", service_code=None,
        package=msgspec.convert({"weight": {"value": 1, "unit": "lb"},
                                 "dimensions": {**dims, "unit": unit}}, PackageIn),
        ship_from=FROM, ship_to=to, confirmation="none",
    )  # fmt: skip

    assert leg.sides_in is not None
    assert list(leg.sides_in) == sorted(leg.sides_in, reverse=True)
    exact = sorted((convert_length(s, unit, "in") for s in sides), reverse=True)
    for canonical, real in zip(leg.sides_in, exact, strict=True):
        assert real <= canonical < real + Decimal("0.1")
