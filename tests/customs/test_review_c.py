"""What the third hostile review of customs found (the poller's customs recheck, the product record
cache, the quote path), kept as specifications: each failed on the code it reviewed (b6edd63)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.automation import poller as poller_module
from ratesvc.customs.products import ProductRecords
from ratesvc.errors import UpstreamTimeout
from ratesvc.limiter import Priority
from ratesvc.sales import Product
from ratesvc.sandbox import cin7_data
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.storage.ledger import STAMP_FORMAT
from ratesvc.upstreams.cin7.client import Cin7Client
from tests.automation.support import URL, events, pack_payload, until
from tests.automation.test_reexamine import FOREIGN
from tests.conftest import AUTH, HOOK, MakeService
from tests.customs.test_sale_labels import declared

NOHS = "sale-international-nohs"


def _only_nohs_ready(cin7: Cin7Sandbox) -> None:
    for sale_id in ("sale-simple", "sale-international", "sale-advanced", "sale-multibox",
                    *(s for s in FOREIGN if s != NOHS)):  # fmt: skip
        cin7.sales.pop(sale_id)


async def _in_attention(client: TestClient, n: int) -> bool:
    listed = await events(client)
    return len(listed) == n and all(e["status"] == "attention" for e in listed)


async def _age_events(client: TestClient, seconds: float) -> None:
    """Time passing: every event's stamps (received, updated) moved ``seconds`` into the past."""
    ledger = client.app[keys.LEDGER]

    def back(stamp: str) -> str:
        moved = dt.datetime.strptime(stamp, STAMP_FORMAT) - dt.timedelta(seconds=seconds)
        return moved.strftime(STAMP_FORMAT)

    rows = await ledger.engine.fetch("SELECT event_id, received_at, updated_at FROM events")
    for event_id, received, updated in rows:
        await ledger.engine.execute(
            "UPDATE events SET received_at = ?, updated_at = ? WHERE event_id = ?",
            (back(received), back(updated), event_id),
        )


# --- C1: every superseded customs attention of a sale is re-queued, for ever -------------------


async def test_c1_a_sale_changed_after_a_customs_refusal_is_not_processed_twice_per_recheck(
    make_automated: MakeService,
    cin7_sandbox: Cin7Sandbox,
    sandbox: ShipStationSandbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sale refused for customs is edited in Cin7 Core (its ``Updated`` stamp changes; the
    product is not fixed). The poller records a new event, as designed — and the old event in
    attention stays there too. From then on every recheck re-queues *both* events: the sale and
    all its products are read twice per recheck, and each further edit adds one more event that
    is re-queued every 30 minutes for ever. One poll must examine a sale once."""
    _only_nohs_ready(cin7_sandbox)
    client = await make_automated()
    poller, services = client.app[keys.POLLER], client.app[keys.ACCOUNTS]["default"]
    automation = client.app[keys.AUTOMATION]
    await client.post(URL, json=pack_payload(cin7_sandbox, NOHS), headers=HOOK)
    await until(lambda: _in_attention(client, 1))
    await poller.poll(services)  # notes the sale's stamp on the event
    cin7_sandbox.touch(cin7_sandbox.sales[NOHS])  # a person edits the sale, not the product
    await poller.poll(services)  # the changed sale is examined again: a second event
    await until(lambda: _in_attention(client, 2))
    await poller.poll(services)  # stamps noted
    await automation.idle()

    await _age_events(client, poller_module.CUSTOMS_RECHECK_S + 1)  # 30 minutes later
    reads = cin7_sandbox.calls["GET /sale"]
    await poller.poll(services)
    await asyncio.sleep(0.1)
    await automation.idle()
    await until(lambda: _in_attention(client, 2))

    assert cin7_sandbox.calls["GET /sale"] - reads == 1, "one recheck read the sale twice"


# --- C2: an unchanged refusal is rechecked every 30 minutes without end -------------------------


async def test_c2_an_unchanged_customs_refusal_is_not_rechecked_every_30_minutes_for_ever(
    make_automated: MakeService,
    cin7_sandbox: Cin7Sandbox,
    sandbox: ShipStationSandbox,
) -> None:
    """Nothing was fixed: every recheck reads the sale and every product of it again (the cache
    has long expired, and the wanting ones were forgotten), resets the attempts, and ends in the
    same attention — 48 times a day per stuck sale, at normal priority (not the poller's
    background priority), with no back-off and no end. Rechecks of sales refused together fall
    due together: a batch of them is a burst on the 60-calls-a-minute budget people share. After
    a few unchanged refusals the recheck must back off (or stop and leave it to a person)."""
    _only_nohs_ready(cin7_sandbox)
    client = await make_automated()
    poller, services = client.app[keys.POLLER], client.app[keys.ACCOUNTS]["default"]
    automation = client.app[keys.AUTOMATION]
    await client.post(URL, json=pack_payload(cin7_sandbox, NOHS), headers=HOOK)
    await until(lambda: _in_attention(client, 1))
    await poller.poll(services)
    first = cin7_sandbox.calls["GET /product"]

    rechecks = 0
    for _ in range(6):  # three hours, nothing fixed
        await _age_events(client, poller_module.CUSTOMS_RECHECK_S + 1)
        before = cin7_sandbox.calls["GET /product"]
        await poller.poll(services)
        await asyncio.sleep(0.1)
        await automation.idle()
        await until(lambda: _in_attention(client, 1))
        await poller.poll(services)  # notes the stamp again
        rechecks += cin7_sandbox.calls["GET /product"] > before

    assert first > 0
    assert rechecks <= 3, f"{rechecks} rechecks in 3 h of an unchanged refusal, each re-reading"


# --- C3: a sale with more products than the cache keeps for a read can never be declared -------


class PacedCin7:
    """``get_product`` as Cin7 Core's limiter paces it: one call at a time, ``interval_s`` each."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.turn = asyncio.Lock()
        self.calls = 0

    async def get_product(
        self, product_id: str, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> Product | None:
        async with self.turn:
            await asyncio.sleep(self.interval_s)
            self.calls += 1
        return Product(
            product_id=product_id, sku=product_id, weight=None, weight_unit=None, sides=None,
            length_unit=None, hs_code="0902.10", origin="CN",
        )  # fmt: skip


async def test_c3_a_sale_of_many_products_is_declared_by_retrying_as_the_504_says() -> None:
    """Scaled: Cin7 Core's pace (a call a second), the TTL (60 s) and a request deadline
    (10 s; automation 30 s) become 0.05 s, 0.5 s and 0.3 s. With more products than the TTL
    covers at that pace (over 60 in real terms), the first records read expire before the last
    are read, so no request ever finds them all: the 504 says "try again in a few seconds", and
    every retry times out again for ever (automation gives up after six attempts, with no
    recheck). Each retry re-reads the expired ones: Cin7 calls burn without end."""
    cin7 = PacedCin7(interval_s=0.05)
    kept = ProductRecords(cast(Cin7Client, cin7), ttl_s=0.5)
    loop = asyncio.get_running_loop()
    wanted = [f"p-{i}" for i in range(20)]  # 1 s of reads; the TTL keeps 0.5 s of them

    outcome: Any = None
    for _ in range(15):  # the person retries for 4.5 s, as the 504 asks
        try:
            outcome = await kept.read(wanted, deadline=loop.time() + 0.3)
            break
        except UpstreamTimeout as exc:
            outcome = exc
    assert not isinstance(outcome, UpstreamTimeout), f"never declared; {cin7.calls} product calls"


# --- C4: a quote is bought with another box's declaration when the sale now cannot be declared --


async def test_c4_products_moved_between_boxes_since_the_quote_are_sale_changed_if_now_incomplete(
    make_labelling: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """README: "Buying a sale's quote reads the sale again: when its boxes now hold other
    products (SKU or quantity per box) the answer is 409 sale_changed". The check compares the
    quote's declared items with the declaration built *now* — and is skipped when the sale cannot
    be declared now (``any(held_now)`` is false). Two products of the same weight swap boxes and a
    product record meanwhile lost its HS code: the quote is bought with Box 1's label declaring
    the goods now in Box 2 and vice versa — a false declaration on each parcel."""
    cin7_sandbox.products["p-cup"] = {**cin7_sandbox.products["p-mug"], "ID": "p-cup",
                                      "SKU": "Cup", "Name": "Porcelain Cup",
                                      "HSCode": "6911.10"}  # fmt: skip
    sale = cin7_sandbox.add_sale("sale-c4", "SO-9C4", "Liam Tremblay", cin7_data.ADDRESS_CA,
                                 [("p-mug", 1, "Box 1"), ("p-cup", 1, "Box 2")])  # fmt: skip
    client = await make_labelling(RATESVC_CUSTOMS_PRODUCT_TTL_S="0")
    rates = await (await client.post("/v1/rates", json={"sale_id": "sale-c4"},
                                     headers=AUTH)).json()  # fmt: skip
    quote = next(q for q in rates["quotes"] if q["service_code"] == "ups_standard_international")

    packed = sale["Fulfilments"][0]["Pack"]["Lines"]
    packed[0]["Box"], packed[1]["Box"] = "Box 2", "Box 1"  # repacked: the cup now in Box 1
    packed.reverse()
    cin7_sandbox.products["p-mug"]["HSCode"] = ""  # and a record edited meanwhile

    response = await client.post("/v1/labels", json={"quote_id": quote["quote_id"]},
                                 headers=AUTH)  # fmt: skip
    sent = [[i["description"] for i in items] for items in declared(sandbox)]

    assert response.status == 409, (response.status, sent)
    assert (await response.json())["code"] == "sale_changed"


# --- C5: a shared product read outlives the app ---------------------------------------------------


class SlowCin7:
    async def get_product(
        self, product_id: str, *, deadline: float | None, priority: Priority = Priority.NORMAL
    ) -> Product | None:
        await asyncio.sleep(30)
        return None


async def test_c5_closing_the_app_leaves_no_product_read_running(
    make_labelling: MakeService, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """A rating that gave up waiting for product records (half its deadline) leaves the shared
    reads running, by design, for up to READ_S (120 s). Nothing owns them: the app's cleanup
    closes the Cin7 Core client under them and they stay pending after the app is gone
    ("Task was destroyed but it is pending!" at loop close; in a restarted app they hold the
    closed client). ProductRecords needs a close() in the cleanup that cancels its reads."""
    client = await make_labelling(RATESVC_REQUEST_DEADLINE_S="1")
    products = client.app[keys.ACCOUNTS]["default"].products
    assert products is not None
    products._cin7 = cast(Cin7Client, SlowCin7())

    rated = await client.post("/v1/rates", json={"sale_id": "sale-international"}, headers=AUTH)
    assert rated.status == 200, await rated.text()
    await client.close()

    left = [t for t in asyncio.all_tasks() if not t.done()
            and "ProductRecords._fetch" in repr(t.get_coro())]  # fmt: skip
    for task in left:
        task.cancel()
    assert not left, f"{len(left)} product reads still running after the app closed"
