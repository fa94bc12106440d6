"""Shared fixtures: the ShipStation sandbox served on 127.0.0.1 and the service in front of it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ratesvc.app import create_app
from ratesvc.config import Settings, load_settings
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.sandbox.knobs import Knobs
from ratesvc.sandbox.shipstation import ShipStationSandbox
from tests.backends import fresh_database, fresh_redis_prefix

DATA = Path(__file__).parent / "data"
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHIP_FROM = {
    "name": "Warehouse", "street1": "2815 Exposition Blvd", "city": "Austin", "state": "TX",
    "postal_code": "78703", "country": "US",
}  # fmt: skip


ACME_AUTH = {"Authorization": "Bearer acme-token-0123456789"}


def acme_settings(
    tmp_path: Path, sandbox_url: str, extra: str = "", *, cin7_url: str | None = None
) -> Settings:
    """A one-account TOML configuration (account ``acme``), with ``extra`` lines in its table."""
    cin7 = (
        f'cin7 = {{ url = "{cin7_url}", account_id = "sandbox-account", '
        'application_key = "sandbox-key" }\n'
        if cin7_url
        else ""
    )
    config = tmp_path / "ratesvc.toml"
    config.write_text(
        "[accounts.acme]\n"
        'api_tokens = ["acme-token-0123456789"]\n'
        'ship_from = { postal_code = "78703", country = "US" }\n'
        f'shipstation = {{ url = "{sandbox_url}", api_key = "sandbox-key", '
        'api_secret = "sandbox-secret" }\n' + cin7 + extra
    )
    return load_settings({"RATESVC_CONFIG": str(config), "RATESVC_DATA_DIR": str(tmp_path / "d")})


def load_json(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def service_env(
    sandbox_url: str, data_dir: Path, cin7_url: str | None = None, **extra: str
) -> dict[str, str]:
    cin7 = {}
    if cin7_url is not None:
        cin7 = {
            "RATESVC_CIN7_URL": cin7_url,
            "RATESVC_CIN7_ACCOUNT_ID": "sandbox-account",
            "RATESVC_CIN7_APPLICATION_KEY": "sandbox-key",
        }
    return {
        **cin7,
        "RATESVC_API_TOKEN": TOKEN,
        "RATESVC_SHIPSTATION_URL": sandbox_url,
        "RATESVC_SHIPSTATION_API_KEY": "sandbox-key",
        "RATESVC_SHIPSTATION_API_SECRET": "sandbox-secret",
        "RATESVC_SHIP_FROM": json.dumps(SHIP_FROM),
        "RATESVC_DATA_DIR": str(data_dir),
        **extra,
    }


@pytest.fixture
def sandbox() -> ShipStationSandbox:
    return ShipStationSandbox(knobs=Knobs())


@pytest.fixture
async def sandbox_server(aiohttp_server: Any, sandbox: ShipStationSandbox) -> TestServer:
    server: TestServer = await aiohttp_server(sandbox.app)
    return server


@pytest.fixture
def sandbox_url(sandbox_server: TestServer) -> str:
    return str(sandbox_server.make_url("")).rstrip("/")


@pytest.fixture
def cin7_sandbox() -> Cin7Sandbox:
    return Cin7Sandbox()


@pytest.fixture
async def cin7_url(aiohttp_server: Any, cin7_sandbox: Cin7Sandbox) -> str:
    server: TestServer = await aiohttp_server(cin7_sandbox.app)
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def make_settings(sandbox_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def make(**extra: str) -> Settings:
        return load_settings(service_env(sandbox_url, tmp_path / "data", **extra))

    return make


@pytest.fixture
async def sale_service(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path
) -> TestClient:
    """The service in front of both sandboxes (ShipStation and Cin7 Core)."""
    settings = load_settings(service_env(sandbox_url, tmp_path / "data", cin7_url))
    client: TestClient = await aiohttp_client(create_app(settings))
    return client


@pytest.fixture
async def service(aiohttp_client: Any, make_settings: Callable[..., Settings]) -> TestClient:
    """The service, configured from the environment form, in front of the sandbox."""
    client: TestClient = await aiohttp_client(create_app(make_settings()))
    return client


# --- automation: the service with autoship on and a webhook credential ---

HOOK_TOKEN = "hook-token-0123456789"
HOOK = {"Authorization": f"Bearer {HOOK_TOKEN}"}
WEBHOOK_URL = "/v1/webhooks/cin7/default"

MakeService = Callable[..., Awaitable[TestClient]]


def automation_env(sandbox_url: str, cin7_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    settings = {
        "RATESVC_AUTOSHIP": "cheapest", "RATESVC_CIN7_WEBHOOK_TOKEN": HOOK_TOKEN,
        "RATESVC_POLL_INTERVAL_S": "0", "RATESVC_LABEL_SETTLE_S": "0",
        "RATESVC_WRITEBACK_RETRY_S": "0.05", "RATESVC_CIN7_MIN_INTERVAL_S": "0.01",
        "RATESVC_CIN7_THROTTLE_PAUSE_S": "0.1", "RATESVC_AUTOMATION_RETRY_S": "0.05",
    }  # fmt: skip
    return service_env(sandbox_url, data_dir, cin7_url, **{**settings, **extra})


@pytest.fixture
def make_automated(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path
) -> MakeService:
    async def make(**extra: str) -> TestClient:
        settings = load_settings(automation_env(sandbox_url, cin7_url, tmp_path / "data", **extra))
        client: TestClient = await aiohttp_client(create_app(settings))
        return client

    return make


@pytest.fixture
def make_labelling(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path
) -> MakeService:
    """The service with both sandboxes and a quick write-back, plus ``extra`` settings."""

    async def make(**extra: str) -> TestClient:
        env = service_env(
            sandbox_url, tmp_path / "data", cin7_url, **{"RATESVC_WRITEBACK_RETRY_S": "0.05",
            "RATESVC_CIN7_MIN_INTERVAL_S": "0.01", **extra},
        )  # fmt: skip
        client: TestClient = await aiohttp_client(create_app(load_settings(env)))
        return client

    return make


@pytest.fixture
async def invoicing(make_labelling: MakeService) -> TestClient:
    """The service with the shipping charge written to the sale's draft invoice."""
    return await make_labelling(RATESVC_INVOICE_SHIPPING="true")


# --- real backends (PostgreSQL, Redis): each test gets its own database / key prefix ---


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database's URL (dropped after the test); fails when unreachable."""
    async with fresh_database() as url:
        yield url


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[str, str]]:
    """``(redis_url, key_prefix)`` for this test alone (its keys deleted after the test)."""
    async with fresh_redis_prefix() as pair:
        yield pair


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger_env(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The ledger's engine, for tests that run on both: ``{}`` (SQLite in the data directory, the
    default) or ``RATESVC_DATABASE_URL`` naming a fresh PostgreSQL database (dropped afterwards)."""
    if request.param == "sqlite":
        yield {}
        return
    async with fresh_database() as url:
        yield {"RATESVC_DATABASE_URL": url}
