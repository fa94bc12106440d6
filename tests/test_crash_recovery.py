"""A ``ratesvc serve`` process killed (SIGKILL) while ShipStation has bought a label but before the
ledger knows it: the restarted service finds the label at ShipStation and never buys it again —
on either ledger engine."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp

from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.conftest import AUTH, service_env

BODY = {
    "carrier_code": "fedex", "service_code": "fedex_ground",
    "shipment": {"ship_to": {"postal_code": "10118", "country": "US", "state": "NY"},
                 "packages": [{"weight": {"value": 2, "unit": "lb"}, "box": "Box 1"}]},
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_killed_purchase_is_adopted_after_restart_not_bought_twice(
    aiohttp_client: Any,
    sandbox: ShipStationSandbox,
    sandbox_url: str,
    tmp_path: Path,
    ledger_env: dict[str, str],
) -> None:
    port = free_port()
    # On PostgreSQL the killed process's lease on the purchase must expire before the restarted
    # one may adopt it (it cannot tell a dead replica from a live one); on SQLite (one process)
    # the restart abandons it at once.
    env = service_env(sandbox_url, tmp_path / "data", RATESVC_LABEL_SETTLE_S="0",
                      RATESVC_PORT=str(port), RATESVC_LEASE_TTL_S="1", **ledger_env)  # fmt: skip
    sandbox.label_fault = "hang"  # ShipStation buys, then takes its time to answer
    sandbox.knobs.hang_s = 30
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RATESVC_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ratesvc", "serve", env={**clean, **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):  # bounded wait for the process to serve
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        buying = asyncio.create_task(session.post(f"{url}/v1/labels", json=BODY, headers=AUTH))
        for _ in range(200):
            if sandbox.shipments:
                break
            await asyncio.sleep(0.05)
        assert len(sandbox.shipments) == 1  # bought at ShipStation, not yet answered
        process.send_signal(signal.SIGKILL)
        await process.wait()
        buying.cancel()
        await asyncio.gather(buying, return_exceptions=True)

    sandbox.label_fault = None
    restarted = await aiohttp_client(create_app(load_settings(env)))

    async def listed() -> list[dict[str, Any]]:
        page = await (await restarted.get("/v1/labels", headers=AUTH)).json()
        labels: list[dict[str, Any]] = page["labels"]
        return labels

    for _ in range(200):
        labels = await listed()
        if labels and labels[0]["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    (label,) = await listed()
    (shipment,) = sandbox.shipments.values()
    assert label["status"] == "completed"
    assert label["packages"][0]["tracking_number"] == shipment["trackingNumber"]
    assert label["packages"][0]["shipment_id"] == shipment["shipmentId"]
    assert sandbox.calls["/shipments/createlabel"] == 1
    assert "reprint" in label["detail"]
