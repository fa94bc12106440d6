"""Whether Redis answers, told once per outage, so a dead Redis costs no request a timeout.

Every shared quote component asks :meth:`RedisHealth.usable` before a Redis call and reports how
it went. After a failure Redis is left alone for ``retry_s`` (those calls take the local path at
once), then tried again; the first success ends the outage, and calls what :meth:`when_back`
registered (what a replica kept alone meanwhile is shared again). The outage is logged once when
it starts and once when it ends, never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import redis.exceptions

log = logging.getLogger(__name__)

REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
"""What a Redis call raises when the server cannot be reached or answer (``TimeoutError`` of a
call's own bound included: it is an ``OSError``)."""


class RedisHealth:
    def __init__(self, *, retry_s: float = 1.0, op_timeout_s: float = 0.5) -> None:
        self.retry_s = retry_s
        self.op_timeout_s = op_timeout_s
        self.down_since: float | None = None  # time.time() of the outage's first failure
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._refusal_told = False
        self._on_return: list[Callable[[], None]] = []

    def when_back(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in the event loop, without waiting) whenever an outage ends."""
        self._on_return.append(callback)

    @property
    def available(self) -> bool:
        """False during an outage (for status pages)."""
        return self.down_since is None

    def usable(self) -> bool:
        """Worth a Redis call now: up, or down long enough ago to try again."""
        return self.down_since is None or time.monotonic() >= self._retry_at

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning(
                "Redis answers again after %.1f s: quotes, cached legs, replays and carrier "
                "catalogues are shared by the replicas again",
                time.time() - self.down_since,
            )
            self.down_since = None
            self.last_error = None
            for callback in self._on_return:
                try:
                    callback()
                except Exception:  # never the request's problem
                    log.exception("after Redis returned, %r failed", callback)

    def failed(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self.retry_s
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.down_since is None:
            self.down_since = time.time()
            log.warning(
                "Redis cannot be reached (%s): until it answers, each replica caches, coalesces "
                "and stores quotes in its own memory (a quote may not be readable on another "
                "replica meanwhile)",
                self.last_error,
            )

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Bound one Redis exchange by ``op_timeout_s`` and record how it went; a failure
        propagates (as one of :data:`REDIS_ERRORS`) for the caller to take its local path."""
        try:
            async with asyncio.timeout(self.op_timeout_s):
                yield
        except redis.exceptions.ResponseError as exc:  # it answered: refused, not unreachable
            self.ok()
            (log.debug if self._refusal_told else log.warning)(
                "Redis refused a command (%s); treated as a cache miss", exc
            )
            self._refusal_told = True
            raise
        except REDIS_ERRORS as exc:
            self.failed(exc)
            raise
        self.ok()
