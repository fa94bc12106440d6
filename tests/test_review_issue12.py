"""What the hostile review of the first part of issue 12 found (request ids, the pool's file
descriptors) and what it checked and held up (auth, shutdown on uvloop), kept as
specifications."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from benchmarks.common import shipment
from ratesvc.api import middlewares
from ratesvc.config import ConfigError, load_settings
from tests.conftest import AUTH, service_env

COMMAND = [sys.executable, "-m", "ratesvc"]


# --- request ids -------------------------------------------------------------------------------


def _ids_in_a_forked_child(conn: Any) -> None:
    # middlewares was imported by the parent before the fork (like gunicorn --preload)
    conn.send([middlewares._generated_id() for _ in range(3)])
    conn.close()


def test_generated_request_ids_differ_between_workers_forked_after_import() -> None:
    """The prefix is drawn once at import time, so every worker forked after ``ratesvc`` was
    imported (a pre-forking server such as gunicorn --preload with aiohttp's worker, a
    multiprocessing pool, a future ``--workers N`` that forks) shares prefix *and* counter: the
    same request id is handed out by every worker. The old ``os.urandom(16)`` per request was
    fork-safe. This emulates exactly what the edge computes."""
    ctx = multiprocessing.get_context("fork")
    ids = []
    for _ in range(2):
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_ids_in_a_forked_child, args=(child,))
        process.start()
        ids.append(parent.recv())
        process.join()

    assert not set(ids[0]) & set(ids[1]), f"both workers handed out {ids[0]}"


async def test_a_generated_request_id_does_not_reveal_how_many_requests_others_made(
    service: TestClient,
) -> None:
    """Every answer carries the id, so any client (of any account) can subtract two ids and read
    how many requests the process served in between — other tenants' traffic — and the
    prefix identifies the replica and its restarts. Before, ids were 128 random bits."""
    first = (await service.get("/healthz")).headers["X-Request-Id"]
    for _ in range(5):  # "someone else's" traffic
        await service.get("/healthz")
    second = (await service.get("/healthz")).headers["X-Request-Id"]

    assert int(second[-16:], 16) - int(first[-16:], 16) != 6, (first, second)


async def test_a_tame_client_id_is_echoed_and_an_empty_one_replaced(service: TestClient) -> None:
    """Held up: echo and the empty header."""
    echoed = await service.get("/healthz", headers={"X-Request-Id": "abc-123"})
    empty = await service.get("/healthz", headers={"X-Request-Id": ""})

    assert echoed.headers["X-Request-Id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", empty.headers["X-Request-Id"])


# --- auth -------------------------------------------------------------------------------------


async def test_the_token_dict_is_built_from_load_settings_which_refuses_shared_tokens(
    tmp_path: Path, sandbox_url: str
) -> None:
    """Held up: accounts sharing a token are refused by load_settings (as before), so the dict's
    last-wins (the old loop was first-wins) cannot be reached from configuration."""
    config = tmp_path / "ratesvc.toml"
    account = (
        'api_tokens = ["shared-token-0123456789"]\n'
        'ship_from = { postal_code = "78703", country = "US" }\n'
        f'shipstation = {{ url = "{sandbox_url}", api_key = "k", api_secret = "s" }}\n'
    )
    config.write_text(f"[accounts.a]\n{account}\n[accounts.b]\n{account}")
    with pytest.raises(ConfigError, match="also used by account"):
        load_settings({"RATESVC_CONFIG": str(config), "RATESVC_DATA_DIR": str(tmp_path / "d")})


# --- `ratesvc serve` on uvloop: signals, drain, ledger ------------------------------------------


async def _sandbox_process(latency_ms: int) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "sandbox", "--port", "0", "--latency-ms", str(latency_ms), "--jitter-ms", "0",
        "--rate-limit", "1000000", "--window-s", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    banner = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", banner)
    assert match, banner
    return process, match[1]


async def _serve(env: dict[str, str], nofile: int | None = None) -> tuple[Any, str]:
    def limit() -> None:
        if nofile is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))  # soft only, like ulimit -Sn

    process = await asyncio.create_subprocess_exec(
        *COMMAND, "serve", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env}, preexec_fn=limit,
    )  # fmt: skip
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
        assert line, "serve exited before serving"
        if match := re.search(r"serving on (http://\S+)", line):
            return process, match[1]


async def _stop(process: Any) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


@pytest.mark.parametrize(  # each signal once, each loop once (the four pairs cost 35 s of CI)
    ("sig", "loop"), [(signal.SIGTERM, "uvloop"), (signal.SIGINT, "asyncio")]
)
async def test_serve_drains_an_in_flight_quote_and_closes_the_ledger_on_a_signal(
    tmp_path: Path, loop: str, sig: signal.Signals
) -> None:
    """Held up (both loops, both signals): the in-flight cold quote is answered, exit 0,
    'shutting down' logged, the ledger closed (SQLite removes its -wal file on a clean close)."""
    sandbox, sandbox_url = await _sandbox_process(1500)
    env = {**service_env(sandbox_url, tmp_path / "data"), "RATESVC_PORT": "0",
           "RATESVC_LOG_LEVEL": "INFO", "RATESVC_EVENT_LOOP": loop}  # fmt: skip
    serve, url = await _serve(env)
    try:
        async with aiohttp.ClientSession() as session:

            async def quote() -> tuple[int, Any]:
                async with session.post(f"{url}/v1/rates", json=shipment("10001"),
                                        headers=AUTH) as response:  # fmt: skip
                    return response.status, await response.json()

            in_flight = asyncio.create_task(quote())
            await asyncio.sleep(0.5)
            serve.send_signal(sig)
            status, body = await asyncio.wait_for(in_flight, 30)
        _, err = await asyncio.wait_for(serve.communicate(), 30)
    finally:
        await _stop(serve)
        await _stop(sandbox)

    assert (status, body.get("complete")) == (200, True), body
    assert serve.returncode == 0, err.decode()
    assert "shutting down" in err.decode()
    assert (tmp_path / "data" / "ledger.sqlite3").exists()
    assert not (tmp_path / "data" / "ledger.sqlite3-wal").exists(), "ledger not closed"


# --- the ShipStation pool against the file-descriptor limit -------------------------------------


async def test_the_default_pool_does_not_run_the_service_out_of_file_descriptors(
    tmp_path: Path,
) -> None:
    """The default pool (512) under a soft open-file limit of 256 (the hard one higher, as
    usual): 150 concurrent cold 4-carrier quotes (600 legs). Before, the service kept the soft
    limit and sockets ran out (EMFILE: failed legs, 503s); it now raises its soft limit to the
    hard one at start, so every quote is complete."""
    sandbox, sandbox_url = await _sandbox_process(300)
    env = {**service_env(sandbox_url, tmp_path / "data"), "RATESVC_PORT": "0",
           "RATESVC_LOG_LEVEL": "INFO"}  # fmt: skip
    serve, url = await _serve(env, nofile=256)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

            async def quote(n: int) -> tuple[int, bool]:
                try:
                    async with s.post(f"{url}/v1/rates", json=shipment(f"{30001 + n:05d}"),
                                      headers=AUTH) as response:  # fmt: skip
                        body = await response.json(content_type=None)
                        return response.status, bool(body.get("complete"))
                except aiohttp.ClientError:
                    return 0, False

            await quote(-1)  # the catalogue
            results = await asyncio.wait_for(asyncio.gather(*(quote(n) for n in range(150))), 60)
    finally:
        serve.send_signal(signal.SIGTERM)
        await asyncio.wait_for(serve.wait(), 30)
        await _stop(sandbox)

    failed = [r for r in results if r != (200, True)]
    assert not failed, f"{len(failed)} of 150 quotes failed or were incomplete: {failed[:5]}"
