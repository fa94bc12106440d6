"""Coalescing: many identical cold requests at once make one upstream call per leg.

    python -m benchmarks.coalescing [--requests 200] [--carriers 4] [--latency-ms 100]

The carrier catalogue is loaded first; then ``--requests`` identical requests for a shipment
never rated before are sent at the same moment. Upstream calls are counted at the sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def main(requests: int, carriers: int, latency_ms: float) -> bool:
    codes = EIGHT_CARRIERS[:carriers]
    knobs = Knobs(
        latency=Latency(base_ms=latency_ms, jitter_ms=latency_ms / 10), rate_limit=1_000_000
    )
    async with stack(knobs, carriers=codes) as s:
        async with s.session.get(f"{s.url}/v1/carriers", headers=AUTH) as response:
            assert response.status == 200
        s.sandbox.reset_counters()
        body = shipment("10118")
        started = time.perf_counter()
        results = await asyncio.gather(*(post_rates(s, body) for _ in range(requests)))
        wall = time.perf_counter() - started
        calls = {k.split(":", 1)[1]: v for k, v in s.sandbox.carrier_calls.items()}
    statuses = [status for status, _, _ in results]
    latencies = [took for _, _, took in results]
    quote_counts = {len(payload["quotes"]) for _, payload, _ in results}
    checks = {
        f"exactly one upstream call per leg ({sum(calls.values())} calls for {carriers} legs)":
            calls == dict.fromkeys(codes, 1),
        f"every request answered 200 ({statuses.count(200)}/{requests})":
            statuses.count(200) == requests,
        "every answer has the same quotes": len(quote_counts) == 1,
    }  # fmt: skip
    return report(
        "coalescing",
        f"{requests} identical cold POST /v1/rates at once, {carriers} carriers, sandbox latency "
        f"{latency_ms:g} ms",
        ("requests", "upstream getrates calls", "p50", "p95", "wall time"),
        [(requests, sum(calls.values()), ms(percentile(latencies, 50)),
          ms(percentile(latencies, 95)), ms(wall))],
        checks,
        {"requests": requests, "carriers": list(codes), "calls_by_carrier": calls,
         "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95), "wall_s": wall},
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--carriers", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(main(args.requests, args.carriers, args.latency_ms)) else 1)
