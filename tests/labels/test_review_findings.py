"""Findings of the hostile review of issue 9's label lifecycle, kept as regression tests: each is
one interleaving that broke the contract (API.md + issue 9) on the reviewed commit; each
docstring says how."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any

import pytest
from aiohttp import web

from ratesvc import keys
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Knobs
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.storage.ledger import format_stamp
from tests.api.test_labels import buy, label_of, until
from tests.conftest import AUTH
from tests.labels.conftest import SALE, Service, status_is
from tests.labels.test_exactly_once import live_shipments, sale_tracking

MULTIBOX = {"sale_id": "sale-multibox", "carrier_code": "fedex", "service_code": "fedex_ground"}


@pytest.fixture
def sandbox() -> ShipStationSandbox:
    """The ShipStation sandbox, plus one fault it lacks: ``garble_next_label`` makes the next
    ``createlabel`` buy the label and then answer 200 with a body that is not a shipment (a
    proxy's page, a truncated gateway answer: ShipStation *said yes*, the body cannot be read);
    ``lose_next_void_answer`` makes the next ``voidlabel`` void the label and answer 500."""
    box = ShipStationSandbox(knobs=Knobs())
    box.garble_next_label = False  # type: ignore[attr-defined]
    box.lose_next_void_answer = False  # type: ignore[attr-defined]

    @web.middleware
    async def garble(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if request.path == "/shipments/voidlabel" and box.lose_next_void_answer:  # type: ignore[attr-defined]
            box.lose_next_void_answer = False  # type: ignore[attr-defined]
            # voided at ShipStation, but the answer is a gateway error
            return web.json_response({"Message": "An error has occurred."}, status=500)
        if request.path == "/shipments/createlabel" and box.garble_next_label:  # type: ignore[attr-defined]
            box.garble_next_label = False  # type: ignore[attr-defined]
            if response.status == 200:
                return web.Response(status=200, text="<html>OK</html>",
                                    content_type="text/html")  # fmt: skip
        return response

    box.app.middlewares.append(garble)
    return box


# --- F1: a void the carrier refuses for one box leaves a voided tracking number on the sale ----


async def test_a_void_refused_for_one_box_leaves_no_voided_tracking_on_the_sale(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Two boxes, written back. The void voids box 1 at ShipStation, then the carrier refuses
    box 2 (already scanned): 409 ``void_rejected``. Box 1's tracking is dead at the carrier but
    stays on the Cin7 Core sale; the label stays ``completed`` (live, holding the fulfilment),
    no correction is queued and nobody is asked (no ``attention``). API.md: "If tracking had been
    written to Cin7 Core, the correction is written there too (or the label goes to
    attention)"; issue 9: "the sale never ends with voided tracking"."""
    client = restartable.client
    assert client is not None
    label = await buy(client, MULTIBOX)
    await until(lambda: status_is(client, label["label_id"], "completed"))
    second = label["packages"][1]["shipment_id"]
    sandbox.refused_voids.add(second)

    response = await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    await asyncio.sleep(0.5)
    await until(lambda: restartable.drained(label["label_id"]))
    shown = await label_of(client, label["label_id"])
    dead = {s["trackingNumber"] for s in sandbox.shipments.values() if s["voided"]}
    on_sale = sale_tracking(cin7_sandbox, "sale-multibox")

    assert response.status == 409
    assert dead, "box 1 was voided at ShipStation"
    assert shown["status"] == "attention"
    assert not dead & on_sale, (
        f"voided tracking {dead & on_sale} left on the sale; label is {shown['status']}, "
        f"packages {[p['state'] for p in shown['packages']]}"
    )


async def test_a_partly_refused_void_before_the_write_back_lets_voided_tracking_land(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Same, with Cin7 Core writes failing so the write-back is still pending when the void is
    tried: the void voids box 1 and is refused for box 2, the label stays
    ``write_back_failed`` and its pending write-back is not cancelled; when Cin7 Core recovers
    the write-back writes *both* tracking numbers — box 1's voided one included — onto the
    sale (it writes every package, whatever its state)."""
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.writes_down = True
    label = await buy(client, MULTIBOX)
    await until(lambda: status_is(client, label["label_id"], "write_back_failed"))
    sandbox.refused_voids.add(label["packages"][1]["shipment_id"])

    response = await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    cin7_sandbox.knobs.writes_down = False
    await until(lambda: restartable.drained(label["label_id"]))
    shown = await label_of(client, label["label_id"])
    dead = {s["trackingNumber"] for s in sandbox.shipments.values() if s["voided"]}
    on_sale = sale_tracking(cin7_sandbox, "sale-multibox")

    assert response.status == 409
    assert dead
    assert shown["status"] == "attention"
    assert not dead & on_sale, (
        f"voided tracking {dead & on_sale} written to the sale after the void; label is "
        f"{shown['status']}"
    )


# --- F2: a 2xx createlabel answer that cannot be read is taken for "nothing bought" -----------


async def test_an_unreadable_2xx_createlabel_answer_is_not_taken_for_unbought(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """ShipStation sold the label and answered 200, but the body cannot be decoded. The client
    raises ``UpstreamError`` (no ``maybe_processed``, no 5xx status), so ``_buy`` marks the
    package ``failed`` and the label ``failed`` — releasing the fulfilment and the key. The
    next request buys a second label; the first, live at ShipStation, is forgotten (never
    voided, never in the ledger as bought). Issue 9 (5): an outcome that is not known stays
    ``unknown`` until reconciled; "a bought label is never forgotten or bought twice"."""
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.writes_down = True  # the sale shows no tracking yet
    await client.get("/v1/carriers", headers=AUTH)
    sandbox.garble_next_label = True  # type: ignore[attr-defined]

    first = await client.post("/v1/labels", json=SALE, headers={**AUTH, "Idempotency-Key": "a"})
    first_body = await first.json()
    again = await client.post("/v1/labels", json=SALE, headers={**AUTH, "Idempotency-Key": "b"})
    again_body = await again.json()

    assert len(sandbox.shipments) >= 1  # ShipStation did sell the first label
    assert len(live_shipments(sandbox)) <= 1, (
        f"two live labels for one fulfilment: first answered {first.status} "
        f"{first_body.get('status')} ({first_body.get('detail')}), second {again.status} "
        f"{again_body.get('status') or again_body.get('code')}"
    )


# --- F3: retention forgets the write-back job, so a later void corrects nothing --------------


async def test_a_void_after_retention_purged_the_write_back_job_still_clears_the_sale(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """``Ledger.void`` decides whether to queue the correction from the *outbox rows* (a
    ``write_back`` job running, done, or tried). Retention deletes done jobs after
    ``RATESVC_RETENTION_DAYS`` (1 day at the least) while the label row — ``completed``,
    ``write_back.state: done`` — is kept and stays voidable. A void after that queues no
    correction: the voided tracking stays on the sale for good."""
    client = await restartable.restart(RATESVC_RETENTION_DAYS="7")
    label = await buy(client, SALE)
    await until(lambda: status_is(client, label["label_id"], "completed"))
    tracking = label["packages"][0]["tracking_number"]
    assert sale_tracking(cin7_sandbox) == {tracking}
    eight_days_ago = format_stamp(dt.datetime.now(dt.UTC) - dt.timedelta(days=8))
    for table in ("purchases", "outbox"):  # 8 days pass
        await restartable.sql(f"UPDATE {table} SET updated_at = ?", (eight_days_ago,))
    await client.app[keys.LABELS].retention.purge()

    voided = await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    await asyncio.sleep(1.0)  # a correction, if one was queued, has had time to run
    await until(lambda: restartable.drained(label["label_id"]))

    assert voided.status == 200
    assert sandbox.shipments[label["packages"][0]["shipment_id"]]["voided"] is True
    assert sale_tracking(cin7_sandbox) == set(), "voided tracking left on the sale"


# --- F4: a keyless replay of a quote purchase is not answered from the ledger ------------------


async def test_a_keyless_replay_of_a_quote_purchase_after_a_restart_is_a_replay(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """For a sale "the default key is account + sale + fulfilment task"; "a replay is answered
    from the ledger alone ... after the quote expired, after a restart". The same quote body
    without a key is answered 200 before a restart, but after one the quote store is empty, so
    ``_claimed_fulfilment`` finds no claim, ``make_plan`` looks the quote up and the replay is
    404 ``not_found`` (410 once expired) — although the ledger holds the label, its plan with the
    quote_id, and the request hash."""
    client = restartable.client
    assert client is not None
    rated = await client.post("/v1/rates", json={"sale_id": "sale-simple"}, headers=AUTH)
    body = {"quote_id": (await rated.json())["quotes"][0]["quote_id"]}
    first = await buy(client, body)
    before = await buy(client, body, status=200)  # a replay while the quote is in memory
    assert before["label_id"] == first["label_id"]
    client = await restartable.restart()

    response = await client.post("/v1/labels", json=body, headers=AUTH)
    answer = await response.json()

    assert response.status == 200, answer
    assert answer["label_id"] == first["label_id"]


# --- F5: a void whose answer was lost can never be completed -----------------------------------


async def test_a_void_whose_answer_was_lost_can_be_retried_and_clears_the_sale(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """ShipStation voids the label but the answer is a 500 (or a time-out): the void answers
    502 and the package stays ``bought``. Every retry then asks ShipStation again, which says
    "Label has already been voided." (``approved: false``), and ratesvc answers 409
    ``void_rejected`` — for ever. The label stays ``completed`` and live (holding the fulfilment:
    no relabel), and its dead tracking stays on the Cin7 Core sale; nobody is asked
    (``attention``). Issue 9 (3)/(5): unknown outcomes are reconciled, and the sale never ends
    with voided tracking."""
    client = restartable.client
    assert client is not None
    label = await buy(client, SALE)
    await until(lambda: status_is(client, label["label_id"], "completed"))
    sandbox.lose_next_void_answer = True  # type: ignore[attr-defined]

    lost = await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    retries = []
    for _ in range(3):
        retry = await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
        retries.append((retry.status, (await retry.json()).get("code")))
        await asyncio.sleep(0.2)
    await until(lambda: restartable.drained(label["label_id"]))
    shown = await label_of(client, label["label_id"])

    # the lost answer is recognised at once from ShipStation's own record of the shipment
    assert lost.status == 200 and (await lost.json())["status"] == "voided"
    assert all(code == "already_voided" for _, code in retries)
    assert sandbox.shipments[label["packages"][0]["shipment_id"]]["voided"] is True
    assert shown["status"] == "voided"
    assert sale_tracking(cin7_sandbox) == set()


# --- F6: issue 8's poisoned row, left by the previous version, still poisons ------------------


async def test_a_purchasing_row_whose_plan_cannot_be_read_does_not_stay_purchasing_forever(
    restartable: Service, sandbox: ShipStationSandbox
) -> None:
    """The previous version recorded a 2 x 60 kg box and left the row ``purchasing`` (issue 8).
    After upgrading, the unit resumed at start decodes the plan, raises, and dies (logged as
    "resumed at the next start" — where it dies again); the row stays ``purchasing`` for ever,
    holds its fulfilment (every request: ``already_labelled``), cannot be voided ("still being
    bought") and is never put in ``attention`` for a person. (Fixed on main by 3588dbd, which
    landed during this review: the row now goes to ``attention``.)"""
    client = restartable.client
    assert client is not None
    await client.get("/v1/carriers", headers=AUTH)
    sandbox.label_fault = "refuse"  # record a real row, then poison its plan as 8 did
    failed = await buy(client, SALE, key="heavy")
    await restartable.client.close()
    ((plan,),) = await restartable.sql(
        "SELECT plan FROM purchases WHERE label_id = ?", (failed["label_id"],)
    )
    poisoned = re.sub(rb'"weight":\{"value":[0-9.]+', b'"weight":{"value":120000', bytes(plan))
    assert poisoned != plan
    await restartable.sql(
        "UPDATE purchases SET status = 'purchasing', plan = ?, idem_key = 'heavy', "
        "fulfilment_key = 'sale:sale-simple:task-sale-simple' WHERE label_id = ?",
        (poisoned, failed["label_id"]),
    )
    await restartable.sql("UPDATE packages SET state = 'pending', attempts = 0 WHERE label_id = ?",
                          (failed["label_id"],))  # fmt: skip
    sandbox.label_fault = None
    client = await restartable.start()
    await asyncio.sleep(1.0)

    shown = await label_of(client, failed["label_id"])
    listed = await client.get("/v1/labels", headers=AUTH)

    assert listed.status == 200
    assert shown["status"] != "purchasing", f"still purchasing; detail {shown['detail']!r}"
