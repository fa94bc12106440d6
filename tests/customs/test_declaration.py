"""Customs declarations built from a sale: pure, against domain values and the Cin7 samples."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from ratesvc.customs import (
    CustomsItem,
    CustomsRules,
    Declaration,
    Incomplete,
    declaration_for_sale,
    is_international,
)
from ratesvc.models import Address
from ratesvc.sales import Currency, Fulfilment, PackedItem, Product, Sale, SaleLine
from ratesvc.upstreams.cin7 import mapping, wire
from tests.conftest import DATA

RULES = CustomsRules()


def product(pid: str, *, sku: str | None = None, name: str | None = "Oolong tea, 100 g tin",
            hs_code: str | None = "0902.10", origin: str | None = "CN",
            origin_given: str | None = None) -> Product:  # fmt: skip
    return Product(
        product_id=pid, sku=sku or pid.upper(), weight=None, weight_unit=None, sides=None,
        length_unit=None, name=name, hs_code=hs_code, origin=origin, origin_given=origin_given,
    )  # fmt: skip


def line(pid: str, quantity: int, price: str | None, discount: str = "0",
         name: str | None = None) -> SaleLine:  # fmt: skip
    return SaleLine(
        product_id=pid, sku=pid.upper(), name=name, quantity=Decimal(quantity),
        price=None if price is None else Decimal(price), discount=Decimal(discount),
    )  # fmt: skip


USD = Currency(customer="USD", base="USD")


def sale_of(lines: list[SaleLine], packed: list[tuple[str, int, str]],
            currency: Currency = USD) -> Sale:  # fmt: skip
    fulfilment = Fulfilment(
        task_id="t1", number=1, pick_status="AUTHORISED", pack_status="AUTHORISED",
        ship_status="NOT AVAILABLE", ship_to=None, ship_lines=[],
        packed=[PackedItem(product_id=p, sku=p.upper(), quantity=Decimal(q), box=b)
                for p, q, b in packed],
    )  # fmt: skip
    return Sale(
        sale_id="s1", order_number="SO-1", customer=None, phone=None, email=None, ship_to=None,
        ship_to_problem=None, carrier=None, location=None, lines=lines, products={},
        fulfilments=[fulfilment], currency=currency,
    )  # fmt: skip


def build(sale: Sale, products: dict[str, Product], rules: CustomsRules = RULES,
          destination: str = "CA") -> Declaration | Incomplete:  # fmt: skip
    return declaration_for_sale(sale, sale.fulfilments[0], products, rules, destination=destination)


def declared(result: Declaration | Incomplete) -> Declaration:
    assert isinstance(result, Declaration), result
    return result


def refused(result: Declaration | Incomplete) -> list[tuple[str | None, str]]:
    assert isinstance(result, Incomplete), result
    return [(p.sku, p.field) for p in result.problems]


def test_each_box_declares_only_what_it_holds() -> None:
    tea, pot = product("tea"), product("pot", name="Cast iron teapot", hs_code="7323.91",
                                       origin="VN")  # fmt: skip
    sale = sale_of([line("tea", 6, "12.50"), line("pot", 1, "49.99")],
                   [("tea", 4, "Box 1"), ("tea", 2, "Box 2"), ("pot", 1, "Box 2")])  # fmt: skip

    result = declared(build(sale, {"tea": tea, "pot": pot}))

    assert (result.contents, result.non_delivery) == ("merchandise", "return_to_sender")
    assert [(b.box, b.items) for b in result.boxes] == [
        ("Box 1", [CustomsItem(description="Oolong tea, 100 g tin", quantity=4,
                               value=Decimal("50.00"), hs_code="0902.10", country_of_origin="CN",
                               sku="TEA")]),
        ("Box 2", [CustomsItem(description="Oolong tea, 100 g tin", quantity=2,
                               value=Decimal("25.00"), hs_code="0902.10", country_of_origin="CN",
                               sku="TEA"),
                   CustomsItem(description="Cast iron teapot", quantity=1, value=Decimal("49.99"),
                               hs_code="7323.91", country_of_origin="VN", sku="POT")]),
    ]  # fmt: skip
    assert result.boxes[1].value == Decimal("74.99")
    assert result.held == [[("TEA", 4)], [("TEA", 2), ("POT", 1)]]


def test_pack_lines_of_one_product_in_one_box_are_one_item() -> None:
    sale = sale_of([line("tea", 3, "10")], [("tea", 1, "Box 1"), ("tea", 2, "Box 1")])

    (box,) = declared(build(sale, {"tea": product("tea")})).boxes

    assert [(i.quantity, i.value) for i in box.items] == [(3, Decimal("30.00"))]


def test_the_line_discount_comes_off_the_unit_price_and_rounding_happens_once() -> None:
    sale = sale_of([line("tea", 3, "3.335", discount="12.5")], [("tea", 3, "Box 1")])

    (box,) = declared(build(sale, {"tea": product("tea")})).boxes

    # 3.335 x 0.875 = 2.918125 per unit; x 3 = 8.754375 -> 8.75 (rounding each unit: 8.76)
    assert box.items[0].value == Decimal("8.75")


def test_a_product_on_two_lines_at_two_prices_is_valued_at_their_mean() -> None:
    sale = sale_of([line("tea", 1, "10"), line("tea", 1, "20")], [("tea", 2, "Box 1")])

    (box,) = declared(build(sale, {"tea": product("tea")})).boxes

    assert box.items[0].value == Decimal("30.00")


def test_an_eur_sale_is_converted_with_its_rate_exact_to_the_cent() -> None:
    raw = msgspec.json.decode((DATA / "cin7" / "sale_international.json").read_bytes(),
                              type=wire.Sale)  # fmt: skip
    records = msgspec.json.decode((DATA / "cin7" / "products_customs.json").read_bytes(),
                                  type=wire.ProductList).Products  # fmt: skip
    sale = mapping.sale_from_wire(raw)
    products = {p.ID: mapping.product_from_wire(p) for p in records}

    result = declared(build(sale, products, destination="FR"))

    # tea: 12.50 EUR - 10 % = 11.25 EUR x 1.0850 = 12.20625 USD a tin; pot 49.99 x 1.085
    assert [[(i.sku, i.quantity, i.value, i.hs_code, i.country_of_origin) for i in b.items]
            for b in result.boxes] == [
        [("TEA-OOLONG-100", 4, Decimal("48.83"), "0902.10", "CN")],
        [("TEA-OOLONG-100", 2, Decimal("24.41"), "0902.10", "CN"),
         ("POT-CAST-1L", 1, Decimal("54.24"), "7323.91", "VN")],
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("currency", "words"),
    [
        (Currency(customer="EUR", base="USD"), "with no currency rate"),
        (Currency(customer="EUR", base="GBP", rate=Decimal("0.86")), "base currency is GBP"),
        (Currency(customer="GBP", base="GBP"), "keeps no exchange rates"),
    ],
)
def test_a_sale_that_cannot_be_valued_in_usd_is_refused(currency: Currency, words: str) -> None:
    sale = sale_of([line("tea", 1, "10")], [("tea", 1, "Box 1")], currency)

    result = build(sale, {"tea": product("tea")})

    assert refused(result) == [(None, "currency")]
    assert isinstance(result, Incomplete) and words in result.errors()[0]


def test_a_sale_in_usd_with_any_base_is_taken_as_it_is() -> None:
    usd = Currency(customer="USD", base="GBP", rate=Decimal("0.79"))
    sale = sale_of([line("tea", 1, "10")], [("tea", 1, "Box 1")], usd)

    assert declared(build(sale, {"tea": product("tea")})).boxes[0].items[0].value == Decimal(10)


def test_everything_missing_is_named_with_the_sku_the_name_and_the_field() -> None:
    products = {
        "tea": product("tea", hs_code=None),
        "pot": product("pot", name="Teapot", origin=None),
        "map": product("map", name="Paper map", origin=None, origin_given="Narnia"),
        "cup": product("cup", name=None),
        "card": product("card", name="Gift card"),
        "bad": product("bad", name="Odd code", hs_code="09A2"),
    }
    sale = sale_of(
        [line("tea", 1, "10"), line("pot", 1, "10"), line("map", 1, "5"), line("cup", 1, "3",
         name="CUP"), line("card", 1, "0"), line("bad", 1, "1")],
        [("tea", 1, "Box 1"), ("pot", 1, "Box 1"), ("map", 1, "Box 2"), ("cup", 1, "Box 2"),
         ("card", 1, "Box 2"), ("bad", 1, "Box 2")],
    )  # fmt: skip

    result = build(sale, products)

    assert refused(result) == [
        ("TEA", "hs_code"), ("POT", "country_of_origin"), ("MAP", "country_of_origin"),
        ("CUP", "description"), ("CARD", "value"), ("BAD", "hs_code"),
    ]  # fmt: skip
    assert isinstance(result, Incomplete)
    assert result.errors()[0].startswith("TEA (Oolong tea, 100 g tin): no HS code")
    assert "'Narnia' is not a country" in result.errors()[2]
    assert result.errors()[3].startswith("CUP: no description")  # its only text is its SKU
    assert "zero value" in result.errors()[4]
    assert [(p.sku, p.name) for p in result.problems[:2]] == [
        ("TEA", "Oolong tea, 100 g tin"), ("POT", "Teapot"),
    ]  # fmt: skip


def test_a_product_in_two_boxes_is_named_once_per_field() -> None:
    sale = sale_of([line("tea", 2, "10")], [("tea", 1, "Box 1"), ("tea", 1, "Box 2")])

    assert refused(build(sale, {"tea": product("tea", hs_code=None)})) == [("TEA", "hs_code")]


def test_a_packed_product_not_on_the_order_has_no_value() -> None:
    sale = sale_of([line("tea", 1, "10")], [("tea", 1, "Box 1"), ("pot", 1, "Box 1")])

    result = build(sale, {"tea": product("tea"), "pot": product("pot", name="Teapot")})

    assert refused(result) == [("POT", "value")]


def test_a_fractional_packed_quantity_is_refused() -> None:
    sale = sale_of([line("tea", 2, "10")], [("tea", 1, "Box 1")])
    fulfilment = sale.fulfilments[0]
    half = msgspec.structs.replace(fulfilment.packed[0], quantity=Decimal("1.5"))
    fulfilment = msgspec.structs.replace(fulfilment, packed=[half])

    result = declaration_for_sale(sale, fulfilment, {"tea": product("tea")}, RULES,
                                  destination="CA")  # fmt: skip

    assert refused(result) == [("TEA", "quantity")]
    assert isinstance(result, Incomplete)
    assert "Box 1 holds 1.5 of it: customs quantities are whole numbers" in result.errors()[0]


def test_the_sale_line_name_comes_first_then_the_product_name() -> None:
    sale = sale_of([line("tea", 1, "10", name="Tea (gift tin)"), line("pot", 1, "10", name="POT")],
                   [("tea", 1, "Box 1"), ("pot", 1, "Box 1")])  # fmt: skip

    products = {"tea": product("tea"), "pot": product("pot", name="Cast iron teapot")}

    (box,) = declared(build(sale, products)).boxes

    assert [i.description for i in box.items] == ["Tea (gift tin)", "Cast iron teapot"]


def test_account_defaults_fill_origin_and_settings_set_the_header() -> None:
    rules = CustomsRules(contents="gift", non_delivery="treat_as_abandoned", default_origin="US")
    sale = sale_of([line("tea", 1, "10")], [("tea", 1, "Box 1")])

    result = declared(build(sale, {"tea": product("tea", origin=None)}, rules))

    assert (result.contents, result.non_delivery) == ("gift", "treat_as_abandoned")
    assert result.boxes[0].items[0].country_of_origin == "US"


def test_hs_codes_are_required_outside_the_us_unless_the_account_says_otherwise() -> None:
    sale = sale_of([line("tea", 1, "10")], [("tea", 1, "Box 1")])
    products = {"tea": product("tea", hs_code=None)}
    lenient = CustomsRules(require_hs_code=False)

    assert refused(build(sale, products)) == [("TEA", "hs_code")]
    assert declared(build(sale, products, destination="US")).boxes[0].items[0].hs_code is None
    assert declared(build(sale, products, lenient)).boxes[0].items[0].hs_code is None


def address(country: str, state: str | None = None) -> Address:
    return Address(country=country, postal_code="09012", state=state)


@pytest.mark.parametrize(
    ("ship_from", "ship_to", "international"),
    [
        ("US", address("US", "TX"), False),
        ("US", address("CA", "ON"), True),
        ("us", address("us", "ae"), True),  # APO/FPO/DPO mail needs customs forms
        ("US", address("US", "AP"), True),
        ("US", address("US", "AA"), True),
        ("CA", address("CA", "AE"), False),  # Alberta-like codes abroad mean nothing military
        ("GB", address("US", "NY"), True),
    ],
)
def test_international_means_countries_differ_or_us_military_mail(
    ship_from: str, ship_to: Address, international: bool
) -> None:
    assert is_international(ship_from, ship_to) is international
