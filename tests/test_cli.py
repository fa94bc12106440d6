"""The ``ratesvc`` command as a person uses it: demo, check, serve."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ratesvc.sandbox.cin7 import Cin7Sandbox
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
    out, _ = await asyncio.wait_for(process.communicate(), 40)
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
        while not any(line.startswith("  (then: curl") for line in lines):
            line = await asyncio.wait_for(process.stdout.readline(), 20)
            assert line, "the demo stopped before printing its instructions"
            lines.append(line.decode())
        commands = [line.strip() for line in lines if line.strip().startswith(("curl", "for "))]
        assert len(commands) == 7
        rates, sale_rates, label = [json.loads(await shell(c)) for c in commands[:3]]
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

        # The sale to Canada: two labels with customs forms, both on the sale; then a refusal.
        abroad = json.loads(await shell(commands[3]))
        assert abroad["status"] in ("purchased", "completed"), abroad
        assert all(p["customs_form_url"] for p in abroad["packages"])
        on_sale = json.loads(await shell(commands[4]))
        assert sorted(on_sale["Attachments"]) == sorted(
            f"{kind}-{p['tracking_number']}.pdf"
            for p in abroad["packages"] for kind in ("customs", "label")
        )  # fmt: skip
        refused = json.loads(await shell(commands[5]))
        assert refused["code"] == "customs_incomplete"
        assert "Tea-Oolong (Oolong Tea 100 g): no HS code" in refused["detail"]

        # Pack a sale: the webhook ships it, and the command shows the label on the sale.
        sale = json.loads(await shell(commands[6]))
        (fulfilment,) = sale["Fulfilments"]
        assert (fulfilment["Pack"], fulfilment["Ship"]) == ("AUTHORISED", "AUTHORISED")
        (tracking,) = fulfilment["Tracking"]
        assert sale["Attachments"] == [f"label-{tracking['TrackingNumber']}.pdf"]
        then = next(line for line in lines if line.startswith("  (then: curl"))
        events = json.loads(await shell(then.strip()[len("(then: ") : -1]))
        (event,) = events["events"]
        assert (event["sale_id"], event["status"]) == ("sale-unpacked", "processed")
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


@pytest.mark.parametrize(
    ("setting", "url"),
    [
        ("RATESVC_REDIS_URL", "redis://:Xy7/Qk9+Zz=@127.0.0.1:6379/0"),
        ("RATESVC_DATABASE_URL", "postgresql://postgres:Xy7/Qk9+Zz=@127.0.0.1:5432/postgres"),
    ],
)
async def test_serve_with_a_backend_password_not_percent_encoded_is_one_line_never_showing_it(
    setting: str, url: str, tmp_path: Path
) -> None:
    """README: a backend URL is "never repeated in a message ... with its password", a backend
    that cannot be used is "a one-line configuration error". A base64 password ('/' '+' '=')
    pasted unencoded showed its first part in an unhandled traceback (Redis, exit 1) or in the
    start-up line (PostgreSQL) (review round 4, ops finding 3)."""
    env = {**account_env("http://127.0.0.1:9"), "RATESVC_DATA_DIR": str(tmp_path),
           "RATESVC_PORT": "0", setting: url}  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RATESVC_")}
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "serve", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**clean, **env},
    )  # fmt: skip
    try:
        _, raw = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    err = raw.decode()

    assert process.returncode == 2, err[-1500:]
    assert "Traceback" not in err
    assert not [part for part in ("Xy7", "Qk9", "Zz") if part in err], err[-1500:]
    (problem,) = [line for line in err.splitlines() if line.startswith("  - ")]
    assert problem.startswith(f"  - {setting}: ") and "percent-encode" in problem


async def test_serve_with_a_corrupt_ledger_says_so_and_exits(tmp_path: Path) -> None:
    (tmp_path / "ledger.sqlite3").write_bytes(b"not a database " * 100)
    env = {**account_env("http://127.0.0.1:9"), "RATESVC_DATA_DIR": str(tmp_path),
           "RATESVC_PORT": "0"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "serve", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )  # fmt: skip
    try:  # it used to hang here: the ledger's connection thread kept the process alive
        _, err = await asyncio.wait_for(process.communicate(), 20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 2
    assert "cannot open the ledger" in err.decode()
    assert "file is not a database" in err.decode()


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


async def test_check_explains_a_cin7_user_in_several_organisations(
    sandbox_url: str, cin7_url: str, cin7_sandbox: Cin7Sandbox
) -> None:
    cin7_sandbox.knobs.multiple_organisations = True

    code, out, _ = await run("check", env=cin7_env(sandbox_url, cin7_url))

    assert code == 1
    assert "account default: Cin7 Core at" in out and "PROBLEM" in out
    assert "300 Multiple Choices" in out
    assert "one connection (API application key) per organisation" in out
    assert "Cin7 Core OK" not in out


def cin7_env(sandbox_url: str, cin7_url: str) -> dict[str, str]:
    return {
        **account_env(sandbox_url), "RATESVC_CIN7_URL": cin7_url,
        "RATESVC_CIN7_ACCOUNT_ID": "sandbox-account", "RATESVC_CIN7_APPLICATION_KEY": "sandbox-key",
        "RATESVC_CIN7_WEBHOOK_TOKEN": "hook-token-0123456789",
    }  # fmt: skip


async def test_cin7_subscribe_registers_then_updates_the_pack_authorised_webhook(
    sandbox_url: str, cin7_url: str, cin7_sandbox: Cin7Sandbox
) -> None:
    env = cin7_env(sandbox_url, cin7_url)
    url = "https://ratesvc.example.com/v1/webhooks/cin7/default"

    first = await run("cin7", "subscribe", "--url", url, env=env)
    cin7_sandbox.webhooks[0]["IsActive"] = False  # six failed deliveries later...
    again = await run("cin7", "subscribe", "--url", url, env=env)

    assert first[0] == 0, first
    assert "subscribed: Sale/PackAuthorised → " + url + " (bearerauth) active" in first[1]
    assert again[0] == 0, again
    assert "updated (and re-activated)" in again[1]
    (hook,) = cin7_sandbox.webhooks  # updated in place, not a second subscription
    assert (hook["IsActive"], hook["ExternalURL"]) == (True, url)
    assert hook["ExternalBearerToken"] == "hook-token-0123456789"
    assert "hook-token-0123456789" not in first[1] + again[1]


async def test_cin7_webhooks_reports_a_deactivated_webhook_loudly(
    sandbox_url: str, cin7_url: str, cin7_sandbox: Cin7Sandbox
) -> None:
    env = cin7_env(sandbox_url, cin7_url)
    cin7_sandbox.webhooks.append({
        "ID": "h-1", "Type": "Sale/PackAuthorised", "IsActive": False,
        "ExternalURL": "https://ratesvc.example.com/v1/webhooks/cin7/default",
        "ExternalAuthorizationType": "bearerauth", "ExternalBearerToken": "x",
    })  # fmt: skip

    code, out, err = await run("cin7", "webhooks", env=env)

    assert code == 1
    assert "account default: Sale/PackAuthorised → https://ratesvc.example.com" in out
    assert "DEACTIVATED" in out
    assert err.startswith("!!! account default: Cin7 Core DEACTIVATED the Sale/PackAuthorised")
    assert "ratesvc cin7 subscribe --account default --url https://ratesvc.example.com" in err


async def test_cin7_subscribe_needs_a_webhook_credential(sandbox_url: str, cin7_url: str) -> None:
    env = {**cin7_env(sandbox_url, cin7_url), "RATESVC_CIN7_WEBHOOK_TOKEN": ""}

    code, out, _ = await run(
        "cin7", "subscribe", "--url", "https://x.example/v1/webhooks/cin7/default", env=env
    )

    assert code == 2
    assert "RATESVC_CIN7_WEBHOOK_TOKEN" in out
