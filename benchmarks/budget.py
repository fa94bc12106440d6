"""Budget: a burst of distinct shipments against ShipStation's per-key window.

    python -m benchmarks.budget [--shipments 500] [--limit 40] [--window-s 1] [--latency-ms 100]

The sandbox enforces ``--limit`` calls per fixed ``--window-s`` window (ShipStation: 40 per 60 s;
a short window keeps the run short). ``--shipments`` requests for different destinations, one
carrier each, arrive at once with a deadline long enough for all of them to be served in turn.
Reported: 429s the sandbox had to send (target 0), how full each window was (target >= 90 % of
the limit, the last, partial window excluded), and how many quotes were served.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time

from benchmarks.common import AUTH, post_rates, report, shipment, stack
from ratesvc.sandbox.knobs import Knobs, Latency


async def main(shipments: int, limit: int, window_s: float, latency_ms: float) -> bool:
    knobs = Knobs(latency=Latency(base_ms=latency_ms, jitter_ms=latency_ms / 10),
                  rate_limit=limit, window_s=window_s)  # fmt: skip
    deadline_s = math.ceil(shipments / limit + 3) * window_s + 5
    async with stack(
        knobs, carriers=("ups",), RATESVC_REQUEST_DEADLINE_S=str(deadline_s),
        RATESVC_SHIPSTATION_WINDOW_S=str(window_s),
    ) as s:  # fmt: skip
        async with s.session.get(f"{s.url}/v1/carriers", headers=AUTH) as response:
            assert response.status == 200  # 3 calls, in the first window's budget like any other
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                post_rates(s, shipment(f"{10001 + i:05d}", carriers=["ups"]))
                for i in range(shipments)
            )
        )
        wall = time.perf_counter() - started
        served = dict(sorted(s.sandbox.window.served_per_window.items()))
        throttled = s.sandbox.throttled
    ok = [payload for status, payload, _ in results if status == 200]
    quotes = sum(len(payload["quotes"]) for payload in ok)
    windows = list(served.values())
    full = windows[:-1] if len(windows) > 1 else windows  # the last window is the tail
    fill = [count / limit for count in full]
    used = statistics.mean(fill) if fill else 0.0
    checks = {
        f"429s received: {throttled} (target 0)": throttled == 0,
        f"window budget used: {used:.0%} on average, lowest {min(fill, default=0):.0%} (>= 90 %)":
            used >= 0.9,
        f"shipments quoted: {len(ok)}/{shipments}": len(ok) == shipments,
    }  # fmt: skip
    return report(
        "budget",
        f"{shipments} distinct shipments at once; sandbox allows {limit} calls per {window_s:g} s "
        f"window; latency {latency_ms:g} ms",
        ("shipments", "quoted", "quotes", "429s", "windows", "calls per window", "wall time"),
        [(shipments, len(ok), quotes, throttled, len(windows), " ".join(map(str, windows)),
          f"{wall:.1f} s")],
        checks,
        {"shipments": shipments, "limit": limit, "window_s": window_s, "served_per_window": served,
         "throttled": throttled, "budget_used": used, "quotes": quotes, "wall_s": wall},
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shipments", type=int, default=500)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--window-s", type=float, default=1.0)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args()
    sys.exit(
        0 if asyncio.run(main(args.shipments, args.limit, args.window_s, args.latency_ms)) else 1
    )
