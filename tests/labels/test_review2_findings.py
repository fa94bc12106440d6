"""Findings of the second hostile review of issue 9 (labels × automation), kept as regression
tests: each interleaving broke the contract (API.md + issue 9) on the reviewed commit; each
docstring says how."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Knobs
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.storage.migrations import SQLITE_MIGRATIONS
from tests.api.test_labels import buy, label_of, until
from tests.conftest import AUTH
from tests.labels.conftest import Service, status_is
from tests.labels.test_exactly_once import sale_tracking
from tests.ledger_sql import ledger_sql_many

MULTIBOX = {"sale_id": "sale-multibox", "carrier_code": "fedex", "service_code": "fedex_ground"}


@pytest.fixture
def sandbox() -> ShipStationSandbox:
    """The ShipStation sandbox, plus ``down_for_voids``: shipment ids whose ``voidlabel`` answers
    503 without voiding (ShipStation down for that call: nothing happened)."""
    box = ShipStationSandbox(knobs=Knobs())
    box.down_for_voids = set()  # type: ignore[attr-defined]

    @web.middleware
    async def down(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/shipments/voidlabel":
            body = await request.json()
            if body.get("shipmentId") in box.down_for_voids:  # type: ignore[attr-defined]
                return web.json_response({"Message": "Service Unavailable"}, status=503)
        return await handler(request)

    box.app.middlewares.append(down)
    return box


# --- R2-1: a void cut short after box 1 leaves box 1's dead tracking on the sale, silently -----


async def test_a_void_cut_short_after_the_first_box_leaves_no_voided_tracking_on_the_sale(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Two boxes, written back (``completed``). ``POST …/void`` voids box 1 at ShipStation and
    records the package ``voided`` in its own transaction; then ShipStation is down for box 2's
    ``voidlabel`` (503, nothing voided; its shipment list also shows box 2 live) and the route
    answers 503 — allowed. But ``Ledger.void`` is never reached: the label stays ``completed``
    (not ``attention``), no correction is queued, and box 1's voided tracking stays on the Cin7
    Core sale for as long as nobody voids again (the same state a crash between the two
    transactions leaves). API.md: "If tracking had been written to Cin7 Core, the correction is
    written there too (or the label goes to attention)"; issue 9 (3, 4): the sale never ends
    with voided tracking; a status change and the outbox job it implies commit together."""
    client = restartable.client
    assert client is not None
    label = await buy(client, MULTIBOX)
    await until(lambda: status_is(client, label["label_id"], "completed"))
    sandbox.down_for_voids.add(label["packages"][1]["shipment_id"])  # type: ignore[attr-defined]

    response = await client.post(f"/v1/labels/{label['label_id']}/void", headers=AUTH)
    await until(lambda: restartable.drained(label["label_id"]))
    shown = await label_of(client, label["label_id"])
    dead = {s["trackingNumber"] for s in sandbox.shipments.values() if s["voided"]}
    on_sale = sale_tracking(cin7_sandbox, "sale-multibox")

    assert response.status == 503
    assert dead, "box 1 was voided at ShipStation"
    assert shown["status"] == "attention"
    assert not dead & on_sale, (
        f"voided tracking {dead & on_sale} left on the sale; label is {shown['status']} "
        f"(packages {[p['state'] for p in shown['packages']]}), outbox "
        f"{await restartable.outbox(label['label_id'])}"
    )


# --- R2-2: migration 3 keeps the old code's "pending after the last time-out" as not bought ----


def _old_database(path: Path, label: tuple[Any, ...], package_n: int, attempt_at: str) -> None:
    """What ratesvc at 2016a76 (schema version 2) leaves after defect 5: the last ``createlabel``
    attempt timed out (ShipStation bought it, the answer never came); the package was set back
    to ``pending`` (attempt stamped) and the label to ``attention``; the key is the old default
    ``sale:<sale>:<task>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for number, script in enumerate(SQLITE_MIGRATIONS[:2], start=1):  # identical at 2016a76
            db.executescript(script)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        db.execute("INSERT INTO purchases VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", label)
        db.execute(
            "INSERT INTO packages (label_id, n, box, purchase_key, state, attempt_at) "
            "VALUES (?, ?, NULL, ?, 'pending', ?)",
            (label[0], package_n, f"{label[0]}:{package_n}", attempt_at),
        )


@pytest.mark.parametrize("ledger_env", ["sqlite"], indirect=True)  # an old SQLite ledger
async def test_an_old_ledgers_timed_out_last_attempt_is_reconciled_not_taken_for_unbought(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Upgrade path. At 2016a76 a time-out on the last attempt left the package ``pending``
    (defect 5) in an ``attention`` label — while ShipStation had sold it. Migration 3 turns only
    ``buying`` packages into ``unknown``, so after the upgrade that package is still believed
    unbought: the void answers 200 ``voided`` without voiding anything at ShipStation (no
    ``reconciling``), releases the fulfilment, and a relabel buys a second live label for it.
    Issue 9 (5): packages whose outcome is unknown stay ``unknown`` until reconciled against
    ShipStation, void and relabel answer 409 ``reconciling`` meanwhile; the model's invariants:
    per fulfilment, live labels at ShipStation ≤ one label's packages; every shipment carrying
    ratesvc's purchase key is known to the ledger."""
    client = restartable.client
    assert client is not None
    sale = {"sale_id": "sale-simple", "task_id": "task-sale-simple", "carrier_code": "ups",
            "service_code": "ups_ground", "write_back": False}  # fmt: skip
    # ShipStation sells the label (purchase key <label>:1); the old process never heard back
    bought = await buy(client, sale)
    label_id = bought["label_id"]
    data = restartable.data
    ((plan, request_hash, created),) = await restartable.sql(
        "SELECT plan, request_hash, created_at FROM purchases WHERE label_id = ?", (label_id,)
    )
    ((attempt_at,),) = await restartable.sql(
        "SELECT attempt_at FROM packages WHERE label_id = ?", (label_id,)
    )
    old = data.parent / "old-data"
    detail = ("package 1: ShipStation did not answer createlabel within 60 s; check ShipStation "
              f"for purchase key {label_id}:1 before buying again")  # fmt: skip
    _old_database(
        old / "ledger.sqlite3",
        (label_id, "default", "sale:sale-simple:task-sale-simple", request_hash, plan,
         "attention", detail, "sale-simple", "task-sale-simple", "not_requested", 0, None,
         created, created, None),
        1, attempt_at,
    )  # fmt: skip
    restartable._env["RATESVC_DATA_DIR"] = str(old)
    restartable.data = old
    client = await restartable.restart()  # the new version on the old ledger: migration 3

    void = await client.post(f"/v1/labels/{label_id}/void", headers=AUTH)
    relabel = await client.post("/v1/labels", json=sale, headers=AUTH)
    await asyncio.sleep(0.5)
    live = [s for s in sandbox.shipments.values() if not s["voided"]]
    keys = sorted(s["advancedOptions"]["customField1"] for s in live)

    assert len(live) <= 1, (
        f"void answered {void.status} {(await void.json()).get('status')}, relabel answered "
        f"{relabel.status}: {len(live)} live labels at ShipStation for one fulfilment ({keys})"
    )


# --- R2-3: a backlog of 5,000 backed-off write-backs starves every new one ---------------------


async def test_a_large_backlog_of_backed_off_write_backs_does_not_stall_new_ones(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """``claim_jobs`` reads only the 5,000 oldest open jobs (``ORDER BY o.id LIMIT 5000``). One
    Cin7 Core organisation whose writes have been failing for a while (5,000 labels of a busy
    day waiting in back-off, due in ten minutes) hides every newer job — of any sale, any
    account: a label bought now is never written back while the backlog lasts. Issue 9 (12): one
    hung Cin7 Core organisation must not stall all; API.md: the write-back is retried until it
    succeeds (here it is never even tried)."""
    client = restartable.client
    assert client is not None
    later = "2999-01-01T00:00:00.000000Z"  # backed off: not due (any future time will do)
    await client.close()
    await ledger_sql_many(
        restartable.ledger_url,
        "INSERT INTO purchases (label_id, account, request_hash, plan, status, sale_id, "
        "task_id, write_back_state, created_at, updated_at) VALUES "
        "(?, 'other-org', 'h', ?, 'write_back_failed', ?, 't', 'failed', ?, ?)",
        [(f"lb_backlog{i}", b"{}", f"backlog-sale-{i}", later, later) for i in range(5000)],
    )
    await ledger_sql_many(
        restartable.ledger_url,
        "INSERT INTO outbox (label_id, kind, state, attempts, next_at, created_at, "
        "updated_at) VALUES (?, 'write_back', 'pending', 3, ?, ?, ?)",
        [(f"lb_backlog{i}", later, later, later) for i in range(5000)],
    )
    client = await restartable.start()
    label = await buy(client, {"sale_id": "sale-simple", "carrier_code": "ups",
                               "service_code": "ups_ground"})  # fmt: skip
    try:
        await until(lambda: status_is(client, label["label_id"], "completed"), seconds=5)
    except AssertionError:
        shown = await label_of(client, label["label_id"])
        pytest.fail(
            f"label {label['label_id']} still {shown['status']} after 5 s, write-back "
            f"{shown['write_back']}; outbox {await restartable.outbox(label['label_id'])}"
        )
