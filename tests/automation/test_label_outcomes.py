"""An event is processed only when its label is bought.

A label still ``purchasing`` (ShipStation slow, an outcome being reconciled) keeps the event open:
it is checked again later by label id, without buying again. A label that ends ``failed`` (nothing
bought) makes the event retry, counted against its attempts; a label in ``attention`` puts the
event in ``attention`` with the label's detail.

The label being bought here is a person's (``POST /v1/labels``) that the webhook's event finds in
the ledger; the worker treats the label its own purchase answers with (``Labels.buy`` waits at
most ``wait_s`` and then answers with the label as it is) the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.automation.support import (
    URL,
    createlabel_calls,
    events,
    label_of,
    pack_payload,
    shipped,
    until,
)
from tests.conftest import AUTH, HOOK, MakeService

BY_HAND = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
BOUGHT = ("purchased", "completed", "write_back_failed")


async def person_buying(
    client: TestClient, sandbox: ShipStationSandbox
) -> tuple[asyncio.Task[Any], str]:
    """A person's ``POST /v1/labels`` for sale-simple, in flight: ShipStation has the
    ``createlabel`` call and has not answered yet. (the request's task, the label id)"""
    request = asyncio.create_task(client.post("/v1/labels", json=BY_HAND, headers=AUTH))
    await until(lambda: createlabel_calls(sandbox) == 1)
    listed = await (await client.get("/v1/labels?sale_id=sale-simple", headers=AUTH)).json()
    (label,) = listed["labels"]
    assert label["status"] == "purchasing"
    return request, str(label["label_id"])


async def event_waiting_on(client: TestClient, label_id: str) -> dict[str, Any]:
    """The webhook's event once the worker has looked at the sale and found the label."""
    await until(lambda: _names(client, label_id))
    (event,) = await events(client)
    return event


async def _names(client: TestClient, label_id: str) -> bool:
    return [e["label_id"] for e in await events(client)] == [label_id]


async def test_an_event_is_processed_only_once_the_label_it_waits_for_is_bought(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    sandbox.knobs.carrier_latency = {"ups": Latency(base_ms=1500)}  # ShipStation takes its time
    request, label_id = await person_buying(client, sandbox)

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)

    waiting = await event_waiting_on(client, label_id)
    assert (await label_of(client, label_id))["status"] == "purchasing"
    assert waiting["status"] == "received"  # still open: nothing is bought yet
    assert waiting["reason"] == (
        f"label {label_id} is still being bought; it is checked again without buying"
    )
    assert waiting["next_attempt_at"] is not None
    assert (await request).status == 201
    await until(lambda: shipped(cin7_sandbox, "sale-simple"))
    await until(lambda: _status_is(client, "processed"))
    (event,) = await events(client)
    label = await label_of(client, label_id)
    assert label["status"] in BOUGHT
    assert (event["label_id"], event["reason"]) == (
        label_id, f"bought ups/ups_ground for {label['total_cost']} USD, 1 package(s)",
    )  # fmt: skip
    assert event["attempts"] == 1  # the re-checks read the label; they are not attempts
    assert createlabel_calls(sandbox) == 1  # nothing bought again
    assert sandbox.calls["/shipments/getrates"] == 0


async def test_a_purchase_that_fails_makes_the_event_retry_until_it_needs_attention(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    sandbox.knobs.carrier_latency = {"ups": Latency(base_ms=1500)}
    sandbox.label_fault = "refuse"  # ...and then refuses the label: nothing is bought
    request, label_id = await person_buying(client, sandbox)

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)

    waiting = await event_waiting_on(client, label_id)
    assert waiting["status"] == "received"
    refused = await (await request).json()
    assert (refused["label_id"], refused["status"]) == (label_id, "failed")
    sandbox.knobs.carrier_latency = {}
    # five more purchases, each recorded, refused and settled (on PostgreSQL, on a busy machine)
    await until(lambda: _status_is(client, "attention"), seconds=30)
    (event,) = await events(client)
    assert event["attempts"] == 6  # the one that waited, then five that bought and failed
    assert event["label_id"] is None  # nothing was bought
    assert event["reason"].startswith("gave up after 6 attempts: label lb_")
    assert "purchase failed: " in event["reason"]
    assert "The address could not be validated." in event["reason"]
    assert createlabel_calls(sandbox) == 6  # the person's label, then one per retry
    listed = await (await client.get("/v1/labels?sale_id=sale-simple", headers=AUTH)).json()
    assert [label["status"] for label in listed["labels"]] == ["failed"] * 6
    assert not sandbox.shipments
    assert cin7_sandbox.fulfilment("sale-simple")["Ship"]["Status"] == "NOT AVAILABLE"


async def test_a_label_that_needs_attention_puts_its_event_in_attention_with_the_reason(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    """A person's two-box label: box 1 is bought, ShipStation refuses box 2 for good, so the
    label needs a person (box 1 must be voided or box 2 bought by hand)."""
    client = await make_automated()
    sandbox.knobs.carrier_latency = {"fedex": Latency(base_ms=600)}
    body = {"sale_id": "sale-multibox", "carrier_code": "fedex", "service_code": "fedex_ground"}
    request = asyncio.create_task(client.post("/v1/labels", json=body, headers=AUTH))
    await until(lambda: createlabel_calls(sandbox) == 2)  # box 1 bought, box 2 asked for
    sandbox.label_fault = "refuse"
    (listed,) = (await (await client.get("/v1/labels", headers=AUTH)).json())["labels"]
    label_id = listed["label_id"]

    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-multibox"), headers=HOOK)

    label = await (await request).json()
    assert label["status"] == "attention"
    await until(lambda: _status_is(client, "attention"))
    (event,) = await events(client)
    assert event["label_id"] == label_id
    assert event["reason"] == f"label {label_id}: {label['detail']}"
    assert createlabel_calls(sandbox) == 2  # the label's own calls; the event bought nothing


async def _status_is(client: TestClient, status: str) -> bool:
    return [e["status"] for e in await events(client)] == [status]
