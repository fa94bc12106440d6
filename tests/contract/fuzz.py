"""Fuzz the served OpenAPI document with schemathesis: ``python -m tests.contract.fuzz``.

Starts the service in front of both sandboxes (no latency, rate limits far above what the run
spends) on free 127.0.0.1 ports, then runs ``schemathesis run`` against
``http://127.0.0.1:PORT/openapi.json`` twice — with the API token and without any credential —
and stops everything. The webhook's credential is the API token too, so the authenticated run
reaches the webhook's handler and the unauthenticated one its 401. Exit status: non-zero on any
finding (a 5xx, a status, content type or body the document does not declare, schema-invalid
input that was accepted, ...).

``--max-examples`` (default 100) bounds the fuzzing phase per operation; ``.ci/run`` keeps the
default (about a minute and a half for both passes). Run longer with e.g. ``--max-examples 1000``;
``--seed N`` repeats a run; ``--serve`` only starts the service, for running schemathesis by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time

import aiohttp

from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.demo import DEMO_SHIP_FROM, start_site
from ratesvc.sandbox.cin7 import Cin7Knobs, Cin7Sandbox
from ratesvc.sandbox.knobs import Knobs
from ratesvc.sandbox.shipstation import ShipStationSandbox

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
    "missing_required_header,unsupported_method,ignored_auth"
)
_LOOPBACK = "127.0.0.1"


async def _wait_ready(url: str, within_s: float = 10.0) -> None:
    stop_at = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > stop_at:
                raise SystemExit(f"{url}/readyz did not answer 200 within {within_s} s")
            await asyncio.sleep(0.1)


def schemathesis_command(url: str, token: str | None, args: argparse.Namespace) -> list[str]:
    """The ``schemathesis run`` command line for one pass (``token``: None for no credential)."""
    executable = shutil.which("schemathesis") or "schemathesis"
    command = [
        executable, "run", f"{url}/openapi.json",
        "--checks", CHECKS,
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(args.max_examples),
        "--workers", "1",
        "--request-timeout", "30",
        "--suppress-health-check", "all",
        "--continue-on-failure",
        "--warnings", "off",
    ]  # fmt: skip
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    if token is not None:
        command += ["-H", f"Authorization: Bearer {token}"]
    return command


async def run(args: argparse.Namespace) -> int:
    shipstation = ShipStationSandbox(
        api_key="fuzz-key", api_secret="fuzz-secret", knobs=Knobs(rate_limit=100_000)
    )
    cin7 = Cin7Sandbox(account_id="fuzz-account", application_key="fuzz-app-key",
                       knobs=Cin7Knobs(rate_limit=100_000))  # fmt: skip
    ss_runner, ss_port = await start_site(shipstation.app, _LOOPBACK, 0)
    c7_runner, c7_port = await start_site(cin7.app, _LOOPBACK, 0)
    token = secrets.token_urlsafe(24)
    data_dir = tempfile.mkdtemp(prefix="ratesvc-fuzz-")
    settings = load_settings({
        "RATESVC_API_TOKEN": token,
        "RATESVC_SHIPSTATION_URL": f"http://{_LOOPBACK}:{ss_port}",
        "RATESVC_SHIPSTATION_API_KEY": "fuzz-key",
        "RATESVC_SHIPSTATION_API_SECRET": "fuzz-secret",
        "RATESVC_SHIP_FROM": DEMO_SHIP_FROM,
        "RATESVC_CIN7_URL": f"http://{_LOOPBACK}:{c7_port}",
        "RATESVC_CIN7_ACCOUNT_ID": "fuzz-account",
        "RATESVC_CIN7_APPLICATION_KEY": "fuzz-app-key",
        "RATESVC_CIN7_WEBHOOK_TOKEN": token,
        "RATESVC_AUTOSHIP": "off",
        "RATESVC_POLL_INTERVAL_S": "0",
        # Upstream budgets far above what a run spends: a throttled 503 is documented, but
        # schemathesis counts every 5xx as a finding.
        "RATESVC_SHIPSTATION_RATE_LIMIT": "10000",
        "RATESVC_CIN7_MIN_INTERVAL_S": "0",
        "RATESVC_CIN7_WINDOW_S": "0.1",
        "RATESVC_DATA_DIR": data_dir,
    })  # fmt: skip
    runner, port = await start_site(create_app(settings), _LOOPBACK, 0)
    url = f"http://{_LOOPBACK}:{port}"
    status = 0
    try:
        await _wait_ready(url)
        if args.serve:
            print(f"serving {url} (token {token}); Ctrl-C to stop", flush=True)
            await asyncio.Event().wait()
        for label, credential in (("authenticated", token), ("unauthenticated", None)):
            print(f"--- schemathesis, {label}, against {url}", flush=True)
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *schemathesis_command(url, credential, args),
                env={**os.environ, "NO_COLOR": "1"},
                cwd=data_dir,  # schemathesis keeps a cache in its working directory
            )
            code = await process.wait()
            print(f"--- {label}: exit {code} in {time.monotonic() - started:.0f} s", flush=True)
            status = status or code
    finally:
        await runner.cleanup()
        await c7_runner.cleanup()
        await ss_runner.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--serve", action="store_true", help="only start the service (to run schemathesis by hand)"
    )
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
