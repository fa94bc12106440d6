"""The ShipStation client at the HTTP boundary: what it sends, and what it makes of the answers."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses
from yarl import URL

from ratesvc.config import Secret, ShipStationConfig
from ratesvc.errors import (
    UpstreamAuth,
    UpstreamError,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ratesvc.limiter import RateLimiter
from ratesvc.models import Address, LabelRequest, RateRequest, ShipmentQuery, Weight
from ratesvc.upstreams.http import RetryPolicy
from ratesvc.upstreams.shipstation.client import ShipStationClient
from tests.conftest import DATA, load_json

BASE = "https://ssapi.shipstation.com"
HEADERS = {"X-Rate-Limit-Limit": "40", "X-Rate-Limit-Remaining": "39", "X-Rate-Limit-Reset": "59"}
BASIC = "Basic " + base64.b64encode(b"key:secret").decode()
FROM = Address(postal_code="78703", country="US", city="Austin", state="TX")
TO = Address(postal_code="02110", country="US", city="Boston", state="MA", residential=True)


def sample(name: str) -> bytes:
    return (DATA / "shipstation" / name).read_bytes()


@pytest.fixture
def upstream() -> Any:
    with aioresponses(passthrough=["http://127.0.0.1"]) as mocked:
        yield mocked


@pytest.fixture
async def client() -> AsyncIterator[ShipStationClient]:
    config = ShipStationConfig(url=BASE, api_key=Secret("key"), api_secret=Secret("secret"))
    async with aiohttp.ClientSession() as session:
        yield ShipStationClient(
            session,
            config,
            RateLimiter("test", limit=40, window_s=60),
            retry_policy=RetryPolicy(attempts=3, base_delay_s=0.001, max_delay_s=0.002),
        )


def sent(upstream: Any, method: str, url: str) -> list[Any]:
    calls: list[Any] = upstream.requests.get((method, URL(url)), [])
    return calls


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_carriers_are_listed_with_basic_auth(
    upstream: Any, client: ShipStationClient
) -> None:
    upstream.get(f"{BASE}/carriers", body=sample("carriers_response.json"), headers=HEADERS)

    carriers = await client.list_carriers(deadline=deadline())

    assert [c.carrier_code for c in carriers] == ["stamps_com", "ups", "fedex"]
    (call,) = sent(upstream, "GET", f"{BASE}/carriers")
    assert call.kwargs["headers"]["Authorization"] == BASIC


async def test_services_and_packages_are_asked_per_carrier(
    upstream: Any, client: ShipStationClient
) -> None:
    services_url = f"{BASE}/carriers/listservices?carrierCode=stamps_com"
    packages_url = f"{BASE}/carriers/listpackages?carrierCode=stamps_com"
    upstream.get(
        services_url, body=sample("listservices_stamps_com_response.json"), headers=HEADERS
    )
    upstream.get(
        packages_url,
        payload=[{"carrierCode": "stamps_com", "code": "medium_flat_rate_box",
                  "name": "Medium Flat Rate Box", "domestic": True, "international": True}],
        headers=HEADERS,
    )  # fmt: skip

    services = await client.list_services("stamps_com", deadline=deadline())
    packages = await client.list_packages("stamps_com", deadline=deadline())

    assert len(services) == 8
    assert [p.package_code for p in packages] == ["medium_flat_rate_box"]
    assert sent(upstream, "GET", services_url) and sent(upstream, "GET", packages_url)


async def test_rates_are_posted_as_documented_and_read_exactly(
    upstream: Any, client: ShipStationClient
) -> None:
    upstream.post(
        f"{BASE}/shipments/getrates", body=sample("getrates_fedex_response.json"), headers=HEADERS
    )
    request = RateRequest(
        carrier_code="fedex", ship_from=FROM, ship_to=TO, weight=Weight(value=3, unit="oz"),
        confirmation="delivery",
    )  # fmt: skip

    rows = await client.get_rates(request, deadline=deadline())

    assert len(rows) == 7
    assert min(rows, key=lambda r: r.shipment_cost).shipment_cost == Decimal("8.25")
    (call,) = sent(upstream, "POST", f"{BASE}/shipments/getrates")
    body = call.kwargs["data"]
    assert b'"toPostalCode":"02110"' in body
    payload = orjson.loads(body)
    assert payload["carrierCode"] == "fedex"
    assert payload["weight"] == {"value": 3, "units": "ounces"}
    assert payload["residential"] is True
    assert call.kwargs["headers"]["Content-Type"] == "application/json"


LABEL = LabelRequest(
    carrier_code="fedex", service_code="fedex_ground", package_code="package",
    ship_date=dt.date(2026, 11, 30), ship_from=FROM, ship_to=TO,
    weight=Weight(value=3, unit="oz"), purchase_key="default:sale-1:task-1",
)  # fmt: skip


async def test_a_label_is_bought_once_and_its_pdf_decoded(
    upstream: Any, client: ShipStationClient
) -> None:
    upstream.post(
        f"{BASE}/shipments/createlabel", body=sample("createlabel_response.json"), headers=HEADERS
    )

    record = await client.create_label(LABEL, deadline=deadline())

    assert record.shipment_id == 72513480
    assert record.label_pdf is not None and record.label_pdf.startswith(b"%PDF")
    (call,) = sent(upstream, "POST", f"{BASE}/shipments/createlabel")
    assert orjson.loads(call.kwargs["data"])["advancedOptions"]["customField1"] == (
        "default:sale-1:task-1"
    )


async def test_createlabel_is_never_retried_even_on_a_5xx(
    upstream: Any, client: ShipStationClient
) -> None:
    upstream.post(f"{BASE}/shipments/createlabel", status=503, headers=HEADERS, repeat=True)

    with pytest.raises(UpstreamUnavailable):
        await client.create_label(LABEL, deadline=deadline())

    assert len(sent(upstream, "POST", f"{BASE}/shipments/createlabel")) == 1


async def test_createlabel_connection_loss_is_reported_as_maybe_processed(
    upstream: Any, client: ShipStationClient
) -> None:
    upstream.post(
        f"{BASE}/shipments/createlabel", exception=aiohttp.ServerDisconnectedError(), repeat=True
    )

    with pytest.raises(UpstreamUnavailable) as caught:
        await client.create_label(LABEL, deadline=deadline())

    assert caught.value.maybe_processed is True
    assert len(sent(upstream, "POST", f"{BASE}/shipments/createlabel")) == 1


async def test_void_and_shipment_list(upstream: Any, client: ShipStationClient) -> None:
    upstream.post(
        f"{BASE}/shipments/voidlabel", payload=load_json("shipstation/voidlabel.json")["response"],
        headers=HEADERS,
    )  # fmt: skip
    upstream.get(
        URL(f"{BASE}/shipments").with_query(
            page="1", pageSize="100", sortBy="CreateDate", sortDir="ASC", carrierCode="stamps_com",
            createDateStart="2020-06-26 00:00:00",
        ),
        body=sample("shipments_list_item.json"), headers=HEADERS,
    )  # fmt: skip

    result = await client.void_label(72513480, deadline=deadline())
    page = await client.list_shipments(
        ShipmentQuery(
            carrier_code="stamps_com", created_from=dt.datetime(2020, 6, 26, 7, tzinfo=dt.UTC)
        ),
        deadline=deadline(),
    )

    assert result.approved
    (call,) = sent(upstream, "POST", f"{BASE}/shipments/voidlabel")
    assert orjson.loads(call.kwargs["data"]) == {"shipmentId": 72513480}
    assert page.shipments[0].tracking_number == "9405511699000554135855"


async def test_idempotent_calls_are_retried_on_5xx_then_succeed(
    upstream: Any, client: ShipStationClient
) -> None:
    upstream.get(f"{BASE}/carriers", status=502, headers=HEADERS)
    upstream.get(f"{BASE}/carriers", exception=aiohttp.ClientConnectionError())
    upstream.get(f"{BASE}/carriers", body=sample("carriers_response.json"), headers=HEADERS)

    carriers = await client.list_carriers(deadline=deadline())

    assert len(carriers) == 3
    assert len(sent(upstream, "GET", f"{BASE}/carriers")) == 3


async def test_retries_stop_at_the_attempt_limit(upstream: Any, client: ShipStationClient) -> None:
    upstream.get(f"{BASE}/carriers", status=503, headers=HEADERS, repeat=True)

    with pytest.raises(UpstreamUnavailable):
        await client.list_carriers(deadline=deadline())

    assert len(sent(upstream, "GET", f"{BASE}/carriers")) == 3


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, b"", UpstreamAuth),
        (400, sample("errors.json"), UpstreamError),
        (500, orjson.dumps(load_json("shipstation/errors.json")["500_exception"]), UpstreamError),
    ],
)
async def test_errors_that_retrying_cannot_fix_are_raised_at_once(
    upstream: Any, client: ShipStationClient, status: int, body: bytes, kind: type
) -> None:
    upstream.get(f"{BASE}/carriers", status=status, body=body, headers=HEADERS, repeat=True)

    with pytest.raises(kind):
        await client.list_carriers(deadline=deadline())

    assert len(sent(upstream, "GET", f"{BASE}/carriers")) == 1


async def test_a_429_whose_reset_is_past_the_deadline_fails_fast_as_throttled(
    upstream: Any, client: ShipStationClient
) -> None:
    throttled = {
        "X-Rate-Limit-Limit": "40",
        "X-Rate-Limit-Remaining": "0",
        "X-Rate-Limit-Reset": "20",
    }
    upstream.get(
        f"{BASE}/carriers", status=429, payload={"message": "Too Many Requests"},
        headers=throttled, repeat=True,
    )  # fmt: skip

    with pytest.raises(UpstreamThrottled):
        await client.list_carriers(deadline=deadline(2.0))

    assert len(sent(upstream, "GET", f"{BASE}/carriers")) == 1
    assert client.limiter.remaining == 0


async def test_no_answer_before_the_deadline_is_a_timeout(
    upstream: Any, client: ShipStationClient
) -> None:
    async def slow(*_args: Any, **_kwargs: Any) -> None:
        await asyncio.sleep(5)

    upstream.get(f"{BASE}/carriers", callback=slow)

    with pytest.raises(UpstreamTimeout) as caught:
        await client.list_carriers(deadline=deadline(0.2))

    assert caught.value.code == "deadline_exceeded"
    assert caught.value.leg_code == "upstream_timeout"
