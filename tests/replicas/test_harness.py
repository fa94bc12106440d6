"""The multi-replica harness itself: real processes, and a backend that can be taken away."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.conftest import AUTH, service_env
from tests.replicas.harness import CuttableProxy, running


async def test_a_cut_proxy_refuses_and_drops_connections_until_restored(postgres_url: str) -> None:
    proxy = CuttableProxy("127.0.0.1", 5432)
    await proxy.start()
    try:
        through = proxy.url_for(postgres_url)
        connection = await asyncpg.connect(through)
        assert await connection.fetchval("SELECT 1") == 1

        await proxy.cut()
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await connection.fetchval("SELECT 1")
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(through, timeout=2)

        await proxy.restore()
        again = await asyncpg.connect(through)
        assert await again.fetchval("SELECT 2") == 2
        await again.close()
    finally:
        await proxy.close()


async def test_a_replica_is_a_real_serve_process_in_front_of_the_sandboxes(
    sandbox_url: str, cin7_url: str, tmp_path: Path
) -> None:
    env = service_env(sandbox_url, tmp_path / "unused", cin7_url)
    async with running(tmp_path, env, 1) as (replicas, session):
        (replica,) = replicas.members
        async with session.post(
            f"{replica.url}/v1/rates", json={"sale_id": "sale-simple"}, headers=AUTH
        ) as response:
            body = await response.json()
        assert response.status == 200, body
        assert body["quotes"]
