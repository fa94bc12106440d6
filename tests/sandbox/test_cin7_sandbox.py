"""The Cin7 Core sandbox behaves like Cin7 Core v2 as UPSTREAMS.md describes it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from ratesvc.sandbox.cin7 import Cin7Knobs, Cin7Sandbox

AUTH = {"api-auth-accountid": "sandbox-account", "api-auth-applicationkey": "sandbox-key"}
LINE = {"ShipmentDate": "2026-11-30T00:00:00", "Carrier": "UPS", "TrackingURL": "",
        "IsShipped": True}  # fmt: skip


@pytest.fixture
async def c7(aiohttp_client: Any, cin7_sandbox: Cin7Sandbox) -> TestClient:
    client: TestClient = await aiohttp_client(cin7_sandbox.app)
    return client


async def ship(
    c7: TestClient, task: str, boxes: list[str], method: str = "POST", **extra: Any
) -> Any:
    lines = [{**LINE, "Box": b, "TrackingNumber": f"T-{b}"} for b in boxes]
    body = {"TaskID": task, "Status": "AUTHORISED", "Lines": lines, **extra}
    return await c7.request(method, "/sale/fulfilment/ship", json=body, headers=AUTH)


async def test_wrong_credentials_are_403(c7: TestClient, cin7_sandbox: Cin7Sandbox) -> None:
    response = await c7.get("/sale", params={"ID": "sale-simple"})

    assert response.status == 403
    assert cin7_sandbox.forbidden == 1


async def test_paths_are_case_insensitive_and_countries_follow_country_format(
    c7: TestClient,
) -> None:
    code2 = {"ID": "SALE-INTERNATIONAL", "CountryFormat": "Code2"}
    named = await (
        await c7.get("/ExternalApi/v2/Sale", params={"ID": "sale-international"}, headers=AUTH)
    ).json()
    coded = await (await c7.get("/sale", params=code2, headers=AUTH)).json()

    assert named["ShippingAddress"]["Country"] == "Canada"
    assert coded["ShippingAddress"]["Country"] == "CA"


async def test_an_unknown_sale_is_an_error_array(c7: TestClient) -> None:
    response = await c7.get("/sale", params={"ID": "nope"}, headers=AUTH)

    assert response.status == 400
    assert (await response.json())[0]["Exception"] == "Sale with ID nope not found"


async def test_ready_for_shipping_lists_packed_unshipped_sales(c7: TestClient) -> None:
    body = await (
        await c7.get("/saleList", params={"ReadyForShipping": "true"}, headers=AUTH)
    ).json()

    assert sorted(s["SaleID"] for s in body["SaleList"]) == [
        "sale-advanced", "sale-eur", "sale-international", "sale-international-nohs",
        "sale-multibox", "sale-simple",
    ]  # fmt: skip


async def test_ship_follows_the_pack_and_ship_rules(
    c7: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    unpacked = await ship(c7, "task-sale-unpacked", ["Box 1"])
    twice = await ship(c7, "task-sale-multibox", ["Box 1", "Box 1"])
    unknown_box = await ship(c7, "task-sale-multibox", ["Box 9"])
    ok = await ship(c7, "task-sale-multibox", ["Box 1", "Box 2"])
    again = await ship(c7, "task-sale-multibox", ["Box 1", "Box 2"])

    assert (
        unpacked.status == 400
        and "Pack is not authorised" in (await unpacked.json())[0]["Exception"]
    )
    assert "Box 1 is already added to another shipment line" in (await twice.json())[0]["Exception"]
    assert unknown_box.status == 400
    assert ok.status == 200
    assert [line["Boxes"] for line in (await ok.json())["Lines"]] == ["Box 1", "Box 2"]
    assert again.status == 400 and "already authorised" in (await again.json())[0]["Exception"]
    ship_step = cin7_sandbox.fulfilment("sale-multibox")["Ship"]
    assert ship_step["Status"] == "AUTHORISED"
    assert [line["TrackingNumber"] for line in ship_step["Lines"]] == ["T-Box 1", "T-Box 2"]


async def test_tracking_is_changed_only_by_put_with_add_tracking_numbers(
    c7: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    await ship(c7, "task-sale-simple", ["Box 1"])
    plain = await ship(c7, "task-sale-simple", ["Box 1"], method="PUT")
    added = await ship(c7, "task-sale-simple", ["Box 1"], method="PUT", AddTrackingNumbers=True)

    assert plain.status == 400
    assert added.status == 200
    assert cin7_sandbox.fulfilment("sale-simple")["Ship"]["Lines"][0]["TrackingNumber"] == "T-Box 1"


async def test_attachments_are_kept_per_sale(c7: TestClient, cin7_sandbox: Cin7Sandbox) -> None:
    body = {"SaleID": "sale-simple", "FileName": "label-1.pdf", "Content": "JVBERi0xLjQK"}
    bad = {**body, "Content": "not base64!"}

    first = await c7.post("/sale/attachment", json=body, headers=AUTH)
    refused = await c7.post("/sale/attachment", json=bad, headers=AUTH)
    listed = await (
        await c7.get("/sale/attachment", params={"SaleID": "sale-simple"}, headers=AUTH)
    ).json()

    assert first.status == 200 and refused.status == 400
    assert [a["FileName"] for a in listed["Lines"]] == ["label-1.pdf"]
    assert cin7_sandbox.attachments["sale-simple"][0]["Content"] == "JVBERi0xLjQK"


@pytest.mark.parametrize(
    ("style", "status", "words"),
    [
        ("503", 503, "60 calls per minute"),
        ("429", 429, "Too many"),
        ("400", 400, "60 calls per 60 seconds"),
    ],
)
async def test_over_the_limit_answers_in_the_chosen_throttling_style(
    aiohttp_client: Any, style: str, status: int, words: str
) -> None:
    sandbox = Cin7Sandbox(knobs=Cin7Knobs(rate_limit=2, throttle_style=style))  # type: ignore[arg-type]
    c7 = await aiohttp_client(sandbox.app)

    statuses = [(await c7.get("/ref/location", headers=AUTH)).status for _ in range(2)]
    over = await c7.get("/ref/location", headers=AUTH)

    assert statuses == [200, 200]
    assert over.status == status
    assert words in await over.text()
    assert sandbox.throttled == 1


async def test_knobs_take_it_down_and_pack_a_sale(
    c7: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    await c7.put("/__sandbox/knobs", json={"down": True})
    down = await c7.get("/sale", params={"ID": "sale-simple"}, headers=AUTH)
    await c7.put("/__sandbox/knobs", json={"down": False})
    packed = await c7.post("/__sandbox/sales/sale-unpacked/pack")

    assert down.status == 503
    assert packed.status == 200
    assert cin7_sandbox.fulfilment("sale-unpacked")["Pack"]["Status"] == "AUTHORISED"
    assert (await c7.put("/__sandbox/knobs", json={"latency_ms": 1})).status == 400


async def test_a_user_in_several_organisations_gets_300_multiple_choices(
    c7: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    await c7.put("/__sandbox/knobs", json={"multiple_organisations": True})
    several = await c7.get("/sale", params={"ID": "sale-simple"}, headers=AUTH)
    wrong_key = await c7.get("/sale", params={"ID": "sale-simple"})
    await c7.put("/__sandbox/knobs", json={"multiple_organisations": False})
    one = await c7.get("/sale", params={"ID": "sale-simple"}, headers=AUTH)

    assert several.status == 300
    assert await several.json() == [{"ErrorCode": 300, "Exception": "Multiple Choices"}]
    assert wrong_key.status == 403  # credentials are checked first
    assert one.status == 200


async def test_authorising_a_pack_posts_the_event_to_subscribed_webhooks(
    aiohttp_server: Any, c7: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []
    arrived = asyncio.Event()

    async def receiver(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization"), await request.json()))
        arrived.set()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/hook", receiver)
    server = await aiohttp_server(app)
    hook = {"Type": "Sale/PackAuthorised", "IsActive": True,
            "ExternalURL": str(server.make_url("/hook")), "ExternalAuthorizationType": "bearerauth",
            "ExternalBearerToken": "hook-secret"}  # fmt: skip
    await c7.post("/webhooks", json=hook, headers=AUTH)

    await c7.post("/__sandbox/sales/sale-unpacked/pack")
    await asyncio.wait_for(arrived.wait(), 5)

    ((authorization, payload),) = received
    assert authorization == "Bearer hook-secret"
    assert payload == {"SaleID": "sale-unpacked", "SaleOrderNumber": "SO-1005",
                       "TaskID": "task-sale-unpacked", "CustomerName": "Lone Star Bakers",
                       "EventType": "Sale/PackAuthorised"}  # fmt: skip


async def test_a_webhook_failing_six_retries_is_switched_off(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    sandbox = Cin7Sandbox(knobs=Cin7Knobs(webhook_retry_delays_s=(0.01,) * 6))
    c7 = await aiohttp_client(sandbox.app)
    calls = 0

    async def broken(_request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", broken)
    server = await aiohttp_server(app)
    hook = {"Type": "Sale/PackAuthorised", "ExternalURL": str(server.make_url("/hook")),
            "ExternalAuthorizationType": "noauth"}  # fmt: skip
    await c7.post("/webhooks", json=hook, headers=AUTH)

    sandbox.authorise_pack("sale-unpacked")
    for _ in range(200):
        if not sandbox.webhooks[0]["IsActive"]:
            break
        await asyncio.sleep(0.01)

    assert calls == 7  # the delivery and six retries
    assert sandbox.webhooks[0]["IsActive"] is False
