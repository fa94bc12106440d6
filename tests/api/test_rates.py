"""``POST /v1/rates`` through HTTP against the ShipStation sandbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import Settings, load_settings
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.conftest import ACME_AUTH, AUTH, DATA, acme_settings, service_env

TO = {"name": "A. Customer", "street1": "350 5th Ave", "city": "New York", "state": "NY",
      "postal_code": "10118", "country": "US", "residential": False}  # fmt: skip
PARCEL = {"weight": {"value": 3, "unit": "lb"},
          "dimensions": {"length": 10, "width": 8, "height": 4, "unit": "in"}}  # fmt: skip


def shipment(**changes: Any) -> dict[str, Any]:
    return {"shipment": {"ship_to": TO, "packages": [PARCEL], **changes}}


async def rate(client: TestClient, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = await client.post("/v1/rates", json=body, headers=AUTH)
    payload: dict[str, Any] = await response.json()
    assert response.status == status, payload
    return payload


def getrates_calls(sandbox: ShipStationSandbox) -> dict[str, int]:
    return {
        k.split(":")[1]: v for k, v in sandbox.carrier_calls.items() if k.startswith("getrates")
    }


# --- money, sorting and markup on the sample prices -----------------------------------------------


@pytest.fixture
async def marked_up(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> TestClient:
    sandbox.fixed_rates["fedex"] = (
        DATA / "shipstation" / "getrates_fedex_response.json"
    ).read_bytes()
    client: TestClient = await aiohttp_client(
        create_app(make_settings(RATESVC_MARKUP_PERCENT="5", RATESVC_MARKUP_FLAT="0.50"))
    )
    return client


async def test_sample_prices_become_quotes_exact_to_the_cent_with_markup(
    marked_up: TestClient,
) -> None:
    body = await rate(marked_up, {**shipment(), "carriers": ["fedex"]})

    by_service = {q["service_code"]: q for q in body["quotes"]}
    ground = by_service["fedex_ground"]  # 8.25 + 0.33 = 8.58; 5 % = 0.429, + 0.50 = 0.929
    assert (ground["shipment_cost"], ground["other_cost"]) == ("8.25", "0.33")
    assert (ground["markup"], ground["total"]) == ("0.93", "9.51")
    first = by_service["fedex_first_overnight"]  # 87.8 + 2.63 = 90.43; 4.5215 + 0.50 = 5.0215
    assert (first["shipment_cost"], first["other_cost"], first["markup"], first["total"]) == (
        "87.80", "2.63", "5.02", "95.45",
    )  # fmt: skip
    for quote in body["quotes"]:
        parts = Decimal(quote["shipment_cost"]) + Decimal(quote["other_cost"])
        assert Decimal(quote["total"]) == parts + Decimal(quote["markup"])
        assert quote["currency"] == "USD" and quote["packages"] == 1
    totals = [Decimal(q["total"]) for q in body["quotes"]]
    assert totals == sorted(totals)
    assert [q["service_code"] for q in body["quotes"]][:2] == [
        "fedex_ground",
        "fedex_express_saver",
    ]
    assert body["complete"] is True and body["errors"] == []


async def test_four_decimal_prices_round_half_up_once(
    marked_up: TestClient, sandbox: ShipStationSandbox
) -> None:
    sandbox.fixed_rates["fedex"] = (
        b'[{"serviceName":"A","serviceCode":"a","shipmentCost":4.0150,"otherCost":0.0049},'
        b'{"serviceName":"B","serviceCode":"b","shipmentCost":4,"otherCost":0}]'
    )

    body = await rate(marked_up, {**shipment(), "carriers": ["fedex"]})

    quotes = {q["service_code"]: q for q in body["quotes"]}
    # A: 4.015 -> 4.02, 0.0049 -> 0.00, markup 0.05 * 4.0199 + 0.5 = 0.700995 -> 0.70
    assert [quotes["a"][k] for k in ("shipment_cost", "other_cost", "markup", "total")] == [
        "4.02", "0.00", "0.70", "4.72",
    ]  # fmt: skip
    assert [quotes["b"][k] for k in ("shipment_cost", "other_cost", "markup", "total")] == [
        "4.00", "0.00", "0.70", "4.70",
    ]  # fmt: skip


async def test_equal_totals_are_ordered_by_carrier_then_service(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    same = b'[{"serviceName":"Z","serviceCode":"z_svc","shipmentCost":5,"otherCost":0},' \
           b'{"serviceName":"Y","serviceCode":"y_svc","shipmentCost":5,"otherCost":0}]'  # fmt: skip
    sandbox.fixed_rates["ups"] = same
    sandbox.fixed_rates["fedex"] = same

    body = await rate(service, {**shipment(), "carriers": ["ups", "fedex"]})

    assert [(q["carrier_code"], q["service_code"]) for q in body["quotes"]] == [
        ("fedex", "y_svc"), ("fedex", "z_svc"), ("ups", "y_svc"), ("ups", "z_svc"),
    ]  # fmt: skip


async def test_package_variants_stay_distinct_quotes(service: TestClient) -> None:
    body = await rate(
        service,
        {"shipment": {"ship_to": TO, "packages": [{**PARCEL, "package_code": None}]},
         "carriers": ["stamps_com"]},
    )  # fmt: skip

    priority = [q for q in body["quotes"] if q["service_code"] == "usps_priority_mail"]
    assert len(priority) >= 5
    assert len({q["quote_id"] for q in priority}) == len(priority)
    codes = {q["package_code"] for q in priority}
    assert {"package", "medium_flat_rate_box", "flat_rate_envelope"} <= codes
    medium = next(q for q in priority if q["package_code"] == "medium_flat_rate_box")
    assert medium["service_name"] == "USPS Priority Mail - Medium Flat Rate Box"
    assert medium["shipment_cost"] == "17.10"


# --- fan-out, partial results and failures --------------------------------------------------------


async def test_every_connected_carrier_is_rated_once(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    body = await rate(service, shipment())

    assert {q["carrier_code"] for q in body["quotes"]} == {
        "stamps_com", "ups", "fedex", "dhl_express_worldwide",
    }  # fmt: skip
    assert getrates_calls(sandbox) == {
        "stamps_com": 1, "ups": 1, "fedex": 1, "dhl_express_worldwide": 1,
    }  # fmt: skip
    assert all(q["cached"] is False for q in body["quotes"])
    assert body["sale_id"] is None and body["task_id"] is None


async def test_a_failing_carrier_is_an_error_entry_not_a_failure(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    await service.get("/v1/carriers", headers=AUTH)
    sandbox.knobs.error_rate = {"ups": 1.0}

    body = await rate(service, shipment())

    assert body["complete"] is False
    assert body["errors"] == [
        {"carrier_code": "ups", "code": "upstream_error",
         "message": "ShipStation: ups service is temporarily unavailable."}
    ]  # fmt: skip
    assert "ups" not in {q["carrier_code"] for q in body["quotes"]}
    assert {"fedex", "stamps_com"} <= {q["carrier_code"] for q in body["quotes"]}


async def test_a_hanging_carrier_times_out_alone_and_is_not_waited_for(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> None:
    sandbox.knobs.timeout_rate = {"dhl_express_worldwide": 1.0}
    sandbox.knobs.hang_s = 30
    client = await aiohttp_client(create_app(make_settings(RATESVC_REQUEST_DEADLINE_S="1")))
    await client.get("/v1/carriers", headers=AUTH)  # the catalogue, outside the timed request
    loop = asyncio.get_running_loop()
    started = loop.time()

    body = await rate(client, shipment())

    assert loop.time() - started < 5  # the deadline, not the 30 s hang
    assert body["errors"] == [{"carrier_code": "dhl_express_worldwide", "code": "upstream_timeout",
                               "message": "no answer within 1 s"}]  # fmt: skip
    assert body["complete"] is False


async def test_every_carrier_failing_is_503(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    await service.get("/v1/carriers", headers=AUTH)
    sandbox.knobs.error_rate = {"*": 1.0}

    body = await rate(service, shipment(), status=503)

    assert body["code"] == "upstream_unavailable"
    assert "fedex" in body["detail"] and "ups" in body["detail"]


async def test_no_carrier_answering_in_time_is_504(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> None:
    client = await aiohttp_client(create_app(make_settings(RATESVC_REQUEST_DEADLINE_S="0.5")))
    await client.get("/v1/carriers", headers=AUTH)
    sandbox.set_latency(3000)

    body = await rate(client, shipment(), status=504)

    assert body["code"] == "deadline_exceeded"


# --- filters --------------------------------------------------------------------------------------


async def test_excluded_carriers_are_not_called(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    body = await rate(service, {**shipment(), "carriers": ["fedex", "ups"]})

    assert getrates_calls(sandbox) == {"fedex": 1, "ups": 1}
    assert {q["carrier_code"] for q in body["quotes"]} == {"fedex", "ups"}


async def test_a_services_filter_narrows_the_upstream_call(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    body = await rate(
        service, {**shipment(), "services": ["ups_ground", "fedex_2day", "fedex_ground"]}
    )

    assert getrates_calls(sandbox) == {"ups": 1, "fedex": 1}  # no USPS or DHL call at all
    ups_call = next(b for p, b in sandbox.received if b["carrierCode"] == "ups")
    fedex_call = next(b for p, b in sandbox.received if b["carrierCode"] == "fedex")
    assert ups_call["serviceCode"] == "ups_ground"  # one service: asked for by name
    assert fedex_call["serviceCode"] is None  # two services: asked for all, then filtered
    assert sorted(q["service_code"] for q in body["quotes"]) == [
        "fedex_2day", "fedex_ground", "ups_ground",
    ]  # fmt: skip


# --- several packages -----------------------------------------------------------------------------


async def test_a_multi_package_quote_sums_the_boxes_and_drops_services_one_box_lacks(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    small = {"weight": {"value": 8, "unit": "oz"}, "box": "Box 1"}
    large = {"weight": {"value": 4, "unit": "kg"}, "box": "Box 2",
             "dimensions": {"length": 40, "width": 30, "height": 20, "unit": "cm"}}  # fmt: skip
    single = [
        await rate(
            service, {"shipment": {"ship_to": TO, "packages": [p]}, "carriers": ["stamps_com"]}
        )
        for p in (small, large)
    ]

    both = await rate(
        service,
        {"shipment": {"ship_to": TO, "packages": [small, large]}, "carriers": ["stamps_com"]},
    )

    per_box = [{q["service_code"]: q for q in s["quotes"]} for s in single]
    assert "usps_first_class_mail" in per_box[0] and "usps_first_class_mail" not in per_box[1]
    quotes = {q["service_code"]: q for q in both["quotes"]}
    assert "usps_first_class_mail" not in quotes
    priority = quotes["usps_priority_mail"]
    assert priority["packages"] == 2
    expected = sum(Decimal(box["usps_priority_mail"]["total"]) for box in per_box)
    assert Decimal(priority["total"]) == expected
    assert [b["box"] for b in priority["breakdown"]] == ["Box 1", "Box 2"]
    assert getrates_calls(sandbox) == {"stamps_com": 2}  # both boxes' legs were cached


async def test_identical_boxes_share_one_leg(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    body = await rate(
        service,
        {"shipment": {"ship_to": TO, "packages": [PARCEL, PARCEL, PARCEL]}, "carriers": ["ups"]},
    )

    assert getrates_calls(sandbox) == {"ups": 1}
    assert all(q["packages"] == 3 for q in body["quotes"])


# --- units and canonical legs ---------------------------------------------------------------------


async def test_units_are_converted_for_shipstation(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    parcel = {"weight": {"value": 1.5, "unit": "kg"},
              "dimensions": {"length": 305, "width": 203, "height": 101, "unit": "mm"}}  # fmt: skip

    await rate(service, {"shipment": {"ship_to": TO, "packages": [parcel]}, "carriers": ["fedex"]})

    ((_, sent),) = [(p, b) for p, b in sandbox.received if p == "/shipments/getrates"]
    assert sent["weight"] == {"value": 53, "units": "ounces"}  # 52.91 oz, rounded up to 0.1 oz
    assert sent["dimensions"] == {"units": "inches", "length": 12.1, "width": 8, "height": 4}
    assert sent["toPostalCode"] == "10118"
    assert sent["fromPostalCode"] == "78703"


async def test_zip_plus_4_and_case_differences_hit_the_same_cache_entry(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    await rate(service, {**shipment(), "carriers": ["ups"]})
    again = await rate(
        service,
        {"shipment": {"ship_to": {**TO, "postal_code": "10118-0110", "state": "ny", "city": "NYC"},
                      "packages": [{"weight": {"value": 48, "unit": "oz"},
                                    "dimensions": {"length": 4, "width": 10, "height": 8,
                                                   "unit": "in"}}]},
         "carriers": ["ups"]},
    )  # fmt: skip

    assert getrates_calls(sandbox) == {"ups": 1}
    assert all(q["cached"] for q in again["quotes"])


# --- the cache ------------------------------------------------------------------------------------


async def test_a_repeat_is_served_from_the_cache_and_max_age_zero_goes_upstream(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    first = await rate(service, shipment())
    second = await rate(service, shipment())
    fresh = await rate(service, {**shipment(), "max_age_s": 0})

    assert sum(getrates_calls(sandbox).values()) == 8
    assert all(q["cached"] for q in second["quotes"])
    assert [q["quoted_at"] for q in second["quotes"]] == [q["quoted_at"] for q in first["quotes"]]
    assert not any(q["cached"] for q in fresh["quotes"])
    assert {q["quote_id"] for q in first["quotes"]}.isdisjoint(
        q["quote_id"] for q in second["quotes"]
    )


async def test_only_the_carrier_that_failed_is_asked_again(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    await service.get("/v1/carriers", headers=AUTH)
    sandbox.knobs.error_rate = {"fedex": 1.0}
    first = await rate(service, shipment())
    sandbox.knobs.error_rate = {}

    second = await rate(service, shipment())

    assert [e["carrier_code"] for e in first["errors"]] == ["fedex"]
    assert second["complete"] is True
    assert getrates_calls(sandbox) == {
        "stamps_com": 1, "ups": 1, "fedex": 2, "dhl_express_worldwide": 1,
    }  # fmt: skip
    cached = {q["carrier_code"]: q["cached"] for q in second["quotes"]}
    assert cached == {
        "stamps_com": True,
        "ups": True,
        "fedex": False,
        "dhl_express_worldwide": True,
    }


async def test_identical_concurrent_requests_make_one_call_per_leg(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    await service.get("/v1/carriers", headers=AUTH)
    sandbox.set_latency(100)

    bodies = await asyncio.gather(*(rate(service, shipment()) for _ in range(20)))

    assert getrates_calls(sandbox) == {
        "stamps_com": 1, "ups": 1, "fedex": 1, "dhl_express_worldwide": 1,
    }  # fmt: skip
    assert all(len(b["quotes"]) == len(bodies[0]["quotes"]) for b in bodies)


async def test_a_throttled_key_answers_from_a_stale_cache_and_says_so(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> None:
    client = await aiohttp_client(create_app(make_settings(RATESVC_REQUEST_DEADLINE_S="2")))
    await rate(client, {**shipment(), "carriers": ["ups"]})
    sandbox.apply_window(limit=40, window_s=60)
    sandbox.storm(60)

    body = await rate(client, {**shipment(), "carriers": ["ups"], "max_age_s": 0})

    assert body["complete"] is True
    assert body["quotes"] and all(q["stale"] and q["cached"] for q in body["quotes"])
    assert all(q["age_s"] >= 0 for q in body["quotes"])
    assert sandbox.throttled == 1


async def test_a_throttled_key_without_a_cached_answer_is_an_error_entry(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> None:
    client = await aiohttp_client(create_app(make_settings(RATESVC_REQUEST_DEADLINE_S="2")))
    await client.get("/v1/carriers", headers=AUTH)
    sandbox.apply_window(limit=40, window_s=60)
    sandbox.storm(60)

    response = await client.post(
        "/v1/rates", json={**shipment(), "carriers": ["ups"]}, headers=AUTH
    )
    body = await response.json()

    assert response.status == 503
    assert body["code"] == "upstream_unavailable"
    assert "rate limit" in body["detail"]
    assert "rate-limited" in body["detail"]  # every carrier was: a throttled 503
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 62  # the window, plus the limiter's safety margin
    assert body["retry_after_s"] == retry_after


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"shipment": {"ship_to": TO, "packages": [{"weight": {"value": 0, "unit": "oz"}}]}},
         "shipment.packages[0].weight.value"),
        ({"shipment": {"ship_to": TO, "packages": [{"weight": {"value": -2, "unit": "lb"}}]}},
         "shipment.packages[0].weight.value"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL] * 51}}, "shipment.packages"),
        ({"shipment": {"ship_to": TO, "packages": []}}, "shipment.packages"),
        ({"shipment": {"ship_to": TO, "packages": [{"weight": {"value": 1, "unit": "st"}}]}},
         "shipment.packages[0].weight.unit"),
        ({"shipment": {"ship_to": TO, "packages": [{**PARCEL, "dimensions": {
            "length": 1, "width": 1, "height": 1, "unit": "ft"}}]}},
         "shipment.packages[0].dimensions.unit"),
        ({"shipment": {"ship_to": {**TO, "country": "USA"}, "packages": [PARCEL]}},
         "shipment.ship_to.country"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL], "insurance": True}},
         "shipment.insurance"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL]}, "carrier": ["ups"]}, "carrier"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL], "confirmation": "maybe"}},
         "shipment.confirmation"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL]}, "max_age_s": -1}, "max_age_s"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL]}, "sale_id": "abc"}, "shipment"),
        ({"carriers": ["ups"]}, "shipment"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL]}, "task_id": "t"}, "task_id"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL]}, "carriers": ["usps"]}, "carriers[0]"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL]}, "services": ["teleport"]}, "services"),
        ({"shipment": {"ship_to": TO, "packages": [PARCEL]}, "carriers": []}, "carriers"),
    ],
)  # fmt: skip
async def test_bad_bodies_are_422_with_the_field_path(
    service: TestClient, sandbox: ShipStationSandbox, body: dict[str, Any], field: str
) -> None:
    problem = await rate(service, body, status=422)

    assert problem["code"] == "invalid_request"
    assert [e["field"] for e in problem["errors"]] == [field]
    assert getrates_calls(sandbox) == {}


async def test_a_missing_ship_from_without_an_account_default_is_422(
    aiohttp_client: Any, sandbox_url: str, tmp_path: Path
) -> None:
    env = service_env(sandbox_url, tmp_path)
    del env["RATESVC_SHIP_FROM"]
    client = await aiohttp_client(create_app(load_settings(env)))

    problem = await rate(client, shipment(), status=422)
    ok = await rate(client, shipment(ship_from={"postal_code": "78703", "country": "US"}))

    assert problem["errors"][0]["field"] == "shipment.ship_from"
    assert ok["quotes"]


async def test_malformed_json_is_400(service: TestClient) -> None:
    response = await service.post(
        "/v1/rates", data=b'{"shipment": ', headers={**AUTH, "Content-Type": "application/json"}
    )

    assert response.status == 400
    assert (await response.json())["code"] == "malformed_json"


# --- quotes can be looked up until they expire ----------------------------------------------------


async def test_a_quote_can_be_read_back_with_its_shipment(service: TestClient) -> None:
    body = await rate(service, {**shipment(), "carriers": ["fedex"]})
    quote = body["quotes"][0]

    response = await service.get(f"/v1/quotes/{quote['quote_id']}", headers=AUTH)
    stored = await response.json()

    assert response.status == 200
    assert stored["carrier_code"] == "fedex"
    assert stored["service_code"] == quote["service_code"]
    assert stored["total"] == quote["total"]
    assert stored["package_codes"] == ["package"]
    assert stored["shipment"]["ship_to"]["postal_code"] == "10118"
    assert stored["ship_from"]["postal_code"] == "78703"
    assert (await service.get("/v1/quotes/qt_nope", headers=AUTH)).status == 404


async def test_an_expired_quote_is_410(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(RATESVC_QUOTE_TTL_S="1")))
    quote_id = (await rate(client, {**shipment(), "carriers": ["ups"]}))["quotes"][0]["quote_id"]
    await asyncio.sleep(1.1)

    response = await client.get(f"/v1/quotes/{quote_id}", headers=AUTH)

    assert response.status == 410
    assert (await response.json())["code"] == "quote_expired"


async def test_another_accounts_quote_is_not_found(
    aiohttp_client: Any, sandbox_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "ratesvc.toml"
    config.write_text(
        "".join(
            f"""
[accounts.{name}]
api_tokens = ["{name}-token-0123456789"]
ship_from = {{ postal_code = "78703", country = "US" }}
shipstation = {{ url = "{sandbox_url}", api_key = "sandbox-key", api_secret = "sandbox-secret" }}
"""
            for name in ("acme", "globex")
        )
    )
    client = await aiohttp_client(create_app(load_settings({"RATESVC_CONFIG": str(config)})))
    acme = {"Authorization": "Bearer acme-token-0123456789"}
    globex = {"Authorization": "Bearer globex-token-0123456789"}
    response = await client.post(
        "/v1/rates", json={**shipment(), "carriers": ["ups"]}, headers=acme
    )
    quote_id = (await response.json())["quotes"][0]["quote_id"]

    assert (await client.get(f"/v1/quotes/{quote_id}", headers=acme)).status == 200
    assert (await client.get(f"/v1/quotes/{quote_id}", headers=globex)).status == 404


def test_the_sample_payload_used_above_is_the_shared_fixture() -> None:
    rows = json.loads((DATA / "shipstation" / "getrates_fedex_response.json").read_text())
    assert {r["serviceCode"] for r in rows} >= {"fedex_ground", "fedex_first_overnight"}


# --- replaying an identical request -------------------------------------------------------------


async def test_an_identical_request_is_replayed_with_new_buyable_quote_ids(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    await rate(service, shipment())  # computed from upstream
    second = await rate(service, shipment())  # computed from the cache, kept for replay
    third = await rate(service, shipment())  # replayed

    assert sum(getrates_calls(sandbox).values()) == 4
    strip = [{k: v for k, v in q.items() if k != "quote_id"} for q in second["quotes"]]
    assert [{k: v for k, v in q.items() if k != "quote_id"} for q in third["quotes"]] == strip
    ids = [q["quote_id"] for q in third["quotes"]]
    assert len(set(ids)) == len(ids)
    assert set(ids).isdisjoint(q["quote_id"] for q in second["quotes"])
    for quote in third["quotes"][:3]:
        stored = await (await service.get(f"/v1/quotes/{quote['quote_id']}", headers=AUTH)).json()
        assert (stored["service_code"], stored["total"]) == (quote["service_code"], quote["total"])


async def test_a_replay_never_serves_prices_older_than_max_age(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    body = {**shipment(), "carriers": ["ups"], "max_age_s": 1}
    await rate(service, body)
    await rate(service, body)  # kept for replay, fresh for one second
    await asyncio.sleep(1.2)

    again = await rate(service, body)

    assert getrates_calls(sandbox) == {"ups": 2}
    assert not any(q["cached"] for q in again["quotes"])


# Both carriers cost 10.00 + 0.50 = 10.50; 10 % of it is 1.05.
@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        pytest.param(
            '{ flat = "1" }',
            {"ups": ("1.00", "11.50"), "fedex": ("1.00", "11.50")},
            id="account-flat-only",
        ),
        pytest.param(
            '{ flat = "1", per_carrier = { ups = { percent = "10" } } }',
            {"ups": ("2.05", "12.55"), "fedex": ("1.00", "11.50")},  # ups: 1.05 + inherited 1
            id="carrier-percent-plus-account-flat",
        ),
        pytest.param(
            '{ percent = "10", flat = "1", per_carrier = { ups = { flat = "-0.25" } } }',
            {"ups": ("0.80", "11.30"), "fedex": ("2.05", "12.55")},  # ups: inherited 1.05 - 0.25
            id="carrier-flat-overrides-account-flat",
        ),
        pytest.param(
            '{ percent = "10", flat = "1", per_carrier = { ups = { flat = "0" }, '
            'fedex = { percent = "0" } } }',
            {"ups": ("1.05", "11.55"), "fedex": ("1.00", "11.50")},
            id="carrier-zero-overrides",
        ),
    ],
)
async def test_a_carrier_markup_overrides_only_what_it_sets(
    aiohttp_client: Any, sandbox: ShipStationSandbox, sandbox_url: str, tmp_path: Path,
    markup: str, expected: dict[str, tuple[str, str]],
) -> None:  # fmt: skip
    rows = b'[{"serviceName":"G","serviceCode":"g","shipmentCost":10.00,"otherCost":0.50}]'
    sandbox.fixed_rates["ups"] = rows
    sandbox.fixed_rates["fedex"] = rows
    settings = acme_settings(tmp_path, sandbox_url, f"markup = {markup}")
    client = await aiohttp_client(create_app(settings))

    response = await client.post(
        "/v1/rates", json={**shipment(), "carriers": ["ups", "fedex"]},
        headers=ACME_AUTH,
    )  # fmt: skip
    quotes = (await response.json())["quotes"]

    assert response.status == 200
    assert {q["carrier_code"]: (q["markup"], q["total"]) for q in quotes} == expected
    assert all((q["shipment_cost"], q["other_cost"]) == ("10.00", "0.50") for q in quotes)
    assert getrates_calls(sandbox) == {"ups": 1, "fedex": 1}
