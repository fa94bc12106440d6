"""International sales through HTTP against both sandboxes: the declaration is built from the sale,
each package's label declares only its own box, forms land on the sale, and a sale that cannot be
declared is refused before anything is bought."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.api.test_labels import buy, label_of, labels, until  # noqa: F401 (the fixture)
from tests.conftest import AUTH, MakeService

INTERNATIONAL = {"carrier_code": "ups", "service_code": "ups_standard_international"}


@pytest.fixture
async def uncached(make_labelling: MakeService) -> TestClient:
    """The service reading product records afresh for every request."""
    return await make_labelling(RATESVC_CUSTOMS_PRODUCT_TTL_S="0")


def declared(sandbox: ShipStationSandbox) -> list[list[dict[str, Any]]]:
    """The customs items of each createlabel call, in order."""
    return [
        body["internationalOptions"]["customsItems"]
        for path, body in sandbox.received
        if path == "/shipments/createlabel"
    ]


def product_reads(cin7: Cin7Sandbox) -> int:
    return cin7.calls["GET /product"]


async def rate(client: TestClient, sale_id: str) -> dict[str, Any]:
    response = await client.post("/v1/rates", json={"sale_id": sale_id}, headers=AUTH)
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


def cheapest_ups_international(rates: dict[str, Any]) -> str:
    quote_id: str = next(
        q["quote_id"] for q in rates["quotes"] if q["service_code"] == "ups_standard_international"
    )
    return quote_id


async def test_a_two_box_sale_to_canada_gets_two_labels_each_declaring_its_own_box(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    label = await buy(labels, {"sale_id": "sale-international", **INTERNATIONAL})

    assert [p["box"] for p in label["packages"]] == ["Box 1", "Box 2"]
    assert declared(sandbox) == [
        [{"description": "Kitchen Scale", "quantity": 1, "value": 10.0,
          "harmonizedTariffCode": "8423.10", "countryOfOrigin": "CN"}],
        [{"description": "Stoneware Mug", "quantity": 2, "value": 20.0,
          "harmonizedTariffCode": "6912.00", "countryOfOrigin": "PT"}],
    ]  # fmt: skip
    options = {
        (b["internationalOptions"]["contents"], b["internationalOptions"]["nonDelivery"])
        for path, b in sandbox.received if path == "/shipments/createlabel"
    }  # fmt: skip
    assert options == {("merchandise", "return_to_sender")}
    assert [p["customs_form_url"] for p in label["packages"]] == [
        f"/v1/labels/{label['label_id']}/packages/{n}/customs.pdf" for n in (1, 2)
    ]


async def test_the_customs_forms_are_attached_to_the_sale_next_to_the_labels(
    labels: TestClient,  # noqa: F811
    cin7_sandbox: Cin7Sandbox,
) -> None:
    label = await buy(labels, {"sale_id": "sale-international", **INTERNATIONAL})

    async def completed() -> bool:
        return (await label_of(labels, label["label_id"]))["status"] == "completed"

    await until(completed)
    attached = {a["FileName"]: a["Content"] for a in cin7_sandbox.attachments["sale-international"]}
    for package in label["packages"]:
        tracking = package["tracking_number"]
        served = await labels.get(package["customs_form_url"], headers=AUTH)
        form = await served.read()
        assert served.content_type == "application/pdf"
        assert form.startswith(b"%PDF")
        assert base64.b64decode(attached[f"customs-{tracking}.pdf"]) == form
        assert f"label-{tracking}.pdf" in attached
    assert len(attached) == 4


async def test_a_product_without_an_hs_code_is_422_naming_it_and_nothing_is_bought(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    problem = await buy(labels, {"sale_id": "sale-international-nohs", **INTERNATIONAL}, status=422)
    listed = await (await labels.get("/v1/labels", headers=AUTH)).json()

    assert problem["code"] == "customs_incomplete"
    assert problem["errors"] == [{
        "field": "products[Tea-Oolong].hs_code",
        "message": "Tea-Oolong (Oolong Tea 100 g): no HS code: set the product's HS Code in Cin7 "
                   "Core (6-10 digits, e.g. 0902.10)",
    }]  # fmt: skip
    assert "Tea-Oolong (Oolong Tea 100 g): no HS code" in problem["detail"]
    assert sandbox.calls["/shipments/createlabel"] == 0
    assert listed["labels"] == []
    assert not cin7_sandbox.attachments.get("sale-international-nohs")


async def test_a_sale_in_euros_is_declared_in_dollars_at_its_rate_exact_to_the_cent(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
) -> None:
    await buy(labels, {"sale_id": "sale-eur", **INTERNATIONAL})

    # scale: 39.90 EUR less 10 % = 35.91 EUR x 1.085 = 38.96235 USD; mugs: 4 x 12.50 x 1.085
    assert [[(i["description"], i["quantity"], i["value"]) for i in items]
            for items in declared(sandbox)] == [
        [("Kitchen Scale", 1, 38.96)], [("Stoneware Mug", 4, 54.25)],
    ]  # fmt: skip


async def test_a_quote_records_the_declaration_and_buying_it_uses_the_same_items(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    rates = await rate(labels, "sale-international")
    quote_id = cheapest_ups_international(rates)
    stored = await (await labels.get(f"/v1/quotes/{quote_id}", headers=AUTH)).json()
    cin7_sandbox.products["p-scale"]["HSCode"] = "8423.81"  # edited after the quote

    await buy(labels, {"quote_id": quote_id})

    assert [p["customs_items"][0]["hs_code"] for p in stored["shipment"]["packages"]] == [
        "8423.10",
        "6912.00",
    ]
    assert [items[0]["harmonizedTariffCode"] for items in declared(sandbox)] == [
        "8423.10",
        "6912.00",
    ]


async def test_rating_and_buying_an_international_sale_reads_each_product_once(
    labels: TestClient,  # noqa: F811
    cin7_sandbox: Cin7Sandbox,
) -> None:
    rates = await rate(labels, "sale-international")
    await buy(labels, {"quote_id": cheapest_ups_international(rates)})

    assert product_reads(cin7_sandbox) == 2  # the scale and the mug, once each


async def test_a_domestic_sale_reads_no_product_records(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    await buy(labels, {"sale_id": "sale-multibox", "carrier_code": "fedex",
                       "service_code": "fedex_ground"})  # fmt: skip

    assert product_reads(cin7_sandbox) == 0
    assert all(
        body["internationalOptions"] is None
        for path, body in sandbox.received
        if path == "/shipments/createlabel"
    )


async def test_an_incomplete_sale_is_still_rated_but_its_quote_is_not_bought(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
) -> None:
    rates = await rate(labels, "sale-international-nohs")
    quote_id = cheapest_ups_international(rates)

    problem = await buy(labels, {"quote_id": quote_id}, status=422)

    assert problem["code"] == "customs_incomplete"
    assert sandbox.calls["/shipments/createlabel"] == 0


async def test_a_quote_made_before_the_product_was_fixed_is_bought_with_the_fixed_facts(
    uncached: TestClient,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    quote_id = cheapest_ups_international(await rate(uncached, "sale-international-nohs"))
    cin7_sandbox.products["p-tea"]["HSCode"] = "0902.30"

    await buy(uncached, {"quote_id": quote_id})

    assert [[i["harmonizedTariffCode"] for i in items] for items in declared(sandbox)] == [
        ["6912.00", "0902.30"]
    ]


async def test_a_quote_whose_boxes_now_hold_other_products_is_sale_changed(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    quote_id = cheapest_ups_international(await rate(labels, "sale-international"))
    # Box 2 held two mugs; now one mug and a cup of the same weight and size: the boxes weigh
    # and measure what was quoted, but hold other products, so the quote's declaration is wrong.
    cin7_sandbox.products["p-cup"] = {**cin7_sandbox.products["p-mug"], "SKU": "Cup",
                                      "Name": "Stoneware Cup"}  # fmt: skip
    sale = cin7_sandbox.sales["sale-international"]
    sale["Order"]["Lines"].append(cin7_sandbox._order_line("p-cup", 1))
    packed = sale["Fulfilments"][0]["Pack"]["Lines"]
    mugs = next(line for line in packed if line["ProductID"] == "p-mug")
    mugs["Quantity"] = 1
    packed.append({**mugs, "ProductID": "p-cup", "SKU": "Cup"})

    problem = await buy(labels, {"quote_id": quote_id}, status=409)

    assert problem["code"] == "sale_changed"
    assert "what its boxes hold" in problem["detail"]
    assert "packed boxes" not in problem["detail"]  # weights and sizes are the same
    assert sandbox.calls["/shipments/createlabel"] == 0


async def test_a_sale_to_an_apo_address_is_declared_although_its_country_is_us(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    apo = {"Line1": "Unit 2050 Box 4190", "Line2": None, "City": "APO", "State": "AE",
           "Postcode": "09096", "Country": "US", "Company": None,
           "Contact": "Sgt. A. Soldier"}  # fmt: skip
    sale = cin7_sandbox.sales["sale-simple"]
    sale["ShippingAddress"] = sale["Fulfilments"][0]["Ship"]["ShippingAddress"] = apo
    cin7_sandbox.products["p-bread"]["HSCode"] = ""  # US mail: a form, not tariff codes

    await buy(labels, {"sale_id": "sale-simple", "carrier_code": "stamps_com",
                       "service_code": "usps_priority_mail"})  # fmt: skip

    assert declared(sandbox) == [[
        {"description": "Baked Bread", "quantity": 2, "value": 20.0,
         "harmonizedTariffCode": None, "countryOfOrigin": "US"},
    ]]  # fmt: skip
