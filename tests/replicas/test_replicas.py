"""Three ``ratesvc serve`` processes sharing one PostgreSQL database and one Redis key prefix
(both fresh for each test, reached through :class:`~tests.replicas.harness.CuttableProxy` so a
test can take either away), in front of the sandboxes served from the test's event loop, with
requests spread round-robin. What issue 12 promises of replicas, end to end:

* duplicate label requests on every replica at once buy one label per box, all answered alike;
* a burst of distinct quotes spends one ShipStation budget: no 429, the windows full;
* a replica killed while buying: another adopts the purchase through reconciliation once its
  lease lapses (``RATESVC_LEASE_TTL_S`` is 2 s here), or when the client retries elsewhere;
* a quote made on one replica is bought on another;
* Redis going away and coming back: no 5xx, and the budget kept as the fallback promises;
* PostgreSQL going away: ``/readyz`` and purchases say 503 at once, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from benchmarks.common import shipment
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.api.test_labels import EXPLICIT
from tests.conftest import AUTH, service_env
from tests.replicas.harness import CuttableProxy, Replica, Replicas

REPLICAS = 3
SHIP = "POST /sale/fulfilment/ship"
# How long a claim (a purchase's, a write-back job's) outlives a replica that stopped renewing it.
LEASE = {"RATESVC_LEASE_TTL_S": "2"}

Cluster = Callable[..., contextlib.AbstractAsyncContextManager["Running"]]


@dataclass
class Running:
    replicas: Replicas
    session: aiohttp.ClientSession
    postgres: CuttableProxy
    redis: CuttableProxy

    @property
    def members(self) -> list[Replica]:
        return self.replicas.members

    def next(self) -> Replica:
        return self.replicas.next()

    def logs(self) -> str:
        return "\n".join(f"--- {m.name}\n{m.tail(30)}" for m in self.members)


@pytest.fixture
def cluster(
    sandbox_url: str,
    cin7_url: str,
    postgres_url: str,
    redis_prefix: tuple[str, str],
    tmp_path: Path,
) -> Cluster:
    """``async with cluster(**env) as c``: three replicas on this test's database and prefix,
    ``env`` added to their settings."""

    @contextlib.asynccontextmanager
    async def start(**env: str) -> AsyncIterator[Running]:
        redis_url, prefix = redis_prefix
        postgres, redis = CuttableProxy("127.0.0.1", 5432), CuttableProxy("127.0.0.1", 6379)
        await postgres.start()
        await redis.start()
        settings = service_env(
            sandbox_url, tmp_path / "unused", cin7_url,
            RATESVC_DATABASE_URL=postgres.url_for(postgres_url),
            RATESVC_REDIS_URL=redis.url_for(redis_url), RATESVC_REDIS_PREFIX=prefix,
            RATESVC_REPLICAS=str(REPLICAS), RATESVC_LOG_LEVEL="INFO",
            RATESVC_LABEL_SETTLE_S="5", RATESVC_WRITEBACK_RETRY_S="0.05",
            RATESVC_CIN7_MIN_INTERVAL_S="0.01", RATESVC_CIN7_THROTTLE_PAUSE_S="0.1",
            **LEASE, **env,
        )  # fmt: skip
        replicas = Replicas(tmp_path, settings, REPLICAS)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=60)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                await replicas.start(session)
                try:
                    yield Running(replicas, session, postgres, redis)
                finally:
                    await replicas.stop(grace_s=5)
        finally:
            await postgres.close()
            await redis.close()

    return start


# --- small helpers -------------------------------------------------------------------------------


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or None, headers)."""
    async with session.request(method, url, json=body, headers={**AUTH, **(headers or {})}) as r:
        payload = await r.json(content_type=None) if r.content_type.endswith("json") else None
        return r.status, payload, dict(r.headers)


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> float:
    """Poll ``check`` until it holds (at most ``seconds``); the seconds it took."""
    started = time.perf_counter()
    while not await check():
        assert time.perf_counter() - started < seconds, f"not within {seconds} s: {what}"
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


def quote_body(postal_code: str) -> dict[str, Any]:
    """One distinct UPS quote (one leg, one call)."""
    return shipment(postal_code, carriers=["ups"])


def live_shipments(sandbox: ShipStationSandbox, label_id: str) -> int:
    return sum(
        1
        for s in sandbox.shipments.values()
        if not s["voided"] and s["advancedOptions"]["customField1"].startswith(f"{label_id}:")
    )


def createlabel_calls(sandbox: ShipStationSandbox) -> int:
    return sandbox.calls["/shipments/createlabel"]


async def labels_of_sale(c: Running, replica: Replica, sale_id: str) -> list[dict[str, Any]]:
    status, body, _ = await call(c.session, "GET", f"{replica.url}/v1/labels?sale_id={sale_id}")
    assert status == 200, body
    labels: list[dict[str, Any]] = body["labels"]
    return labels


def shipped_with(cin7: Cin7Sandbox, sale_id: str, label: dict[str, Any]) -> None:
    """The sale's Ship is authorised with the label's tracking numbers, one per box."""
    ship = cin7.fulfilment(sale_id)["Ship"]
    assert ship["Status"] == "AUTHORISED"
    tracking = sorted(line["TrackingNumber"] for line in ship["Lines"])
    assert tracking == sorted(p["tracking_number"] for p in label["packages"])


def written_back_once(cin7: Cin7Sandbox, sale_id: str, label: dict[str, Any]) -> None:
    """The only sale of the test was shipped by exactly one ``POST``, with the label's tracking."""
    assert cin7.calls[SHIP] == 1, dict(cin7.calls)
    shipped_with(cin7, sale_id, label)


# --- a. duplicates on every replica at once ------------------------------------------------------

KEYED = {"sale_id": "sale-multibox", "carrier_code": "ups", "service_code": "ups_ground"}
KEYLESS = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}


async def _duplicates(c: Running) -> list[tuple[int, Any, dict[str, str]]]:
    """20 identical requests with one Idempotency-Key for a two-box sale and 20 identical ones
    without a key for a one-box sale, all at once, round-robin over the replicas."""
    return await asyncio.gather(
        *(call(c.session, "POST", f"{c.next().url}/v1/labels", KEYED,
               {"Idempotency-Key": "dup-multibox"}) for _ in range(20)),
        *(call(c.session, "POST", f"{c.next().url}/v1/labels", KEYLESS) for _ in range(20)),
    )  # fmt: skip


async def _one_label_per_sale_written_back_once(
    c: Running, sandbox: ShipStationSandbox, cin7: Cin7Sandbox
) -> None:
    for sale_id, boxes in (("sale-multibox", 2), ("sale-simple", 1)):
        labels: list[dict[str, Any]] = []

        async def completed(sale_id: str = sale_id) -> bool:
            nonlocal labels
            labels = await labels_of_sale(c, c.next(), sale_id)
            return all(label["status"] == "completed" for label in labels)

        await until(completed, 15, f"{sale_id} labelled and written back")
        assert len(labels) == 1, labels
        assert live_shipments(sandbox, labels[0]["label_id"]) == boxes
        shipped_with(cin7, sale_id, labels[0])
    assert createlabel_calls(sandbox) == 3  # 2 boxes + 1 box
    assert cin7.calls[SHIP] == 2  # one write-back per sale


async def test_duplicate_label_requests_on_three_replicas_buy_one_label_per_box(
    cluster: Cluster, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """At ShipStation and in Cin7 Core: one purchase per box, one write-back per sale (the
    ledger's unique claims and conditional package moves decide between replicas)."""
    sandbox.set_latency(200)  # the purchases overlap for certain
    async with cluster() as c:
        answers = await _duplicates(c)
        created = [body["label_id"] for status, body, _ in answers if status == 201]
        assert len(created) == 2, [(s, b) for s, b, _ in answers]  # one per sale
        await _one_label_per_sale_written_back_once(c, sandbox, cin7_sandbox)


async def test_duplicate_label_requests_on_three_replicas_all_answer_with_the_one_label(
    cluster: Cluster, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """And every client is answered alike: one 201, the rest 200 naming the same label and
    packages. (Before the purchase leases, a replica that found the label being bought
    elsewhere resumed the purchase itself, reconciled the package the other was buying and
    failed to record it a second time: a 500.)"""
    sandbox.set_latency(200)
    async with cluster() as c:
        answers = await _duplicates(c)
        for group in (answers[:20], answers[20:]):
            statuses = sorted(status for status, _, _ in group)
            assert statuses == [200] * 19 + [201], ([b for _, b, _ in group], c.logs())
            assert len({body["label_id"] for _, body, _ in group}) == 1
            bought = {tuple(p["tracking_number"] for p in body["packages"]) for _, body, _ in group
                      if body["status"] != "purchasing"}  # fmt: skip
            assert len(bought) == 1, bought
        await _one_label_per_sale_written_back_once(c, sandbox, cin7_sandbox)


# --- b. one budget -------------------------------------------------------------------------------


async def test_a_burst_of_distinct_quotes_spends_one_budget_without_429(
    cluster: Cluster, sandbox: ShipStationSandbox
) -> None:
    """300 distinct one-carrier quotes at once, round-robin, against 40 calls per 1 s window:
    every one answered, no 429 at the sandbox, and the windows the burst kept busy from start
    to end (not the first and last, which it met part-way) at least 90 % used."""
    limit, window_s = 40, 1.0
    sandbox.set_latency(20)
    sandbox.apply_window(limit=limit, window_s=window_s)
    async with cluster(RATESVC_SHIPSTATION_WINDOW_S=str(window_s),
                       RATESVC_REQUEST_DEADLINE_S="40") as c:  # fmt: skip
        before = dict(sandbox.window.served_per_window)
        started = time.perf_counter()
        answers = await asyncio.gather(
            *(call(c.session, "POST", f"{c.next().url}/v1/rates", quote_body(f"{10001 + i:05d}"))
              for i in range(300))
        )  # fmt: skip
        took = time.perf_counter() - started

    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: 300}, (statuses, c.logs())
    assert all(body["complete"] and len(body["quotes"]) > 0 for _, body, _ in answers)
    assert sandbox.throttled == 0
    served = {i: n - before.get(i, 0) for i, n in sandbox.window.served_per_window.items()}
    active = [i for i in sorted(served) if served[i]]
    busy = [served.get(i, 0) for i in range(active[0], active[-1] + 1)]
    assert sum(busy) >= 300
    full = busy[1:-1]  # the burst began and ended part-way through the first and last
    used = sum(full) / (limit * len(full))
    assert used >= 0.9, (busy, took)
    assert max(busy) <= limit


# --- c. a replica killed while buying ------------------------------------------------------------


async def _kill_the_buyer(
    c: Running, sandbox: ShipStationSandbox, body: dict[str, Any], key: str
) -> Replica:
    """Send the purchase to the first replica, hold ShipStation's answer once the label is
    bought, and SIGKILL that replica mid-call. The replica killed."""
    sandbox.knobs.createlabel_faults = ["hang_after_buy"]
    sandbox.knobs.hang_s = 60
    buyer = c.members[0]
    request = asyncio.create_task(
        call(c.session, "POST", f"{buyer.url}/v1/labels", body, {"Idempotency-Key": key})
    )

    async def bought() -> bool:
        return len(sandbox.shipments) == 1

    await until(bought, 10, "the label bought at ShipStation")
    buyer.kill()
    assert buyer.process is not None
    await buyer.process.wait()
    with pytest.raises(aiohttp.ClientError):
        await request
    return buyer


async def test_a_purchase_whose_replica_is_killed_is_adopted_by_another(
    cluster: Cluster, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """Nobody asks again: the dead replica's lease lapses and another replica reconciles the
    purchase with ShipStation (adopting the label bought, never buying it again) and writes it
    back once."""
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    async with cluster() as c:
        buyer = await _kill_the_buyer(c, sandbox, body, "killed-1")
        survivor = c.members[1]
        labels: list[dict[str, Any]] = []

        async def adopted() -> bool:
            nonlocal labels
            labels = await labels_of_sale(c, survivor, "sale-simple")
            return len(labels) == 1 and labels[0]["status"] == "completed"

        took = await until(adopted, 12, "the purchase adopted and written back")
        assert buyer.process is not None and buyer.process.returncode is not None
    assert createlabel_calls(sandbox) == 1, took
    assert live_shipments(sandbox, labels[0]["label_id"]) == 1
    written_back_once(cin7_sandbox, "sale-simple", labels[0])


async def test_a_killed_replicas_purchase_retried_on_another_is_reconciled_not_rebought(
    cluster: Cluster, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    """The client retries (same Idempotency-Key) on another replica: it answers with the label
    the dead one bought, found at ShipStation by its purchase key, and writes it back once."""
    body = {"sale_id": "sale-simple", "carrier_code": "ups", "service_code": "ups_ground"}
    async with cluster() as c:
        await _kill_the_buyer(c, sandbox, body, "killed-2")
        survivors = itertools.cycle(c.members[1:])
        label: dict[str, Any] = {}

        async def finished() -> bool:
            nonlocal label
            replica = next(survivors)
            status, label, _ = await call(
                c.session, "POST", f"{replica.url}/v1/labels", body,
                {"Idempotency-Key": "killed-2"},
            )  # fmt: skip
            assert status in (200, 409), (status, label, c.logs())
            return status == 200 and label["status"] == "completed"

        await until(finished, 25, "the purchase finished by a survivor")
    assert createlabel_calls(sandbox) == 1
    assert live_shipments(sandbox, label["label_id"]) == 1
    written_back_once(cin7_sandbox, "sale-simple", label)


# --- d. quoted on one, bought on another ---------------------------------------------------------


async def test_a_quote_made_on_one_replica_is_bought_on_another(
    cluster: Cluster, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    async with cluster() as c:
        a, b, other = c.members
        status, quoted, _ = await call(c.session, "POST", f"{a.url}/v1/rates",
                                       {"sale_id": "sale-simple"})  # fmt: skip
        assert status == 200, quoted
        quote = min(quoted["quotes"], key=lambda q: float(q["total"]))
        status, seen, _ = await call(c.session, "GET", f"{other.url}/v1/quotes/{quote['quote_id']}")
        assert status == 200, seen
        status, label, _ = await call(c.session, "POST", f"{b.url}/v1/labels",
                                      {"quote_id": quote["quote_id"]})  # fmt: skip
        assert status == 201, (label, c.logs())
        assert (label["carrier_code"], label["service_code"]) == (
            quote["carrier_code"], quote["service_code"]
        )  # fmt: skip

        async def completed() -> bool:
            status, body, _ = await call(c.session, "GET", f"{a.url}/v1/labels/{label['label_id']}")
            return status == 200 and body["status"] == "completed"

        await until(completed, 10, "written back")
    assert createlabel_calls(sandbox) == 1
    assert cin7_sandbox.calls[SHIP] == 1


# --- f. PostgreSQL unreachable -------------------------------------------------------------------

PROBLEM = "application/problem+json"


async def test_postgresql_unreachable_answers_503_at_once_and_loses_nothing(
    cluster: Cluster, sandbox: ShipStationSandbox, cin7_sandbox: Cin7Sandbox
) -> None:
    async with cluster() as c:
        a, b, other = c.members
        # A label bought and written back before the cut.
        status, before, _ = await call(c.session, "POST", f"{a.url}/v1/labels", KEYLESS,
                                       {"Idempotency-Key": "before"})  # fmt: skip
        assert status == 201, before

        async def before_completed() -> bool:
            nonlocal before
            status, before, _ = await call(c.session, "GET",
                                           f"{a.url}/v1/labels/{before['label_id']}")  # fmt: skip
            return status == 200 and before["status"] == "completed"

        await until(before_completed, 10, "the first label written back")
        # A purchase under way at the cut: its first box bought, ShipStation's answer held.
        sandbox.knobs.createlabel_faults = ["hang_after_buy"]
        sandbox.knobs.hang_s = 3
        during = asyncio.create_task(
            call(c.session, "POST", f"{b.url}/v1/labels", KEYED, {"Idempotency-Key": "during"})
        )

        async def box_bought() -> bool:
            return len(sandbox.shipments) == 2

        await until(box_bought, 10, "the first box bought")
        await c.postgres.cut()
        cut_at = time.perf_counter()

        for replica in c.members:  # readyz names the ledger, within about a second
            started = time.perf_counter()
            status, ready, _ = await call(c.session, "GET", f"{replica.url}/readyz")
            assert (status, ready["failed"]) == (503, ["ledger"]), ready
            assert time.perf_counter() - started < 2.5
        # A new purchase is refused at once with a problem the client can act on.
        started = time.perf_counter()
        status, problem, headers = await call(c.session, "POST", f"{other.url}/v1/labels",
                                              EXPLICIT, {"Idempotency-Key": "refused"})  # fmt: skip
        refused_in = time.perf_counter() - started
        assert status == 503, (problem, c.logs())
        assert problem["code"] == "storage_unavailable", problem
        assert headers["Content-Type"].startswith(PROBLEM)
        assert int(headers["Retry-After"]) >= 1
        assert refused_in < 3, refused_in
        # Reading a label is refused the same way; quoting does not need the ledger.
        status, problem, _ = await call(c.session, "GET", f"{a.url}/v1/labels/{before['label_id']}")
        assert (status, problem["code"]) == (503, "storage_unavailable"), problem
        status, rated, _ = await call(c.session, "POST", f"{a.url}/v1/rates", quote_body("10118"))
        assert status == 200, rated
        # The purchase under way cannot record its box: its client is told to retry.
        status, problem, _ = await during
        assert (status, problem["code"]) == (503, "storage_unavailable"), (problem, c.logs())
        assert time.perf_counter() - cut_at < 10

        await c.postgres.restore()

        async def ready_again() -> bool:
            answers = [await call(c.session, "GET", f"{m.url}/readyz") for m in c.members]
            return all(status == 200 for status, _, _ in answers)

        await until(ready_again, 10, "every replica ready again")
        # The label bought before the cut is intact, PDF included.
        status, intact, _ = await call(c.session, "GET", f"{b.url}/v1/labels/{before['label_id']}")
        assert (status, intact) == (200, before)
        async with c.session.get(
            f"{other.url}/v1/labels/{before['label_id']}/packages/1/label.pdf", headers=AUTH
        ) as response:
            assert response.status == 200
            assert (await response.read()).startswith(b"%PDF")
        # The purchase under way is finished without anyone asking (its lease lapses; a replica
        # adopts it): the box bought during the outage is found at ShipStation, not bought
        # again, and the other box is bought. Its client's retry then gets it.
        finished: dict[str, Any] = {}

        async def adopted() -> bool:
            labels = await labels_of_sale(c, c.next(), "sale-multibox")
            return len(labels) == 1 and labels[0]["status"] == "completed"

        await until(adopted, 15, "the purchase under way adopted and completed")
        status, finished, _ = await call(c.session, "POST", f"{c.next().url}/v1/labels", KEYED,
                                         {"Idempotency-Key": "during"})  # fmt: skip
        assert (status, finished["status"]) == (200, "completed"), finished
        assert live_shipments(sandbox, finished["label_id"]) == 2
        # The refused request, retried, buys.
        status, late, _ = await call(c.session, "POST", f"{a.url}/v1/labels", EXPLICIT,
                                     {"Idempotency-Key": "refused"})  # fmt: skip
        assert status == 201, late

        async def late_completed() -> bool:
            status, body, _ = await call(c.session, "GET", f"{b.url}/v1/labels/{late['label_id']}")
            return status == 200 and body["status"] == "completed"

        await until(late_completed, 10, "the refused purchase, retried, completed")
    assert createlabel_calls(sandbox) == 1 + 2 + 1  # each box once
    assert cin7_sandbox.calls[SHIP] == 2  # sale-simple and sale-multibox, once each
    shipped_with(cin7_sandbox, "sale-simple", before)
    shipped_with(cin7_sandbox, "sale-multibox", finished)


# --- e. Redis stopped and started mid-run --------------------------------------------------------


async def _sharing(c: Running) -> list[str]:
    """Each replica's ShipStation limiter: shared, or degraded (Redis unreachable)."""
    states = []
    for replica in c.members:
        status, body, _ = await call(c.session, "GET", f"{replica.url}/v1/status")
        assert status == 200, body
        states.append(body["shipstation"][0]["sharing"])
    return states


async def test_redis_stopped_and_started_mid_run_answers_no_5xx_and_keeps_the_budget(
    cluster: Cluster, sandbox: ShipStationSandbox
) -> None:
    """Quotes keep coming (more than the budget allows) while Redis goes away for a few windows
    and comes back. The fallback's promise (:mod:`ratesvc.storage.shared_limiter`): while Redis
    is unreachable each replica takes at most ``limit // RATESVC_REPLICAS`` calls a window, so
    the replicas together stay within the limit; once back, the shared window is probed again.
    So: no 5xx at all; no 429 and at most 3 x 13 calls in every window Redis was away for whole;
    no 429 in any window after every replica rejoined; and in the two windows where it changed
    (the cut, the return) at most one refused probe per replica."""
    limit, window_s = 40, 1.0
    share = limit // REPLICAS
    sandbox.set_latency(20)
    sandbox.apply_window(limit=limit, window_s=window_s)
    async with cluster(RATESVC_SHIPSTATION_WINDOW_S=str(window_s),
                       RATESVC_REQUEST_DEADLINE_S="30") as c:  # fmt: skip
        zips = iter(range(20001, 99999))
        answers: list[tuple[float, int, Any]] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                body = quote_body(f"{next(zips):05d}")
                status, payload, _ = await call(c.session, "POST", f"{c.next().url}/v1/rates", body)
                answers.append((time.monotonic(), status, payload))

        clients = [asyncio.create_task(client()) for _ in range(30)]  # ~3x what the budget takes
        await asyncio.sleep(3 * window_s)
        cut_at = time.monotonic()
        await c.redis.cut()

        async def degraded() -> bool:
            return await _sharing(c) == ["degraded"] * REPLICAS

        await until(degraded, 10, "every replica on its local share")
        await asyncio.sleep(4 * window_s)
        back_at = time.monotonic()
        await c.redis.restore()

        async def shared() -> bool:
            return await _sharing(c) == ["shared"] * REPLICAS

        await until(shared, 10, "every replica sharing the window again")
        rejoined_at = time.monotonic()
        await asyncio.sleep(4 * window_s)
        stop.set()
        await asyncio.gather(*clients)
        ended_at = time.monotonic()

    statuses = Counter(status for _, status, _ in answers)
    assert set(statuses) == {200}, (statuses, [p for _, s, p in answers if s != 200][:3])
    window = sandbox.window
    served, refused = window.served_per_window, window.throttled_per_window
    moments = (cut_at, back_at, rejoined_at, ended_at)
    cut, back, rejoined, end = (window.index_at(moment) for moment in moments)
    figures = {i: (served[i], refused[i]) for i in range(cut - 2, end + 1)}
    away = range(cut + 1, back)  # windows Redis was away for whole
    assert len(away) >= 3, figures
    for i in away:
        assert refused[i] == 0 and served[i] <= REPLICAS * share, (i, figures)
    after = range(rejoined + 1, end)  # whole windows after every replica rejoined
    assert len(after) >= 3, figures
    for i in after:
        assert refused[i] == 0, (i, figures)
    for i in (*range(cut, cut + 1), *range(back, rejoined + 1)):
        assert refused[i] <= REPLICAS, (i, figures)
    assert sum(refused.values()) == sum(refused[i] for i in (cut, *range(back, rejoined + 1)))
