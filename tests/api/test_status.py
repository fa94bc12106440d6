"""``GET /v1/status``: upstream budgets, write-back backlog, automation queue, labels waiting and
the Cin7 Core webhook's state — never failing because an upstream is down."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp.test_utils import TestClient

from ratesvc.sandbox.cin7 import Cin7Sandbox
from tests.automation.support import needs_attention, pack_payload, subscribe, until
from tests.conftest import AUTH, HOOK, WEBHOOK_URL, MakeService

FIX = "ratesvc cin7 subscribe --account default --url "


async def status_of(client: TestClient) -> dict[str, Any]:
    response = await client.get("/v1/status", headers=AUTH)
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    return body


async def test_a_quiet_account_shows_its_budgets_and_nothing_waiting(
    make_labelling: MakeService,
) -> None:
    client = await make_labelling()
    await client.get("/v1/carriers", headers=AUTH)  # one ShipStation call: the window is known

    status = await status_of(client)

    assert status["account"] == "default"
    (shipstation,) = status["shipstation"]
    assert shipstation["limit"] == 40
    assert 0 <= shipstation["remaining"] < 40
    assert shipstation["throttled"] == 0
    assert shipstation["sharing"] == "local"  # no Redis configured: the window is this process's
    resets_at = dt.datetime.fromisoformat(shipstation["resets_at"])
    assert dt.timedelta(0) < resets_at - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=62)
    (cin7,) = status["cin7"]
    assert len(cin7["application"]) == 16
    assert cin7["limit"] == 60
    assert cin7["sharing"] == "local"
    assert status["write_back"] == {"backlog": 0, "oldest_age_s": None}
    assert status["automation"] == {"enabled": False, "waiting": 0, "retrying": 0, "attention": 0}
    assert status["labels"] == {"attention": 0, "purchasing": 0}
    assert status["webhook"]["state"] == "unknown"  # nothing subscribed
    # the service cannot know its public address (proxies, TLS, any Host header): a placeholder
    assert status["webhook"]["fix"] == FIX + "https://RATESVC-PUBLIC-ADDRESS" + WEBHOOK_URL
    assert status["generated_at"].endswith("Z")


async def test_the_webhook_is_active_or_loudly_inactive_with_the_command_that_fixes_it(
    make_labelling: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_labelling()
    subscribe(cin7_sandbox, client)

    active = (await status_of(client))["webhook"]
    cin7_sandbox.webhooks[0]["IsActive"] = False  # six failed deliveries
    cached = (await status_of(client))["webhook"]

    assert (active["state"], active["fix"]) == ("active", None)
    assert cached == active  # kept a minute: one Cin7 Core call
    assert cin7_sandbox.calls["GET /webhooks"] == 1


async def test_an_inactive_webhook_says_how_to_resubscribe(
    make_labelling: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_labelling()
    subscribe(cin7_sandbox, client)
    cin7_sandbox.webhooks[0]["IsActive"] = False

    webhook = (await status_of(client))["webhook"]

    assert webhook["state"] == "inactive"
    assert webhook["fix"] == FIX + cin7_sandbox.webhooks[0]["ExternalURL"]
    assert "poller" in webhook["detail"]


async def test_cin7_core_down_leaves_the_status_answering_with_the_webhook_unknown(
    make_labelling: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_labelling(RATESVC_CIN7_THROTTLE_PAUSE_S="0.1")
    cin7_sandbox.knobs.down = True

    webhook = (await status_of(client))["webhook"]

    assert webhook["state"] == "unknown"
    assert webhook["fix"] is None
    assert webhook["detail"].startswith(("Cin7 Core could not be asked", "Cin7 Core's webhook"))


async def test_without_cin7_core_credentials_there_is_no_webhook_to_watch(
    service: TestClient,
) -> None:
    status = await status_of(service)

    assert status["cin7"] == []
    assert status["webhook"]["state"] == "unknown"
    assert "no Cin7 Core credentials" in status["webhook"]["detail"]


async def test_automation_in_attention_and_the_write_back_backlog_are_counted(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_automated()
    await client.post(WEBHOOK_URL, json=pack_payload(cin7_sandbox, "sale-multibox"), headers=HOOK)
    await needs_attention(client)
    cin7_sandbox.knobs.writes_down = True  # a label bought now waits for its write-back
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    bought = await client.post("/v1/labels", json=body, headers=AUTH)
    assert bought.status == 201

    async def backlogged() -> bool:
        return bool((await status_of(client))["write_back"]["backlog"] == 1)

    await until(backlogged)
    status = await status_of(client)

    assert status["automation"] == {"enabled": True, "waiting": 0, "retrying": 0, "attention": 1}
    assert status["write_back"]["oldest_age_s"] >= 0
    assert status["labels"] == {"attention": 0, "purchasing": 0}


async def test_the_status_needs_the_api_token(service: TestClient) -> None:
    response = await service.get("/v1/status")

    assert response.status == 401
