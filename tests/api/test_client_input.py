"""Whatever a client sends — odd digits, bytes that are not UTF-8, garbage cursors, blank ids,
unknown package types — is a 4xx problem with a stable code, never a 500 or a misleading 503."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import Settings
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.api.test_errors import assert_problem
from tests.api.test_webhooks import BASIC_ACCOUNT, HEADER_ACCOUNT
from tests.conftest import AUTH, HOOK_TOKEN, TOKEN, WEBHOOK_URL, MakeService, acme_settings

TO = {"name": "A. Customer", "street1": "350 5th Ave", "city": "New York", "state": "NY",
      "postal_code": "10118", "country": "US"}  # fmt: skip
PARCEL = {"weight": {"value": 3, "unit": "lb"}}
PACKED = {"SaleID": "sale-simple", "TaskID": "t-1", "EventType": "Sale/PackAuthorised"}


class RawAnswer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}


async def send_raw(client: TestClient, head: bytes, body: bytes = b"") -> RawAnswer:
    """One request written byte for byte: header values no HTTP client library would send."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    length = f"Content-Length: {len(body)}\r\n".encode() if body else b""
    writer.write(head + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + length + b"\r\n" + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    return RawAnswer(raw)


def raw_problem(answer: RawAnswer, status: int, code: str) -> None:
    assert answer.status == status
    assert answer.headers["content-type"] == "application/problem+json"
    assert f'"code":"{code}"'.encode() in answer.body


# --- numbers from paths and queries ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/labels?limit=²", "limit"),
        ("/v1/labels?limit=٣", "limit"),
        ("/v1/labels?limit=" + "1" * 4400, "limit"),
        ("/v1/labels?limit=+5", "limit"),
        ("/v1/labels?limit=0", "limit"),
        ("/v1/labels?limit=201", "limit"),
        ("/v1/automation/events?limit=²", "limit"),
        ("/v1/automation/events?limit=" + "9" * 4400, "limit"),
        ("/v1/labels/lb_x/packages/²/label.pdf", "n"),
        ("/v1/labels/lb_x/packages/0/label.pdf", "n"),
        ("/v1/labels/lb_x/packages/" + "7" * 4400 + "/label.pdf", "n"),
    ],
    ids=["superscript", "arabic", "4400-digits", "plus", "zero", "over", "events-superscript",
         "events-4400-digits", "pdf-superscript", "pdf-zero", "pdf-4400-digits"],
)  # fmt: skip
async def test_a_number_that_is_not_ascii_digits_in_bounds_is_422(
    service: TestClient, path: str, field: str
) -> None:
    response = await service.get(path, headers=AUTH)

    body = await assert_problem(response, 422, "invalid_request")
    assert body["errors"] == [{"field": field, "message": body["errors"][0]["message"]}]
    assert "whole number" in body["errors"][0]["message"]


async def test_a_package_number_in_bounds_reaches_the_label(service: TestClient) -> None:
    response = await service.get("/v1/labels/lb_unknown/packages/01/label.pdf", headers=AUTH)

    body = await assert_problem(response, 404, "not_found")
    assert "lb_unknown" in body["detail"]


# --- cursors and filters --------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/labels", "/v1/automation/events"])
@pytest.mark.parametrize(
    ("cursor", "words"),
    [("garbage!", "is not a cursor"), ("' OR 1=1 --", "is not a cursor"),
     ("lb_doesnotexist000", None), ("ev_doesnotexist000", None)],
)  # fmt: skip
async def test_a_garbage_or_unknown_cursor_is_422(
    service: TestClient, route: str, cursor: str, words: str | None
) -> None:
    response = await service.get(route, params={"cursor": cursor}, headers=AUTH)

    body = await assert_problem(response, 422, "invalid_request")
    assert body["errors"][0]["field"] == "cursor"
    assert (words or "") in body["errors"][0]["message"]


@pytest.mark.parametrize("sale_id", ["   ", "x" * 65])
async def test_a_blank_or_overlong_sale_id_filter_is_422(service: TestClient, sale_id: str) -> None:
    response = await service.get("/v1/labels", params={"sale_id": sale_id}, headers=AUTH)

    body = await assert_problem(response, 422, "invalid_request")
    assert body["errors"][0]["field"] == "sale_id"


# --- credentials and request ids that are not text ------------------------------------------------


@pytest.mark.parametrize(
    "authorization", [b"Bearer \xff\xfe", b"Bearer " + TOKEN.encode() + b"\xc3", b"\xff \xff"]
)
async def test_a_bearer_token_that_is_not_utf8_is_401(
    service: TestClient, authorization: bytes
) -> None:
    answer = await send_raw(
        service, b"GET /v1/carriers HTTP/1.1\r\nAuthorization: " + authorization
    )

    raw_problem(answer, 401, "unauthorized")
    assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "given",
    ["ab\tcd", "é-accent", "a" * 129, "id with spaces", "semi;colon", "tail\t"],
)
async def test_an_untame_request_id_is_replaced_by_a_generated_one(
    service: TestClient, given: str
) -> None:
    answer = await send_raw(
        service, b"GET /healthz HTTP/1.1\r\nX-Request-Id: " + given.encode("utf-8")
    )

    assert answer.status == 200
    generated = answer.headers["x-request-id"]
    assert generated != given
    assert len(generated) == 32
    assert all(c in "0123456789abcdef" for c in generated)


async def test_a_tame_request_id_is_echoed(service: TestClient) -> None:
    response = await service.get("/healthz", headers={"X-Request-Id": "req-42.a:b_c"})

    assert response.headers["X-Request-Id"] == "req-42.a:b_c"


# --- the webhook: no account probing, no 500 on odd credentials -----------------------------------


async def test_an_unknown_account_is_answered_exactly_like_a_wrong_credential(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path
) -> None:
    client: TestClient = await aiohttp_client(
        create_app(acme_settings(tmp_path, sandbox_url, HEADER_ACCOUNT, cin7_url=cin7_url))
    )
    wrong = {"X-Hook-Key": "nope"}

    answers = [
        await client.post("/v1/webhooks/cin7/acme", json=PACKED, headers=wrong),
        await client.post("/v1/webhooks/cin7/nobody", json=PACKED, headers=wrong),
        await client.post("/v1/webhooks/cin7/nobody", json=PACKED),
        await client.post("/v1/webhooks/cin7/acme", json=PACKED),
    ]

    bodies = []
    for response in answers:
        body = await assert_problem(response, 401, "unauthorized")
        bodies.append({k: v for k, v in body.items() if k != "request_id"})
        assert response.headers["WWW-Authenticate"] == answers[0].headers["WWW-Authenticate"]
    assert all(body == bodies[0] for body in bodies)
    assert "acme" not in bodies[0]["detail"]


@pytest.mark.parametrize(
    ("config", "header"),
    [
        ("", b"Authorization: Bearer \xff" + HOOK_TOKEN.encode()),
        (BASIC_ACCOUNT, b"Authorization: Basic \xff\xfe=="),
        (BASIC_ACCOUNT, b"Authorization: Basic " + base64.b64encode(b"cin7:\xff\xfe")),
        (HEADER_ACCOUNT, b"X-Hook-Key: hook-value-\xff0123456789"),
    ],
)
async def test_a_webhook_credential_that_is_not_utf8_is_401(
    aiohttp_client: Any, make_automated: MakeService, sandbox_url: str, cin7_url: str,
    tmp_path: Path, config: str, header: bytes,
) -> None:  # fmt: skip
    if config:
        client: TestClient = await aiohttp_client(
            create_app(acme_settings(tmp_path, sandbox_url, config, cin7_url=cin7_url))
        )
        url = b"/v1/webhooks/cin7/acme"
    else:
        client, url = await make_automated(RATESVC_AUTOSHIP="off"), WEBHOOK_URL.encode()

    answer = await send_raw(
        client,
        b"POST " + url + b" HTTP/1.1\r\nContent-Type: application/json\r\n" + header,
        b'{"EventType": "Sale/PackAuthorised", "SaleID": "s-1"}',
    )

    raw_problem(answer, 401, "unauthorized")


# --- ids and package types: the caller's mistakes, found before any upstream call -----------------


@pytest.mark.parametrize("route", ["/v1/rates", "/v1/labels"])
@pytest.mark.parametrize(("field", "value"), [("sale_id", "   "), ("task_id", " \t ")])
async def test_a_blank_sale_or_task_id_is_422_without_calling_cin7(
    sale_service: TestClient, cin7_sandbox: Cin7Sandbox, route: str, field: str, value: str
) -> None:
    body: dict[str, Any] = {"sale_id": "sale-simple", field: value}
    if route == "/v1/labels":
        body |= {"carrier_code": "ups", "service_code": "ups_ground"}

    response = await sale_service.post(route, json=body, headers=AUTH)

    problem = await assert_problem(response, 422, "invalid_request")
    assert problem["errors"] == [{"field": field, "message": "must not be blank"}]
    assert cin7_sandbox.counters()["calls"] == {}


async def test_a_blank_quote_id_is_422(service: TestClient) -> None:
    response = await service.post("/v1/labels", json={"quote_id": "  "}, headers=AUTH)

    problem = await assert_problem(response, 422, "invalid_request")
    assert problem["errors"][0]["field"] == "quote_id"


def getrates_calls(sandbox: ShipStationSandbox) -> int:
    return sum(v for k, v in sandbox.carrier_calls.items() if k.startswith("getrates"))


async def test_an_unknown_package_code_is_422_from_the_catalogue_when_rating(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    packages = [PARCEL, {**PARCEL, "package_code": "no_such_box"}]
    body = {"shipment": {"ship_to": TO, "packages": packages}}

    response = await service.post("/v1/rates", json=body, headers=AUTH)

    problem = await assert_problem(response, 422, "invalid_request")
    (error,) = problem["errors"]
    assert error["field"] == "shipment.packages[1].package_code"
    assert "no_such_box" in error["message"]
    assert getrates_calls(sandbox) == 0


async def test_a_package_code_some_carriers_know_rates_those_carriers(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    carriers = (await (await service.get("/v1/carriers", headers=AUTH)).json())["carriers"]
    known = {c["carrier_code"] for c in carriers
             if any(p["package_code"] == "flat_rate_envelope" for p in c["packages"])}  # fmt: skip
    assert known and known != {c["carrier_code"] for c in carriers}
    envelope = {**PARCEL, "package_code": "flat_rate_envelope"}
    body = {"shipment": {"ship_to": TO, "packages": [envelope]}}

    response = await service.post("/v1/rates", json=body, headers=AUTH)
    rated = await response.json()

    assert response.status == 200, rated
    assert {q["carrier_code"] for q in rated["quotes"]} <= known
    assert rated["errors"] == []


async def test_an_unknown_package_code_is_422_when_buying(
    service: TestClient, sandbox: ShipStationSandbox
) -> None:
    body = {"carrier_code": "ups", "service_code": "ups_ground", "package_code": "no_such_box",
            "shipment": {"ship_to": TO, "packages": [PARCEL]}}  # fmt: skip

    response = await service.post("/v1/labels", json=body, headers=AUTH)

    problem = await assert_problem(response, 422, "invalid_request")
    assert problem["errors"][0]["field"] == "package_code"
    assert "no_such_box" in problem["errors"][0]["message"]
    assert not any(k.startswith("createlabel") for k in sandbox.calls)


# --- only a rate limit's 503 says when to come back (see test_rates, test_carriers) ---


async def test_an_outage_503_has_no_retry_after(
    aiohttp_client: Any, make_settings: Callable[..., Settings], sandbox: ShipStationSandbox
) -> None:
    client = await aiohttp_client(create_app(make_settings()))
    await client.get("/v1/carriers", headers=AUTH)
    sandbox.knobs.error_rate["*"] = 1.0

    response = await client.post(
        "/v1/rates", json={"shipment": {"ship_to": TO, "packages": [PARCEL]}}, headers=AUTH
    )

    problem = await assert_problem(response, 503, "upstream_unavailable")
    assert "Retry-After" not in response.headers
    assert "retry_after_s" not in problem
