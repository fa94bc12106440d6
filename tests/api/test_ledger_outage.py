"""The ledger out of reach (PostgreSQL cut or hung, a SQLite file that cannot be written): what
needs the ledger answers 503 ``storage_unavailable`` with Retry-After at once (never a 500, never
a hang), and works again when it is back. One process here; ``tests/replicas/test_replicas.py``
does it with three and a purchase under way."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from ratesvc import keys
from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.storage import postgres_engine
from ratesvc.storage.outage import RETRY_AFTER_S, ledger_outage
from ratesvc.storage.sql import Connection, LedgerUnavailable
from ratesvc.storage.sqlite_engine import SQLiteEngine
from tests.api.test_labels import EXPLICIT
from tests.conftest import AUTH, service_env
from tests.replicas.harness import CuttableProxy, free_port


@pytest.fixture
async def through_proxy(
    aiohttp_client: Any, sandbox_url: str, postgres_url: str, tmp_path: Path
) -> Any:
    proxy = CuttableProxy("127.0.0.1", 5432)
    await proxy.start()
    env = service_env(sandbox_url, tmp_path / "data",
                      RATESVC_DATABASE_URL=proxy.url_for(postgres_url))  # fmt: skip
    client: TestClient = await aiohttp_client(create_app(load_settings(env)))
    yield client, proxy
    await proxy.close()


async def test_a_cut_ledger_answers_503_with_retry_after_and_recovers(through_proxy: Any) -> None:
    client, proxy = through_proxy
    bought = await client.post(
        "/v1/labels", json=EXPLICIT, headers={**AUTH, "Idempotency-Key": "a"}
    )
    assert bought.status == 201, await bought.text()
    label_id = (await bought.json())["label_id"]

    await proxy.cut()
    started = time.perf_counter()
    for method, path, body in (
        ("POST", "/v1/labels", EXPLICIT),
        ("GET", "/v1/labels", None),
        ("GET", f"/v1/labels/{label_id}", None),
        ("GET", f"/v1/labels/{label_id}/packages/1/label.pdf", None),
        ("GET", "/v1/status", None),
    ):
        response = await client.request(
            method, path, json=body, headers={**AUTH, "Idempotency-Key": "b"}
        )
        problem = await response.json(content_type=None)
        assert response.status == 503, (path, problem)
        assert response.content_type == "application/problem+json"
        assert problem["code"] == "storage_unavailable"
        assert problem["retry_after_s"] == RETRY_AFTER_S
        assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
        assert "127.0.0.1" not in problem["detail"]  # the cause is logged, not shown
    assert time.perf_counter() - started < 3
    ready = await client.get("/readyz")
    assert (ready.status, (await ready.json())["failed"]) == (503, ["ledger"])
    rated = await client.post("/v1/rates", json={"shipment": EXPLICIT["shipment"]}, headers=AUTH)
    assert rated.status == 200  # quoting needs no ledger

    await proxy.restore()
    retried = await client.post(
        "/v1/labels", json=EXPLICIT, headers={**AUTH, "Idempotency-Key": "b"}
    )
    assert retried.status == 201, await retried.text()
    again = await client.get(f"/v1/labels/{label_id}", headers=AUTH)
    assert again.status == 200


@pytest.fixture
def quick_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_engine, "COMMAND_TIMEOUT_S", 1.0)
    monkeypatch.setattr(postgres_engine, "ACQUIRE_TIMEOUT_S", 1.0)


@pytest.mark.usefixtures("quick_timeouts")
async def test_a_hung_ledger_answers_503_within_one_statement_timeout_not_two(
    through_proxy: Any,
) -> None:
    """PostgreSQL that hangs rather than refuses (every byte held): each statement and each wait
    for a connection is bounded (10 s each in production; 1 s here), then 503 — within one
    COMMAND_TIMEOUT_S, as the README promises (10 s), not two. A connection whose statement was
    abandoned must not be given back to the pool as it is: asyncpg's release first waits,
    shielded, up to the acquire timeout, for the server to acknowledge the cancellation a hung
    server never sends, and every request after a failover took 20 s (review round 4, ops
    finding 5)."""
    client, proxy = through_proxy
    bought = await client.post(
        "/v1/labels", json=EXPLICIT, headers={**AUTH, "Idempotency-Key": "a"}
    )
    label_id = (await bought.json())["label_id"]

    proxy.freeze()
    for path in (f"/v1/labels/{label_id}", "/v1/labels"):
        started = time.perf_counter()
        response = await client.get(path, headers=AUTH)
        problem = await response.json(content_type=None)
        assert (response.status, problem["code"]) == (503, "storage_unavailable"), problem
        elapsed = time.perf_counter() - started
        assert elapsed < postgres_engine.COMMAND_TIMEOUT_S + 0.5, f"503 after {elapsed:.1f} s"
    refused = await client.post(
        "/v1/labels", json=EXPLICIT, headers={**AUTH, "Idempotency-Key": "b"}
    )
    assert refused.status == 503

    await proxy.restore()
    retried = await client.post(
        "/v1/labels", json=EXPLICIT, headers={**AUTH, "Idempotency-Key": "b"}
    )
    assert retried.status == 201, await retried.text()


async def test_a_full_sqlite_ledger_answers_503_storage_unavailable_not_500(
    service: TestClient,
) -> None:
    """The label PDFs live in the ledger file, so a data volume fills. A full disk makes SQLite
    raise ``database or disk is full`` (a second process on the file: ``database is locked``);
    only asyncpg's errors and OSError counted as an outage, so every write answered a bare 500
    instead of 503 ``storage_unavailable`` with Retry-After, and the engine's own ROLLBACK
    raised "cannot rollback - no transaction is active" over it (review round 4, ops finding 2).
    """
    db = service.app[keys.LEDGER].engine.db
    await db.execute("CREATE TABLE filler (x BLOB)")
    async with db.execute("PRAGMA page_count") as cursor:
        row = await cursor.fetchone()
        assert row is not None
    await db.execute(f"PRAGMA max_page_count = {row[0] + 2}")
    with contextlib.suppress(sqlite3.OperationalError):  # the disk is full now
        for _ in range(10_000):
            await db.execute("INSERT INTO filler VALUES (zeroblob(512))")

    for n in range(60):  # the tables' own pages have room for a few labels; then a new page
        response = await service.post(
            "/v1/labels", json=EXPLICIT, headers={**AUTH, "Idempotency-Key": f"full-{n}"}
        )
        problem = await response.json(content_type=None)
        if response.status != 201:
            break
    assert response.status != 201, "the ledger never filled up"

    assert (response.status, problem.get("code")) == (503, "storage_unavailable"), problem
    assert response.headers["Retry-After"] == str(RETRY_AFTER_S)


async def test_only_sqlites_errors_that_say_it_cannot_write_now_are_an_outage(
    tmp_path: Path,
) -> None:
    engine = SQLiteEngine(tmp_path / "ledger.sqlite3")
    await engine.open()
    try:
        await engine.execute("CREATE TABLE filler (x BLOB)")
        (pages,) = (await engine.fetch("PRAGMA page_count"))[0]
        await engine.execute(f"PRAGMA max_page_count = {pages + 1}")

        async def fill(tx: Connection) -> None:
            for _ in range(100):
                await tx.execute("INSERT INTO filler VALUES (zeroblob(4096))")

        with pytest.raises(sqlite3.OperationalError) as full:
            await engine.run(fill)
        with pytest.raises(sqlite3.OperationalError) as wrong:
            await engine.fetch("SELEC 1")
    finally:
        await engine.close()

    assert full.value.sqlite_errorname == "SQLITE_FULL"
    assert ledger_outage(full.value) is not None
    assert ledger_outage(wrong.value) is None  # a statement that is wrong is a bug: a 500
    assert ledger_outage(full.value.with_traceback(None)) is None  # raised elsewhere: a bug


async def test_only_the_ledgers_connection_errors_are_an_outage() -> None:
    with pytest.raises(ConnectionRefusedError) as refused:  # inside asyncpg: the ledger's
        await asyncpg.connect(f"postgresql://127.0.0.1:{free_port()}/x", timeout=2)
    assert ledger_outage(refused.value) is not None
    for outage in (
        LedgerUnavailable("cannot reach PostgreSQL at 127.0.0.1:5432/x"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.ReadOnlySQLTransactionError("read-only transaction"),
    ):
        error = ledger_outage(outage)
        assert error is not None and (error.status, error.code) == (503, "storage_unavailable")
    with pytest.raises(ConnectionResetError) as elsewhere:  # from anywhere else: a bug, a 500
        raise ConnectionResetError("peer reset")
    assert ledger_outage(elsewhere.value) is None
    assert ledger_outage(ValueError("no")) is None
    assert ledger_outage(asyncpg.UniqueViolationError("duplicate key")) is None
