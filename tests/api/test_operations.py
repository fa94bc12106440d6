"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import ConfigError, Settings
from ratesvc.storage.ledger import SCHEMA_VERSION
from tests.conftest import AUTH


async def test_healthz_says_ok(service: TestClient) -> None:
    response = await service.get("/healthz")

    assert response.status == 200
    assert await response.json() == {"status": "ok"}
    assert response.headers["X-Request-Id"]


async def test_readyz_checks_config_and_a_writable_data_dir(
    service: TestClient, tmp_path: Path
) -> None:
    response = await service.get("/readyz")
    body = await response.json()

    assert response.status == 200
    assert body["status"] == "ready"
    assert body["checks"]["data_dir"] == "ok"
    assert body["checks"]["ledger"] == f"ok (schema {SCHEMA_VERSION})"
    assert (tmp_path / "data").is_dir()


async def test_readyz_is_503_when_the_data_dir_goes_away(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    client = await aiohttp_client(create_app(make_settings(RATESVC_DATA_DIR=str(data))))
    data.rename(tmp_path / "moved")
    data.write_text("not a directory any more")  # the volume was replaced under us

    response = await client.get("/readyz")
    body = await response.json()

    assert response.status == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["data_dir"].startswith("error:")
    assert body["checks"]["ledger"].startswith("ok")  # the open ledger file is still writable


async def test_a_data_dir_that_cannot_hold_the_ledger_stops_start_up_clearly(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    with pytest.raises(ConfigError) as caught:
        await aiohttp_client(create_app(make_settings(RATESVC_DATA_DIR=str(blocker / "x"))))

    assert caught.value.problems[0].startswith("RATESVC_DATA_DIR: cannot open the ledger")


async def test_metrics_count_requests_by_route_and_upstream_calls(service: TestClient) -> None:
    await service.get("/v1/carriers", headers=AUTH)
    await service.get("/v1/carriers")

    text = await (await service.get("/metrics")).text()

    http = 'ratesvc_http_requests_total{method="GET",route="/v1/carriers",status="%d"} 1.0'
    upstream = 'endpoint="carriers",status="200",upstream="shipstation"} 1.0'
    assert http % 200 in text
    assert http % 401 in text
    assert "ratesvc_upstream_requests_total{" + upstream in text
    assert "ratesvc_http_request_duration_seconds_bucket" in text
    assert "ratesvc_limiter_wait_seconds_count" in text


async def test_invented_methods_share_one_metrics_label(service: TestClient) -> None:
    """aiohttp accepts every method its parser knows (WebDAV's included): each must not become a
    new time series."""
    for method in ("PROPFIND", "MKCOL", "LOCK"):
        await service.request(method, "/v1/carriers", headers=AUTH)

    text = await (await service.get("/metrics")).text()

    assert 'method="OTHER",route="unmatched",status="405"} 3.0' in text
    assert 'method="PROPFIND"' not in text


async def test_request_ids_are_echoed_or_generated(service: TestClient) -> None:
    echoed = await service.get("/healthz", headers={"X-Request-Id": "abc-123"})
    replaced = await service.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})

    assert echoed.headers["X-Request-Id"] == "abc-123"
    assert replaced.headers["X-Request-Id"] != "bad id\twith spaces"
    assert len(replaced.headers["X-Request-Id"]) == 32


async def test_openapi_describes_every_route_with_generated_schemas(service: TestClient) -> None:
    document = await (await service.get("/openapi.json")).json()

    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) >= {"/healthz", "/readyz", "/metrics", "/v1/carriers"}
    carriers = document["paths"]["/v1/carriers"]["get"]
    ref = carriers["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"carriers", "refreshed_at"}
    assert "401" in carriers["responses"]
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "code", "detail"} <= set(problem["properties"])
    assert document["paths"]["/healthz"]["get"]["security"] == []


async def test_openapi_describes_the_webhook_with_its_own_credentials(service: TestClient) -> None:
    document = await (await service.get("/openapi.json")).json()

    webhook = document["paths"]["/v1/webhooks/cin7/{account}"]["post"]
    events = document["paths"]["/v1/automation/events"]["get"]

    assert webhook["security"] == [{"webhookBearer": []}, {"webhookBasic": []},
                                   {"webhookHeader": []}]  # fmt: skip
    assert {"200", "202", "400", "401", "413"} <= set(webhook["responses"])
    assert "404" not in webhook["responses"]  # an unknown account is a 401
    assert "401" in events["responses"]
    ref = events["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert set(document["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]) == {
        "events", "next_cursor",
    }  # fmt: skip
