"""Automation end to end, against both sandboxes: a packed sale in Cin7 Core gets its label.

Cin7 Core's webhook (delivered by the Cin7 sandbox to the service's real port) and the
ReadyForShipping poller feed one durable event log; the worker buys through the exactly-once
label path and the outbox writes the tracking back to the sale.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.sandbox import cin7_data
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.automation.support import (
    URL,
    createlabel_calls,
    events,
    has_status,
    label_of,
    label_status,
    pack_payload,
    purchases_of,
    shipped,
    subscribe,
    until,
)
from tests.conftest import AUTH, HOOK, HOOK_TOKEN, MakeService, automation_env

FOREIGN = tuple(sale[0] for sale in cin7_data.FOREIGN_SALES)  # ready international sales

# --- acceptance ----------------------------------------------------------------------------------


async def test_a_pack_authorised_in_cin7_core_ships_the_sale_with_no_other_call(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    subscribe(cin7_sandbox, client)

    cin7_sandbox.authorise_pack("sale-unpacked")  # the only thing the test does

    await until(lambda: shipped(cin7_sandbox, "sale-unpacked"))
    assert cin7_sandbox.deliveries[0][1:] == ("Sale/PackAuthorised", 202)
    ship = cin7_sandbox.fulfilment("sale-unpacked")["Ship"]
    (line,) = ship["Lines"]
    (bought,) = sandbox.shipments.values()
    assert line["TrackingNumber"] == bought["trackingNumber"]
    assert createlabel_calls(sandbox) == 1
    (event,) = await events(client)
    assert event["status"] == "processed"
    assert event["source"] == "webhook"
    assert (event["sale_id"], event["order_number"]) == ("sale-unpacked", "SO-1005")
    label = await label_of(client, event["label_id"])
    await until(lambda: label_status(client, event["label_id"], "completed"))
    assert label["task_id"] == "task-sale-unpacked"
    assert label["packages"][0]["tracking_number"] == line["TrackingNumber"]


async def test_the_cheapest_service_is_bought_as_the_rates_api_shows_it(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    rates = await (
        await client.post("/v1/rates", json={"sale_id": "sale-simple"}, headers=AUTH)
    ).json()
    cheapest = min(
        rates["quotes"], key=lambda q: Decimal(q["shipment_cost"]) + Decimal(q["other_cost"])
    )

    response = await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)
    assert response.status == 202

    await until(lambda: shipped(cin7_sandbox, "sale-simple"))
    (event,) = await events(client)
    label = await label_of(client, event["label_id"])
    assert (label["carrier_code"], label["service_code"]) == (
        cheapest["carrier_code"], cheapest["service_code"],
    )  # fmt: skip
    assert event["reason"] == (
        f"bought {cheapest['carrier_code']}/{cheapest['service_code']} for "
        f"{cheapest['shipment_cost']} USD, 1 package(s)"
    )


async def test_three_deliveries_and_the_poller_buy_the_label_once(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    payload = pack_payload(cin7_sandbox, "sale-simple")

    answers = [await client.post(URL, json=payload, headers=HOOK) for _ in range(3)]
    receipts = [await a.json() for a in answers]
    poll = await client.app[keys.POLLER].poll(client.app[keys.ACCOUNTS]["default"])

    assert [a.status for a in answers] == [202, 200, 200]
    assert [r["duplicate"] for r in receipts] == [False, True, True]
    assert len({r["event_id"] for r in receipts}) == 1
    await until(lambda: shipped(cin7_sandbox, "sale-simple"))
    await client.app[keys.AUTOMATION].idle()
    labels = await (await client.get("/v1/labels?sale_id=sale-simple", headers=AUTH)).json()
    (label,) = labels["labels"]
    assert purchases_of(sandbox, label["label_id"]) == 1
    simple = [e for e in await events(client) if e["sale_id"] == "sale-simple"]
    assert [e["source"] for e in simple] == ["webhook"]  # the poller skipped it: being handled
    assert poll.listed == 4 + len(FOREIGN)  # the other packed sales were recorded and shipped too
    metrics = (await (await client.get("/metrics")).read()).decode()
    assert 'ratesvc_automation_events_deduplicated_total{source="webhook"} 2.0' in metrics
    assert (
        'ratesvc_automation_events_received_total{event_type="Sale/PackAuthorised",'
        'source="webhook"} 1.0' in metrics
    )


async def test_without_webhooks_the_poller_ships_a_packed_sale_within_one_interval(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    for sale_id in ("sale-simple", "sale-multibox", "sale-international", "sale-advanced"):
        cin7_sandbox.sales.pop(sale_id)  # only the sale the test packs is ready for shipping
    for sale_id in FOREIGN:
        cin7_sandbox.sales.pop(sale_id)
    client = await make_automated(RATESVC_POLL_INTERVAL_S="0.5")
    await until(lambda: cin7_sandbox.calls["GET /salelist"] >= 1)  # the first poll: nothing
    loop = asyncio.get_running_loop()

    cin7_sandbox.authorise_pack("sale-unpacked")  # no webhook is subscribed
    packed_at = loop.time()

    await until(lambda: cin7_sandbox.calls["GET /sale"] >= 1)  # the worker re-reads the sale
    assert loop.time() - packed_at <= 0.5 + 0.3  # one interval, and a little for the machine
    await until(lambda: shipped(cin7_sandbox, "sale-unpacked"))
    (event,) = await events(client)
    assert (event["source"], event["status"]) == ("poller", "processed")
    assert createlabel_calls(sandbox) == 1
    calls_now = cin7_sandbox.calls["GET /salelist"]
    await until(lambda: cin7_sandbox.calls["GET /salelist"] >= calls_now + 2)
    assert len(await events(client)) == 1  # nothing changed: later polls record nothing


async def test_a_wrong_credential_is_refused_and_nothing_is_recorded(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_automated()
    payload = pack_payload(cin7_sandbox, "sale-simple")

    for headers in ({"Authorization": "Bearer not-the-hook-token"}, {}, AUTH):
        response = await client.post(URL, json=payload, headers=headers)
        problem = await response.json()
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        assert problem["code"] == "unauthorized"

    assert await events(client) == []
    assert cin7_sandbox.calls["GET /sale"] == 0


async def test_a_cost_cap_exceeded_needs_attention_and_buys_nothing(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated(RATESVC_AUTOSHIP_MAX_COST="1.00")

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)

    await until(lambda: has_status(client, "attention"))
    (event,) = await events(client, "?status=attention")
    assert event["reason"].startswith("no service under the 1.00 USD cap (cheapest: ")
    assert event["label_id"] is None
    assert createlabel_calls(sandbox) == 0
    assert cin7_sandbox.fulfilment("sale-simple")["Ship"]["Status"] == "NOT AVAILABLE"


async def test_events_recorded_but_not_processed_are_processed_after_a_restart(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path,
    cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox,
) -> None:  # fmt: skip
    env = automation_env(sandbox_url, cin7_url, tmp_path / "data")
    first: TestClient = await aiohttp_client(create_app(load_settings(env)))
    cin7_sandbox.knobs.latency = Latency(base_ms=60_000)  # Cin7 Core hangs: nothing progresses
    response = await first.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)
    assert response.status == 202
    await until(lambda: cin7_sandbox.calls["GET /sale"] >= 1)  # the worker is stuck on the sale
    await first.close()  # the process stops with the event recorded, unprocessed

    cin7_sandbox.knobs.latency = Latency()
    second: TestClient = await aiohttp_client(create_app(load_settings(env)))

    await until(lambda: shipped(cin7_sandbox, "sale-simple"))
    (event,) = await events(second)
    assert event["status"] == "processed"
    assert createlabel_calls(sandbox) == 1


async def test_product_weights_missing_needs_attention_before_anything_is_bought(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-multibox"), headers=HOOK)

    await until(lambda: has_status(client, "attention"))
    (event,) = await events(client)
    assert event["reason"] == (
        "product weights missing: Box 2: no weight for GiftCard; assumed 1 lb each"
    )
    assert createlabel_calls(sandbox) == 0


async def test_the_sale_carrier_rule_buys_what_the_sale_asks_for(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated(
        RATESVC_AUTOSHIP="sale_carrier",
        RATESVC_AUTOSHIP_CARRIER_MAP='{"UPS Ground": "ups/ups_ground"}',
    )

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)

    await until(lambda: shipped(cin7_sandbox, "sale-simple"))
    (event,) = await events(client)
    label = await label_of(client, event["label_id"])
    assert (label["carrier_code"], label["service_code"]) == ("ups", "ups_ground")
    rated = [body["carrierCode"] for path, body in sandbox.received if path.endswith("getrates")]
    assert set(rated) == {"ups"}  # only what the rule could buy was rated


async def test_a_carrier_text_not_in_the_map_can_require_a_person(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    cin7_sandbox.sales["sale-simple"]["Carrier"] = "Pigeon Post"
    client = await make_automated(
        RATESVC_AUTOSHIP="sale_carrier", RATESVC_AUTOSHIP_FALLBACK="attention",
        RATESVC_AUTOSHIP_CARRIER_MAP='{"UPS Ground": "ups/ups_ground"}',
    )  # fmt: skip

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)

    await until(lambda: has_status(client, "attention"))
    (event,) = await events(client)
    assert event["reason"] == "the sale's carrier 'Pigeon Post' is not in the account's carrier map"
    assert createlabel_calls(sandbox) == 0


async def test_test_labels_are_bought_when_the_rule_says_so(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated(RATESVC_AUTOSHIP_TEST_LABELS="true")

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)

    await until(lambda: shipped(cin7_sandbox, "sale-simple"))
    (event,) = await events(client)
    label = await label_of(client, event["label_id"])
    assert label["test_label"] is True
    (body,) = [body for path, body in sandbox.received if path == "/shipments/createlabel"]
    assert body["testLabel"] is True


async def test_an_upstream_outage_is_retried_with_back_off_then_succeeds(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    cin7_sandbox.knobs.down = True

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)

    await until(lambda: has_status(client, "failed"))
    (failed,) = await events(client, "?status=failed")
    assert failed["attempts"] >= 1
    assert failed["next_attempt_at"] is not None
    assert "Cin7 Core" in failed["reason"]
    cin7_sandbox.knobs.down = False
    await until(lambda: shipped(cin7_sandbox, "sale-simple"))
    (event,) = await events(client)
    assert event["status"] == "processed"
    assert createlabel_calls(sandbox) == 1


async def test_a_person_and_the_automation_never_buy_the_same_sale_twice(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    cin7_sandbox.knobs.writes_down = True  # the sale stays packed: only the ledger knows
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    by_hand = await client.post("/v1/labels", json=body, headers=AUTH)
    assert by_hand.status == 201

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)

    await until(lambda: has_status(client, "processed"))
    (event,) = await events(client)
    label = await by_hand.json()
    assert (event["label_id"], event["reason"]) == (
        label["label_id"], f"already labelled by {label['label_id']}",
    )  # fmt: skip
    assert createlabel_calls(sandbox) == 1
    assert sandbox.calls["/shipments/getrates"] == 0  # known before rating: nothing spent


async def test_a_voided_sale_with_labels_not_written_back_needs_attention(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    cin7_sandbox.webhooks.append({
        "Type": "Sale/Voided", "IsActive": True, "ExternalURL": str(client.make_url(URL)),
        "ExternalAuthorizationType": "bearerauth", "ExternalBearerToken": HOOK_TOKEN,
    })  # fmt: skip
    cin7_sandbox.knobs.writes_down = True  # the label is bought; the write-back keeps failing
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    label = await (await client.post("/v1/labels", json=body, headers=AUTH)).json()
    await until(lambda: label_status(client, label["label_id"], "write_back_failed"))

    cin7_sandbox.void_sale("sale-simple")

    await until(lambda: label_status(client, label["label_id"], "attention"))
    voided = await label_of(client, label["label_id"])
    assert voided["detail"].startswith("the sale was voided in Cin7 Core")
    assert voided["write_back"]["state"] == "cancelled"
    await until(lambda: has_status(client, "processed"))
    (event,) = await events(client)
    assert event["event_type"] == "Sale/Voided"
    assert event["reason"] == f"labels not yet written back set to attention: {label['label_id']}"
    cin7_sandbox.knobs.writes_down = False
    await asyncio.sleep(0.3)  # the outbox's next attempts find the write-back cancelled
    assert cin7_sandbox.fulfilment("sale-simple")["Ship"]["Status"] == "NOT AVAILABLE"
    assert (await label_of(client, label["label_id"]))["status"] == "attention"


async def test_other_events_are_acknowledged_and_recorded_as_ignored(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_automated()
    payload = {"SaleTaskID": "task-sale-simple", "OrderNumber": "SO-1001",
               "EventType": "Sale/ShipmentAuthorised"}  # fmt: skip

    response = await client.post(URL, json=payload, headers=HOOK)

    assert response.status == 202
    (event,) = await events(client, "?status=ignored")
    assert event["reason"].startswith("acknowledged; ratesvc acts on Sale/PackAuthorised")
    assert (event["sale_id"], event["task_id"]) == (None, "task-sale-simple")
    assert cin7_sandbox.calls["GET /sale"] == 0


async def test_with_automation_off_a_pack_is_recorded_but_nothing_is_bought(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated(RATESVC_AUTOSHIP="off")

    response = await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)

    assert response.status == 202
    (event,) = await events(client)
    assert (event["status"], event["reason"]) == (
        "ignored", "automation is off for this account (autoship = off)",
    )  # fmt: skip
    assert createlabel_calls(sandbox) == 0


async def test_polls_skip_sales_already_handled_without_reading_them_again(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    for sale_id in ("sale-simple", "sale-international", "sale-advanced", *FOREIGN):
        cin7_sandbox.sales.pop(sale_id)  # left ready for shipping: sale-multibox alone
    client = await make_automated()
    poller, services = client.app[keys.POLLER], client.app[keys.ACCOUNTS]["default"]
    automation = client.app[keys.AUTOMATION]

    first = await poller.poll(services)
    await until(lambda: has_status(client, "attention"))  # its weights are missing
    await automation.idle()
    reads = cin7_sandbox.calls["GET /sale"]
    later = [await poller.poll(services) for _ in range(3)]

    assert (first.listed, first.recorded, first.calls) == (1, 1, 1)
    assert [(p.listed, p.recorded, p.skipped, p.calls) for p in later] == [(1, 0, 1, 1)] * 3
    assert cin7_sandbox.calls["GET /sale"] == reads  # decided from the ledger alone
    assert len(await events(client)) == 1
    cin7_sandbox.touch(cin7_sandbox.sales["sale-multibox"])  # a person edits the sale
    changed = await poller.poll(services)
    assert changed.recorded == 1  # looked at again
    assert createlabel_calls(sandbox) == 0


async def test_the_poller_ships_the_next_fulfilment_of_an_advanced_sale(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    for sale_id in ("sale-simple", "sale-multibox", "sale-international", *FOREIGN):
        cin7_sandbox.sales.pop(sale_id)
    client = await make_automated()
    poller, services = client.app[keys.POLLER], client.app[keys.ACCOUNTS]["default"]

    await poller.poll(services)

    second = cin7_sandbox.sales["sale-advanced"]["Fulfilments"][1]
    await until(lambda: bool(second["Ship"]["Lines"]) and second["Ship"]["Status"] == "AUTHORISED")
    (event,) = await events(client)
    assert (event["task_id"], event["status"]) == (None, "processed")  # the list names no task
    label = await label_of(client, event["label_id"])
    assert label["task_id"] == "task-sale-advanced-2"
    assert [p["box"] for p in label["packages"]] == ["Carton A", "Carton B"]
