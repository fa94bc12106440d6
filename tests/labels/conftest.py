"""Fixtures of the label lifecycle tests: the service on a data directory and ledger that outlive
it — every test here runs on both ledger engines (SQLite, PostgreSQL), through ``ledger_env``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import load_settings
from tests.conftest import AUTH, MakeService, automation_env, service_env
from tests.ledger_sql import ledger_sql

SALE = {"sale_id": "sale-simple", "task_id": "task-sale-simple", "carrier_code": "ups",
        "service_code": "ups_ground"}  # fmt: skip
FAST = {"RATESVC_LABEL_SETTLE_S": "0", "RATESVC_WRITEBACK_RETRY_S": "0.05",
        "RATESVC_CIN7_MIN_INTERVAL_S": "0.01", "RATESVC_CIN7_THROTTLE_PAUSE_S": "0.1"}  # fmt: skip


class Service:
    """The service on a data directory and ledger that outlive it: ``restart`` is a new
    process's view."""

    def __init__(
        self,
        aiohttp_client: Any,
        sandbox_url: str,
        cin7_url: str,
        data: Path,
        ledger_env: dict[str, str],
    ) -> None:
        self._make = aiohttp_client
        self._env = service_env(sandbox_url, data, cin7_url, **FAST, **ledger_env)
        self.data = data
        self.client: TestClient | None = None

    @property
    def ledger_url(self) -> str:
        return load_settings(self._env).ledger_url

    async def sql(self, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement on the ledger (``?`` placeholders), as another process would run it."""
        return await ledger_sql(self.ledger_url, statement, args)

    async def outbox(self, label_id: str) -> list[tuple[str, str]]:
        """(kind, state) of the label's outbox jobs, read from the ledger."""
        rows = await self.sql("SELECT kind, state FROM outbox WHERE label_id = ? ORDER BY id",
                              (label_id,))  # fmt: skip
        return [(str(kind), str(state)) for kind, state in rows]

    async def drained(self, label_id: str) -> bool:
        """Every outbox job of the label is done or cancelled."""
        return all(state in ("done", "cancelled") for _, state in await self.outbox(label_id))

    async def start(self, **extra: str) -> TestClient:
        self.client = await self._make(create_app(load_settings({**self._env, **extra})))
        return self.client

    async def restart(self, **extra: str) -> TestClient:
        assert self.client is not None
        await self.client.close()
        return await self.start(**extra)


@pytest.fixture
async def restartable(
    aiohttp_client: Any,
    sandbox_url: str,
    cin7_url: str,
    tmp_path: Path,
    ledger_env: dict[str, str],
) -> Service:
    running = Service(aiohttp_client, sandbox_url, cin7_url, tmp_path / "data", ledger_env)
    await running.start()
    return running


@pytest.fixture
def make_automated(
    aiohttp_client: Any,
    sandbox_url: str,
    cin7_url: str,
    tmp_path: Path,
    ledger_env: dict[str, str],
) -> MakeService:
    """``tests/conftest.py``'s, on the ledger engine of ``ledger_env``."""

    async def make(**extra: str) -> TestClient:
        env = automation_env(sandbox_url, cin7_url, tmp_path / "data", **ledger_env, **extra)
        client: TestClient = await aiohttp_client(create_app(load_settings(env)))
        return client

    return make


@pytest.fixture
def make_labelling(
    aiohttp_client: Any,
    sandbox_url: str,
    cin7_url: str,
    tmp_path: Path,
    ledger_env: dict[str, str],
) -> MakeService:
    """``tests/conftest.py``'s, on the ledger engine of ``ledger_env``."""

    async def make(**extra: str) -> TestClient:
        env = service_env(
            sandbox_url, tmp_path / "data", cin7_url, **{"RATESVC_WRITEBACK_RETRY_S": "0.05",
            "RATESVC_CIN7_MIN_INTERVAL_S": "0.01", **ledger_env, **extra},
        )  # fmt: skip
        client: TestClient = await aiohttp_client(create_app(load_settings(env)))
        return client

    return make


async def status_is(client: TestClient, label_id: str, status: str) -> bool:
    answer = await client.get(f"/v1/labels/{label_id}", headers=AUTH)
    return bool((await answer.json())["status"] == status)
