"""Server-side CPU per request: a replayed POST /v1/rates in ratesvc and in a bare aiohttp handler,
without sockets.

    python -m benchmarks.edge_cpu [--requests 1000] [--rounds 21]

Both apps get the same raw HTTP/1.1 request through aiohttp's own protocol (the handler a TCP
server would create, from the runner's ``web.Server``) on a transport that only counts what is
written: parsing, routing, the edge, the handler and the response are in the figure; the
kernel's socket work and the load generator are not. Rounds alternate between the two, each
timed in thread CPU time, and the minimum is reported: other tenants of a shared machine
disturb this far less than requests/s under wrk. ``benchmarks.cache_hits`` stays the figure
that counts; this one tells a change of a microsecond or two from noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from aiohttp import web

from benchmarks.cache_hits import BODY, FOUR
from benchmarks.common import AUTH, _env, report, serve_app
from ratesvc import event_loop
from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.sandbox.knobs import Knobs, Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox

REQUEST = (
    "POST /v1/rates HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    + "".join(f"{k}: {v}\r\n" for k, v in AUTH.items())
    + f"Content-Length: {len(BODY.encode())}\r\n\r\n{BODY}"
).encode()


class _Counting(asyncio.Transport):
    """Takes what the server writes; wakes the waiter at each answer."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None

    def write(self, data: Any) -> None:
        self._answer(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self._answer(b"".join(chunks))

    def _answer(self, data: bytes) -> None:
        if len(self.answers) < 4:  # the first few are checked; the rest only counted
            self.answers.append(data)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _Connection:
    def __init__(self, runner: web.AppRunner) -> None:
        assert runner.server is not None
        self.transport = _Counting()
        self.protocol = runner.server()
        self.protocol.connection_made(self.transport)

    async def cpu_us(self, requests: int) -> float:
        """Thread CPU microseconds per request, ``requests`` one after another."""
        loop = asyncio.get_running_loop()
        started = time.thread_time()
        for _ in range(requests):
            self.transport.waiter = loop.create_future()
            self.protocol.data_received(REQUEST)
            await self.transport.waiter
        return (time.thread_time() - started) / requests * 1e6


async def run(requests: int, rounds: int) -> bool:
    sandbox = ShipStationSandbox(knobs=Knobs(latency=Latency(base_ms=1), rate_limit=1_000_000),
                                 carriers=FOUR)  # fmt: skip
    sandbox_runner, sandbox_url = await serve_app(sandbox.app)
    runners = [sandbox_runner]
    try:
        with tempfile.TemporaryDirectory(prefix="ratesvc-bench-") as data_dir:
            ours = create_app(load_settings(_env(sandbox_url, data_dir, {})))
            runners.append((await serve_app(ours))[0])
            service = _Connection(runners[-1])
            for _ in range(3):  # cold, then cached (and kept), then replayed
                await service.cpu_us(1)
            answer = service.transport.answers[-1]
            size = len(answer.partition(b"\r\n\r\n")[2])
            bare_body = b'{"x":"' + b"y" * (size - 8) + b'"}'

            async def handler(request: web.Request) -> web.Response:
                await request.read()
                return web.Response(body=bare_body, content_type="application/json")

            bare_app = web.Application()
            bare_app.router.add_post("/v1/rates", handler)
            runners.append((await serve_app(bare_app))[0])
            bare = _Connection(runners[-1])
            await bare.cpu_us(100)
            await service.cpu_us(100)
            samples: dict[str, list[float]] = {"ratesvc": [], "bare": []}
            for _ in range(rounds):
                samples["ratesvc"].append(await service.cpu_us(requests))
                samples["bare"].append(await bare.cpu_us(requests))
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
    best = {name: min(values) for name, values in samples.items()}
    ratio = best["bare"] / best["ratesvc"]
    statuses = {a.split(b"\r\n", 1)[0] for c in (service, bare) for a in c.transport.answers[-2:]}
    checks = {f"every answer 200 ({sorted(statuses)})": statuses == {b"HTTP/1.1 200 OK"}}
    rows = [(name, f"{best[name]:.1f}", f"{statistics.median(values):.1f}",
             f"{best['bare'] / best[name]:.0%}") for name, values in samples.items()]  # fmt: skip
    return report(
        "edge_cpu",
        f"Server-side CPU per replayed POST /v1/rates ({size} B answer) vs a bare aiohttp "
        f"handler, no sockets; {rounds} alternating rounds of {requests} requests, thread CPU "
        f"time, microseconds per request",
        ("server", "min us", "median us", "bare / this (mins)"),
        rows,
        checks,
        {"requests": requests, "rounds": rounds, "cpu_us": samples, "min_us": best,
         "ratio_of_mins": ratio, "answer_bytes": size},
    )  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args(argv)
    loop = event_loop.choose(os.environ)  # the loop ratesvc serve would run
    return 0 if event_loop.run(run(args.requests, args.rounds), loop) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
