"""``ratesvc demo``: the service against built-in sandboxes, on 127.0.0.1, with no accounts."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from pathlib import Path

from aiohttp import web

from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.sandbox.cin7 import Cin7Knobs, Cin7Sandbox
from ratesvc.sandbox.knobs import Knobs, Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox

DEMO_SHIP_FROM = (
    '{"name": "Demo Warehouse", "company": "ratesvc demo", "street1": "2815 Exposition Blvd",'
    ' "city": "Austin", "state": "TX", "postal_code": "78703", "country": "US"}'
)


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    address = runner.addresses[0]  # (host, port): tells the port picked when asked for 0
    return runner, int(address[1])


DEMO_SHIPMENT = (
    '{"shipment": {"ship_to": {"name": "A. Customer", "street1": "350 5th Ave", "city": "New York",'
    ' "state": "NY", "postal_code": "10118", "country": "US", "residential": true},'
    ' "packages": [{"weight": {"value": 2.5, "unit": "lb"},'
    ' "dimensions": {"length": 12, "width": 9, "height": 4, "unit": "in"}}]}}'
)


DEMO_SALE_LABEL = (
    '{"sale_id": "sale-multibox", "carrier_code": "ups", "service_code": "ups_ground"}'
)


def curl_examples(url: str, token: str) -> list[str]:
    """Rate a shipment; rate a packed Cin7 Core sale; buy its labels (written back to the sale)."""
    auth = f'-H "Authorization: Bearer {token}" -H "Content-Type: application/json"'
    return [
        f"curl -s {auth} {url}/v1/rates -d '{DEMO_SHIPMENT}'",
        f"""curl -s {auth} {url}/v1/rates -d '{{"sale_id": "sale-simple"}}'""",
        f"curl -s {auth} {url}/v1/labels -d '{DEMO_SALE_LABEL}'",
    ]


async def run_demo(port: int, data_dir: Path | None, stop: asyncio.Event) -> None:
    sandbox = ShipStationSandbox(
        api_key="demo-key",
        api_secret="demo-secret",
        knobs=Knobs(latency=Latency(base_ms=120, jitter_ms=40)),
    )
    sandbox_runner, sandbox_port = await start_site(sandbox.app, "127.0.0.1", 0)
    cin7 = Cin7Sandbox(account_id="demo-account", application_key="demo-app-key",
                       knobs=Cin7Knobs(latency=Latency(base_ms=60, jitter_ms=20)))  # fmt: skip
    cin7_runner, cin7_port = await start_site(cin7.app, "127.0.0.1", 0)
    token = secrets.token_urlsafe(24)
    settings = load_settings(
        {
            "RATESVC_API_TOKEN": token,
            "RATESVC_SHIPSTATION_URL": f"http://127.0.0.1:{sandbox_port}",
            "RATESVC_SHIPSTATION_API_KEY": "demo-key",
            "RATESVC_SHIPSTATION_API_SECRET": "demo-secret",
            "RATESVC_SHIP_FROM": DEMO_SHIP_FROM,
            "RATESVC_CIN7_URL": f"http://127.0.0.1:{cin7_port}",
            "RATESVC_CIN7_ACCOUNT_ID": "demo-account",
            "RATESVC_CIN7_APPLICATION_KEY": "demo-app-key",
            "RATESVC_DATA_DIR": str(data_dir or tempfile.mkdtemp(prefix="ratesvc-demo-")),
        }
    )
    runner, bound = await start_site(create_app(settings), "127.0.0.1", port)
    url = f"http://127.0.0.1:{bound}"
    lines = [
        "",
        "ratesvc demo is running (Ctrl-C to stop)",
        f"  service:              {url}   (API docs: {url}/openapi.json)",
        f"  ShipStation sandbox:  http://127.0.0.1:{sandbox_port}   (knobs: /__sandbox/knobs)",
        f"  Cin7 Core sandbox:    http://127.0.0.1:{cin7_port}   (sales: sale-simple, "
        "sale-multibox, sale-international, sale-advanced, sale-shipped, sale-unpacked)",
        f"  API token:            {token}",
        f"  data directory:       {settings.data_dir}",
        "",
        "Try:",
        *(f"  {command}" for command in curl_examples(url, token)),
        "",
    ]
    print("\n".join(lines), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await sandbox_runner.cleanup()
        await cin7_runner.cleanup()
