"""A sale's declaration on its shipment: each package gets its own box's items as the API's money
strings, and a refusal names each product and field."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ratesvc.customs import BoxDeclaration, CustomsItem, CustomsProblem, Declaration, Incomplete
from ratesvc.customs.packages import contents, declared, refusal
from ratesvc.models import Address, PackageIn, ShipmentIn, Weight

TO = Address(name="L. Tremblay", street1="1 Yonge St", city="Toronto", state="ON",
             postal_code="M5E 1W7", country="CA")  # fmt: skip


def package(box: str) -> PackageIn:
    return PackageIn(weight=Weight(value=1, unit="kg"), box=box)


def item(sku: str, quantity: int, value: str) -> CustomsItem:
    return CustomsItem(description=f"{sku} in words", quantity=quantity, value=Decimal(value),
                       hs_code="8423.10", country_of_origin="CN", sku=sku)  # fmt: skip


DECLARATION = Declaration(
    contents="gift", non_delivery="treat_as_abandoned",
    boxes=[BoxDeclaration(box="Box 1", items=[item("Scale", 1, "38.96")]),
           BoxDeclaration(box="Box 2", items=[item("Mug", 4, "54.25"), item("Cup", 1, "5")])],
)  # fmt: skip


def test_each_package_declares_only_its_own_box() -> None:
    shipment = ShipmentIn(ship_to=TO, packages=[package("Box 1"), package("Box 2")])

    result = declared(shipment, DECLARATION)

    assert [[(i.sku, i.quantity, i.value) for i in p.customs_items or []]
            for p in result.packages] == [
        [("Scale", 1, "38.96")], [("Mug", 4, "54.25"), ("Cup", 1, "5.00")],
    ]  # fmt: skip
    assert result.customs is not None
    assert (result.customs.contents, result.customs.non_delivery) == ("gift", "treat_as_abandoned")
    assert contents(result) == [[("Scale", 1)], [("Mug", 4), ("Cup", 1)]]


def test_packages_are_matched_to_boxes_by_position_not_by_name() -> None:
    # Cin7 Core's "Box 1 " is the package's "Box 1" once trimmed; position is what they share
    shipment = ShipmentIn(ship_to=TO, packages=[package("box 1 "), package("Second")])

    result = declared(shipment, DECLARATION)

    assert contents(result) == [[("Scale", 1)], [("Mug", 4), ("Cup", 1)]]


def test_a_declaration_for_another_number_of_boxes_is_refused() -> None:
    shipment = ShipmentIn(ship_to=TO, packages=[package("Box 1")])

    with pytest.raises(ValueError, match="2 declared boxes for 1 packages"):
        declared(shipment, DECLARATION)


def test_a_refusal_names_each_product_and_field_and_says_nothing_was_bought() -> None:
    incomplete = Incomplete(problems=[
        CustomsProblem(field="hs_code", message="Tea-Oolong (Oolong Tea): no HS code",
                       sku="Tea-Oolong", name="Oolong Tea", product_id="p-tea"),
        CustomsProblem(field="country_of_origin", message="product p-9: no country of origin",
                       product_id="p-9"),
        CustomsProblem(field="currency", message="the sale is in EUR with no currency rate"),
    ])  # fmt: skip

    error = refusal("sale-1", incomplete)

    assert error.code == "customs_incomplete"
    assert error.status == 422
    assert [(e.field, e.message) for e in error.errors] == [
        ("products[Tea-Oolong].hs_code", "Tea-Oolong (Oolong Tea): no HS code"),
        ("products[p-9].country_of_origin", "product p-9: no country of origin"),
        ("sale.currency", "the sale is in EUR with no currency rate"),
    ]
    assert error.detail.startswith(
        "sale sale-1 cannot be declared to customs, so nothing was bought"
    )
