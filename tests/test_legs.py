"""Canonical legs: equal prices, equal keys; never lighter or smaller than the parcel."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from ratesvc.legs import Parcel, Route, make_leg, normal_postal_code
from ratesvc.models import Address, PackageIn
from ratesvc.units import convert_length, convert_weight

FROM = Address(postal_code="78703", country="US", state="TX")


def leg_key(package: dict[str, Any], to: Address, **kwargs: Any) -> str:
    leg = make_leg(
        key_prefix="k", carrier_code=kwargs.get("carrier", "ups"), service_code=None,
        route=Route.of(FROM, to, kwargs.get("confirmation", "none")),
        parcel=Parcel.of(msgspec.convert(package, PackageIn)),
    )  # fmt: skip
    return leg.key


def parcel(package: dict[str, Any]) -> Parcel:
    return Parcel.of(msgspec.convert(package, PackageIn))


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
    canonical = parcel({"weight": {"value": float(value), "unit": unit}})

    exact = convert_weight(value, unit, "oz")
    assert exact <= canonical.weight_oz < exact + Decimal("0.1")
    assert canonical.weight_oz == canonical.weight_oz.quantize(Decimal("0.1"))


@given(st.lists(st.decimals(min_value=Decimal("0.1"), max_value=Decimal(500), places=2),
                min_size=3, max_size=3),
       st.sampled_from(["in", "cm", "mm", "m"]))  # fmt: skip
def test_canonical_sides_are_sorted_and_never_smaller(sides: list[Decimal], unit: str) -> None:
    dims = dict(zip(("length", "width", "height"), (float(s) for s in sides), strict=True))
    canonical = parcel({"weight": {"value": 1, "unit": "lb"}, "dimensions": {**dims, "unit": unit}})

    assert canonical.sides_in is not None
    assert list(canonical.sides_in) == sorted(canonical.sides_in, reverse=True)
    exact = sorted((convert_length(s, unit, "in") for s in sides), reverse=True)
    for side, real in zip(canonical.sides_in, exact, strict=True):
        assert real <= side < real + Decimal("0.1")
