"""``POST /v1/labels/{label_id}/write-back/retry``: a label's waiting write-back (or a voided
label's tracking correction) is tried now, not after its back-off; written once; 404 for what is
not the caller's. Write-backs here wait 30 s between tries, so what lands at once is the retry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.sandbox.cin7 import Cin7Sandbox
from tests.api.test_label_print import OTHER, acme_label
from tests.api.test_labels import EXPLICIT, buy, label_of, until
from tests.conftest import ACME_AUTH, AUTH, MakeService
from tests.labels.test_exactly_once import sale_tracking

SALE = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
SHIP = "POST /sale/fulfilment/ship"


SLOW_RETRIES = {"RATESVC_LABEL_SETTLE_S": "0", "RATESVC_WRITEBACK_RETRY_S": "30",
                "RATESVC_CIN7_THROTTLE_PAUSE_S": "0.1"}  # fmt: skip


@pytest.fixture
async def patient(make_labelling: MakeService) -> TestClient:
    """A failed write-back waits 30 s for its next try and asks a person after the first."""
    return await make_labelling(**SLOW_RETRIES, RATESVC_WRITEBACK_ATTENTION_AFTER="1")


async def retry(client: TestClient, label_id: str, status: int = 200, **headers: str) -> Any:
    response = await client.post(f"/v1/labels/{label_id}/write-back/retry", headers=headers or AUTH)
    body = await response.json()
    assert response.status == status, body
    return body


async def in_state(client: TestClient, label_id: str, status: str) -> bool:
    return (await label_of(client, label_id))["status"] == status


def ship_writes(cin7: Cin7Sandbox) -> int:
    return sum(1 for _, path, _ in cin7.writes if path.endswith("/sale/fulfilment/ship"))


async def test_a_label_in_attention_is_written_back_at_once_when_retried_and_only_once(
    patient: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    cin7_sandbox.knobs.writes_down = True
    label_id = (await buy(patient, SALE))["label_id"]
    await until(lambda: in_state(patient, label_id, "attention"))
    held = await label_of(patient, label_id)
    refused = cin7_sandbox.calls[SHIP]

    assert held["write_back"]["state"] == "failed"
    assert held["write_back"]["attempts"] == 1
    assert "write-back to Cin7 Core has failed 1 time(s)" in held["detail"]
    assert "still retried" in held["detail"]
    assert refused >= 1 and ship_writes(cin7_sandbox) == 0
    assert sale_tracking(cin7_sandbox) == set()

    cin7_sandbox.knobs.writes_down = False
    answers = await asyncio.gather(*(retry(patient, label_id) for _ in range(3)))
    await until(lambda: in_state(patient, label_id, "completed"), seconds=5)  # not the 30 s one
    done = await label_of(patient, label_id)

    assert all(a["label_id"] == label_id for a in answers)
    assert answers[0]["packages"] == held["packages"]
    assert done["write_back"] == {"state": "done", "attempts": 2, "last_error": None}
    assert done["detail"] is None
    assert sale_tracking(cin7_sandbox) == {held["packages"][0]["tracking_number"]}
    assert ship_writes(cin7_sandbox) == 1
    assert cin7_sandbox.calls[SHIP] == refused + 1  # three retries, one more call

    again = await retry(patient, label_id)  # nothing waits: the label, unchanged

    assert again == done
    await asyncio.sleep(0.2)  # would a stray job run, it would run now (the worker was nudged)
    assert cin7_sandbox.calls[SHIP] == refused + 1


async def test_a_label_failing_its_write_back_is_retried_now_not_after_its_back_off(
    make_labelling: MakeService, cin7_sandbox: Cin7Sandbox
) -> None:
    client = await make_labelling(**SLOW_RETRIES)  # attention only after 50 failed tries
    cin7_sandbox.knobs.writes_down = True
    label_id = (await buy(client, SALE))["label_id"]
    await until(lambda: in_state(client, label_id, "write_back_failed"))

    cin7_sandbox.knobs.writes_down = False
    answer = await retry(client, label_id)
    await until(lambda: in_state(client, label_id, "completed"), seconds=5)

    assert answer["label_id"] == label_id
    assert ship_writes(cin7_sandbox) == 1


async def test_a_voided_labels_waiting_correction_is_retried_then_nothing_is(
    patient: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    label_id = (await buy(patient, SALE))["label_id"]
    await until(lambda: in_state(patient, label_id, "completed"))
    tracking = sale_tracking(cin7_sandbox)
    cin7_sandbox.knobs.writes_down = True
    voided = await (await patient.post(f"/v1/labels/{label_id}/void", headers=AUTH)).json()

    async def late() -> bool:
        return "could not be cleared" in ((await label_of(patient, label_id))["detail"] or "")

    await until(late)
    assert voided["status"] == "voided"
    assert sale_tracking(cin7_sandbox) == tracking  # still there: the correction was refused

    cin7_sandbox.knobs.writes_down = False
    answer = await retry(patient, label_id)

    async def cleared() -> bool:
        return sale_tracking(cin7_sandbox) == set()

    await until(cleared, seconds=5)
    assert answer["status"] == "voided"
    await until(lambda: no_detail(patient, label_id), seconds=5)
    after = await label_of(patient, label_id)
    assert after["status"] == "voided"
    assert await retry(patient, label_id) == after  # nothing waits now: unchanged


async def no_detail(client: TestClient, label_id: str) -> bool:
    return (await label_of(client, label_id))["detail"] is None


async def test_a_label_with_nothing_waiting_is_answered_unchanged(
    patient: TestClient, cin7_sandbox: Cin7Sandbox
) -> None:
    written = (await buy(patient, SALE))["label_id"]
    await until(lambda: in_state(patient, written, "completed"))
    unasked = await buy(patient, EXPLICIT)  # no sale: no write-back
    writes = len(cin7_sandbox.writes)

    for label_id in (written, unasked["label_id"]):
        before = await label_of(patient, label_id)
        assert await retry(patient, label_id) == before
    assert len(cin7_sandbox.writes) == writes


async def test_an_unknown_label_or_another_accounts_is_404(
    aiohttp_client: Any, sandbox_url: str, tmp_path: Path
) -> None:
    client, label_id = await acme_label(aiohttp_client, tmp_path, sandbox_url)

    theirs = await retry(client, label_id, 404, **OTHER)
    unknown = await retry(client, "lb_nothing", 404, **ACME_AUTH)
    own = await retry(client, label_id, 200, **ACME_AUTH)
    anonymous = await client.post(f"/v1/labels/{label_id}/write-back/retry")

    assert theirs["code"] == "not_found" and theirs["detail"] == f"no label {label_id}"
    assert unknown["code"] == "not_found"
    assert own["label_id"] == label_id
    assert anonymous.status == 401
