"""What the first hostile review of customs found (the product record cache, interleavings, the
sale path), kept as specifications: each failed on the code it reviewed."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.automation import poller as poller_module
from ratesvc.customs.products import ProductRecords
from ratesvc.errors import UpstreamThrottled, UpstreamTimeout
from ratesvc.limiter import Priority
from ratesvc.sales import Product
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.upstreams.cin7.client import Cin7Client
from tests.api.test_labels import buy, label_of, labels, until  # noqa: F401 (the fixture)
from tests.automation.support import URL, createlabel_calls, events, has_status, pack_payload
from tests.automation.test_reexamine import FOREIGN
from tests.conftest import AUTH, HOOK, MakeService
from tests.customs.test_sale_labels import INTERNATIONAL

# --- A1: a fix made in Cin7 Core is not seen by the retry the 422 asks for ---------------------


async def test_a1_the_retry_after_fixing_the_product_reads_it_again(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    """The 422 says "Fix these in Cin7 Core, then try again". The warehouse does, and retries
    (same Idempotency-Key: nothing was recorded, so the key is free). The product record read
    for the refusal is still cached (60 s), so the retry is refused with the *old* facts."""
    body = {"sale_id": "sale-international-nohs", **INTERNATIONAL}
    first = await buy(labels, body, status=422, key="k-nohs")
    assert first["code"] == "customs_incomplete"

    cin7_sandbox.products["p-tea"]["HSCode"] = "0902.30"  # fixed, as the 422 asked
    retried = await labels.post(
        "/v1/labels", json=body, headers={**AUTH, "Idempotency-Key": "k-nohs"}
    )
    payload = await retried.json()

    assert retried.status == 201, payload
    assert createlabel_calls(sandbox) == 1


async def test_a1b_automation_retry_after_the_fix_is_labelled_with_the_default_ttl(
    make_automated: MakeService, cin7_sandbox: Cin7Sandbox, sandbox: ShipStationSandbox
) -> None:
    """tests/automation/test_international.py proves this flow only with
    RATESVC_CUSTOMS_PRODUCT_TTL_S=0; with the shipped default (60 s) the README's "once the
    product is fixed, retry the event" puts the event straight back in attention."""
    client = await make_automated()  # the default product TTL
    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-international-nohs"), headers=HOOK)
    await until(lambda: has_status(client, "attention"))
    (event,) = await events(client)

    cin7_sandbox.products["p-tea"]["HSCode"] = "0902.30"
    retried = await client.post(f"/v1/automation/events/{event['event_id']}/retry", headers=AUTH)
    assert retried.status in (200, 202), await retried.text()
    await asyncio.sleep(1.0)  # the retry runs (retry delay 0.05 s)
    (event,) = await events(client)

    assert event["status"] == "processed", event
    assert createlabel_calls(sandbox) == 1


# --- A2: a shared product read runs under its first reader's deadline and priority -------------


class DeadlineCin7:
    """``get_product`` as the Cin7 client behaves under its limiter: a call whose turn cannot
    come before the caller's deadline is refused (UpstreamThrottled); the turn comes after
    ``wait_s``."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.deadlines: list[float | None] = []
        self.priorities: list[Priority] = []

    async def get_product(
        self, product_id: str, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> Product | None:
        self.deadlines.append(deadline)
        self.priorities.append(priority)
        loop = asyncio.get_running_loop()
        if deadline is not None and loop.time() + self.wait_s > deadline:
            raise UpstreamThrottled("cin7: the rate limit leaves no room before the deadline")
        await asyncio.sleep(self.wait_s)
        return Product(
            product_id=product_id, sku="TEA", weight=None, weight_unit=None, sides=None,
            length_unit=None, hs_code="0902.10", origin="CN",
        )  # fmt: skip


async def test_a2_a_patient_reader_is_not_failed_by_the_deadline_of_the_reader_it_joined() -> None:
    """An HTTP request (10 s deadline) starts reading a product; automation (30 s deadline)
    asks for the same product meanwhile and shares the read — which was started with the
    HTTP request's deadline, so automation is refused although its own deadline had room."""
    cin7 = DeadlineCin7(wait_s=0.2)
    kept = ProductRecords(cast(Cin7Client, cin7))
    loop = asyncio.get_running_loop()

    impatient = asyncio.create_task(kept.read(["tea"], deadline=loop.time() + 0.1))
    await asyncio.sleep(0)
    patient = asyncio.create_task(kept.read(["tea"], deadline=loop.time() + 30))
    results = await asyncio.gather(impatient, patient, return_exceptions=True)

    assert isinstance(results[0], UpstreamTimeout)  # its own deadline: fair
    assert not isinstance(results[1], BaseException), results[1]
    assert cin7.deadlines[0] is not None and cin7.deadlines[0] > loop.time() + 60  # the read's own


# --- A3: an international sale with a dozen products cannot even be rated ----------------------


def _add_products(cin7: Cin7Sandbox, n: int) -> list[str]:
    ids = []
    for i in range(n):
        pid = f"p-extra-{i}"
        cin7.products[pid] = {**cin7.products["p-mug"], "ID": pid, "SKU": f"Extra-{i}",
                              "Name": f"Extra Mug {i}"}  # fmt: skip
        ids.append(pid)
    return ids


async def test_a3_an_international_sale_of_twelve_products_is_rated_within_the_deadline(
    make_labelling: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    """Default Cin7 Core pacing (RATESVC_CIN7_MIN_INTERVAL_S=1) and request deadline (10 s):
    the declaration reads every product at once, the limiter refuses the ones whose turn comes
    after the deadline, and the whole request fails — rating too, which README says needs no
    declaration ("Rates are given whether or not the sale can be declared")."""
    client = await make_labelling(RATESVC_CIN7_MIN_INTERVAL_S="1")
    ids = _add_products(cin7_sandbox, 12)
    sale = cin7_sandbox.add_sale(
        "sale-big-ca", "SO-2001", "Big Order Ltd", cin7_sandbox.sales["sale-international"]
        ["ShippingAddress"], [(pid, 1, "Box 1") for pid in ids],
    )  # fmt: skip
    assert sale["ShippingAddress"]["Country"] == "CA"

    response = await client.post("/v1/rates", json={"sale_id": "sale-big-ca"}, headers=AUTH)
    body: dict[str, Any] = await response.json()

    assert response.status == 200, body
    assert body["quotes"]


# --- A4: weird Cin7 Core numbers are a 500 on rating ---------------------------------------------


async def test_a4_a_huge_line_price_is_rated_and_refused_as_customs_incomplete_not_a_500(
    labels: TestClient,  # noqa: F811
    cin7_sandbox: Cin7Sandbox,
) -> None:
    """A line price Cin7 Core sends as 1e27 (typo, bad import): to_cents quantizes beyond
    Decimal's 28 digits and raises InvalidOperation while the sale is read — rating (which
    needs no declaration) is a 500 internal error instead of rates, and a label request a 500
    instead of 422 customs_incomplete naming the value."""
    line = cin7_sandbox.sales["sale-international"]["Order"]["Lines"][0]
    line["Price"] = 1e27

    rated = await labels.post("/v1/rates", json={"sale_id": "sale-international"}, headers=AUTH)
    bought = await labels.post(
        "/v1/labels", json={"sale_id": "sale-international", **INTERNATIONAL}, headers=AUTH
    )

    assert rated.status == 200, await rated.text()
    assert bought.status == 422, await bought.text()


async def test_a4b_a_value_over_ten_digits_is_customs_incomplete_in_words(
    labels: TestClient,  # noqa: F811
    cin7_sandbox: Cin7Sandbox,
) -> None:
    """A value the API's money format cannot hold (over 10 integer digits) passes the
    declaration builder and is only caught by the ledger round-trip: 422 invalid_request with
    msgspec's regex text, not customs_incomplete naming the product and its value."""
    line = cin7_sandbox.sales["sale-international"]["Order"]["Lines"][0]
    line["Price"] = 12_345_678_901

    problem = await buy(labels, {"sale_id": "sale-international", **INTERNATIONAL}, status=422)

    assert problem["code"] == "customs_incomplete", problem
    assert "regex" not in problem["detail"]


# --- A5: a package recovered by reconciliation silently loses its customs form -----------------


async def test_a5_a_package_recovered_after_an_unknown_outcome_says_to_reprint_its_customs_form(
    labels: TestClient,  # noqa: F811
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    """Box 2's createlabel is bought but its answer lost (500): reconciliation adopts the
    shipment with no label PDF and no customs form. The label completes; the sale gets Box 1's
    customs form only; Box 2 has no customs_form_url, and the label's detail only says to
    reprint "its PDF" — nothing tells the warehouse that an international parcel has no customs
    paperwork."""
    sandbox.knobs.createlabel_faults = ["ok", "lost_after_buy"]
    label = await buy(labels, {"sale_id": "sale-international", **INTERNATIONAL})

    async def completed() -> bool:
        return (await label_of(labels, label["label_id"]))["status"] == "completed"

    await until(completed, 20)
    final = await label_of(labels, label["label_id"])
    attached = [a["FileName"] for a in cin7_sandbox.attachments["sale-international"]]
    customs_forms = [name for name in attached if name.startswith("customs-")]

    has_form = [p["customs_form_url"] is not None for p in final["packages"]]
    says_so = "customs" in (final["detail"] or "")
    assert all(has_form) or says_so, (has_form, final["detail"], customs_forms)


# --- A6: README "let the next ... poll pick it up" after a product fix: the poller never does --


async def test_a6_the_poller_re_examines_a_customs_attention_after_a_while(
    make_automated: MakeService,
    cin7_sandbox: Cin7Sandbox,
    sandbox: ShipStationSandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The customs fix is made on the *product* record, which does not change the sale's
    ``Updated`` stamp: the poller used to skip the sale in attention for ever. Now an event in
    attention for customs is put back in the queue once it has waited CUSTOMS_RECHECK_S; before
    that, the poller leaves it alone."""
    for sale_id in ("sale-simple", "sale-international", "sale-advanced", "sale-multibox",
                    *(s for s in FOREIGN if s != "sale-international-nohs")):  # fmt: skip
        cin7_sandbox.sales.pop(sale_id)
    client = await make_automated()
    poller, services = client.app[keys.POLLER], client.app[keys.ACCOUNTS]["default"]
    await client.post(URL, json=pack_payload(cin7_sandbox, "sale-international-nohs"), headers=HOOK)
    await until(lambda: has_status(client, "attention"))
    cin7_sandbox.products["p-tea"]["HSCode"] = "0902.30"  # the fix the event asked for

    await poller.poll(services)  # too soon: left alone
    await asyncio.sleep(0.2)
    assert await has_status(client, "attention")
    monkeypatch.setattr(poller_module, "CUSTOMS_RECHECK_S", 0.0)
    await poller.poll(services)
    await until(lambda: has_status(client, "processed"))

    (event,) = await events(client)
    assert event["label_id"] is not None
    assert createlabel_calls(sandbox) == 1


# --- A7: README "buying the quote declares the same items, even if a product record changed" ---


async def test_a7_a_quote_with_a_declaration_is_bought_as_quoted_after_a_product_record_changed(
    make_labelling: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """README: a quote's declaration is used "even if a product record changed since". A record
    edited so that it is now incomplete (HS code cleared) makes buying the quote 422
    customs_incomplete although the quote's recorded items are complete and would be sent.
    (Refusing may be the safer rule — then the README claim, and API/issue wording "uses the
    same items", must say so.)"""
    client = await make_labelling(RATESVC_CUSTOMS_PRODUCT_TTL_S="0")
    rates = await (await client.post(
        "/v1/rates", json={"sale_id": "sale-international"}, headers=AUTH
    )).json()  # fmt: skip
    quote_id = next(q["quote_id"] for q in rates["quotes"]
                    if q["service_code"] == "ups_standard_international")  # fmt: skip
    cin7_sandbox.products["p-scale"]["HSCode"] = ""  # edited after the quote

    response = await client.post("/v1/labels", json={"quote_id": quote_id}, headers=AUTH)

    assert response.status == 201, await response.text()
