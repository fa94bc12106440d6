"""The per-key-pair limiter: alone (synthetic headers) and against the sandbox's fixed window."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ratesvc.config import Secret, ShipStationConfig
from ratesvc.errors import UpstreamThrottled
from ratesvc.limiter import Permit, Priority, RateHeaders, RateLimiter
from ratesvc.models import Address, RateRequest, Weight
from ratesvc.sandbox.knobs import Knobs
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


# --- rate headers are upstream input ---------------------------------------------------------


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
