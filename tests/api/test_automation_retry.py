"""``POST /v1/automation/events/{event_id}/retry``: an event in ``attention`` or ``failed`` goes
back in the queue (200 with the event); 409 ``event_not_retryable`` for an event that is processed,
ignored or already waiting; 404 for an unknown event or another account's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.app import create_app
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.automation.support import (
    MISSING,
    URL,
    createlabel_calls,
    events,
    fix_gift_card_weight,
    has_status,
    needs_attention,
    pack_payload,
    shipped,
    until,
)
from tests.conftest import ACME_AUTH, AUTH, HOOK, MakeService, acme_settings


def retry_url(event_id: str) -> str:
    return f"/v1/automation/events/{event_id}/retry"


async def retry(client: TestClient, event_id: str, status: int) -> dict[str, Any]:
    response = await client.post(retry_url(event_id), headers=AUTH)
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    expected = "application/json" if status == 200 else "application/problem+json"
    assert response.content_type == expected
    return body


async def test_an_event_in_attention_is_retried_and_processed_once_the_cause_is_fixed(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated()
    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-multibox"), headers=HOOK)
    before = await needs_attention(client)

    queued = await retry(client, before["event_id"], 200)  # nothing fixed yet

    assert queued == {
        **before, "status": "received", "attempts": 0, "label_id": None,
        "reason": f"retry requested; before: {MISSING}", "updated_at": queued["updated_at"],
    }  # fmt: skip
    again = await needs_attention(client)  # examined again: the same cause
    assert again["attempts"] == 1
    assert createlabel_calls(sandbox) == 0

    fix_gift_card_weight(cin7_sandbox)  # the sale itself is not touched: the person asks
    await retry(client, before["event_id"], 200)

    await until(lambda: shipped(cin7_sandbox, "sale-multibox"))
    await until(lambda: has_status(client, "processed"))
    (done,) = await events(client)
    assert (done["event_id"], done["attempts"]) == (before["event_id"], 1)
    assert done["reason"].startswith("bought ") and done["label_id"] is not None
    assert createlabel_calls(sandbox) == 2

    problem = await retry(client, before["event_id"], 409)  # processed: nothing to retry
    assert problem["code"] == "event_not_retryable"
    assert problem["detail"] == (
        f"event {before['event_id']} is processed; only an event in attention or failed can be "
        "retried"
    )
    assert createlabel_calls(sandbox) == 2


async def test_a_failed_event_is_retried_at_once_instead_of_after_its_back_off(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    client = await make_automated(RATESVC_AUTOMATION_RETRY_S="600")
    cin7_sandbox.knobs.down = True
    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)
    await until(lambda: has_status(client, "failed"))
    (failed,) = await events(client)
    assert failed["next_attempt_at"] is not None  # ten minutes away
    cin7_sandbox.knobs.down = False

    queued = await retry(client, failed["event_id"], 200)

    assert (queued["status"], queued["attempts"], queued["next_attempt_at"]) == (
        "received", 0, None,
    )  # fmt: skip
    assert queued["reason"] == f"retry requested; before: {failed['reason']}"
    await until(lambda: shipped(cin7_sandbox, "sale-simple"))  # well before ten minutes
    await until(lambda: has_status(client, "processed"))
    assert createlabel_calls(sandbox) == 1


async def test_events_waiting_or_ignored_are_not_retried(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_automated()
    cin7_sandbox.knobs.latency = Latency(base_ms=1500)  # the worker is busy with the sale
    response = await client.post(URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK)
    waiting = await response.json()
    other = {"SaleTaskID": "task-sale-simple", "EventType": "Sale/ShipmentAuthorised"}
    ignored = await (await client.post(URL, json=other, headers=HOOK)).json()

    busy = await retry(client, waiting["event_id"], 409)
    refused = await retry(client, ignored["event_id"], 409)

    assert busy["code"] == refused["code"] == "event_not_retryable"
    assert busy["detail"] in {
        f"event {waiting['event_id']} is {state}; only an event in attention or failed can be "
        "retried"
        for state in ("already waiting to be processed", "being processed right now")
    }
    assert refused["detail"] == (
        f"event {ignored['event_id']} is ignored; only an event in attention or failed can be "
        "retried"
    )
    cin7_sandbox.knobs.latency = Latency()
    await client.app[keys.AUTOMATION].idle()
    statuses = {e["event_id"]: e["status"] for e in await events(client)}
    assert statuses == {waiting["event_id"]: "processed", ignored["event_id"]: "ignored"}


OTHER = {"Authorization": "Bearer other-token-0123456789"}


async def test_an_unknown_event_or_another_accounts_is_404_and_a_token_is_needed(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path,
    cin7_sandbox: Cin7Sandbox,
) -> None:  # fmt: skip
    accounts = (
        '[accounts.acme.webhook]\ntype = "bearer"\ntoken = "hook-token-0123456789"\n'
        '[accounts.acme.automation]\nautoship = "cheapest"\npoll_interval_s = 0\n'
        '[accounts.other]\napi_tokens = ["other-token-0123456789"]\n'
        'ship_from = { postal_code = "78703", country = "US" }\n'
        f'shipstation = {{ url = "{sandbox_url}", api_key = "k", api_secret = "s" }}\n'
    )
    settings = acme_settings(tmp_path, sandbox_url, accounts, cin7_url=cin7_url)
    client: TestClient = await aiohttp_client(create_app(settings))
    hook = await client.post(
        "/v1/webhooks/cin7/acme", json=pack_payload(cin7_sandbox, "sale-multibox"), headers=HOOK
    )
    event_id = (await hook.json())["event_id"]
    await until(lambda: _in_attention(client, event_id))

    elsewhere = await client.post(retry_url(event_id), headers=OTHER)
    unknown = await client.post(retry_url("ev_nothing"), headers=ACME_AUTH)
    anonymous = await client.post(retry_url(event_id))
    own = await client.post(retry_url(event_id), headers=ACME_AUTH)

    assert [elsewhere.status, unknown.status, anonymous.status, own.status] == [404, 404, 401, 200]
    assert (await elsewhere.json())["detail"] == f"no automation event {event_id}"
    assert (await unknown.json())["code"] == "not_found"
    assert (await anonymous.json())["code"] == "unauthorized"
    assert (await own.json())["event_id"] == event_id


async def _in_attention(client: TestClient, event_id: str) -> bool:
    listed = await (await client.get("/v1/automation/events", headers=ACME_AUTH)).json()
    return [(e["event_id"], e["status"]) for e in listed["events"]] == [(event_id, "attention")]
