"""What rating keeps in memory stays within its budgets, however many distinct answers it gives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.app import create_app
from ratesvc.config import Settings
from ratesvc.sandbox.knobs import Knobs
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.conftest import AUTH

MIB = 1 << 20


def shipment(name: str, postal_code: str = "10118") -> dict[str, Any]:
    to = {"name": name, "postal_code": postal_code, "country": "US", "state": "NY"}
    return {"shipment": {"ship_to": to, "packages": [{"weight": {"value": 3, "unit": "lb"}}]}}


@pytest.fixture
def sandbox() -> ShipStationSandbox:
    return ShipStationSandbox(knobs=Knobs(rate_limit=1_000_000))  # load, not the rate limit


async def rate(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post("/v1/rates", json=body, headers=AUTH)
    payload = await response.json()
    assert response.status == 200, payload
    quotes: list[dict[str, Any]] = payload["quotes"]
    return quotes


async def first_quote(client: TestClient, body: dict[str, Any]) -> str:
    quote_id: str = (await rate(client, body))[0]["quote_id"]
    return quote_id


async def test_a_busy_service_forgets_its_oldest_quotes_within_the_budget(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings(RATESVC_QUOTE_STORE_MAX_BYTES="1MiB"))
    client: TestClient = await aiohttp_client(app)
    oldest = await first_quote(client, shipment("Customer 0"))
    rater, replay = app[keys.RATER], app[keys.REPLAY]

    answers = 1
    # Each recipient name is a new answer (new quotes) from the same cached legs.
    while (await client.get(f"/v1/quotes/{oldest}", headers=AUTH)).status == 200:
        assert answers < 1_000, "the store never forgot the oldest quote"
        newest = await first_quote(client, shipment(f"Customer {answers}"))
        answers += 1
        assert rater.quotes.held_bytes <= MIB
        assert replay.held_bytes <= MIB // 4
        assert rater.memo_bytes <= MIB // 8

    assert answers > 50  # the budget held many answers before the first one went
    assert (await client.get(f"/v1/quotes/{newest}", headers=AUTH)).status == 200
    forgotten = await client.post("/v1/labels", json={"quote_id": oldest}, headers=AUTH)
    assert (forgotten.status, (await forgotten.json())["code"]) == (404, "not_found")


async def test_distinct_shipments_keep_the_leg_cache_within_its_budget(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings(RATESVC_QUOTE_CACHE_MAX_BYTES="1MiB"))
    client: TestClient = await aiohttp_client(app)
    cache = app[keys.RATER].cache

    for n in range(200):  # 4 carriers: 800 legs, about twice what 1 MiB holds
        await rate(client, shipment("Customer", postal_code=f"{10000 + n}"))
        assert cache.held_bytes <= MIB

    assert cache.held_bytes > MIB // 2
    newest = await rate(client, shipment("Customer", postal_code="10199"))
    oldest = await rate(client, shipment("Customer", postal_code="10000"))
    assert all(quote["cached"] for quote in newest)
    assert not any(quote["cached"] for quote in oldest)
