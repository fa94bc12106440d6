"""Automation: how fast a webhook is acknowledged, and how fast a packed sale gets its label.

    python -m benchmarks.automation [--deliveries 1000] [--sales 30] [--latency-ms 100]

Both sandboxes and the service run in this process on 127.0.0.1, with automation on (``cheapest``)
and upstream latency modelled (ShipStation ``--latency-ms``, Cin7 Core 60 ms). Cin7 Core's limit
is 60 calls per 2 s window here (ShipStation: 40 per 2 s), so the run takes seconds, not minutes.

1. **Acknowledgement**: ``--deliveries`` webhook deliveries (32 at a time) of events the service
   records but does not act on, then each again (a redelivery) → latency of the 202 (recorded,
   fsynced) and of the 200 (recognised as a repeat).
2. **Pack to label**: ``--sales`` sales are packed in the Cin7 sandbox at once; the sandbox delivers
   each ``Sale/PackAuthorised`` webhook (and the benchmark delivers each twice more, as Cin7 Core's
   retries would) → time from the pack to the sale showing Ship authorised with tracking and the
   label PDF attached, labels bought per sale (must be exactly 1), and the bound the two rate limits
   set.
3. **Poller only**: webhooks off, ``--sales // 3`` sales packed, polling every second → time until
   all are shipped, and the Cin7 Core calls a poll costs once nothing changed (must be 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import AUTH, SHIP_FROM, TOKEN, ms, percentile, report, serve_app
from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.sandbox import cin7_data
from ratesvc.sandbox.cin7 import Cin7Knobs, Cin7Sandbox
from ratesvc.sandbox.knobs import Knobs, Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox

HOOK_TOKEN = "benchmark-hook-token-0123"
HOOK = {"Authorization": f"Bearer {HOOK_TOKEN}"}
WINDOW_S = 2.0


async def _service(
    ss_url: str, cin7_url: str, data_dir: Path, poll_s: float
) -> tuple[aiohttp.web.AppRunner, str]:
    settings = load_settings({
        "RATESVC_API_TOKEN": TOKEN, "RATESVC_SHIPSTATION_URL": ss_url,
        "RATESVC_SHIPSTATION_API_KEY": "sandbox-key",
        "RATESVC_SHIPSTATION_API_SECRET": "sandbox-secret",
        "RATESVC_SHIPSTATION_WINDOW_S": str(WINDOW_S), "RATESVC_SHIP_FROM": SHIP_FROM,
        "RATESVC_CIN7_URL": cin7_url, "RATESVC_CIN7_ACCOUNT_ID": "sandbox-account",
        "RATESVC_CIN7_APPLICATION_KEY": "sandbox-key", "RATESVC_CIN7_WINDOW_S": str(WINDOW_S),
        "RATESVC_CIN7_MIN_INTERVAL_S": str(WINDOW_S / 60), "RATESVC_CIN7_THROTTLE_PAUSE_S": "1",
        "RATESVC_DATA_DIR": str(data_dir), "RATESVC_LOG_LEVEL": "WARNING",
        "RATESVC_AUTOSHIP": "cheapest", "RATESVC_CIN7_WEBHOOK_TOKEN": HOOK_TOKEN,
        "RATESVC_POLL_INTERVAL_S": str(poll_s), "RATESVC_WRITEBACK_RETRY_S": "0.2",
        "RATESVC_AUTOMATION_RETRY_S": "0.5",
    })  # fmt: skip
    return await serve_app(create_app(settings))


def _add_sales(cin7: Cin7Sandbox, count: int, prefix: str) -> list[str]:
    ids = [f"{prefix}-{n:04d}" for n in range(count)]
    for n, sale_id in enumerate(ids):
        items = [("p-bread", 1 + n, "Box 1")]  # a new weight each: no rating from the cache
        number = f"SO-{prefix[:2].upper()}{n:04d}"
        cin7.add_sale(sale_id, number, "Bench Buyer", cin7_data.ADDRESS_NY, items, pack="DRAFT")
    return ids


def _shipped(cin7: Cin7Sandbox, sale_id: str) -> bool:
    ship = cin7.fulfilment(sale_id)["Ship"]
    return ship["Status"] == "AUTHORISED" and bool(cin7.attachments.get(sale_id))


async def _wait_shipped(
    cin7: Cin7Sandbox, ids: list[str], started: float, timeout_s: float
) -> dict[str, float]:
    done: dict[str, float] = {}
    end = time.perf_counter() + timeout_s
    while len(done) < len(ids) and time.perf_counter() < end:
        for sale_id in ids:
            if sale_id not in done and _shipped(cin7, sale_id):
                done[sale_id] = time.perf_counter() - started
        await asyncio.sleep(0.01)
    return done


async def _acknowledgements(
    session: aiohttp.ClientSession, url: str, deliveries: int, concurrency: int, tag: str
) -> tuple[list[float], list[float], list[int], float]:
    """(first-delivery latencies, repeat latencies, statuses, wall time of the first deliveries)."""
    gate = asyncio.Semaphore(concurrency)
    statuses: list[int] = []

    async def deliver(n: int) -> float:
        body = {"SaleID": f"{tag}-{n}", "EventType": "Sale/OrderAuthorised"}
        async with gate:
            started = time.perf_counter()
            async with session.post(url, json=body, headers=HOOK) as response:
                await response.read()
                statuses.append(response.status)
            return time.perf_counter() - started

    started = time.perf_counter()
    first = list(await asyncio.gather(*(deliver(n) for n in range(deliveries))))
    wall = time.perf_counter() - started
    again = list(await asyncio.gather(*(deliver(n) for n in range(deliveries))))
    return first, again, statuses, wall


async def main(deliveries: int, sales: int, latency_ms: float) -> bool:
    latency = Latency(base_ms=latency_ms, jitter_ms=latency_ms / 10)
    ss = ShipStationSandbox(knobs=Knobs(latency=latency, rate_limit=40, window_s=WINDOW_S))
    cin7 = Cin7Sandbox(knobs=Cin7Knobs(latency=Latency(base_ms=60, jitter_ms=10),
                                       rate_limit=60, window_s=WINDOW_S))  # fmt: skip
    for seeded in list(cin7.sales):
        cin7.sales.pop(seeded)  # only the benchmark's sales are ready for shipping
    ss_runner, ss_url = await serve_app(ss.app)
    cin7_runner, cin7_url = await serve_app(cin7.app)
    data: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            with tempfile.TemporaryDirectory(prefix="ratesvc-bench-") as data_dir:
                runner, url = await _service(ss_url, cin7_url, Path(data_dir), poll_s=0)
                hook_url = f"{url}/v1/webhooks/cin7/default"
                try:
                    first, again, statuses, _ = await _acknowledgements(
                        session, hook_url, max(1, deliveries // 4), 1, "one"
                    )
                    busy, _, busy_statuses, busy_wall = await _acknowledgements(
                        session, hook_url, deliveries, 32, "busy"
                    )
                    statuses += busy_statuses
                    cin7.webhooks.append({
                        "ID": "bench", "Type": "Sale/PackAuthorised", "IsActive": True,
                        "ExternalURL": hook_url, "ExternalAuthorizationType": "bearerauth",
                        "ExternalBearerToken": HOOK_TOKEN,
                    })  # fmt: skip
                    ids = _add_sales(cin7, sales, "hook")
                    ss.reset_counters()
                    started = time.perf_counter()
                    for sale_id in ids:
                        cin7.authorise_pack(sale_id)
                    retries = [
                        session.post(hook_url, headers=HOOK, json={
                            "SaleID": sale_id, "TaskID": cin7.fulfilment(sale_id)["TaskID"],
                            "EventType": "Sale/PackAuthorised"})
                        for sale_id in ids for _ in range(2)
                    ]  # fmt: skip
                    for response in await asyncio.gather(*retries):
                        response.release()
                    shipped = await _wait_shipped(cin7, ids, started, timeout_s=30 + sales * 2)
                    bought = ss.calls["/shipments/createlabel"]
                    async with session.get(f"{url}/v1/automation/events?status=attention&limit=200",
                                           headers=AUTH) as response:  # fmt: skip
                        attention = len((await response.json())["events"])
                finally:
                    await runner.cleanup()
            cin7.webhooks.clear()
            with tempfile.TemporaryDirectory(prefix="ratesvc-bench-") as data_dir:
                polled_ids = _add_sales(cin7, max(1, sales // 3), "poll")
                runner, url = await _service(ss_url, cin7_url, Path(data_dir), poll_s=1.0)
                try:
                    await asyncio.sleep(0.2)
                    started = time.perf_counter()
                    for sale_id in polled_ids:
                        cin7.authorise_pack(sale_id)  # nobody is subscribed
                    polled = await _wait_shipped(cin7, polled_ids, started, timeout_s=30 + sales)
                    await asyncio.sleep(WINDOW_S)  # write-backs done; the list is empty again
                    before = dict(cin7.calls)
                    await asyncio.sleep(3.05)  # three quiet polls
                    quiet = {k: v - before.get(k, 0) for k, v in cin7.calls.items()
                             if v != before.get(k, 0)}  # fmt: skip
                finally:
                    await runner.cleanup()
    finally:
        await cin7.close()
        await cin7_runner.cleanup()
        await ss_runner.cleanup()

    times = sorted(shipped.values())
    # Each sale costs 1 ShipStation call per carrier + 1 label, and Cin7 Core 1 sale read + 1 ship
    # + 1 read before writing + 1 attachment: the binding limit gives the best possible rate.
    carriers = 4
    bound_per_window = min(40 / (carriers + 1), 60 / 4)
    rate = len(times) / times[-1] * WINDOW_S if times else 0.0
    data.update(
        acknowledged_p50_s=percentile(first, 50), acknowledged_p99_s=percentile(first, 99),
        repeat_p50_s=percentile(again, 50), repeat_p99_s=percentile(again, 99),
        concurrent_32={"p50_s": percentile(busy, 50), "p99_s": percentile(busy, 99),
                       "per_s": deliveries / busy_wall},
        pack_to_label_s={"p50": percentile(times, 50) if times else None,
                         "p95": percentile(times, 95) if times else None,
                         "max": times[-1] if times else None},
        sales=sales, shipped=len(shipped), createlabel_calls=bought, attention=attention,
        sales_per_window=rate, bound_per_window=bound_per_window,
        poller={"sales": len(polled_ids), "shipped": len(polled),
                "last_s": max(polled.values()) if polled else None, "quiet_calls": quiet},
    )  # fmt: skip
    checks = {
        f"every first delivery 202, every repeat 200 ({statuses.count(202)} and "
        f"{statuses.count(200)} of {len(statuses) // 2})":
            statuses.count(202) == statuses.count(200) == len(statuses) // 2,
        f"one delivery at a time is acknowledged within milliseconds (p99 "
        f"{ms(percentile(first, 99))} < 20 ms)": percentile(first, 99) < 0.02,
        f"every packed sale shipped with its label ({len(shipped)}/{sales})": len(shipped) == sales,
        f"one label per sale despite 3 deliveries each ({bought} createlabel for {sales})":
            bought == sales,
        f"the poller alone shipped every sale ({len(polled)}/{len(polled_ids)})":
            len(polled) == len(polled_ids),
        f"a poll costs one Cin7 Core call when nothing changed ({quiet})":
            set(quiet) == {"GET /salelist"} and 2 <= quiet["GET /salelist"] <= 4,
    }  # fmt: skip
    return report(
        "automation",
        f"Automation: {deliveries} deliveries acknowledged; {sales} sales packed at once "
        f"(ShipStation {latency_ms:g} ms, Cin7 Core 60 ms; 40 and 60 calls per {WINDOW_S:g} s)",
        ("measure", "p50", "p95 / p99", "max / rate"),
        [
            (
                "202 (new event), one at a time",
                ms(percentile(first, 50)),
                ms(percentile(first, 99)),
                "",
            ),
            (
                "200 (repeat), one at a time",
                ms(percentile(again, 50)),
                ms(percentile(again, 99)),
                "",
            ),
            (
                "202 (new event), 32 at a time",
                ms(percentile(busy, 50)),
                ms(percentile(busy, 99)),
                f"{deliveries / busy_wall:.0f} events/s",
            ),
            (
                "pack → label on sale (webhook)",
                ms(percentile(times, 50)) if times else "-",
                ms(percentile(times, 95)) if times else "-",
                f"{rate:.1f} sales/window (bound {bound_per_window:.1f})",
            ),
            (
                "pack → label on sale (poller, 1 s)",
                "",
                "",
                ms(max(polled.values())) if polled else "-",
            ),
        ],
        checks,
        data,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--sales", type=int, default=30)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.deliveries, args.sales, args.latency_ms)) else 1)
