"""What the model-based test (``test_lifecycle_model.py``) found, as plain tests through HTTP.

Each test is one shrunk failing interleaving, written out by hand so it reads without Hypothesis;
its docstring tells the interleaving and what the contract (``shared/API.md``) expects instead.
They run against both sandboxes with the automation settings of ``tests/conftest.py`` (settle time
0, write-back retries every 0.05 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.api.test_labels import label_of, until
from tests.automation.test_automation import pack_payload
from tests.conftest import AUTH, HOOK, WEBHOOK_URL, MakeService

SALE = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}


async def post_label(
    client: TestClient, body: dict[str, Any], key: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    response = await client.post("/v1/labels", json=body, headers=headers)
    payload: dict[str, Any] = await response.json()
    return response.status, payload


async def status_of(client: TestClient, label_id: str) -> str:
    return str((await label_of(client, label_id))["status"])


def tracking_on_sale(cin7: Cin7Sandbox, sale_id: str) -> set[str]:
    lines = cin7.fulfilment(sale_id)["Ship"]["Lines"]
    return {line["TrackingNumber"] for line in lines if line["TrackingNumber"]}


def voided_tracking(shipstation: ShipStationSandbox) -> set[str]:
    return {s["trackingNumber"] for s in shipstation.shipments.values() if s["voided"]}


async def never(bad: Callable[[], Awaitable[str | None]], seconds: float = 2.0) -> None:
    """Watch (bounded) that ``bad`` stays None: it says what went wrong when it does not."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        problem = await bad()
        assert problem is None, problem
        await asyncio.sleep(0.02)


async def rate(client: TestClient, sale_id: str) -> str:
    response = await client.post("/v1/rates", json={"sale_id": sale_id}, headers=AUTH)
    assert response.status == 200, await response.text()
    quote_id: str = (await response.json())["quotes"][0]["quote_id"]
    return quote_id


# --- one fulfilment, one label ----------------------------------------------------------------


async def test_a_second_key_for_a_fulfilment_whose_write_back_fails_is_refused_not_bought(
    make_automated: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Cin7 Core writes fail; ``POST /v1/labels`` for the sale with ``Idempotency-Key: a`` buys a
    label (its write-back keeps failing, so Cin7 Core shows no tracking); the same request with
    key ``b``, then with no key, each bought another label for the same fulfilment. A sale label
    claims the fulfilment as well as the key: both are 409 ``already_labelled`` naming the first
    label, and ShipStation sold one label."""
    client = await make_automated()
    cin7_sandbox.knobs.writes_down = True

    status, first = await post_label(client, SALE, key="a")
    assert status == 201, first
    answers = [await post_label(client, SALE, key="b"), await post_label(client, SALE)]

    for status, problem in answers:
        assert (status, problem.get("code")) == (409, "already_labelled"), problem
        assert problem["label_id"] == first["label_id"]
    assert len(sandbox.shipments) == 1


async def test_two_keys_for_one_fulfilment_at_the_same_time_buy_one_label(
    make_automated: MakeService, sandbox: ShipStationSandbox
) -> None:
    """Two ``POST /v1/labels`` for the same sale arrive together, one with no key and one with
    ``Idempotency-Key: a``: both read the sale (not shipped yet), both answered 201, and two
    labels were bought for one fulfilment. One is bought (201); the other is 409
    ``already_labelled`` naming it."""
    client = await make_automated()

    answers = await asyncio.gather(post_label(client, SALE), post_label(client, SALE, key="a"))

    assert sorted(status for status, _ in answers) == [201, 409], answers
    (bought,) = [label for status, label in answers if status == 201]
    (refused,) = [problem for status, problem in answers if status == 409]
    assert refused["code"] == "already_labelled"
    assert refused["label_id"] == bought["label_id"]
    assert len(sandbox.shipments) == 1


async def test_a_person_cannot_label_again_what_automation_bought(
    make_automated: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Cin7 Core writes fail; a ``Sale/PackAuthorised`` webhook makes automation buy the sale's
    label (its write-back keeps failing); a person then calls ``POST /v1/labels`` for the same
    sale with an ``Idempotency-Key``: a second label was bought. It must be 409
    ``already_labelled`` naming automation's label."""
    client = await make_automated()
    cin7_sandbox.knobs.writes_down = True
    response = await client.post(
        WEBHOOK_URL, json=pack_payload(cin7_sandbox, "sale-simple"), headers=HOOK
    )
    assert response.status == 202

    async def automation_bought() -> bool:
        page = await (await client.get("/v1/labels?sale_id=sale-simple", headers=AUTH)).json()
        return any(label["status"] == "write_back_failed" for label in page["labels"])

    await until(automation_bought)
    page = await (await client.get("/v1/labels?sale_id=sale-simple", headers=AUTH)).json()
    (automated,) = page["labels"]

    status, problem = await post_label(client, SALE, key="by-hand")

    assert (status, problem.get("code")) == (409, "already_labelled"), problem
    assert problem["label_id"] == automated["label_id"]
    assert len(sandbox.shipments) == 1


# --- replays are answered from the ledger -----------------------------------------------------


@pytest.mark.parametrize("key", ["k-1", None])
async def test_a_replay_after_the_write_back_shipped_the_sale_is_the_same_label(
    make_automated: MakeService, sandbox: ShipStationSandbox, key: str | None
) -> None:
    """``POST /v1/labels`` for a sale (with a key, or with none: the fulfilment is the key) →
    201; the write-back completes, so Cin7 Core shows the fulfilment shipped; the same request
    again answered 409 ``already_shipped`` because the sale was read before the ledger. A replay
    is answered from the ledger alone: 200 with the same label, nothing bought."""
    client = await make_automated()
    status, first = await post_label(client, SALE, key=key)
    assert status == 201, first

    async def completed() -> bool:
        return await status_of(client, first["label_id"]) == "completed"

    await until(completed)
    status, again = await post_label(client, SALE, key=key)

    assert (status, again.get("label_id")) == (200, first["label_id"]), again
    assert len(sandbox.shipments) == 1


async def test_a_replay_by_quote_after_a_restart_is_the_same_label(
    make_automated: MakeService, sandbox: ShipStationSandbox
) -> None:
    """Rate a sale, buy its quote (``Idempotency-Key: k``, no write-back) → 201; restart the
    service on the same data directory; the same request answered 404 "no quote" (quotes live in
    memory). A replay is answered from the ledger, after a restart too: 200, the same label."""
    client = await make_automated()
    body = {"quote_id": await rate(client, "sale-simple"), "write_back": False}
    status, first = await post_label(client, body, key="k")
    assert status == 201, first
    await client.close()

    restarted = await make_automated()
    status, again = await post_label(restarted, body, key="k")

    assert (status, again.get("label_id")) == (200, first["label_id"]), again
    assert len(sandbox.shipments) == 1


async def test_a_replay_by_quote_after_the_quote_expired_is_the_same_label(
    make_automated: MakeService, sandbox: ShipStationSandbox
) -> None:
    """Quotes live 1 s. Rate a sale, buy its quote (no key, no write-back) → 201; the quote
    expires; the same request answered 410 ``quote_expired``. A replay does not look at the quote:
    200 with the same label."""
    client = await make_automated(RATESVC_QUOTE_TTL_S="1")
    quote_id = await rate(client, "sale-simple")
    body = {"quote_id": quote_id, "write_back": False}
    status, first = await post_label(client, body)
    assert status == 201, first

    async def expired() -> bool:
        return (await client.get(f"/v1/quotes/{quote_id}", headers=AUTH)).status == 410

    await until(expired)
    status, again = await post_label(client, body)

    assert (status, again.get("label_id")) == (200, first["label_id"]), again
    assert len(sandbox.shipments) == 1


# --- unknown outcomes are reconciled, whatever the attempt count ----------------------------------


@pytest.mark.parametrize("last", ["lost_after_buy", "drop_after_buy"])
async def test_a_label_bought_on_the_last_attempt_is_found_not_forgotten(
    make_automated: MakeService, sandbox: ShipStationSandbox, last: str
) -> None:
    """ShipStation fails ``createlabel`` four times before buying (each is reconciled: not
    there, bought again), then on the fifth attempt buys the label and the answer is lost (a 500,
    or a dropped connection as a time-out sees it). The label went to ``attention`` with that
    package ``unknown``/``pending`` and no shipment: a label ShipStation sold, forgotten (never
    voided, free to be bought again). An unknown outcome stays unknown until reconciled against
    ShipStation's shipment list, whatever the attempt count: the label ends up knowing the
    shipment."""
    client = await make_automated()
    sandbox.knobs.createlabel_faults = ["error_before_buy"] * 4 + [last]

    status, label = await post_label(client, {**SALE, "write_back": False})

    assert status in (200, 201), label
    (shipment,) = sandbox.shipments.values()

    async def known() -> bool:
        (package,) = (await label_of(client, label["label_id"]))["packages"]
        return bool(package["shipment_id"] == shipment["shipmentId"])

    await until(known)
    (package,) = (await label_of(client, label["label_id"]))["packages"]
    assert package["state"] == "bought"
    assert package["tracking_number"] == shipment["trackingNumber"]


# --- void and write-back ------------------------------------------------------------------------


async def test_a_label_voided_while_its_write_back_waits_never_reaches_the_sale(
    make_automated: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Cin7 Core writes fail; buy a sale's label (its write-back fails and waits to be retried);
    void it (200, ``voided``); Cin7 Core recovers; the waiting write-back then put the voided
    tracking number (and PDF) on the sale. A void cancels a pending write-back: the sale never
    carries voided tracking and the label stays ``voided``. (The retry waits 30 s, so the void
    finds the write-back waiting, never in flight: one in flight is followed by its correction,
    the next test.)"""
    client = await make_automated(RATESVC_WRITEBACK_RETRY_S="30")
    cin7_sandbox.knobs.writes_down = True
    status, label = await post_label(client, SALE)
    assert status == 201, label

    async def failing() -> bool:
        return await status_of(client, label["label_id"]) == "write_back_failed"

    await until(failing)
    response = await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    assert response.status == 200, await response.text()
    cin7_sandbox.knobs.writes_down = False

    async def bad() -> str | None:
        landed = tracking_on_sale(cin7_sandbox, "sale-simple") & voided_tracking(sandbox)
        if landed:
            return f"the sale carries voided tracking {sorted(landed)}"
        current = await status_of(client, label["label_id"])
        return None if current == "voided" else f"the voided label is now {current}"

    await never(bad)


async def test_a_void_racing_the_write_back_in_flight_stays_voided_and_is_corrected(
    make_automated: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Cin7 Core answers in 0.3 s. Buy a sale's label; while its write-back is in flight (it has
    read the sale and is about to write the ship lines), void the label (200, ``voided``). The
    write-back then finished: the label flipped back from ``voided`` to ``completed`` and the sale
    kept the voided tracking. A voided label never changes status again, and a write-back already
    in flight is followed by its correction: the sale ends with no voided tracking."""
    client = await make_automated()
    status, label = await post_label(client, SALE)
    assert status == 201, label
    reads = cin7_sandbox.calls["GET /sale"]  # the purchase read the sale already
    cin7_sandbox.knobs.latency = Latency(base_ms=300)

    async def writing_back() -> bool:
        return cin7_sandbox.calls["GET /sale"] > reads

    await until(writing_back)
    response = await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    assert response.status == 200, await response.text()

    async def bad() -> str | None:
        current = await status_of(client, label["label_id"])
        if current != "voided":
            return f"the voided label is now {current}"
        return None

    await never(bad)
    cin7_sandbox.knobs.latency = Latency()

    async def corrected() -> bool:
        return not tracking_on_sale(cin7_sandbox, "sale-simple") & voided_tracking(sandbox)

    await until(corrected)


# --- what cannot be shipped is refused before anything is recorded ------------------------------


async def test_a_box_no_carrier_takes_is_a_422_and_leaves_no_label_behind(
    make_automated: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """A sale whose one box holds 2 x 60 kg: ``POST /v1/labels`` for it answered 500, left a label
    ``purchasing`` forever, and ``GET /v1/labels`` answered 500 from then on. The box is
    validated before anything is recorded: 422 naming it; nothing bought; the list still works."""
    cin7_sandbox.products["p-anvil"] = {
        "ID": "p-anvil", "Type": "Stock", "SKU": "Anvil", "Name": "Anvil 60 kg", "Weight": 60,
        "WeightUnits": "kg", "Length": 40, "Width": 20, "Height": 25, "DimensionsUnits": "cm",
    }  # fmt: skip
    address = {"Line1": "1000 SW Broadway", "City": "Portland", "State": "OR",
               "Postcode": "97205", "Country": "US", "Contact": "Noah Park"}  # fmt: skip
    cin7_sandbox.add_sale("sale-heavy", "SO-1090", "Rose City Forge", address,
                          [("p-anvil", 2, "Box 1")])  # fmt: skip
    client = await make_automated()

    status, problem = await post_label(client, {**SALE, "sale_id": "sale-heavy"})

    assert (status, problem.get("code")) == (422, "invalid_request"), problem
    assert "Box 1" in str(problem)
    listed = await client.get("/v1/labels", headers=AUTH)
    assert listed.status == 200, await listed.text()
    assert (await listed.json())["labels"] == []
    assert not sandbox.shipments
