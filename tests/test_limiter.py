"""The per-key-pair limiter: alone (synthetic headers), against the sandbox's fixed window, and
its window model against a simulated upstream (Hypothesis)."""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratesvc.config import Secret, ShipStationConfig
from ratesvc.errors import UpstreamThrottled
from ratesvc.limiter import (
    Limiter,
    Permit,
    Priority,
    RateHeaders,
    RateLimiter,
    WindowModel,
    default_margin,
)
from ratesvc.models import Address, RateRequest, Weight
from ratesvc.sandbox.knobs import FixedWindow, Knobs
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.upstreams.shipstation.client import ShipStationClient


def headers(limit: int, remaining: int, reset_s: float) -> dict[str, str]:
    return {
        "X-Rate-Limit-Limit": str(limit),
        "X-Rate-Limit-Remaining": str(remaining),
        "X-Rate-Limit-Reset": str(reset_s),
    }


def now() -> float:
    return asyncio.get_running_loop().time()


async def answered(limiter: RateLimiter, permit: Permit, status: int, hdrs: dict[str, str]) -> None:
    limiter.observe(permit, status, hdrs)
    limiter.release(permit)


# --- the model, driven by hand ---------------------------------------------------------------


async def test_the_first_call_probes_alone_and_its_headers_open_the_window() -> None:
    limiter = RateLimiter("t", limit=40, window_s=60)
    probe = await limiter.acquire(Priority.NORMAL, None)
    second = asyncio.create_task(limiter.acquire(Priority.NORMAL, None))
    await asyncio.sleep(0)

    assert probe.probe
    assert not second.done()  # waits for the probe's headers

    await answered(limiter, probe, 200, headers(40, 39, 30))
    permit = await asyncio.wait_for(second, 1)

    assert not permit.probe
    assert limiter.remaining == 38


async def test_a_changed_limit_in_the_headers_is_adopted() -> None:
    limiter = RateLimiter("t", limit=40, window_s=60)
    probe = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, probe, 200, headers(100, 99, 50))  # a partner key

    permits = [await limiter.acquire(Priority.NORMAL, None) for _ in range(99)]

    assert limiter.limit == 100
    assert limiter.remaining == 0
    for permit in permits:
        limiter.release(permit)


async def test_remaining_zero_waits_for_the_reset() -> None:
    limiter = RateLimiter("t", limit=40, window_s=60, margin_s=0.0)
    probe = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, probe, 200, headers(40, 0, 0.2))  # another program used the rest
    started = now()

    permit = await limiter.acquire(Priority.NORMAL, now() + 5)

    assert now() - started >= 0.19
    assert limiter.remaining == 39
    limiter.release(permit)


async def test_urgent_callers_go_before_queued_quotes() -> None:
    limiter = RateLimiter("t", limit=2, window_s=60, margin_s=0.0)
    probe = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, probe, 200, headers(2, 0, 0.1))
    order: list[str] = []

    async def caller(name: str, priority: Priority) -> None:
        permit = await limiter.acquire(priority, None)
        order.append(name)
        await answered(limiter, permit, 200, headers(2, 0, 0.05))

    quotes = [asyncio.create_task(caller(f"quote{i}", Priority.NORMAL)) for i in range(4)]
    await asyncio.sleep(0)
    label = asyncio.create_task(caller("label", Priority.URGENT))
    await asyncio.wait_for(asyncio.gather(*quotes, label), 2)

    assert order[0] == "label"
    assert order[1:3] == ["quote0", "quote1"]


async def test_a_waiter_that_cannot_be_served_before_its_deadline_gives_up_at_once() -> None:
    limiter = RateLimiter("t", limit=40, window_s=60, margin_s=0.0)
    probe = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, probe, 200, headers(40, 0, 20))
    started = time.perf_counter()

    with pytest.raises(UpstreamThrottled) as caught:
        await limiter.acquire(Priority.NORMAL, now() + 2)

    assert time.perf_counter() - started < 1.0  # refused up front, not at the 2 s deadline
    assert caught.value.leg_code == "upstream_throttled"
    assert caught.value.reset_after_s is not None and caught.value.reset_after_s > 19


async def test_a_waiter_pushed_back_by_urgent_calls_is_refused_when_that_is_known() -> None:
    limiter = RateLimiter("t", limit=1, window_s=60, margin_s=0.0)
    probe = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, probe, 200, headers(1, 0, 0.3))
    quote = asyncio.create_task(limiter.acquire(Priority.NORMAL, now() + 0.5))
    await asyncio.sleep(0)
    assert not quote.done()  # one window later is within its deadline

    label = asyncio.create_task(limiter.acquire(Priority.URGENT, None))

    with pytest.raises(UpstreamThrottled):  # refused now, not when its deadline comes
        await asyncio.wait_for(quote, 0.05)
    limiter.release(await label)


async def test_a_429_pauses_the_whole_key_and_the_next_window_starts_with_one_probe() -> None:
    limiter = RateLimiter("t", limit=40, window_s=60, margin_s=0.0)
    probe = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, probe, 200, headers(40, 39, 30))
    first = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, first, 429, headers(40, 0, 0.2))
    waiters = [asyncio.create_task(limiter.acquire(Priority.NORMAL, None)) for _ in range(5)]
    await asyncio.sleep(0.1)
    assert not any(w.done() for w in waiters)  # nobody sends during the pause

    done, pending = await asyncio.wait(waiters, timeout=1, return_when=asyncio.FIRST_COMPLETED)

    assert len(done) == 1  # the probe of the new window
    assert next(iter(done)).result().probe
    await answered(limiter, next(iter(done)).result(), 200, headers(40, 39, 59))
    rest = await asyncio.wait_for(asyncio.gather(*pending), 1)
    assert len(rest) == 4
    for permit in rest:
        limiter.release(permit)


async def test_a_caller_that_leaves_after_being_granted_hands_the_call_back() -> None:
    limiter = RateLimiter("t", limit=40, window_s=60)
    probe = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, probe, 200, headers(40, 10, 30))
    task = asyncio.create_task(limiter.acquire(Priority.NORMAL, None))
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task

    assert limiter.remaining == 10


async def settle() -> None:
    """Let every callback already due run (a few loop iterations, no time passing)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("refused_first", [True, False])
async def test_a_waiter_refused_and_cancelled_in_one_tick_is_cancelled(refused_first: bool) -> None:
    limiter = RateLimiter("t", limit=40, window_s=60, margin_s=0.0)
    probe = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, probe, 200, headers(40, 1, 0.3))
    held = await limiter.acquire(Priority.NORMAL, None)  # the window's last call
    waiter = asyncio.create_task(limiter.acquire(Priority.NORMAL, now() + 5))
    await settle()
    assert not waiter.done()  # its turn comes at the reset, within its deadline

    # The key is paused past that deadline and the caller leaves, before the waiter runs again.
    if refused_first:
        limiter.observe(held, 429, headers(40, 0, 60))
        waiter.cancel()
    else:
        waiter.cancel()
        limiter.observe(held, 429, headers(40, 0, 60))

    with pytest.raises(asyncio.CancelledError):
        await waiter
    limiter.release(held)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    limiter = RateLimiter("t", limit=1, window_s=60, margin_s=0.0)
    probe = await limiter.acquire(Priority.NORMAL, None)
    await answered(limiter, probe, 200, headers(1, 0, 0.2))  # the next call after the reset
    ahead = asyncio.create_task(limiter.acquire(Priority.NORMAL, None))
    await settle()
    ahead.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ahead

    # Second in the queue it would wait a whole window more, past its deadline: refused.
    permit = await asyncio.wait_for(limiter.acquire(Priority.NORMAL, now() + 1), 2)

    assert limiter.remaining == 0
    limiter.release(permit)


async def test_a_waiter_granted_and_cancelled_in_one_tick_hands_its_turn_to_the_next() -> None:
    limiter = RateLimiter("t", limit=40, window_s=60, margin_s=0.0)
    probe = await limiter.acquire(Priority.NORMAL, None)
    leaving = asyncio.create_task(limiter.acquire(Priority.NORMAL, None))
    staying = asyncio.create_task(limiter.acquire(Priority.NORMAL, None))
    await settle()  # both wait for the probe's headers

    limiter.observe(probe, 200, headers(40, 1, 30))  # one call left: the first waiter's
    leaving.cancel()  # granted, and gone in the same tick

    with pytest.raises(asyncio.CancelledError):
        await leaving
    await settle()
    assert staying.done()
    assert limiter.remaining == 0
    limiter.release(staying.result())
    limiter.release(probe)


class ManualClock(asyncio.SelectorEventLoop):
    """An event loop whose clock a test moves forward by hand (timers due then fire at once)."""

    def __init__(self) -> None:
        super().__init__()
        self._offset = 0.0

    def time(self) -> float:
        return super().time() + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds


def test_a_paced_turn_handed_back_unused_goes_to_the_next_waiter_at_once() -> None:
    async def scenario() -> None:
        clock = asyncio.get_running_loop()
        assert isinstance(clock, ManualClock)
        limiter = RateLimiter("t", limit=40, window_s=60, min_interval_s=1.0)
        probe = await limiter.acquire(Priority.NORMAL, None)  # the next call a second later
        limiter.observe(probe, 200, headers(40, 39, 30))
        leaving = asyncio.create_task(limiter.acquire(Priority.NORMAL, None))
        staying = asyncio.create_task(limiter.acquire(Priority.NORMAL, None))
        await settle()
        assert not leaving.done()

        clock.advance(1.0)
        limiter.release(probe)  # the first waiter's turn has come...
        leaving.cancel()  # ...and it leaves in the same tick, without sending anything

        with pytest.raises(asyncio.CancelledError):
            await leaving
        await settle()
        assert staying.done()  # now, not a second later
        assert limiter.remaining == 38
        limiter.release(staying.result())

    with asyncio.Runner(loop_factory=ManualClock) as runner:
        runner.run(scenario())


class RunningClock(asyncio.SelectorEventLoop):
    """An event loop whose clock moves ``step`` seconds on top of real time at every read, so no
    two reads of it agree (a busy machine between two lines of code)."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self._step = step
        self._offset = 0.0

    def time(self) -> float:
        self._offset += self._step
        return super().time() + self._offset


def test_a_waiter_arriving_just_before_its_paced_slot_is_served_at_the_slot() -> None:
    """Whatever time passes between the limiter's own clock reads, a waiter the pacing holds
    back is woken when its slot comes, not when the window ends a minute later. (The steps
    sweep the gaps finely enough that, for any count of reads between the two calls, one of
    them lands the slot between two reads of the same pump.)"""

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        limiter = RateLimiter("t", limit=60, window_s=60, min_interval_s=0.01)
        first = await limiter.acquire(Priority.NORMAL, None)
        limiter.observe(first, 200, {})  # no rate headers: the limiter counts for itself
        limiter.release(first)
        asked = loop.time()
        second = await limiter.acquire(Priority.NORMAL, None)
        limiter.release(second)
        return loop.time() - asked

    waits = {}
    for step_us in range(300, 5000, 50):
        with asyncio.Runner(loop_factory=functools.partial(RunningClock, step_us / 1e6)) as runner:
            waits[step_us] = runner.run(asyncio.wait_for(scenario(), 120))
    assert {step: wait for step, wait in waits.items() if wait >= 1.0} == {}


# --- against the sandbox's fixed window -------------------------------------------------------


@pytest.fixture
def tight_sandbox() -> ShipStationSandbox:
    return ShipStationSandbox(knobs=Knobs(rate_limit=20, window_s=0.4))


@pytest.fixture
async def tight_client(
    aiohttp_server: Any, tight_sandbox: ShipStationSandbox
) -> AsyncIterator[Callable[[int], ShipStationClient]]:
    server: TestServer = await aiohttp_server(tight_sandbox.app)
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:

        def make(limit: int) -> ShipStationClient:
            config = ShipStationConfig(
                url=url, api_key=Secret("sandbox-key"), api_secret=Secret("sandbox-secret"),
                rate_limit=limit, window_s=0.4,
            )  # fmt: skip
            return ShipStationClient(
                session, config, RateLimiter("sandbox", limit=limit, window_s=0.4)
            )

        yield make


RATE = RateRequest(
    carrier_code="fedex",
    ship_from=Address(postal_code="78703", country="US"),
    ship_to=Address(postal_code="10001", country="US", state="NY"),
    weight=Weight(value=1, unit="lb"),
)


async def test_200_concurrent_callers_never_exceed_the_window(
    tight_sandbox: ShipStationSandbox, tight_client: Callable[[int], ShipStationClient]
) -> None:
    client = tight_client(40)  # believes 40; the sandbox says 20 and wins

    results = await asyncio.gather(
        *(client.get_rates(RATE, deadline=now() + 30) for _ in range(200))
    )

    assert all(results)
    assert tight_sandbox.throttled == 0
    served = tight_sandbox.window.served_per_window
    assert sum(served.values()) == 200
    assert max(served.values()) <= 20
    assert client.limiter.limit == 20


async def test_a_higher_limit_from_the_headers_is_used(
    tight_sandbox: ShipStationSandbox, tight_client: Callable[[int], ShipStationClient]
) -> None:
    client = tight_client(5)  # configured for 5 per window; the key allows 20

    await asyncio.gather(*(client.get_rates(RATE, deadline=now() + 30) for _ in range(40)))

    assert client.limiter.limit == 20
    assert tight_sandbox.throttled == 0
    assert len(tight_sandbox.window.served_per_window) <= 3  # 40 calls at 20 a window


async def test_labels_overtake_queued_quotes_at_the_sandbox(
    tight_sandbox: ShipStationSandbox, tight_client: Callable[[int], ShipStationClient]
) -> None:
    client = tight_client(20)
    finished: list[str] = []

    async def quote(i: int) -> None:
        await client.get_rates(RATE, deadline=now() + 30)
        finished.append(f"quote{i}")

    async def carriers() -> None:
        await client.list_carriers(deadline=now() + 30, priority=Priority.URGENT)
        finished.append("urgent")

    quotes = [asyncio.create_task(quote(i)) for i in range(60)]
    await asyncio.sleep(0.05)
    await asyncio.gather(*quotes, carriers())

    assert finished.index("urgent") <= 40  # served in the next window, ahead of 20 queued quotes
    assert tight_sandbox.throttled == 0


async def test_a_quote_that_cannot_get_a_turn_fails_fast_instead_of_sleeping(
    tight_sandbox: ShipStationSandbox, tight_client: Callable[[int], ShipStationClient]
) -> None:
    tight_sandbox.apply_window(limit=2, window_s=5.0)
    client = tight_client(2)
    await asyncio.gather(*(client.get_rates(RATE, deadline=now() + 2) for _ in range(2)))
    started = time.perf_counter()

    with pytest.raises(UpstreamThrottled):
        await client.get_rates(RATE, deadline=now() + 1.0)

    assert time.perf_counter() - started < 0.5  # refused up front, not at the 1 s deadline
    assert tight_sandbox.throttled == 0


async def test_a_429_storm_costs_at_most_one_429_per_window(
    tight_sandbox: ShipStationSandbox, tight_client: Callable[[int], ShipStationClient]
) -> None:
    client = tight_client(20)
    tight_sandbox.storm(1.0)  # the key is exhausted by someone else for 2.5 windows

    results = await asyncio.gather(
        *(client.get_rates(RATE, deadline=now() + 10) for _ in range(50))
    )

    assert len(results) == 50
    per_window = tight_sandbox.window.throttled_per_window
    assert 1 <= tight_sandbox.throttled <= math.ceil(1.0 / 0.4) + 1
    assert max(per_window.values()) == 1


# --- the window's end: every call of a window lands in one upstream window ----------------------


async def at(origin: float, offset: float) -> None:
    """Sleep until ``origin + offset`` on the loop's clock (``FixedWindow``'s clock too)."""
    await asyncio.sleep(max(0.0, origin + offset - now()))


class Flushing(Protocol):
    async def flush(self) -> None: ...


class Upstream:
    """The sandbox's fixed window, with calls whose answers the test delivers when it chooses
    (a slow ``createlabel`` is a call counted now and answered later). Its headers are computed
    when a call arrives, as the ShipStation sandbox does before sleeping its latency, so a slow
    call's answer carries a ``Reset`` measured from its arrival."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.window = FixedWindow(limit, window_s)
        self.origin = now()  # FixedWindow's origin, within a microsecond

    async def grant(self, limiter: Limiter, priority: Priority = Priority.NORMAL) -> Permit:
        return await limiter.acquire(priority, now() + 30)

    def send(self, limiter: Limiter, permit: Permit) -> Callable[[], Awaitable[None]]:
        """Send the call at once (the upstream counts it now); return what delivers its
        answer to the limiter (and, for a shared one, waits until it reached Redis)."""
        allowed, answer = self.window.admit()

        async def deliver() -> None:
            limiter.observe(permit, 200 if allowed else 429, answer)
            limiter.release(permit)
            if hasattr(limiter, "flush"):
                await limiter.flush()

        return deliver

    async def call(self, limiter: Limiter, latency_s: float = 0.0) -> None:
        permit = await self.grant(limiter)
        deliver = self.send(limiter, permit)
        await asyncio.sleep(latency_s)
        await deliver()

    async def burst(self, limiter: Limiter, calls: int, latency_s: float = 0.05) -> None:
        """``calls`` callers at once (a quote fans out to its carriers), each sending if the
        limiter grants it a turn within 0.2 s; answers arrive ``latency_s`` after sending."""

        async def one() -> None:
            try:
                permit = await limiter.acquire(Priority.NORMAL, now() + 0.2)
            except UpstreamThrottled:
                return
            deliver = self.send(limiter, permit)
            await asyncio.sleep(latency_s)
            await deliver()

        await asyncio.gather(*(one() for _ in range(calls)))

    def served(self) -> dict[int, int]:
        return dict(self.window.served_per_window)

    def refused(self) -> dict[int, int]:
        return dict(self.window.throttled_per_window)


async def tail_then_burst(upstream: Upstream, first: Limiter, second: Limiter) -> None:
    """Window 1 s, 10 calls. A slow first call (300 ms, a createlabel) is answered with
    ``Reset`` measured at its arrival, so the answer comes 0.3 s after upstream measured it.
    Four slow calls are asked for at 1.2 s (upstream's second window, but before the limiter's
    first could end by the answer's time), then a burst of ten at 1.5 s; every call is sent
    when granted and answered once all are sent."""
    origin = upstream.origin
    probe = await upstream.grant(first, Priority.URGENT)
    deliver_probe = upstream.send(first, probe)
    await asyncio.sleep(0.3)
    await deliver_probe()  # "Reset: 1.000" arrives 0.3 s after it was measured

    await at(origin, 1.2)  # the upstream's window 1 began at 1.0
    tail = [await upstream.grant(first, Priority.URGENT) for _ in range(4)]
    pending = [upstream.send(first, permit) for permit in tail]  # createlabels under way

    await at(origin, 1.5)
    burst = [await upstream.grant(second) for _ in range(10)]
    answers = [upstream.send(second, permit) for permit in burst]
    await asyncio.sleep(0.05)
    for deliver in [*pending, *answers]:
        await deliver()


async def test_calls_granted_after_upstreams_reset_count_in_the_window_they_land_in() -> None:
    """The label pipeline's occasional 429s. The window's end was ``answer time + Reset +
    margin``, i.e. *after* upstream's own reset by the answer's latency plus the margin: calls
    granted in that stretch were charged to the old window but landed in upstream's new one,
    the roll then granted a full ``limit`` again, and their answers (an older epoch) were
    dropped. Upstream got tail + limit calls in one window. Now nothing is granted between the
    earliest upstream can reset (the probe's grant time + Reset) and the window's end, so the
    tail counts in the window it lands in."""
    upstream = Upstream(10, 1.0)
    limiter = RateLimiter("shipstation:key", limit=10, window_s=1.0)

    await tail_then_burst(upstream, limiter, limiter)

    assert upstream.refused() == {}, upstream.served()
    assert sum(upstream.served().values()) == 15
    assert max(upstream.served().values()) <= 10


def model(limit: int = 10, window_s: float = 1.0, margin_s: float = 0.05) -> WindowModel:
    return WindowModel("t", limit=limit, window_s=window_s, margin_s=margin_s,
                       min_interval_s=0.0, throttle_pause_s=window_s)  # fmt: skip


def answer(m: WindowModel, permit: Permit, at_s: float, reset: str | None, left: int) -> None:
    rate = {"X-Rate-Limit-Limit": str(m.limit), "X-Rate-Limit-Remaining": str(left)}
    m.observe(permit, at_s, RateHeaders.parse(rate | ({} if reset is None else
                                                      {"X-Rate-Limit-Reset": reset})),
              throttled=False)  # fmt: skip
    m.release(permit)


def test_nothing_is_granted_between_the_earliest_and_the_latest_end_of_upstreams_window() -> None:
    m = model()
    probe = m.grant(0.0)
    answer(m, probe, 0.3, "1.000", 9)  # upstream resets between 0.999 s and 1.35 s

    assert m.can_send(0.948)
    assert not m.can_send(0.95)  # a call takes up to the margin to reach upstream
    assert not m.can_send(1.349)
    m.roll(1.35)
    assert m.can_send(1.35)
    assert (m.remaining, m.soft_end) == (10, pytest.approx(1.999))


def test_a_late_answer_about_an_earlier_upstream_window_does_not_end_this_one_early() -> None:
    """Answers of one window may come out of order: a slow call from upstream's previous
    window answered after quick ones from the next moved the window's end back to the
    previous window's (``answer time + its small Reset``), and a full window was granted on
    top of the quick calls. Within a window the end only moves later."""
    m = model()
    first = m.grant(0.0)
    answer(m, first, 0.01, None, 9)  # no Reset (yet): the limiter counts for itself
    slow, quick = m.grant(0.85), m.grant(1.02)  # upstream's windows 0 and 1
    answer(m, quick, 1.03, "0.980", 8)

    answer(m, slow, 1.2, "0.150", 7)

    assert m.reset_at == pytest.approx(1.03 + 0.98 + 0.05)


def test_after_an_idle_stretch_the_next_window_starts_with_a_probe() -> None:
    """Idle past the earliest upstream's next window can end, the limiter no longer knows
    where upstream's window stands: one call finds out before the rest go."""
    m = model()
    answer(m, m.grant(0.0), 0.1, "1.000", 9)
    m.roll(1.2)  # promptly: the next window's earliest end is a window later
    assert not m.probing

    m.roll(5.0)

    assert m.probing and m.soft_end is None
    probe = m.grant(5.0)
    assert probe.probe and not m.can_send(5.0)
    answer(m, probe, 5.1, "0.900", 7)
    assert m.remaining == 7 and m.can_send(5.1) and not m.can_send(5.85)


def test_without_reset_headers_nothing_pauses_before_the_windows_end() -> None:
    """Cin7 Core sends no rate headers: its window is counted from the first answer, as
    before, with no pause before its end."""
    m = model(limit=60, window_s=60.0, margin_s=1.0)
    answer(m, m.grant(0.0), 0.3, None, 0)

    assert m.soft_end is None
    assert all(m.can_send(t) for t in (1.0, 59.0, 60.2))


@pytest.mark.parametrize(
    ("header", "value", "parsed"),
    [
        ("X-Rate-Limit-Limit", "100", 100),
        ("X-Rate-Limit-Limit", "0.5", None),  # no window of less than one call
        ("X-Rate-Limit-Limit", "1e999", None),
        ("X-Rate-Limit-Limit", "inf", None),
        ("X-Rate-Limit-Limit", "2000000", None),
        ("X-Rate-Limit-Remaining", "Infinity", None),
        ("X-Rate-Limit-Remaining", "nan", None),
        ("X-Rate-Limit-Remaining", "-1", None),
        ("X-Rate-Limit-Remaining", "0", 0),
        ("X-Rate-Limit-Reset", "1e999", None),
        ("X-Rate-Limit-Reset", "86401", None),  # beyond a day
        ("X-Rate-Limit-Reset", "59", 59.0),
        ("X-Rate-Limit-Reset", "soon", None),
    ],
)
def test_a_rate_header_that_is_no_usable_number_is_ignored(
    header: str, value: str, parsed: float | None
) -> None:
    info = RateHeaders.parse({header: value})

    field = {"X-Rate-Limit-Limit": info.limit, "X-Rate-Limit-Remaining": info.remaining,
             "X-Rate-Limit-Reset": info.reset_s}[header]  # fmt: skip
    assert field == parsed


@pytest.mark.parametrize(("reset", "unit"), [("59", 1.0), ("0.150", 0.001), ("1.5", 0.1),
                                             ("6e1", 1.0), (" 2.25 ", 0.01)])  # fmt: skip
def test_a_resets_rounding_is_what_its_last_digit_is_worth(reset: str, unit: float) -> None:
    assert RateHeaders.parse({"X-Rate-Limit-Reset": reset}).reset_unit_s == pytest.approx(unit)


@pytest.mark.parametrize("header", ["X-Rate-Limit-Limit", "X-Rate-Limit-Remaining",
                                    "X-Rate-Limit-Reset"])  # fmt: skip
async def test_an_unparseable_huge_rate_header_does_not_fail_a_successful_call(
    aiohttp_server: Any, header: str
) -> None:
    """``RateHeaders.parse`` accepted any ``float()``: ``1e999`` / ``inf`` became ``inf`` and
    ``int(inf)`` raised ``OverflowError`` inside ``limiter.observe``, after the answer arrived:
    a 200 from ShipStation became a 500 for a quote, and for a ``createlabel`` a label bought
    and reported as a crash (a ``Reset`` of ``inf`` never ended the window)."""

    async def getrates(_request: web.Request) -> web.Response:
        return web.json_response([], headers={header: "1e999"})

    app = web.Application()
    app.router.add_post("/shipments/getrates", getrates)
    server = await aiohttp_server(app)
    limiter = RateLimiter("shipstation:key", limit=40, window_s=60)
    config = ShipStationConfig(
        url=str(server.make_url("")).rstrip("/"), api_key=Secret("k"), api_secret=Secret("s"),
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        client = ShipStationClient(session, config, limiter)
        assert await client.get_rates(RATE, deadline=now() + 5) == []
        assert await client.get_rates(RATE, deadline=now() + 5) == []  # the window still works


# --- the window model against a simulated upstream --------------------------------------------


@dataclass(frozen=True)
class Call:
    send: float  # of the margin: how long the granted call takes to reach upstream
    answer: float  # of the window: how long upstream takes to answer it
    lost: bool  # its answer never comes (a timeout, a dropped connection)


@dataclass(frozen=True)
class Traffic:
    limit: int
    window_s: float
    digits: int  # Reset's decimals
    rounding: str  # how upstream rounds Reset to them
    origin: float  # of upstream's windows, in windows
    periodic: bool  # upstream's windows are aligned (else each starts at its first call)
    asks: list[tuple[float, int]]  # (when, callers)
    calls: list[Call]


@st.composite
def traffic(draw: st.DrawFn) -> Traffic:
    window_s, digits = draw(st.sampled_from([(1.0, 3), (1.0, 2), (10.0, 1), (60.0, 0)]))
    gaps = st.one_of(st.just(0.0), st.floats(0, 0.5), st.floats(0, 3))  # in windows
    asks, moment = [], 0.0
    for gap, callers in draw(st.lists(st.tuples(gaps, st.integers(1, 15)), min_size=1,
                                      max_size=10)):  # fmt: skip
        moment += gap * window_s
        asks.append((moment, callers))
    unit = st.floats(0, 1)
    calls = st.builds(Call, send=unit, answer=st.floats(0, 0.6), lost=st.booleans())
    total = sum(callers for _, callers in asks)
    return Traffic(
        limit=draw(st.integers(1, 10)), window_s=window_s, digits=digits,
        rounding=draw(st.sampled_from(["down", "up"])), origin=draw(unit),
        periodic=draw(st.booleans()), asks=asks,
        calls=draw(st.lists(calls, min_size=total, max_size=total)),
    )  # fmt: skip


def simulate(t: Traffic) -> Counter[int]:
    """Drive a :class:`WindowModel` as :class:`RateLimiter` does (grant whenever it can, wake
    when it says) against an upstream counting calls per window; return the calls that landed
    in each upstream window. Upstream's ``Reset`` is measured at a call's arrival and rounded to
    ``t.digits`` decimals; a probe's answer always comes (a lost one lets the next probe go,
    the limiter's accepted cost of one refused call)."""
    margin = default_margin(t.window_s)
    m = WindowModel("sim", limit=t.limit, window_s=t.window_s, margin_s=margin,
                    min_interval_s=0.0, throttle_pause_s=t.window_s)  # fmt: skip
    events: list[tuple[float, int, Any]] = []
    order = itertools.count()
    for moment, callers in t.asks:
        heapq.heappush(events, (moment, next(order), ("ask", callers)))
    queue: deque[None] = deque()
    landed: Counter[int] = Counter()
    calls: Iterator[Call] = iter(t.calls)
    started: list[float] = []  # the first-call-started upstream's current window

    def window_of(arrival: float) -> tuple[int, float]:
        if t.periodic:
            index = math.floor((arrival - t.origin * t.window_s) / t.window_s)
            return index, t.origin * t.window_s + (index + 1) * t.window_s
        # within a nanosecond of its end counts as after it: the limiter's latest bound is
        # exactly a grant plus the margin (the longest a call takes to arrive) plus a window,
        # and float rounding must not make a tie an overlap
        if not started or arrival >= started[-1] + t.window_s - 1e-9:
            started.append(arrival)
        return len(started) - 1, started[-1] + t.window_s

    def reset_header(seconds: float) -> str:
        scale = 10**t.digits
        rounded = (math.floor if t.rounding == "down" else math.ceil)(round(seconds * scale, 6))
        return f"{rounded / scale:.{t.digits}f}"

    def pump(now_s: float) -> None:
        m.roll(now_s)
        while queue and m.can_send(now_s):
            queue.popleft()
            permit, call = m.grant(now_s), next(calls)
            arrival = now_s + call.send * margin
            heapq.heappush(events, (arrival, next(order), ("arrive", permit, call)))
        wake = m.wake_at(now_s) if queue else None
        if wake is not None and wake > now_s:
            heapq.heappush(events, (wake, next(order), ("wake",)))

    while events:
        now_s, _, event = heapq.heappop(events)
        if event[0] == "ask":
            queue.extend([None] * event[1])
        elif event[0] == "arrive":
            _, permit, call = event
            index, end = window_of(now_s)
            landed[index] += 1
            rate = {"X-Rate-Limit-Limit": str(t.limit),
                    "X-Rate-Limit-Remaining": str(max(0, t.limit - landed[index])),
                    "X-Rate-Limit-Reset": reset_header(end - now_s)}  # fmt: skip
            outcome = None if call.lost and not permit.probe else (landed[index] <= t.limit, rate)
            reply = ("answer", permit, outcome)
            heapq.heappush(events, (now_s + call.answer * t.window_s, next(order), reply))
            continue
        elif event[0] == "answer":
            _, permit, outcome = event
            if outcome is not None:
                allowed, rate = outcome
                m.observe(permit, now_s, RateHeaders.parse(rate), throttled=not allowed)
            m.release(permit)
        pump(now_s)
    return landed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traffic())
def test_no_upstream_window_ever_receives_more_than_the_limit(t: Traffic) -> None:
    """For any answer latencies (up to 0.6 of a window), times calls are asked for (bursts,
    idle stretches of several windows), Reset rounded down or up to whole seconds or a few
    decimals, upstream windows aligned or started by their first call, and calls reaching
    upstream within the margin of their grant: the calls landing in any one upstream window
    never exceed the limit. (Before the pause at the window's end, a window's late calls
    landed in upstream's next window on top of a full ``limit``.)"""
    landed = simulate(t)

    assert sum(landed.values()) == len(t.calls)
    assert max(landed.values()) <= t.limit, sorted(landed.items())


# --- review round 5: rolls without answers, probes without headers, grants held too long -------


def test_windows_rolled_without_an_answer_keep_the_pause_before_their_end_as_it_was() -> None:
    """Each roll moved the earliest end a window on but set the latest to the roll's time plus a
    window and the margin: every window rolled without an answer (the shared limiter's
    heartbeats rolled an idle key's window each time) widened the pause between the bounds by
    the margin and the roll's lateness, until it covered nearly the whole window, and a quote
    on a key idle for half an hour waited most of a minute or was refused at its deadline.
    Rolling now moves both bounds by one window; only the window's first grant moves the
    latest to a window after it."""
    m = WindowModel("w", limit=10, window_s=1.0, margin_s=0.05, min_interval_s=0.0,
                    throttle_pause_s=1.0)  # fmt: skip
    permit = m.grant(0.0)
    m.observe(permit, 0.01, RateHeaders(limit=10, remaining=9, reset_s=0.99,
                                        reset_unit_s=0.01), throttled=False)  # fmt: skip
    m.release(permit)
    assert m.soft_end is not None and m.reset_at is not None
    gap = m.reset_at - m.soft_end
    for late in (0.0, 0.03, 0.02, 0.04, 0.01):  # rolled a little late, nothing granted
        assert m.reset_at is not None
        m.roll(m.reset_at + late)
        assert m.reset_at - m.soft_end == pytest.approx(gap)
    assert not m.probing


def test_a_probe_answered_with_a_server_error_without_rate_headers_is_probed_again() -> None:
    """A probe whose answer is a 5xx without ``X-Rate-Limit-*`` learned nothing of the window
    (the call may never have reached the rate limiter), yet it ended the probing: the next
    burst went out whole into a key someone else may have exhausted."""
    m = WindowModel("w", limit=10, window_s=1.0, margin_s=0.05, min_interval_s=0.0,
                    throttle_pause_s=1.0)  # fmt: skip
    probe = m.grant(0.0)
    m.observe(probe, 0.1, RateHeaders.parse({}), throttled=False, blank=True)
    m.release(probe)

    assert m.probing and m.can_send(0.1) and m.grant(0.1).probe and not m.can_send(0.1)


async def test_a_grant_held_past_the_window_is_handed_back_rather_than_sent() -> None:
    """A label purchase does three ledger round trips between its grant and its send
    (``before_send``): held past the start of the pause before the window's end, the call
    could land in upstream's next window, counted in this one. ``still_open`` says so, and
    ``hand_back`` returns the call to the window it was granted in."""
    limiter = RateLimiter("w", limit=10, window_s=0.4, margin_s=0.02)
    probe = await limiter.acquire(Priority.URGENT, None)
    limiter.observe(probe, 200, {"X-Rate-Limit-Limit": "10", "X-Rate-Limit-Remaining": "9",
                                 "X-Rate-Limit-Reset": "0.2"})  # fmt: skip
    limiter.release(probe)
    permit = await limiter.acquire(Priority.URGENT, None)
    assert limiter.still_open(permit) and limiter.remaining == 8
    await asyncio.sleep(0.19)  # into the pause before the window's end

    assert not limiter.still_open(permit)
    limiter.hand_back(permit)
    assert limiter.remaining == 9
