"""One rate-limit window per upstream credential for every replica, kept in Redis.

:class:`SharedRateLimiter` has :class:`~ratesvc.limiter.RateLimiter`'s surface and behaviour
(probing, headers win, a 429 pauses the key, priorities, deadlines, cancellation; see
:mod:`ratesvc.limiter`), but the window lives in Redis and every change to it is one atomic Lua
script (:mod:`.limiter_scripts`) judged on Redis's clock, so replicas never compare clocks:

* **One window.** A call goes only when the acquire script grants it: the calls taken in the
  window, its end, the pause after a 429 and the pacing slot are the same for every replica.
  The script says how long to wait otherwise; the replica sleeps that long or until something
  of its own changes.
* **Answers from any replica.** ``X-Rate-Limit-*`` headers are applied in Redis: a new Limit,
  a lower Remaining, the Reset; a 429 anywhere pauses the key for all until the reset — also
  one answered, after Redis came back, to a call this replica sent from its local share.
* **Priorities.** Within a replica, callers wait in the same priority queue as in-process.
  Across replicas, each registers in Redis the priorities it has callers waiting at (a
  registration lapses after ``3 * heartbeat_s`` unless renewed, so a dead replica holds no one
  back), and a call is not granted while another replica has a live registration of a better
  priority. How exact: a label waiting on replica A goes before every quote that asks after A's
  registration reached Redis, i.e. at most one Redis round trip of quotes (plus the batch the
  quote's replica was granted in that call) can overtake it; ``reserve`` (default 0) further
  keeps that many calls of each window for urgent callers only. Quotes yielding to a label
  elsewhere ask again every ``poll_s``.
* **Deadlines.** A caller whose turn cannot come before its deadline, judged from the window
  Redis last described (a lower bound: other replicas' callers are not counted), is refused at
  once with :class:`~ratesvc.errors.UpstreamThrottled`; one still waiting at its deadline is
  refused then, never later.
* **Redis unreachable** (refused, timed out: every command is bounded by ``timeout_s``): calls
  go on against a *local share* of the budget — ``max(1, limit // replicas)`` calls a window,
  judged by an in-process :class:`~ratesvc.limiter.WindowModel` that starts from the last
  window Redis described (the calls this replica took in it counted) with a probe, and adopts
  the upstream's headers (Limit and a probe's Remaining divided by ``replicas``, a lower
  Remaining) and 429s. One
  warning per outage; :meth:`~SharedRateLimiter.state` says ``degraded``. Redis is pinged every
  ``retry_s``; when it answers, the replica rejoins the shared window and marks it unsure: the
  calls it counted alone are not in it, so the next call is a probe whose headers say what is
  really left (and a 429 seen meanwhile pauses every replica for the rest of its pause).
  Nothing here raises anything but ``UpstreamThrottled`` because of Redis.

Keys: ``<prefix>limit:v1:{<name>}`` (the window), ``…:waiting`` (the registrations) and
``…:answer:<replica>`` (the last answer, for a retried command); one hash slot, all expiring.
Pass the process's client (:func:`ratesvc.storage.redis_client.open_redis`): every command
here is bounded by ``timeout_s`` whatever the client's own timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ratesvc.limiter import (
    Limiter,
    LimiterState,
    Permit,
    Priority,
    RateHeaders,
    RateLimiter,
    Waiter,
    WaitQueue,
    WindowModel,
    default_margin,
)
from ratesvc.metrics import Metrics
from ratesvc.storage import limiter_scripts
from ratesvc.storage.redis_client import key as redis_key

log = logging.getLogger(__name__)

_UNAVAILABLE = (RedisError, OSError, TimeoutError)
_US = 1_000_000


@dataclass(frozen=True)
class _Window:
    """The shared window as the last script described it, on this process's clock."""

    epoch: int
    limit: int
    remaining: int
    ends_at: float | None
    slot_at: float
    probing: bool


class _ShareModel(WindowModel):
    """The in-process window of a replica cut off from Redis: its share of the key's budget.
    Headers describe the whole key: their Limit is divided among the replicas, and so is the
    Remaining a probe learns (every replica cut off may be probing too), never more than what
    is left of the share."""

    def __init__(self, name: str, *, replicas: int, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.replicas = replicas

    def share(self, limit: int) -> int:
        return max(1, limit // self.replicas)

    def _scaled(self, info: RateHeaders) -> RateHeaders:
        limit = None if info.limit is None else self.share(info.limit)
        remaining = info.remaining
        if remaining is not None and self.probing:
            remaining = min(remaining // self.replicas, (limit or self.limit) - 1)
        return RateHeaders(limit=limit, remaining=remaining, reset_s=info.reset_s,
                           reset_unit_s=info.reset_unit_s)  # fmt: skip

    def adopt(
        self, now: float, info: RateHeaders, *, alone: bool, sent_at: float | None = None
    ) -> None:
        super().adopt(now, self._scaled(info), alone=alone, sent_at=sent_at)

    def throttle(self, now: float, info: RateHeaders, *, sent_at: float | None = None) -> None:
        super().throttle(now, self._scaled(info), sent_at=sent_at)

    def paused_for(self, now: float) -> float | None:
        """Seconds left of a pause after a 429 (None: not paused)."""
        if self.probing and self.remaining <= 0 and self.reset_at is not None:
            return self.reset_at - now if self.reset_at > now else None
        return None


class SharedRateLimiter:
    """Admission control for one upstream credential across replicas (module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        redis: Redis,
        prefix: str,
        limit: int,
        window_s: float,
        margin_s: float | None = None,
        min_interval_s: float = 0.0,
        throttle_pause_s: float | None = None,
        metrics: Metrics | None = None,
        replicas: int = 2,
        reserve: int = 0,
        poll_s: float = 0.025,
        heartbeat_s: float = 1.0,
        retry_s: float = 0.25,
        timeout_s: float = 0.5,
        probe_lease_s: float = 10.0,
    ) -> None:
        """``replicas``: how many replicas to assume when Redis is unreachable (each then takes
        ``limit // replicas`` calls a window, at least one); ``reserve``: calls of each window
        only urgent callers may take; ``timeout_s`` bounds every Redis command."""
        self.name = name
        self._redis = redis
        key = redis_key(prefix, "limit", "v1", f"{{{name}}}")
        self._me = f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self._keys = [key, f"{key}:waiting", f"{key}:answer:{self._me}"]
        self._tokens = itertools.count()
        self._config_limit = limit
        self._window_s = window_s
        self._margin_s = margin_s if margin_s is not None else default_margin(window_s)
        self._min_interval_s = min_interval_s
        self._pause_s = throttle_pause_s if throttle_pause_s is not None else window_s
        self._metrics = metrics
        self._replicas = max(1, replicas)
        self._reserve = max(0, reserve)
        self._poll_s = poll_s
        self._heartbeat_s = heartbeat_s
        self._retry_s = retry_s
        self._timeout_s = timeout_s
        self._lease_s = probe_lease_s
        self._acquire_lua = redis.register_script(limiter_scripts.ACQUIRE)
        self._observe_lua = redis.register_script(limiter_scripts.OBSERVE)
        self._hand_back_lua = redis.register_script(limiter_scripts.HAND_BACK)
        self._rejoin_lua = redis.register_script(limiter_scripts.REJOIN)
        self._queue = WaitQueue(name, metrics)
        self._window: _Window | None = None  # nothing read from Redis yet
        self._mine = (0, 0)  # (epoch, calls) this replica was granted in the shared window
        self._shared = True
        self._local = self._fallback(0.0)
        self._throttled = 0
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._registered = False

    # --- public surface (RateLimiter's) ----------------------------------------------------

    @property
    def limit(self) -> int:
        if not self._shared:
            return self._local.limit
        return self._window.limit if self._window is not None else self._config_limit

    @property
    def remaining(self) -> int:
        """Calls left in the window as last seen (while degraded: in this replica's share)."""
        if not self._shared:
            return self._local.remaining
        return self._window.remaining if self._window is not None else 0

    @property
    def shared(self) -> bool:
        """False while Redis cannot be reached (the local share is in force)."""
        return self._shared

    def state(self) -> LimiterState:
        """The window as Redis last described it (no I/O); while Redis is unreachable, the
        local share, as ``degraded``."""
        now = asyncio.get_running_loop().time()
        if not self._shared:
            return self._local.state(now, throttled=self._throttled, sharing="degraded")
        window = self._window
        limit = window.limit if window is not None else self._config_limit
        if window is None or window.ends_at is None or now >= window.ends_at:
            return LimiterState(limit=limit, remaining=limit, reset_after_s=None,
                                throttled=self._throttled, sharing="shared")  # fmt: skip
        return LimiterState(
            limit=limit, remaining=max(0, window.remaining), reset_after_s=window.ends_at - now,
            throttled=self._throttled, sharing="shared",
        )  # fmt: skip

    @asynccontextmanager
    async def slot(self, priority: Priority, deadline: float | None) -> AsyncIterator[Permit]:
        """Wait for a turn, yield the permit for one call, then hand the slot back."""
        permit = await self.acquire(priority, deadline)
        try:
            yield permit
        finally:
            self.release(permit)

    async def acquire(self, priority: Priority, deadline: float | None) -> Permit:
        loop = asyncio.get_running_loop()
        started = loop.time()
        waiter = self._queue.push(priority, deadline)
        self._kick()
        permit = await self._queue.turn(waiter, hand_back=self._hand_back, moved=self._kick)
        self._queue.waited(priority, loop.time() - started)
        return permit

    def observe(
        self,
        permit: Permit,
        status: int,
        headers: Mapping[str, str],
        *,
        throttled: bool | None = None,
    ) -> None:
        """Feed the window what upstream said in answer to ``permit``'s call (in Redis, for
        every replica, when the permit came from there; a refusal whenever Redis answers)."""
        permit.answered = True
        refused = status == 429 if throttled is None else throttled
        info = RateHeaders.parse(headers)
        if refused:
            self._throttled += 1
            if self._metrics is not None:
                self._metrics.limiter_throttled.labels(self.name).inc()
        if self._shared and (permit.shared or refused):
            if refused:
                log.warning(
                    "%s: upstream answered 429; pausing the key for every replica for %.1f s",
                    self.name, info.reset_s if info.reset_s is not None else self._pause_s,
                )  # fmt: skip
            self._spawn(self._observe_shared(permit, info, refused))
        else:
            now = asyncio.get_running_loop().time()
            self._local.observe(permit, now, info, throttled=refused)
        self._kick()

    def release(self, permit: Permit) -> None:
        """The call is over (answered or not)."""
        if not permit.shared:
            self._local.release(permit)
        elif permit.probe and not permit.answered and self._shared:
            # A probe without an answer: let another go now rather than when its lease ends.
            self._spawn(self._give_back(permit, call=False))
        self._kick()

    async def flush(self) -> None:
        """Wait until what this replica reported (answers, calls handed back) reached Redis."""
        if self._pending:
            await asyncio.wait(list(self._pending))

    async def aclose(self) -> None:
        """Stop the background work, settle what this replica told Redis, refuse whoever is
        still waiting."""
        for task in (self._dispatcher, self._reconnecting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush()
        if self._registered and self._shared:
            with contextlib.suppress(*_UNAVAILABLE):
                await self._ask(Priority.URGENT, (0,) * len(Priority))
        while (waiter := self._queue.pop()) is not None:
            self._queue.reject(waiter, None)

    # --- the dispatcher: one per replica and limiter, alive while callers wait --------------

    def _kick(self) -> None:
        self._wake.set()
        if self._queue and (self._dispatcher is None or self._dispatcher.done()):
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            head = self._queue.head()
            if head is None:
                if not (self._registered and self._shared):
                    return
                with contextlib.suppress(*_UNAVAILABLE):  # withdraw this replica's waiters
                    await self._ask(Priority.URGENT, (0,) * len(Priority))
                self._registered = False
                continue
            self._wake.clear()
            await self.flush()  # this replica's answers reach the window before it asks
            permits, wait = await self._decide(Priority(head.priority))
            now = loop.time()
            for permit in permits:
                waiter = self._queue.pop()
                if waiter is None:
                    self._hand_back(permit)
                else:
                    waiter.future.set_result(permit)
            self._sweep(now)
            if permits:
                continue
            timeout = min(max(wait, self._poll_s / 4), self._queue.next_deadline() - now)
            if self._registered and self._shared:
                timeout = min(timeout, self._heartbeat_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, timeout) if timeout < 1e9 else None):
                    await self._wake.wait()

    async def _decide(self, priority: Priority) -> tuple[list[Permit], float]:
        """Ask for calls for the waiters at ``priority``: the permits granted, or how long to
        wait."""
        counts = self._queue.counts()
        if self._shared:
            try:
                return await self._ask(priority, counts)
            except _UNAVAILABLE as exc:
                self._degrade(exc)
        now = asyncio.get_running_loop().time()
        model = self._local
        model.roll(now)
        permits: list[Permit] = []
        while len(permits) < counts[priority] and model.can_send(now):
            permits.append(model.grant(now))
        if self._metrics is not None:
            self._metrics.limiter_remaining.labels(self.name).set(model.remaining)
        wake_at = model.wake_at(now)
        return permits, (wake_at - now if wake_at is not None else float("inf"))

    async def _ask(self, priority: Priority, counts: Sequence[int]) -> tuple[list[Permit], float]:
        reply = await self._run(
            self._acquire_lua,
            self._me, int(priority), counts[priority], ",".join(map(str, counts)),
            round(self._min_interval_s * _US), round(self._lease_s * _US), self._reserve,
            round(3 * self._heartbeat_s * _US), round(self._poll_s * _US), next(self._tokens),
        )  # fmt: skip
        self._registered = any(counts)
        granted, wait_us, epoch = reply[:3]
        if granted:
            calls = self._mine[1] if self._mine[0] == epoch else 0
            self._mine = (epoch, calls + granted)
        permits = [self._permit(reply) for _ in range(granted)]
        return permits, wait_us / _US

    @staticmethod
    def _permit(reply: Sequence[int]) -> Permit:
        epoch, probe, counted, paced_from, paced_until, lease = reply[2:8]
        return Permit(
            epoch=epoch, probe=bool(probe), counted=bool(counted), paced_from=paced_from,
            paced_until=paced_until, shared=True, lease=lease if probe else 0,
        )  # fmt: skip

    def _sweep(self, now: float) -> None:
        window = self._window
        if not self._shared:
            model = self._local
            self._queue.sweep(lambda position, _: model.eta(position, now), model.reset_after(now))
        elif window is None:
            self._queue.sweep(lambda _position, _waiter: now, None)
        else:
            reset_after = None if window.ends_at is None else max(0.0, window.ends_at - now)
            self._queue.sweep(
                lambda position, waiter: self._eta(window, position, waiter, now), reset_after
            )

    def _eta(self, window: _Window, position: int, waiter: Waiter, now: float) -> float:
        """Earliest time the waiter at ``position`` could be sent, other replicas aside."""
        paced = max(now, window.slot_at) + position * self._min_interval_s
        if window.ends_at is None:
            return paced
        reserve = self._reserve if waiter.priority > Priority.URGENT else 0
        left = window.remaining if now < window.ends_at else window.limit
        available = max(0, left - reserve)
        if position < available:
            return paced
        windows_later = (position - available) // max(1, window.limit - reserve)
        return max(paced, window.ends_at + windows_later * (self._window_s + self._margin_s))

    # --- Redis ---------------------------------------------------------------------------------

    async def _run(self, script: Any, *args: object) -> list[int]:
        """Run one of the scripts, bounded by ``timeout_s``; remember the window it describes."""
        head = (self._config_limit, round(self._window_s * _US), round(self._margin_s * _US))
        async with asyncio.timeout(self._timeout_s):
            reply: list[int] = await script(keys=self._keys, args=[*head, *args])
        now = asyncio.get_running_loop().time()
        limit, remaining, ends_in, slot_in, probing = reply[8:13]
        self._window = _Window(
            epoch=reply[2], limit=limit, remaining=remaining,
            ends_at=None if ends_in < 0 else now + ends_in / _US, slot_at=now + slot_in / _US,
            probing=bool(probing),
        )  # fmt: skip
        if self._metrics is not None:
            self._metrics.limiter_remaining.labels(self.name).set(remaining)
        return reply

    async def _observe_shared(self, permit: Permit, info: RateHeaders, refused: bool) -> None:
        try:
            await self._run(
                self._observe_lua,
                int(refused), permit.epoch, info.limit or 0,
                -1 if info.remaining is None else info.remaining,
                -1 if info.reset_s is None else round(info.reset_s * _US),
                round(self._pause_s * _US),
            )  # fmt: skip
        except _UNAVAILABLE as exc:
            self._degrade(exc)
            self._local.observe(permit, asyncio.get_running_loop().time(), info, throttled=refused)
        self._kick()

    async def _give_back(self, permit: Permit, *, call: bool) -> None:
        """A call granted and never sent (``call``: its window call and pacing slot too)."""
        with contextlib.suppress(*_UNAVAILABLE):
            await self._run(
                self._hand_back_lua,
                permit.epoch, int(call and permit.counted), int(permit.paced_from),
                int(permit.paced_until) if call else 0, permit.lease,
            )  # fmt: skip
        self._kick()

    def _hand_back(self, permit: Permit) -> None:
        if not permit.shared:
            self._local.hand_back(permit)
        elif self._shared:
            self._spawn(self._give_back(permit, call=True))
        self._kick()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # --- Redis unreachable: the local share ----------------------------------------------------

    def _fallback(self, now: float) -> _ShareModel:
        """A local window for this replica's share. It starts with a probe (what Redis last
        said may be stale: other replicas took calls since), within the shared window as last
        seen, with the calls this replica took in it counted."""
        window = self._window
        model = _ShareModel(
            f"{self.name} (local share)",
            replicas=self._replicas,
            limit=1,
            window_s=self._window_s,
            margin_s=self._margin_s,
            min_interval_s=self._min_interval_s,
            throttle_pause_s=self._pause_s,
        )
        model.limit = model.share(window.limit if window is not None else self._config_limit)
        if window is not None and window.ends_at is not None and now < window.ends_at:
            taken = self._mine[1] if self._mine[0] == window.epoch else 0
            model.reset_at = window.ends_at
            model.heard = True  # Redis's bound: answers here only ever move it later
            model.remaining = max(0, min(model.limit - taken, window.remaining))
            model.next_slot = window.slot_at
        return model

    def _degrade(self, exc: BaseException) -> None:
        if not self._shared:
            return
        loop = asyncio.get_running_loop()
        self._shared = False
        self._registered = False
        self._local = self._fallback(loop.time())
        log.warning(
            "%s: Redis is unreachable (%s: %s); until it answers again this replica takes at "
            "most %d calls a window (its share of %d, assuming %d replicas)",
            self.name, type(exc).__name__, exc, self._local.limit,
            self._window.limit if self._window is not None else self._config_limit,
            self._replicas,
        )  # fmt: skip
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._shared:
            await asyncio.sleep(self._retry_s)
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._redis.ping()
                paused_for = self._local.paused_for(asyncio.get_running_loop().time())
                pause = -1 if paused_for is None else max(0.0, paused_for - self._margin_s)
                await self._run(self._rejoin_lua, round(pause * _US) if pause >= 0 else -1)
            except _UNAVAILABLE:
                continue
            self._shared = True
            log.warning("%s: Redis answers again; the window is shared again", self.name)
            self._kick()


def make_limiter(
    name: str,
    *,
    limit: int,
    window_s: float,
    min_interval_s: float = 0.0,
    throttle_pause_s: float | None = None,
    metrics: Metrics | None = None,
    redis: Redis | None = None,
    prefix: str = "ratesvc:",
    replicas: int = 2,
) -> Limiter:
    """The limiter of one credential: in this process without ``redis`` (``app[keys.REDIS]``),
    else shared by every replica using ``redis`` and ``prefix`` (``settings.redis_prefix``;
    ``replicas``: how many to assume while Redis is unreachable, each then taking that share of
    the window). Close it with ``aclose()`` before the client."""
    if redis is None:
        return RateLimiter(
            name, limit=limit, window_s=window_s, min_interval_s=min_interval_s,
            throttle_pause_s=throttle_pause_s, metrics=metrics,
        )  # fmt: skip
    return SharedRateLimiter(
        name, redis=redis, prefix=prefix, limit=limit, window_s=window_s,
        min_interval_s=min_interval_s, throttle_pause_s=throttle_pause_s, metrics=metrics,
        replicas=replicas,
    )  # fmt: skip
