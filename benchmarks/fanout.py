"""Fan-out: cold quote latency for 1, 4 and 8 carriers against a sequential baseline.

    python -m benchmarks.fanout [--samples 40] [--latency-ms 100] [--jitter-ms 10]

Every sample rates a shipment to a postal code never asked before (a cold cache), one request at
a time, so the latency measured is one request's. The baseline, in the same run and against the
same sandbox, calls ShipStation's ``getrates`` one carrier after another, as a plain client
library would. The sandbox gets a partner-sized rate limit so the limiter never waits here (the
budget benchmark measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time

from benchmarks.common import (
    AUTH,
    EIGHT_CARRIERS,
    ms,
    percentile,
    post_rates,
    report,
    shipment,
    stack,
)
from ratesvc.sandbox.knobs import Knobs, Latency

BASIC = {"Authorization": "Basic c2FuZGJveC1rZXk6c2FuZGJveC1zZWNyZXQ="}  # sandbox-key:secret


async def main(samples: int, latency_ms: float, jitter_ms: float) -> bool:
    knobs = Knobs(latency=Latency(base_ms=latency_ms, jitter_ms=jitter_ms), rate_limit=1_000_000)
    zips = (f"{n:05d}" for n in itertools.count(10001))
    results: dict[int, dict[str, list[float]]] = {}
    async with stack(knobs) as s:
        async with s.session.get(f"{s.url}/v1/carriers", headers=AUTH) as response:
            assert response.status == 200  # the catalogue is loaded once, outside the samples
        for count in (1, 4, 8):
            carriers = EIGHT_CARRIERS[:count]
            ours: list[float] = []
            for _ in range(samples):
                status, body, took = await post_rates(s, shipment(next(zips), carriers=carriers))
                assert status == 200 and body["complete"], body
                assert not any(q["cached"] for q in body["quotes"])
                ours.append(took)
            sequential: list[float] = []
            for _ in range(max(5, samples // 2)):
                postal = next(zips)
                started = time.perf_counter()
                for carrier in carriers:
                    leg = {"carrierCode": carrier, "fromPostalCode": "78703", "toState": "NY",
                           "toCountry": "US", "toPostalCode": postal,
                           "weight": {"value": 40, "units": "ounces"}}  # fmt: skip
                    async with s.session.post(
                        f"{s.sandbox_url}/shipments/getrates", json=leg, headers=BASIC
                    ) as response:
                        assert response.status == 200
                        await response.read()
                sequential.append(time.perf_counter() - started)
            results[count] = {"ratesvc": ours, "sequential": sequential}

    rows = []
    p50 = {n: percentile(r["ratesvc"], 50) for n, r in results.items()}
    seq50 = {n: percentile(r["sequential"], 50) for n, r in results.items()}
    for n, r in results.items():
        rows.append((n, ms(p50[n]), ms(percentile(r["ratesvc"], 95)), ms(seq50[n]),
                     ms(percentile(r["sequential"], 95)), f"{seq50[n] / p50[n]:.1f}x"))  # fmt: skip
    bound = 1.2 * p50[1] + 0.015
    checks = {
        f"8 carriers p50 {ms(p50[8])} <= 1.2 x 1-carrier p50 + 15 ms = {ms(bound)}": p50[8]
        <= bound,
        f"8 carriers {seq50[8] / p50[8]:.1f}x faster than sequential (>= 5x)": seq50[8] / p50[8]
        >= 5,
    }
    return report(
        "fanout",
        f"Cold POST /v1/rates, {samples} samples each; sandbox latency {latency_ms:g} ms "
        f"± {jitter_ms:g} ms per getrates call",
        ("carriers", "ratesvc p50", "ratesvc p95", "sequential p50", "sequential p95", "speed-up"),
        rows,
        checks,
        {"samples": samples, "latency_ms": latency_ms, "jitter_ms": jitter_ms,
         "p50_s": p50, "sequential_p50_s": seq50, "raw_s": results},
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--jitter-ms", type=float, default=10.0)
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.samples, args.latency_ms, args.jitter_ms)) else 1)
