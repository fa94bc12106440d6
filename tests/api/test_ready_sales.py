"""``GET /v1/sales?ready=true``: the packed, unshipped sales of the account, read from Cin7 Core at
background priority and cached, with their boxes, their newest live label and automation event."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.sandbox.cin7 import Cin7Sandbox
from tests.automation.support import needs_attention, pack_payload, until
from tests.conftest import AUTH, HOOK, WEBHOOK_URL, MakeService

READY = {"sale-simple", "sale-multibox", "sale-international", "sale-advanced",
         "sale-international-nohs", "sale-eur"}  # fmt: skip


@pytest.fixture
async def bench(make_labelling: MakeService) -> TestClient:
    return await make_labelling(RATESVC_LABEL_SETTLE_S="0", RATESVC_CIN7_THROTTLE_PAUSE_S="0.1",
                                RATESVC_REQUEST_DEADLINE_S="1")  # fmt: skip


async def ready(client: TestClient, query: str = "", status: int = 200) -> dict[str, Any]:
    response = await client.get(f"/v1/sales?ready=true{query}", headers=AUTH)
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    return body


def by_id(page: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {sale["sale_id"]: sale for sale in page["sales"]}


async def test_the_packed_unshipped_sales_are_listed_with_their_boxes_and_ship_to(
    bench: TestClient,
) -> None:
    page = await ready(bench)

    sales = by_id(page)
    assert set(sales) == READY  # shipped and unpacked sales are not ready
    assert page["next_cursor"] is None
    multibox = sales["sale-multibox"]
    assert {k: multibox[k] for k in ("task_id", "order_number", "customer", "details",
                                     "international", "label_id", "label_status", "automation",
                                     "problem")} == {
        "task_id": "task-sale-multibox", "order_number": "SO-1002", "customer": "Lone Star Bakers",
        "details": "ready", "international": False, "label_id": None, "label_status": None,
        "automation": None, "problem": None,
    }  # fmt: skip
    assert multibox["ship_to"]["city"] == "Austin"
    assert multibox["ship_to"]["postal_code"] == "78701-3248"
    assert [b["box"] for b in multibox["boxes"]] == ["Box 1", "Box 2"]
    assert all(b["weight"]["unit"] == "g" and b["weight"]["value"] > 0 for b in multibox["boxes"])
    assert "Box 2: no weight for GiftCard; assumed 1 lb each" in multibox["defaults"]
    assert multibox["updated"].endswith("Z")
    assert sales["sale-international"]["international"] is True
    # the advanced sale shows its packed second fulfilment, not the shipped first one
    assert sales["sale-advanced"]["task_id"] == "task-sale-advanced-2"
    assert [b["box"] for b in sales["sale-advanced"]["boxes"]] == ["Carton A", "Carton B"]


async def test_the_list_and_the_sales_are_read_once_while_cached(
    bench: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    await ready(bench)
    await ready(bench)
    await ready(bench, "&search=so-100")

    assert cin7_sandbox.calls["GET /salelist"] == 1
    assert cin7_sandbox.calls["GET /sale"] == len(READY)


async def test_search_matches_order_numbers_and_customers_whatever_the_case(
    bench: TestClient,
) -> None:
    assert set(by_id(await ready(bench, "&search=so-1002"))) == {"sale-multibox"}
    assert set(by_id(await ready(bench, "&search=THAMES"))) == {"sale-international-nohs"}
    assert set(by_id(await ready(bench, "&search=%20"))) == READY  # blank: no filter
    assert (await ready(bench, "&search=nothing-like-it"))["sales"] == []


async def test_pages_follow_the_cursor_to_the_end_each_sale_once(bench: TestClient) -> None:
    seen: list[str] = []
    query = "&limit=4"
    while True:
        page = await ready(bench, query)
        assert len(page["sales"]) <= 4
        seen += [s["sale_id"] for s in page["sales"]]
        if page["next_cursor"] is None:
            break
        query = f"&limit=4&cursor={page['next_cursor']}"

    assert sorted(seen) == sorted(READY)


async def test_a_sale_not_read_yet_is_pending_then_ready(
    bench: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    cin7_sandbox.sale_reads.clear()  # Cin7 Core is slow to answer sale reads

    held = by_id(await ready(bench, "&search=SO-1001"))["sale-simple"]

    assert (held["details"], held["ship_to"], held["boxes"]) == ("pending", None, None)
    cin7_sandbox.sale_reads.set()

    async def read() -> bool:
        return by_id(await ready(bench, "&search=SO-1001"))["sale-simple"]["details"] == "ready"

    await until(read)
    assert cin7_sandbox.calls["GET /sale"] == 1  # the read went on; it was not made again


async def test_a_sale_shows_its_live_label(bench: TestClient) -> None:
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground",
            "write_back": False}  # fmt: skip
    response = await bench.post("/v1/labels", json=body, headers=AUTH)
    label = await response.json()
    assert response.status == 201, label

    simple = by_id(await ready(bench))["sale-simple"]

    assert (simple["label_id"], simple["label_status"]) == (label["label_id"], "completed")
    await bench.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    voided = by_id(await ready(bench))["sale-simple"]
    assert (voided["label_id"], voided["label_status"]) == (None, None)


async def test_a_sale_shows_its_automation_event_in_attention(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_automated()
    await client.post(WEBHOOK_URL, json=pack_payload(cin7_sandbox, "sale-multibox"), headers=HOOK)
    event = await needs_attention(client)

    multibox = by_id(await ready(client))["sale-multibox"]

    assert multibox["automation"] == {
        "event_id": event["event_id"],
        "status": "attention",
        "reason": event["reason"],
    }


async def test_cin7_core_down_is_a_503_with_a_retry_time(
    bench: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    cin7_sandbox.knobs.down = True

    problem = await ready(bench, status=503)

    assert problem["code"] == "upstream_unavailable"
    assert problem["retry_after_s"] >= 1
    assert "cin7" in problem["detail"].lower()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "ready"),
        ("?ready=false", "ready"),
        ("?ready=TRUE", "ready"),
        ("?ready=true&limit=0", "limit"),
        ("?ready=true&limit=101", "limit"),
        ("?ready=true&limit=２", "limit"),
        ("?ready=true&search=" + "x" * 101, "search"),
        ("?ready=true&cursor=lb_abc", "cursor"),
        ("?ready=true&cursor=sl_%21%21", "cursor"),
        ("?ready=true&cursor=sl_bm90LWEtY3Vyc29y", "cursor"),  # "not-a-cursor"
        ("?ready=true&status=attention", "status"),
    ],
)
async def test_a_bad_query_is_422_naming_the_parameter_before_any_upstream_call(
    bench: TestClient, cin7_sandbox: Cin7Sandbox, query: str, field: str
) -> None:
    response = await bench.get(f"/v1/sales{query}", headers=AUTH)
    problem = await response.json()

    assert response.status == 422, problem
    assert response.content_type == "application/problem+json"
    assert problem["code"] == "invalid_request"
    assert [e["field"] for e in problem["errors"]] == [field]
    assert not cin7_sandbox.calls


async def test_the_list_needs_the_api_token(bench: TestClient) -> None:
    response = await bench.get("/v1/sales?ready=true")

    assert response.status == 401
    assert (await response.json())["code"] == "unauthorized"
