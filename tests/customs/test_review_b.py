"""What the second hostile review of customs found (money, mapping, validation, wire format, the
HTTP edge), kept as specifications: each failed on the code it reviewed."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from ratesvc.customs import CustomsRules, Declaration, Incomplete
from ratesvc.models import CustomsDeclaration
from ratesvc.models import CustomsItem as DeclaredItem
from ratesvc.sales import Currency
from ratesvc.sandbox import cin7_data
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.upstreams.cin7 import mapping, wire
from ratesvc.upstreams.shipstation import wire as ss_wire
from ratesvc.upstreams.shipstation.mapping import customs_to_wire
from tests.api.test_labels import buy, labels  # noqa: F401 (the fixture)
from tests.conftest import AUTH, MakeService
from tests.customs.test_declaration import build, line, product, sale_of
from tests.customs.test_sale_labels import INTERNATIONAL, cheapest_ups_international, declared, rate
from tests.labels.test_customs_shipment import TEA, TO_CANADA, TO_US, shipment_label

# --- B1: the account's default origin overwrites a country of origin Cin7 Core does state -------


def test_b1_default_origin_does_not_replace_an_origin_that_is_given_but_unreadable() -> None:
    """The default origin "stands in for a product without a country of origin" (CustomsRules,
    README settings table: "for products whose Cin7 Core record has none"). A product whose record
    says "Mainland China" (not in the table) is not without an origin: declaring it as made in the
    US is a false customs declaration. It must be refused, naming the value to fix."""
    goods = product("tea", origin=None, origin_given="Mainland China")
    sale = sale_of([line("tea", 1, "10")], [("tea", 1, "Box 1")])

    result = build(sale, {"tea": goods}, CustomsRules(default_origin="US"))

    assert isinstance(result, Incomplete), result
    assert [p.field for p in result.problems] == ["country_of_origin"]
    assert "Mainland China" in result.problems[0].message


async def test_b1_a_product_of_unreadable_origin_is_refused_not_declared_with_the_default(
    make_labelling: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    cin7_sandbox.products["p-scale"].update(CountryOfOrigin="PRC", CountryOfOriginCode="")
    client = await make_labelling(RATESVC_CUSTOMS_DEFAULT_ORIGIN="US")

    response = await client.post("/v1/labels", json={"sale_id": "sale-international",
                                                     **INTERNATIONAL}, headers=AUTH)  # fmt: skip

    body = await response.json()
    sent = [item["countryOfOrigin"] for items in declared(sandbox) for item in items]

    assert "US" not in sent, sent
    assert response.status == 422 and body["code"] == "customs_incomplete", body


# --- B2: a Cin7 Core box name with surrounding spaces loses (or swaps) its declaration ---------


def _sale_to_canada(cin7: Cin7Sandbox, sale_id: str, items: list[tuple[str, int, str]]) -> None:
    cin7.add_sale(sale_id, "SO-9" + sale_id[-3:], "Liam Tremblay", cin7_data.ADDRESS_CA, items)


async def test_b2_a_box_named_with_a_trailing_space_is_declared_like_any_other(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    """The package's ``box`` is trimmed, Cin7 Core's box name is not: packages are matched to
    declared boxes by position, so a complete sale is not refused as customs_required."""
    _sale_to_canada(cin7_sandbox, "sale-b2a", [("p-scale", 1, "Box 1 ")])

    response = await labels.post("/v1/labels", json={"sale_id": "sale-b2a", **INTERNATIONAL},
                                 headers=AUTH)  # fmt: skip

    body = await response.json()
    assert response.status == 201, body


async def test_b2_two_boxes_differing_only_by_a_space_each_declare_their_own_contents(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    """ "Box 1" (a scale) and "Box 1 " (two mugs) are two boxes to Cin7 Core and two packages;
    matched by name (both read "Box 1" once trimmed) the mugs' label declared the scale."""
    _sale_to_canada(cin7_sandbox, "sale-b2b", [("p-scale", 1, "Box 1"), ("p-mug", 2, "Box 1 ")])

    response = await labels.post("/v1/labels", json={"sale_id": "sale-b2b", **INTERNATIONAL},
                                 headers=AUTH)  # fmt: skip

    sent = [[(i["description"], i["quantity"]) for i in items] for items in declared(sandbox)]
    assert sent in ([], [[("Kitchen Scale", 1)], [("Stoneware Mug", 2)]]), (response.status, sent)


# --- B3: README: "buying the quote declares the same items, even if a product record changed" --


async def test_b3_a_quoted_declaration_is_bought_after_a_product_record_lost_its_hs_code(
    make_labelling: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_labelling(RATESVC_CUSTOMS_PRODUCT_TTL_S="0")
    quote_id = cheapest_ups_international(await rate(client, "sale-international"))
    cin7_sandbox.products["p-scale"]["HSCode"] = ""  # edited after the quote

    response = await client.post("/v1/labels", json={"quote_id": quote_id}, headers=AUTH)

    body = await response.json()
    # README: the quote's declaration is bought "even if a product record changed since"

    assert response.status == 201, body
    assert [items[0]["harmonizedTariffCode"] for items in declared(sandbox)] == [
        "8423.10", "6912.00",
    ]  # fmt: skip


# --- B4: Cin7 Core origins written as ISO alpha-2 (or with dots) are not read -----------------


@pytest.mark.parametrize(("name", "code", "expected"), [
    ("US", None, "US"), ("CN", None, "CN"), ("U.S.A.", None, "US"), ("China", "CN", "CN"),
])  # fmt: skip
def test_b4_an_alpha2_origin_is_read(name: str, code: str | None, expected: str) -> None:
    item = wire.Product(ID="p", SKU="P", Name="Kitchen Scale", CountryOfOrigin=name,
                        CountryOfOriginCode=code)  # fmt: skip
    assert mapping.product_from_wire(item).origin == expected


# --- B5: validation of shipment customs --------------------------------------------------------


async def test_b5_an_empty_customs_items_list_on_a_domestic_package_is_not_refused(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
) -> None:
    """A client that always sends ``customs_items: []`` gets 422 invalid_request on domestic
    labels (where customs do not apply), and invalid_request rather than customs_required on
    international ones."""
    parcel = {"weight": {"value": 2, "unit": "lb"}, "customs_items": []}

    domestic = await labels.post("/v1/labels", json=shipment_label(TO_US, parcel), headers=AUTH)
    abroad = await labels.post("/v1/labels", json=shipment_label(TO_CANADA, parcel), headers=AUTH)

    assert domestic.status == 201, await domestic.json()
    assert (await abroad.json())["code"] == "customs_required"


@pytest.mark.parametrize("description", ["\x00\x01\x02", "\u200b\u200b\u200b",
                                         "Tea\x1b[2J strainer"])  # fmt: skip
def test_b5_a_description_of_control_or_invisible_characters_is_refused(description: str) -> None:
    """ "description 3-100 characters": control and zero-width characters are not words a customs
    officer (or UPS, which refuses non-descriptive descriptions) can read; they pass and are
    forwarded to ShipStation and printed on the customs form."""
    raw = msgspec.json.encode({**TEA, "description": description})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=DeclaredItem)


def test_b5_description_length_does_not_count_surrounding_white_space() -> None:
    """README: "description 3-100 characters (not counting surrounding white space)"; the 100
    limit is checked before the spaces are trimmed."""
    raw = msgspec.json.encode({**TEA, "description": "  " + "x" * 100})
    item = msgspec.json.decode(raw, type=DeclaredItem)
    assert item.description == "x" * 100


# --- B6: values forwarded exactly (holds) -------------------------------------------------------


def test_b6_values_reach_shipstation_as_exact_json_numbers() -> None:
    values = ("38.96", "0.10", "1234567.89", "0", "0000000007.5")
    items = [msgspec.json.decode(msgspec.json.encode({**TEA, "value": v}), type=DeclaredItem)
             for v in values]  # fmt: skip
    declaration = CustomsDeclaration(contents="merchandise", non_delivery="return_to_sender",
                                     items=items)  # fmt: skip
    raw = ss_wire.encoder.encode(customs_to_wire(declaration))
    for text in (b'"value":38.96,', b'"value":0.10,', b'"value":1234567.89,', b'"value":0,',
                 b'"value":7.5,'):  # fmt: skip
        assert text in raw, raw


def test_b6_sale_values_half_up_once_with_rate() -> None:
    """EUR 3 x 9.99 less 15 % at 1.085 across three boxes: each 9.2132775 -> 9.21 (holds)."""
    sale = sale_of(
        [line("tea", 3, "9.99", "15")],
        [("tea", 1, "Box 1"), ("tea", 1, "Box 2"), ("tea", 1, "Box 3")],
        Currency(customer="EUR", base="USD", rate=Decimal("1.085")),
    )
    result = build(sale, {"tea": product("tea")})
    assert isinstance(result, Declaration), result
    assert [str(b.items[0].value) for b in result.boxes] == ["9.21", "9.21", "9.21"]
