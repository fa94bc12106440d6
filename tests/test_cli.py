"""The ``ratesvc`` command as a person uses it: demo, check, serve."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from decimal import Decimal
from typing import Any

from ratesvc.sandbox.shipstation import ShipStationSandbox

COMMAND = [sys.executable, "-m", "ratesvc"]


def account_env(url: str, secret: str = "sandbox-secret") -> dict[str, str]:
    return {
        "RATESVC_API_TOKEN": "token-0123456789abcdef",
        "RATESVC_SHIPSTATION_URL": url,
        "RATESVC_SHIPSTATION_API_KEY": "sandbox-key",
        "RATESVC_SHIPSTATION_API_SECRET": secret,
    }


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *COMMAND, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


async def shell(command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, command
    return out.decode()


async def test_demo_prints_curls_that_return_real_sandbox_data() -> None:
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "demo", "--port", "0", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        while sum(line.startswith("  curl") for line in lines) < 3:
            line = await asyncio.wait_for(process.stdout.readline(), 20)
            assert line, "the demo stopped before printing its instructions"
            lines.append(line.decode())
        curls = [line.strip() for line in lines if line.strip().startswith("curl")]
        assert len(curls) == 3
        rates, sale_rates, label = [json.loads(await shell(c)) for c in curls]
        assert rates["complete"] is True
        assert {q["carrier_code"] for q in rates["quotes"]} == {
            "stamps_com", "ups", "fedex", "dhl_express_worldwide",
        }  # fmt: skip
        totals = [Decimal(q["total"]) for q in rates["quotes"]]
        assert totals == sorted(totals)
        assert sale_rates["sale_id"] == "sale-simple" and sale_rates["quotes"]
        assert label["sale_id"] == "sale-multibox"
        assert label["status"] in ("purchased", "completed")
        assert [p["box"] for p in label["packages"]] == ["Box 1", "Box 2"]
        assert all(p["tracking_number"].startswith("1Z") for p in label["packages"])
        assert re.search(r"API token:\s+\S{20,}", "".join(lines))
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0


async def test_check_reports_working_credentials(sandbox_url: str) -> None:
    code, out, _ = await run("check", env=account_env(sandbox_url))

    assert code == 0
    assert "account default: ShipStation OK (4 carriers connected: stamps_com, ups" in out


async def test_check_explains_rejected_keys(sandbox_url: str, sandbox: ShipStationSandbox) -> None:
    code, out, _ = await run("check", env=account_env(sandbox_url, secret="an-old-secret"))

    assert code == 1
    (line,) = [line for line in out.splitlines() if "PROBLEM" in line]
    assert "regenerated" in line and "RATESVC_SHIPSTATION_API_SECRET" in line
    assert "an-old-secret" not in out
    assert sandbox.unauthorized == 1


async def test_check_explains_an_unreachable_shipstation() -> None:
    code, out, _ = await run("check", env=account_env("http://127.0.0.1:9"))

    assert code == 1
    assert "cannot connect to ShipStation" in out


async def test_serve_refuses_bad_config_with_one_line_per_problem() -> None:
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("RATESVC_")}
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "serve", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**env, "RATESVC_PORT": "nope"},
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 2
    problems = [line for line in err.decode().splitlines() if line.startswith("  - ")]
    assert sorted(p.split(":")[0] for p in problems) == [
        "  - RATESVC_API_TOKEN", "  - RATESVC_PORT", "  - RATESVC_SHIPSTATION_API_KEY",
        "  - RATESVC_SHIPSTATION_API_SECRET",
    ]  # fmt: skip


async def test_the_sandbox_runs_on_its_own_and_answers_like_shipstation() -> None:
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "sandbox", "--port", "0", "--latency-ms", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        banner = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", banner)
        assert match, banner
        url = match[1]
        carriers = await shell(f"curl -s -u sandbox-key:sandbox-secret {url}/carriers")
        denied = await shell(f"curl -s -o /dev/null -w '%{{http_code}}' {url}/carriers")
        counters = json.loads(await shell(f"curl -s {url}/__sandbox/calls"))
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)

    assert [c["code"] for c in json.loads(carriers)][:2] == ["stamps_com", "ups"]
    assert denied == "401"
    assert counters["calls"] == {"/carriers": 2}
    assert counters["unauthorized"] == 1
    assert code == 0


async def test_check_verifies_cin7_core_too(sandbox_url: str, cin7_url: str) -> None:
    cin7 = {"RATESVC_CIN7_URL": cin7_url, "RATESVC_CIN7_ACCOUNT_ID": "sandbox-account"}
    good = await run("check", env={**account_env(sandbox_url), **cin7,
                                   "RATESVC_CIN7_APPLICATION_KEY": "sandbox-key"})  # fmt: skip
    bad = await run("check", env={**account_env(sandbox_url), **cin7,
                                  "RATESVC_CIN7_APPLICATION_KEY": "deleted-app"})  # fmt: skip

    assert good[0] == 0
    assert "account default: Cin7 Core OK (1 locations: Main Warehouse)" in good[1]
    assert bad[0] == 1
    assert "Cin7 Core" in bad[1] and "RATESVC_CIN7_APPLICATION_KEY" in bad[1]
    assert "deleted-app" not in bad[1]
