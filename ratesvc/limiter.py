"""One rate limiter per upstream credential, fed by the upstream's rate-limit headers.

ShipStation allows ``limit`` calls per fixed window (40 per 60 s) per key pair, across every
client of that key, and reports ``X-Rate-Limit-Limit / -Remaining / -Reset`` on each answer.
:class:`RateLimiter` is shared by every request of an account and decides who may send when:

* **Never over the window.** Each window starts with ``limit`` tokens; each call takes one.
  An answer's ``X-Rate-Limit-Reset`` bounds when upstream's window ends: not before the call
  was *granted* plus Reset (less the header's rounding: a whole second for ``59``, a
  millisecond for ``0.059``), and not after the answer *arrived* plus Reset plus a small safety
  margin. The window ends at the latest bound (answers of one window only ever move it later);
  between the earliest bound (less the margin, the time a granted call may take to reach
  upstream) and the latest, **nothing is granted**: a call sent there could land in upstream's
  next window while counted in this one, and the next window would then be granted in full on
  top of it. So every call of a window lands in one upstream window. When a window ends, the
  next is assumed to end a whole window later, its earliest bound a whole window after this
  one's; if the limiter was idle past that bound it knows nothing of where upstream's window
  stands, so the next window starts with a probe. An upstream that never sends a Reset (Cin7
  Core) is counted from its first answer, without that pause.
* **Headers win.** A changed ``X-Rate-Limit-Limit`` (partner keys get 100) is adopted at once.
  ``Remaining`` is trusted when no other call of ours is in flight (then it is unambiguous), so
  calls made by other programs on the same key are noticed; a ``Remaining: 0`` waits for the reset.
* **Probing when unsure.** At start-up, after any 429 and after an idle stretch (above), a
  single call goes first; the others wait for its headers. So a key exhausted by someone else
  costs one 429 per window, not a burst.
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

The window is modelled by :class:`WindowModel` and the callers wait in a :class:`WaitQueue`; the
limiter shared by replicas through Redis (:mod:`ratesvc.storage.shared_limiter`) reuses both.
Anything with :class:`Limiter`'s surface can stand in for :class:`RateLimiter`.

Times are ``loop.time()`` seconds, the clock ``asyncio.timeout_at`` uses.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal, Protocol

from ratesvc.errors import UpstreamThrottled
from ratesvc.metrics import Metrics

log = logging.getLogger(__name__)

HEADER_LIMIT = "X-Rate-Limit-Limit"
HEADER_REMAINING = "X-Rate-Limit-Remaining"
HEADER_RESET = "X-Rate-Limit-Reset"
MAX_CALLS = 1_000_000  # a Limit or Remaining above this is no usable number: ignored
MAX_RESET_S = 86_400.0  # so is a Reset beyond a day

Sharing = Literal["local", "shared", "degraded"]


class Priority(IntEnum):
    """Lower is served first."""

    URGENT = 0  # label purchase, void, reconciliation of a purchase
    NORMAL = 1  # rate quotes, carrier catalogue asked for by a client
    BACKGROUND = 2  # catalogue refresh


@dataclass(order=True)
class Waiter:
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
    shared: bool = False  # granted by a window kept in Redis (its times are Redis's clock)
    lease: int = 0  # shared probes: the probe's lease, handed back when it goes unanswered
    # when it was granted: loop.time(), or Redis's TIME in microseconds when ``shared``
    granted_at: float = 0.0


@dataclass(frozen=True)
class LimiterState:
    """What an operator sees of a limiter: the window's ``limit``, the calls ``remaining`` in it,
    seconds until it resets (None: unknown), the rate-limit refusals seen since start, and
    whether the window is this process's own (``local``), kept in Redis for every replica
    (``shared``), or a local share of it because Redis cannot be reached (``degraded``)."""

    limit: int
    remaining: int
    reset_after_s: float | None
    throttled: int
    sharing: Sharing = "local"


@dataclass(frozen=True)
class RateHeaders:
    """An answer's ``X-Rate-Limit-*`` headers; None where absent or no usable number."""

    limit: int | None
    remaining: int | None
    reset_s: float | None
    reset_unit_s: float = 1.0  # the Reset's rounding: its last digit's worth (1 s for "59")

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders:
        """Upstream input: a value that is not a finite number from 0 to a sane bound (a
        million calls, a day) is ignored, never raised about."""

        def number(name: str, highest: float) -> float | None:
            raw = headers.get(name)
            if raw is None:
                return None
            try:
                value = float(raw)
            except ValueError:
                return None
            return value if math.isfinite(value) and 0 <= value <= highest else None

        limit = number(HEADER_LIMIT, MAX_CALLS)
        remaining = number(HEADER_REMAINING, MAX_CALLS)
        reset_s = number(HEADER_RESET, MAX_RESET_S)
        return cls(
            limit=int(limit) if limit is not None and limit >= 1 else None,
            remaining=int(remaining) if remaining is not None else None,
            reset_s=reset_s,
            reset_unit_s=_resolution(headers.get(HEADER_RESET, "")) if reset_s is not None else 1.0,
        )


def says_nothing(status: int, info: RateHeaders) -> bool:
    """Whether an answer tells nothing of the window: a server error without rate headers (it
    may never have reached the rate limiter)."""
    return status >= 500 and info.limit is None and info.remaining is None and info.reset_s is None


def _resolution(raw: str) -> float:
    """What the last digit of a decimal number is worth: 1 for ``59``, 0.001 for ``0.059``
    (at least a microsecond); 1 for anything less plain."""
    whole, dot, fraction = raw.strip().partition(".")
    if dot and fraction.isdigit() and (whole.isdigit() or not whole):
        return max(1e-6, 10.0 ** -len(fraction))
    return 1.0


class Limiter(Protocol):
    """The surface the upstream clients and ``/v1/status`` use: :class:`RateLimiter` and
    :class:`~ratesvc.storage.shared_limiter.SharedRateLimiter` both have it."""

    @property
    def name(self) -> str: ...

    @property
    def limit(self) -> int: ...

    @property
    def remaining(self) -> int: ...

    def state(self) -> LimiterState: ...

    async def acquire(self, priority: Priority, deadline: float | None) -> Permit: ...

    def observe(
        self,
        permit: Permit,
        status: int,
        headers: Mapping[str, str],
        *,
        throttled: bool | None = None,
    ) -> None: ...

    def release(self, permit: Permit) -> None: ...

    def still_open(self, permit: Permit) -> bool: ...

    def hand_back(self, permit: Permit) -> None: ...

    async def aclose(self) -> None: ...


@asynccontextmanager
async def turn(
    limiter: Limiter, priority: Priority, deadline: float | None
) -> AsyncIterator[Permit]:
    """Wait for a turn of ``limiter``, yield the permit for one call, then give it back (the
    service calls ``acquire`` and ``release`` itself: no context manager on the hot path)."""
    permit = await limiter.acquire(priority, deadline)
    try:
        yield permit
    finally:
        limiter.release(permit)


class WaitQueue:
    """The callers waiting for a turn, best first (:class:`Priority`, then arrival), and what
    happens to one that leaves or cannot be served before its deadline."""

    def __init__(self, name: str, metrics: Metrics | None) -> None:
        self._name = name
        self._metrics = metrics
        self._heap: list[Waiter] = []
        self._seq = itertools.count()
        self._wait_series: dict[Priority, Any] = {}  # one labelled series per priority, kept

    def push(self, priority: Priority, deadline: float | None) -> Waiter:
        waiter = Waiter(
            priority=int(priority),
            seq=next(self._seq),
            deadline=deadline if deadline is not None else float("inf"),
            future=asyncio.get_running_loop().create_future(),
        )
        heapq.heappush(self._heap, waiter)
        return waiter

    async def turn(
        self, waiter: Waiter, *, hand_back: Callable[[Permit], None], moved: Callable[[], None]
    ) -> Permit:
        """Wait for ``waiter``'s permit. Granted or refused in the same tick the caller gave up:
        the cancellation wins; a granted call was never sent, so it goes to ``hand_back``."""
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                hand_back(future.result())
            moved()
            raise

    def waited(self, priority: Priority, seconds: float) -> None:
        if self._metrics is not None:
            series = self._wait_series.get(priority)
            if series is None:
                series = self._wait_series[priority] = self._metrics.limiter_wait.labels(
                    self._name, priority.name.lower()
                )
            series.observe(seconds)

    def head(self) -> Waiter | None:
        """The best waiter still waiting (those that left are dropped on the way)."""
        while self._heap and self._heap[0].future.done():
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    def pop(self) -> Waiter | None:
        waiter = self.head()
        if waiter is not None:
            heapq.heappop(self._heap)
        return waiter

    def counts(self) -> tuple[int, ...]:
        """Waiters still waiting, by priority."""
        counts = [0] * len(Priority)
        for waiter in self._heap:
            if not waiter.future.done():
                counts[waiter.priority] += 1
        return tuple(counts)

    def next_deadline(self) -> float:
        return min((w.deadline for w in self._heap if not w.future.done()), default=float("inf"))

    def sweep(self, eta: Callable[[int, Waiter], float], reset_after_s: float | None) -> None:
        """Refuse every waiter whose turn, ``eta(position, waiter)``, comes after its deadline;
        the position counts the waiters kept ahead of it."""
        live = sorted(w for w in self._heap if not w.future.done())
        kept: list[Waiter] = []
        for waiter in live:
            if eta(len(kept), waiter) > waiter.deadline:
                self.reject(waiter, reset_after_s)
            else:
                kept.append(waiter)
        self._heap = kept  # sorted, hence a valid heap

    def reject(self, waiter: Waiter, reset_after_s: float | None) -> None:
        if self._metrics is not None:
            self._metrics.limiter_rejected.labels(
                self._name, Priority(waiter.priority).name.lower()
            ).inc()
        waiter.future.set_exception(
            UpstreamThrottled(
                f"{self._name}: the rate limit leaves no room before the deadline"
                + (
                    f" (window resets in {reset_after_s:.1f} s)"
                    if reset_after_s is not None
                    else ""
                ),
                reset_after_s=reset_after_s,
            )
        )

    def __bool__(self) -> bool:
        return self.head() is not None


class WindowModel:
    """What one process knows of a fixed window: the calls left, when it resets, whether it
    must probe, the pacing slot (see the module docstring). Pure state, no clock of its own.

    ``reset_at`` is the latest upstream's window can end (the window rolls then); ``soft_end``
    the earliest (None: no Reset heard, no pause before the end); ``heard`` says whether an
    answer of this window set ``reset_at`` (else it is the roll's assumption, which the first
    answer replaces)."""

    def __init__(
        self,
        name: str,
        *,
        limit: int,
        window_s: float,
        margin_s: float,
        min_interval_s: float,
        throttle_pause_s: float,
    ) -> None:
        self.name = name
        self.limit = limit
        self.window_s = window_s
        self.margin_s = margin_s
        self.min_interval_s = min_interval_s
        self.throttle_pause_s = throttle_pause_s
        self.next_slot = 0.0
        self.remaining = 0
        self.reset_at: float | None = None  # None: nothing known yet
        self.soft_end: float | None = None
        self.heard = False
        self.opened = False  # a call was granted since the window rolled
        self.probing = True
        self.probe_in_flight = False
        self.epoch = 0
        self.in_flight = 0

    def observe(
        self, permit: Permit, now: float, info: RateHeaders, *, throttled: bool, blank: bool = False
    ) -> None:
        """Take in the answer to ``permit``'s call (``blank``: it says nothing of the window, a
        server error without rate headers; a probe answered so learned nothing, and the next
        call probes again)."""
        # A shared permit's grant time is Redis's clock: no bound can be drawn from it here.
        sent_at = None if permit.shared else permit.granted_at
        if throttled:
            self.throttle(now, info, sent_at=sent_at)
        elif blank and self.probing:
            pass
        elif permit.epoch == self.epoch and not permit.shared:
            self.adopt(now, info, alone=self.in_flight == 1, sent_at=sent_at)

    def throttle(self, now: float, info: RateHeaders, *, sent_at: float | None = None) -> None:
        reset_s = info.reset_s if info.reset_s is not None else self.throttle_pause_s
        log.warning("%s: upstream answered 429; pausing the key for %.1f s", self.name, reset_s)
        if info.limit:
            self.limit = info.limit
        self.epoch += 1  # answers to calls sent before this one no longer describe the window
        self.remaining = 0
        if info.reset_s is None:
            self.reset_at = now + reset_s + self.margin_s
            self.soft_end = None
        else:
            self.reset_at = now + reset_s + max(self.margin_s, info.reset_unit_s)
            self.soft_end = None if sent_at is None else sent_at + reset_s - info.reset_unit_s
        self.heard = True
        self.probing = True

    def adopt(
        self, now: float, info: RateHeaders, *, alone: bool, sent_at: float | None = None
    ) -> None:
        """Take in an answer to a call of this window, granted at ``sent_at`` (None: unknown)."""
        if info.limit is not None and info.limit != self.limit:
            log.info(
                "%s: upstream limit is %d per window (was %d)", self.name, info.limit, self.limit
            )
            self.remaining = max(0, self.remaining + info.limit - self.limit)
            self.limit = info.limit
        if info.remaining is not None and (alone or self.probing):
            if self.probing:
                self.remaining = info.remaining
            elif info.remaining < self.remaining:
                log.info(
                    "%s: upstream reports %d calls left, %d expected: another client uses the key",
                    self.name, info.remaining, self.remaining,
                )  # fmt: skip
                self.remaining = info.remaining
        if info.reset_s is not None:
            self.bound(now, info.reset_s, info.reset_unit_s, sent_at)
        elif self.reset_at is None:
            # An answer without rate headers: fall back to counting calls ourselves.
            self.reset_at = now + self.window_s + self.margin_s
            self.remaining = max(0, self.limit - self.in_flight)
        self.probing = False

    def bound(self, now: float, reset_s: float, unit_s: float, sent_at: float | None) -> None:
        """Narrow the window's end by an answer arriving ``now``: upstream measured ``reset_s``
        (rounded to ``unit_s``) between granting the call (``sent_at``) and ``now``."""
        latest = now + reset_s + max(self.margin_s, unit_s)
        if self.heard and self.reset_at is not None:
            latest = max(latest, self.reset_at)  # a late answer never ends the window early
        self.reset_at = latest
        self.heard = True
        if sent_at is not None:
            earliest = sent_at + reset_s - unit_s
            if self.soft_end is None or self.soft_end > latest:
                self.soft_end = earliest  # the roll's assumption proved wrong: evidence wins
            else:
                self.soft_end = max(self.soft_end, earliest)

    def roll(self, now: float) -> None:
        """Start the next window if this one is over.

        With both bounds known, the next window's lie a whole window later, and the first call
        granted in it moves the latest to its grant plus a window and the margin (:meth:`grant`:
        an upstream whose window starts with its first call). Rolling moves both bounds by the
        same window, however late it comes: were the latest set from the time of the roll,
        every window rolled without an answer would widen the pause between the bounds by the
        margin and the roll's lateness, until it covered the whole window. Idle past the next
        earliest bound, nothing is known: the next window starts with a probe. Without a Reset
        ever heard, the window is counted from ``now``."""
        if self.reset_at is not None and now >= self.reset_at:
            self.epoch += 1
            self.remaining = self.limit
            self.heard = False
            self.opened = False
            if self.soft_end is not None and self.soft_end + self.window_s - self.margin_s > now:
                self.soft_end += self.window_s
                self.reset_at += self.window_s
                return
            if self.soft_end is not None:  # idle past where upstream's next window may end
                self.soft_end = None
                self.probing = True
            self.reset_at = now + self.window_s + self.margin_s

    def closed(self, moment: float) -> bool:
        """Whether ``moment`` falls between the earliest (less the margin) and the latest time
        upstream's window can end: a call sent then may land in the next one."""
        return (
            self.soft_end is not None
            and self.reset_at is not None
            and self.soft_end - self.margin_s <= moment < self.reset_at
        )

    def can_send(self, now: float) -> bool:
        if now < self.next_slot or self.closed(now):
            return False
        if self.probing:
            return not self.probe_in_flight and (self.reset_at is None or self.remaining > 0)
        return self.remaining > 0

    def grant(self, now: float) -> Permit:
        permit = Permit(
            epoch=self.epoch, probe=self.probing, counted=self.reset_at is not None,
            paced_from=self.next_slot, paced_until=now + self.min_interval_s, granted_at=now,
        )  # fmt: skip
        self.next_slot = permit.paced_until
        if permit.counted and not self.heard and not self.opened and self.reset_at is not None:
            # the window's first call may start upstream's: it ends a window after it arrives
            self.reset_at = max(self.reset_at, now + self.window_s + self.margin_s)
        self.opened = True
        if permit.probe:
            self.probe_in_flight = True
        if permit.counted:
            self.remaining -= 1
        self.in_flight += 1
        return permit

    def release(self, permit: Permit) -> None:
        self.in_flight -= 1
        if permit.probe:
            self.probe_in_flight = False

    def hand_back(self, permit: Permit) -> None:
        """Undo the grant of a call never sent: its window call and (if no grant followed) its
        pacing slot are free again."""
        if permit.counted and permit.epoch == self.epoch:
            self.remaining += 1
        if self.next_slot == permit.paced_until:
            self.next_slot = permit.paced_from
        self.release(permit)

    def eta(self, position: int, now: float) -> float:
        """Earliest time the waiter at ``position`` in the queue could be sent."""
        paced = max(now, self.next_slot) + position * self.min_interval_s
        if self.reset_at is None:
            return paced
        fresh = now >= self.reset_at
        available = self.remaining if not fresh else self.limit
        if position < available:
            return self.reset_at if not fresh and self.closed(paced) else paced
        windows_later = (position - available) // max(1, self.limit)
        return max(paced, self.reset_at + windows_later * (self.window_s + self.margin_s))

    def wake_at(self, now: float) -> float | None:
        """The next moment waiters could move, judged at ``now``."""
        wake_at = None
        if self.next_slot > now:
            wake_at = self.next_slot
        if self.reset_at is not None and (
            self.remaining <= 0 or self.closed(max(now, self.next_slot))
        ):
            wake_at = max(wake_at or 0.0, self.reset_at)
        elif self.reset_at is not None and wake_at is None:
            wake_at = self.reset_at
        return wake_at

    def reset_after(self, now: float) -> float | None:
        return None if self.reset_at is None else max(0.0, self.reset_at - now)

    def state(self, now: float, *, throttled: int, sharing: Sharing = "local") -> LimiterState:
        """The window as it stands (read-only: a window that ended is shown as a fresh one, and
        one never heard of as full)."""
        if self.reset_at is None or now >= self.reset_at:
            return LimiterState(limit=self.limit, remaining=self.limit, reset_after_s=None,
                                throttled=throttled, sharing=sharing)  # fmt: skip
        return LimiterState(
            limit=self.limit, remaining=max(0, self.remaining),
            reset_after_s=self.reset_at - now, throttled=throttled, sharing=sharing,
        )  # fmt: skip


def default_margin(window_s: float) -> float:
    """How late a window's end may be taken to be, and how long a granted call may take to
    reach upstream: a second at ShipStation (whose Reset is whole seconds), less for the short
    windows of tests."""
    return min(1.0, window_s * 0.05)


class RateLimiter:
    """Admission control for one upstream credential, in this process (see the module
    docstring)."""

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
        self._model = WindowModel(
            name,
            limit=limit,
            window_s=window_s,
            margin_s=margin_s if margin_s is not None else default_margin(window_s),
            min_interval_s=min_interval_s,
            throttle_pause_s=throttle_pause_s if throttle_pause_s is not None else window_s,
        )
        self._metrics = metrics
        self._queue = WaitQueue(name, metrics)
        self._remaining_gauge = metrics.limiter_remaining.labels(name) if metrics else None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._throttled = 0

    # --- public surface ------------------------------------------------------------------

    @property
    def limit(self) -> int:
        return self._model.limit

    @property
    def remaining(self) -> int:
        return self._model.remaining

    def state(self) -> LimiterState:
        """The window as it stands (read-only: a window that ended is shown as a fresh one, and
        one never heard of as full)."""
        return self._model.state(asyncio.get_running_loop().time(), throttled=self._throttled)

    async def acquire(self, priority: Priority, deadline: float | None) -> Permit:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self._queue:  # nobody waiting: a free turn is taken at once (no future, no pump)
            model = self._model
            model.roll(now)
            if model.can_send(now):
                permit = model.grant(now)
                if self._remaining_gauge is not None:
                    self._remaining_gauge.set(model.remaining)
                self._schedule(loop, now)
                self._queue.waited(priority, 0.0)
                return permit
        waiter = self._queue.push(priority, deadline)
        self._pump()
        permit = await self._queue.turn(waiter, hand_back=self._return_unused, moved=self._pump)
        self._queue.waited(priority, loop.time() - now)
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
        refused = status == 429 if throttled is None else throttled
        if refused:
            self._throttled += 1
            if self._metrics is not None:
                self._metrics.limiter_throttled.labels(self.name).inc()
        info = RateHeaders.parse(headers)
        blank = says_nothing(status, info)
        self._model.observe(permit, now, info, throttled=refused, blank=blank)
        self._pump()

    def release(self, permit: Permit) -> None:
        """The call is over (answered or not)."""
        self._model.release(permit)
        self._pump()

    def still_open(self, permit: Permit) -> bool:
        """Whether ``permit``'s call may still be sent now: its window has not rolled, nor
        reached the pause before its end (a grant held too long, e.g. by work before the
        send, could land in upstream's next window)."""
        self._pump()  # rolls the window if it is over
        model = self._model
        now = asyncio.get_running_loop().time()
        return not permit.counted or (permit.epoch == model.epoch and not model.closed(now))

    def hand_back(self, permit: Permit) -> None:
        """Give back a call granted and never sent (its window call, its pacing slot); the
        permit is released with it: do not ``release`` it too."""
        self._return_unused(permit)

    async def aclose(self) -> None:
        """Nothing to close: the timer goes with the loop."""

    # --- the pump -----------------------------------------------------------------------------

    def _return_unused(self, permit: Permit) -> None:
        self._model.hand_back(permit)
        self._pump()

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        model = self._model
        model.roll(now)
        while self._queue and model.can_send(now):
            waiter = self._queue.pop()
            if waiter is not None:
                waiter.future.set_result(model.grant(now))
        self._queue.sweep(lambda position, _: model.eta(position, now), model.reset_after(now))
        if self._remaining_gauge is not None:
            self._remaining_gauge.set(model.remaining)
        self._schedule(loop, now)

    def _schedule(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """Set the timer for the next moment the queue can move, judged at the same ``now`` the
        pump judged it (a second clock read could fall past a pacing slot the pump found
        closed, and the waiter would sleep until the window's end)."""
        wake_at = self._model.wake_at(now) if self._queue else None
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
