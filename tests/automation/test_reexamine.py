"""Attention is not forever: a sale that needed a person is automated again once it changed.

A person fixes the product weights and re-authorises the pack: Cin7 Core announces the pack again
(the same event type, sale and task as the first delivery) and the sale's ``Updated`` stamp
changes. Either is enough for the sale to be examined again and its label bought.
"""

from __future__ import annotations

from ratesvc import keys
from ratesvc.sandbox import cin7_data
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.automation.support import (
    URL,
    createlabel_calls,
    events,
    fix_gift_card_weight,
    has_status,
    label_of,
    needs_attention,
    pack_payload,
    shipped,
    subscribe,
    until,
)
from tests.conftest import HOOK, MakeService

FOREIGN = tuple(sale[0] for sale in cin7_data.FOREIGN_SALES)  # ready international sales


def only_multibox_ready(cin7: Cin7Sandbox) -> None:
    for sale_id in ("sale-simple", "sale-international", "sale-advanced", *FOREIGN):
        cin7.sales.pop(sale_id)


async def test_the_poller_automates_a_sale_in_attention_once_it_changed(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    only_multibox_ready(cin7_sandbox)
    client = await make_automated()
    poller, services = client.app[keys.POLLER], client.app[keys.ACCOUNTS]["default"]
    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-multibox"), headers=HOOK)
    first = await needs_attention(client)
    unchanged = [await poller.poll(services) for _ in range(2)]  # nobody touched the sale yet

    fix_gift_card_weight(cin7_sandbox)
    cin7_sandbox.authorise_pack("sale-multibox")  # re-authorised: its Updated stamp changes
    changed = await poller.poll(services)

    assert [(p.recorded, p.skipped) for p in unchanged] == [(0, 1), (0, 1)]
    assert (changed.recorded, changed.skipped) == (1, 0)
    await until(lambda: shipped(cin7_sandbox, "sale-multibox"))
    await until(lambda: has_status(client, "processed"))
    polled, webhook = await events(client)  # newest first
    assert (polled["source"], polled["status"]) == ("poller", "processed")
    assert polled["reason"].startswith("bought ")
    label = await label_of(client, polled["label_id"])
    assert [p["box"] for p in label["packages"]] == ["Box 1", "Box 2"]
    assert createlabel_calls(sandbox) == 2  # one label per box, once
    # the event that needed a person is resolved by the one that bought the label
    assert webhook["event_id"] == first["event_id"]
    assert (webhook["status"], webhook["label_id"]) == ("processed", polled["label_id"])
    assert webhook["reason"] == f"resolved by {polled['event_id']}: {polled['reason']}"
    assert await events(client, "?status=attention") == []


async def test_a_new_delivery_of_the_pack_re_examines_an_event_in_attention(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    subscribe(cin7_sandbox, client)
    cin7_sandbox.authorise_pack("sale-multibox")
    first = await needs_attention(client)

    fix_gift_card_weight(cin7_sandbox)
    cin7_sandbox.authorise_pack("sale-multibox")  # Cin7 Core announces the same pack again

    await until(lambda: shipped(cin7_sandbox, "sale-multibox"))
    await until(lambda: has_status(client, "processed"))
    (event,) = await events(client)  # the same event, examined again
    assert event["event_id"] == first["event_id"]
    assert event["attempts"] == 1  # a fresh start: the earlier attempt does not count
    assert event["reason"].startswith("bought ")
    assert [status for _, _, status in cin7_sandbox.deliveries] == [202, 202]
    assert createlabel_calls(sandbox) == 2


async def test_a_repeated_delivery_of_an_unchanged_sale_needs_attention_again(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    payload = pack_payload(cin7_sandbox, "sale-multibox")
    await client.post(URL, json=payload, headers=HOOK)
    first = await needs_attention(client)

    again = await client.post(URL, json=payload, headers=HOOK)  # nothing was fixed

    receipt = await again.json()
    assert again.status == 202
    assert receipt == {"event_id": first["event_id"], "status": "received", "duplicate": False}
    await needs_attention(client)
    assert createlabel_calls(sandbox) == 0
    processed = await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)
    assert processed.status == 202
    await until(lambda: shipped(cin7_sandbox, "sale-simple"))
    await client.app[keys.AUTOMATION].idle()
    repeat = await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)
    assert repeat.status == 200  # a processed event is never examined again
    assert (await repeat.json())["duplicate"] is True
    assert createlabel_calls(sandbox) == 1
