"""Bad requests get a 4xx problem+json with a stable code on every route; never a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from ratesvc.api.middlewares import _Unmatched, add_route
from ratesvc.api.problems import decode_body
from ratesvc.app import create_app
from ratesvc.config import Settings
from ratesvc.models import Address, Weight
from tests.conftest import AUTH

ROUTES = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
          ("GET", "/openapi.json"), ("GET", "/v1/carriers")]  # fmt: skip


async def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    assert body["type"] == "about:blank"
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_wrong_method_is_405_on_every_route(
    service: TestClient, method: str, path: str
) -> None:
    response = await service.request("DELETE", path, headers=AUTH)

    body = await assert_problem(response, 405, "method_not_allowed")
    assert method in response.headers["Allow"]
    assert method in body["detail"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_an_oversized_body_is_413_on_every_route(
    service: TestClient, method: str, path: str
) -> None:
    response = await service.request(method, path, data=b"x" * (1024 * 1024 + 1), headers=AUTH)

    await assert_problem(response, 413, "payload_too_large")


async def test_an_unknown_path_is_404(service: TestClient) -> None:
    await assert_problem(await service.get("/v1/nothing", headers=AUTH), 404, "not_found")


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Bearer wrong-token-0123456789"],
)
async def test_v1_routes_need_a_known_bearer_token(
    service: TestClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = await service.get("/v1/carriers", headers=headers)

    await assert_problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_operations_routes_need_no_token(service: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await service.get(path)).status == 200


class _Probe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    address: Address
    weights: list[Weight]


@pytest.fixture
async def decoding(aiohttp_client: Any, make_settings: Callable[..., Settings]) -> TestClient:
    """The service with one extra route that decodes a body the way every JSON route does."""

    async def echo(request: web.Request) -> web.Response:
        probe = await decode_body(request, _Probe)
        return web.Response(body=msgspec.json.encode(probe), content_type="application/json")

    app = create_app(make_settings())
    add_route(app, "POST", "/v1/echo", echo)
    client: TestClient = await aiohttp_client(app)
    return client


GOOD = {"address": {"country": " us ", "postal_code": "02110", "city": " Boston "},
        "weights": [{"value": 3.5, "unit": "oz"}]}  # fmt: skip


async def test_a_valid_body_is_decoded_and_trimmed(decoding: TestClient) -> None:
    response = await decoding.post("/v1/echo", json=GOOD, headers=AUTH)
    body = await response.json()

    assert response.status == 200
    assert body["address"]["country"] == "US"
    assert body["address"]["city"] == "Boston"
    assert body["address"]["postal_code"] == "02110"


@pytest.mark.parametrize(
    ("data", "content_type"),
    [(b"{not json", "application/json"), (b"", "application/json"),
     (b'{"address": 1}', "text/plain")],
)  # fmt: skip
async def test_a_body_that_is_not_json_is_400(
    decoding: TestClient, data: bytes, content_type: str
) -> None:
    response = await decoding.post(
        "/v1/echo", data=data, headers={**AUTH, "Content-Type": content_type}
    )

    await assert_problem(response, 400, "malformed_json")


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"weights": [{"value": 0, "unit": "oz"}]}, "weights[0].value", "> 0"),
        ({"weights": [{"value": -1, "unit": "oz"}]}, "weights[0].value", "> 0"),
        ({"weights": [{"value": "3", "unit": "oz"}]}, "weights[0].value", "Expected `float`"),
        ({"weights": [{"value": 1e9, "unit": "oz"}]}, "weights[0].value", "<= 100000"),
        ({"weights": [{"value": 1, "unit": "stone"}]}, "weights[0].unit", "Invalid enum value"),
        ({"weights": [{"value": 1, "unit": "oz", "colour": "red"}]}, "weights[0].colour",
         "is not a known field"),
        ({"address": {"country": "XX", "postal_code": "1"}}, "address.country", "ISO 3166-1"),
        ({"address": {"country": "US", "postal_code": "   "}}, "address.postal_code", "blank"),
        ({"address": {"country": "US"}}, "address.postal_code", "is required"),
        ({"address": {"country": "US", "postal_code": 2110}}, "address.postal_code",
         "Expected `str`, got `int`"),
        ({"extra": True}, "extra", "is not a known field"),
    ],
)  # fmt: skip
async def test_invalid_fields_are_422_with_their_paths(
    decoding: TestClient, change: dict[str, Any], field: str, words: str
) -> None:
    response = await decoding.post("/v1/echo", json={**GOOD, **change}, headers=AUTH)

    body = await assert_problem(response, 422, "invalid_request")
    (error,) = body["errors"]
    assert error["field"] == field
    assert words in error["message"]
    assert body["detail"].startswith(field)


async def test_a_bug_is_a_500_problem_without_internals(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    async def broken(_request: web.Request) -> web.Response:
        raise KeyError("secret internals")

    app = create_app(make_settings())
    add_route(app, "GET", "/v1/broken", broken)
    client = await aiohttp_client(app)

    response = await client.get("/v1/broken", headers=AUTH)
    body = await assert_problem(response, 500, "internal_error")

    assert "secret" not in body["detail"]


# --- the edge is per route, not a middleware: what that must not change -----------------------


async def test_a_route_registered_past_the_edge_stops_start_up(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    """A handler added with ``app.router`` directly would answer without auth, request id or
    metrics: the app refuses to start rather than serve it."""

    async def naked(_request: web.Request) -> web.Response:
        return web.Response(text="no token asked")

    app = create_app(make_settings())
    app.router.add_get("/v1/naked", naked)

    with pytest.raises(RuntimeError, match="GET /v1/naked"):
        await aiohttp_client(app)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "code"),
    [
        ("DELETE", "/v1/rates", {}, 401, "unauthorized"),  # no token: nothing said of the route
        ("DELETE", "/v1/rates", AUTH, 405, "method_not_allowed"),
        ("GET", "/v1/nothing", {}, 401, "unauthorized"),
        ("GET", "/v1/nothing", AUTH, 404, "not_found"),
        ("POST", "/v1/webhooks/nothing", {}, 404, "not_found"),  # self-authenticated prefix
        ("HEAD", "/healthz", {}, 405, "method_not_allowed"),  # API routes take no HEAD
        ("GET", "/healthz/", {}, 404, "not_found"),
    ],
)  # fmt: skip
async def test_unmatched_requests_get_problems_with_the_auth_rule_of_their_path(
    service: TestClient, method: str, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    response = await service.request(method, path, headers=headers)

    if method == "HEAD":
        assert response.status == status
        assert response.headers["Allow"] == "GET"
        assert response.headers["X-Request-Id"]
    else:
        await assert_problem(response, status, code)
    text = await (await service.get("/metrics")).text()
    assert f'method="{method}",route="unmatched",status="{status}"}} 1.0' in text


@pytest.mark.parametrize(
    "request_line", [b"OPTIONS * HTTP/1.1", b"GET /a%0Ab HTTP/1.1", b"GET http://x/none HTTP/1.1"]
)
async def test_odd_request_targets_are_404_problems(
    service: TestClient, request_line: bytes
) -> None:
    """Targets no route pattern can match (``*``, a newline, absolute form) still reach the
    catch-all: a problem with a request id, not aiohttp's plain-text 404."""
    reader, writer = await asyncio.open_connection(service.server.host, service.server.port)
    writer.write(request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")

    assert head.startswith(b"HTTP/1.1 404")
    assert b"Content-Type: application/problem+json" in head
    assert b"X-Request-Id: " in head
    assert json.loads(body)["code"] == "not_found"


async def test_the_console_answers_head_and_its_404s_through_the_edge(service: TestClient) -> None:
    head = await service.head("/console/")
    missing = await service.get("/console/nope.js")

    assert head.status == 200
    assert head.headers["X-Request-Id"]
    assert missing.status == 404
    assert missing.content_type == "application/problem+json"
    assert missing.headers["X-Request-Id"]
    text = await (await service.get("/metrics")).text()
    assert 'method="HEAD",route="/console/",status="200"} 1.0' in text
    assert 'method="GET",route="/console/{path}",status="404"} 1.0' in text


@pytest.mark.parametrize("path", ["/", "/{name}", "/a{name}"])
async def test_a_route_the_catch_all_would_hide_stops_start_up(
    aiohttp_client: Any, make_settings: Callable[..., Settings], path: str
) -> None:
    """Resources indexed under ``/`` are tried in registration order: one added after the
    catch-all would never answer."""

    async def hidden(_request: web.Request) -> web.Response:
        return web.Response(text="never")

    app = create_app(make_settings())
    add_route(app, "GET", path, hidden)

    with pytest.raises(RuntimeError, match="never reached"):
        await aiohttp_client(app)


async def test_a_route_added_after_create_app_under_its_own_prefix_is_reached(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    async def extra(_request: web.Request) -> web.Response:
        return web.Response(text="reached")

    app = create_app(make_settings())
    add_route(app, "GET", "/v1/extra/{name}", extra)
    client = await aiohttp_client(app)

    response = await client.get("/v1/extra/x", headers=AUTH)
    assert (response.status, await response.text()) == (200, "reached")
    assert response.headers["X-Request-Id"]
    await assert_problem(await client.get("/v1/extra/x"), 401, "unauthorized")


async def test_the_catch_all_names_one_url_and_refuses_to_be_mounted_under_a_prefix() -> None:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response()

    catch_all = _Unmatched(handler)

    assert str(catch_all.url_for()) == "/"
    with pytest.raises(RuntimeError, match="cannot be mounted under '/sub'"):
        catch_all.add_prefix("/sub")
