"""The Cin7 Core sandbox's international sales, read through the wire mapping, declared."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from ratesvc.customs import CustomsRules, Declaration, Incomplete, declaration_for_sale
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.upstreams.cin7 import mapping, wire


@pytest.fixture(scope="module")
def seeded() -> Cin7Sandbox:
    return Cin7Sandbox()


def declare(cin7: Cin7Sandbox, sale_id: str) -> Declaration | Incomplete:
    sale = mapping.sale_from_wire(msgspec.convert(cin7.sales[sale_id], wire.Sale))
    products = {
        pid: mapping.product_from_wire(msgspec.convert(record, wire.Product))
        for pid, record in cin7.products.items()
    }
    fulfilment = sale.fulfilment(None)
    assert fulfilment is not None and sale.ship_to is not None
    return declaration_for_sale(
        sale, fulfilment, products, CustomsRules(), destination=sale.ship_to.country
    )


def test_the_canadian_sale_declares_two_boxes_each_with_its_own_items(seeded: Cin7Sandbox) -> None:
    result = declare(seeded, "sale-international")

    assert isinstance(result, Declaration)
    assert [[(i.description, i.quantity, i.value, i.hs_code, i.country_of_origin) for i in b.items]
            for b in result.boxes] == [
        [("Kitchen Scale", 1, Decimal("10.00"), "8423.10", "CN")],
        [("Stoneware Mug", 2, Decimal("20.00"), "6912.00", "PT")],
    ]  # fmt: skip


def test_the_sale_with_a_product_lacking_an_hs_code_is_refused_naming_it(
    seeded: Cin7Sandbox,
) -> None:
    result = declare(seeded, "sale-international-nohs")

    assert isinstance(result, Incomplete)
    assert [(p.sku, p.name, p.field) for p in result.problems] == [
        ("Tea-Oolong", "Oolong Tea 100 g", "hs_code")
    ]


def test_the_eur_sale_is_declared_in_usd_exact_to_the_cent(seeded: Cin7Sandbox) -> None:
    result = declare(seeded, "sale-eur")

    assert isinstance(result, Declaration)
    # scale: 39.90 EUR - 10 % = 35.91 EUR x 1.085 = 38.96235 USD; mugs: 4 x 12.50 x 1.085
    assert [[(i.sku, i.value) for i in b.items] for b in result.boxes] == [
        [("Scale", Decimal("38.96"))], [("Mug", Decimal("54.25"))],
    ]  # fmt: skip
