"""``POST /v1/rates`` with a Cin7 Core ``sale_id``, against both sandboxes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.conftest import ACME_AUTH, AUTH, acme_settings, service_env


async def rate(client: TestClient, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = await client.post("/v1/rates", json=body, headers=AUTH)
    payload: dict[str, Any] = await response.json()
    assert response.status == status, payload
    return payload


async def test_a_packed_sale_is_rated_from_its_boxes(
    sale_service: TestClient, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    body = await rate(sale_service, {"sale_id": "sale-simple", "carriers": ["ups"]})

    assert (body["sale_id"], body["task_id"]) == ("sale-simple", "task-sale-simple")
    assert body["quotes"] and all(q["packages"] == 1 for q in body["quotes"])
    ((_, sent),) = [(p, b) for p, b in sandbox.received if p == "/shipments/getrates"]
    assert sent["weight"] == {"value": 31.8, "units": "ounces"}  # 2 x 450 g = 31.75 oz, rounded up
    assert sent["dimensions"] == {"units": "inches", "length": 7.9, "width": 4, "height": 3.2}
    assert (sent["toPostalCode"], sent["toState"], sent["toCountry"]) == ("10118", "NY", "US")
    assert body["defaults"] == ["Box 1: size not in the box catalogue; used the largest product's"]
    assert cin7_sandbox.calls == {"GET /sale": 1}


async def test_a_multi_box_sale_is_one_package_per_box_and_says_what_it_assumed(
    sale_service: TestClient, sandbox: ShipStationSandbox
) -> None:
    body = await rate(sale_service, {"sale_id": "sale-multibox", "carriers": ["fedex"]})

    assert all(q["packages"] == 2 for q in body["quotes"])
    assert [b["box"] for b in body["quotes"][0]["breakdown"]] == ["Box 1", "Box 2"]
    weights = sorted(
        b["weight"]["value"] for p, b in sandbox.received if p == "/shipments/getrates"
    )
    # Box 1: 2 x 5 lb = 160 oz. Box 2: 4 x 12 oz + a gift card with no weight (1 lb assumed).
    assert weights == [64, 160]
    assert body["defaults"] == [
        "Box 1: size not in the box catalogue; used the largest product's",
        "Box 2: no weight for GiftCard; assumed 1 lb each",
        "Box 2: size not in the box catalogue; used the largest product's",
    ]
    ground = next(q for q in body["quotes"] if q["service_code"] == "fedex_ground")
    assert Decimal(ground["total"]) == sum(
        Decimal(b["shipment_cost"]) + Decimal(b["other_cost"]) for b in ground["breakdown"]
    )


async def test_an_international_sale_gets_international_services(sale_service: TestClient) -> None:
    body = await rate(sale_service, {"sale_id": "sale-international", "carriers": ["ups"]})

    assert {q["service_code"] for q in body["quotes"]} == {
        "ups_worldwide_saver", "ups_standard_international",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"sale_id": "sale-shipped"}, 409, "already_shipped"),
        ({"sale_id": "sale-unpacked"}, 409, "sale_not_ready"),
        ({"sale_id": "no-such-sale"}, 404, "not_found"),
        ({"sale_id": "sale-simple", "task_id": "no-such-task"}, 404, "not_found"),
    ],
)
async def test_sales_that_cannot_be_rated_are_refused_with_the_right_code(
    sale_service: TestClient, sandbox: ShipStationSandbox, body: dict[str, Any], status: int,
    code: str,
) -> None:  # fmt: skip
    problem = await rate(sale_service, body, status=status)

    assert problem["code"] == code
    assert sandbox.carrier_calls == {}


async def test_a_voided_sale_is_neither_rated_nor_labelled(
    sale_service: TestClient, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    cin7_sandbox.void_sale("sale-simple")  # its Pack stays authorised, as in Cin7 Core
    label = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}

    rated = await rate(sale_service, {"sale_id": "sale-simple"}, status=409)
    bought = await sale_service.post("/v1/labels", json=label, headers=AUTH)

    assert rated["code"] == "sale_not_ready"
    assert "voided" in rated["detail"]
    assert bought.status == 409
    assert (await bought.json())["code"] == "sale_not_ready"
    assert sandbox.calls["/shipments/getrates"] == sandbox.calls["/shipments/createlabel"] == 0


async def test_packing_a_sale_makes_it_rateable(
    sale_service: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    await rate(sale_service, {"sale_id": "sale-unpacked"}, status=409)
    cin7_sandbox.authorise_pack("sale-unpacked")

    body = await rate(sale_service, {"sale_id": "sale-unpacked", "carriers": ["ups"]})

    assert body["quotes"]


async def test_rejected_cin7_credentials_are_502_upstream_auth(
    sale_service: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    cin7_sandbox._credentials = ("sandbox-account", "rotated")

    problem = await rate(sale_service, {"sale_id": "sale-simple"}, status=502)

    assert problem["code"] == "upstream_auth"
    assert "RATESVC_CIN7_APPLICATION_KEY" in problem["detail"]


async def test_a_user_in_several_organisations_is_502_upstream_auth_with_the_cure(
    sale_service: TestClient, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    cin7_sandbox.knobs.multiple_organisations = True  # Cin7 Core answers 300 Multiple Choices

    problem = await rate(sale_service, {"sale_id": "sale-simple", "carriers": ["ups"]}, 502)

    assert problem["code"] == "upstream_auth"
    assert "300 Multiple Choices" in problem["detail"]
    assert "several organisations" in problem["detail"]
    assert "one connection (API application key) per organisation" in problem["detail"]
    assert cin7_sandbox.calls == {"GET /sale": 1}  # an answer, not a failure to retry
    assert not sandbox.received  # nothing was rated from a sale that was never read


async def test_a_sale_on_an_account_without_cin7_is_422(service: TestClient) -> None:
    problem = await rate(service, {"sale_id": "sale-simple"}, status=422)

    assert problem["errors"][0]["field"] == "sale_id"
    assert "Cin7 Core credentials" in problem["errors"][0]["message"]


async def test_the_box_catalogue_and_tare_come_from_the_account(
    aiohttp_client: Any, sandbox: ShipStationSandbox, sandbox_url: str, cin7_url: str,
    tmp_path: Any,
) -> None:  # fmt: skip
    packaging = (
        "[accounts.acme.packaging]\n"
        'tare = { value = 4, unit = "oz" }\n'
        'boxes = { "Box 1" = { length = 12, width = 10, height = 6, unit = "in" } }\n'
    )
    settings = acme_settings(tmp_path, sandbox_url, packaging, cin7_url=cin7_url)
    client = await aiohttp_client(create_app(settings))

    response = await client.post(
        "/v1/rates", json={"sale_id": "sale-simple", "carriers": ["ups"]},
        headers=ACME_AUTH,
    )  # fmt: skip
    body = await response.json()

    assert response.status == 200, body
    assert body["defaults"] == []
    (sent,) = [b for p, b in sandbox.received if p == "/shipments/getrates"]
    assert sent["weight"] == {"value": 35.8, "units": "ounces"}  # 31.75 oz + 4 oz tare
    assert sent["dimensions"] == {"units": "inches", "length": 12, "width": 10, "height": 6}


async def test_an_advanced_sale_is_rated_from_its_packed_unshipped_fulfilment(
    sale_service: TestClient,
) -> None:
    body = await rate(sale_service, {"sale_id": "sale-advanced", "carriers": ["ups"]})

    assert body["task_id"] == "task-sale-advanced-2"
    assert [b["box"] for b in body["quotes"][0]["breakdown"]] == ["Carton A", "Carton B"]


async def test_without_an_account_ship_from_the_sale_location_is_the_origin(
    aiohttp_client: Any, sandbox: ShipStationSandbox, sandbox_url: str, cin7_url: str,
    tmp_path: Any,
) -> None:  # fmt: skip
    env = service_env(sandbox_url, tmp_path / "data", cin7_url)
    del env["RATESVC_SHIP_FROM"]
    client = await aiohttp_client(create_app(load_settings(env)))

    body = await rate(client, {"sale_id": "sale-simple", "carriers": ["ups"]})

    assert body["quotes"]
    (sent,) = [b for p, b in sandbox.received if p == "/shipments/getrates"]
    assert (sent["fromPostalCode"], sent["fromCity"], sent["fromState"]) == (
        "78703",
        "Austin",
        "TX",
    )
