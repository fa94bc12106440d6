"""Findings of the review of the customs-from-sale core (issue 10), kept as regression tests.

F1: a value exactly on a half cent, of a product on several lines, was rounded down (a mean unit
price rounded at Decimal's precision). F2–F4 pin what the builder must check (HS code length,
descriptions, a pack line of 0 units): each failed under a mutation the suite let survive.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest

from ratesvc.customs import CustomsRules, Declaration, Incomplete, declaration_for_sale
from tests.customs.test_declaration import line, product, sale_of


def _build(sale, products, destination="CA"):  # type: ignore[no-untyped-def]
    return declaration_for_sale(sale, sale.fulfilments[0], products, CustomsRules(),
                                destination=destination)  # fmt: skip


# F1: a product on two order lines (one at 50 % off, two more free) packed in one box. The
# packed lines are worth 10.01 x 0.5 + 0 + 0 = 5.005 USD exactly; half-up once -> 5.01. The
# builder divides by the quantity (5.005 / 3, inexact at 28 digits) then multiplies back,
# 5.004999...9, and declares 5.00.
def test_f1_a_product_on_several_lines_rounds_half_up_once_on_the_exact_value() -> None:
    sale = sale_of([line("tea", 1, "10.01", "50"), line("tea", 2, "0")], [("tea", 3, "Box 1")])

    result = _build(sale, {"tea": product("tea")})

    assert isinstance(result, Declaration), result
    exact = Decimal("10.01") * 50 / 100  # 5.005
    assert result.boxes[0].items[0].value == exact.quantize(Decimal("0.01"), ROUND_HALF_UP)


def test_f1b_same_without_discounts() -> None:
    # 1 x 3.005 + 2 x 1.00 = 5.005 -> 5.01; declared 5.00 (4-decimal prices are Cin7 Core's own)
    sale = sale_of([line("tea", 1, "3.005"), line("tea", 2, "1.00")], [("tea", 3, "Box 1")])

    result = _build(sale, {"tea": product("tea")})

    assert isinstance(result, Declaration), result
    assert result.boxes[0].items[0].value == Decimal("5.01")


# F2: the "HS code 6-10 digits" bound is untested: `6 <= sum(...)` -> `5 <=` and `<= 10` -> `<= 12`
# both survive tests/customs.
@pytest.mark.parametrize(
    ("code", "ok"),
    [("0902.1", False), ("090210", True), ("0902.10.00.00", True), ("0902.10.00.001", False),
     ("09021000001", False)],
)  # fmt: skip
def test_f2_hs_codes_have_6_to_10_digits(code: str, ok: bool) -> None:
    sale = sale_of([line("tea", 1, "10")], [("tea", 1, "Box 1")])

    result = _build(sale, {"tea": product("tea", hs_code=code)})

    assert isinstance(result, Declaration) is ok, result


# F3: descriptions: the 100-character cap (issue: "description 3-100 characters") and the
# case-insensitive SKU test are untested: dropping `[:100]` or `.casefold()` survives.
def test_f3a_a_long_name_is_cut_to_100_characters() -> None:
    sale = sale_of([line("tea", 1, "10", name="Oolong tea " * 20)], [("tea", 1, "Box 1")])

    result = _build(sale, {"tea": product("tea")})

    assert isinstance(result, Declaration), result
    assert 3 <= len(result.boxes[0].items[0].description) <= 100


def test_f3b_a_name_that_is_the_sku_in_other_case_is_not_a_description() -> None:
    sale = sale_of([line("tea", 1, "10", name="tea")], [("tea", 1, "Box 1")])  # SKU is "TEA"

    result = _build(sale, {"tea": product("tea", name=None)})

    assert isinstance(result, Incomplete), result
    assert [p.field for p in result.problems] == ["description"]


# F4: a pack line of 0 units: the quantity check (`or quantity < 1`) can be deleted without a
# test failing; the refusal then says only "a zero value: price the line", which sends the
# warehouse to fix a price that is fine.
def test_f4_a_box_with_zero_units_is_a_quantity_problem() -> None:
    sale = sale_of([line("tea", 2, "10")], [("tea", 2, "Box 1"), ("tea", 0, "Box 2")])

    result = _build(sale, {"tea": product("tea")})

    assert isinstance(result, Incomplete), result
    assert "quantity" in [p.field for p in result.problems]
