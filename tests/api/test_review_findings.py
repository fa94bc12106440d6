"""Findings of the hostile review of issue 9 (API edge, memory, Cin7 Core, OpenAPI), kept as
regression tests: each failed on the reviewed commit; each docstring says how."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.app import create_app
from ratesvc.config import ConfigError, Settings, load_settings
from ratesvc.sandbox.cin7 import Cin7Sandbox
from tests.api.test_client_input import send_raw
from tests.api.test_labels import label_of, until
from tests.conftest import AUTH, HOOK_TOKEN, TOKEN, service_env

TO = {"name": "A. Customer", "street1": "350 5th Ave", "city": "New York", "state": "NY",
      "postal_code": "10118", "country": "US"}  # fmt: skip
SHIPMENT = {"shipment": {"ship_to": TO, "packages": [{"weight": {"value": 3, "unit": "lb"}}]}}


def _env(**extra: str) -> dict[str, str]:
    return service_env("http://127.0.0.1:9", Path("/tmp/ratesvc-review3"), **extra)


# --- configuration: a bad value is a ConfigError line, never a traceback ----------------------


@pytest.mark.parametrize("zone", ["America", "Europe", "Etc", "x" * 300])
def test_a_time_zone_that_is_a_directory_or_too_long_is_a_config_error(zone: str) -> None:
    """README: 'A bad or missing value stops the service with one line per problem'. ZoneInfo
    raises IsADirectoryError / OSError for these, which _Reader.timezone does not catch."""
    with pytest.raises(ConfigError):
        load_settings(_env(RATESVC_TIMEZONE=zone))


def test_a_huge_integer_in_the_toml_file_is_a_config_error(tmp_path: Path) -> None:
    """float(int) overflows for a 400-digit TOML integer: OverflowError, not ConfigError."""
    config = tmp_path / "ratesvc.toml"
    config.write_text(
        "[service]\n"
        "request_deadline_s = " + "9" * 400 + "\n"
        "[accounts.acme]\n"
        'api_tokens = ["acme-token-0123456789"]\n'
        'shipstation = { api_key = "k", api_secret = "s" }\n'
    )
    with pytest.raises(ConfigError):
        load_settings({"RATESVC_CONFIG": str(config)})


def test_an_over_long_integer_in_the_toml_file_is_a_config_error(tmp_path: Path) -> None:
    """tomllib raises ValueError (int() digit limit), not TOMLDecodeError, for a 5000-digit
    integer: load_settings lets it through as a traceback."""
    config = tmp_path / "ratesvc.toml"
    config.write_text("[service]\nport = " + "1" * 5000 + "\n")
    with pytest.raises(ConfigError):
        load_settings({"RATESVC_CONFIG": str(config)})


# --- quote ids: the str-digits trap in the quote index ---------------------------------------


@pytest.mark.parametrize("suffix", ["-1", "٠", " 0", "0_0", "+0"])
async def test_a_quote_id_with_a_non_canonical_index_is_unknown(
    service: TestClient, suffix: str
) -> None:
    """QuoteStore.get parses the index with int(index, 16): '-1' (the last quote), Arabic digits,
    spaces, '_' and '+' all name a real quote under an id that was never handed out (DESIGN.md
    traps: parse numbers with a regex on [0-9])."""
    answer = await (await service.post("/v1/rates", json=SHIPMENT, headers=AUTH)).json()
    first = answer["quotes"][0]["quote_id"]
    alias = first[:-1] + suffix  # every answer has < 16 quotes here: the index is one hex digit
    response = await service.get(f"/v1/quotes/{alias}", headers=AUTH)
    assert response.status == 404, await response.text()


# --- the shipping charge of a voided label stays on the sale's invoice ---------------------------


async def test_voiding_a_written_back_label_leaves_its_shipping_charge_on_the_invoice(
    invoicing: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    """Issue 9: 'nothing wrong ever lands on the sale'; API.md: after a void 'the correction is
    written there too'. The correction clears the voided tracking but not the invoice charge,
    so a relabel bills the customer's shipping twice."""
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    first = await (await invoicing.post("/v1/labels", json=body, headers=AUTH)).json()

    async def done(label_id: str) -> bool:
        return (await label_of(invoicing, label_id))["status"] == "completed"

    await until(lambda: done(first["label_id"]))
    voided = await invoicing.post(f"/v1/labels/{first['label_id']}/void", headers=AUTH)
    assert voided.status == 200, await voided.text()
    second: dict[str, Any] = {}

    async def relabelled() -> bool:  # once the void's correction has cleared the tracking
        nonlocal second
        second = await (await invoicing.post("/v1/labels", json=body, headers=AUTH)).json()
        return "label_id" in second or second.get("code") != "already_shipped"

    await until(relabelled)
    assert "label_id" in second, second
    await until(lambda: done(second["label_id"]))
    await asyncio.sleep(0.5)  # let the void correction job run too

    charges = cin7_sandbox.invoices["sale-simple"][0]["AdditionalCharges"]
    assert [c["Comment"] for c in charges] == [second["label_id"]], charges


# --- memory: the quote memo does not count its keys ---------------------------------------------


def _deep_size(value: object) -> int:
    if isinstance(value, tuple | list):
        return sys.getsizeof(value) + sum(_deep_size(item) for item in value)
    if isinstance(value, str):
        return sys.getsizeof(value)
    return 0  # ints, ids, enums: negligible here


async def test_the_quote_memo_stays_within_its_byte_budget_whatever_the_services_list(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    """README 'Memory is bounded whatever the traffic: everything kept in memory has a byte
    budget'. The memo key holds the request's ``services`` list (up to 200 codes of 100
    characters) but _Memo.put sizes only the quotes, errors and legs: a client varying that list
    makes a new memo entry per request whose key is uncounted and many times its estimate."""
    client: TestClient = await aiohttp_client(
        create_app(make_settings(RATESVC_QUOTE_STORE_MAX_BYTES="1MiB"))
    )
    budget = (1 << 20) // 8
    for n in range(120):
        services = ["ups_ground"] + [f"x{n:04d}{i:03d}".ljust(100, "z") for i in range(199)]
        body = {**SHIPMENT, "carriers": ["ups"], "services": services}
        response = await client.post("/v1/rates", json=body, headers=AUTH)
        assert response.status == 200, await response.text()
    rater = client.app[keys.RATER]
    held_keys = sum(_deep_size(key) for key in rater._made._items._entries)
    assert rater.memo_bytes <= budget
    assert held_keys <= budget, (
        f"memo keys really hold {held_keys} bytes; the memo's estimate is {rater.memo_bytes} "
        f"of a {budget}-byte budget"
    )


# --- a body whose Content-Encoding it does not honour is a 500 -----------------------------------


@pytest.mark.parametrize(
    ("path", "encoding"),
    [("/v1/rates", "gzip"), ("/v1/rates", "deflate"), ("/v1/labels", "gzip")],
)
async def test_a_body_that_is_not_in_its_content_encoding_is_a_4xx_problem(
    service: TestClient, path: str, encoding: str
) -> None:
    """Issue 9 point 9 / API.md: client input never makes a 5xx. aiohttp decompresses request
    bodies itself; a body that is not what Content-Encoding says raised RequestPayloadError from
    request.read(), which the edge middleware turned into 500 internal_error."""
    head = (
        f"POST {path} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Encoding: {encoding}"
    ).encode()
    answer = await send_raw(service, head, b'{"not": "compressed"}')
    assert 400 <= answer.status < 500, answer.body
    if encoding == "gzip":  # read by the handler: our problem; a deflate body may already fail
        # in aiohttp's parser, which answers its own plain-text 400 (README: known limits)
        assert answer.headers["content-type"] == "application/problem+json"
        assert b'"code":"malformed_json"' in answer.body


async def test_a_webhook_body_that_is_not_in_its_content_encoding_is_a_4xx_problem(
    make_automated: Any,
) -> None:
    client = await make_automated()
    head = (
        f"POST /v1/webhooks/cin7/default HTTP/1.1\r\nAuthorization: Bearer {HOOK_TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Encoding: gzip"
    ).encode()
    answer = await send_raw(client, head, b'{"EventType": "Sale/PackAuthorised"}')
    assert 400 <= answer.status < 500, answer.body
