"""``POST /v1/webhooks/cin7/{account}`` and ``GET /v1/automation/events``: the HTTP contract."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from tests.conftest import ACME_AUTH, AUTH, HOOK, WEBHOOK_URL, MakeService, acme_settings

URL = WEBHOOK_URL

PACKED = {"SaleID": "sale-unknown-to-cin7", "TaskID": "t-1", "EventType": "Sale/PackAuthorised"}


async def listed(client: TestClient, headers: dict[str, str], query: str = "") -> Any:
    response = await client.get(f"/v1/automation/events{query}", headers=headers)
    return response.status, await response.json()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'["Sale/PackAuthorised"]', "application/json"),
        (b'{"SaleID": "s-1"}', "application/json"),
        (b'{"EventType": "Sale/PackAuthorised"}', "application/json"),
        (b"", "text/plain"),
    ],
)
async def test_a_malformed_or_unknown_payload_is_400_and_nothing_is_recorded(
    make_automated: MakeService, body: bytes, content_type: str
) -> None:
    client = await make_automated()

    response = await client.post(URL, data=body, headers={**HOOK, "Content-Type": content_type})

    problem = await response.json()
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    assert problem["code"] == "malformed_json"
    assert problem["detail"]
    assert (await listed(client, AUTH))[1]["events"] == []


async def test_a_json_event_is_accepted_whatever_its_content_type(
    make_automated: MakeService,
) -> None:
    client = await make_automated(RATESVC_AUTOSHIP="off")
    body = b'{"EventType": "Sale/PackAuthorised", "SaleID": "s-1", "TaskID": "t-1"}'

    response = await client.post(URL, data=body, headers={**HOOK, "Content-Type": "text/plain"})

    assert response.status == 202
    assert (await response.json())["status"] == "ignored"


async def test_an_unknown_account_and_one_without_credential_are_the_same_401(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path
) -> None:
    client: TestClient = await aiohttp_client(
        create_app(acme_settings(tmp_path, sandbox_url, cin7_url=cin7_url))
    )

    unknown = await client.post("/v1/webhooks/cin7/nobody", json=PACKED)
    unconfigured = await client.post("/v1/webhooks/cin7/acme", json=PACKED)

    assert unknown.status == unconfigured.status == 401
    first, second = await unknown.json(), await unconfigured.json()
    assert first["code"] == second["code"] == "unauthorized"
    assert first["detail"] == second["detail"] == "the webhook credential is missing or wrong"


BASIC_ACCOUNT = """
[accounts.acme.webhook]
type = "basic"
username = "cin7"
password = "hook-pass-0123456789"
[accounts.acme.automation]
autoship = "off"
"""
HEADER_ACCOUNT = """
[accounts.acme.webhook]
type = "header"
header = "X-Hook-Key"
value = "hook-value-0123456789"
"""


async def test_basic_auth_and_custom_header_credentials_are_accepted(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path
) -> None:
    (tmp_path / "b").mkdir()
    basic: TestClient = await aiohttp_client(
        create_app(acme_settings(tmp_path / "b", sandbox_url, BASIC_ACCOUNT, cin7_url=cin7_url))
    )
    header: TestClient = await aiohttp_client(
        create_app(acme_settings(tmp_path, sandbox_url, HEADER_ACCOUNT, cin7_url=cin7_url))
    )
    good = base64.b64encode(b"cin7:hook-pass-0123456789").decode()
    bad = base64.b64encode(b"cin7:hook-pass-wrong").decode()
    url = "/v1/webhooks/cin7/acme"

    assert (
        await basic.post(url, json=PACKED, headers={"Authorization": f"Basic {good}"})
    ).status == 202
    assert (
        await basic.post(url, json=PACKED, headers={"Authorization": f"Basic {bad}"})
    ).status == 401
    assert (
        await header.post(url, json=PACKED, headers={"X-Hook-Key": "hook-value-0123456789"})
    ).status == 202
    assert (await header.post(url, json=PACKED, headers={"X-Hook-Key": "nope"})).status == 401
    status, body = await listed(basic, ACME_AUTH)
    assert status == 200
    assert [e["status"] for e in body["events"]] == ["ignored"]  # automation is off there


async def test_events_are_listed_newest_first_by_status_with_a_cursor(
    make_automated: MakeService,
) -> None:
    client = await make_automated(RATESVC_AUTOSHIP="off")
    for n in range(3):
        await client.post(URL, json={**PACKED, "TaskID": f"t-{n}"}, headers=HOOK)

    status, first = await listed(client, AUTH, "?limit=2&status=ignored")
    _, second = await listed(client, AUTH, f"?limit=2&cursor={first['next_cursor']}")
    _, none = await listed(client, AUTH, "?status=processed")

    assert status == 200
    assert [e["task_id"] for e in first["events"] + second["events"]] == ["t-2", "t-1", "t-0"]
    assert second["next_cursor"] is None
    assert none["events"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [("?status=done", "status"), ("?limit=0", "limit"), ("?limit=x", "limit"), ("?page=2", "page")],
)
async def test_a_bad_event_query_is_422_naming_the_parameter(
    make_automated: MakeService, query: str, field: str
) -> None:
    client = await make_automated()

    status, problem = await listed(client, AUTH, query)

    assert status == 422
    assert problem["errors"][0]["field"] == field
