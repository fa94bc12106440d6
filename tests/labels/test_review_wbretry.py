"""Hostile review of 5e5aa66 (write-back retry; a label in attention for its failed write-backs
keeps retrying and completes) and 096e4d3 (order_number, migration 5, ?search=). Each test is a
finding demonstrated on the reviewed commit; its docstring says the interleaving and the rule."""

from __future__ import annotations

import asyncio
import sqlite3

from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.api.test_labels import buy, label_of, until
from tests.conftest import AUTH, MakeService
from tests.labels.conftest import Service, status_is

MULTIBOX = {"sale_id": "sale-multibox", "carrier_code": "fedex", "service_code": "fedex_ground"}


async def jobs(service: Service, label_id: str) -> list[tuple[str, str]]:
    return await service.outbox(label_id)


# --- W1: a partial void's attention is completed by a write-back resumed after a restart ------


async def test_a_partial_voids_attention_is_not_completed_by_a_write_back_resumed_at_restart(
    restartable: Service, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Two boxes; Cin7 Core refuses writes, the label is ``write_back_failed``
    (``write_back.state: failed``). Cin7 Core becomes slow: the next try is in flight
    (``running``) when a void voids box 1 and the carrier refuses box 2 — ``attention`` ("void
    again, or settle the rest at the carrier"), the running write-back left alone, its
    correction queued. The process stops before the write-back settles. At start-up the job is
    due again; the label is now ``attention`` with ``write_back_state = failed``, which
    ``held_by_write_back`` takes for "attention because the write-back kept failing": the job
    runs, writes, and moves the label ``attention → completed`` with ``detail`` cleared. The
    half-voided label (box 1 dead at the carrier, box 2 live) says ``completed``, nobody is
    asked. Before 5e5aa66 the job was cancelled ("label attention")."""
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.writes_down = True
    label = await buy(client, MULTIBOX)
    label_id = label["label_id"]
    await until(lambda: status_is(client, label_id, "write_back_failed"))

    cin7_sandbox.knobs.latency = Latency(base_ms=4000)  # the next try stays in flight

    async def in_flight() -> bool:
        return ("write_back", "running") in await jobs(restartable, label_id)

    await until(in_flight)
    sandbox.refused_voids.add(label["packages"][1]["shipment_id"])
    response = await client.post(f"/v1/labels/{label_id}/void", headers=AUTH)
    partly = await label_of(client, label_id)
    assert response.status == 409, await response.text()
    assert partly["status"] == "attention"
    assert "void again" in partly["detail"]
    assert ("write_back", "running") in await jobs(restartable, label_id)

    cin7_sandbox.knobs.latency = Latency()
    cin7_sandbox.knobs.writes_down = False
    client = await restartable.restart()  # stopped before the running try settled
    await until(lambda: restartable.drained(label_id))
    await asyncio.sleep(0.3)
    after = await label_of(client, label_id)

    assert after["status"] == "attention", (
        f"the partly voided label is now {after['status']} (detail {after['detail']!r}), "
        f"packages {[p['state'] for p in after['packages']]}"
    )
    assert after["detail"] and "void again" in after["detail"]


# --- W2: a partial void's reason is erased by its correction succeeding late ------------------


async def test_a_partial_voids_reason_survives_its_late_correction(
    make_labelling: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Two boxes, written back (``completed``). Cin7 Core refuses writes; a void voids box 1,
    the carrier refuses box 2: ``attention`` with "voided box(es) 1, but not box 2 …: void
    again, or settle the rest at the carrier". The correction fails
    ``RATESVC_WRITEBACK_ATTENTION_AFTER`` times: ``set_detail`` replaces that reason with
    "voided, but its tracking could not be cleared …"; once Cin7 Core recovered the correction
    cleared it: ``attention`` with ``detail: null``. The partial void's reason stays throughout
    (the correction's trouble is in ``write_back.last_error``)."""
    client = await make_labelling(
        RATESVC_WRITEBACK_ATTENTION_AFTER="1", RATESVC_CIN7_THROTTLE_PAUSE_S="0.1"
    )
    label = await buy(client, MULTIBOX)
    label_id = label["label_id"]
    await until(lambda: status_is(client, label_id, "completed"))
    cin7_sandbox.knobs.writes_down = True
    sandbox.refused_voids.add(label["packages"][1]["shipment_id"])

    response = await client.post(f"/v1/labels/{label_id}/void", headers=AUTH)
    assert response.status == 409, await response.text()

    async def failed_once() -> bool:
        return (await label_of(client, label_id))["write_back"]["last_error"] is not None

    await until(failed_once)  # the correction failed ATTENTION_AFTER times
    during = await label_of(client, label_id)
    cin7_sandbox.knobs.writes_down = False

    async def corrected() -> bool:
        return (await label_of(client, label_id))["write_back"]["last_error"] is None

    await until(corrected)
    after = await label_of(client, label_id)

    for seen in (during, after):
        assert seen["status"] == "attention"
        assert seen["detail"] is not None, "attention with no reason: the partial void's is lost"
        assert "box 2" in seen["detail"] or "void again" in seen["detail"], seen["detail"]


# --- migration 5 and ?search= ------------------------------------------------------------------

from pathlib import Path  # noqa: E402

from ratesvc.storage.ledger import Ledger  # noqa: E402
from ratesvc.storage.migrations import SQLITE_MIGRATIONS  # noqa: E402
from ratesvc.storage.sqlite_engine import SQLiteEngine  # noqa: E402


def v4_ledger(path: Path, order_numbers: dict[str, str | None]) -> None:
    """A ledger written by the code before 096e4d3 (migrations 1-4), one sale label per entry."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for number, script in enumerate(SQLITE_MIGRATIONS[:4], start=1):
        for statement in filter(str.strip, script.split(";")):
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?)", (number,))
    stamp = "2026-11-01T10:00:00.000000Z"
    for n, label_id in enumerate(order_numbers):
        db.execute(
            "INSERT INTO purchases (label_id, account, idem_key, request_hash, plan, status, "
            "detail, sale_id, task_id, write_back_state, write_back_attempts, write_back_error, "
            "created_at, updated_at, voided_at, fulfilment_key) VALUES "
            "(?, 'default', NULL, 'h', X'7B7D', 'completed', NULL, ?, ?, 'done', 1, NULL, ?, ?, "
            "NULL, ?)",
            (label_id, f"sale-{n}", f"task-{n}", stamp, stamp, f"sale:sale-{n}:task-{n}"),
        )
        db.execute(
            "INSERT INTO packages (label_id, n, box, purchase_key, state, tracking_number, "
            "customs_pdf_path) VALUES (?, 1, 'Box 1', ?, 'bought', ?, NULL)",
            (label_id, f"{label_id}:1", f"1Z{n:08d}"),
        )
    # the sale's order number was known to automation (events carry it)
    for n, (label_id, order) in enumerate(order_numbers.items()):
        db.execute(
            "INSERT INTO events VALUES (?, 'default', 'webhook', 'Sale/Pack', ?, ?, ?, ?, NULL, "
            "'processed', NULL, ?, 0, ?, X'7B7D', ?, ?)",
            (f"ev{n}", f"d{n}", f"sale-{n}", f"task-{n}", order, label_id, stamp, stamp, stamp),
        )
    db.commit()
    db.close()


async def test_labels_from_before_migration_5_read_back_and_are_found_by_order_number(
    tmp_path: Path,
) -> None:
    """A ledger from before 096e4d3 (migrations 1-4) with sale labels bought by automation
    (whose events carry each sale's ``SaleOrderNumber``). The new code opens it: migration 5
    adds ``order_number`` and fills nothing, so every label bought before the upgrade reads
    ``order_number: null`` and ``?search=<order number>`` — the console's Labels search, the
    issue's "search by order number" — finds none of them, though the ledger knows each
    sale's order number. (Rows do read back: the column order matches ``PurchaseRow``.)"""
    path = tmp_path / "ledger.sqlite3"
    v4_ledger(path, {"lb_old1": "SO-9001", "lb_old2": "SO-9002"})
    ledger = Ledger(SQLiteEngine(path))
    await ledger.open()
    try:
        old = await ledger.purchase("lb_old1")
        assert old is not None and old.fulfilment_key == "sale:sale-0:task-0"
        assert old.label_id == "lb_old1" and old.status == "completed"
        by_tracking = await ledger.purchases("default", search="1Z00000001")
        assert [r.label_id for r in by_tracking] == ["lb_old2"]

        found = await ledger.purchases("default", search="SO-9001")

        assert old.order_number == "SO-9001"
        assert [r.label_id for r in found] == ["lb_old1"]
    finally:
        await ledger.close()


async def test_search_is_case_insensitive_beyond_ascii(tmp_path: Path) -> None:
    """The search lowers the pattern in Python (Unicode) but the column with SQLite's
    ``lower()`` (ASCII only), and ``LIKE`` folds ASCII only: an order number with a non-ASCII
    letter is not found even by itself, typed exactly."""
    path = tmp_path / "ledger.sqlite3"
    v4_ledger(path, {"lb_x": None})
    ledger = Ledger(SQLiteEngine(path))
    await ledger.open()
    try:
        await ledger.engine.execute("UPDATE purchases SET order_number = 'VÉ-1001'")
        found = await ledger.purchases("default", search="VÉ-1001")
        assert [r.label_id for r in found] == ["lb_x"]
    finally:
        await ledger.close()


async def test_a_nul_in_search_is_not_a_match_everything_wildcard(tmp_path: Path) -> None:
    """``?search=%00`` passes ``text_param`` and reaches ``LIKE '%\\0%'``; SQLite's LIKE stops
    at the NUL, so the pattern is ``%``: every label matches. (Minor: no data of another account;
    a control character should be a 422 or match nothing.)"""
    path = tmp_path / "ledger.sqlite3"
    v4_ledger(path, {"lb_a": None, "lb_b": None})
    ledger = Ledger(SQLiteEngine(path))
    await ledger.open()
    try:
        assert await ledger.purchases("default", search="\x00") == []
    finally:
        await ledger.close()


# --- W3: the API cannot tell a write-back still retried from one that ended ------------------


async def test_a_label_offered_retry_write_back_has_a_write_back_waiting(
    restartable: Service, cin7_sandbox: Cin7Sandbox
) -> None:
    """Cin7 Core refuses writes (``write_back_failed``); the sale is then voided in Cin7 Core;
    the next try reads the voided sale: ``attention`` (SALE_VOIDED), its job ``done`` — ended.
    The label reads ``status: attention, write_back.state: failed`` exactly like a label whose
    write-back is still retried, so the console (``writeBackRetryable``) offers "Retry
    write-back"; the retry answers the label unchanged (nothing waits) and the console then
    polls, saying the write-back "has not finished yet". ``held_by_write_back`` makes the
    same inference from the same two fields (see W1)."""
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.writes_down = True
    label_id = (await buy(client, {"sale_id": "sale-simple", "carrier_code": "ups",
                                   "service_code": "ups_ground"}))["label_id"]  # fmt: skip
    await until(lambda: status_is(client, label_id, "write_back_failed"))
    cin7_sandbox.void_sale("sale-simple")

    async def ended() -> bool:
        return "voided in Cin7 Core" in ((await label_of(client, label_id))["detail"] or "")

    await until(ended)
    shown = await label_of(client, label_id)
    offered = shown["status"] == "attention" and shown["write_back"]["state"] == "failed"
    waiting = [state for kind, state in await restartable.outbox(label_id) if state == "pending"]

    assert not offered or waiting, (
        f"offered Retry write-back ({shown['status']}, write_back {shown['write_back']}) "
        f"with no job waiting: {await restartable.outbox(label_id)}"
    )
