"""Fixtures of the label lifecycle tests: the service on a data directory that outlives it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import load_settings
from tests.conftest import service_env

SALE = {"sale_id": "sale-simple", "task_id": "task-sale-simple", "carrier_code": "ups",
        "service_code": "ups_ground"}  # fmt: skip
FAST = {"RATESVC_LABEL_SETTLE_S": "0", "RATESVC_WRITEBACK_RETRY_S": "0.05",
        "RATESVC_CIN7_MIN_INTERVAL_S": "0.01", "RATESVC_CIN7_THROTTLE_PAUSE_S": "0.1"}  # fmt: skip


class Service:
    """The restartable on a data directory that outlives it: ``restart`` is a new process's view."""

    def __init__(self, aiohttp_client: Any, sandbox_url: str, cin7_url: str, data: Path) -> None:
        self._make = aiohttp_client
        self._env = service_env(sandbox_url, data, cin7_url, **FAST)
        self.client: TestClient | None = None

    async def start(self, **extra: str) -> TestClient:
        self.client = await self._make(create_app(load_settings({**self._env, **extra})))
        return self.client

    async def restart(self, **extra: str) -> TestClient:
        assert self.client is not None
        await self.client.close()
        return await self.start(**extra)


@pytest.fixture
async def restartable(
    aiohttp_client: Any, sandbox_url: str, cin7_url: str, tmp_path: Path
) -> Service:
    running = Service(aiohttp_client, sandbox_url, cin7_url, tmp_path / "data")
    await running.start()
    return running
