"""Property: the declared values of a sale's boxes add up to its packed lines' value."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from ratesvc.customs import CustomsRules, Declaration, declaration_for_sale
from ratesvc.sales import Currency
from tests.customs.test_declaration import line, product, sale_of

BOXES = ["Box 1", "Box 2", "Box 3", "Box 4"]


@st.composite
def sales(draw: st.DrawFn) -> tuple[list[tuple[str, int, str, str]], list[list[str]], Currency]:
    """Lines (product, quantity, price, discount), a box for each packed unit, a currency."""
    count = draw(st.integers(1, 5))
    lines = [
        (f"p{i}", draw(st.integers(1, 20)),
         str(Decimal(draw(st.integers(1_000, 999_999))) / 1000),
         str(Decimal(draw(st.integers(0, 9000))) / 100))
        for i in range(count)
    ]  # fmt: skip
    boxes = [[draw(st.sampled_from(BOXES)) for _ in range(qty)] for _, qty, _, _ in lines]
    currency = draw(
        st.sampled_from([Currency(customer="USD", base="USD")])
        | st.builds(
            lambda r: Currency(customer="EUR", base="USD", rate=Decimal(r) / 10_000),
            st.integers(5_000, 20_000),
        )
    )
    return lines, boxes, currency


@given(sales())
def test_the_boxes_declare_the_packed_value_within_one_rounding_per_item(
    drawn: tuple[list[tuple[str, int, str, str]], list[list[str]], Currency],
) -> None:
    lines, boxes, currency = drawn
    packed = [(pid, 1, box) for (pid, *_), units in zip(lines, boxes, strict=True) for box in units]
    sale = sale_of([line(pid, qty, price, discount) for pid, qty, price, discount in lines],
                   packed, currency)  # fmt: skip
    products = {pid: product(pid, name=f"Goods number {pid}") for pid, *_ in lines}

    result = declaration_for_sale(sale, sale.fulfilments[0], products, CustomsRules(),
                                  destination="CA")  # fmt: skip

    assert isinstance(result, Declaration), result
    rate = currency.rate or Decimal(1)
    exact = sum(
        (Decimal(price) * (100 - Decimal(discount)) / 100 * qty * rate
         for _, qty, price, discount in lines),
        Decimal(0),
    )  # fmt: skip
    items = [item for box in result.boxes for item in box.items]
    declared = sum((item.value for item in items), Decimal(0))
    assert abs(declared - exact) <= Decimal("0.005") * len(items)
    assert all(item.value == item.value.quantize(Decimal("0.01")) for item in items)
    for box in result.boxes:  # each box declares exactly the units packed in it
        held = {pid: units.count(box.box) for (pid, *_), units in zip(lines, boxes, strict=True)}
        assert {i.sku: i.quantity for i in box.items} == {
            pid.upper(): n for pid, n in held.items() if n
        }
    assert [b.box for b in result.boxes] == list(dict.fromkeys(box for *_, box in packed))
