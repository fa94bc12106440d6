"""Each configured backend in ``/readyz`` and ``/v1/status``: the ledger and Redis, checked
within a bound, named when they fail, never with a password; Redis down is no reason not to
start (or to answer 500)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import ConfigError, Settings
from ratesvc.demo import start_site
from ratesvc.storage.ledger import Ledger
from ratesvc.storage.migrations import SCHEMA_VERSION
from ratesvc.storage.probes import ledger_state
from ratesvc.storage.redis_client import redacted
from tests.conftest import AUTH

MakeClient = Callable[..., Any]


RATE_BODY = {
    "carriers": ["ups"],
    "shipment": {
        "ship_to": {"postal_code": "10118", "country": "US", "state": "NY"},
        "packages": [{"weight": {"value": 2, "unit": "lb"}}],
    },
}


def closed_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts connections and never answers: a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
def client_with(aiohttp_client: Any, make_settings: Callable[..., Settings]) -> MakeClient:
    async def make(**extra: str) -> TestClient:
        client: TestClient = await aiohttp_client(create_app(make_settings(**extra)))
        return client

    return make


async def ready(client: TestClient) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    body: dict[str, Any] = await response.json()
    return response.status, body


async def test_readyz_checks_redis_when_it_is_configured(
    client_with: MakeClient, redis_prefix: tuple[str, str]
) -> None:
    url, prefix = redis_prefix
    client = await client_with(RATESVC_REDIS_URL=url, RATESVC_REDIS_PREFIX=prefix)

    status, body = await ready(client)

    assert status == 200, body
    assert body["failed"] == []
    assert body["checks"]["redis"].startswith("ok (PING ")
    assert body["checks"]["ledger"] == f"ok (schema {SCHEMA_VERSION})"


async def test_without_redis_readyz_does_not_mention_it(service: TestClient) -> None:
    status, body = await ready(service)

    assert status == 200
    assert set(body["checks"]) == {"config", "data_dir", "ledger"}


async def test_an_unreachable_redis_starts_the_service_says_so_and_readyz_names_it(
    client_with: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    caplog.set_level(logging.WARNING, logger="ratesvc")
    client = await client_with(RATESVC_REDIS_URL=f"redis://:s3cret-pw@127.0.0.1:{port}/0")

    status, body = await ready(client)
    carriers = await client.get("/v1/carriers", headers=AUTH)  # serving goes on regardless

    assert status == 503
    assert body["status"] == "not_ready"
    assert body["failed"] == ["redis"]
    assert body["checks"]["redis"].startswith(f"error: redis at redis://127.0.0.1:{port}/0: ")
    assert body["checks"]["ledger"].startswith("ok")
    assert carriers.status == 200
    (warning,) = [r.getMessage() for r in caplog.records if "starting anyway" in r.getMessage()]
    assert f"Redis at redis://127.0.0.1:{port}/0 is unreachable" in warning
    assert "s3cret-pw" not in caplog.text + str(body)


async def test_a_hung_redis_is_a_quick_503(client_with: MakeClient, silent_port: int) -> None:
    client = await client_with(RATESVC_REDIS_URL=f"redis://127.0.0.1:{silent_port}/0")

    started = time.perf_counter()
    status, body = await ready(client)
    elapsed = time.perf_counter() - started

    assert status == 503
    assert body["failed"] == ["redis"]
    assert "no answer to PING within 0.5 s" in body["checks"]["redis"]
    assert elapsed < 2.0


async def test_a_locked_ledger_is_a_quick_503_and_ready_again_once_released(
    service: TestClient, tmp_path: Any
) -> None:
    """SQLite waits up to 5 s for a lock; readyz does not: it answers from the probe in flight,
    which finishes (and rolls back) on its own instead of leaving a transaction open."""
    # the service's start-up writes (its first retention purge) are over: a transaction of
    # the service open now would wait for the loop this blocking BEGIN holds
    assert (await ready(service))[0] == 200
    other = sqlite3.connect(tmp_path / "data" / "ledger.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the ledger

    started = time.perf_counter()
    status, body = await ready(service)
    elapsed = time.perf_counter() - started
    other.execute("ROLLBACK")
    other.close()

    assert status == 503
    assert body["failed"] == ["ledger"]
    assert body["checks"]["ledger"] == (
        f"error: sqlite at {tmp_path / 'data' / 'ledger.sqlite3'}: no answer within 1 s"
    )
    assert elapsed < 2.0
    for _ in range(100):  # the probe in flight gets the lock now; the next readyz sees it
        status, body = await ready(service)
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert (status, body["failed"]) == (200, [])


async def test_a_probe_that_times_out_finishes_and_leaves_no_transaction_open(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """Cut off between BEGIN and ROLLBACK, a SQLite check would leave the one shared connection
    inside a transaction, and the next purchase's BEGIN would fail."""
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger.from_url(f"sqlite:///{path}")
    await ledger.open()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        first, second = await asyncio.gather(
            ledger_state(ledger, make_settings()), ledger_state(ledger, make_settings())
        )
        other.execute("ROLLBACK")
        for _ in range(100):  # the one probe in flight now gets the lock and rolls back
            await asyncio.sleep(0.02)
            if (await ledger_state(ledger, make_settings())).reachable:
                break

        assert (first.reachable, second.reachable) == (False, False)
        await ledger.writable()  # a transaction left open would make this BEGIN fail
    finally:
        other.close()
        await ledger.close()


async def test_status_shows_each_backend_and_the_process_that_answered(
    client_with: MakeClient, redis_prefix: tuple[str, str], tmp_path: Any
) -> None:
    url, prefix = redis_prefix
    password_url = url.replace("redis://", "redis://:s3cret-pw@", 1) + "?client_name=x"
    client = await client_with(RATESVC_REDIS_URL=password_url, RATESVC_REDIS_PREFIX=prefix)

    response = await client.get("/v1/status", headers=AUTH)
    text = await response.text()
    body = await response.json()

    assert response.status == 200
    ledger, redis = body["backends"]
    assert ledger == {
        "name": "ledger", "engine": "sqlite", "reachable": True,
        "location": str(tmp_path / "data" / "ledger.sqlite3"),
        "detail": f"ok (schema {SCHEMA_VERSION})",
    }  # fmt: skip
    assert (redis["name"], redis["engine"], redis["location"]) == ("redis", "redis", url)
    assert redis["reachable"] is True
    assert redis["detail"].startswith("ok (PING ")
    assert "s3cret-pw" not in text and "client_name" not in text
    assert body["instance"] == {"host": socket.gethostname(), "pid": os.getpid()}


async def test_status_shows_redis_unreachable_without_failing(client_with: MakeClient) -> None:
    port = closed_port()
    client = await client_with(RATESVC_REDIS_URL=f"redis://127.0.0.1:{port}/0")

    response = await client.get("/v1/status", headers=AUTH)
    body = await response.json()

    assert response.status == 200
    (redis,) = [b for b in body["backends"] if b["name"] == "redis"]
    assert redis["reachable"] is False
    assert redis["detail"].startswith("error: ")
    assert redis["location"] == f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@[::1]:6380/2", "redis://[::1]:6380/2"),
        ("rediss://user:pw@cache/0?ssl_cert_reqs=none", "rediss://cache/0"),
        ("unix://user@/run/redis.sock?db=0&password=pw", "unix:///run/redis.sock"),
        ("postgresql://u:pw@db:5432/ratesvc?sslpassword=pw", "postgresql://db:5432/ratesvc"),
        ("redis://cache:notaport/0", "redis://cache/0"),
    ],
)
def test_a_backend_is_shown_without_user_password_or_query(url: str, shown: str) -> None:
    assert redacted(url) == shown


async def test_a_redis_url_redis_py_cannot_read_is_one_line_that_never_shows_it(
    make_settings: Callable[..., Settings],
) -> None:
    """Behind the settings' own check (tests/test_config.py): redis-py's ValueError ("Port
    could not be cast to integer value as 'Xy7'": part of the password) was an unhandled
    traceback at start-up; it is a configuration error that does not repeat the URL (review
    round 4, ops finding 3)."""
    unread = msgspec.structs.replace(
        make_settings(), redis_url="redis://:Xy7/Qk9+Zz=@127.0.0.1:6379/0"
    )

    with pytest.raises(ConfigError) as failed:
        await start_site(create_app(unread), "127.0.0.1", 0)

    (problem,) = failed.value.problems
    assert problem.startswith("RATESVC_REDIS_URL: ")
    assert not [part for part in ("Xy7", "Qk9", "Zz") if part in problem], problem


async def test_with_redis_the_budgets_are_shared_and_without_it_local(
    client_with: MakeClient, redis_prefix: tuple[str, str]
) -> None:
    url, prefix = redis_prefix
    shared = await client_with(RATESVC_REDIS_URL=url, RATESVC_REDIS_PREFIX=prefix)
    assert (await shared.post("/v1/rates", json=RATE_BODY, headers=AUTH)).status == 200
    local = await client_with()

    shared_status = await (await shared.get("/v1/status", headers=AUTH)).json()
    local_status = await (await local.get("/v1/status", headers=AUTH)).json()

    assert [b["sharing"] for b in shared_status["shipstation"]] == ["shared"]
    assert [b["sharing"] for b in local_status["shipstation"]] == ["local"]
    assert shared_status["shipstation"][0]["remaining"] < shared_status["shipstation"][0]["limit"]


async def test_with_redis_unreachable_the_budgets_fall_back_to_a_local_share_and_say_so(
    client_with: MakeClient,
) -> None:
    client = await client_with(RATESVC_REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")

    rates = await client.post("/v1/rates", json=RATE_BODY, headers=AUTH)
    status = await (await client.get("/v1/status", headers=AUTH)).json()

    assert rates.status == 200
    (budget,) = status["shipstation"]
    assert budget["sharing"] == "degraded"
    assert budget["limit"] == 20  # 40 a window, 2 replicas assumed (RATESVC_REPLICAS)
