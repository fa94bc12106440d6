"""One rate-limit window per upstream credential for every replica, kept in Redis.

:class:`SharedRateLimiter` has :class:`~ratesvc.limiter.RateLimiter`'s surface and behaviour
(probing, headers win, the pause before a window's possible end, a 429 pauses the key,
priorities, deadlines, cancellation; see :mod:`ratesvc.limiter`), but the window lives in Redis
and every change to it is one atomic Lua script (:mod:`.limiter_scripts`) judged on Redis's
clock, so replicas never compare clocks:

* **One window.** A call goes only when the acquire script grants it: the calls taken in the
  window, its earliest and latest end, the pause after a 429 and the pacing slot are the same
  for every replica. A permit carries its grant time on Redis's clock, so the earliest end an
  answer proves is measured from it. The script says how long to wait otherwise; the replica
  sleeps that long or until something of its own changes.
* **Answers from any replica.** ``X-Rate-Limit-*`` headers are applied in Redis: a new Limit,
  a lower Remaining, the Reset (moving the end only later); a 429 anywhere pauses the key for
  all until the reset — also one answered, after Redis came back, to a call this replica sent
  from its local share.
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
* **Members** (:mod:`.limiter_members`). A limiter in use (a grant in the last two windows)
  keeps an entry in the window's members, refreshed every ``heartbeat_s``; the others hold a
  share aside per lapsed entry. An idle one leaves, and sends Redis nothing.
* **Redis unreachable** (refused, timed out: every command is bounded by ``timeout_s``): calls
  go on against a *local share* of the budget (:mod:`.limiter_share`: ``max(1, limit //
  replicas)`` calls a window), once this replica's member entry has lapsed, so the others hold
  the share aside (up to ``3 * heartbeat_s`` with nothing sent); one not a member (idle
  there) starts at once. One warning per outage; :meth:`~SharedRateLimiter.state` says
  ``degraded``. Redis is pinged every ``retry_s``; when it answers, the replica rejoins the
  shared window and marks it unsure: the calls it counted alone are not in it, so the next
  call is a probe whose headers say what is really left (and a 429 seen meanwhile pauses
  every replica for the rest of its pause). Nothing here raises anything but
  ``UpstreamThrottled`` because of Redis.
  What is *not* covered (README, *Running replicas*): a replica cut off while not a member
  of the window (idle there: no call for two windows, or never), or for longer than the
  others hold its share (its entry's lapse plus two windows) while they still reach Redis, may
  spend its share on top of theirs, ``limit // replicas`` a window per such replica.

The Redis side (keys, scripts, what their answers say) is :mod:`.limiter_window`; the local
share is :mod:`.limiter_share`. Pass the process's client
(:func:`ratesvc.storage.redis_client.open_redis`): every command here is bounded by
``timeout_s`` whatever the client's own timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from redis.asyncio import Redis

from ratesvc.limiter import (
    Limiter,
    LimiterState,
    Permit,
    Priority,
    RateHeaders,
    RateLimiter,
    WaitQueue,
    default_margin,
    says_nothing,
)
from ratesvc.metrics import Metrics
from ratesvc.storage.limiter_members import UNAVAILABLE as _UNAVAILABLE
from ratesvc.storage.limiter_members import Membership
from ratesvc.storage.limiter_share import ShareModel, held_until, local_share, spend_from
from ratesvc.storage.limiter_window import Config, RedisWindow

log = logging.getLogger(__name__)


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
        """``replicas``: how many processes share the key (each takes ``limit // replicas``
        calls a window, at least one, while Redis is unreachable); ``reserve``: calls of each
        window only urgent callers may take; ``heartbeat_s``: how often the member entry and
        waiting registrations are refreshed while the limiter is in use; ``timeout_s`` bounds
        every Redis command. The limiter joins the window's members at its first call."""
        self.name = name
        self._config = Config(
            limit=limit, window_s=window_s,
            margin_s=margin_s if margin_s is not None else default_margin(window_s),
            min_interval_s=min_interval_s,
            pause_s=throttle_pause_s if throttle_pause_s is not None else window_s,
            replicas=max(1, replicas), reserve=max(0, reserve), poll_s=poll_s,
            heartbeat_s=heartbeat_s, lease_s=probe_lease_s, timeout_s=timeout_s,
        )  # fmt: skip
        self._redis = RedisWindow(redis, prefix, name, self._config, metrics)
        self._metrics = metrics
        self._retry_s = retry_s
        self._queue = WaitQueue(name, metrics)
        self._shared = True
        self._local = self._fallback(0.0)
        self._spend_from = 0.0  # while degraded: no call of the local share before this
        self._throttled = 0
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._registered = False
        self._closing = False
        self._members = Membership(
            self._redis, busy=lambda: bool(self._queue), shared=lambda: self._shared,
            lost=self._degrade,
        )  # fmt: skip

    # --- public surface (RateLimiter's) ----------------------------------------------------

    @property
    def limit(self) -> int:
        if not self._shared:
            return self._local.limit
        window = self._redis.window
        return window.limit if window is not None else self._config.limit

    @property
    def remaining(self) -> int:
        """Calls left in the window as last seen (while degraded: in this replica's share)."""
        if not self._shared:
            return self._local.remaining
        window = self._redis.window
        return window.remaining if window is not None else 0

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
        window = self._redis.window
        limit = window.limit if window is not None else self._config.limit
        if window is None or window.ends_at is None or now >= window.ends_at:
            return LimiterState(limit=limit, remaining=limit, reset_after_s=None,
                                throttled=self._throttled, sharing="shared")  # fmt: skip
        return LimiterState(
            limit=limit, remaining=max(0, window.remaining), reset_after_s=window.ends_at - now,
            throttled=self._throttled, sharing="shared",
        )  # fmt: skip

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
        blank = not refused and says_nothing(status, info)
        if self._shared and (permit.shared or refused):
            if refused:
                log.warning(
                    "%s: upstream answered 429; pausing the key for every replica for %.1f s",
                    self.name, info.reset_s if info.reset_s is not None else self._config.pause_s,
                )  # fmt: skip
            self._spawn(self._observe_shared(permit, info, refused, blank))
        else:
            now = asyncio.get_running_loop().time()
            self._local.observe(permit, now, info, throttled=refused, blank=blank)
        self._kick()

    def release(self, permit: Permit) -> None:
        """The call is over (answered or not)."""
        if not permit.shared:
            self._local.release(permit)
        elif permit.probe and not permit.answered and self._shared:
            # A probe without an answer: let another go now rather than when its lease ends.
            self._spawn(self._give_back(permit, call=False))
        self._kick()

    def still_open(self, permit: Permit) -> bool:
        """Whether ``permit``'s call may still be sent now: its window (as last seen) has not
        rolled, nor reached the pause before its end."""
        now = asyncio.get_running_loop().time()
        if not permit.shared:
            model = self._local
            model.roll(now)
            return not permit.counted or (permit.epoch == model.epoch and not model.closed(now))
        window = self._redis.window
        if not permit.counted or window is None or window.ends_at is None:
            return True
        soft_at = window.soft_at
        closed = soft_at is not None and soft_at - self._config.margin_s <= now
        return window.epoch == permit.epoch and now < window.ends_at and not closed

    def hand_back(self, permit: Permit) -> None:
        """Give back a call granted and never sent; the permit is released with it."""
        self._hand_back(permit)

    async def join(self) -> None:
        """Join the window's members now, in use for the next two windows (heartbeats)."""
        self._members.used()
        if self._shared:
            await self._members.beat()

    async def flush(self) -> None:
        """Wait until what this replica reported (answers, calls handed back) reached Redis."""
        if self._pending:
            await asyncio.wait(list(self._pending))

    async def aclose(self) -> None:
        """Stop the background work, settle what this replica told Redis, leave the members,
        refuse whoever is still waiting."""
        self._closing = True  # the loops stop even if a Redis command swallows a cancellation
        await self._members.stop()
        for task in (self._dispatcher, self._reconnecting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush()
        if self._shared:
            if self._registered:  # withdraw the waiters first: an acquire joins the members
                with contextlib.suppress(*_UNAVAILABLE):
                    await self._redis.acquire(Priority.URGENT, (0,) * len(Priority))
            with contextlib.suppress(*_UNAVAILABLE):
                await self._redis.leave()
        while (waiter := self._queue.pop()) is not None:
            self._queue.reject(waiter, None)

    # --- the dispatcher: one per replica and limiter, alive while callers wait --------------

    def _kick(self) -> None:
        self._wake.set()
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        self._members.start()
        if self._queue and (self._dispatcher is None or self._dispatcher.done()):
            self._dispatcher = loop.create_task(self._dispatch())

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            head = self._queue.head()
            if head is None:
                if not (self._registered and self._shared):
                    return
                with contextlib.suppress(*_UNAVAILABLE):  # withdraw this replica's waiters
                    await self._redis.acquire(Priority.URGENT, (0,) * len(Priority))
                self._registered = False
                continue
            self._wake.clear()
            await self.flush()  # this replica's answers reach the window before it asks
            permits, wait = await self._decide(Priority(head.priority))
            now = loop.time()
            if permits:
                self._members.used()
            for permit in permits:
                waiter = self._queue.pop()
                if waiter is None:
                    self._hand_back(permit)
                else:
                    waiter.future.set_result(permit)
            self._sweep(now)
            if permits:
                continue
            timeout = min(max(wait, self._config.poll_s / 4), self._queue.next_deadline() - now)
            if self._registered and self._shared:
                timeout = min(timeout, self._config.heartbeat_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, timeout) if timeout < 1e9 else None):
                    await self._wake.wait()

    async def _decide(self, priority: Priority) -> tuple[list[Permit], float]:
        """Ask for calls for the waiters at ``priority``: the permits granted, or how long to
        wait."""
        counts = self._queue.counts()
        if self._shared:
            try:
                permits, wait = await self._redis.acquire(priority, counts)
            except _UNAVAILABLE as exc:
                self._degrade(exc)
            else:
                self._registered = any(counts)
                return permits, wait
        now = asyncio.get_running_loop().time()
        if now < self._spend_from:  # the others do not hold this replica's share aside yet
            return [], self._spend_from - now
        model = self._local
        model.roll(now)
        permits = []
        while len(permits) < counts[priority] and model.can_send(now):
            permits.append(model.grant(now))
        if self._metrics is not None:
            self._metrics.limiter_remaining.labels(self.name).set(model.remaining)
        wake_at = model.wake_at(now)
        return permits, (wake_at - now if wake_at is not None else float("inf"))

    def _sweep(self, now: float) -> None:
        window = self._redis.window
        if not self._shared:
            model, start = self._local, self._spend_from
            self._queue.sweep(
                lambda position, _: max(start, model.eta(position, now)), model.reset_after(now)
            )
        elif window is None:
            self._queue.sweep(lambda _position, _waiter: now, None)
        else:
            reset_after = None if window.ends_at is None else max(0.0, window.ends_at - now)
            self._queue.sweep(
                lambda position, waiter: self._redis.eta(window, position, waiter, now),
                reset_after,
            )

    # --- Redis ---------------------------------------------------------------------------------

    async def _observe_shared(
        self, permit: Permit, info: RateHeaders, refused: bool, blank: bool
    ) -> None:
        try:
            await self._redis.observe(permit, info, refused, blank=blank)
        except _UNAVAILABLE as exc:
            self._degrade(exc)
            now = asyncio.get_running_loop().time()
            self._local.observe(permit, now, info, throttled=refused, blank=blank)
        self._kick()

    async def _give_back(self, permit: Permit, *, call: bool) -> None:
        with contextlib.suppress(*_UNAVAILABLE):
            await self._redis.hand_back(permit, call=call)
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

    def _fallback(self, now: float) -> ShareModel:
        c, window = self._config, self._redis.window
        epoch, taken = self._redis.mine
        return local_share(
            self.name, window, taken if window is not None and window.epoch == epoch else 0, now,
            replicas=c.replicas, limit=c.limit, window_s=c.window_s, margin_s=c.margin_s,
            min_interval_s=c.min_interval_s, pause_s=c.pause_s,
        )  # fmt: skip

    def _degrade(self, exc: BaseException) -> None:
        if not self._shared:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._shared = False
        self._registered = False
        self._local = self._fallback(now)
        joined, c = self._redis.joined, self._config
        self._spend_from = spend_from(joined, c.lapse_s, now)
        until = held_until(joined, c.lapse_s, c.expiry_s)
        window = self._redis.window
        log.warning(
            "%s: Redis is unreachable (%s: %s); until it answers again this replica takes at "
            "most %d calls a window (its share of %d, assuming %d replicas), %s",
            self.name, type(exc).__name__, exc, self._local.limit,
            window.limit if window is not None else c.limit, c.replicas,
            "at once (not a member of the window: the others do not hold it aside)"
            if until is None else f"in {self._spend_from - now:.1f} s, when the others hold it "
            f"aside (for {max(0.0, until - now):.0f} s; then their calls and its may add up)",
        )  # fmt: skip
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._shared and not self._closing:
            await asyncio.sleep(self._retry_s)
            try:
                async with asyncio.timeout(self._config.timeout_s):
                    await self._redis.redis.ping()
                paused_for = self._local.paused_for(asyncio.get_running_loop().time())
                margin_s = self._config.margin_s
                await self._redis.rejoin(
                    None if paused_for is None else max(0.0, paused_for - margin_s)
                )
            except _UNAVAILABLE:
                continue
            self._shared = True
            log.warning("%s: Redis answers again; the window is shared again", self.name)
            self._members.start(anyway=True)  # rejoined: it beats, or leaves if idle
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
