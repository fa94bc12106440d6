"""Replicas: throughput with 1 and 2 workers, one budget across replicas, labels through a kill.

    python -m benchmarks.replicas [--seconds 4] [--rounds 3] [--connections 32] [--quotes 60]
                                  [--concurrency 20] [--latency-ms 200] [--shipments 400]
                                  [--sales 30] [--kills 3]

Needs PostgreSQL and Redis on 127.0.0.1 (as the tests do; ``RATESVC_BENCH_POSTGRES`` and
``RATESVC_BENCH_REDIS`` override the servers): one fresh database for the run (dropped at the
end) and one fresh key prefix per service started (deleted at the end). Every service is a real
``python -m ratesvc serve`` process.

1. **Throughput** — ``serve --workers 1`` and ``--workers 2`` on PostgreSQL + Redis, and the
   embedded default (SQLite, nothing shared) with 1 worker for reference, in alternating rounds
   (medians of ``--rounds``), each round a fresh service in front of the 8-carrier sandbox
   running in a process of its own: a fully cached ``POST /v1/rates`` under ``wrk`` (else an
   aiohttp load client) for ``--seconds``, then ``--quotes`` distinct cold 8-carrier quotes at
   ``--concurrency`` with ``--latency-ms`` legs (ideal: concurrency / latency quotes a second).
   With ``--workers 2`` the kernel spreads connections over the two processes (SO_REUSEPORT).
2. **Budget across replicas** — three ``serve`` processes sharing one ShipStation key through
   Redis; ``--shipments`` distinct one-carrier quotes at once, round-robin, against a sandbox
   allowing 40 calls per 1 s window: 429s (target 0), how full the windows the burst spanned
   were (target >= 90 %), quotes served.
3. **Labels across replicas, with a kill** — three replicas in front of both sandboxes (40
   ShipStation and 60 Cin7 Core calls per 1 s window, ``createlabel`` taking 300 ms);
   ``--sales`` packed sales (1 to 3 boxes) labelled at once by clients spreading their requests
   round-robin and retrying (same sale, so the same purchase) on the next replica after an
   error (skipping the dead one, as a balancer would); one replica is SIGKILLed once a quarter
   are bought, while it has requests of its own under way; ``--kills`` rounds, each with fresh
   sandboxes and replicas. Claims lapse after ``RATESVC_LEASE_TTL_S`` = 2 s here (30 s by
   default). Reported: requests the kill cut, the time from the kill until each of their labels
   was bought (adoption: the retry on a survivor watches the ledger until the dead replica's
   lease lapses and a replica reconciles the purchase with ShipStation), purchases at
   ShipStation against boxes (duplicates must be 0), and the write-backs: sales shipped, ship
   POSTs, the time from the kill until every label was written back (jobs the dead replica had
   claimed are adopted when their lease lapses), labels still not written back 20 s later.

This machine has 2 CPUs shared with other work: a second worker competes with the load client
(``wrk``), the sandbox and PostgreSQL and Redis for them, so ``--workers 2`` cannot double
anything here; the figures say what the backends cost and that nothing breaks, not how it
scales on a bigger machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from benchmarks.cache_hits import aiohttp_load, wrk
from benchmarks.cold_throughput import sandbox_process
from benchmarks.common import (
    AUTH,
    SHIP_FROM,
    TOKEN,
    ms,
    percentile,
    report,
    serve_app,
    shipment,
)
from benchmarks.labels import free_port, packed_sales
from ratesvc.sandbox.cin7 import Cin7Knobs, Cin7Sandbox
from ratesvc.sandbox.knobs import Knobs, Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox

POSTGRES = os.environ.get("RATESVC_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("RATESVC_BENCH_REDIS", "redis://127.0.0.1:6379/0")
CONFIGS = {  # name: (workers, shared backends)
    "embedded, 1 worker": (1, False),
    "PostgreSQL + Redis, 1 worker": (1, True),
    "PostgreSQL + Redis, 2 workers": (2, True),
}
_ZIPS = itertools.count(30001)


# --- backends and processes ----------------------------------------------------------------------


@dataclass
class Backends:
    database_url: str
    prefixes: list[str]

    def prefix(self) -> str:
        prefix = f"ratesvc-bench-{secrets.token_hex(4)}:"
        self.prefixes.append(prefix)
        return prefix


@contextlib.asynccontextmanager
async def backends() -> AsyncIterator[Backends]:
    """A fresh PostgreSQL database and key prefixes in Redis, removed afterwards."""
    name = f"ratesvc_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(POSTGRES, timeout=5)
    client = aioredis.Redis.from_url(REDIS)
    await client.ping()
    await admin.execute(f'CREATE DATABASE "{name}"')
    made = Backends(f"{POSTGRES.rpartition('/')[0]}/{name}", [])
    try:
        yield made
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        for prefix in made.prefixes:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            if keys:
                await client.delete(*keys)
        await client.aclose()


@dataclass
class Serve:
    """One ``ratesvc serve`` process (with its workers) on its own port."""

    process: asyncio.subprocess.Process
    url: str
    data_dir: str

    def log_tail(self, lines: int = 30) -> str:
        path = os.path.join(self.data_dir, "service.log")
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def service_env(shipstation_url: str, **extra: str) -> dict[str, str]:
    return {
        "RATESVC_API_TOKEN": TOKEN, "RATESVC_SHIPSTATION_URL": shipstation_url,
        "RATESVC_SHIPSTATION_API_KEY": "sandbox-key",
        "RATESVC_SHIPSTATION_API_SECRET": "sandbox-secret", "RATESVC_SHIP_FROM": SHIP_FROM,
        "RATESVC_LOG_LEVEL": "WARNING", **extra,
    }  # fmt: skip


def shared(backends: Backends, replicas: int) -> dict[str, str]:
    return {
        "RATESVC_DATABASE_URL": backends.database_url, "RATESVC_REDIS_URL": REDIS,
        "RATESVC_REDIS_PREFIX": backends.prefix(), "RATESVC_REPLICAS": str(replicas),
    }  # fmt: skip


async def start_serve(env: dict[str, str], workers: int = 1) -> Serve:
    """``ratesvc serve --workers N`` on a free port, once ``workers`` processes answer."""
    data_dir = tempfile.mkdtemp(prefix="ratesvc-bench-replicas-")
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RATESVC_")}
    log = open(os.path.join(data_dir, "service.log"), "ab")  # noqa: ASYNC230, SIM115
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratesvc", "serve", "--workers", str(workers),
        env={**clean, **env, "RATESVC_PORT": str(port), "RATESVC_DATA_DIR": data_dir},
        stdout=log, stderr=log,
    )  # fmt: skip
    log.close()
    served = Serve(process, f"http://127.0.0.1:{port}", data_dir)
    pids: set[int] = set()
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while len(pids) < workers:  # fresh connections until every worker answered
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ratesvc serve did not start:\n{served.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{served.url}/v1/status", headers=AUTH) as response:
                    if response.status == 200:
                        pids.add((await response.json())["instance"]["pid"])
                        continue
            await asyncio.sleep(0.05)
    return served


# --- 1. throughput -------------------------------------------------------------------------------


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(f"{url}/v1/rates", json=body, headers=AUTH) as response:
        return response.status, await response.json(content_type=None)


async def one_round(
    url: str, seconds: float, connections: int, quotes: int, concurrency: int
) -> dict[str, float]:
    """Cached requests/s, then the cold quotes' rate, p50 and p95, against one service."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as warm:
        for _ in range(8):  # each worker's first answer fills its near-cache and replay
            status, body = await _post(warm, url, shipment("10118"))
            assert status == 200, body
    if shutil.which("wrk"):  # whole seconds only
        cached, bad = wrk(f"{url}/v1/rates", max(1, round(seconds)), connections)
    else:
        cached, bad = await aiohttp_load(f"{url}/v1/rates", seconds, connections)
    assert bad == 0, f"{bad} cached requests were not 200"
    took: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def quote() -> None:
            async with gate:
                started = time.perf_counter()
                status, body = await _post(session, url, shipment(f"{next(_ZIPS):05d}"))
                assert status == 200 and body["complete"], body
                took.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(quote() for _ in range(quotes)))
        elapsed = time.perf_counter() - started
    return {"cached_rps": cached, "cold_qps": quotes / elapsed,
            "cold_p50_s": percentile(took, 50), "cold_p95_s": percentile(took, 95)}  # fmt: skip


async def throughput(
    made: Backends, *, seconds: float, rounds: int, connections: int, quotes: int,
    concurrency: int, latency_ms: float,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per configuration: the medians, and each round's figures under ``rounds``."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    async with sandbox_process(latency_ms) as sandbox_url:
        for _ in range(rounds):  # alternating: the machine's drift hits every configuration
            for name, (workers, with_backends) in CONFIGS.items():
                env = service_env(sandbox_url, RATESVC_REQUEST_DEADLINE_S="30")
                if with_backends:
                    env |= shared(made, workers)
                served = await start_serve(env, workers)
                try:
                    runs[name].append(
                        await one_round(served.url, seconds, connections, quotes, concurrency)
                    )
                finally:
                    await served.stop()
    return {
        name: {**{key: statistics.median(r[key] for r in results) for key in results[0]},
               "rounds": results}
        for name, results in runs.items()
    }  # fmt: skip


# --- 2. one budget across replicas ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def replicas(env: dict[str, str], count: int) -> AsyncIterator[list[Serve]]:
    started: list[Serve] = []
    try:
        for _ in range(count):
            started.append(await start_serve(env))
        yield started
    finally:
        await asyncio.gather(*(s.stop() for s in started))


async def budget(
    made: Backends, *, shipments: int, limit: int, window_s: float, count: int = 3
) -> dict[str, Any]:
    sandbox = ShipStationSandbox(
        knobs=Knobs(latency=Latency(base_ms=50, jitter_ms=5), rate_limit=limit, window_s=window_s),
        carriers=("ups",),
    )
    runner, sandbox_url = await serve_app(sandbox.app)
    deadline_s = (shipments / limit + 5) * window_s + 10
    env = service_env(sandbox_url, RATESVC_SHIPSTATION_WINDOW_S=str(window_s),
                      RATESVC_REQUEST_DEADLINE_S=str(deadline_s)) | shared(made, count)  # fmt: skip
    try:
        async with (
            replicas(env, count) as members,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        ):
            turn = itertools.cycle(members)
            before = dict(sandbox.window.served_per_window)
            started = time.perf_counter()
            answers = await asyncio.gather(
                *(_post(session, next(turn).url, shipment(f"{10001 + i:05d}", carriers=["ups"]))
                  for i in range(shipments))
            )  # fmt: skip
            wall = time.perf_counter() - started
    finally:
        await runner.cleanup()
    served = {i: n - before.get(i, 0) for i, n in sandbox.window.served_per_window.items()}
    active = [i for i in sorted(served) if served[i]]
    windows = [served.get(i, 0) for i in range(active[0], active[-1] + 1)]
    spanned = windows[1:-1]  # the burst met the first and the last part-way
    fill = [n / limit for n in spanned]
    return {
        "replicas": count, "shipments": shipments, "limit": limit, "window_s": window_s,
        "quoted": sum(1 for status, _ in answers if status == 200), "throttled": sandbox.throttled,
        "calls_per_window": windows, "budget_used": statistics.mean(fill) if fill else 0.0,
        "lowest_window": min(fill, default=0.0), "wall_s": wall,
    }  # fmt: skip


# --- 3. labels across replicas, with a kill ------------------------------------------------------


DONE = ("purchased", "completed")  # bought: written back, or its write-back queued
LEASE_TTL_S = 2.0  # a dead replica's purchases and write-back jobs are adopted after this


async def labels(
    made: Backends, *, sales: int, window_s: float = 1.0, count: int = 3,
    writeback_wait_s: float = 20.0,
) -> dict[str, Any]:  # fmt: skip
    shipstation = ShipStationSandbox(knobs=Knobs(
        latency=Latency(base_ms=50, jitter_ms=10), rate_limit=40, window_s=window_s,
        carrier_latency={"ups": Latency(base_ms=300, jitter_ms=20)},
    ))  # fmt: skip
    cin7 = Cin7Sandbox(knobs=Cin7Knobs(latency=Latency(base_ms=30), rate_limit=60,
                                       window_s=window_s, throttle_style="400"))  # fmt: skip
    tag = secrets.token_hex(3)  # sales new to the ledger, which every round shares
    boxes = packed_sales(cin7, sales, f"bench-{tag}-", first_order=7000)
    ss_runner, ss_url = await serve_app(shipstation.app)
    c7_runner, c7_url = await serve_app(cin7.app)
    env = service_env(
        ss_url, RATESVC_SHIPSTATION_WINDOW_S=str(window_s), RATESVC_CIN7_URL=c7_url,
        RATESVC_CIN7_ACCOUNT_ID="sandbox-account", RATESVC_CIN7_APPLICATION_KEY="sandbox-key",
        RATESVC_CIN7_WINDOW_S=str(window_s), RATESVC_CIN7_MIN_INTERVAL_S=str(window_s / 60),
        RATESVC_CIN7_THROTTLE_PAUSE_S=str(window_s / 2), RATESVC_WRITEBACK_RETRY_S="0.2",
        RATESVC_LABEL_SETTLE_S="5", RATESVC_REQUEST_DEADLINE_S=str(window_s * 20),
        RATESVC_LEASE_TTL_S=str(LEASE_TTL_S), RATESVC_LOG_LEVEL="INFO",
    ) | shared(made, count)  # fmt: skip
    bought: dict[str, str] = {}  # sale -> its label, once bought (purchased or completed)
    cut: set[str] = set()  # sales whose request the kill cut off
    adopted: dict[str, float] = {}  # cut sale -> seconds from the kill to its label bought
    requests: Counter[str] = Counter()
    in_flight: Counter[str] = Counter()  # requests out, per replica
    states: dict[str, dict[str, Any]] = {}  # sale -> its label as last read
    killed_at = 0.0
    try:
        async with replicas(env, count) as members, aiohttp.ClientSession() as session:
            turn = itertools.cycle(members)
            victim = members[0]
            started = time.perf_counter()

            def pick() -> Serve:
                replica = next(turn)
                return next(turn) if replica is victim and killed_at else replica

            async def label(sale_id: str) -> None:
                body = {"sale_id": sale_id, "carrier_code": "ups", "service_code": "ups_ground"}
                while time.perf_counter() - started < 120:
                    replica = pick()
                    in_flight[replica.url] += 1
                    try:
                        async with session.post(f"{replica.url}/v1/labels", json=body,
                                                headers=AUTH) as r:  # fmt: skip
                            payload = await r.json(content_type=None)
                            requests[str(r.status)] += 1
                        if r.status in (200, 201) and payload["status"] in DONE:
                            bought[sale_id] = payload["label_id"]
                            if sale_id in cut:
                                adopted[sale_id] = time.perf_counter() - killed_at
                            return
                    except (aiohttp.ClientError, TimeoutError):
                        requests["connection"] += 1
                        if killed_at and replica is victim:
                            cut.add(sale_id)
                    finally:
                        in_flight[replica.url] -= 1
                    await asyncio.sleep(0.3)
                raise RuntimeError(f"{sale_id} was never bought")

            async def chaos() -> None:
                """SIGKILL the victim once a quarter of the sales are bought and it is busy
                with requests of its own (or, failing that, when half are)."""
                nonlocal killed_at
                while len(bought) < max(1, sales // 4) or (  # noqa: ASYNC110 - plain dicts
                    not in_flight[victim.url] and len(bought) < sales // 2
                ):
                    await asyncio.sleep(0.01)
                killed_at = time.perf_counter()
                victim.kill()
                await victim.process.wait()

            chaos_task = asyncio.create_task(chaos())
            await asyncio.gather(*(label(s) for s in boxes))
            await chaos_task
            bought_in = time.perf_counter() - started
            give_up = time.perf_counter() + writeback_wait_s
            while time.perf_counter() < give_up:  # the write-backs, read on the survivors
                for sale_id, label_id in bought.items():
                    if states.get(sale_id, {}).get("status") != "completed":
                        url = f"{pick().url}/v1/labels/{label_id}"
                        async with session.get(url, headers=AUTH) as r:
                            states[sale_id] = await r.json(content_type=None)
                if all(state.get("status") == "completed" for state in states.values()):
                    break
                await asyncio.sleep(0.5)
            written_in = time.perf_counter() - started
            written_after_kill = time.perf_counter() - killed_at
    finally:
        await ss_runner.cleanup()
        await c7_runner.cleanup()
        await cin7.close()
    live = [s for s in shipstation.shipments.values() if not s["voided"]]
    per_label = Counter(s["advancedOptions"]["customField1"].split(":")[0] for s in live)
    duplicates = sum(max(0, per_label[label_id] - boxes[s]) for s, label_id in bought.items())
    shipped = [s for s in boxes if cin7.fulfilment(s)["Ship"]["Status"] == "AUTHORISED"]
    stuck = {sale: f"{state.get('status')}, write-back {state['write_back']['state']}"
             for sale, state in states.items() if state.get("status") != "completed"}  # fmt: skip
    return {
        "replicas": count, "sales": sales, "boxes": sum(boxes.values()), "window_s": window_s,
        "bought": len(bought), "purchases": len(live),
        "createlabel_calls": shipstation.calls["/shipments/createlabel"],
        "duplicates": duplicates, "cut_by_kill": len(cut),
        "adoption_s": sorted(adopted.values()), "bought_in_s": bought_in,
        "ship_posts": cin7.calls["POST /sale/fulfilment/ship"], "shipped": len(shipped),
        "written_back_in_s": written_in, "written_back_after_kill_s": written_after_kill,
        "writeback_stuck": stuck,
        "requests": dict(requests), "shipstation_429": shipstation.throttled,
    }  # fmt: skip


# --- the report ----------------------------------------------------------------------------------


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The label pipeline's kill rounds together."""
    total = {key: sum(run[key] for run in runs) for key in (
        "sales", "boxes", "bought", "purchases", "createlabel_calls", "duplicates", "cut_by_kill",
        "ship_posts", "shipped", "shipstation_429")}  # fmt: skip
    return {
        **total, "rounds": len(runs),
        "adoption_s": sorted(a for r in runs for a in r["adoption_s"]),
        "written_back_after_kill_s": [r["written_back_after_kill_s"] for r in runs],
        "writeback_stuck": sum(len(r["writeback_stuck"]) for r in runs), "runs": runs,
    }  # fmt: skip


async def main(
    *, seconds: float = 4.0, rounds: int = 3, connections: int = 32, quotes: int = 60,
    concurrency: int = 20, latency_ms: float = 200.0, shipments: int = 400, limit: int = 40,
    window_s: float = 1.0, sales: int = 30, kills: int = 3, writeback_wait_s: float = 20.0,
) -> bool:  # fmt: skip
    async with backends() as made:
        speed = await throughput(made, seconds=seconds, rounds=rounds, connections=connections,
                                 quotes=quotes, concurrency=concurrency,
                                 latency_ms=latency_ms)  # fmt: skip
        spent = await budget(made, shipments=shipments, limit=limit, window_s=window_s)
        pipeline = _aggregate([
            await labels(made, sales=sales, window_s=window_s, writeback_wait_s=writeback_wait_s)
            for _ in range(kills)
        ])  # fmt: skip
    ideal = concurrency / (latency_ms / 1000)
    leg = latency_ms / 1000
    one, two = speed["PostgreSQL + Redis, 1 worker"], speed["PostgreSQL + Redis, 2 workers"]
    base = speed["embedded, 1 worker"]

    def each(r: dict[str, Any], key: str) -> str:
        return " ".join(f"{x[key]:.0f}" for x in r["rounds"])

    rows: list[Sequence[Any]] = [
        (name, f"{r['cached_rps']:.0f}/s ({each(r, 'cached_rps')})",
         f"{r['cached_rps'] / base['cached_rps']:.0%}",
         f"{r['cold_qps']:.1f}/s ({each(r, 'cold_qps')})",
         f"{r['cold_qps'] / ideal:.0%}", ms(r["cold_p50_s"]), f"{r['cold_p95_s'] / leg:.2f}x")
        for name, r in speed.items()
    ]  # fmt: skip
    adoption = pipeline["adoption_s"]
    p = pipeline
    rows += [
        ("budget, 3 replicas", f"{spent['quoted']}/{spent['shipments']} quoted",
         f"429s {spent['throttled']}", f"{spent['budget_used']:.0%} of windows",
         f"lowest {spent['lowest_window']:.0%}", f"{spent['wall_s']:.1f} s",
         " ".join(map(str, spent["calls_per_window"]))),
        (f"labels, 3 replicas, 1 killed (x{kills})", f"{p['bought']}/{p['sales']} bought",
         f"{p['purchases']} purchases / {p['boxes']} boxes",
         f"{p['shipped']} shipped, {p['ship_posts']} ship POSTs",
         f"{p['cut_by_kill']} cut by the kill",
         "adopted in " + (f"{statistics.median(adoption):.2f} s median, {max(adoption):.2f} s max"
                          if adoption else "-"),
         f"all written back {max(p['written_back_after_kill_s']):.1f} s after the kill"
         if not p["writeback_stuck"] else f"{p['writeback_stuck']} write-backs stuck"),
    ]  # fmt: skip
    checks = {
        f"budget across 3 replicas: {spent['throttled']} 429s (target 0)": spent["throttled"] == 0,
        f"budget across 3 replicas: windows {spent['budget_used']:.0%} used (>= 90 %)":
            spent["budget_used"] >= 0.9,
        f"budget across 3 replicas: {spent['quoted']}/{spent['shipments']} quoted":
            spent["quoted"] == spent["shipments"],
        f"labels: every sale bought ({p['bought']}/{p['sales']}), {p['duplicates']} duplicates, "
        f"{p['purchases']} purchases for {p['boxes']} boxes":
            p["bought"] == p["sales"] and p["duplicates"] == 0 and p["purchases"] == p["boxes"],
        f"labels: {p['shipped']}/{p['sales']} sales shipped with {p['ship_posts']} ship POSTs; "
        f"{p['writeback_stuck']} write-backs not finished {writeback_wait_s:g} s after":
            p["shipped"] == p["ship_posts"] == p["sales"] and not p["writeback_stuck"],
    }  # fmt: skip
    return report(
        "replicas",
        f"Replicas on PostgreSQL + Redis, {os.cpu_count()} CPUs: cached POST /v1/rates "
        f"({'wrk' if shutil.which('wrk') else 'aiohttp'}, {connections} connections, "
        f"{seconds:g} s) and {quotes} cold 8-carrier quotes at concurrency {concurrency} "
        f"({latency_ms:g} ms legs, ideal {ideal:.0f}/s), medians of {rounds} alternating rounds; "
        f"{shipments} quotes against {limit} calls / {window_s:g} s; {sales} sales labelled "
        f"through a SIGKILL, {kills} times",
        ("configuration", "cached", "of embedded", "cold", "of ideal", "cold p50", "p95/leg"),
        rows, checks,
        {"throughput": speed, "workers_2_vs_1": {
            "cached": two["cached_rps"] / one["cached_rps"],
            "cold": two["cold_qps"] / one["cold_qps"]},
         "budget": spent, "labels": pipeline, "rounds": rounds, "seconds": seconds,
         "connections": connections, "quotes": quotes, "concurrency": concurrency,
         "latency_ms": latency_ms},
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--quotes", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--shipments", type=int, default=400)
    parser.add_argument("--sales", type=int, default=30)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    held = asyncio.run(main(
        seconds=args.seconds, rounds=args.rounds, connections=args.connections,
        quotes=args.quotes, concurrency=args.concurrency, latency_ms=args.latency_ms,
        shipments=args.shipments, sales=args.sales, kills=args.kills,
    ))  # fmt: skip
    sys.exit(0 if held else 1)
