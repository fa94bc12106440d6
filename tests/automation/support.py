"""What the automation tests share: polling with a bound, reading events and labels through the
API, and what the sandboxes saw."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.conftest import AUTH, HOOK_TOKEN, WEBHOOK_URL

URL = WEBHOOK_URL


def subscribe(cin7: Cin7Sandbox, client: TestClient) -> None:
    """What ``ratesvc cin7 subscribe`` leaves in Cin7 Core (tested with the command itself)."""
    cin7.webhooks.append({
        "ID": "hook-1", "Type": "Sale/PackAuthorised", "IsActive": True,
        "ExternalURL": str(client.make_url(URL)), "ExternalAuthorizationType": "bearerauth",
        "ExternalBearerToken": HOOK_TOKEN,
    })  # fmt: skip


async def until(check: Callable[[], Awaitable[bool] | bool], seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        outcome = check()
        if await outcome if isinstance(outcome, Awaitable) else outcome:
            return
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


async def events(client: TestClient, query: str = "") -> list[dict[str, Any]]:
    response = await client.get(f"/v1/automation/events{query}", headers=AUTH)
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    listed: list[dict[str, Any]] = body["events"]
    return listed


async def label_of(client: TestClient, label_id: str) -> dict[str, Any]:
    label: dict[str, Any] = await (await client.get(f"/v1/labels/{label_id}", headers=AUTH)).json()
    return label


async def label_status(client: TestClient, label_id: str, status: str) -> bool:
    return bool((await label_of(client, label_id))["status"] == status)


async def has_status(client: TestClient, status: str) -> bool:
    return bool(await events(client, f"?status={status}"))


def shipped(cin7: Cin7Sandbox, sale_id: str) -> bool:
    ship = cin7.fulfilment(sale_id)["Ship"]
    tracked = all(line["TrackingNumber"] for line in ship["Lines"])
    return ship["Status"] == "AUTHORISED" and tracked and bool(cin7.attachments.get(sale_id))


def createlabel_calls(sandbox: ShipStationSandbox) -> int:
    return sandbox.calls["/shipments/createlabel"]


def purchases_of(sandbox: ShipStationSandbox, label_id: str) -> int:
    """createlabel calls made for one label (its purchase keys are ``<label id>:<n>``)."""
    return sum(
        1 for path, body in sandbox.received
        if path == "/shipments/createlabel"
        and body["advancedOptions"]["customField1"].startswith(label_id + ":")
    )  # fmt: skip


def pack_payload(cin7: Cin7Sandbox, sale_id: str) -> dict[str, str]:
    sale = cin7.sales[sale_id]
    return {"SaleID": sale_id, "TaskID": cin7.fulfilment(sale_id)["TaskID"],
            "SaleOrderNumber": sale["Order"]["SaleOrderNumber"],
            "EventType": "Sale/PackAuthorised"}  # fmt: skip


MISSING = "product weights missing: Box 2: no weight for GiftCard; assumed 1 lb each"


def fix_gift_card_weight(cin7: Cin7Sandbox) -> None:
    """What a person does in Cin7 Core: give the product a weight (the sale's lines carry it)."""
    cin7.products["p-card"]["Weight"] = 25
    for sale in cin7.sales.values():
        for line in sale["Order"]["Lines"]:
            if line["ProductID"] == "p-card":
                line["ProductWeight"] = 25


async def needs_attention(client: TestClient) -> dict[str, Any]:
    """The one event, once it needs attention for the gift card's missing weight."""
    await until(lambda: has_status(client, "attention"))
    await client.app[keys.AUTOMATION].idle()
    (event,) = await events(client)
    assert (event["status"], event["reason"]) == ("attention", MISSING)
    return event
