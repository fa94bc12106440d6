"""The Cin7 Core client against the Cin7 Core sandbox: headers, reads, writes, throttling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from ratesvc.config import Cin7Config, Secret
from ratesvc.errors import UpstreamAuth, UpstreamNotFound, UpstreamThrottled
from ratesvc.limiter import RateLimiter
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.upstreams.cin7 import wire
from ratesvc.upstreams.cin7.client import Cin7Client, cin7_limiter


def now() -> float:
    return asyncio.get_running_loop().time()


@pytest.fixture
async def client(cin7_url: str) -> AsyncIterator[Cin7Client]:
    config = Cin7Config(
        url=cin7_url, account_id=Secret("sandbox-account"), application_key=Secret("sandbox-key")
    )
    async with aiohttp.ClientSession() as session:
        limiter = RateLimiter("cin7-test", limit=60, window_s=60, min_interval_s=0.0,
                              throttle_pause_s=30)  # fmt: skip
        yield Cin7Client(session, config, limiter)


async def test_a_sale_is_read_with_iso_countries(client: Cin7Client) -> None:
    sale = await client.get_sale("sale-international", deadline=now() + 5)

    assert sale.ship_to is not None and sale.ship_to.country == "CA"
    assert sale.fulfilments[0].task_id == "task-sale-international"


async def test_an_unknown_sale_is_not_found(client: Cin7Client) -> None:
    with pytest.raises(UpstreamNotFound):
        await client.get_sale("nope", deadline=now() + 5)


async def test_products_and_ready_sales_are_listed(client: Cin7Client) -> None:
    product = await client.get_product("p-scale", deadline=now() + 5)
    missing = await client.get_product("p-nope", deadline=now() + 5)
    ready = await client.ready_for_shipping(page=1, limit=2, deadline=now() + 5)

    assert product is not None and product.weight_unit == "kg"
    assert missing is None
    assert ready.Total == 6 and len(ready.SaleList) == 2


async def test_ship_lines_and_attachments_are_written(
    client: Cin7Client, cin7_sandbox: Cin7Sandbox
) -> None:
    line = wire.ShipLineWrite(ShipmentDate="2026-11-30T00:00:00", Carrier="UPS", Box="Box 1",
                              TrackingNumber="1Z999", TrackingURL="")  # fmt: skip

    await client.ship("task-sale-simple", [line], authorise=True, deadline=now() + 5)
    await client.attach("sale-simple", "label-1Z999.pdf", b"%PDF-1.4", deadline=now() + 5)

    ship = cin7_sandbox.fulfilment("sale-simple")["Ship"]
    assert ship["Status"] == "AUTHORISED"
    assert ship["Lines"][0]["TrackingNumber"] == "1Z999"
    assert cin7_sandbox.attachments["sale-simple"][0]["FileName"] == "label-1Z999.pdf"
    method, _, body = cin7_sandbox.writes[0]
    assert method == "POST" and body["Lines"][0]["Box"] == "Box 1"


async def test_wrong_credentials_explain_what_to_check(cin7_url: str) -> None:
    config = Cin7Config(url=cin7_url, account_id=Secret("sandbox-account"),
                        application_key=Secret("old-key"))  # fmt: skip
    async with aiohttp.ClientSession() as session:
        client = Cin7Client(session, config, cin7_limiter("bad"))
        with pytest.raises(UpstreamAuth) as caught:
            await client.get_sale("sale-simple", deadline=now() + 5)

    assert "RATESVC_CIN7_ACCOUNT_ID" in caught.value.detail
    assert "old-key" not in caught.value.detail


@pytest.mark.parametrize("style", ["503", "429", "400"])
async def test_any_throttling_answer_pauses_the_whole_application(
    client: Cin7Client, cin7_sandbox: Cin7Sandbox, style: Any
) -> None:
    cin7_sandbox.knobs.throttle_style = style
    cin7_sandbox.window.reconfigure(limit=1)
    await client.get_sale("sale-simple", deadline=now() + 5)

    with pytest.raises(UpstreamThrottled):
        await client.get_sale("sale-simple", deadline=now() + 5)
    with pytest.raises(UpstreamThrottled):  # refused at once: the key is paused for 30 s
        await client.get_sale("sale-multibox", deadline=now() + 5)

    assert cin7_sandbox.throttled == 1
    assert client.limiter.remaining == 0


async def test_calls_are_paced_about_one_a_second(cin7_url: str, cin7_sandbox: Cin7Sandbox) -> None:
    config = Cin7Config(url=cin7_url, account_id=Secret("sandbox-account"),
                        application_key=Secret("sandbox-key"))  # fmt: skip
    async with aiohttp.ClientSession() as session:
        client = Cin7Client(session, config, RateLimiter("paced", limit=60, window_s=60,
                                                         min_interval_s=0.2))  # fmt: skip
        started = now()
        await asyncio.gather(*(client.get_product("p-mug", deadline=now() + 5) for _ in range(4)))

    assert now() - started >= 0.6  # 4 calls, 0.2 s apart
    assert cin7_sandbox.calls["GET /product"] == 4


async def test_locations_and_webhook_subscriptions(
    client: Cin7Client, cin7_sandbox: Cin7Sandbox
) -> None:
    hook = wire.Webhook(
        Type="Sale/PackAuthorised",
        ExternalURL="https://example.test/hook",
        ExternalAuthorizationType="bearerauth",
        ExternalBearerToken="t0k3n",
    )

    locations = await client.locations(deadline=now() + 5)
    created = await client.subscribe(hook, deadline=now() + 5)
    listed = await client.webhooks(deadline=now() + 5)

    assert [location.Name for location in locations] == ["Main Warehouse"]
    assert created.ID is not None and created.IsActive
    assert [(h.Type, h.ExternalURL) for h in listed] == [
        ("Sale/PackAuthorised", "https://example.test/hook")
    ]
    assert cin7_sandbox.webhooks[0]["ExternalBearerToken"] == "t0k3n"
