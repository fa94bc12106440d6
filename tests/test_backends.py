"""The test backends: each test's PostgreSQL database and Redis prefix are its own."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from tests.backends import fresh_database, fresh_redis_prefix


async def test_each_test_gets_an_empty_database_that_is_dropped_afterwards(
    postgres_url: str,
) -> None:
    async with fresh_database() as other:
        assert other != postgres_url
        connection = await asyncpg.connect(other)
        await connection.execute("CREATE TABLE t (x int)")
        await connection.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        tables = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        gone = await connection.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", other.rpartition("/")[2]
        )
    finally:
        await connection.close()
    assert tables == []
    assert gone == 0


async def test_a_redis_prefix_is_emptied_afterwards(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix
    client = aioredis.Redis.from_url(url)
    try:
        async with fresh_redis_prefix() as (_, other):
            assert other != prefix
            await client.set(f"{other}k", b"v")
        assert await client.exists(f"{other}k") == 0
    finally:
        await client.aclose()
