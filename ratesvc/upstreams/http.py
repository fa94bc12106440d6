"""The one way ratesvc calls an upstream: limiter, deadline, metrics, retries, error mapping.

Retry policy (DESIGN.md principle 5): only calls that are safe to repeat are retried, only on
429 / 5xx / connection errors, with full-jitter exponential backoff bounded by the attempt count
*and* the caller's deadline. A 429 is never retried on its own schedule: the retry goes back
through the shared limiter, which holds every caller of that key until the window resets (or
refuses at once when the reset comes after the deadline).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ratesvc.errors import (
    UpstreamFailure,
    UpstreamThrottled,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ratesvc.limiter import Limiter, Permit, Priority
from ratesvc.metrics import Metrics

log = logging.getLogger(__name__)


class Retry(Enum):
    """How a call may be repeated after a failure."""

    SAFE = "safe"  # idempotent: 429, 5xx and connection errors
    THROTTLE_ONLY = "throttle_only"  # repeat only when upstream provably did nothing (429)
    NEVER = "never"  # not idempotent (buying a label): the caller reconciles instead


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    throttled: bool = False


ErrorMapper = Callable[[int, bytes, str], UpstreamFailure]
ThrottleTest = Callable[[int, bytes], bool]


def answered_429(status: int, _body: bytes) -> bool:
    return status == 429


class UpstreamHttp:
    """Calls one upstream API for one credential through its shared limiter."""

    def __init__(
        self,
        *,
        upstream: str,
        session: aiohttp.ClientSession,
        base_url: str,
        headers: Mapping[str, str],
        limiter: Limiter,
        map_error: ErrorMapper,
        metrics: Metrics | None = None,
        retry_policy: RetryPolicy | None = None,
        is_throttled: ThrottleTest = answered_429,
    ) -> None:
        self.upstream = upstream
        self._is_throttled = is_throttled
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        # Per-call work done once (a cold 8-carrier quote is 8 calls; profiled, issue 12): the
        # parsed URL of each path, and the metric series of each (endpoint, status) — bounded by
        # the endpoints called and the statuses upstream answers with.
        self._urls: dict[str, URL] = {}
        self._series: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.limiter = limiter
        self._map_error = map_error
        self._metrics = metrics
        self._policy = retry_policy or RetryPolicy()

    async def call(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        priority: Priority,
        deadline: float | None,
        retry: Retry,
        params: Mapping[str, str] | None = None,
        json_body: bytes | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> Answer:
        """Send one request (retrying as ``retry`` allows); return a 2xx answer or raise.

        ``before_send`` runs once the limiter grants the call, right before it is sent; what it
        raises stops the call unsent (a purchase checks it still holds its lease there: a turn
        waited for can outlast the lease). When it took so long that the window the call was
        granted in closed meanwhile, the turn is handed back and the call waits for the next
        (``before_send`` runs again then).

        Redirects are followed by aiohttp; any other non-2xx answer (Cin7 Core's ``300 Multiple
        Choices`` too) goes through the upstream's error mapper.
        """
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                answer = await self._once(
                    method, path, endpoint, priority, deadline, params, json_body, before_send
                )
            except UpstreamFailure as exc:
                failure: UpstreamFailure = exc
                answered_429 = False
            else:
                if 200 <= answer.status < 300:
                    return answer
                failure = self._map_error(answer.status, answer.body, endpoint)
                answered_429 = answer.throttled
            attempt += 1
            if (
                not self._may_retry(retry, failure, answered_429)
                or attempt >= self._policy.attempts
            ):
                raise failure
            delay = 0.0 if answered_429 else self._policy.delay(attempt)
            if deadline is not None and loop.time() + delay >= deadline:
                raise failure
            log.info(
                "%s %s failed (%s); retry %d in %.2f s",
                self.upstream, endpoint, failure.detail, attempt, delay,
            )  # fmt: skip
            await asyncio.sleep(delay)

    @staticmethod
    def _may_retry(retry: Retry, failure: UpstreamFailure, answered_429: bool) -> bool:
        if retry is Retry.NEVER:
            return False
        if retry is Retry.THROTTLE_ONLY:
            return answered_429
        return answered_429 or failure.retryable

    async def _once(
        self,
        method: str,
        path: str,
        endpoint: str,
        priority: Priority,
        deadline: float | None,
        params: Mapping[str, str] | None,
        json_body: bytes | None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> Answer:
        loop = asyncio.get_running_loop()
        timeout = asyncio.timeout_at(deadline) if deadline is not None else nullcontext()
        started = loop.time()
        status_label = "error"
        sent = False
        try:
            async with timeout:
                permit = await self._granted(priority, deadline, before_send)
                try:
                    started = loop.time()
                    sent = True
                    url = self._urls.get(path)
                    if url is None:
                        url = self._urls[path] = URL(self._base_url + path)
                    async with self._session.request(
                        method,
                        url,
                        params=params,
                        data=json_body,
                        headers=self._headers if json_body is None else self._json_headers,
                    ) as response:
                        body = await response.read()
                    throttled = self._is_throttled(response.status, body)
                    self.limiter.observe(
                        permit, response.status, response.headers, throttled=throttled
                    )
                    status_label = str(response.status)
                    return Answer(
                        status=response.status, headers=response.headers, body=body,
                        throttled=throttled,
                    )  # fmt: skip
                finally:
                    self.limiter.release(permit)
        except TimeoutError as exc:
            if not sent:
                raise UpstreamThrottled(
                    f"{self._display} rate limit: no turn for {endpoint} before the deadline",
                    upstream=self.upstream,
                    endpoint=endpoint,
                ) from exc
            raise UpstreamTimeout(
                f"{self._display} did not answer {endpoint} before the deadline",
                upstream=self.upstream,
                endpoint=endpoint,
                maybe_processed=sent,
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(
                f"cannot connect to {self._display} ({exc.os_error.strerror or exc})",
                upstream=self.upstream,
                endpoint=endpoint,
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(
                f"{self._display} connection failed during {endpoint}: {type(exc).__name__}",
                upstream=self.upstream,
                endpoint=endpoint,
                maybe_processed=True,
            ) from exc
        finally:
            if self._metrics is not None and sent:
                calls, latency = self._metric_series(endpoint, status_label)
                calls.inc()
                latency.observe(loop.time() - started)

    def _metric_series(self, endpoint: str, status: str) -> tuple[Any, Any]:
        series = self._series.get((endpoint, status))
        if series is None:
            assert self._metrics is not None
            series = self._series[endpoint, status] = (
                self._metrics.upstream_requests.labels(self.upstream, endpoint, status),
                self._metrics.upstream_latency.labels(self.upstream, endpoint),
            )
        return series

    async def _granted(
        self,
        priority: Priority,
        deadline: float | None,
        before_send: Callable[[], Awaitable[None]] | None,
    ) -> Permit:
        """A turn for one call: granted by the limiter (``acquire``/``release``, not
        ``limiter.turn()``: no generator context manager per call, eight per cold quote), then
        ``before_send`` run — and, when that outlasted the window the turn was granted in (sent
        now, the call could land in upstream's next window), handed back for a turn in the
        next one. What ``before_send`` raises gives the turn back and stops the call unsent."""
        permit = await self.limiter.acquire(priority, deadline)
        while before_send is not None:
            try:
                await before_send()
            except BaseException:
                self.limiter.release(permit)
                raise
            if self.limiter.still_open(permit):
                break
            self.limiter.hand_back(permit)
            permit = await self.limiter.acquire(priority, deadline)
        return permit

    @property
    def _display(self) -> str:
        return {"shipstation": "ShipStation", "cin7": "Cin7 Core"}.get(self.upstream, self.upstream)
