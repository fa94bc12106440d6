"""Memory: RSS of the service while it hands out 200,000 distinct answers.

    python -m benchmarks.memory [--requests 200000] [--connections 8] [--carriers 4]
                                [--max-minutes 40]

The service runs in its own process (with the ShipStation sandbox in it at zero latency and no
rate limit to speak of, as in ``cache_hits``); this process sends ``--requests`` distinct
``POST /v1/rates`` (a new postal code and weight each time, so every request makes new legs, a
new leg cache entry per carrier and a new batch of quotes) and, after each tenth of them, reads
the service's resident memory (``VmRSS`` in ``/proc/<pid>/status``) and asks it for the byte
estimates of its quote store, leg cache, quote memo and answer replay. ``RATESVC_*`` variables
in the environment reach the service (e.g. ``RATESVC_QUOTE_STORE_MAX_BYTES=16MiB``).

Checks: RSS after all requests under 300 MB; growth over the second half under 10 %; every
answer 200. A run longer than ``--max-minutes`` stops early and fails.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks.common import AUTH, EIGHT_CARRIERS, report, shipment, stack
from ratesvc import keys
from ratesvc.sandbox.knobs import Knobs

MB = 1_000_000  # RSS, as the check is written
MIB = 1 << 20  # the estimates, as the budgets are written
RSS_LIMIT_MB = 300.0
FLAT_GROWTH = 0.10
ZIPS = 90_000  # 10000-99999, then the next weight


def body(n: int, carriers: list[str]) -> bytes:
    """The ``n``-th distinct request: postal code and weight both change what every leg is."""
    request = shipment(f"{10_000 + n % ZIPS:05d}", carriers=carriers)
    request["shipment"]["packages"][0]["weight"]["value"] = 1 + n // ZIPS
    return json.dumps(request).encode()


def held(app: web.Application) -> dict[str, int]:
    """What the service's bounded memories estimate they hold, in bytes."""
    rater = app[keys.RATER]
    return {
        "store_bytes": rater.quotes.held_bytes, "store_answers": len(rater.quotes),
        "cache_bytes": rater.cache.held_bytes, "memo_bytes": rater.memo_bytes,
        "replay_bytes": app[keys.REPLAY].held_bytes,
    }  # fmt: skip


async def serve(carriers: int) -> None:
    """The service process: answers a line on stdin with its estimates, stops at end of input."""
    env = {k: v for k, v in os.environ.items() if k.startswith("RATESVC_")}
    knobs = Knobs(rate_limit=1_000_000)
    async with stack(knobs, carriers=EIGHT_CARRIERS[:carriers],
                     **{"RATESVC_SHIPSTATION_RATE_LIMIT": "10000", **env}) as s:  # fmt: skip
        print(json.dumps({"url": s.url}), flush=True)
        while await asyncio.to_thread(sys.stdin.readline):
            print(json.dumps(held(s.app)), flush=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MB
    raise RuntimeError(f"no VmRSS for process {pid}")


class Service:
    """The service in a child process, asked for its figures over a pipe."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url

    @classmethod
    async def start(cls, carriers: int) -> Service:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.memory", "--serve", str(carriers),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        async with asyncio.timeout(60):
            url = json.loads(await process.stdout.readline())["url"]
        return cls(process, url)

    async def measure(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"\n")
        await self.process.stdin.drain()
        async with asyncio.timeout(30):
            figures: dict[str, Any] = json.loads(await self.process.stdout.readline())
        return {"rss_mb": rss_mb(self.process.pid), **figures}

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            async with asyncio.timeout(30):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def load(
    url: str, numbers: range, carriers: list[str], connections: int, stop_at: float
) -> tuple[int, int]:
    """Send one request per number, ``connections`` at a time; (answered 200, not 200)."""
    ok = bad = 0
    todo = iter(numbers)
    headers = {**AUTH, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal ok, bad
            for n in todo:
                if time.monotonic() > stop_at:
                    return
                async with session.post(f"{url}/v1/rates", data=body(n, carriers),
                                        headers=headers) as response:  # fmt: skip
                    await response.read()
                    ok += response.status == 200
                    bad += response.status != 200

        await asyncio.gather(*(worker() for _ in range(connections)))
    return ok, bad


async def main(requests: int, *, connections: int = 8, carriers: int = 4,
               max_minutes: float = 40.0, steps: int = 10) -> bool:  # fmt: skip
    codes = list(EIGHT_CARRIERS[:carriers])
    service = await Service.start(carriers)
    started = time.monotonic()
    stop_at = started + max_minutes * 60
    samples: list[dict[str, Any]] = []
    answered = failed = 0
    try:
        samples.append({"requests": 0, "seconds": 0.0, **await service.measure()})
        bounds = [requests * step // steps for step in range(steps + 1)]
        for low, high in itertools.pairwise(bounds):
            ok, bad = await load(service.url, range(low, high), codes, connections, stop_at)
            answered, failed = answered + ok, failed + bad
            elapsed = time.monotonic() - started
            samples.append({"requests": answered + failed, "seconds": round(elapsed, 1),
                            **await service.measure()})  # fmt: skip
            if time.monotonic() > stop_at:
                break
    finally:
        await service.stop()
    return _report(requests, connections, carriers, samples, failed)


def _report(requests: int, connections: int, carriers: int, samples: list[dict[str, Any]],
            failed: int) -> bool:  # fmt: skip
    half = min(samples, key=lambda s: abs(s["requests"] - requests / 2))
    last = samples[-1]
    growth = last["rss_mb"] / half["rss_mb"] - 1
    seconds = last["seconds"]
    checks = {
        f"{last['requests']:,} of {requests:,} requests sent": last["requests"] == requests,
        f"RSS after {last['requests']:,} requests {last['rss_mb']:.0f} MB "
        f"(< {RSS_LIMIT_MB:.0f} MB)": last["rss_mb"] < RSS_LIMIT_MB,
        f"RSS growth from {half['requests']:,} to {last['requests']:,} requests {growth:+.1%} "
        f"(< {FLAT_GROWTH:.0%})": growth < FLAT_GROWTH,
        f"every answer 200 ({failed} not)": failed == 0,
    }  # fmt: skip
    rows = [
        (f"{s['requests']:,}", f"{s['seconds']:.0f}", f"{s['rss_mb']:.0f}",
         f"{s['store_bytes'] / MIB:.1f} ({s['store_answers']:,})",
         f"{s['cache_bytes'] / MIB:.1f}", f"{s['memo_bytes'] / MIB:.1f}",
         f"{s['replay_bytes'] / MIB:.1f}")
        for s in samples
    ]  # fmt: skip
    return report(
        "memory",
        f"{requests:,} distinct POST /v1/rates ({carriers} carriers, {connections} connections, "
        f"zero-latency sandbox in the service process); {requests / max(seconds, 1e-9):.0f} req/s "
        f"over {seconds / 60:.1f} min; estimates in MiB",
        ("requests", "s", "RSS MB", "quote store (answers)", "leg cache", "memo", "replay"),
        rows,
        checks,
        {"requests": requests, "connections": connections, "carriers": carriers,
         "seconds": seconds, "samples": samples, "rss_growth_second_half": growth},
    )  # fmt: skip


def cli(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        asyncio.run(serve(int(argv[1])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--carriers", type=int, default=4, choices=range(1, 9))
    parser.add_argument("--max-minutes", type=float, default=40.0)
    args = parser.parse_args(argv)
    run = main(args.requests, connections=args.connections, carriers=args.carriers,
               max_minutes=args.max_minutes)  # fmt: skip
    return 0 if asyncio.run(run) else 1


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
