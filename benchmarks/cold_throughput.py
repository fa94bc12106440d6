"""Cold throughput: many distinct 8-carrier quotes at once, each leg a slow ShipStation call.

    python -m benchmarks.cold_throughput [--quotes 60] [--concurrency 20] [--latency-ms 200]
                                         [--rounds 3]

The sandbox runs in a process of its own (the service's cost is what is measured). Every quote
rates a shipment to a postal code never asked before (nothing cached, nothing
coalesced), 8 carriers, ``--concurrency`` requests in flight. The ideal is every request taking
one leg latency: ``concurrency / latency`` quotes a second (20 / 0.2 s = 100/s). Reported: the
throughput as a share of that ideal, p50 and p95 as multiples of the leg latency (medians over
``--rounds``), for three configurations in alternating rounds, each round in a process of its
own: uvloop with the default ShipStation pool (``RATESVC_SHIPSTATION_CONNECTIONS``, 512),
asyncio's loop with the same pool, and asyncio with the 100 connections the pool had before (too
few for concurrency × carriers: legs queue for a connection). A last row is the floor: no service,
a plain aiohttp client sending each quote's 8 ``getrates`` calls straight to the same sandbox at
the same concurrency — what the sandbox and a client's own CPU cost before ratesvc does anything.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from benchmarks.common import (
    EIGHT_CARRIERS,
    ms,
    percentile,
    post_rates,
    report,
    service,
    shipment,
)
from ratesvc import event_loop
from ratesvc.sandbox.knobs import Knobs, Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox

_ZIPS = (f"{n:05d}" for n in itertools.count(20001))


@asynccontextmanager
async def sandbox_process(latency_ms: float) -> AsyncIterator[str]:
    """The ShipStation sandbox (8 carriers) in a process of its own, so the service's CPU is
    measured, not the emulator's: the URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.cold_throughput", "--serve-sandbox", str(port),
        "--latency-ms", str(latency_ms), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        assert line.startswith(b"ready"), line
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


async def serve_sandbox(port: int, latency_ms: float) -> None:
    knobs = Knobs(latency=Latency(base_ms=latency_ms, jitter_ms=0), rate_limit=1_000_000)
    sandbox = ShipStationSandbox(knobs=knobs, carriers=EIGHT_CARRIERS)
    runner = web.AppRunner(sandbox.app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def one_round(
    sandbox_url: str, quotes: int, concurrency: int, connections: int | None
) -> tuple[float, list[float]]:
    env = {} if connections is None else {"RATESVC_SHIPSTATION_CONNECTIONS": str(connections)}
    async with service(sandbox_url, **env) as s:
        status, _, _ = await post_rates(s, shipment(next(_ZIPS)))  # catalogue, connections warm
        assert status == 200
        gate = asyncio.Semaphore(concurrency)
        took: list[float] = []

        async def quote() -> None:
            async with gate:
                status, body, seconds = await post_rates(s, shipment(next(_ZIPS)))
                assert status == 200 and body["complete"], body
                took.append(seconds)

        started = time.perf_counter()
        await asyncio.gather(*(quote() for _ in range(quotes)))
        elapsed = time.perf_counter() - started
    return quotes / elapsed, took


async def direct_round(
    sandbox_url: str, quotes: int, concurrency: int
) -> tuple[float, list[float]]:
    """The floor: no service, a plain aiohttp client sending each quote's 8 ``getrates`` calls
    straight to the sandbox at once (what the service sends for it), same concurrency."""
    headers = {"Authorization": "Basic c2FuZGJveC1rZXk6c2FuZGJveC1zZWNyZXQ=",
               "Content-Type": "application/json"}  # fmt: skip
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def leg(carrier: str, postal_code: str) -> None:
            body = {"carrierCode": carrier, "fromPostalCode": "78703", "fromState": "TX",
                    "fromCity": "Austin", "fromCountry": "US", "toCountry": "US",
                    "toPostalCode": postal_code, "toState": "NY", "toCity": "New York",
                    "weight": {"value": 40.0, "units": "ounces"}, "residential": True,
                    "dimensions": {"length": 12.0, "width": 9.0, "height": 4.0,
                                   "units": "inches"}}  # fmt: skip
            async with session.post(
                f"{sandbox_url}/shipments/getrates", json=body, headers=headers
            ) as response:
                await response.read()
                assert response.status == 200, response.status

        async def quote() -> float:
            postal_code = next(_ZIPS)
            started = time.perf_counter()
            await asyncio.gather(*(leg(carrier, postal_code) for carrier in EIGHT_CARRIERS))
            return time.perf_counter() - started

        await quote()  # connections warm, as the service's first quote warms its pool
        gate = asyncio.Semaphore(concurrency)
        took: list[float] = []

        async def gated() -> None:
            async with gate:
                took.append(await quote())

        started = time.perf_counter()
        await asyncio.gather(*(gated() for _ in range(quotes)))
        elapsed = time.perf_counter() - started
    return quotes / elapsed, took


CONFIGS = {  # name: (event loop, ShipStation connections; None: the default; 0: no service)
    "uvloop, default pool": ("uvloop", None),
    "asyncio, default pool": ("asyncio", None),
    "asyncio, 100 connections (before)": ("asyncio", 100),
    "the floor: a plain client, no service": ("uvloop", 0),
}


async def child_round(
    sandbox_url: str, quotes: int, concurrency: int, loop: str, connections: int | None
) -> tuple[float, float, float]:
    """One round in a process of its own (its event loop chosen): rate, p50, p95."""
    args = [
        sys.executable,
        "-m",
        "benchmarks.cold_throughput",
        "--one-round",
        sandbox_url,
        "--loop",
        loop,
        "--quotes",
        str(quotes),
        "--concurrency",
        str(concurrency),
    ]
    if connections is not None:
        args += ["--connections", str(connections)]
    process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert process.returncode == 0, out
    rate, p50, p95 = json.loads(out.splitlines()[-1])
    return rate, p50, p95


async def main(quotes: int, concurrency: int, latency_ms: float, rounds: int) -> bool:
    ideal = concurrency / (latency_ms / 1000)
    leg = latency_ms / 1000
    measured: dict[str, list[tuple[float, float, float]]] = {name: [] for name in CONFIGS}
    async with sandbox_process(latency_ms) as sandbox_url:
        for _ in range(rounds):  # alternating, so machine noise hits every configuration alike
            for name, (loop, connections) in CONFIGS.items():
                measured[name].append(
                    await child_round(sandbox_url, quotes, concurrency, loop, connections)
                )
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for name, runs in measured.items():
        rate = statistics.median(r[0] for r in runs)
        p50 = statistics.median(r[1] for r in runs)
        p95 = statistics.median(r[2] for r in runs)
        summary[name] = {"quotes_per_s": rate, "share_of_ideal": rate / ideal, "p50_s": p50,
                         "p95_s": p95, "p50_x_leg": p50 / leg, "p95_x_leg": p95 / leg}  # fmt: skip
        rows.append((name, f"{rate:.1f}/s", f"{rate / ideal:.0%}", ms(p50), f"{p50 / leg:.2f}x",
                     ms(p95), f"{p95 / leg:.2f}x"))  # fmt: skip
    best = summary["uvloop, default pool"]
    floor = summary["the floor: a plain client, no service"]
    checks = {
        "throughput >= 80 % of ideal (uvloop, default pool)": best["share_of_ideal"] >= 0.8,
        "p95 <= 1.5 x leg latency (uvloop, default pool)": best["p95_x_leg"] <= 1.5,
        f"p50 <= 1.1 x leg latency (uvloop, default pool; the floor's is "
        f"{floor['p50_x_leg']:.2f}x)": best["p50_x_leg"] <= 1.1,
    }
    return report(
        "cold_throughput",
        f"{quotes} distinct cold 8-carrier quotes, concurrency {concurrency}, legs "
        f"{latency_ms:g} ms (ideal {ideal:.0f}/s); medians of {rounds} alternating rounds",
        ("configuration", "throughput", "of ideal", "p50", "p50/leg", "p95", "p95/leg"),
        rows, checks,
        {"quotes": quotes, "concurrency": concurrency, "latency_ms": latency_ms,
         "rounds": rounds, "results": summary},
    )  # fmt: skip


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quotes", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--rounds", type=int, default=3)
    # internal: the sandbox's process, and one round's
    parser.add_argument("--serve-sandbox", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one-round", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_sandbox is not None:
        event_loop.run(serve_sandbox(args.serve_sandbox, args.latency_ms), "uvloop")
        return 0
    if args.one_round is not None:
        if args.connections == 0:
            measured = direct_round(args.one_round, args.quotes, args.concurrency)
        else:
            measured = one_round(args.one_round, args.quotes, args.concurrency, args.connections)
        rate, took = event_loop.run(measured, args.loop)
        print(json.dumps([rate, percentile(took, 50), percentile(took, 95)]))
        return 0
    held = asyncio.run(main(args.quotes, args.concurrency, args.latency_ms, args.rounds))
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
