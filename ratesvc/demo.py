"""``ratesvc demo``: the service against built-in sandboxes, on 127.0.0.1, with no accounts."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from ratesvc import gc_tuning
from ratesvc.app import STOP_CLOCK, create_app
from ratesvc.automation.subscriptions import subscribe
from ratesvc.config import DEFAULT_ACCOUNT, Settings, load_settings
from ratesvc.sandbox.cin7 import Cin7Knobs, Cin7Sandbox
from ratesvc.sandbox.knobs import Knobs, Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.upstreams.cin7.client import Cin7Client, cin7_limiter

DEMO_SHIP_FROM = (
    '{"name": "Demo Warehouse", "company": "ratesvc demo", "street1": "2815 Exposition Blvd",'
    ' "city": "Austin", "state": "TX", "postal_code": "78703", "country": "US"}'
)


async def start_site(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Serve ``app``; ``reuse_port``: beside other processes on the same port (SO_REUSEPORT).
    The service's requests in flight at a stop get its ``RATESVC_STOP_GRACE_S``, not aiohttp's
    60 s (:class:`ratesvc.app.StopClock`); a sandbox's keep aiohttp's."""
    clock = app.get(STOP_CLOCK)
    shutdown_timeout = clock.grace_s if clock is not None else 60.0
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
        await site.start()
    except BaseException:
        await runner.cleanup()  # the contexts that started (a later one failed, or the port)
        raise
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


INTERNATIONAL_LABEL = (
    '{"sale_id": "sale-international", "carrier_code": "ups",'
    ' "service_code": "ups_standard_international"}'
)
REFUSED_LABEL = (
    '{"sale_id": "sale-international-nohs", "carrier_code": "ups",'
    ' "service_code": "ups_standard_international"}'
)


def pack_command(cin7_url: str, sale_id: str = "sale-unpacked") -> str:
    """Authorise a pack in the Cin7 Core sandbox, wait for the label PDF to reach the sale, show
    the sale."""
    sale = f"{cin7_url}/__sandbox/sales/{sale_id}"
    return f"curl -s -X POST {sale}/pack >/dev/null; " + sale_command(cin7_url, sale_id, "label-")


def sale_command(cin7_url: str, sale_id: str, attachment: str, count: int = 1) -> str:
    """Show a sale of the Cin7 Core sandbox once ``count`` attachments named ``attachment…`` are
    on it (the write-back runs after the label is bought; at most 30 s)."""
    sale = f"{cin7_url}/__sandbox/sales/{sale_id}"
    return (
        f"for i in $(seq 30); do [ $(curl -s {sale} | grep -o '\"{attachment}' | wc -l) -ge "
        f"{count} ] && break; sleep 1; done; curl -s {sale}"
    )


def international_examples(url: str, token: str, cin7_url: str) -> list[str]:
    """Label the two-box sale to Canada (customs declared from Cin7 Core's products), show its
    labels and customs forms on the sale, and try a sale whose product lacks an HS code (422)."""
    auth = f'-H "Authorization: Bearer {token}" -H "Content-Type: application/json"'
    return [
        f"curl -s {auth} {url}/v1/labels -d '{INTERNATIONAL_LABEL}'",
        sale_command(cin7_url, "sale-international", "customs-", count=2),
        f"curl -s {auth} {url}/v1/labels -d '{REFUSED_LABEL}'",
    ]


def curl_examples(url: str, token: str) -> list[str]:
    """Rate a shipment; rate a packed Cin7 Core sale; buy its labels (written back to the sale)."""
    auth = f'-H "Authorization: Bearer {token}" -H "Content-Type: application/json"'
    return [
        f"curl -s {auth} {url}/v1/rates -d '{DEMO_SHIPMENT}'",
        f"""curl -s {auth} {url}/v1/rates -d '{{"sale_id": "sale-simple"}}'""",
        f"curl -s {auth} {url}/v1/labels -d '{DEMO_SALE_LABEL}'",
    ]


async def _subscribe(settings: Settings, target: str) -> None:
    """Subscribe the Cin7 Core sandbox's Sale/PackAuthorised webhook to this service."""
    account = settings.accounts[DEFAULT_ACCOUNT]
    assert account.cin7 is not None
    assert account.webhook is not None
    async with aiohttp.ClientSession() as session:
        cin7 = Cin7Client(session, account.cin7, cin7_limiter("demo"))
        deadline = asyncio.get_running_loop().time() + 10
        await subscribe(cin7, DEFAULT_ACCOUNT, account.webhook, target, deadline=deadline)


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
    webhook_token = secrets.token_urlsafe(24)
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
            # Packed sales are shipped by the cheapest rule as Cin7 Core announces them. The
            # poller is off so that the seeded packed sales wait for the curls below.
            "RATESVC_AUTOSHIP": "cheapest",
            "RATESVC_AUTOSHIP_TEST_LABELS": "true",
            "RATESVC_CIN7_WEBHOOK_TOKEN": webhook_token,
            "RATESVC_POLL_INTERVAL_S": "0",
        }
    )
    runner, bound = await start_site(create_app(settings), "127.0.0.1", port)
    gc_tuning.tune()
    url = f"http://127.0.0.1:{bound}"
    await _subscribe(settings, f"{url}/v1/webhooks/cin7/{DEFAULT_ACCOUNT}")
    lines = [
        "",
        "ratesvc demo is running (Ctrl-C to stop)",
        f"  service:              {url}   (API docs: {url}/openapi.json)",
        f"  operator console:     {url}/console/   (sign in with the API token below)",
        f"  ShipStation sandbox:  http://127.0.0.1:{sandbox_port}   (knobs: /__sandbox/knobs)",
        f"  Cin7 Core sandbox:    http://127.0.0.1:{cin7_port}   (sales: sale-simple, "
        "sale-multibox, sale-international, sale-international-nohs, sale-eur, sale-advanced, "
        "sale-shipped, sale-unpacked)",
        f"  API token:            {token}",
        f"  data directory:       {settings.data_dir}",
        "",
        "Try:",
        *(f"  {command}" for command in curl_examples(url, token)),
        "",
        "Label the sale to Canada (each box declares its own items to customs), see its labels and",
        "customs forms on the sale, then a sale whose product has no HS code (422, naming it):",
        *(f"  {c}" for c in international_examples(url, token, f"http://127.0.0.1:{cin7_port}")),
        "",
        "Pack a sale in Cin7 Core and watch its label arrive (webhook → rate → buy → write-back):",
        f"  {pack_command(f'http://127.0.0.1:{cin7_port}')}",
        f'  (then: curl -s -H "Authorization: Bearer {token}" {url}/v1/automation/events)',
        "",
    ]
    print("\n".join(lines), flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await sandbox_runner.cleanup()
        await cin7_runner.cleanup()
