"""What the hostile review of the operator routes found, kept as specifications: each failed on
the code it reviewed."""

from __future__ import annotations

import asyncio
import base64
import shlex
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.operator.webhook_state import judge
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.upstreams.cin7 import wire
from tests.conftest import AUTH, MakeService


@pytest.fixture
async def bench(make_labelling: MakeService) -> TestClient:
    return await make_labelling(RATESVC_LABEL_SETTLE_S="0", RATESVC_CIN7_THROTTLE_PAUSE_S="0.1",
                                RATESVC_REQUEST_DEADLINE_S="1")  # fmt: skip


async def ready(client: TestClient, query: str = "") -> tuple[int, dict[str, Any]]:
    response = await client.get(f"/v1/sales?ready=true{query}", headers=AUTH)
    return response.status, await response.json()


# --- F1: a ready page outlasts the request deadline ---------------------------------------------


async def test_f1_a_ready_page_answers_within_the_request_deadline(
    bench: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    """RATESVC_REQUEST_DEADLINE_S=1, but the page waits WAIT_S (3 s) for slow sale reads on top
    of the list read: the client hears nothing for 3 s."""
    cin7_sandbox.sale_reads.clear()  # Cin7 Core slow on sale reads
    loop = asyncio.get_running_loop()
    started = loop.time()

    status, _ = await ready(bench)

    elapsed = loop.time() - started
    cin7_sandbox.sale_reads.set()
    assert status == 200
    assert elapsed <= 1.0 + 0.5, f"the page took {elapsed:.1f} s with a 1 s request deadline"


# --- F2: the sale's label is not the listed fulfilment's label ----------------------------------


async def test_f2_the_listed_label_belongs_to_the_listed_fulfilment(
    bench: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    """An advanced sale: fulfilment 1 labelled by ratesvc and shipped, fulfilment 2 packed and
    waiting. The ready list names task 2 but shows task 1's (completed) label as the sale's
    label; the console's sale screen (labels by sale_id, first live one) then shows that label,
    offers Void on it and no rates at all for the fulfilment actually waiting."""
    body = {"sale_id": "sale-multibox", "carrier_code": "fedex", "service_code": "fedex_ground",
            "write_back": False}  # fmt: skip
    response = await bench.post("/v1/labels", json=body, headers=AUTH)
    label = await response.json()
    assert response.status == 201, label
    first = cin7_sandbox.fulfilment("sale-multibox")
    first["Ship"]["Status"] = "AUTHORISED"  # fulfilment 1 shipped
    cin7_sandbox.add_fulfilment("sale-multibox", [("p-flour", 1, "Carton A")])  # 2 packed

    status, page = await ready(bench)
    assert status == 200, page
    (sale,) = [s for s in page["sales"] if s["sale_id"] == "sale-multibox"]

    assert sale["task_id"] == "task-sale-multibox-2"
    assert sale["label_id"] is None or label["task_id"] == sale["task_id"], (
        f"ready list shows label {sale['label_id']} of {label['task_id']} "
        f"for fulfilment {sale['task_id']}"
    )


# --- F3: repeated / forged query parameters ----------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["&limit=5&limit=1000", "&ready=false", "&cursor=sl_MDox&cursor=garbage"],
)
async def test_f3_a_repeated_parameter_is_refused_not_silently_first_wins(
    bench: TestClient, query: str
) -> None:
    status, body = await ready(bench, query)
    assert status == 422, body


def _cursor(raw: str) -> str:
    return "sl_" + base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# a cursor whose sale left the list goes on at its offset (the list moves); past the end it is
# nobody's cursor
@pytest.mark.parametrize("raw", ["999999:no-such-sale", "7:someone-elses-sale"])
async def test_f3_a_forged_cursor_is_422_not_an_empty_last_page(
    bench: TestClient, raw: str
) -> None:
    """/v1/labels refuses a cursor naming nothing of the account (check_cursor: 'never an empty
    page that looks like the end of the list'); /v1/sales answers 200 with an empty final page
    for any syntactically valid cursor, whoever made it (no account binding either)."""
    status, body = await ready(bench, f"&cursor={_cursor(raw)}")
    assert status == 422, body


# --- F4: the webhook fix command ----------------------------------------------------------------


async def test_f4_the_fix_command_is_not_built_from_the_request_host_header(
    bench: TestClient,
) -> None:
    """The 'none found' fix subscribes Cin7 Core to whatever Host (and scheme) the request came
    with: behind a TLS proxy that is http://<internal>; with a crafted Host it is any server."""
    response = await bench.get("/v1/status", headers={**AUTH, "Host": "attacker.example"})
    body = await response.json()
    assert response.status == 200, body
    assert "attacker.example" not in (body["webhook"]["fix"] or ""), body["webhook"]


def test_f4_the_fix_command_quotes_the_url_it_got_from_cin7_core() -> None:
    """An inactive webhook's fix pastes Cin7 Core's ExternalURL into a shell command unquoted."""
    url = "https://x.example/a;touch${IFS}/tmp/pwned;#/v1/webhooks/cin7/default"
    hook = wire.Webhook(Type="Sale/PackAuthorised", IsActive=False, ExternalURL=url)

    state = judge([hook], "default", "https://ratesvc.example")

    assert state.state == "inactive"
    assert state.fix is not None
    # in a shell, ';' ends the command: the URL must reach the shell quoted
    assert state.fix.endswith("--url " + shlex.quote(url)), state.fix
