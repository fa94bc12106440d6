"""``GET /v1/carriers``: read once, served from cache, refreshed in the background."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import Settings, load_settings
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.conftest import AUTH


def catalogue_calls(sandbox: ShipStationSandbox) -> int:
    return sum(
        sandbox.calls[p] for p in ("/carriers", "/carriers/listservices", "/carriers/listpackages")
    )


async def test_carriers_come_with_services_and_packages(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    response = await service.get("/v1/carriers", headers=AUTH)
    body = await response.json()

    assert response.status == 200
    codes = [c["carrier_code"] for c in body["carriers"]]
    assert codes == ["stamps_com", "ups", "fedex", "dhl_express_worldwide"]
    fedex = body["carriers"][2]
    assert fedex["name"] == "FedEx"
    ground = next(s for s in fedex["services"] if s["service_code"] == "fedex_ground")
    assert ground == {"service_code": "fedex_ground", "name": "FedEx Ground®", "domestic": True,
                      "international": False}  # fmt: skip
    assert {"package_code": "package", "name": "Package", "domestic": True,
            "international": True} in fedex["packages"]  # fmt: skip
    assert body["refreshed_at"].endswith("Z")
    assert catalogue_calls(sandbox) == 1 + 2 * 4


async def test_concurrent_first_requests_share_one_load_and_later_ones_hit_the_cache(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    sandbox.set_latency(50)

    responses = await asyncio.gather(
        *(service.get("/v1/carriers", headers=AUTH) for _ in range(10))
    )
    again = await service.get("/v1/carriers", headers=AUTH)

    assert all(r.status == 200 for r in responses) and again.status == 200
    assert catalogue_calls(sandbox) == 9


async def test_a_stale_catalogue_is_served_at_once_and_refreshed_in_the_background(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> None:
    client = await aiohttp_client(create_app(make_settings(RATESVC_CARRIERS_TTL_S="1")))
    first = await (await client.get("/v1/carriers", headers=AUTH)).json()
    await asyncio.sleep(1.05)
    sandbox.set_latency(400)  # a refresh now takes at least 0.8 s

    loop = asyncio.get_running_loop()
    started = loop.time()
    stale = await (await client.get("/v1/carriers", headers=AUTH)).json()
    served_in = loop.time() - started

    assert served_in < 0.4  # not blocked on the refresh
    assert stale["refreshed_at"] == first["refreshed_at"]
    for _ in range(100):  # poll, bounded, for the background refresh to land
        fresh = await (await client.get("/v1/carriers", headers=AUTH)).json()
        if fresh["refreshed_at"] != first["refreshed_at"]:
            break
        await asyncio.sleep(0.05)
    assert fresh["refreshed_at"] > first["refreshed_at"]
    assert catalogue_calls(sandbox) == 18


async def test_a_failed_refresh_keeps_serving_the_old_catalogue(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> None:
    client = await aiohttp_client(create_app(make_settings(RATESVC_CARRIERS_TTL_S="1")))
    first = await (await client.get("/v1/carriers", headers=AUTH)).json()
    await asyncio.sleep(1.05)
    sandbox.knobs.error_rate = {"*": 1.0}
    sandbox.set_latency(0)

    responses = [await client.get("/v1/carriers", headers=AUTH) for _ in range(3)]

    assert all(r.status == 200 for r in responses)
    assert (await responses[-1].json())["refreshed_at"] == first["refreshed_at"]


async def test_the_account_allow_list_limits_the_carriers(
    aiohttp_client: Any, sandbox_url: str, tmp_path: Any, sandbox: ShipStationSandbox
) -> None:
    config = tmp_path / "ratesvc.toml"
    config.write_text(
        f"""
[accounts.acme]
api_tokens = ["acme-token-0123456789"]
carriers = ["ups", "fedex"]
shipstation = {{ url = "{sandbox_url}", api_key = "sandbox-key", api_secret = "sandbox-secret" }}
"""
    )
    client = await aiohttp_client(create_app(load_settings({"RATESVC_CONFIG": str(config)})))
    body = await (
        await client.get("/v1/carriers", headers={"Authorization": "Bearer acme-token-0123456789"})
    ).json()

    assert [c["carrier_code"] for c in body["carriers"]] == ["ups", "fedex"]
    assert sandbox.calls["/carriers/listservices"] == 2


async def test_upstream_failures_become_problems_with_their_codes(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    sandbox.knobs.error_rate = {"*": 1.0}

    response = await service.get("/v1/carriers", headers=AUTH)
    body = await response.json()

    assert response.status == 502
    assert response.content_type == "application/problem+json"
    assert body["code"] == "upstream_error"
    assert body["detail"] == "ShipStation: The carrier service is temporarily unavailable."


async def test_rejected_shipstation_keys_say_what_to_do(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(
        create_app(make_settings(RATESVC_SHIPSTATION_API_SECRET="regenerated-since"))
    )

    response = await client.get("/v1/carriers", headers=AUTH)
    body = await response.json()

    assert response.status == 502
    assert body["code"] == "upstream_auth"
    assert "regenerated" in body["detail"]
    assert "RATESVC_SHIPSTATION_API_KEY" in body["detail"]
    assert "regenerated-since" not in body["detail"]


async def test_no_answer_before_the_deadline_is_504(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> None:
    sandbox.set_latency(2000)
    client = await aiohttp_client(create_app(make_settings(RATESVC_REQUEST_DEADLINE_S="0.3")))

    response = await client.get("/v1/carriers", headers=AUTH)

    assert response.status == 504
    assert (await response.json())["code"] == "deadline_exceeded"


async def test_a_key_throttled_past_the_deadline_is_503_at_once(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> None:
    sandbox.apply_window(limit=40, window_s=30)
    sandbox.storm(30)
    client = await aiohttp_client(create_app(make_settings(RATESVC_REQUEST_DEADLINE_S="5")))

    response = await client.get("/v1/carriers", headers=AUTH)
    body = await response.json()

    assert response.status == 503
    assert body["code"] == "upstream_unavailable"
    assert "rate limit" in body["detail"]
    assert sandbox.throttled == 1  # one probe; the 429 paused the key, nothing else was sent
    assert 1 <= int(response.headers["Retry-After"]) <= 32  # the window, plus a margin
    assert body["retry_after_s"] == int(response.headers["Retry-After"])
