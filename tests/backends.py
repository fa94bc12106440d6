"""Real PostgreSQL and Redis for the tests that need them, each test with its own data.

The development and CI machines run PostgreSQL (127.0.0.1:5432, trust auth) and Redis
(127.0.0.1:6379); ``.ci/run`` starts them when they are down. A test that needs one and cannot
reach it *fails* with the address it tried: a skipped backend test would let a broken engine pass.

* :func:`fresh_database` creates a database with a random name and drops it afterwards.
* :func:`fresh_redis_prefix` hands out a random key prefix and deletes its keys afterwards.

``RATESVC_TEST_POSTGRES`` (a server URL, any database) and ``RATESVC_TEST_REDIS`` override the
addresses.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import redis.asyncio as aioredis

POSTGRES_SERVER = os.environ.get(
    "RATESVC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_SERVER = os.environ.get("RATESVC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped (connections and all) afterwards."""
    name = f"ratesvc_test_{secrets.token_hex(6)}"
    try:
        admin = await asyncpg.connect(POSTGRES_SERVER, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(f"PostgreSQL is not reachable at {POSTGRES_SERVER}: {exc}") from exc
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(POSTGRES_SERVER, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def fresh_redis_prefix() -> AsyncIterator[tuple[str, str]]:
    """``(redis_url, key_prefix)``: a prefix no other test uses; its keys deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_SERVER)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        await client.aclose()
        raise RuntimeError(f"Redis is not reachable at {REDIS_SERVER}: {exc}") from exc
    prefix = f"ratesvc-test-{secrets.token_hex(6)}:"
    try:
        yield REDIS_SERVER, prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
