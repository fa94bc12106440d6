"""The two ledger engines as one: the same schema; on PostgreSQL, several replicas writing one
ledger at the same moment get what SQLite's single writer gave one process — one purchase per
key and fulfilment, one winner per state change, migrations run once; the service on PostgreSQL
end to end; and a database that cannot be reached is a clear start-up error."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ratesvc.app import create_app
from ratesvc.config import ConfigError, load_settings
from ratesvc.demo import start_site
from ratesvc.storage.ledger import (
    SCHEMA_VERSION,
    IdempotencyConflict,
    IllegalTransition,
    Ledger,
    PurchaseRow,
)
from ratesvc.storage.migrations import SQLITE_MIGRATIONS, postgresql_migrations
from ratesvc.storage.sql import Connection, LedgerUnavailable, numbered
from ratesvc.storage.sqlite_engine import SQLiteEngine
from tests.api.test_labels import EXPLICIT, buy
from tests.conftest import AUTH, service_env
from tests.ledger_sql import ledger_sql
from tests.test_ledger import purchase

ROUNDS = 8  # races run this many times: each round is a fresh chance to interleave


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Ledger, Ledger]]:
    """Two ledgers on one PostgreSQL database, each with its own pool: two replicas."""
    first, second = Ledger.from_url(postgres_url), Ledger.from_url(postgres_url)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


async def outcomes(*calls: Awaitable[Any]) -> list[Any]:
    """Every call's result or exception, the calls run together."""
    return await asyncio.gather(*calls, return_exceptions=True)


# --- one schema --------------------------------------------------------------------------------


async def sqlite_schema(path: Path) -> dict[str, set[str]]:
    ledger = Ledger.from_url(f"sqlite:///{path}")
    await ledger.open()
    await ledger.close()
    url = f"sqlite:///{path}"
    tables = await ledger_sql(url, "SELECT name FROM sqlite_master WHERE type = 'table' "
                                   "AND name NOT LIKE 'sqlite_%'")  # fmt: skip
    schema = {}
    for (table,) in tables:
        columns = await ledger_sql(url, f"SELECT name FROM pragma_table_info('{table}')")
        schema[str(table)] = {str(name) for (name,) in columns}
    indexes = await ledger_sql(url, "SELECT name FROM sqlite_master WHERE type = 'index' "
                                    "AND name NOT LIKE 'sqlite_%'")  # fmt: skip
    schema["(indexes)"] = {str(name) for (name,) in indexes}
    return schema


async def postgresql_schema(url: str) -> dict[str, set[str]]:
    ledger = Ledger.from_url(url)
    await ledger.open()
    await ledger.close()
    rows = await ledger_sql(url, "SELECT table_name, column_name FROM information_schema.columns "
                                 "WHERE table_schema = 'public'")  # fmt: skip
    schema: dict[str, set[str]] = {}
    for table, column in rows:
        schema.setdefault(str(table), set()).add(str(column))
    indexes = await ledger_sql(url, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
    schema["(indexes)"] = {str(name) for (name,) in indexes}
    return schema


async def test_both_engines_end_at_the_same_version_with_the_same_schema(
    tmp_path: Path, postgres_url: str
) -> None:
    """Same tables, same columns, every SQLite index on PostgreSQL too. PostgreSQL's only extra
    column is ``rowid`` where the ledger orders by insertion (SQLite's is implicit in every
    table); its extra indexes are the ones its primary keys and unique columns make."""
    sqlite = await sqlite_schema(tmp_path / "ledger.sqlite3")
    postgresql = await postgresql_schema(postgres_url)
    sqlite_indexes, postgresql_indexes = sqlite.pop("(indexes)"), postgresql.pop("(indexes)")

    assert len(SQLITE_MIGRATIONS) == len(postgresql_migrations()) == SCHEMA_VERSION
    assert set(sqlite) == set(postgresql)
    for table, columns in sqlite.items():
        extra = {"rowid"} if table in ("purchases", "events") else set()
        assert postgresql[table] == columns | extra, table
    assert sqlite_indexes <= postgresql_indexes
    assert all(name.endswith(("_pkey", "_key")) for name in postgresql_indexes - sqlite_indexes), (
        postgresql_indexes - sqlite_indexes
    )


async def test_migrations_started_by_three_replicas_at_once_run_once(postgres_url: str) -> None:
    ledgers = [Ledger.from_url(postgres_url) for _ in range(3)]

    opened = await outcomes(*(ledger.open() for ledger in ledgers))

    versions = await ledger_sql(postgres_url, "SELECT version FROM schema_version ORDER BY 1")
    for ledger in ledgers:
        await ledger.close()
    assert opened == [None, None, None]
    assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))


async def test_casefold_in_postgresql_is_pythons_for_every_character(postgres_url: str) -> None:
    """``lower()`` is not case folding (and folds ASCII only in the ``C`` locale): the function
    migration 5 creates folds every character as ``str.casefold`` does."""
    ledger = Ledger.from_url(postgres_url)
    await ledger.open()
    await ledger.close()
    text = "".join(chr(c) for c in range(1, 0x1FFFF) if not 0xD800 <= c <= 0xDFFF)

    ((folded,),) = await ledger_sql(postgres_url, "SELECT casefold(?)", (text,))

    assert folded == text.casefold()


# --- replicas racing -------------------------------------------------------------------------


async def test_two_replicas_racing_one_key_record_one_purchase(
    replicas: tuple[Ledger, Ledger],
) -> None:
    """Both replicas read "no purchase holds this key" before either commits: the unique index
    makes the second wait, and it answers with the first's purchase, as SQLite would."""
    for round_ in range(ROUNDS):
        attempts = [
            ledger.create_purchase(purchase(f"lb_{round_}_{i}", key=f"k{round_}"),
                                   [(1, None, f"lb_{round_}_{i}:1")])
            for i, ledger in enumerate(replicas * 3)
        ]  # fmt: skip

        results = await outcomes(*attempts)

        recorded = [r for r in results if r is None]
        refused = [r for r in results if isinstance(r, IdempotencyConflict)]
        assert len(recorded) == 1 and len(refused) == 5, results
        winner = await replicas[0].purchase_by_key("acme", f"k{round_}")
        assert winner is not None
        assert {r.existing.label_id for r in refused} == {winner.label_id}


async def test_two_replicas_racing_one_fulfilment_record_one_purchase(
    replicas: tuple[Ledger, Ledger],
) -> None:
    for round_ in range(ROUNDS):
        fulfilment = f"sale:s{round_}:t"
        attempts = [
            ledger.create_purchase(
                dataclasses.replace(purchase(f"lb_{round_}_{i}", key=f"k{round_}_{i}"),
                                    fulfilment_key=fulfilment),
                [(1, None, f"lb_{round_}_{i}:1")],
            )
            for i, ledger in enumerate(replicas * 3)
        ]  # fmt: skip

        results = await outcomes(*attempts)

        assert sum(r is None for r in results) == 1, results
        assert all(r is None or (isinstance(r, IdempotencyConflict) and not r.by_key)
                   for r in results), results  # fmt: skip


async def test_two_replicas_moving_one_label_on_one_of_them_wins(
    replicas: tuple[Ledger, Ledger],
) -> None:
    """The status is checked and changed under a row lock: of two replicas finishing the same
    purchase (each queuing its write-back), one does and the other is refused — one job."""
    for round_ in range(ROUNDS):
        label_id = f"lb_{round_}"
        await replicas[0].create_purchase(
            purchase(label_id, key=None), [(1, None, f"{label_id}:1")]
        )

        results = await outcomes(*(
            ledger.transition(label_id, "purchased", {"purchasing"}, enqueue="write_back")
            for ledger in replicas
        ))  # fmt: skip

        assert sum(isinstance(r, PurchaseRow) for r in results) == 1, results
        assert sum(isinstance(r, IllegalTransition) for r in results) == 1, results
        assert len(await replicas[0].jobs(label_id)) == 1


async def test_two_replicas_buying_one_package_call_shipstation_once(
    replicas: tuple[Ledger, Ledger],
) -> None:
    """``pending`` → ``unknown`` is written before ``createlabel`` is called: only one replica's
    write succeeds, so only one calls."""
    for round_ in range(ROUNDS):
        label_id = f"lb_{round_}"
        await replicas[0].create_purchase(
            purchase(label_id, key=None), [(1, None, f"{label_id}:1")]
        )

        results = await outcomes(*(
            ledger.move_package(label_id, 1, "unknown", {"pending"}, attempts=1)
            for ledger in replicas
        ))  # fmt: skip

        assert sum(isinstance(r, IllegalTransition) for r in results) == 1, results


async def test_two_replicas_claiming_write_backs_take_each_job_once(
    replicas: tuple[Ledger, Ledger],
) -> None:
    """A job is marked ``running`` only if it is still ``pending``: both replicas may find the
    same due jobs, each job is claimed by one of them."""
    for round_ in range(ROUNDS):
        for i in range(4):
            label_id = f"lb_{round_}_{i}"
            await replicas[0].create_purchase(
                purchase(label_id, key=None), [(1, None, f"{label_id}:1")]
            )
            await replicas[0].transition(
                label_id, "purchased", {"purchasing"}, enqueue="write_back"
            )

        claims = await asyncio.gather(*(ledger.claim_jobs() for ledger in replicas * 2))

        claimed = [job.id for jobs in claims for job in jobs]
        assert len(claimed) == len(set(claimed)) == 4, claims


async def test_a_void_racing_a_claim_on_another_replica_never_loses_the_correction(
    replicas: tuple[Ledger, Ledger],
) -> None:
    """The write-back is either cancelled before it was claimed (nothing to correct) or claimed
    before the void read it (running: its correction is queued) — never claimed *and* left
    uncorrected."""
    voider, worker = replicas
    for round_ in range(ROUNDS):
        label_id = f"lb_{round_}"
        await voider.create_purchase(purchase(label_id, key=None), [(1, None, f"{label_id}:1")])
        await voider.transition(label_id, "purchased", {"purchasing"}, enqueue="write_back")

        (_, corrected), claimed = await asyncio.gather(
            voider.void(label_id, {"purchased"}), worker.claim_jobs()
        )

        kinds = [(job.kind, job.state) for job in await voider.jobs(label_id)]
        if any(job.label_id == label_id for job in claimed):
            assert corrected and kinds == [("write_back", "running"),
                                           ("void_correction", "pending")], kinds  # fmt: skip
        else:
            assert not corrected and kinds == [("write_back", "cancelled")], kinds


# --- the service on PostgreSQL ---------------------------------------------------------------

MakeReplica = Callable[[str], Awaitable[TestClient]]


@pytest.fixture
def make_replica(
    aiohttp_client: Any, sandbox_url: str, tmp_path: Path, postgres_url: str
) -> MakeReplica:
    """A replica of the service (its own data directory) on the shared PostgreSQL ledger."""

    async def make(name: str) -> TestClient:
        env = service_env(sandbox_url, tmp_path / name, RATESVC_DATABASE_URL=postgres_url,
                          RATESVC_LABEL_SETTLE_S="0")  # fmt: skip
        client: TestClient = await aiohttp_client(create_app(load_settings(env)))
        return client

    return make


async def test_a_label_bought_on_one_replica_is_served_and_replayed_by_another(
    make_replica: MakeReplica, tmp_path: Path, postgres_url: str
) -> None:
    first = await make_replica("a")
    label = await buy(first, EXPLICIT, key="order-1")
    pdf_url = label["packages"][0]["label_url"]
    served_here = await first.get(pdf_url, headers=AUTH)
    second = await make_replica("b")  # another machine: another data directory

    served_there = await second.get(pdf_url, headers=AUTH)
    replayed = await second.post("/v1/labels", json=EXPLICIT,
                                 headers={**AUTH, "Idempotency-Key": "order-1"})  # fmt: skip
    ready = await second.get("/readyz")

    assert label["status"] == "completed"
    assert served_here.status == served_there.status == 200
    content = await served_there.read()
    assert content.startswith(b"%PDF") and content == await served_here.read()
    assert replayed.status == 200 and (await replayed.json())["label_id"] == label["label_id"]
    assert (await ready.json())["checks"]["ledger"] == f"ok (schema {SCHEMA_VERSION})"
    assert await asyncio.to_thread(lambda: list(tmp_path.rglob("*.pdf"))) == []  # no files
    rows = await ledger_sql(postgres_url, "SELECT kind, length(content) FROM documents")
    assert rows == [("label", len(content))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_postgresql_that_cannot_be_reached_stops_start_up_naming_it_not_its_password(
    sandbox_url: str, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://ratesvc:s3cret-pw@127.0.0.1:{port}/ledger"
    settings = load_settings(service_env(sandbox_url, tmp_path, RATESVC_DATABASE_URL=url))

    with pytest.raises(ConfigError) as failed:
        await start_site(create_app(settings), "127.0.0.1", 0)

    (problem,) = failed.value.problems
    assert problem.startswith(f"RATESVC_DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:{port}")
    assert "s3cret-pw" not in problem and "ratesvc:" not in problem


async def test_a_missing_database_is_named_too(sandbox_url: str, tmp_path: Path) -> None:
    url = "postgresql://postgres:pw-never-shown@127.0.0.1:5432/ratesvc_no_such_database"
    settings = load_settings(service_env(sandbox_url, tmp_path, RATESVC_DATABASE_URL=url))

    with pytest.raises(ConfigError) as failed:
        await start_site(create_app(settings), "127.0.0.1", 0)

    (problem,) = failed.value.problems
    assert "127.0.0.1:5432/ratesvc_no_such_database" in problem
    assert "does not exist" in problem and "pw-never-shown" not in problem


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:Xy7/Qk9+Zz=@127.0.0.1:5432/postgres",
        "postgresql://postgres:Xy7Qk9Zz@[::1/postgres",
    ],
)
async def test_a_postgresql_url_asyncpg_cannot_read_is_a_ledger_error_that_never_shows_it(
    url: str,
) -> None:
    """Behind the settings' own check (tests/test_config.py), the engine never fails in its
    constructor ("Invalid IPv6 URL" raised from create_app's context) nor repeats what asyncpg
    could not read ("invalid literal for int() with base 10: 'Xy7'": part of the password)
    (review round 4, ops finding 3)."""
    ledger = Ledger.from_url(url)

    with pytest.raises(LedgerUnavailable) as failed:
        await ledger.open()

    assert not [part for part in ("Xy7", "Qk9", "Zz") if part in str(failed.value)], failed.value


# --- SQLite: one shared connection that must never be left inside a transaction ----------------


async def _one(tx: Connection) -> Any:
    return await tx.fetchone("SELECT 1")


@pytest.mark.parametrize("turns", [0, 1, 2])
async def test_a_sqlite_transaction_cancelled_as_it_begins_leaves_the_ledger_usable(
    tmp_path: Path, turns: int
) -> None:
    """aiosqlite runs a statement sent to its thread even when the task awaiting it is cancelled
    meanwhile. A ``BEGIN IMMEDIATE`` awaited outside the block that rolls back left the one
    shared connection inside a transaction, holding the file's write lock, when a cancellation
    landed on it (leases.Claims cancelling a job whose claim ran out, shutdown, a timeout around
    a ledger call): every later transaction failed with "cannot start a transaction within a
    transaction" — each purchase, write-back and webhook a 500 until the process restarted
    (review round 4, ops finding 1). Wherever in its first turns the cancellation lands, the
    connection is free for the next transaction."""
    engine = SQLiteEngine(tmp_path / "ledger.sqlite3")
    await engine.open()
    try:
        task = asyncio.create_task(engine.run(_one))
        for _ in range(turns + 1):
            await asyncio.sleep(0)  # it holds the lock and awaits BEGIN (or later statements)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        assert tuple(await asyncio.wait_for(engine.run(_one), 5)) == (1,)
        assert not engine.db.in_transaction
    finally:
        await engine.close()


async def test_a_sqlite_transaction_sqlite_rolled_back_itself_raises_its_own_error(
    tmp_path: Path,
) -> None:
    """SQLite ends some failed transactions itself (a full disk, an I/O error): the engine's own
    ROLLBACK then raised "cannot rollback - no transaction is active" over the real error, which
    the HTTP edge could not recognise as an outage (review round 4, ops finding 2)."""
    engine = SQLiteEngine(tmp_path / "ledger.sqlite3")
    await engine.open()
    try:

        async def ended_by_sqlite(tx: Connection) -> None:
            await tx.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL
            raise sqlite3.OperationalError("database or disk is full")

        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            await engine.run(ended_by_sqlite)
        assert tuple(await engine.run(_one)) == (1,)
        await engine.writable()
    finally:
        await engine.close()


def test_placeholders_are_numbered_outside_quotes_only() -> None:
    sql = "SELECT ? FROM t WHERE a = '?' AND b LIKE ? ESCAPE '\\' AND \"c?\" = ?"

    assert (
        numbered(sql) == "SELECT $1 FROM t WHERE a = '?' AND b LIKE $2 ESCAPE '\\' AND \"c?\" = $3"
    )
