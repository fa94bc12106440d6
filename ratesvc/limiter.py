"""One rate limiter per upstream credential, fed by the upstream's rate-limit headers.

ShipStation allows ``limit`` calls per fixed window (40 per 60 s) per key pair, across every
client of that key, and reports ``X-Rate-Limit-Limit / -Remaining / -Reset`` on each answer.
:class:`RateLimiter` is shared by every request of an account and decides who may send when:

* **Never over the window.** Each window starts with ``limit`` tokens; each call takes one.
  The window end comes from ``X-Rate-Limit-Reset`` plus a small safety margin; when a window ends
  without word from upstream, the next one is assumed to end a whole window later (never earlier
  than the truth).
* **Headers win.** A changed ``X-Rate-Limit-Limit`` (partner keys get 100) is adopted at once.
  ``Remaining`` is trusted when no other call of ours is in flight (then it is unambiguous), so
  calls made by other programs on the same key are noticed; a ``Remaining: 0`` waits for the reset.
* **Probing when unsure.** At start-up, and after any 429, a single call goes first; the others
  wait for its headers. So a key exhausted by someone else costs one 429 per window, not a burst.
* **A 429 pauses the whole key** until the reset it announces: every queued caller waits at the
  limiter, none retries on its own.
* **Priorities.** Waiters are served by :class:`Priority` then arrival: a label purchase never
  waits behind queued quotes.
* **Deadlines.** A waiter whose turn cannot come before its deadline is refused at once with
  :class:`~ratesvc.errors.UpstreamThrottled` instead of sleeping past it. The estimate is redone
  whenever the queue changes, so a waiter pushed back by urgent calls is refused as soon as that
  is known.
* **Cancellation wins.** A waiter cancelled in the same tick as it is refused gets
  ``CancelledError``, not the refusal; one cancelled as it is granted hands its call and its
  pacing slot back to the next waiter. A cancelled waiter leaves the queue at once.

Times are ``loop.time()`` seconds, the clock ``asyncio.timeout_at`` uses.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import IntEnum

from ratesvc.errors import UpstreamThrottled
from ratesvc.metrics import Metrics

log = logging.getLogger(__name__)

HEADER_LIMIT = "X-Rate-Limit-Limit"
HEADER_REMAINING = "X-Rate-Limit-Remaining"
HEADER_RESET = "X-Rate-Limit-Reset"


class Priority(IntEnum):
    """Lower is served first."""

    URGENT = 0  # label purchase, void, reconciliation of a purchase
    NORMAL = 1  # rate quotes, carrier catalogue asked for by a client
    BACKGROUND = 2  # catalogue refresh


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    deadline: float = field(compare=False)
    future: asyncio.Future[Permit] = field(compare=False)


@dataclass
class Permit:
    """Leave to send one call. Report its answer with :meth:`RateLimiter.observe`."""

    epoch: int
    probe: bool
    answered: bool = False
    counted: bool = False  # took one of the window's calls
    paced_from: float = 0.0  # the pacing slot before this grant, and after it
    paced_until: float = 0.0


@dataclass(frozen=True)
class LimiterState:
    """What an operator sees of a limiter: the window's ``limit``, the calls ``remaining`` in it,
    seconds until it resets (None: unknown) and the rate-limit refusals seen since start."""

    limit: int
    remaining: int
    reset_after_s: float | None
    throttled: int


@dataclass(frozen=True)
class RateHeaders:
    limit: int | None
    remaining: int | None
    reset_s: float | None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders:
        def number(name: str) -> float | None:
            raw = headers.get(name)
            if raw is None:
                return None
            try:
                value = float(raw)
            except ValueError:
                return None
            return value if value >= 0 else None

        limit, remaining = number(HEADER_LIMIT), number(HEADER_REMAINING)
        return cls(
            limit=int(limit) if limit else None,
            remaining=int(remaining) if remaining is not None else None,
            reset_s=number(HEADER_RESET),
        )


class RateLimiter:
    """Admission control for one upstream credential (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        limit: int,
        window_s: float,
        margin_s: float | None = None,
        min_interval_s: float = 0.0,
        throttle_pause_s: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``min_interval_s`` paces calls (Cin7 Core: about one a second, whatever the window);
        ``throttle_pause_s`` is how long a refusal without a reset time pauses the key."""
        self.name = name
        self._limit = limit
        self._window_s = window_s
        self._min_interval_s = min_interval_s
        self._throttle_pause_s = throttle_pause_s if throttle_pause_s is not None else window_s
        self._next_slot = 0.0
        # Reset headers are whole seconds at ShipStation: allow for truncation, but keep short
        # test windows usable.
        self._margin_s = margin_s if margin_s is not None else min(1.0, window_s * 0.05)
        self._metrics = metrics
        self._remaining = 0
        self._reset_at: float | None = None  # None: nothing known yet
        self._probing = True
        self._probe_in_flight = False
        self._epoch = 0
        self._in_flight = 0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._throttled = 0

    # --- public surface ------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def remaining(self) -> int:
        return self._remaining

    def state(self) -> LimiterState:
        """The window as it stands (read-only: a window that ended is shown as a fresh one, and
        one never heard of as full)."""
        now = asyncio.get_running_loop().time()
        if self._reset_at is None or now >= self._reset_at:
            return LimiterState(limit=self._limit, remaining=self._limit, reset_after_s=None,
                                throttled=self._throttled)  # fmt: skip
        return LimiterState(
            limit=self._limit, remaining=max(0, self._remaining),
            reset_after_s=self._reset_at - now, throttled=self._throttled,
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
        now = loop.time()
        waiter = _Waiter(
            priority=int(priority),
            seq=next(self._seq),
            deadline=deadline if deadline is not None else float("inf"),
            future=loop.create_future(),
        )
        heapq.heappush(self._waiters, waiter)
        self._pump()
        try:
            permit = await waiter.future
        except asyncio.CancelledError:
            # Granted or refused in the same tick the caller gave up: the cancellation wins; a
            # granted call was never sent, so its turn goes to the next waiter.
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                self._return_unused(future.result())
            self._pump()
            raise
        if self._metrics is not None:
            self._metrics.limiter_wait.labels(self.name, priority.name.lower()).observe(
                loop.time() - now
            )
        return permit

    def observe(
        self,
        permit: Permit,
        status: int,
        headers: Mapping[str, str],
        *,
        throttled: bool | None = None,
    ) -> None:
        """Feed the limiter what upstream said about its limits in answer to ``permit``'s call.

        ``throttled`` says the answer was a rate-limit refusal (default: the status is 429; Cin7
        Core also refuses with 503 or a 400 whose text says so).
        """
        permit.answered = True
        now = asyncio.get_running_loop().time()
        info = RateHeaders.parse(headers)
        if status == 429 if throttled is None else throttled:
            self._on_throttled(now, info)
        elif permit.epoch == self._epoch:
            self._adopt(now, info, alone=self._in_flight == 1)
        self._pump()

    def release(self, permit: Permit) -> None:
        """The call is over (answered or not)."""
        self._in_flight -= 1
        if permit.probe:
            self._probe_in_flight = False
        self._pump()

    # --- the model ----------------------------------------------------------------------------

    def _on_throttled(self, now: float, info: RateHeaders) -> None:
        reset_s = info.reset_s if info.reset_s is not None else self._throttle_pause_s
        log.warning("%s: upstream answered 429; pausing the key for %.1f s", self.name, reset_s)
        self._throttled += 1
        if self._metrics is not None:
            self._metrics.limiter_throttled.labels(self.name).inc()
        if info.limit:
            self._limit = info.limit
        self._epoch += 1  # answers to calls sent before this one no longer describe the window
        self._remaining = 0
        self._reset_at = now + reset_s + self._margin_s
        self._probing = True

    def _adopt(self, now: float, info: RateHeaders, *, alone: bool) -> None:
        if info.limit is not None and info.limit != self._limit:
            log.info(
                "%s: upstream limit is %d per window (was %d)", self.name, info.limit, self._limit
            )
            self._remaining = max(0, self._remaining + info.limit - self._limit)
            self._limit = info.limit
        if info.remaining is not None and (alone or self._probing):
            if self._probing:
                self._remaining = info.remaining
            elif info.remaining < self._remaining:
                log.info(
                    "%s: upstream reports %d calls left, %d expected: another client uses the key",
                    self.name, info.remaining, self._remaining,
                )  # fmt: skip
                self._remaining = info.remaining
        if info.reset_s is not None:
            self._reset_at = now + info.reset_s + self._margin_s
        elif self._reset_at is None:
            # An answer without rate headers: fall back to counting calls ourselves.
            self._reset_at = now + self._window_s + self._margin_s
            self._remaining = max(0, self._limit - self._in_flight)
        self._probing = False

    def _rollover(self, now: float) -> None:
        self._epoch += 1
        self._remaining = self._limit
        self._reset_at = now + self._window_s + self._margin_s

    def _can_send(self, now: float) -> bool:
        if now < self._next_slot:
            return False
        if self._probing:
            return not self._probe_in_flight and (self._reset_at is None or self._remaining > 0)
        return self._remaining > 0

    def _grant(self, waiter: _Waiter, now: float) -> None:
        permit = Permit(
            epoch=self._epoch, probe=self._probing, counted=self._reset_at is not None,
            paced_from=self._next_slot, paced_until=now + self._min_interval_s,
        )  # fmt: skip
        self._next_slot = permit.paced_until
        if permit.probe:
            self._probe_in_flight = True
        if permit.counted:
            self._remaining -= 1
        self._in_flight += 1
        waiter.future.set_result(permit)

    def _return_unused(self, permit: Permit) -> None:
        """Undo the grant of a call never sent: its window call and (if no grant followed) its
        pacing slot are free again."""
        if permit.counted and permit.epoch == self._epoch:
            self._remaining += 1
        if self._next_slot == permit.paced_until:
            self._next_slot = permit.paced_from
        self.release(permit)

    def _eta(self, position: int, now: float) -> float:
        """Earliest time the waiter at ``position`` in the queue could be sent."""
        paced = max(now, self._next_slot) + position * self._min_interval_s
        if self._reset_at is None:
            return paced
        available = self._remaining if now < self._reset_at else self._limit
        if position < available:
            return paced
        windows_later = (position - available) // max(1, self._limit)
        return max(paced, self._reset_at + windows_later * (self._window_s + self._margin_s))

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._reset_at is not None and now >= self._reset_at:
            self._rollover(now)
        while self._waiters and self._can_send(now):
            waiter = heapq.heappop(self._waiters)
            if not waiter.future.done():
                self._grant(waiter, now)
        live = sorted(w for w in self._waiters if not w.future.done())
        kept: list[_Waiter] = []
        for waiter in live:
            eta = self._eta(len(kept), now)
            if eta > waiter.deadline:
                self._reject(waiter, now)
            else:
                kept.append(waiter)
        self._waiters = kept  # sorted, hence a valid heap
        if self._metrics is not None:
            self._metrics.limiter_remaining.labels(self.name).set(self._remaining)
        self._schedule(loop, now)

    def _reject(self, waiter: _Waiter, now: float) -> None:
        reset_after = None if self._reset_at is None else max(0.0, self._reset_at - now)
        if self._metrics is not None:
            self._metrics.limiter_rejected.labels(
                self.name, Priority(waiter.priority).name.lower()
            ).inc()
        waiter.future.set_exception(
            UpstreamThrottled(
                f"{self.name}: the rate limit leaves no room before the deadline"
                + (f" (window resets in {reset_after:.1f} s)" if reset_after is not None else ""),
                reset_after_s=reset_after,
            )
        )

    def _schedule(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """Set the timer for the next moment the queue can move, judged at the same ``now`` the
        pump judged it (a second clock read could fall past a pacing slot the pump found
        closed, and the waiter would sleep until the window's end)."""
        wake_at = None
        if self._waiters:
            if self._next_slot > now:
                wake_at = self._next_slot
            if self._reset_at is not None and self._remaining <= 0:
                wake_at = max(wake_at or 0.0, self._reset_at)
            elif self._reset_at is not None and wake_at is None:
                wake_at = self._reset_at
        if wake_at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = wake_at
        if wake_at is not None:
            self._timer = loop.call_at(wake_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._pump()
