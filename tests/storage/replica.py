"""A replica for ``test_shared_limiter``'s multi-process tests, its limiter shared through Redis.

``python -m tests.storage.replica rates <sandbox_url> <redis_url> <prefix> <calls>``: a
ShipStation client; says ``ready`` once set up, waits for a line on stdin, then asks for
``calls`` rates at once and prints how many were rated and refused, as JSON.

``python -m tests.storage.replica urgent <redis_url> <prefix>``: says ``ready``, waits for a line
on stdin, then waits for an urgent call of ``shipstation:key`` (heartbeat 0.1 s) and says
``waiting`` once Redis knows.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

from ratesvc.config import Secret, ShipStationConfig
from ratesvc.errors import UpstreamFailure
from ratesvc.limiter import Priority
from ratesvc.models import Address, RateRequest, Weight
from ratesvc.storage.redis_client import open_redis
from ratesvc.storage.shared_limiter import SharedRateLimiter
from ratesvc.upstreams.shipstation.client import ShipStationClient

RATE = RateRequest(
    carrier_code="fedex",
    ship_from=Address(postal_code="78703", country="US"),
    ship_to=Address(postal_code="10001", country="US", state="NY"),
    weight=Weight(value=1, unit="lb"),
)


async def main(sandbox_url: str, redis_url: str, prefix: str, calls: int) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    redis = open_redis(redis_url)
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


async def urgent(redis_url: str, prefix: str) -> None:
    loop = asyncio.get_running_loop()
    redis = open_redis(redis_url)
    limiter = SharedRateLimiter(
        "shipstation:key", redis=redis, prefix=prefix, limit=40, window_s=60, heartbeat_s=0.1
    )
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    waiting = asyncio.create_task(limiter.acquire(Priority.URGENT, None))
    while limiter.state().reset_after_s is None:  # noqa: ASYNC110 - until its first ask is answered
        await asyncio.sleep(0.01)
    print("waiting", flush=True)
    await waiting


if __name__ == "__main__":
    if sys.argv[1] == "urgent":
        asyncio.run(urgent(*sys.argv[2:4]))
    else:
        url, redis_url, prefix, calls = sys.argv[2:6]
        print(json.dumps(asyncio.run(main(url, redis_url, prefix, int(calls)))))
