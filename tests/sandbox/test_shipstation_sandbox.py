"""The ShipStation sandbox behaves like ShipStation v1 as UPSTREAMS.md describes it."""

from __future__ import annotations

import base64
import io
import re
import time
from decimal import Decimal
from typing import Any

import aiohttp
import pypdf
import pytest
from aiohttp.test_utils import TestClient

from ratesvc.sandbox.knobs import Knobs
from ratesvc.sandbox.shipstation import ShipStationSandbox

AUTH = {"Authorization": "Basic " + base64.b64encode(b"sandbox-key:sandbox-secret").decode()}
RATES = "/shipments/getrates"
BASE_RATE: dict[str, Any] = {
    "carrierCode": "fedex", "serviceCode": None, "packageCode": None,
    "fromPostalCode": "78703", "toState": "NY", "toCountry": "US", "toPostalCode": "10001",
    "toCity": "New York", "weight": {"value": 3, "units": "pounds"},
    "dimensions": {"units": "inches", "length": 10, "width": 8, "height": 4},
    "confirmation": "none", "residential": False,
}  # fmt: skip


@pytest.fixture
async def ss(aiohttp_client: Any, sandbox: ShipStationSandbox) -> TestClient:
    client: TestClient = await aiohttp_client(sandbox.app)
    return client


async def rates(ss: TestClient, **changes: Any) -> list[dict[str, Any]]:
    response = await ss.post(RATES, json={**BASE_RATE, **changes}, headers=AUTH)
    assert response.status == 200, await response.text()
    rows: list[dict[str, Any]] = await response.json()
    return rows


def cost(rows: list[dict[str, Any]], service: str) -> Decimal:
    row = next(r for r in rows if r["serviceCode"] == service)
    return Decimal(str(row["shipmentCost"])) + Decimal(str(row["otherCost"]))


async def test_wrong_credentials_get_401(ss: TestClient, sandbox: ShipStationSandbox) -> None:
    bad = {"Authorization": "Basic " + base64.b64encode(b"sandbox-key:wrong").decode()}

    assert (await ss.get("/carriers")).status == 401
    assert (await ss.get("/carriers", headers=bad)).status == 401
    assert sandbox.unauthorized == 2


async def test_every_answer_carries_the_rate_limit_headers(ss: TestClient) -> None:
    first = await ss.get("/carriers", headers=AUTH)
    second = await ss.post(RATES, json={**BASE_RATE, "carrierCode": "nope"}, headers=AUTH)

    for response, remaining in ((first, "39"), (second, "38")):
        assert response.headers["X-Rate-Limit-Limit"] == "40"
        assert response.headers["X-Rate-Limit-Remaining"] == remaining
        assert 0 < int(response.headers["X-Rate-Limit-Reset"]) <= 60


async def test_over_the_limit_answers_429_with_the_exact_body(aiohttp_client: Any) -> None:
    sandbox = ShipStationSandbox(knobs=Knobs(rate_limit=3, window_s=60))
    ss = await aiohttp_client(sandbox.app)

    statuses = [(await ss.get("/carriers", headers=AUTH)).status for _ in range(3)]
    over = await ss.get("/carriers", headers=AUTH)

    assert statuses == [200, 200, 200]
    assert over.status == 429
    assert await over.json() == {"message": "Too Many Requests"}
    assert over.headers["X-Rate-Limit-Remaining"] == "0"
    assert sandbox.throttled == 1


async def test_carriers_services_and_packages(ss: TestClient) -> None:
    carriers = await (await ss.get("/carriers", headers=AUTH)).json()
    services = await (
        await ss.get("/carriers/listservices", params={"carrierCode": "ups"}, headers=AUTH)
    ).json()
    packages = await (
        await ss.get("/carriers/listpackages", params={"carrierCode": "stamps_com"}, headers=AUTH)
    ).json()

    assert [c["code"] for c in carriers] == ["stamps_com", "ups", "fedex", "dhl_express_worldwide"]
    assert {"ups_ground", "ups_next_day_air"} <= {s["code"] for s in services}
    assert all(s["carrierCode"] == "ups" for s in services)
    assert "medium_flat_rate_box" in {p["code"] for p in packages}


async def test_unknown_carrier_codes_are_500s_with_an_exception_message(ss: TestClient) -> None:
    for response in (
        await ss.post(RATES, json={**BASE_RATE, "carrierCode": "usps"}, headers=AUTH),
        await ss.get("/carriers/listservices", params={"carrierCode": "usps"}, headers=AUTH),
    ):
        assert response.status == 500
        body = await response.json()
        assert body["ExceptionMessage"] == "Invalid carrierCode"
        assert body["Message"] == "An error has occurred."


async def test_getrates_requires_one_carrier_and_the_mandatory_fields(ss: TestClient) -> None:
    no_carrier = await ss.post(RATES, json={**BASE_RATE, "carrierCode": None}, headers=AUTH)
    no_zip = await ss.post(RATES, json={**BASE_RATE, "toPostalCode": None}, headers=AUTH)

    assert no_carrier.status == 400
    assert "request.carrierCode" in (await no_carrier.json())["ModelState"]
    assert no_zip.status == 400
    assert (await no_zip.json())["Message"] == "The request is invalid."


async def test_rows_come_unsorted_and_prices_are_deterministic(ss: TestClient) -> None:
    first = await rates(ss)
    again = await rates(ss)

    totals = [Decimal(str(r["shipmentCost"])) + Decimal(str(r["otherCost"])) for r in first]
    assert first == again
    assert len(first) == 8  # FedEx's domestic services
    assert totals != sorted(totals)


async def test_stamps_com_returns_package_variants_when_package_code_is_null(
    ss: TestClient,
) -> None:
    variants = await rates(ss, carrierCode="stamps_com", weight={"value": 2, "units": "pounds"})
    plain = await rates(
        ss, carrierCode="stamps_com", packageCode="package", weight={"value": 2, "units": "pounds"}
    )

    priority = [r for r in variants if r["serviceCode"] == "usps_priority_mail"]
    assert len(priority) > 1
    assert {r["serviceName"] for r in priority} >= {
        "USPS Priority Mail - Package",
        "USPS Priority Mail - Medium Flat Rate Box",
    }
    codes = [r["serviceCode"] for r in plain]
    assert len(codes) == len(set(codes))
    assert all(" - " not in r["serviceName"] for r in plain)


async def test_ups_needs_the_destination_state(ss: TestClient) -> None:
    response = await ss.post(
        RATES, json={**BASE_RATE, "carrierCode": "ups", "toState": None}, headers=AUTH
    )

    assert response.status == 500
    assert "state" in (await response.json())["ExceptionMessage"].lower()


async def test_prices_follow_weight_distance_size_residential_and_confirmation(
    ss: TestClient,
) -> None:
    base = cost(await rates(ss), "fedex_ground")
    heavier = cost(await rates(ss, weight={"value": 10, "units": "pounds"}), "fedex_ground")
    nearer = cost(await rates(ss, toPostalCode="73301", toState="TX"), "fedex_ground")
    bulky = cost(
        await rates(ss, dimensions={"units": "inches", "length": 24, "width": 24, "height": 24}),
        "fedex_ground",
    )
    residential = cost(await rates(ss, residential=True), "fedex_ground")
    signature = cost(await rates(ss, confirmation="signature"), "fedex_ground")

    assert heavier > base > nearer
    assert bulky > heavier  # 24" cube: dimensional weight 100 lb
    assert residential > base
    assert signature > base


async def test_createlabel_sells_a_real_pdf_with_the_tracking_number(ss: TestClient) -> None:
    response = await ss.post("/shipments/createlabel", json=label_body("fedex"), headers=AUTH)
    body = await response.json()

    assert response.status == 200, body
    assert body["labelData"].startswith("JVBERi0")
    assert body["orderId"] is None
    pdf = pypdf.PdfReader(io.BytesIO(base64.b64decode(body["labelData"])), strict=True)
    assert len(pdf.pages) == 1
    assert body["trackingNumber"] in pdf.pages[0].extract_text()
    assert Decimal(str(body["shipmentCost"])) > 0


@pytest.mark.parametrize(
    ("carrier", "service", "pattern"),
    [
        ("ups", "ups_ground", r"^1Z[0-9A-Z]{16}$"),
        ("fedex", "fedex_ground", r"^\d{12}$"),
        ("stamps_com", "usps_priority_mail", r"^9400\d{18}$"),
        ("dhl_express_worldwide", "dhl_express_domestic", r"^\d{10}$"),
    ],
)
async def test_tracking_numbers_look_like_the_carriers(
    ss: TestClient, carrier: str, service: str, pattern: str
) -> None:
    response = await ss.post(
        "/shipments/createlabel", json=label_body(carrier, service), headers=AUTH
    )

    assert re.match(pattern, (await response.json())["trackingNumber"])


async def test_createlabel_rejects_a_non_boolean_test_label_like_shipstation(
    ss: TestClient,
) -> None:
    response = await ss.post(
        "/shipments/createlabel", json={**label_body("fedex"), "testLabel": 0}, headers=AUTH
    )

    assert response.status == 400
    assert (await response.json())["ModelState"] == {
        "request.testlabel": ["The value '0' is not valid for Boolean."]
    }


async def test_void_then_void_again_then_unknown(
    ss: TestClient, sandbox: ShipStationSandbox
) -> None:
    created = await (
        await ss.post("/shipments/createlabel", json=label_body("ups"), headers=AUTH)
    ).json()
    shipment_id = created["shipmentId"]

    first = await ss.post("/shipments/voidlabel", json={"shipmentId": shipment_id}, headers=AUTH)
    second = await ss.post("/shipments/voidlabel", json={"shipmentId": shipment_id}, headers=AUTH)
    unknown = await ss.post("/shipments/voidlabel", json={"shipmentId": 1}, headers=AUTH)

    assert await first.json() == {"approved": True, "message": "Label voided successfully"}
    assert (await second.json())["approved"] is False
    assert unknown.status == 400
    assert sandbox.shipments[shipment_id]["voided"] is True


async def test_a_refused_void_is_a_200_with_approved_false(
    ss: TestClient, sandbox: ShipStationSandbox
) -> None:
    created = await (
        await ss.post("/shipments/createlabel", json=label_body("ups"), headers=AUTH)
    ).json()
    sandbox.refused_voids.add(created["shipmentId"])

    response = await ss.post(
        "/shipments/voidlabel", json={"shipmentId": created["shipmentId"]}, headers=AUTH
    )

    assert response.status == 200
    assert (await response.json())["approved"] is False


async def test_shipments_are_listed_with_filters_and_without_label_data(ss: TestClient) -> None:
    ups = await (
        await ss.post("/shipments/createlabel", json=label_body("ups"), headers=AUTH)
    ).json()
    await ss.post("/shipments/createlabel", json=label_body("fedex"), headers=AUTH)
    today = ups["createDate"][:10]

    listed = await (
        await ss.get(
            "/shipments",
            params={"carrierCode": "ups", "createDateStart": f"{today} 00:00:00"},
            headers=AUTH,
        )
    ).json()
    future = await (
        await ss.get("/shipments", params={"createDateStart": "2999-01-01 00:00:00"}, headers=AUTH)
    ).json()

    assert [s["shipmentId"] for s in listed["shipments"]] == [ups["shipmentId"]]
    assert listed["shipments"][0]["labelData"] is None
    assert listed["shipments"][0]["advancedOptions"]["customField1"] == "purchase-key-1"
    assert listed["total"] == 1
    assert future["shipments"] == []


async def test_knobs_change_latency_faults_and_window_at_run_time(
    ss: TestClient, sandbox: ShipStationSandbox
) -> None:
    await ss.put(
        "/__sandbox/knobs",
        json={"carrier_latency": {"fedex": {"base_ms": 150}}, "error_rate": {"ups": 1.0},
              "timeout_rate": {"dhl_express_worldwide": 1.0}, "hang_s": 0.1,
              "rate_limit": 100, "window_s": 30},
    )  # fmt: skip

    started = time.perf_counter()
    fedex = await ss.post(RATES, json=BASE_RATE, headers=AUTH)
    fedex_s = time.perf_counter() - started
    ups = await ss.post(RATES, json={**BASE_RATE, "carrierCode": "ups"}, headers=AUTH)
    dhl = await ss.post(
        RATES, json={**BASE_RATE, "carrierCode": "dhl_express_worldwide"}, headers=AUTH
    )
    calls = await (await ss.get("/__sandbox/calls")).json()

    assert fedex.status == 200 and fedex_s >= 0.15
    assert fedex.headers["X-Rate-Limit-Limit"] == "100"
    assert ups.status == 500 and "unavailable" in (await ups.json())["ExceptionMessage"]
    assert dhl.status == 504
    assert calls["carrier_calls"] == {
        "getrates:fedex": 1, "getrates:ups": 1, "getrates:dhl_express_worldwide": 1,
    }  # fmt: skip
    assert calls["calls"]["/shipments/getrates"] == 3


async def test_a_storm_knob_answers_429_until_it_ends(
    ss: TestClient, sandbox: ShipStationSandbox
) -> None:
    await ss.put("/__sandbox/knobs", json={"storm_s": 30})

    response = await ss.get("/carriers", headers=AUTH)

    assert response.status == 429
    assert response.headers["X-Rate-Limit-Remaining"] == "0"
    sandbox.storm(0)
    assert (await ss.get("/carriers", headers=AUTH)).status == 200


async def test_scripted_createlabel_faults_are_consumed_one_per_call(
    ss: TestClient, sandbox: ShipStationSandbox
) -> None:
    script = ["error_before_buy", "lost_after_buy", "hang_after_buy", "drop_after_buy", "ok"]
    knobs = await (
        await ss.put("/__sandbox/knobs", json={"createlabel_faults": script, "hang_s": 0.05})
    ).json()
    assert knobs["createlabel_faults"] == script

    before = await ss.post("/shipments/createlabel", json=label_body("fedex"), headers=AUTH)
    assert before.status == 500 and "ExceptionMessage" in await before.json()
    assert not sandbox.shipments  # nothing bought

    lost = await ss.post("/shipments/createlabel", json=label_body("fedex"), headers=AUTH)
    assert lost.status == 500 and "ExceptionMessage" in await lost.json()
    assert len(sandbox.shipments) == 1  # bought, the answer says otherwise

    started = time.perf_counter()
    late = await ss.post("/shipments/createlabel", json=label_body("fedex"), headers=AUTH)
    assert late.status == 200 and time.perf_counter() - started >= 0.05
    assert len(sandbox.shipments) == 2

    with pytest.raises(aiohttp.ClientConnectionError):  # bought, no answer at all
        await ss.post("/shipments/createlabel", json=label_body("fedex"), headers=AUTH)
    assert len(sandbox.shipments) == 3

    sandbox.knobs.createlabel_faults.append("lost_after_buy")  # the Python side of the knob
    assert (
        await ss.post("/shipments/createlabel", json=label_body("ups"), headers=AUTH)
    ).status == 200
    assert (
        await ss.post("/shipments/createlabel", json=label_body("ups"), headers=AUTH)
    ).status == 500
    ok = await ss.post("/shipments/createlabel", json=label_body("ups"), headers=AUTH)
    assert ok.status == 200  # the script is used up: normal again
    assert len(sandbox.shipments) == 6
    assert sandbox.knobs.createlabel_faults == []


async def test_bad_knobs_are_refused(ss: TestClient) -> None:
    response = await ss.put("/__sandbox/knobs", json={"latency_ms": 5})

    assert response.status == 400


def label_body(carrier: str, service: str | None = None) -> dict[str, Any]:
    default_service = {"fedex": "fedex_ground", "ups": "ups_ground"}
    return {
        "carrierCode": carrier, "serviceCode": service or default_service[carrier],
        "packageCode": "package", "confirmation": "none", "shipDate": "2026-11-30",
        "weight": {"value": 3, "units": "ounces"},
        "dimensions": {"units": "inches", "length": 7, "width": 5, "height": 6},
        "shipFrom": {"name": "Warehouse", "street1": "2815 Exposition Blvd", "city": "Austin",
                     "state": "TX", "postalCode": "78703", "country": "US"},
        "shipTo": {"name": "The President", "street1": "1600 Pennsylvania Ave",
                   "city": "Washington", "state": "DC", "postalCode": "20500", "country": "US",
                   "residential": False},
        "advancedOptions": {"customField1": "purchase-key-1"},
        "testLabel": False,
    }  # fmt: skip


TO_CANADA = {"name": "A. Client", "street1": "1 Yonge St", "city": "Toronto", "state": "ON",
             "postalCode": "M5E 1W7", "country": "CA"}  # fmt: skip
ITEMS = [{"description": "Oolong tea, 100 g tin", "quantity": 4, "value": 50.0,
          "harmonizedTariffCode": "0902.10", "countryOfOrigin": "CN"}]  # fmt: skip


@pytest.mark.parametrize(
    ("ship_to", "options"),
    [
        (TO_CANADA, None),
        (TO_CANADA, {"contents": "merchandise", "nonDelivery": "return_to_sender",
                     "customsItems": []}),
        ({**TO_CANADA, "state": "AE", "country": "US", "postalCode": "09021"}, None),
    ],
)  # fmt: skip
async def test_an_international_label_without_customs_items_is_refused_before_buying(
    ss: TestClient, sandbox: ShipStationSandbox, ship_to: dict[str, Any], options: Any
) -> None:
    body = {**label_body("ups", "ups_standard_international"), "shipTo": ship_to,
            "internationalOptions": options}  # fmt: skip
    response = await ss.post("/shipments/createlabel", json=body, headers=AUTH)

    assert response.status == 500
    assert (await response.json())["ExceptionMessage"] == (
        "Customs information is required for international shipments."
    )
    assert sandbox.shipments == {}  # nothing bought


async def test_an_international_label_with_customs_items_comes_with_a_customs_form(
    ss: TestClient,
) -> None:
    options = {"contents": "gift", "nonDelivery": "return_to_sender", "customsItems": ITEMS}
    body = {**label_body("ups", "ups_standard_international"), "shipTo": TO_CANADA,
            "internationalOptions": options}  # fmt: skip
    response = await ss.post("/shipments/createlabel", json=body, headers=AUTH)
    created = await response.json()

    assert response.status == 200, created
    form = pypdf.PdfReader(io.BytesIO(base64.b64decode(created["formData"])), strict=True)
    assert len(form.pages) == 1
    text = form.pages[0].extract_text()
    assert created["trackingNumber"] in text
    assert "4 x Oolong tea, 100 g tin - USD 50.0 - HS 0902.10 - CN" in text


async def test_a_domestic_label_has_no_customs_form(ss: TestClient) -> None:
    response = await ss.post("/shipments/createlabel", json=label_body("ups"), headers=AUTH)

    assert (await response.json())["formData"] is None
