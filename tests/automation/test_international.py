"""Automation and international sales: a sale whose products Cin7 Core describes fully is labelled
with its customs declaration, like any other; one that cannot be declared goes to ``attention``
naming each product and field to fix, and nothing is bought."""

from __future__ import annotations

from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.automation.support import (
    URL,
    createlabel_calls,
    events,
    has_status,
    pack_payload,
    shipped,
    until,
)
from tests.conftest import AUTH, HOOK, MakeService


async def test_an_international_sale_with_complete_products_is_labelled_with_its_declaration(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()

    response = await client.post(
        URL, json=pack_payload(cin7_sandbox, "sale-international"), headers=HOOK
    )
    await until(lambda: has_status(client, "processed"))
    await until(lambda: len(_customs_forms(cin7_sandbox, "sale-international")) == 2)
    (event,) = await events(client)
    declared = [
        body["internationalOptions"]
        for path, body in sandbox.received
        if path == "/shipments/createlabel"
    ]

    assert response.status == 202
    assert event["label_id"] is not None
    assert [[i["harmonizedTariffCode"] for i in d["customsItems"]] for d in declared] == [
        ["8423.10"],
        ["6912.00"],
    ]
    assert shipped(cin7_sandbox, "sale-international")


async def test_an_international_sale_missing_an_hs_code_goes_to_attention_naming_it(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()

    response = await client.post(
        URL, json=pack_payload(cin7_sandbox, "sale-international-nohs"), headers=HOOK
    )
    await until(lambda: has_status(client, "attention"))
    (event,) = await events(client)

    assert response.status == 202
    assert event["sale_id"] == "sale-international-nohs"
    assert "Tea-Oolong (Oolong Tea 100 g): no HS code" in event["reason"], event["reason"]
    assert "Mug" not in event["reason"]  # the mug has everything customs needs
    assert createlabel_calls(sandbox) == 0
    assert sandbox.calls["/shipments/getrates"] == 0  # refused before rating: no budget spent


async def test_an_event_in_attention_for_customs_is_labelled_once_the_product_is_fixed(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()  # the default product TTL: refused products are read again
    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-international-nohs"), headers=HOOK)
    await until(lambda: has_status(client, "attention"))
    (event,) = await events(client)

    cin7_sandbox.products["p-tea"]["HSCode"] = "0902.30"
    retried = await client.post(f"/v1/automation/events/{event['event_id']}/retry", headers=AUTH)
    await until(lambda: has_status(client, "processed"))

    assert retried.status in (200, 202), await retried.text()
    assert createlabel_calls(sandbox) == 1


def _customs_forms(cin7: Cin7Sandbox, sale_id: str) -> list[str]:
    files = cin7.attachments.get(sale_id, [])
    return [f["FileName"] for f in files if f["FileName"].startswith("customs-")]
