"""A start-up that fails partway releases what it had opened: no ledger connection (a thread that
would keep the process alive), no worker task, nothing left running."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import ratesvc
from ratesvc.app import create_app
from ratesvc.config import ConfigError, Settings, load_settings
from ratesvc.demo import start_site
from tests.conftest import AUTH, service_env
from tests.replicas.harness import CuttableProxy
from tests.test_cli import COMMAND
from tests.test_workers import clean_env

PACKAGE = Path(ratesvc.__file__).parent
BODY = {
    "carrier_code": "ups", "service_code": "ups_ground",
    "shipment": {"ship_to": {"postal_code": "10118", "country": "US", "state": "NY"},
                 "packages": [{"weight": {"value": 2, "unit": "lb"}, "box": "Box 1"}]},
}  # fmt: skip


def ledger_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


def ratesvc_tasks() -> list[asyncio.Task[Any]]:
    """Unfinished tasks running ratesvc's own code (the workers, the poller, purchases)."""
    tasks = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code and Path(code.co_filename).is_relative_to(PACKAGE):
            tasks.append(task)
    return tasks


async def assert_nothing_left_running() -> None:
    for _ in range(100):  # a closed connection's thread ends a moment after close() returns
        if not ledger_threads():
            break
        await asyncio.sleep(0.02)
    assert ledger_threads() == []
    assert ratesvc_tasks() == []


@pytest.fixture
def settings(sandbox_url: str, tmp_path: Path) -> Settings:
    return load_settings(service_env(sandbox_url, tmp_path / "data", RATESVC_LABEL_SETTLE_S="0"))


@pytest.fixture
def app(settings: Settings) -> web.Application:
    """The app that fails to start, alive for the whole test: what it opened must be closed, not
    left for the garbage collector to find."""
    return create_app(settings)


async def test_a_ledger_that_is_not_a_database_stops_start_up_and_leaves_no_thread(
    settings: Settings, app: web.Application
) -> None:
    settings.data_dir.mkdir()
    (settings.data_dir / "ledger.sqlite3").write_bytes(b"not a database " * 100)
    assert ledger_threads() == []

    with pytest.raises(ConfigError) as failed:
        await start_site(app, "127.0.0.1", 0)

    assert "cannot open the ledger" in failed.value.problems[0]
    assert "file is not a database" in failed.value.problems[0]
    await assert_nothing_left_running()


async def test_a_ledger_that_did_not_open_logs_no_leases_or_jobs_given_back(
    settings: Settings, app: web.Application, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing was claimed when the ledger did not open; giving leases back then only logged
    misleading warnings ("leases not given back (RuntimeError('the ledger is not open'))")
    under the one-line start-up error."""
    settings.data_dir.mkdir()
    (settings.data_dir / "ledger.sqlite3").write_bytes(b"not a database " * 100)

    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError):
        await start_site(app, "127.0.0.1", 0)

    assert [r.getMessage() for r in caplog.records if r.name.startswith("ratesvc")] == []
    await assert_nothing_left_running()


async def test_a_stop_signal_while_starting_stops_it_gracefully(
    sandbox_url: str, postgres_url: str, tmp_path: Path
) -> None:
    """SIGTERM before the event loop listened for it (the ledger still opening: PostgreSQL not
    answering, a migration waiting for another replica's) killed the process with no grace
    and, as a container's PID 1, was ignored until start-up ended. It is remembered; the
    start-up is cancelled, closing what it had opened, and the process exits 0."""
    proxy = CuttableProxy("127.0.0.1", 5432)
    await proxy.start()
    proxy.freeze()  # start-up waits for PostgreSQL (10 s to connect)
    env = clean_env(**service_env(sandbox_url, tmp_path / "data", RATESVC_PORT="0",
                                  RATESVC_DATABASE_URL=proxy.url_for(postgres_url)))  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "serve", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    try:
        for _ in range(300):
            if proxy._pipes:  # it is connecting to the ledger: starting
                break
            await asyncio.sleep(0.02)
        assert proxy._pipes, "serve never reached the ledger"
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await proxy.close()

    assert process.returncode == 0, err.decode()[-1500:]
    assert "stopped while starting" in err.decode()


async def test_a_failure_after_the_ledger_opened_stops_the_worker_and_closes_the_ledger(
    settings: Settings, app: web.Application
) -> None:
    runner, port = await start_site(create_app(settings), "127.0.0.1", 0)
    async with aiohttp.ClientSession() as session:
        bought = await session.post(f"http://127.0.0.1:{port}/v1/labels", json=BODY, headers=AUTH)
        assert (await bought.json())["status"] == "completed"
    await runner.cleanup()
    # A newer ratesvc (a column renamed) used this data directory and stopped mid-purchase;
    # this version, started on it again, cannot read the purchase it has to resume. (A column
    # a newer version merely added is read past: the ledger never selects *.)
    with sqlite3.connect(settings.data_dir / "ledger.sqlite3") as db:
        db.execute("UPDATE purchases SET status = 'purchasing'")
        db.execute("ALTER TABLE purchases ADD COLUMN added_by_a_newer_version TEXT")
        db.execute("ALTER TABLE purchases RENAME COLUMN plan TO plan_of_a_newer_version")
        db.execute("INSERT INTO schema_version SELECT MAX(version) + 1 FROM schema_version")
    db.close()
    await assert_nothing_left_running()

    with pytest.raises(sqlite3.OperationalError, match="no such column: plan"):
        await start_site(app, "127.0.0.1", 0)

    await assert_nothing_left_running()


async def test_a_port_in_use_after_every_context_started_leaves_nothing_running(
    app: web.Application,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(OSError, match="address already in use"):
            await start_site(app, "127.0.0.1", port)

    await assert_nothing_left_running()
