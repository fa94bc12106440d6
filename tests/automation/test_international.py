"""Automation and international sales, until a sale's customs declaration is wired into its
labels: a sale to another country is never sent to ShipStation without one — its event goes to
``attention`` saying a declaration is required, and nothing is bought."""

from __future__ import annotations

from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.automation.support import (
    URL,
    createlabel_calls,
    events,
    has_status,
    pack_payload,
    until,
)
from tests.conftest import HOOK, MakeService


async def test_an_international_sale_goes_to_attention_without_a_declaration(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()

    response = await client.post(
        URL, json=pack_payload(cin7_sandbox, "sale-international"), headers=HOOK
    )
    await until(lambda: has_status(client, "attention"))
    (event,) = await events(client)

    assert response.status == 202
    assert event["sale_id"] == "sale-international"
    assert "customs declaration" in event["reason"], event["reason"]
    assert createlabel_calls(sandbox) == 0
