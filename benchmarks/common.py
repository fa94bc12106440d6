"""What every benchmark shares: an in-process sandbox + service on 127.0.0.1, stats, reports.

Benchmarks only ever talk to 127.0.0.1, are bounded in count and time, and stop by themselves.
Results are printed as a table and written to ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ratesvc import gc_tuning
from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.demo import start_site
from ratesvc.sandbox.knobs import Knobs
from ratesvc.sandbox.shipstation import ShipStationSandbox

RESULTS = Path(__file__).parent / "results"
TOKEN = "benchmark-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHIP_FROM = '{"postal_code": "78703", "country": "US", "state": "TX", "city": "Austin"}'
EIGHT_CARRIERS = (
    "stamps_com", "ups", "fedex", "dhl_express_worldwide",
    "ups_walleted", "endicia", "dhl_ecommerce_wallet", "globalpost",
)  # fmt: skip


@dataclass
class Stack:
    sandbox: ShipStationSandbox | None  # None: running in another process
    sandbox_url: str
    url: str
    session: aiohttp.ClientSession
    app: web.Application


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """``app`` on a free port of 127.0.0.1, served as ``ratesvc serve`` serves (its runner and
    handler settings: no access log), so the figures are the service's."""
    runner, port = await start_site(app, "127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def service(sandbox_url: str, **env: str) -> AsyncIterator[Stack]:
    """The service in front of a ShipStation sandbox running elsewhere (``sandbox`` is None)."""
    with tempfile.TemporaryDirectory(prefix="ratesvc-bench-") as data_dir:
        app = create_app(load_settings(_env(sandbox_url, data_dir, env)))
        runner, url = await serve_app(app)
        gc_tuning.tune()  # as ratesvc serve does once it serves
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            try:
                yield Stack(sandbox=None, sandbox_url=sandbox_url, url=url, session=session,
                            app=app)  # fmt: skip
            finally:
                await runner.cleanup()


def _env(sandbox_url: str, data_dir: str, env: dict[str, str]) -> dict[str, str]:
    return {
        "RATESVC_API_TOKEN": TOKEN,
        "RATESVC_SHIPSTATION_URL": sandbox_url,
        "RATESVC_SHIPSTATION_API_KEY": "sandbox-key",
        "RATESVC_SHIPSTATION_API_SECRET": "sandbox-secret",
        "RATESVC_SHIP_FROM": SHIP_FROM,
        "RATESVC_DATA_DIR": data_dir,
        "RATESVC_LOG_LEVEL": "WARNING",
        **env,
    }


@asynccontextmanager
async def stack(
    knobs: Knobs, *, carriers: Sequence[str] = EIGHT_CARRIERS, **env: str
) -> AsyncIterator[Stack]:
    """The ShipStation sandbox and the service in front of it, both on 127.0.0.1."""
    sandbox = ShipStationSandbox(knobs=knobs, carriers=tuple(carriers))
    sandbox_runner, sandbox_url = await serve_app(sandbox.app)
    with tempfile.TemporaryDirectory(prefix="ratesvc-bench-") as data_dir:
        settings = load_settings(_env(sandbox_url, data_dir, env))
        app = create_app(settings)
        runner, url = await serve_app(app)
        gc_tuning.tune()  # as ratesvc serve does once it serves
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            try:
                yield Stack(sandbox=sandbox, sandbox_url=sandbox_url, url=url, session=session,
                            app=app)  # fmt: skip
            finally:
                await runner.cleanup()
                await sandbox_runner.cleanup()


def shipment(postal_code: str, *, carriers: Sequence[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "shipment": {
            "ship_to": {"postal_code": postal_code, "country": "US", "state": "NY",
                        "city": "New York", "residential": True},
            "packages": [{"weight": {"value": 2.5, "unit": "lb"},
                          "dimensions": {"length": 12, "width": 9, "height": 4, "unit": "in"}}],
        }
    }  # fmt: skip
    if carriers is not None:
        body["carriers"] = list(carriers)
    return body


async def post_rates(s: Stack, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    async with s.session.post(f"{s.url}/v1/rates", json=body, headers=AUTH) as response:
        payload = await response.json()
    return response.status, payload, time.perf_counter() - started


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(name: str, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]],
           checks: dict[str, bool], data: dict[str, Any]) -> bool:  # fmt: skip
    """Print the table and the checks, save everything as JSON; True when every check held."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(f"\n{title}")
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    for check, held in checks.items():
        print(f"  [{'ok' if held else 'FAIL'}] {check}")
    RESULTS.mkdir(exist_ok=True)
    document = {
        "benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": __import__("os").cpu_count()},
        "checks": checks, **data,
    }  # fmt: skip
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, default=str))
    print(f"  saved {path}")
    return all(checks.values())
