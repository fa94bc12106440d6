"""Is each configured backend reachable? Time-bounded checks for ``/readyz`` and ``/v1/status``.

Each check has its own short timeout and they run concurrently, so a hung database or Redis
makes ``/readyz`` answer 503 within about a second instead of hanging the probe (orchestrators
give a probe one to a few seconds). What is shown names the engine and where it is, never a
user or password.
"""

from __future__ import annotations

import asyncio
import time
import weakref

import msgspec
from redis.asyncio import Redis

from ratesvc.config import Settings, sqlite_path
from ratesvc.storage.ledger import Ledger
from ratesvc.storage.redis_client import PING_TIMEOUT_S, ping, redacted

LEDGER_TIMEOUT_S = 1.0  # one rolled-back write and one read


class BackendState(msgspec.Struct, frozen=True, kw_only=True):
    """One backend as an operator sees it."""

    name: str  # "ledger" or "redis"
    engine: str  # "sqlite", "postgresql" or "redis"
    location: str  # the file, or the URL without user, password or query
    reachable: bool
    detail: str  # "ok (schema 9)", "ok (PING 0.3 ms)", or why it is not reachable


def ledger_engine(ledger: Ledger) -> str:
    """The engine of the ledger actually opened (``sqlite`` or ``postgresql``)."""
    return ledger.engine.dialect


# The probe still running per ledger. It is shielded, never cancelled: a SQLite check cut off
# between BEGIN and ROLLBACK would leave the shared connection inside a transaction. Probes
# polled while the ledger hangs join the one in flight instead of queueing behind it.
_probes: weakref.WeakKeyDictionary[Ledger, asyncio.Task[int]] = weakref.WeakKeyDictionary()


def _ledger_probe(ledger: Ledger) -> asyncio.Task[int]:
    task = _probes.get(ledger)
    if task is None or task.done():
        task = _probes[ledger] = asyncio.create_task(_writable_version(ledger))
        task.add_done_callback(_retrieve)
    return task


async def _writable_version(ledger: Ledger) -> int:
    await ledger.writable()
    return await ledger.version()


def _retrieve(task: asyncio.Task[int]) -> None:
    """The outcome of a probe nobody waited for any more is not an unhandled error."""
    if not task.cancelled():
        task.exception()


async def ledger_state(ledger: Ledger, settings: Settings) -> BackendState:
    engine = ledger_engine(ledger)
    if engine == "postgresql":
        location = redacted(settings.ledger_url)
    else:
        location = str(sqlite_path(settings.ledger_url))
    try:
        version = await asyncio.wait_for(asyncio.shield(_ledger_probe(ledger)), LEDGER_TIMEOUT_S)
        detail = f"ok (schema {version})"
    except TimeoutError:
        detail = f"error: no answer within {LEDGER_TIMEOUT_S:g} s"
    except Exception as exc:  # whatever the engine raises: the probe reports, never fails
        detail = f"error: {exc}"
    return BackendState(name="ledger", engine=engine, location=location,
                        reachable=detail.startswith("ok"), detail=detail)  # fmt: skip


async def redis_state(redis: Redis, url: str) -> BackendState:
    started = time.perf_counter()
    problem = await ping(redis, PING_TIMEOUT_S)
    elapsed_ms = (time.perf_counter() - started) * 1000
    detail = f"ok (PING {elapsed_ms:.1f} ms)" if problem is None else f"error: {problem}"
    return BackendState(name="redis", engine="redis", location=redacted(url),
                        reachable=problem is None, detail=detail)  # fmt: skip


async def backend_states(
    ledger: Ledger, redis: Redis | None, settings: Settings
) -> list[BackendState]:
    """The ledger, then Redis when ``RATESVC_REDIS_URL`` is set; checked concurrently."""
    if redis is None or settings.redis_url is None:
        return [await ledger_state(ledger, settings)]
    return list(
        await asyncio.gather(ledger_state(ledger, settings), redis_state(redis, settings.redis_url))
    )
