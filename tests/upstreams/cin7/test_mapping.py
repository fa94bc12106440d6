"""Cin7 Core mapping against the sample payloads in tests/data/cin7."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import orjson
import pytest

from ratesvc.errors import (
    UpstreamAuth,
    UpstreamError,
    UpstreamNotFound,
    UpstreamThrottled,
    UpstreamUnavailable,
)
from ratesvc.sales import Currency
from ratesvc.upstreams.cin7 import mapping, wire
from tests.conftest import DATA


def sample(name: str) -> bytes:
    return (DATA / "cin7" / name).read_bytes()


def errors(key: str) -> bytes:
    return orjson.dumps(orjson.loads(sample("errors.json"))[key])


def test_a_sale_is_read_with_its_address_lines_and_fulfilment() -> None:
    sale = mapping.sale_from_wire(msgspec.json.decode(sample("sale.json"), type=wire.Sale))

    assert sale.sale_id == "916ab4c0-6ccb-4c93-873d-0603859050e4"
    assert sale.order_number == "SO-00001"
    assert sale.ship_to is not None
    assert (sale.ship_to.country, sale.ship_to.postal_code, sale.ship_to.state) == (
        "AU",
        "3331",
        "VIC",
    )
    assert sale.ship_to.name == "Sheree Bond"
    assert sale.ship_to.phone == "03 3189080"
    assert sale.ship_to.street1 == "3 Park Street Industrial Village"
    (fulfilment,) = sale.fulfilments
    assert fulfilment.task_id == "cde5fb4a-1dac-4e9a-bc33-5dfa14eedb57"
    assert (fulfilment.pack_status, fulfilment.ship_status) == ("AUTHORISED", "NOT AVAILABLE")
    assert fulfilment.ready and not fulfilment.has_tracking
    assert fulfilment.boxes == ["Box 1"]
    assert fulfilment.packed[0].quantity == Decimal(2)
    product = sale.products["4aadd8f6-4d3d-46ca-acbb-1a9a662f9bc1"]
    assert (product.weight, product.weight_unit) == (Decimal(450), "g")
    assert product.sides == (Decimal(20), Decimal(10), Decimal(8))
    assert sale.fulfilment(None) is fulfilment
    assert sale.fulfilment("CDE5FB4A-1DAC-4E9A-BC33-5DFA14EEDB57") is fulfilment


def test_a_product_is_read() -> None:
    products = msgspec.json.decode(sample("product.json"), type=wire.ProductList).Products

    product = mapping.product_from_wire(products[0])

    assert product.sku == "Bread"
    assert (product.weight, product.weight_unit, product.length_unit) == (Decimal(450), "g", "cm")


def test_a_sale_without_a_usable_address_says_why() -> None:
    raw = orjson.loads(sample("sale.json"))
    raw["ShippingAddress"]["Country"] = "Australia"  # a name, not CountryFormat=Code2

    sale = mapping.sale_from_wire(msgspec.convert(raw, wire.Sale))

    assert sale.ship_to is None
    assert sale.ship_to_problem is not None and "country" in sale.ship_to_problem


def test_an_invoice_goes_back_whole_with_only_the_charge_added() -> None:
    (invoice,) = wire.invoices_decoder.decode(sample("invoices.json")).Invoices
    read = mapping.invoice_from_document(invoice)
    price = Decimal("9.51")
    charge = wire.InvoiceCharge(Description="Shipping - UPS (1Z999)", Quantity=Decimal(1),
                                Price=price, Total=price, Comment="lb_1")  # fmt: skip

    sent = orjson.loads(wire.encoder.encode(mapping.invoice_with_charge(read, charge)))

    (original,) = orjson.loads(sample("invoices.json"))["Invoices"]
    assert read.fields.Status == "DRAFT"
    assert read.fields.AdditionalCharges[0].Price == Decimal("2.3456")
    assert {k: v for k, v in sent.items() if k != "AdditionalCharges"} == {
        k: v for k, v in original.items() if k != "AdditionalCharges"
    }  # every field, those ratesvc does not model too (Memo, Payments, AverageCost, ...)
    assert sent["AdditionalCharges"] == [
        *original["AdditionalCharges"],
        {"Description": "Shipping - UPS (1Z999)", "Quantity": 1, "Price": 9.51, "Total": 9.51,
         "Comment": "lb_1"},
    ]  # fmt: skip
    assert b'"Price":2.3456' in wire.encoder.encode(read.document)  # numbers stay exact


@pytest.mark.parametrize(
    ("status", "body", "throttled"),
    [
        (503, b"You reached 60 calls per minute API limit", True),
        (429, b"", True),
        (400, errors("throttled_400_variant"), True),
        (400, errors("box_taken"), False),
        (403, b"", False),
        (500, b"boom", False),
    ],
)
def test_all_three_throttling_answers_are_recognised(
    status: int, body: bytes, throttled: bool
) -> None:
    assert mapping.is_throttled(status, body) is throttled


@pytest.mark.parametrize(
    ("status", "body", "kind", "words"),
    [
        (400, errors("throttled_400_variant"), UpstreamThrottled, "60 calls per 60 seconds"),
        (403, b"", UpstreamAuth, "RATESVC_CIN7_APPLICATION_KEY"),
        (300, b"", UpstreamAuth, "several organisations"),
        (
            400,
            errors("box_taken"),
            UpstreamError,
            "Box #1 is already added to another shipment line",
        ),
        (400, errors("not_found_in_reference"), UpstreamNotFound, "was not found"),
        (404, b"", UpstreamNotFound, "HTTP 404"),
        (502, b"<html>bad gateway</html>", UpstreamUnavailable, "bad gateway"),
        (400, b'{"Exception": "Object shaped"}', UpstreamError, "Object shaped"),
        (400, errors("bad_request") + b"", UpstreamError, "Account with specified ID not found"),
    ],
)
def test_errors_are_parsed_defensively_and_typed(
    status: int, body: bytes, kind: type, words: str
) -> None:
    error = mapping.error_from_response(status, body, "sale")

    assert isinstance(error, kind)
    assert words in error.detail
    assert error.upstream == "cin7"


def test_several_errors_in_one_answer_are_all_reported() -> None:
    body = b'[{"ErrorCode":400,"Exception":"first"},{"ErrorCode":400,"Exception":"second"}]'

    assert mapping.error_from_response(400, body, "ship").detail.endswith("first; second")


def test_a_sale_is_read_with_its_prices_discounts_and_currencies() -> None:
    raw = sample("sale_international.json")

    sale = mapping.sale_from_wire(msgspec.json.decode(raw, type=wire.Sale))

    assert sale.currency == Currency(customer="EUR", base="USD", rate=Decimal("1.0850"))
    tea, pot = sale.lines
    assert (tea.sku, tea.name, tea.quantity) == ("TEA-OOLONG-100", "Oolong tea, 100 g tin", 6)
    assert (tea.price, tea.discount, tea.total) == (Decimal("12.5"), Decimal(10), Decimal("67.5"))
    assert (pot.price, pot.discount) == (Decimal("49.99"), Decimal(0))
    assert sale.products["0e3a9d11-pot"].name == "Cast iron teapot, 1 l"
    assert [(p.box, p.product_id, p.quantity) for p in sale.fulfilments[0].packed] == [
        ("Box 1", "7f1c0b52-tea", 4), ("Box 2", "7f1c0b52-tea", 2), ("Box 2", "0e3a9d11-pot", 1),
    ]  # fmt: skip


def test_a_sale_without_prices_or_currencies_reads_as_unknown_not_zero() -> None:
    raw = orjson.loads(sample("sale.json"))
    for key in ("BaseCurrency", "CustomerCurrency"):
        del raw[key]
    for key in ("Price", "Discount", "Total"):
        del raw["Order"]["Lines"][0][key]

    sale = mapping.sale_from_wire(msgspec.convert(raw, wire.Sale))

    assert sale.currency == Currency()
    assert (sale.lines[0].price, sale.lines[0].discount, sale.lines[0].total) == (
        None, Decimal(0), None,
    )  # fmt: skip


def test_a_usd_sample_sale_has_usd_on_both_sides_and_no_rate() -> None:
    sale = mapping.sale_from_wire(msgspec.json.decode(sample("sale.json"), type=wire.Sale))

    assert sale.currency == Currency(customer="USD", base="USD", rate=None)
    assert sale.lines[0].price == Decimal(8)


def test_products_are_read_with_hs_codes_and_origins_as_alpha2() -> None:
    raw = msgspec.json.decode(sample("products_customs.json"), type=wire.ProductList)

    tea, pot, cup, poster = (mapping.product_from_wire(p) for p in raw.Products)

    assert (tea.name, tea.hs_code, tea.origin, tea.origin_given) == (
        "Oolong tea, 100 g tin", "0902.10", "CN", None,
    )  # fmt: skip
    assert (pot.hs_code, pot.origin) == ("7323.91", "VN")  # by name: no alpha-3 code
    assert (cup.name, cup.hs_code, cup.origin, cup.origin_given) == (None, None, None, None)
    assert (poster.origin, poster.origin_given) == (None, "Narnia")


def test_the_alpha3_code_wins_over_the_name() -> None:
    product = wire.Product(ID="p", CountryOfOrigin="China", CountryOfOriginCode="TWN")

    assert mapping.product_from_wire(product).origin == "TW"
