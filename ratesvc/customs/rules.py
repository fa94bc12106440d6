"""What makes a shipment international, and an account's customs rules."""

from __future__ import annotations

from typing import Literal

import msgspec

from ratesvc.models import Address

Contents = Literal["merchandise", "documents", "gift", "returned_goods", "sample"]
NonDelivery = Literal["return_to_sender", "treat_as_abandoned"]
CONTENTS: tuple[str, ...] = ("merchandise", "documents", "gift", "returned_goods", "sample")
NON_DELIVERY: tuple[str, ...] = ("return_to_sender", "treat_as_abandoned")
MILITARY_STATES = frozenset({"AA", "AE", "AP"})  # APO/FPO/DPO: US mail that needs customs forms


class CustomsRules(msgspec.Struct, frozen=True, kw_only=True):
    """An account's customs settings.

    ``default_origin`` (ISO alpha-2) stands in for a product without a country of origin;
    ``require_hs_code``: a product without an HS code refuses a declaration to a destination
    outside the US (APO/FPO/DPO mail is US: it needs a form, not tariff codes).
    """

    contents: Contents = "merchandise"
    non_delivery: NonDelivery = "return_to_sender"
    default_origin: str | None = None
    require_hs_code: bool = True


def is_international(ship_from_country: str, ship_to: Address) -> bool:
    """Ship-from and ship-to countries (ISO alpha-2) differ, or the ship-to is US military mail
    (state ``AA``, ``AE`` or ``AP``)."""
    if ship_to.country.upper() != ship_from_country.strip().upper():
        return True
    return ship_to.country.upper() == "US" and (ship_to.state or "").upper() in MILITARY_STATES
