"""One replica of ``test_shared_limiter``'s multi-process test: a ShipStation client whose
limiter is shared through Redis. It says ``ready`` once set up, waits for a line on stdin, then
asks for ``calls`` rates at once and prints how many were rated and refused, as JSON.

``python -m tests.storage.replica <sandbox_url> <redis_url> <prefix> <calls>``
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

from ratesvc.config import Secret, ShipStationConfig
from ratesvc.errors import UpstreamFailure
from ratesvc.models import Address, RateRequest, Weight
from ratesvc.storage.shared_limiter import SharedRateLimiter, limiter_redis
from ratesvc.upstreams.shipstation.client import ShipStationClient

RATE = RateRequest(
    carrier_code="fedex",
    ship_from=Address(postal_code="78703", country="US"),
    ship_to=Address(postal_code="10001", country="US", state="NY"),
    weight=Weight(value=1, unit="lb"),
)


async def main(sandbox_url: str, redis_url: str, prefix: str, calls: int) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    redis = limiter_redis(redis_url)
    limiter = SharedRateLimiter(
        "shipstation:sandbox", redis=redis, prefix=prefix, limit=40, window_s=0.4
    )
    config = ShipStationConfig(
        url=sandbox_url, api_key=Secret("sandbox-key"), api_secret=Secret("sandbox-secret"),
        rate_limit=40, window_s=0.4,
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        client = ShipStationClient(session, config, limiter)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        results = await asyncio.gather(
            *(client.get_rates(RATE, deadline=loop.time() + 40) for _ in range(calls)),
            return_exceptions=True,
        )
    await limiter.aclose()
    await redis.aclose()
    refused = [r for r in results if isinstance(r, UpstreamFailure)]
    return {"rated": sum(isinstance(r, list) for r in results), "refused": len(refused)}


if __name__ == "__main__":
    url, redis_url, prefix, calls = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(url, redis_url, prefix, int(calls)))))
