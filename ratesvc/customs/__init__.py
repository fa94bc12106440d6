"""Customs declarations: when a shipment needs one, and how one is built from a Cin7 Core sale."""

from __future__ import annotations

from ratesvc.customs.declaration import (
    BoxDeclaration,
    CustomsItem,
    CustomsProblem,
    Declaration,
    Incomplete,
    declaration_for_sale,
)
from ratesvc.customs.rules import (
    CONTENTS,
    MILITARY_STATES,
    NON_DELIVERY,
    Contents,
    CustomsRules,
    NonDelivery,
    is_international,
)

__all__ = [
    "CONTENTS",
    "MILITARY_STATES",
    "NON_DELIVERY",
    "BoxDeclaration",
    "Contents",
    "CustomsItem",
    "CustomsProblem",
    "CustomsRules",
    "Declaration",
    "Incomplete",
    "NonDelivery",
    "declaration_for_sale",
    "is_international",
]
