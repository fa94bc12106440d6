"""Weight and length conversion in exact decimal arithmetic, and money rounding.

Conversion factors are exact by definition (1 lb = 0.45359237 kg, 1 in = 2.54 cm), so a value
converted with them loses nothing; rounding happens only where a caller asks for it.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

WeightUnit = Literal["oz", "lb", "g", "kg"]
LengthUnit = Literal["in", "cm", "mm", "m"]

_GRAMS_PER: dict[str, Decimal] = {
    "g": Decimal(1),
    "kg": Decimal(1000),
    "lb": Decimal("453.59237"),
    "oz": Decimal("453.59237") / 16,  # 28.349523125, exact
    "mg": Decimal("0.001"),
}
_MM_PER: dict[str, Decimal] = {
    "mm": Decimal(1),
    "cm": Decimal(10),
    "m": Decimal(1000),
    "in": Decimal("25.4"),
    "ft": Decimal("304.8"),
}
CENT = Decimal("0.01")


def convert_weight(value: Decimal, from_unit: str, to_unit: str) -> Decimal:
    """Convert ``value`` between ``oz``, ``lb``, ``g``, ``kg`` (and ``mg``) exactly."""
    if from_unit == to_unit:
        return value
    return value * _GRAMS_PER[from_unit] / _GRAMS_PER[to_unit]


def convert_length(value: Decimal, from_unit: str, to_unit: str) -> Decimal:
    """Convert ``value`` between ``in``, ``cm``, ``mm``, ``m`` (and ``ft``) exactly."""
    if from_unit == to_unit:
        return value
    return value * _MM_PER[from_unit] / _MM_PER[to_unit]


def to_cents(amount: Decimal) -> Decimal:
    """Round money half-up to two places: the only rounding money ever gets, at the API edge."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def money_str(amount: Decimal) -> str:
    """``Decimal('13.955')`` → ``"13.96"``: the API's money format."""
    return str(to_cents(amount))


def exact_decimal(value: float) -> Decimal:
    """A JSON number decoded as float, back to the decimal the client wrote.

    ``repr`` of a float is the shortest text that reads back as the same float, which for any
    number a person types (``3.5``, ``0.1``, ``12.345``) is exactly what they typed.
    """
    return Decimal(repr(value))
