"""The process's one Redis client (``RATESVC_REDIS_URL``), shared by every Redis-backed part.

One ``redis.asyncio.Redis`` per process over a bounded, blocking pool: a burst of quotes waits
up to :data:`POOL_WAIT_S` for a connection rather than opening hundreds. Timeouts are short
because every caller has a fallback (a local share of the budget, the near-cache, a 503 that
says so): a hung Redis must cost a request a second, not its whole deadline. One quick retry on
a fresh connection covers the first command after Redis restarted (the pooled socket is dead);
more retries would only add latency to an outage.

Keys: every key this deployment writes starts with ``settings.redis_prefix`` (``ratesvc:`` by
default; :func:`key` joins the parts). Deployments sharing one Redis (staging and production,
two tenants) must use different prefixes; each component adds its own namespace after it
(``ratesvc:limit:...``, ``ratesvc:quote:...``) and a format version where its values may change
between releases, so a rolling deploy never reads the other release's values.

An unreachable Redis at start-up does not stop the service: the client connects lazily, the
start-up PING's failure is logged, ``/readyz`` and ``/v1/status`` say so, and the components
fall back until it answers.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 1.0  # a Redis that does not accept a connection within a second is down
SOCKET_TIMEOUT_S = 2.0  # any one command: the limiter's scripts and cache reads take < 1 ms
POOL_SIZE = 64  # connections per process at most
POOL_WAIT_S = 1.0  # how long a command waits for a free connection before failing
HEALTH_CHECK_S = 30  # a connection idle this long is PINGed before reuse
PING_TIMEOUT_S = 0.5  # /readyz, /v1/status and the start-up check


def open_redis(url: str) -> Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``); no I/O until used."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_S,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
    )
    return Redis.from_pool(pool)


def key(prefix: str, *parts: str) -> str:
    """``key("ratesvc:", "limit", "ab12cd34")`` → ``ratesvc:limit:ab12cd34``."""
    return prefix + ":".join(parts)


def redacted(url: str) -> str:
    """``url`` without user, password or query (``redis://:pw@cache:6379/0?x=1`` →
    ``redis://cache:6379/0``): safe for logs and ``/v1/status``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # a port that is no number: show none rather than fail
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}"


async def ping(redis: Redis, timeout_s: float = PING_TIMEOUT_S) -> str | None:
    """None when Redis answers PING within ``timeout_s``, else why not (one line, no secrets)."""
    try:
        async with asyncio.timeout(timeout_s):
            await redis.ping()
    except TimeoutError:
        return f"no answer to PING within {timeout_s:g} s"
    except (RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


async def check_at_start(redis: Redis, url: str, prefix: str) -> bool:
    """PING once at start-up; a failure is logged (the service starts anyway and degrades)."""
    problem = await ping(redis, CONNECT_TIMEOUT_S + PING_TIMEOUT_S)
    if problem is None:
        log.info("Redis at %s answers (keys prefixed %r)", redacted(url), prefix)
        return True
    log.warning(
        "Redis at %s is unreachable (%s): starting anyway; until it answers /readyz is 503 "
        "and what is shared through Redis falls back to this process",
        redacted(url), problem,
    )  # fmt: skip
    return False
