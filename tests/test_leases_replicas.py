"""Two replicas of the service on one PostgreSQL ledger (two apps in this process, each with its
own ledger pool, so two lease owners), in front of the same ShipStation and Cin7 Core
sandboxes: work one replica is doing is not taken by the other; when it dies, the other adopts
it — a purchase through reconciliation (never bought again), a write-back once, an automation
event once — and an account is polled by one of them.

A replica "dies" as a killed process would: its database connections drop first (nothing it
holds is given back), then its tasks stop wherever they are."""

from __future__ import annotations

import asyncio
import datetime as dt
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.errors import UpstreamTimeout, UpstreamUnavailable
from ratesvc.labels import reconcile
from ratesvc.labels.void import void_label
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.storage.postgres_engine import PostgresEngine
from tests.api.test_labels import label_of, until
from tests.automation.support import pack_payload
from tests.conftest import AUTH, HOOK, WEBHOOK_URL, automation_env, service_env
from tests.ledger_sql import ledger_sql

TTL = "1"  # RATESVC_LEASE_TTL_S: a dead replica's work is adopted about a second later
SALE = {"sale_id": "sale-simple", "task_id": "task-sale-simple", "carrier_code": "ups",
        "service_code": "ups_ground"}  # fmt: skip
MULTIBOX = {"sale_id": "sale-multibox", "task_id": "task-sale-multibox", "carrier_code": "ups",
            "service_code": "ups_ground"}  # fmt: skip
FAST = {"RATESVC_LABEL_SETTLE_S": "0", "RATESVC_WRITEBACK_RETRY_S": "0.05",
        "RATESVC_CIN7_MIN_INTERVAL_S": "0.01", "RATESVC_LEASE_TTL_S": TTL}  # fmt: skip

MakeReplica = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_replica(
    postgres_url: str, aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path
) -> MakeReplica:
    """A replica (its own data directory and ledger pool) on the shared PostgreSQL ledger
    (set up first, so the replicas are closed before the database is dropped)."""

    async def make(name: str, *, automated: bool = False, **extra: str) -> TestClient:
        data = tmp_path / name
        settings = {**FAST, "RATESVC_DATABASE_URL": postgres_url, **extra}
        env = (
            automation_env(sandbox_url, cin7_url, data, **settings)
            if automated
            else service_env(sandbox_url, data, cin7_url, **settings)
        )
        client: TestClient = await aiohttp_client(create_app(load_settings(env)))
        return client

    return make


async def die(replica: TestClient) -> None:
    """Kill the replica: its ledger connections drop (so it gives nothing back), then every
    purchase, write-back and event it was working on stops where it was, and it goes away."""
    app = replica.app
    engine = app[keys.LEDGER].engine
    assert isinstance(engine, PostgresEngine)
    engine.pool.terminate()
    labels = app[keys.LABELS]
    for task, _ in list(labels._units.values()):  # no grace: a kill does not wait
        task.cancel()
    await replica.close()


async def lease_owner(url: str, name: str) -> str | None:
    rows = await ledger_sql(url, "SELECT owner FROM leases WHERE name = ?", (name,))
    return str(rows[0][0]) if rows else None


def sale_tracking(cin7: Cin7Sandbox, sale_id: str) -> set[str]:
    lines = cin7.fulfilment(sale_id)["Ship"]["Lines"]
    return {line["TrackingNumber"] for line in lines if line.get("TrackingNumber")}


def ships(cin7: Cin7Sandbox) -> int:
    """Ship lines written to Cin7 Core (each a POST or PUT of the fulfilment's Ship)."""
    return sum(1 for method, path, _ in cin7.writes if "ship" in path.lower())


async def test_a_purchase_is_driven_by_one_replica_and_adopted_by_another_when_it_dies(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    a = await make_replica("a")
    sandbox.label_fault = "hang"  # ShipStation buys, then takes its time to answer
    sandbox.knobs.hang_s = 60
    buying = asyncio.create_task(
        a.post("/v1/labels", json=SALE, headers={**AUTH, "Idempotency-Key": "k1"})
    )
    await until(lambda: asyncio.sleep(0, bool(sandbox.shipments)))
    ((label_id,),) = await ledger_sql(postgres_url, "SELECT label_id FROM purchases")
    a_owner = a.app[keys.LEDGER].owner
    assert await lease_owner(postgres_url, f"purchase:{label_id}") == a_owner

    b = await make_replica("b")  # starts while a is buying: adopts nothing
    replay = asyncio.create_task(
        b.post("/v1/labels", json=SALE, headers={**AUTH, "Idempotency-Key": "k1"})
    )
    await asyncio.sleep(2.5)  # more than two lease TTLs: a renews, b only watches
    assert await lease_owner(postgres_url, f"purchase:{label_id}") == a_owner
    assert not b.app[keys.LABELS]._units
    assert sandbox.calls["/shipments/createlabel"] == 1
    assert not replay.done()

    await die(a)  # mid-purchase: the package's outcome is unknown in the ledger
    buying.cancel()
    await asyncio.gather(buying, return_exceptions=True)
    sandbox.label_fault = None
    (state,) = await ledger_sql(postgres_url, "SELECT state FROM packages")
    assert state == ("unknown",)

    answer = await asyncio.wait_for(replay, 30)  # b adopted, reconciled and finished it
    body = await answer.json()
    assert answer.status == 200 and body["label_id"] == label_id, body
    await until(lambda: label_status(b, label_id, "completed"))
    label = await label_of(b, label_id)
    (shipment,) = sandbox.shipments.values()
    assert sandbox.calls["/shipments/createlabel"] == 1  # reconciled, never bought again
    assert label["packages"][0]["tracking_number"] == shipment["trackingNumber"]
    assert "recovered" in label["detail"]
    assert ships(cin7_sandbox) == 1  # written back once, by b
    assert await lease_owner(postgres_url, f"purchase:{label_id}") is None  # b gave it back


async def label_status(client: TestClient, label_id: str, status: str) -> bool:
    return bool((await label_of(client, label_id))["status"] == status)


async def bought_and_written_back(client: TestClient, body: dict[str, Any]) -> str:
    response = await client.post("/v1/labels", json=body, headers=AUTH)
    assert response.status == 201, await response.text()
    label_id = str((await response.json())["label_id"])
    await until(lambda: label_status(client, label_id, "completed"), seconds=15)
    return label_id


async def test_a_running_write_back_is_not_stolen_by_a_starting_replica_but_adopted_when_its_own_dies(  # noqa: E501
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    a = await make_replica("a")
    sandbox.label_fault = "hang"  # so the sale can be held back between plan and write-back
    sandbox.knobs.hang_s = 0.5
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await until(lambda: asyncio.sleep(0, bool(sandbox.shipments)))
    cin7_sandbox.sale_reads.clear()  # the write-back's read of the sale waits: the job hangs
    response = await buying
    label_id = (await response.json())["label_id"]

    async def running() -> list[tuple[Any, ...]]:
        return await ledger_sql(
            postgres_url, "SELECT owner FROM outbox WHERE label_id = ? AND state = 'running'",
            (label_id,),
        )  # fmt: skip

    await until(lambda: running_is(running, [(a.app[keys.LEDGER].owner,)]))
    b = await make_replica("b")  # releases what a process before it left running — not a's
    await asyncio.sleep(2.5)
    assert await running() == [(a.app[keys.LEDGER].owner,)]
    assert ships(cin7_sandbox) == 0

    await die(a)
    cin7_sandbox.sale_reads.set()

    await until(lambda: label_status(b, label_id, "completed"), seconds=15)
    rows = await ledger_sql(
        postgres_url, "SELECT state, owner, attempts FROM outbox WHERE label_id = ?", (label_id,)
    )
    assert rows == [("done", None, 1)]
    assert ships(cin7_sandbox) == 1
    assert len(cin7_sandbox.attachments["sale-simple"]) == 1  # the label PDF, once


async def is_in(read: Callable[[], Awaitable[Any]], expected: set[str]) -> bool:
    return await read() in expected


async def running_is(
    read: Callable[[], Awaitable[list[tuple[Any, ...]]]], expected: list[tuple[Any, ...]]
) -> bool:
    return await read() == expected


async def test_an_automation_event_is_processed_by_one_replica(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    a = await make_replica("a", automated=True)
    b = await make_replica("b", automated=True)
    payload = pack_payload(cin7_sandbox, "sale-simple")
    cin7_sandbox.sale_reads.clear()  # processing the event waits at its read of the sale

    delivered = await a.post(WEBHOOK_URL, json=payload, headers=HOOK)
    assert delivered.status == 202

    async def owner() -> Any:
        ((holder,),) = await ledger_sql(postgres_url, "SELECT owner FROM events")
        return holder

    replicas = {a.app[keys.LEDGER].owner, b.app[keys.LEDGER].owner}
    await until(lambda: is_in(owner, replicas))  # claimed by one of them
    seen = set()
    for _ in range(30):  # 1.5 s: both look for due events every half TTL meanwhile
        seen.add(await owner())
        await asyncio.sleep(0.05)
    assert len(seen) == 1, seen  # the first claim's throughout: the other left it alone
    cin7_sandbox.sale_reads.set()

    async def settled() -> bool:
        listed = await (await b.get("/v1/automation/events", headers=AUTH)).json()
        return bool([e for e in listed["events"] if e["status"] == "processed"])

    await until(settled, seconds=15)
    await a.app[keys.AUTOMATION].idle()
    await b.app[keys.AUTOMATION].idle()
    finished = [
        replica.app[keys.METRICS].registry.get_sample_value(
            "ratesvc_automation_events_processed_total", {"outcome": "processed"}
        )
        or 0
        for replica in (a, b)
    ]
    assert sorted(finished) == [0, 1], finished  # one replica processed it, once
    assert sandbox.calls["/shipments/createlabel"] == 1


async def test_an_account_is_polled_by_one_replica_at_a_time(
    make_replica: MakeReplica, cin7_sandbox: Cin7Sandbox
) -> None:
    cin7_sandbox.sales.clear()  # nothing ready: each round is one list call, no events
    a = await make_replica("a", automated=True, RATESVC_POLL_INTERVAL_S="0.1")
    b = await make_replica("b", automated=True, RATESVC_POLL_INTERVAL_S="0.1")

    await asyncio.sleep(1.5)

    rounds = sorted(replica.app[keys.POLLER].rounds for replica in (a, b))
    assert rounds[0] == 0 and rounds[1] >= 5, rounds
    assert cin7_sandbox.calls["GET /salelist"] == rounds[1]  # one list call a round, one poller

    await die(a if a.app[keys.POLLER].rounds else b)  # the polling replica dies
    survivor = b if a.app[keys.POLLER].rounds else a
    before = survivor.app[keys.POLLER].rounds
    await asyncio.sleep(2.5)  # its lease expires (interval + TTL), then the survivor polls
    assert survivor.app[keys.POLLER].rounds > before


# --- a purchase in progress or reconciling: the same answer from every replica --------------------


async def test_a_different_request_for_a_fulfilment_being_bought_is_already_labelled_on_every_replica(  # noqa: E501
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
) -> None:
    """While replica A's ``createlabel`` call is out, a request with another body for the same
    fulfilment is a label being bought: 409 ``already_labelled``, whichever replica the load
    balancer picks. Only A knows its call is out (its unit is ``calling``); B sees the package
    ``unknown`` in the ledger, and used to answer 409 ``reconciling`` — which API.md keeps for
    an outcome a time-out or crash left unknown, and which the client (and automation, retrying
    it with back-off) treats differently. B reads A's live purchase lease, with no reconciling
    lease beside it, as a purchase in progress."""
    a = await make_replica("a")
    b = await make_replica("b")
    sandbox.label_fault = "hang"  # ShipStation buys, then takes its time to answer
    sandbox.knobs.hang_s = 5
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await until(lambda: asyncio.sleep(0, bool(sandbox.shipments)))
    other_body = {**SALE, "service_code": "ups_next_day_air"}
    on_a = await a.post("/v1/labels", json=other_body, headers=AUTH)
    on_b = await b.post("/v1/labels", json=other_body, headers=AUTH)
    codes = [(r.status, (await r.json()).get("code")) for r in (on_a, on_b)]
    sandbox.label_fault = None
    await buying
    assert codes == [(409, "already_labelled"), (409, "already_labelled")], codes


async def test_a_purchase_whose_outcome_is_being_reconciled_is_reconciling_on_every_replica(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
) -> None:
    """The other side of the previous test: ShipStation answers ``createlabel`` with a 5xx and
    cannot list shipments, so A's unit reconciles an unknown outcome while still holding the
    purchase lease. A request for the fulfilment is then ``reconciling`` on A *and* on B — a
    live purchase lease alone must not read as a purchase in progress (B would answer
    ``already_labelled`` for as long as the outcome stays unknown)."""
    a = await make_replica("a")
    b = await make_replica("b")
    await a.get("/v1/carriers", headers=AUTH)
    sandbox.knobs.error_rate = {"*": 1.0}  # createlabel and the shipment list both fail
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await until(lambda: asyncio.sleep(0, sandbox.calls["/shipments/createlabel"] == 1))
    await until(lambda: asyncio.sleep(0, sandbox.calls["/shipments"] >= 1))  # reconciling
    other_body = {**SALE, "service_code": "ups_next_day_air"}
    on_a = await a.post("/v1/labels", json=other_body, headers=AUTH)
    on_b = await b.post("/v1/labels", json=other_body, headers=AUTH)
    codes = [(r.status, (await r.json()).get("code")) for r in (on_a, on_b)]
    buying.cancel()
    await asyncio.gather(buying, return_exceptions=True)
    assert codes == [(409, "reconciling"), (409, "reconciling")], codes
    assert sandbox.calls["/shipments/createlabel"] == 1


async def corrections_of(url: str, label_id: str) -> int:
    rows = await ledger_sql(
        url, "SELECT id FROM outbox WHERE label_id = ? AND kind = 'void_correction'", (label_id,)
    )
    return len(rows)


async def void_held_at_the_second_box(
    replica: TestClient, label_id: str, release: asyncio.Event
) -> asyncio.Task[Any]:
    """``replica`` voids the 2-box ``label_id``: box 1 voided (and recorded), box 2's void held
    at ShipStation until ``release`` is set. Returns the void request once it is there."""
    client = replica.app[keys.ACCOUNTS]["default"].shipstation
    real = client.void_label
    calls: list[int] = []

    async def second_box_held(shipment_id: int, **kwargs: Any) -> Any:
        calls.append(shipment_id)
        if len(calls) == 2:
            await release.wait()
        return await real(shipment_id, **kwargs)

    client.void_label = second_box_held  # type: ignore[method-assign]
    voiding = asyncio.create_task(replica.post(f"/v1/labels/{label_id}/void", headers=AUTH))
    await until(lambda: asyncio.sleep(0, len(calls) == 2))
    return voiding


# --- voids across replicas ------------------------------------------------------------------


async def test_the_same_void_sent_to_two_replicas_voids_once_and_answers_like_a_duplicate(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    """A client whose void timed out retries it through the load balancer: the retry lands on
    replica B while A is still voiding. The one-void-per-label lock was per process, so both
    called ShipStation; the second was told 'already voided', found the shipment voided and
    moved the package ``bought -> voided`` — which A had done: IllegalTransition, a 500. Now
    the void holds the label's void lease: B waits for A's void (longer than a lease TTL: A
    renews it), then finds the label voided and answers 409 ``already_voided`` — what a
    duplicate in one process answers. ShipStation is asked once; one correction is queued."""
    a = await make_replica("a")
    b = await make_replica("b")
    label_id = await bought_and_written_back(a, SALE)
    at_shipstation = asyncio.Event()
    release = asyncio.Event()
    client = a.app[keys.ACCOUNTS]["default"].shipstation
    real = client.void_label

    async def slow(shipment_id: int, **kwargs: Any) -> Any:
        at_shipstation.set()
        await release.wait()
        return await real(shipment_id, **kwargs)

    client.void_label = slow  # type: ignore[method-assign]
    on_a = asyncio.create_task(a.post(f"/v1/labels/{label_id}/void", headers=AUTH))
    await asyncio.wait_for(at_shipstation.wait(), 10)
    on_b = asyncio.create_task(b.post(f"/v1/labels/{label_id}/void", headers=AUTH))
    await asyncio.sleep(1.5)  # more than a lease TTL: A renews its void lease, B waits for it
    holder = await lease_owner(postgres_url, f"void:{label_id}")
    b_waited = not on_b.done()
    release.set()
    answers = [await on_a, await on_b]
    codes = [(r.status, (await r.json()).get("code")) for r in answers]
    corrections = await ledger_sql(
        postgres_url, "SELECT id FROM outbox WHERE label_id = ? AND kind = 'void_correction'",
        (label_id,),
    )  # fmt: skip
    assert codes == [(200, None), (409, "already_voided")], codes
    assert b_waited and holder == a.app[keys.LEDGER].owner
    assert sandbox.calls["/shipments/voidlabel"] == 1
    assert len(corrections) == 1
    assert await lease_owner(postgres_url, f"void:{label_id}") is None  # given back


async def test_two_voids_that_both_reach_shipstation_record_the_label_voided_once(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    """Belt and braces behind the void lease: two voids of one label at ShipStation together
    (a void whose lease ran out while its replica could not renew it, and the void that took
    it). The second is told 'already voided' and finds the shipment voided; the package (and
    then the label) is already recorded ``voided`` by the first. That is progress, not an
    error: it used to raise IllegalTransition — a 500, and the label's void never recorded by
    the replica that got there first. Both voids end quietly; one correction is queued."""
    a = await make_replica("a")
    b = await make_replica("b")
    label_id = await bought_and_written_back(a, SALE)
    arrived: list[int] = []
    both = asyncio.Event()
    for replica in (a, b):
        client = replica.app[keys.ACCOUNTS]["default"].shipstation
        real = client.void_label

        async def together(shipment_id: int, *, real: Any = real, **kwargs: Any) -> Any:
            arrived.append(shipment_id)
            if len(arrived) >= 2:
                both.set()
            await asyncio.wait_for(both.wait(), 10)
            return await real(shipment_id, **kwargs)

        client.void_label = together
    await asyncio.gather(*(
        void_label(r.app[keys.LEDGER], r.app[keys.ACCOUNTS]["default"], label_id, lambda: None)
        for r in (a, b)
    ))  # fmt: skip
    corrections = await ledger_sql(
        postgres_url, "SELECT id FROM outbox WHERE label_id = ? AND kind = 'void_correction'",
        (label_id,),
    )  # fmt: skip
    assert sandbox.calls["/shipments/voidlabel"] == 2
    assert (await label_of(b, label_id))["status"] == "voided"
    assert len(corrections) == 1


async def test_a_replica_starting_during_a_void_leaves_it_to_the_replica_voiding(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    """Every replica settles, at start-up, the voids a crash cut off between two boxes — and
    took any live label with a voided box for one. A voids a 2-box label: box 1 is voided and
    recorded, box 2's void is at ShipStation. B starts (a rolling deploy, a scale-out): it used
    to move the label to ``attention`` ('a void was interrupted after some boxes: void again'
    — a person told to void a label being voided) and queue a tracking correction, and A then
    queued another. A's void lease is live: B leaves the label alone."""
    a = await make_replica("a")
    label_id = await bought_and_written_back(a, MULTIBOX)
    release = asyncio.Event()
    voiding = await void_held_at_the_second_box(a, label_id, release)
    b = await make_replica("b")  # starts while A waits for box 2's void
    during = await label_of(b, label_id)
    await asyncio.sleep(1.5)  # B's sweeps of expired void leases find none: A renews its own
    still = await label_of(b, label_id)
    release.set()
    answer = await voiding
    assert answer.status == 200, await answer.text()
    assert (await answer.json())["status"] == "voided"
    assert [during["status"], still["status"]] == ["completed", "completed"], (during, still)
    assert await corrections_of(postgres_url, label_id) == 1


async def test_a_void_cut_off_by_its_replica_dying_is_settled_by_another_once_its_lease_expires(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    """A dies between box 1's void (recorded) and box 2's. Start-up settling now leaves a label
    whose void lease is held, so a cut-off void must still be settled by someone: B, running
    all along, sweeps the void leases that expired and settles that label — to ``attention``
    ('void again'), box 1's tracking corrected off the sale, box 2's kept."""
    quick = {"RATESVC_REQUEST_DEADLINE_S": "2"}  # a void's calls end 2 s after it starts
    a = await make_replica("a", **quick)
    b = await make_replica("b", **quick)
    label_id = await bought_and_written_back(a, MULTIBOX)
    _, second = (await label_of(a, label_id))["packages"]
    voiding = await void_held_at_the_second_box(a, label_id, asyncio.Event())  # never set
    await die(a)
    voiding.cancel()
    await asyncio.gather(voiding, return_exceptions=True)

    await until(lambda: label_status(b, label_id, "attention"), seconds=10)
    shown = await label_of(b, label_id)

    async def drained() -> bool:
        rows = await ledger_sql(
            postgres_url, "SELECT kind, state FROM outbox WHERE label_id = ? ORDER BY id",
            (label_id,),
        )  # fmt: skip
        return rows == [("write_back", "done"), ("void_correction", "done")]

    await until(drained, seconds=15)
    assert "interrupted" in shown["detail"]
    assert [p["state"] for p in shown["packages"]] == ["voided", "bought"]
    assert sale_tracking(cin7_sandbox, "sale-multibox") == {second["tracking_number"]}
    assert await lease_owner(postgres_url, f"void:{label_id}") is None


# --- a purchase whose buyer lost its lease while createlabel was out ---------------------------


def partition_from_ledger(replica: TestClient) -> None:
    """The replica can no longer renew its leases (a network partition from PostgreSQL, a
    stalled event loop): the renewal statement fails, everything else keeps going."""

    async def renew_fails(*args: object, **kwargs: object) -> bool:
        raise ConnectionError("partitioned from the ledger")

    replica.app[keys.LEDGER].renew_lease = renew_fails


async def test_a_label_bought_while_the_buyer_could_not_renew_keeps_its_pdf(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
) -> None:
    """Regression (review round 4, finding 6). A's createlabel is out (ShipStation slow to
    answer) when A stops being able to renew its lease (a PostgreSQL blip on A's side); B adopts
    the purchase and finds the shipment in ShipStation's list — which carries no label data.
    ShipStation then answers A with the label and its PDF. Before, A's record of it was fenced
    on the lease, refused and thrown away, and B recorded the shipment from the list: no label
    to print (404 on label.pdf), nothing attached to the sale, 'reprint its PDF from
    ShipStation' although ratesvc had the PDF in hand. Now A records the answer guarded by the
    package's state alone, and B, finding the shipment while A's answer may still come (within
    settle_s of the send), waits for it and takes it; the label is bought once, with its PDF,
    and written back once by B."""
    a = await make_replica("a", RATESVC_LABEL_SETTLE_S="10")
    b = await make_replica("b", RATESVC_LABEL_SETTLE_S="10")
    sandbox.label_fault = "hang"
    sandbox.knobs.hang_s = 3
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await until(lambda: asyncio.sleep(0, bool(sandbox.shipments)))
    partition_from_ledger(a)  # from here A's renewals fail; B adopts about 1 s later
    answer = await asyncio.wait_for(buying, 30)
    sandbox.label_fault = None
    label_id = (await answer.json())["label_id"]
    await until(lambda: label_status(b, label_id, "completed"), seconds=30)
    pdf = await b.get(f"/v1/labels/{label_id}/packages/1/label.pdf", headers=AUTH)
    attached = [x["FileName"] for x in cin7_sandbox.attachments.get("sale-simple", [])]
    label = await label_of(b, label_id)
    assert sandbox.calls["/shipments/createlabel"] == 1
    assert pdf.status == 200 and attached, (
        f"the PDF ShipStation returned to A was discarded: label.pdf {pdf.status}, "
        f"attached to the sale: {attached}, detail: {label['detail']}"
    )
    assert not label["detail"], label["detail"]  # nothing to reprint
    assert ships(cin7_sandbox) == 1 and len(attached) == 1


async def test_the_adopter_of_a_dead_buyers_label_waits_for_its_answer_only_while_it_may_come(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    """The buyer is killed with its createlabel out: its answer will never come. The adopter
    finds the shipment in the list at once, waits for the answer only until settle_s after the
    send (the window in which the buyer could still have recorded it), then records the
    shipment from the list — it does not wait for ever."""
    a = await make_replica("a", RATESVC_LABEL_SETTLE_S="2")
    b = await make_replica("b", RATESVC_LABEL_SETTLE_S="2")
    sandbox.label_fault = "hang"
    sandbox.knobs.hang_s = 60
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await until(lambda: asyncio.sleep(0, bool(sandbox.shipments)))
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    await die(a)
    buying.cancel()
    await asyncio.gather(buying, return_exceptions=True)
    sandbox.label_fault = None
    ((label_id,),) = await ledger_sql(postgres_url, "SELECT label_id FROM purchases")
    await until(lambda: label_status(b, label_id, "completed"), seconds=10)
    took = loop.time() - killed_at
    label = await label_of(b, label_id)
    assert sandbox.calls["/shipments/createlabel"] == 1
    assert "recovered" in label["detail"]
    assert 1.5 < took < 6, f"recorded {took:.1f} s after the buyer died"


async def test_a_buyers_answer_after_the_adopter_recorded_the_label_changes_nothing(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ShipStation answers the buyer (which lost its lease meanwhile) only after the adopter's
    wait ran out and it recorded the shipment from the list: the buyer's answer finds the
    package bought and is dropped — no error, one label, written back once."""
    a = await make_replica("a", RATESVC_LABEL_SETTLE_S="0.5")
    b = await make_replica("b", RATESVC_LABEL_SETTLE_S="0.5")
    sandbox.label_fault = "hang"
    sandbox.knobs.hang_s = 4
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await until(lambda: asyncio.sleep(0, bool(sandbox.shipments)))
    partition_from_ledger(a)
    answer = await asyncio.wait_for(buying, 30)
    sandbox.label_fault = None
    assert answer.status < 500, await answer.text()
    label_id = (await answer.json())["label_id"]
    await until(lambda: label_status(b, label_id, "completed"), seconds=15)
    await asyncio.sleep(0.5)
    label = await label_of(b, label_id)
    assert sandbox.calls["/shipments/createlabel"] == 1
    assert "recovered" in label["detail"]
    assert ships(cin7_sandbox) == 1
    assert not a.app[keys.LABELS]._units  # A's unit ended: its lease was lost
    errors = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, errors


# --- a write-back never starts a Cin7 Core write once its claim may have lapsed ------------------


async def hang_renewals(replica: TestClient) -> None:
    """The replica's job renewals (and claims) hang, as statements do when PostgreSQL stops
    answering without refusing: each waits out the engine's time-out, then fails."""

    async def hangs(*args: object, **kwargs: object) -> Any:
        await asyncio.sleep(8)
        raise TimeoutError

    ledger = replica.app[keys.LEDGER]
    ledger.renew_jobs = hangs
    ledger.claim_jobs = hangs


def hold_first(replica: TestClient, method: str, calls: list[str], hold: asyncio.Event) -> None:
    """The replica's first Cin7 Core ``method`` call (of all replicas holding ``calls``) is held
    before it leaves until ``hold`` is set: a slow network, a busy loop, a limiter wait."""
    cin7 = replica.app[keys.ACCOUNTS]["default"].cin7
    real = getattr(cin7, method)

    async def held(*args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        if len(calls) == 1:
            await hold.wait()
        return await real(*args, **kwargs)

    setattr(cin7, method, held)


async def running_owner(url: str, label_id: str) -> Any:
    rows = await ledger_sql(
        url, "SELECT owner FROM outbox WHERE label_id = ? AND state = 'running'", (label_id,)
    )
    return rows[0][0] if rows else None


async def test_a_write_back_whose_claim_renewal_hangs_is_not_written_by_both_replicas(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    """Regression (review round 4, finding 1). The replica holding a write-back job is slow,
    not dead: its upload of the label PDF to Cin7 Core has not left yet, and its claim renewal
    hangs (PostgreSQL stops answering that replica without refusing: each statement waits for
    the engine's 10 s time-outs), so it cannot claim anything either. The other replica adopts
    the expired claim, reads the sale (Ship written, no PDF yet) and attaches the PDF. The slow
    replica must not upload it too: its job is stopped when the claim runs out on its own clock
    (renewal pending or not), and a write that leaves anyway is confirmed in the ledger first.
    Before, the PDF was on the sale twice (and with ``invoice_shipping``, the charge could be
    added twice): the fence only refused the slow replica's ledger settle, after Cin7 Core had
    been written."""
    a = await make_replica("a")
    b = await make_replica("b")
    upload = asyncio.Event()
    uploads: list[str] = []
    for replica in (a, b):
        hold_first(replica, "attach", uploads, upload)
    response = await a.post("/v1/labels", json=SALE, headers=AUTH)
    label_id = (await response.json())["label_id"]
    await until(lambda: asyncio.sleep(0, bool(uploads)))  # the claimer's upload is held
    slow = a if await running_owner(postgres_url, label_id) == a.app[keys.LEDGER].owner else b
    await hang_renewals(slow)
    await until(lambda: asyncio.sleep(0, len(uploads) >= 2), seconds=10)  # adopted, uploaded
    upload.set()  # the slow upload would leave now
    await asyncio.sleep(1.0)
    attached = [x["FileName"] for x in cin7_sandbox.attachments.get("sale-simple", [])]
    assert len(attached) == 1, f"written back by both replicas: attachments {attached}"
    await until(lambda: label_status(b, label_id, "completed"))


async def test_a_slow_write_back_of_a_voided_label_does_not_land_after_its_correction(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    """Regression (review round 4, finding 2). The replica writing the Ship is slow (its POST
    has not left) when the label is voided: the void sees the job running and queues the
    tracking correction behind it. The slow replica's renewal hangs and its claim expires; the
    other replica adopts the write-back (label voided: cancelled, nothing written), then runs
    the correction: the Ship holds no tracking yet, nothing to clear, done. The slow POST must
    not land after that: before, the voided label's tracking stayed on the Cin7 Core sale, Ship
    authorised, with no job left to clear it — a write-back applied to a voided label, for
    good."""
    a = await make_replica("a")
    b = await make_replica("b")
    post = asyncio.Event()
    posts: list[str] = []
    for replica in (a, b):
        hold_first(replica, "ship", posts, post)
    response = await a.post("/v1/labels", json=SALE, headers=AUTH)
    label_id = (await response.json())["label_id"]
    await until(lambda: asyncio.sleep(0, bool(posts)))  # the Ship POST is held
    voided = await b.post(f"/v1/labels/{label_id}/void", headers=AUTH)
    assert voided.status == 200, await voided.text()
    slow = a if await running_owner(postgres_url, label_id) == a.app[keys.LEDGER].owner else b
    await hang_renewals(slow)
    jobs = "SELECT kind, state FROM outbox WHERE label_id = ? ORDER BY id"

    async def corrected() -> bool:
        done = [("write_back", "cancelled"), ("void_correction", "done")]
        return await ledger_sql(postgres_url, jobs, (label_id,)) == done

    await until(corrected, seconds=10)  # adopted, cancelled, corrected
    post.set()  # the slow POST would leave now
    await asyncio.sleep(1.0)
    summary = cin7_sandbox.summary("sale-simple")
    label = await label_of(b, label_id)
    tracking = {p["tracking_number"] for p in label["packages"]}
    assert not any(t in str(summary) for t in tracking), (
        f"voided label {label_id}'s tracking {tracking} is on the sale: {summary}"
    )


@pytest.mark.parametrize("claim", ["adopted", "about_to_lapse"])
async def test_a_write_back_confirms_its_claim_in_the_ledger_before_each_cin7_write(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
    claim: str,
) -> None:
    """The replica's own idea of its claim can be wrong: a machine suspended and resumed (its
    monotonic clock may not count the suspension), a loop stalled between the renewal and the
    write. Its
    renewal round has not run yet, so nothing stopped the job — but in the ledger the claim was
    adopted by another replica, or has less than the margin (a third of the TTL) left. Right
    before the Cin7 Core write leaves, the ledger is asked: the write is not sent, and nothing is
    settled or recorded against the label (the job is not this replica's to settle); once the
    claim lapses, the job is claimed again and done once."""
    a = await make_replica("a", RATESVC_LEASE_TTL_S="30")  # no renewal round during the test
    upload = asyncio.Event()
    uploads: list[str] = []
    hold_first(a, "attach", uploads, upload)
    response = await a.post("/v1/labels", json=SALE, headers=AUTH)
    label_id = (await response.json())["label_id"]
    await until(lambda: asyncio.sleep(0, bool(uploads)))  # the Ship is written, the PDF held
    now = "EXTRACT(EPOCH FROM clock_timestamp())"
    if claim == "adopted":
        change = f"owner = 'elsewhere:1:00000000', lease_until = {now} + 30"
    else:
        change = f"lease_until = {now} + 2"  # still a's, less than the 10 s margin left
    await ledger_sql(postgres_url, f"UPDATE outbox SET {change} WHERE label_id = ?", (label_id,))
    upload.set()
    await asyncio.sleep(0.5)
    assert cin7_sandbox.attachments.get("sale-simple", []) == []
    assert (await label_of(a, label_id))["status"] == "purchased"
    rows = await ledger_sql(
        postgres_url, "SELECT state, attempts, last_error FROM outbox WHERE label_id = ?",
        (label_id,),
    )  # fmt: skip
    assert rows == [("running", 0, None)], rows  # left to whoever claims it next
    if claim == "adopted":
        return
    await asyncio.sleep(2.0)  # the claim lapses; a starting replica takes the job at once
    b = await make_replica("b", RATESVC_LEASE_TTL_S="30")
    await until(lambda: label_status(b, label_id, "completed"), seconds=10)
    assert len(cin7_sandbox.attachments["sale-simple"]) == 1
    assert ships(cin7_sandbox) == 1


# --- clocks ----------------------------------------------------------------------------------


async def test_a_replica_whose_clock_is_behind_does_not_rebuy_a_package_it_reconciles(
    make_replica: MakeReplica, sandbox: ShipStationSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (review round 4, finding 7). Attempt ages are on the database's clock, but
    the shipment list used to end at the replica's own clock (``createDateEnd = now + 10
    min``). A replica whose clock is more than 10 minutes behind (a VM resumed from a pause, a
    host without NTP) listed a window ending before the attempt: the shipment ShipStation sold
    was not in it, every page was read, the attempt (on the database's clock) was older than
    ``settle_s`` — the package was taken for provably absent and bought again. The list has no
    end now."""
    a = await make_replica("a", RATESVC_LABEL_SETTLE_S="1")

    class Behind(dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
            return dt.datetime.now(tz) - dt.timedelta(minutes=15)

    monkeypatch.setattr(
        reconcile, "dt",
        types.SimpleNamespace(datetime=Behind, UTC=dt.UTC, timedelta=dt.timedelta),
    )  # fmt: skip
    sandbox.knobs.createlabel_faults = ["drop_after_buy"]  # bought; the answer is lost
    response = await a.post("/v1/labels", json=SALE, headers=AUTH)
    label_id = (await response.json())["label_id"]

    async def settled() -> bool:
        return bool((await label_of(a, label_id))["status"] != "purchasing")

    await until(settled, seconds=20)
    assert sandbox.calls["/shipments/createlabel"] == 1, (
        f"bought {sandbox.calls['/shipments/createlabel']} times for one package"
    )
    assert "recovered" in (await label_of(a, label_id))["detail"]


async def test_a_void_still_running_after_its_lease_lapsed_is_not_settled_as_interrupted(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    """Replica A voids a 2-box label: box 1 is voided and recorded, box 2's void is at
    ShipStation (slow), and A cannot renew its leases (a PostgreSQL blip on A's side). B's sweep
    of expired void leases took the lapsed lease for a void cut off by a crash: the label went
    to ``attention`` ('void again') while A was voiding it, and A, finishing, queued a second
    correction. The sweep now leaves a lease until the void's calls to ShipStation are surely
    over (they share one request deadline), and what a void records is fenced on its lease:
    A's void finishes alone, one correction."""
    a = await make_replica("a")
    b = await make_replica("b")
    label_id = await bought_and_written_back(a, MULTIBOX)
    release = asyncio.Event()
    voiding = await void_held_at_the_second_box(a, label_id, release)
    partition_from_ledger(a)  # A's void lease is no longer renewed; A's void goes on
    await asyncio.sleep(2.5)  # more than two lease TTLs: B sweeps every third of one
    during = (await label_of(b, label_id))["status"]
    release.set()
    answer = await voiding

    assert answer.status == 200, await answer.text()
    assert during == "completed", f"B settled A's running void: the label was {during!r}"
    assert await corrections_of(postgres_url, label_id) == 1


async def test_a_void_checking_a_lost_answer_ends_by_its_deadline_never_settled_by_another(
    make_replica: MakeReplica,
    sandbox: ShipStationSandbox,
    cin7_sandbox: Cin7Sandbox,
    postgres_url: str,
) -> None:
    """The sweep of expired void leases waits until a void's ShipStation calls are surely over,
    counting on them sharing the void's one request deadline. When voidlabel's answer was lost
    (a 5xx after ShipStation voided the box) the void looked the shipment up with a new 30 s
    deadline per page: replica A, its lease renewals failing, was still looking when B's sweep
    took the lease and settled the label as interrupted, and A then lost its lease (409). The
    look-up now shares the void's deadline: A's void ends by it, recording its own outcome
    (box 2 unconfirmed: ``attention``, 'void again'), and B never settles it."""
    quick = {"RATESVC_REQUEST_DEADLINE_S": "2"}  # a void's calls "end" 2 s after it starts
    a = await make_replica("a", **quick)
    b = await make_replica("b", **quick)
    label_id = await bought_and_written_back(a, MULTIBOX)
    client = a.app[keys.ACCOUNTS]["default"].shipstation
    real_void, real_list = client.void_label, client.list_shipments
    calls: list[int] = []
    listing = asyncio.Event()
    release = asyncio.Event()

    async def second_box_answer_lost(shipment_id: int, **kwargs: Any) -> Any:
        calls.append(shipment_id)
        result = await real_void(shipment_id, **kwargs)
        if len(calls) == 2:  # voided at ShipStation, the answer lost
            raise UpstreamUnavailable("502 from voidlabel", upstream="shipstation",
                                      endpoint="voidlabel", upstream_status=502)  # fmt: skip
        return result

    async def slow_list(query: Any, *, deadline: float, **kwargs: Any) -> Any:
        listing.set()
        try:  # slow: past the void's deadline, within a page's own 30 s
            async with asyncio.timeout_at(deadline):
                await release.wait()
        except TimeoutError:
            raise UpstreamTimeout("no answer", upstream="shipstation",
                                  endpoint="shipments") from None  # fmt: skip
        return await real_list(query, deadline=deadline, **kwargs)

    client.void_label = second_box_answer_lost  # type: ignore[method-assign]
    client.list_shipments = slow_list  # type: ignore[method-assign]
    voiding = asyncio.create_task(a.post(f"/v1/labels/{label_id}/void", headers=AUTH))
    await until(lambda: asyncio.sleep(0, listing.is_set()))
    partition_from_ledger(a)  # A's void lease is no longer renewed; A's void goes on
    await asyncio.sleep(4.5)  # lease TTL (1 s) + max(0, 2 - 1) + 1 s, and a sweep round
    during = await label_of(b, label_id)
    release.set()
    answer = await voiding

    assert answer.status == 503, await answer.text()  # A's own outcome: void again
    assert (await answer.json())["code"] == "upstream_unavailable"
    assert during["status"] == "attention"
    assert "did not confirm the void of box 2" in during["detail"], during["detail"]
    assert "interrupted" not in during["detail"]
    assert await corrections_of(postgres_url, label_id) == 1
