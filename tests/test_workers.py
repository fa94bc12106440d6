"""``ratesvc serve --workers N``: N processes answering on one port (SO_REUSEPORT) under a parent
that forwards SIGTERM, stops everything when a worker dies, and refuses N > 1 without PostgreSQL
and Redis. Real processes, real Redis, real PostgreSQL databases (one per test)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.api.test_labels import EXPLICIT as LABEL
from tests.conftest import AUTH, service_env
from tests.test_cli import COMMAND

SERVING = re.compile(r"serving on http://127\.0\.0\.1:(\d+) \(worker (\d+)/(\d+)\)")


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str
    log: list[str] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None

    @property
    def text(self) -> str:
        return "".join(self.log)

    async def exit_code(self, within_s: float = 30) -> int:
        code = await asyncio.wait_for(self.process.wait(), within_s)
        if self.drain is not None:
            await asyncio.wait_for(self.drain, 5)
        return code


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any RATESVC_* of its own, plus ``settings``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RATESVC_")}
    return {**inherited, "RATESVC_LOG_LEVEL": "INFO", **settings}


async def start(env: dict[str, str], *args: str, workers: int = 2) -> Served:
    """``ratesvc serve`` once every worker says it serves (the port is read from the log)."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "serve", *args, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    served = Served(process, "")
    ready: set[str] = set()
    try:
        while len(ready) < workers:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, "serve stopped before its workers served:\n" + served.text
            served.log.append(line)
            if match := SERVING.search(line):
                served.url = f"http://127.0.0.1:{match[1]}"
                ready.add(match[2])
    except BaseException:
        process.kill()
        await process.wait()
        raise
    served.drain = asyncio.create_task(_drain(process.stderr, served.log))
    return served


async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
    while line := await stream.readline():
        into.append(line.decode())


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], *args: str, workers: int = 2) -> AsyncIterator[Served]:
    served = await start(env, *args, workers=workers)
    try:
        yield served
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()
        if served.drain is not None:
            served.drain.cancel()


async def pids_answering(url: str, want: int, tries: int = 300) -> set[int]:
    """The worker pids seen in ``/v1/status`` over fresh connections (the kernel spreads new
    connections, not requests on one), until ``want`` are seen."""
    pids: set[int] = set()
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(tries):
            async with session.get(f"{url}/v1/status", headers=AUTH) as response:
                assert response.status == 200, await response.text()
                pids.add((await response.json())["instance"]["pid"])
            if len(pids) >= want:
                break
    return pids


async def get_json(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        body: dict[str, Any] = await response.json()
        return body


def children_of(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # a zombie


async def until_gone(pids: set[int], within_s: float = 10) -> None:
    for _ in range(int(within_s / 0.05)):
        if all(gone(pid) for pid in pids):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still running: {[pid for pid in pids if not gone(pid)]}")


@pytest.fixture
async def replica_env(
    sandbox_url: str, tmp_path: Path, postgres_url: str, redis_prefix: tuple[str, str]
) -> dict[str, str]:
    """The settings several workers need: PostgreSQL and Redis (each test its own database and
    key prefix) and the ShipStation sandbox, on any free port."""
    redis_url, prefix = redis_prefix
    data_dir = tmp_path / "data"
    return clean_env(**service_env(
        sandbox_url, data_dir, RATESVC_PORT="0", RATESVC_DATABASE_URL=postgres_url,
        RATESVC_REDIS_URL=redis_url, RATESVC_REDIS_PREFIX=prefix,
    ))  # fmt: skip


async def test_two_workers_answer_on_one_port_and_sigterm_stops_both(
    replica_env: dict[str, str],
) -> None:
    async with serving(replica_env, "--workers", "2") as served:
        parent = served.process.pid
        pids = await pids_answering(served.url, 2)
        workers = children_of(parent)
        ready = await get_json(f"{served.url}/readyz")

        served.process.send_signal(signal.SIGTERM)
        code = await served.exit_code()

    assert len(pids) == 2
    assert pids == workers  # the answers came from the parent's two workers, not elsewhere
    assert parent not in pids
    assert ready["failed"] == [] and ready["checks"]["redis"].startswith("ok")
    assert code == 0
    await until_gone(pids)
    assert served.text.count("shutting down") == 2
    assert "SIGTERM: stopping 2 workers" in served.text
    assert f"[{parent}] ratesvc.supervisor" in served.text  # log lines name their process


async def test_a_killed_worker_stops_the_others_and_serve_exits_1(
    replica_env: dict[str, str],
) -> None:
    """Documented in ratesvc.supervisor: no restart in-process; whatever runs ratesvc restarts
    it (and sees the crash), the other worker stopping gracefully first."""
    async with serving(replica_env, "--workers", "2") as served:
        victim, survivor = sorted(await pids_answering(served.url, 2))

        os.kill(victim, signal.SIGKILL)
        code = await served.exit_code()

    assert code == 1
    await until_gone({victim, survivor})
    assert re.search(rf"worker \d \(pid {victim}\) was killed by SIGKILL: stopping the others",
                     served.text), served.text  # fmt: skip
    assert f"[{survivor}] ratesvc: shutting down" in served.text  # stopped, not killed


async def test_workers_stop_when_the_parent_is_killed(replica_env: dict[str, str]) -> None:
    async with serving(replica_env, "--workers", "2") as served:
        pids = children_of(served.process.pid)
        served.process.kill()
        await served.exit_code()

        await until_gone(pids)  # none is left holding the port


async def test_workers_come_from_ratesvc_workers_too(replica_env: dict[str, str]) -> None:
    async with serving({**replica_env, "RATESVC_WORKERS": "3"}, workers=3) as served:
        pids = await pids_answering(served.url, 3)
        served.process.send_signal(signal.SIGINT)  # Ctrl-C: the same graceful stop
        code = await served.exit_code()

    assert len(pids) == 3
    assert code == 0


@pytest.mark.parametrize(
    ("settings", "args", "where"),
    [
        ({}, ("--workers", "2"), "--workers 2"),
        ({"RATESVC_WORKERS": "2"}, (), "RATESVC_WORKERS"),
        ({"RATESVC_REDIS_URL": "redis://127.0.0.1:6379/0"}, ("--workers", "2"), "--workers 2"),
        ({"RATESVC_DATABASE_URL": "postgresql://db/x"}, ("--workers", "4"), "--workers 4"),
    ],
)
async def test_several_workers_are_refused_without_postgresql_and_redis(
    settings: dict[str, str], args: tuple[str, ...], where: str, tmp_path: Path
) -> None:
    env = clean_env(**service_env("http://127.0.0.1:9", tmp_path, RATESVC_PORT="0", **settings))
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "serve", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 2
    lines = err.decode().splitlines()
    assert lines[0] == "ratesvc: the configuration has problems:"
    (problem,) = lines[1:]
    assert problem.startswith(f"  - {where}: ")
    assert "RATESVC_DATABASE_URL=postgresql://" in problem
    assert "RATESVC_REDIS_URL=redis://" in problem
    assert not (tmp_path / "ledger.sqlite3").exists()  # refused before opening anything


@pytest.mark.parametrize("value", ["0", "65", "two"])
async def test_a_bad_workers_count_is_refused(value: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "serve", "--workers", value, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 2
    assert "--workers: must be a whole number from 1 to 64" in err.decode()


async def test_a_taken_port_is_one_line_and_no_worker_starts(
    replica_env: dict[str, str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        process = await asyncio.create_subprocess_exec(
            *COMMAND, "serve", "--workers", "2", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**replica_env, "RATESVC_PORT": port},
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 1
    assert err.decode().strip().splitlines()[-1] == "ratesvc: Address already in use"
    assert "workers started" not in err.decode()


async def test_workers_keep_the_ledger_in_postgresql(
    replica_env: dict[str, str], postgres_url: str
) -> None:
    async with serving(replica_env, "--workers", "2") as served:
        pids = await pids_answering(served.url, 2)
        status = await get_json(f"{served.url}/v1/status", AUTH)
        served.process.send_signal(signal.SIGTERM)
        code = await served.exit_code()

    connection = await asyncpg.connect(postgres_url)
    try:
        tables = await connection.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await connection.close()
    (ledger,) = [b for b in status["backends"] if b["name"] == "ledger"]
    assert (len(pids), code) == (2, 0)
    assert (ledger["engine"], ledger["reachable"]) == ("postgresql", True)
    assert tables > 0


async def test_a_second_serve_on_a_port_other_workers_already_serve_is_refused(
    replica_env: dict[str, str],
) -> None:
    """Linux lets any socket of the same user with SO_REUSEPORT join a port that only
    SO_REUSEPORT sockets hold — what a running ``serve --workers N`` holds. A second deployment
    started on that port by mistake (an old release not yet stopped, staging pointed at
    production's port, a second systemd unit) started without a word, and the kernel split the
    clients' connections between two services with different databases, Redis prefixes or
    releases (review round 4, ops finding 4). It is one line, exit 1, like any port in use."""
    async with serving(replica_env, "--workers", "2") as first:
        port = first.url.rpartition(":")[2]
        process = await asyncio.create_subprocess_exec(
            *COMMAND, "serve", "--workers", "2", stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env={**replica_env, "RATESVC_PORT": port},
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(process.communicate(), 15)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        still = await pids_answering(first.url, 2)
        workers = children_of(first.process.pid)

    assert process.returncode == 1, err.decode()[-1500:]
    assert err.decode().strip().splitlines()[-1] == "ratesvc: Address already in use"
    assert "workers started" not in err.decode()
    assert still == workers  # the first's workers, and no one else, answer on the port


SERVING_ONE = re.compile(r"serving on http://127\.0\.0\.1:(\d+)$")


async def serve_one(env: dict[str, str], *args: str) -> Served:
    """``ratesvc serve`` (one process) once it says it serves."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND, "serve", *args, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    served = Served(process, "")
    try:
        while not served.url:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, "serve stopped before it served:\n" + served.text
            served.log.append(line)
            if match := SERVING_ONE.search(line.rstrip()):
                served.url = f"http://127.0.0.1:{match[1]}"
    except BaseException:
        process.kill()
        await process.wait()
        raise
    served.drain = asyncio.create_task(_drain(process.stderr, served.log))
    await get_json(f"{served.url}/healthz")  # answering: it listens for SIGTERM too
    return served


async def test_workers_1_on_the_command_line_overrides_ratesvc_workers(tmp_path: Path) -> None:
    """``--workers`` overrides RATESVC_WORKERS, but the settings were refused (RATESVC_WORKERS=2
    without shared backends) before the flag was read: an image built with RATESVC_WORKERS=4
    could not be run once with ``serve --workers 1`` on SQLite to debug it, and ``ratesvc
    check`` and ``ratesvc cin7``, which fork nothing, were refused too (review round 4, ops
    finding 8)."""
    env = clean_env(**service_env("http://127.0.0.1:9", tmp_path / "data", RATESVC_PORT="0",
                                  RATESVC_WORKERS="2"))  # fmt: skip
    served = await serve_one(env, "--workers", "1")
    try:
        served.process.send_signal(signal.SIGTERM)
        code = await served.exit_code()
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()
    check = await asyncio.create_subprocess_exec(
        *COMMAND, "check", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(check.communicate(), 30)

    assert code == 0, served.text
    assert check.returncode == 1, err.decode()  # it checked (ShipStation unreachable): not 2
    assert "cannot connect to ShipStation" in out.decode()


@pytest.mark.timeout(60)
async def test_a_stop_mid_purchase_ends_within_the_stop_grace_counted_from_sigterm(
    sandbox: Any, sandbox_url: str, tmp_path: Path
) -> None:
    """README and compose: a stopped replica finishes its requests and purchases first, within
    RATESVC_STOP_GRACE_S (30 s) of SIGTERM, inside compose's 45 s stop_grace_period. With
    ShipStation slow to answer a createlabel the stop took about 60 s: aiohttp's runner first
    waited for the request in flight (its own 60 s shutdown_timeout; the POST waits for its
    purchase up to 30 s), and only then did the purchases get a 30 s grace of their own: Docker
    SIGKILLed the replica mid-purchase, and the graceful path never completed (review round 4,
    ops finding 6). One deadline now, from the signal: the grace (2 s here) and the teardown."""
    sandbox.knobs.createlabel_faults = ["hang_after_buy"]
    sandbox.knobs.hang_s = 100
    grace_s = 2.0
    env = clean_env(**service_env(sandbox_url, tmp_path / "data", RATESVC_PORT="0",
                                  RATESVC_STOP_GRACE_S=str(grace_s)))  # fmt: skip
    served = await serve_one(env)
    try:
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(session.post(
                f"{served.url}/v1/labels", json=LABEL, headers={**AUTH, "Idempotency-Key": "stop"}
            ))  # fmt: skip
            for _ in range(200):
                if sandbox.shipments:
                    break
                await asyncio.sleep(0.05)
            assert sandbox.shipments, "createlabel never reached the sandbox"
            served.process.send_signal(signal.SIGTERM)
            started = asyncio.get_running_loop().time()
            code = await served.exit_code(within_s=grace_s + 20)
            elapsed = asyncio.get_running_loop().time() - started
            request.cancel()
            with contextlib.suppress(BaseException):
                await request
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()

    assert code == 0, served.text
    assert elapsed < grace_s + 3, f"stopped {elapsed:.1f} s after SIGTERM"
    assert "shutting down" in served.text
