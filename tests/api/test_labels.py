"""``/v1/labels`` through HTTP against both sandboxes: exactly once, written back, voided."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pypdf
import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.conftest import AUTH, service_env

TO = {"name": "A. Customer", "street1": "350 5th Ave", "city": "New York", "state": "NY",
      "postal_code": "10118", "country": "US", "residential": False}  # fmt: skip
PARCEL = {"weight": {"value": 3, "unit": "lb"}, "box": "Box 1",
          "dimensions": {"length": 10, "width": 8, "height": 4, "unit": "in"}}  # fmt: skip
EXPLICIT = {"carrier_code": "ups", "service_code": "ups_ground",
            "shipment": {"ship_to": TO, "packages": [PARCEL]}}  # fmt: skip


@pytest.fixture
async def labels(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path
) -> TestClient:
    env = service_env(sandbox_url, tmp_path / "data", cin7_url, RATESVC_LABEL_SETTLE_S="0",
                      RATESVC_WRITEBACK_RETRY_S="0.05", RATESVC_CIN7_MIN_INTERVAL_S="0.01",
                      RATESVC_CIN7_THROTTLE_PAUSE_S="0.1")  # fmt: skip
    client: TestClient = await aiohttp_client(create_app(load_settings(env)))
    return client


async def buy(
    client: TestClient, body: dict[str, Any], status: int = 201, key: str | None = None
) -> dict[str, Any]:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    response = await client.post("/v1/labels", json=body, headers=headers)
    payload: dict[str, Any] = await response.json()
    assert response.status == status, payload
    return payload


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Poll ``check`` (bounded) until it holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not await check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


async def label_of(client: TestClient, label_id: str) -> dict[str, Any]:
    payload: dict[str, Any] = await (
        await client.get(f"/v1/labels/{label_id}", headers=AUTH)
    ).json()
    return payload


def createlabel_calls(sandbox: ShipStationSandbox) -> int:
    return sandbox.calls["/shipments/createlabel"]


# --- buying -----------------------------------------------------------------------------------


async def test_an_explicit_shipment_is_labelled_with_a_real_pdf(
    labels: TestClient, sandbox: ShipStationSandbox
) -> None:
    label = await buy(labels, EXPLICIT)

    assert label["status"] == "completed"
    assert label["write_back"] == {"state": "not_requested", "attempts": 0, "last_error": None}
    (package,) = label["packages"]
    record = sandbox.shipments[package["shipment_id"]]
    assert package["tracking_number"] == record["trackingNumber"]
    assert (
        package["tracking_url"] == f"https://www.ups.com/track?tracknum={record['trackingNumber']}"
    )
    assert Decimal(package["cost"]) == record["shipmentCost"]
    assert label["total_cost"] == package["cost"]
    assert record["advancedOptions"]["customField1"] == f"{label['label_id']}:1"
    pdf = await labels.get(package["label_url"], headers=AUTH)
    assert pdf.content_type == "application/pdf"
    text = pypdf.PdfReader(io.BytesIO(await pdf.read())).pages[0].extract_text()
    assert package["tracking_number"] in text
    assert await label_of(labels, label["label_id"]) == label


async def test_a_quote_is_bought_as_quoted(labels: TestClient, sandbox: ShipStationSandbox) -> None:
    body = {"shipment": {"ship_to": TO, "packages": [PARCEL]}, "carriers": ["fedex"]}
    rates = await (await labels.post("/v1/rates", json=body, headers=AUTH)).json()
    quote = next(q for q in rates["quotes"] if q["service_code"] == "fedex_2day")

    label = await buy(labels, {"quote_id": quote["quote_id"]})

    assert (label["carrier_code"], label["service_code"]) == ("fedex", "fedex_2day")
    assert label["total_cost"] == quote["total"]  # no markup configured: the same money
    assert createlabel_calls(sandbox) == 1


async def test_the_same_key_and_body_returns_the_same_label_and_buys_once(
    labels: TestClient, sandbox: ShipStationSandbox
) -> None:
    first = await buy(labels, EXPLICIT, key="order-77")
    again = await buy(labels, EXPLICIT, status=200, key="order-77")
    other = await buy(labels, {**EXPLICIT, "service_code": "ups_2nd_day_air"}, status=422,
                      key="order-77")  # fmt: skip

    assert again == first
    assert other["code"] == "idempotency_key_reused"
    assert createlabel_calls(sandbox) == 1


async def test_without_a_key_each_explicit_request_is_its_own_label(
    labels: TestClient, sandbox: ShipStationSandbox
) -> None:
    a, b = await buy(labels, EXPLICIT), await buy(labels, EXPLICIT)

    assert a["label_id"] != b["label_id"]
    assert createlabel_calls(sandbox) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"quote_id": "qt_x", "carrier_code": "ups"}, "quote_id"),
        ({"carrier_code": "ups", "shipment": EXPLICIT["shipment"]}, "carrier_code"),
        ({**EXPLICIT, "sale_id": "sale-simple"}, "shipment"),
        ({**EXPLICIT, "ship_date": "2001-01-01"}, "ship_date"),
        ({**EXPLICIT, "test_label": "yes"}, "test_label"),
        ({**EXPLICIT, "colour": "red"}, "colour"),
    ],
)
async def test_bad_label_requests_are_422_and_buy_nothing(
    labels: TestClient, sandbox: ShipStationSandbox, body: dict[str, Any], field: str
) -> None:
    problem = await buy(labels, body, status=422)

    assert problem["errors"][0]["field"] == field
    assert createlabel_calls(sandbox) == 0


async def test_unknown_and_expired_quotes(labels: TestClient) -> None:
    assert (await buy(labels, {"quote_id": "qt_nope"}, status=404))["code"] == "not_found"
    long_key = await labels.post("/v1/labels", json=EXPLICIT,
                                 headers={**AUTH, "Idempotency-Key": "k" * 256})  # fmt: skip
    assert long_key.status == 422


async def test_a_refused_purchase_buys_nothing_and_frees_the_key(
    labels: TestClient, sandbox: ShipStationSandbox
) -> None:
    sandbox.label_fault = "refuse"
    label = await buy(labels, EXPLICIT, key="k1")
    sandbox.label_fault = None

    retried = await buy(labels, EXPLICIT, key="k1")

    assert label["status"] == "failed"
    assert "The address could not be validated." in label["detail"]
    assert retried["status"] == "completed"
    assert len(sandbox.shipments) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [({"carrier_code": "usps"}, "carrier_code"), ({"service_code": "ups_teleport"}, "service_code"),
     ({"package_code": "crate"}, "package_code")],
)  # fmt: skip
async def test_what_the_carrier_does_not_offer_is_refused_before_buying(
    labels: TestClient, sandbox: ShipStationSandbox, change: dict[str, str], field: str
) -> None:
    problem = await buy(labels, {**EXPLICIT, **change}, status=422)

    assert problem["errors"][0]["field"] == field
    assert createlabel_calls(sandbox) == 0


async def test_a_5xx_from_createlabel_is_checked_before_buying_again(
    aiohttp_client: Any, sandbox: ShipStationSandbox, sandbox_url: str, tmp_path: Path
) -> None:
    env = service_env(sandbox_url, tmp_path / "data", RATESVC_LABEL_SETTLE_S="0.3")
    labels = await aiohttp_client(create_app(load_settings(env)))
    await labels.get("/v1/carriers", headers=AUTH)
    sandbox.knobs.error_rate = {"ups": 1.0}
    failing = asyncio.create_task(buy(labels, EXPLICIT))
    while createlabel_calls(sandbox) < 2:  # noqa: ASYNC110 - two attempts failed, bounded below
        await asyncio.sleep(0.02)
    sandbox.knobs.error_rate = {}

    label = await asyncio.wait_for(failing, 10)

    assert label["status"] == "completed"
    assert len(sandbox.shipments) == 1
    assert sandbox.calls["/shipments"] >= 2  # looked before each new attempt


async def test_a_carrier_failing_every_time_fails_the_label_once_nothing_was_bought(
    labels: TestClient, sandbox: ShipStationSandbox
) -> None:
    """Each 5xx is reconciled against ShipStation's list before the next attempt; after five
    attempts provably bought nothing, the label is ``failed`` (nothing to void) and the
    packages say ``pending`` (not bought), never ``unknown``."""
    await labels.get("/v1/carriers", headers=AUTH)
    sandbox.knobs.error_rate = {"ups": 1.0}

    label = await buy(labels, EXPLICIT)

    assert label["status"] == "failed"
    assert "failed 5 times and bought nothing" in label["detail"]
    assert [p["state"] for p in label["packages"]] == ["pending"]
    assert createlabel_calls(sandbox) == 5
    assert not sandbox.shipments


# --- sales: exactly once, written back --------------------------------------------------------


async def test_a_multi_box_sale_gets_one_ship_line_and_one_attachment_per_box(
    labels: TestClient, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    label = await buy(labels, {"sale_id": "sale-multibox", "carrier_code": "fedex",
                               "service_code": "fedex_ground"})  # fmt: skip

    assert [p["box"] for p in label["packages"]] == ["Box 1", "Box 2"]

    async def written() -> bool:
        return (await label_of(labels, label["label_id"]))["status"] == "completed"

    await until(written)
    done = await label_of(labels, label["label_id"])
    assert done["write_back"]["state"] == "done"
    ship = cin7_sandbox.fulfilment("sale-multibox")["Ship"]
    assert ship["Status"] == "AUTHORISED"
    assert [(line["Boxes"], line["TrackingNumber"], line["Carrier"]) for line in ship["Lines"]] == [
        (p["box"], p["tracking_number"], "FedEx") for p in done["packages"]
    ]
    assert {p["tracking_number"] for p in done["packages"]} == {
        sandbox.shipments[p["shipment_id"]]["trackingNumber"] for p in done["packages"]
    }
    names = [a["FileName"] for a in cin7_sandbox.attachments["sale-multibox"]]
    assert names == [f"label-{p['tracking_number']}.pdf" for p in done["packages"]]
    money = sum(Decimal(p["cost"]) for p in done["packages"])
    assert Decimal(done["total_cost"]) == money


async def test_twenty_concurrent_identical_requests_buy_each_box_once(
    labels: TestClient, sandbox: ShipStationSandbox
) -> None:
    sandbox.set_latency(100)
    body = {"sale_id": "sale-multibox", "carrier_code": "ups", "service_code": "ups_ground"}

    answers = await asyncio.gather(*(
        labels.post("/v1/labels", json=body, headers=AUTH) for _ in range(20)
    ))  # fmt: skip
    payloads = [await a.json() for a in answers]

    assert createlabel_calls(sandbox) == 2  # two boxes
    assert sorted(a.status for a in answers) == [200] * 19 + [201]
    assert len({p["label_id"] for p in payloads}) == 1
    assert all(len(p["packages"]) == 2 for p in payloads)


async def test_a_labelled_sale_is_not_labelled_again(
    labels: TestClient, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    first = await buy(labels, {**body, "write_back": False})  # Cin7 Core does not know: we do

    other_service = await buy(labels, {**body, "service_code": "ups_2nd_day_air"}, status=409)

    assert other_service["code"] == "already_labelled"
    assert other_service["label_id"] == first["label_id"]
    assert first["label_id"] in other_service["detail"]
    assert createlabel_calls(sandbox) == 1


@pytest.mark.parametrize(("sale", "code"), [("sale-shipped", "already_shipped"),
                                            ("sale-unpacked", "sale_not_ready")])  # fmt: skip
async def test_shipped_and_unpacked_sales_are_refused(
    labels: TestClient, sandbox: ShipStationSandbox, sale: str, code: str
) -> None:
    body = {"sale_id": sale, "carrier_code": "ups", "service_code": "ups_ground"}
    problem = await buy(labels, body, status=409)

    assert problem["code"] == code
    assert createlabel_calls(sandbox) == 0


async def test_cin7_down_for_a_while_then_the_write_back_completes_once(
    labels: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    label = await buy(labels, body)  # the sale was read; now Cin7 Core goes down
    cin7_sandbox.knobs.down = True

    async def failing() -> bool:
        current = await label_of(labels, label["label_id"])
        return current["status"] == "write_back_failed" and current["write_back"]["attempts"] >= 1

    await until(failing)
    cin7_sandbox.knobs.down = False

    async def completed() -> bool:
        return (await label_of(labels, label["label_id"]))["status"] == "completed"

    await until(completed)
    assert len(cin7_sandbox.fulfilment("sale-simple")["Ship"]["Lines"]) == 1
    assert len(cin7_sandbox.attachments["sale-simple"]) == 1
    posts = [w for w in cin7_sandbox.writes if w[1] == "/sale/fulfilment/ship"]
    assert len(posts) == 1


# --- unknown outcomes -------------------------------------------------------------------------


async def test_a_lost_answer_is_reconciled_not_bought_again(
    labels: TestClient, sandbox: ShipStationSandbox
) -> None:
    sandbox.label_fault = "drop"

    label = await buy(labels, EXPLICIT)

    assert createlabel_calls(sandbox) == 1
    assert label["status"] == "completed"
    (package,) = label["packages"]
    assert package["tracking_number"] == next(iter(sandbox.shipments.values()))["trackingNumber"]
    assert package["label_url"] is None
    assert "reprint" in label["detail"]


# --- void -------------------------------------------------------------------------------------


async def test_void_then_relabel_a_sale(
    labels: TestClient, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    first = await buy(labels, body)

    async def completed(label_id: str) -> bool:
        return (await label_of(labels, label_id))["status"] == "completed"

    await until(lambda: completed(first["label_id"]))
    voided = await (await labels.post(f"/v1/labels/{first['label_id']}/void", headers=AUTH)).json()
    again = await labels.post(f"/v1/labels/{first['label_id']}/void", headers=AUTH)

    assert voided["status"] == "voided" and voided["voided_at"]
    assert sandbox.shipments[first["packages"][0]["shipment_id"]]["voided"] is True
    assert (await again.json())["code"] == "already_voided"

    async def cleared() -> bool:
        return cin7_sandbox.fulfilment("sale-simple")["Ship"]["Lines"][0]["TrackingNumber"] == ""

    await until(cleared)
    second = await buy(labels, body)
    await until(lambda: completed(second["label_id"]))
    line = cin7_sandbox.fulfilment("sale-simple")["Ship"]["Lines"][0]
    assert line["TrackingNumber"] == second["packages"][0]["tracking_number"]
    assert createlabel_calls(sandbox) == 2


async def test_a_refused_void_is_409_with_the_carrier_message(
    labels: TestClient, sandbox: ShipStationSandbox
) -> None:
    label = await buy(labels, EXPLICIT)
    sandbox.refused_voids.add(label["packages"][0]["shipment_id"])

    response = await labels.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    problem = await response.json()

    assert response.status == 409
    assert problem["code"] == "void_rejected"
    assert "already scanned" in problem["detail"]
    assert (await label_of(labels, label["label_id"]))["status"] == "completed"


async def test_labels_are_listed_newest_first_with_a_cursor(labels: TestClient) -> None:
    ids = [(await buy(labels, EXPLICIT))["label_id"] for _ in range(3)]

    first = await (await labels.get("/v1/labels", params={"limit": "2"}, headers=AUTH)).json()
    page_two = {"limit": "2", "cursor": first["next_cursor"]}
    rest = await (await labels.get("/v1/labels", params=page_two, headers=AUTH)).json()
    bad = await labels.get("/v1/labels", params={"limit": "0"}, headers=AUTH)

    assert [x["label_id"] for x in first["labels"]] == ids[::-1][:2]
    assert [x["label_id"] for x in rest["labels"]] == ids[:1]
    assert rest["next_cursor"] is None
    assert bad.status == 422
    assert (await labels.get("/v1/labels/lb_nope", headers=AUTH)).status == 404


async def buy_quoted_and_written_back(client: TestClient, sale_id: str) -> tuple[Any, Any]:
    """Rate the sale, buy its first quote, wait for the write-back; the quote and the label."""
    rates = await (await client.post(
        "/v1/rates", json={"sale_id": sale_id, "carriers": ["ups"]}, headers=AUTH
    )).json()  # fmt: skip
    quote = rates["quotes"][0]
    label = await buy(client, {"quote_id": quote["quote_id"]})

    async def completed() -> bool:
        return (await label_of(client, label["label_id"]))["status"] == "completed"

    await until(completed)
    return quote, label


async def test_the_shipping_charge_goes_on_the_draft_invoice_once_when_the_account_asks(
    invoicing: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    lines_before = list(cin7_sandbox.invoices["sale-simple"][0]["Lines"])

    quote, label = await buy_quoted_and_written_back(invoicing, "sale-simple")

    invoice = cin7_sandbox.invoices["sale-simple"][0]
    (charge,) = invoice["AdditionalCharges"]
    assert charge["Price"] == float(quote["total"])  # what the customer was quoted
    assert charge["Comment"] == label["label_id"]
    assert label["packages"][0]["tracking_number"] in charge["Description"]
    assert invoice["Lines"] == lines_before  # the rewrite kept every existing line


async def test_rewriting_the_invoice_keeps_every_field_ratesvc_does_not_model(
    invoicing: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    (invoice,) = cin7_sandbox.invoices["sale-simple"]
    invoice["AdditionalAttribute1"] = "PO 4471"  # fields ratesvc has never heard of
    invoice["Lines"][0]["CustomFields"] = {"Colour": "blue", "Batch": 7}
    handling = {"Description": "Handling", "Quantity": 1, "Price": 2.3456, "Total": 2.3456,
                "Account": "4100", "Reference": "pallet-12"}  # fmt: skip
    invoice["AdditionalCharges"].append(handling)
    before = {key: value for key, value in invoice.items() if key != "AdditionalCharges"}

    _, label = await buy_quoted_and_written_back(invoicing, "sale-simple")

    (after,) = cin7_sandbox.invoices["sale-simple"]
    assert {key: value for key, value in after.items() if key != "AdditionalCharges"} == before
    assert after["Memo"] == "Customer PO 1001-A" and after["AdditionalAttribute1"] == "PO 4471"
    assert after["Lines"][0]["CustomFields"] == {"Colour": "blue", "Batch": 7}
    assert after["Lines"][0]["TaxRule"] == "Tax Exempt"
    kept, ours = after["AdditionalCharges"]
    assert kept == handling  # the existing charge whole, its price to the last digit
    assert (ours["Comment"], ours["Quantity"]) == (label["label_id"], 1)  # Quantity is required
    ((_, _, sent),) = [w for w in cin7_sandbox.writes if w[1] == "/sale/invoice"]
    assert sent["Memo"] == before["Memo"] and sent["AdditionalCharges"][0] == handling


async def test_without_the_setting_the_invoice_is_left_alone(
    labels: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    label = await buy(labels, {"sale_id": "sale-simple", "carrier_code": "ups",
                               "service_code": "ups_ground"})  # fmt: skip

    async def completed() -> bool:
        return (await label_of(labels, label["label_id"]))["status"] == "completed"

    await until(completed)
    assert cin7_sandbox.invoices["sale-simple"][0]["AdditionalCharges"] == []


async def test_reconciliation_reads_every_page_of_shipments(
    labels: TestClient, sandbox: ShipStationSandbox
) -> None:
    await buy(labels, EXPLICIT)  # one real shipment to copy
    (template,) = sandbox.shipments.values()
    for n in range(1, 700):  # other shipments of the day: more than one page of 500
        sandbox.shipments[template["shipmentId"] + n] = {
            **template, "shipmentId": template["shipmentId"] + n,
            "advancedOptions": {"customField1": f"someone-else:{n}"},
        }  # fmt: skip
    sandbox.label_fault = "drop"

    label = await buy(labels, EXPLICIT)

    assert label["status"] == "completed"
    assert createlabel_calls(sandbox) == 2  # adopted from page 2, not bought again
    assert sandbox.calls["/shipments"] >= 2


async def test_write_back_needs_a_sale(labels: TestClient, sandbox: ShipStationSandbox) -> None:
    problem = await buy(labels, {**EXPLICIT, "write_back": True}, status=422)

    assert problem["errors"][0]["field"] == "write_back"
    assert createlabel_calls(sandbox) == 0
