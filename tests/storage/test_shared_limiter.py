"""The limiter shared by replicas through Redis (real Redis; each "replica" is a
``SharedRateLimiter`` with its own client on one key prefix, or a process of its own).

The upstream is the sandbox's fixed window (:class:`~ratesvc.sandbox.shipstation.FixedWindow`,
in process, or the whole ShipStation sandbox over HTTP): it counts what it served and refused
per window, independently of the limiters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ratesvc.config import Secret, ShipStationConfig
from ratesvc.errors import UpstreamThrottled
from ratesvc.limiter import Permit, Priority, RateLimiter, turn
from ratesvc.models import Address, RateRequest, Weight
from ratesvc.sandbox.knobs import Knobs
from ratesvc.sandbox.shipstation import FixedWindow, ShipStationSandbox
from ratesvc.storage import limiter_scripts, limiter_window
from ratesvc.storage.limiter_share import local_share
from ratesvc.storage.redis_client import key as redis_key
from ratesvc.storage.redis_client import open_redis
from ratesvc.storage.shared_limiter import SharedRateLimiter, make_limiter
from ratesvc.upstreams.shipstation.client import ShipStationClient
from tests.automation.support import until
from tests.replicas.harness import CuttableProxy
from tests.test_limiter import Upstream, at, headers, now, tail_then_burst

ROOT = Path(__file__).resolve().parents[2]
REPLICA = (sys.executable, "-m", "tests.storage.replica")


@asynccontextmanager
async def replicas(
    url: str, prefix: str, count: int, **options: Any
) -> AsyncIterator[list[SharedRateLimiter]]:
    """``count`` limiters named alike on one prefix, each with its own Redis client, every one
    a member of the window before the test begins."""
    options = {"limit": 40, "window_s": 60.0, "margin_s": 0.0, **options}
    clients = [open_redis(url) for _ in range(count)]
    limiters = [
        SharedRateLimiter("shipstation:key", redis=client, prefix=prefix, **options)
        for client in clients
    ]
    try:
        for limiter in limiters:
            await limiter.join()
        yield limiters
    finally:
        for limiter in limiters:
            await limiter.aclose()
        for client in clients:
            await client.aclose()


async def answered(
    limiter: SharedRateLimiter, permit: Permit, status: int, hdrs: dict[str, str]
) -> None:
    """Report an answer and wait until it reached Redis."""
    limiter.observe(permit, status, hdrs)
    limiter.release(permit)
    await limiter.flush()


async def call_through(
    limiter: SharedRateLimiter, upstream: FixedWindow, priority: Priority = Priority.NORMAL
) -> None:
    """One call to the fixed window, with what it answers reported to the limiter."""
    async with turn(limiter, priority, now() + 30) as permit:
        allowed, answer = upstream.admit()
        await asyncio.sleep(0.002)
        limiter.observe(permit, 200 if allowed else 429, answer)


def full_windows(served: dict[int, int]) -> list[int]:
    """What was served in each window but the first and the last (partly busy)."""
    first, last = min(served), max(served)
    return [served.get(index, 0) for index in range(first + 1, last)]


# --- one window for every replica -------------------------------------------------------------


async def test_replicas_together_never_exceed_the_window_and_use_all_of_it(
    redis_prefix: tuple[str, str],
) -> None:
    upstream = FixedWindow(20, 0.4)
    async with replicas(*redis_prefix, 3, window_s=0.4, margin_s=None) as limiters:
        await asyncio.gather(*(call_through(limiters[i % 3], upstream) for i in range(120)))

        assert dict(upstream.throttled_per_window) == {}
        assert max(upstream.served_per_window.values()) <= 20
        assert sum(upstream.served_per_window.values()) == 120
        assert min(full_windows(upstream.served_per_window)) >= 18  # >= 90 % of the budget
        assert {limiter.state().sharing for limiter in limiters} == {"shared"}
        assert {limiter.limit for limiter in limiters} == {20}  # the headers' limit, not 40


async def test_a_replica_starting_late_joins_the_window_without_probing(
    redis_prefix: tuple[str, str],
) -> None:
    async with replicas(*redis_prefix, 2) as (first, late):
        probe = await first.acquire(Priority.NORMAL, None)
        await answered(first, probe, 200, headers(40, 2, 30))

        permits = [await late.acquire(Priority.NORMAL, None) for _ in range(2)]

        assert not any(permit.probe for permit in [*permits])
        with pytest.raises(UpstreamThrottled):
            await late.acquire(Priority.NORMAL, now() + 1)
        assert late.remaining == 0


async def test_calls_granted_after_upstreams_reset_count_in_the_window_they_land_in(
    redis_prefix: tuple[str, str],
) -> None:
    """The label pipeline's occasional 429s across replicas (3 replicas, 10 calls / 0.5 s).
    The shared window ended at ``answer time + Reset + margin``, after upstream's own reset by
    the answer's latency plus the margin: calls granted in that stretch were charged to the old
    Redis window but landed in upstream's new one; when the Redis window rolled the prelude
    granted a full ``limit`` again, and the tail's answers (an older epoch) were dropped by
    OBSERVE. Now ACQUIRE grants nothing between the earliest upstream can reset (the grant time
    on Redis's clock + Reset) and the window's end."""
    upstream = Upstream(10, 1.0)
    async with replicas(*redis_prefix, 2, limit=10, window_s=1.0, margin_s=None) as (a, b):
        await tail_then_burst(upstream, a, b)

    assert upstream.refused() == {}, upstream.served()
    assert sum(upstream.served().values()) == 15
    assert max(upstream.served().values()) <= 10


async def test_a_late_answer_about_the_previous_window_does_not_end_the_current_one_early(
    redis_prefix: tuple[str, str],
) -> None:
    """OBSERVE set ``end = now + Reset + margin`` from whichever answer arrived last. A slow
    call (a createlabel, 350 ms) admitted before upstream's reset, answered after quick calls
    admitted after it, moved the shared window's end from upstream's next reset back to
    ~1.4 s, and Redis then opened a fresh window of ``limit`` calls on top of the quick ones.
    Now the quick calls wait for the window the slow one belongs to to end, and an answer of
    an older window changes nothing."""
    upstream = Upstream(10, 1.0)
    origin = upstream.origin
    async with replicas(*redis_prefix, 2, limit=10, window_s=1.0, margin_s=None) as (a, b):
        await upstream.call(a, latency_s=0.1)  # the probe: upstream resets at 1.0 s

        await at(origin, 0.85)
        slow = await upstream.grant(a, Priority.URGENT)
        deliver_slow = upstream.send(a, slow)  # admitted in window 0, "Reset: 0.150"

        await at(origin, 1.02)  # upstream's window 1
        for _ in range(4):
            await upstream.call(a)
        await at(origin, 1.2)
        await deliver_slow()

        await at(origin, 1.5)
        burst = [await upstream.grant(b) for _ in range(10)]
        for deliver in [upstream.send(b, permit) for permit in burst]:
            await deliver()

    assert upstream.refused() == {}, upstream.served()
    assert sum(upstream.served().values()) == 16
    assert max(upstream.served().values()) <= 10


async def test_answers_of_one_window_arriving_out_of_order_only_move_its_end_later(
    redis_prefix: tuple[str, str],
) -> None:
    """Within one shared window the end is the latest any answer proves: a later answer
    carrying an earlier end (a call from upstream's previous window, slow to answer) does not
    bring the roll forward."""
    async with replicas(*redis_prefix, 2, window_s=60.0) as (one, two):
        first = await one.acquire(Priority.NORMAL, None)
        await answered(one, first, 200, {})  # no rate headers: the window counts for itself
        slow, quick = [await two.acquire(Priority.NORMAL, None) for _ in range(2)]
        assert slow.epoch == quick.epoch
        await answered(two, quick, 200, headers(40, 37, 30.0))

        await answered(one, slow, 200, headers(40, 36, 0.5))

        probe = await one.acquire(Priority.NORMAL, None)  # refreshes the window as Redis has it
        one.release(probe)
        reset_after = one.state().reset_after_s
        assert reset_after is not None and reset_after > 29


# --- answers from any replica -------------------------------------------------------------------


async def test_a_429_seen_by_one_replica_pauses_every_replica_until_the_reset(
    redis_prefix: tuple[str, str],
) -> None:
    async with replicas(*redis_prefix, 3, poll_s=0.01) as (seen, other, third):
        probe = await seen.acquire(Priority.NORMAL, None)
        await answered(seen, probe, 200, headers(40, 39, 30))
        sent = await seen.acquire(Priority.NORMAL, None)
        await answered(seen, sent, 429, headers(40, 0, 0.4))
        paused_at = now()

        with pytest.raises(UpstreamThrottled) as refused:  # the pause outlasts its deadline
            await other.acquire(Priority.NORMAL, now() + 0.2)
        waiting = [asyncio.create_task(r.acquire(Priority.NORMAL, None)) for r in (other, third)]
        done, pending = await asyncio.wait(waiting, timeout=2, return_when=asyncio.FIRST_COMPLETED)

        assert refused.value.reset_after_s is not None and refused.value.reset_after_s > 0.3
        assert now() - paused_at >= 0.39  # nobody sent during the pause
        (first,) = done
        assert first.result().probe  # the new window starts with one probe, whoever sends it
        prober = other if first is waiting[0] else third
        await answered(prober, first.result(), 200, headers(40, 39, 30))
        (rest,) = await asyncio.wait_for(asyncio.gather(*pending), 1)
        assert not rest.probe
        assert other.state().throttled == 0 and seen.state().throttled == 1


async def test_a_new_limit_and_a_lower_remaining_seen_by_one_are_adopted_by_all(
    redis_prefix: tuple[str, str],
) -> None:
    async with replicas(*redis_prefix, 2) as (seen, other):
        probe = await seen.acquire(Priority.NORMAL, None)
        await answered(seen, probe, 200, headers(100, 99, 30))  # a partner key: 100 a window
        first = await other.acquire(Priority.NORMAL, None)
        assert other.limit == 100
        assert other.remaining == 98

        sent = await seen.acquire(Priority.NORMAL, None)
        # another program uses the key too: upstream has 3 calls left, not 97
        await answered(seen, sent, 200, headers(100, 3, 30))
        permits = [await other.acquire(Priority.NORMAL, None) for _ in range(3)]

        with pytest.raises(UpstreamThrottled):
            await other.acquire(Priority.NORMAL, now() + 1)
        assert other.remaining == 0
        for permit in [first, *permits]:
            other.release(permit)


async def test_headers_of_a_call_sent_before_a_429_do_not_reopen_the_pause(
    redis_prefix: tuple[str, str],
) -> None:
    async with replicas(*redis_prefix, 2) as (one, two):
        probe = await one.acquire(Priority.NORMAL, None)
        await answered(one, probe, 200, headers(40, 39, 30))
        before = await two.acquire(Priority.NORMAL, None)
        refused = await one.acquire(Priority.NORMAL, None)
        await answered(one, refused, 429, headers(40, 0, 20))

        await answered(two, before, 200, headers(40, 30, 20))  # sent before the 429

        with pytest.raises(UpstreamThrottled):
            await two.acquire(Priority.NORMAL, now() + 1)
        assert two.remaining == 0


# --- priorities and deadlines -------------------------------------------------------------------


async def test_a_label_waiting_on_one_replica_goes_before_quotes_of_another(
    redis_prefix: tuple[str, str],
) -> None:
    """The rule: a call is not granted while another replica has a live registration of a
    better priority. Replica ``quotes`` learns the window is open first (its own probe's
    answer) and asks at once; without the rule it would take both calls of the window."""
    async with (
        replicas(*redis_prefix, 1, limit=3, poll_s=0.01) as (quotes,),
        replicas(*redis_prefix, 1, limit=3, poll_s=0.2) as (labels,),
    ):
        probe = await quotes.acquire(Priority.NORMAL, None)
        queued = [asyncio.create_task(quotes.acquire(Priority.NORMAL, None)) for _ in range(4)]
        label = asyncio.create_task(labels.acquire(Priority.URGENT, None))
        await asyncio.sleep(0.05)
        assert not label.done()  # the probe goes alone

        await answered(quotes, probe, 200, headers(3, 2, 30))  # two calls left in the window
        await asyncio.wait_for(label, 1)
        await asyncio.sleep(0.05)

        try:
            assert sum(task.done() for task in queued) == 1  # the other call went to the label
            assert quotes.remaining == 0
        finally:
            for task in queued:
                task.cancel()
            await asyncio.gather(*queued, return_exceptions=True)


async def test_a_replica_that_dies_waiting_holds_nobody_back_for_long(
    redis_prefix: tuple[str, str],
) -> None:
    url, prefix = redis_prefix
    child = await asyncio.create_subprocess_exec(
        *REPLICA, "urgent", url, prefix,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"
        async with replicas(url, prefix, 1, window_s=60) as (quotes,):
            probe = await quotes.acquire(Priority.NORMAL, None)
            await answered(quotes, probe, 200, headers(40, 0, 1.0))  # spent for a second
            reset_at = now() + 1.0
            child.stdin.write(b"go\n")
            assert await asyncio.wait_for(child.stdout.readline(), 5) == b"waiting\n"
            child.kill()  # registered as waiting at URGENT, and gone

            await quotes.acquire(Priority.NORMAL, now() + 3)

            assert now() - reset_at < 0.3  # at the reset: the dead replica's wait had lapsed
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


async def test_a_reserve_keeps_the_last_calls_of_a_window_for_urgent_callers(
    redis_prefix: tuple[str, str],
) -> None:
    async with replicas(*redis_prefix, 2, limit=10, reserve=2) as (quotes, labels):
        probe = await quotes.acquire(Priority.NORMAL, None)
        await answered(quotes, probe, 200, headers(10, 9, 30))
        taken = [await quotes.acquire(Priority.NORMAL, None) for _ in range(7)]

        with pytest.raises(UpstreamThrottled):  # 2 left, both reserved
            await quotes.acquire(Priority.NORMAL, now() + 1)
        urgent = [await labels.acquire(Priority.URGENT, now() + 1) for _ in range(2)]

        assert len(taken) == 7 and len(urgent) == 2 and labels.remaining == 0


async def test_a_deadline_that_cannot_be_met_is_refused_at_once(
    redis_prefix: tuple[str, str],
) -> None:
    async with replicas(*redis_prefix, 2) as (one, two):
        probe = await one.acquire(Priority.NORMAL, None)
        await answered(one, probe, 200, headers(40, 0, 20))  # the key is spent for 20 s
        started = time.perf_counter()

        with pytest.raises(UpstreamThrottled) as refused:
            await two.acquire(Priority.NORMAL, now() + 2)

        assert time.perf_counter() - started < 0.5  # up front, not at the deadline
        assert refused.value.reset_after_s is not None and refused.value.reset_after_s > 19


async def test_a_waiter_still_waiting_at_its_deadline_is_refused_then(
    redis_prefix: tuple[str, str],
) -> None:
    """While another replica's probe is out, the window is unknown: the waiter's turn may come
    any moment, so it waits, and is refused at its deadline, not later."""
    async with replicas(*redis_prefix, 2, poll_s=0.05) as (one, two):
        probe = await one.acquire(Priority.NORMAL, None)  # never answered in this test
        started = now()

        with pytest.raises(UpstreamThrottled):
            await two.acquire(Priority.NORMAL, now() + 0.3)

        assert 0.29 <= now() - started < 0.4
        one.release(probe)


async def test_pacing_is_shared_by_every_replica(redis_prefix: tuple[str, str]) -> None:
    async with replicas(*redis_prefix, 3, limit=60, min_interval_s=0.1) as limiters:
        probe = await limiters[0].acquire(Priority.NORMAL, None)
        await answered(limiters[0], probe, 200, headers(60, 59, 30))
        sent: list[float] = []

        async def paced(limiter: SharedRateLimiter) -> None:
            async with turn(limiter, Priority.NORMAL, None):
                sent.append(time.perf_counter())

        await asyncio.gather(*(paced(limiters[i % 3]) for i in range(6)))

        gaps = [b - a for a, b in zip(sorted(sent), sorted(sent)[1:], strict=False)]
        assert min(gaps) >= 0.09


async def test_a_caller_that_leaves_as_it_is_granted_hands_the_call_to_the_next(
    redis_prefix: tuple[str, str],
) -> None:
    async with replicas(*redis_prefix, 2, poll_s=0.01) as (one, two):
        probe = await one.acquire(Priority.NORMAL, None)
        leaving = asyncio.create_task(two.acquire(Priority.NORMAL, None))
        staying = asyncio.create_task(two.acquire(Priority.NORMAL, None))
        await asyncio.sleep(0.05)  # both wait for the probe's answer
        await answered(one, probe, 200, headers(40, 1, 30))  # one call left: the first's

        # Loop turn by turn until the grant is made: then the caller has not run yet.
        for _ in range(10_000):
            if two.state().reset_after_s is not None:
                break
            await asyncio.sleep(0)
        leaving.cancel()

        with pytest.raises(asyncio.CancelledError):
            await leaving
        permit = await asyncio.wait_for(staying, 1)
        assert permit.shared and two.remaining == 0
        two.release(permit)


# --- Redis unreachable ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_redis_refusing_connections_means_the_local_share_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = FixedWindow(10, 0.3)
    client = open_redis(f"redis://127.0.0.1:{free_port()}/0")
    limiter = SharedRateLimiter(
        "shipstation:key", redis=client, prefix="x:", limit=10, window_s=0.3, replicas=2
    )
    caplog.set_level(logging.WARNING, "ratesvc.storage.shared_limiter")
    try:
        await asyncio.gather(*(call_through(limiter, upstream) for _ in range(30)))

        assert limiter.state().sharing == "degraded"
        assert limiter.limit == 5  # half of the key's 10
        assert max(upstream.served_per_window.values()) <= 5
        assert min(full_windows(upstream.served_per_window)) == 5
        warnings = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await limiter.aclose()
        await client.aclose()


class RedisServer:
    """A throwaway redis-server of the test's own (never the shared one on 6379)."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self._tmp = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._tmp)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while (
            subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, check=False
            ).stdout.strip()
            != b"PONG"
        ):
            assert time.monotonic() < deadline, "the throwaway redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True,
            check=False,
        )  # fmt: skip
        if self.process is not None:
            self.process.wait(5)
            self.process = None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.signal(signal.SIGCONT)
        server.stop()


async def burst(limiters: Sequence[SharedRateLimiter], upstream: FixedWindow, calls: int) -> None:
    await asyncio.gather(
        *(call_through(limiters[i % len(limiters)], upstream) for i in range(calls))
    )


def since(counter: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {i: n - before.get(i, 0) for i, n in counter.items() if n > before.get(i, 0)}


def test_the_local_share_is_paced_as_one_of_the_replicas() -> None:
    """Cin7 Core is paced to about a call a second for the whole key: N replicas cut off each
    sending a call a second made N a second. The share's pace is ``replicas`` times slower."""
    share = local_share("cin7:app", None, 0, 0.0, replicas=3, limit=60, window_s=60.0,
                        margin_s=1.0, min_interval_s=1.0, pause_s=20.0)  # fmt: skip

    assert (share.limit, share.min_interval_s) == (20, 3.0)


async def test_redis_stopped_and_restarted_means_the_local_share_then_the_shared_window(
    own_redis: RedisServer,
) -> None:
    upstream = FixedWindow(10, 0.3)
    async with replicas(own_redis.url, "t:", 2, limit=10, window_s=0.3, margin_s=None,
                        retry_s=0.1) as limiters:  # fmt: skip
        await burst(limiters, upstream, 30)
        assert {limiter.state().sharing for limiter in limiters} == {"shared"}
        assert dict(upstream.throttled_per_window) == {}
        served, refused = dict(upstream.served_per_window), dict(upstream.throttled_per_window)

        own_redis.stop()
        await burst(limiters[:1], upstream, 20)  # one replica works on alone
        state = limiters[0].state()
        outage = since(upstream.served_per_window, served)
        outage_refused = since(upstream.throttled_per_window, refused)

        own_redis.start()
        await until(lambda: all(limiter.shared for limiter in limiters))
        refused = dict(upstream.throttled_per_window)
        await burst(limiters, upstream, 40)

    assert state.sharing == "degraded" and state.limit == 5
    assert max(outage.values()) <= 5  # its share: half of the key's 10
    # The local share starts with a probe: in a window the others had spent, it is refused.
    assert max(outage_refused.values(), default=0) <= 1
    assert since(upstream.throttled_per_window, refused) == {}  # none once Redis is back
    assert max(upstream.served_per_window.values()) <= 10
    assert {limiter.state().sharing for limiter in limiters} == {"shared"}


async def test_redis_hanging_means_the_local_share_after_a_short_timeout(
    own_redis: RedisServer,
) -> None:
    """A hung Redis costs a call ``timeout_s``, then the wait until this replica's member
    entry has lapsed (``3 * heartbeat_s``: the others hold its share aside from then on), not
    the caller's deadline."""
    upstream = FixedWindow(10, 0.3)
    async with replicas(own_redis.url, "t:", 1, limit=10, window_s=0.3, margin_s=None,
                        retry_s=0.1, timeout_s=0.2, heartbeat_s=0.1) as (limiter,):  # fmt: skip
        await burst([limiter], upstream, 5)
        own_redis.signal(signal.SIGSTOP)  # connected, never answering
        started = now()

        await call_through(limiter, upstream)

        assert now() - started < 1.0
        assert limiter.state().sharing == "degraded"
        own_redis.signal(signal.SIGCONT)
        await until(lambda: limiter.shared)
        await burst([limiter], upstream, 10)
    assert dict(upstream.throttled_per_window) == {}


async def test_a_429_seen_while_redis_was_down_pauses_every_replica_when_it_is_back(
    own_redis: RedisServer,
) -> None:
    async with replicas(own_redis.url, "t:", 2, retry_s=0.05) as (seen, other):
        probe = await seen.acquire(Priority.NORMAL, None)
        await answered(seen, probe, 200, headers(40, 39, 30))
        own_redis.stop()
        sent = await seen.acquire(Priority.NORMAL, None)  # from the local share
        await answered(seen, sent, 429, headers(40, 0, 20))
        own_redis.start()
        await until(lambda: seen.shared and other.shared)  # both noticed the outage

        with pytest.raises(UpstreamThrottled) as refused:
            await other.acquire(Priority.NORMAL, now() + 1)

        assert other.shared
        assert refused.value.reset_after_s is not None and refused.value.reset_after_s > 15


async def test_a_replica_rejoining_while_a_probe_is_out_lets_the_next_probe_go_at_once(
    own_redis: RedisServer,
) -> None:
    """Rejoining starts a new epoch: the probe out answers for the old one, so its lease must
    not hold the others back until it lapses (10 s)."""
    async with (
        replicas(own_redis.url, "t:", 1) as (prober,),
        replicas(own_redis.url, "t:", 1, retry_s=0.3) as (returning,),
    ):
        first = await prober.acquire(Priority.NORMAL, None)
        await answered(prober, first, 200, headers(40, 39, 30))
        own_redis.stop()
        local = await returning.acquire(Priority.NORMAL, None)  # the local share
        returning.release(local)
        own_redis.start()
        probe = await prober.acquire(Priority.NORMAL, None)  # a Redis that forgot everything
        assert probe.probe
        await until(lambda: returning.shared)
        await answered(prober, probe, 200, headers(40, 37, 30))  # an answer of the old epoch
        started = now()

        again = await returning.acquire(Priority.NORMAL, now() + 2)

        assert again.probe and now() - started < 0.5
        returning.release(again)


async def test_an_acquire_retried_by_the_client_is_granted_once(
    redis_prefix: tuple[str, str],
) -> None:
    """The process's client retries a command once when the connection fails: a script that ran
    but whose answer was lost answers the retry with its first answer."""
    url, prefix = redis_prefix
    client = open_redis(url)
    acquire = client.register_script(limiter_scripts.ACQUIRE)
    window = f"{prefix}w"
    keys = [window, f"{prefix}w:waiting", f"{prefix}w:answer:me", f"{prefix}w:members",
            f"{prefix}w:known"]  # fmt: skip
    await client.hset(window, mapping={"limit": 40, "remaining": 30, "end": 2**52, "probing": 0})
    args = [40, 60_000_000, 0, "me", 1, 5, "0,5,0", 0, 10_000_000, 0, 3_000_000, 25_000]
    members = [3_000_000, 120_000_000, 1, 0]  # lapse, expiry, replicas, member before
    try:
        first = await acquire(keys=keys, args=[*args, 7, *members])
        retried = await acquire(keys=keys, args=[*args, 7, *members])
        another = await acquire(keys=keys, args=[*args, 8, *members])

        assert first[0] == retried[0] == another[0] == 5
        assert first[:10] == retried[:10]
        assert int(await client.hget(window, "remaining")) == 20  # two grants of 5, not three
    finally:
        await client.aclose()


async def paused(limiter: SharedRateLimiter) -> bool:
    """Whether the limiter refuses a call due within the next second."""
    try:
        permit = await limiter.acquire(Priority.NORMAL, now() + 1)
    except UpstreamThrottled:
        return True
    limiter.release(permit)
    return False


async def test_a_429_answered_after_redis_returned_to_a_call_sent_while_it_was_away_pauses_everyone(
    own_redis: RedisServer,
) -> None:
    """A call sent from the local share while Redis was away (a createlabel, a Cin7 Core
    write-back) is answered 429 just after the replica rejoined. ``observe`` sent an answer to
    Redis only for a permit Redis had granted, so this 429 went to the unused local model and
    nobody was paused, this replica included: the rejoined window was probing, so the next
    caller anywhere probed at once into a key upstream had just said was exhausted for 20 s.
    Now every refusal goes to the shared window when Redis answers."""
    async with replicas(own_redis.url, "t:", 2, retry_s=0.05, heartbeat_s=0.1) as (seen, other):
        probe = await seen.acquire(Priority.NORMAL, None)
        await answered(seen, probe, 200, headers(40, 39, 30))
        own_redis.stop()
        sent = await seen.acquire(Priority.URGENT, None)  # from the local share
        assert not sent.shared
        own_redis.start()
        await until(lambda: seen.shared and other.shared)  # both noticed the outage

        await answered(seen, sent, 429, headers(40, 0, 20))  # its answer comes back now

        assert await paused(other), "another replica is granted a call into the pause"
        assert await paused(seen), "the replica that saw the 429 is granted a call into it"


async def test_a_replica_cut_off_spends_nothing_until_the_others_hold_its_share_aside(
    redis_prefix: tuple[str, str],
) -> None:
    """The others hold a share aside for a replica once its member entry has lapsed
    (``3 * heartbeat_s`` after its last heartbeat); a replica cut off before then waits for
    that moment, by its own clock, before its first call from the local share."""
    url, prefix = redis_prefix
    target = urlsplit(url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    async with replicas(proxy.url_for(url), prefix, 1, heartbeat_s=0.2) as (cut_off,):
        probe = await cut_off.acquire(Priority.NORMAL, None)
        await answered(cut_off, probe, 200, headers(40, 39, 30))
        await cut_off.join()
        joined = now()
        await proxy.cut()

        permit = await cut_off.acquire(Priority.NORMAL, None)

        assert not permit.shared and cut_off.state().sharing == "degraded"
        assert now() - joined >= 0.6  # 3 x heartbeat_s after its last heartbeat's answer
        cut_off.release(permit)
    await proxy.close()


async def test_one_replica_cut_off_from_redis_does_not_spend_on_top_of_the_shared_window(
    redis_prefix: tuple[str, str],
) -> None:
    """The local share was conservative only if *every* replica lost Redis at once. When one
    alone cannot reach it (a partition, its connection pool exhausted, its event loop stalled
    past ``timeout_s``) it took its share locally while the others, still shared, were granted
    the whole window Redis keeps, which knows nothing of the cut-off replica's calls: upstream
    got the window plus the share, 429s for everyone with Redis up. Now the cut-off replica's
    member entry lapses first, and the others hold its share aside."""
    url, prefix = redis_prefix
    target = urlsplit(url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    options: dict[str, Any] = {"limit": 10, "window_s": 2.0, "margin_s": None, "retry_s": 5.0,
                               "heartbeat_s": 0.1}  # fmt: skip
    upstream = Upstream(10, 2.0)
    async with (
        replicas(proxy.url_for(url), prefix, 1, **options) as (cut_off,),
        replicas(url, prefix, 1, **options) as (shared,),
    ):
        await upstream.call(shared)  # the window: 9 left
        await upstream.call(cut_off)  # 8 left
        await proxy.cut()

        await upstream.call(cut_off)  # its local share's probe, once its entry lapsed
        assert not cut_off.shared and shared.shared
        await asyncio.gather(*(upstream.call(cut_off) for _ in range(cut_off.remaining)))
        await upstream.burst(shared, 10)  # ten quotes at once: what the shared window grants
        served = upstream.served()
    await proxy.close()

    assert upstream.refused() == {}, served
    assert served == {0: 9}  # 2 shared, the share's 5 (its probe among them), then 2 more


async def test_a_replica_rejoining_first_does_not_take_the_share_of_one_still_cut_off(
    own_redis: RedisServer,
) -> None:
    """Redis restarts, empty. Replica X notices within ``retry_s`` and rejoins: its probe's
    Remaining became the shared window, as if X were alone, while Y, which has not pinged yet
    (here it retries every 5 s), went on spending its local share in the same upstream window:
    429s right after Redis returned. Now a rejoin holds a share aside for every replica Redis
    has not heard from since, for two windows (or until they rejoin)."""
    upstream = Upstream(10, 2.0)
    options: dict[str, Any] = {"limit": 10, "window_s": 2.0, "heartbeat_s": 0.1}
    async with (
        replicas(own_redis.url, "t:", 1, retry_s=0.05, **options) as (x,),
        replicas(own_redis.url, "t:", 1, retry_s=5.0, **options) as (y,),
    ):
        await upstream.call(x)  # the shared window: 9 left
        own_redis.stop()
        await upstream.call(y)  # Y cut off: its local share's probe
        await upstream.call(x)  # X cut off: its local share's probe
        assert not x.shared and not y.shared
        own_redis.start()
        await until(lambda: x.shared)
        assert not y.shared

        await upstream.call(x)  # X's probe of the shared window
        burst = [upstream.call(x) for _ in range(x.remaining)]
        burst += [upstream.call(y) for _ in range(y.remaining)]
        await asyncio.gather(*burst)

    assert upstream.refused() == {}, upstream.served()
    assert max(upstream.served().values()) <= 10


async def test_a_replica_that_closes_leaves_the_members_and_is_held_for_no_more(
    redis_prefix: tuple[str, str],
) -> None:
    """A replica stopping gracefully (a rolling deploy) leaves the members: the others hold
    nothing aside for it. (For two windows after the first member joined, Redis holds a share
    for every replica it has not heard from: past them here.)"""
    options: dict[str, Any] = {"limit": 10, "window_s": 0.2, "heartbeat_s": 0.1}
    async with replicas(*redis_prefix, 1, **options) as (staying,):
        async with replicas(*redis_prefix, 1, **options):
            pass  # it joined, and left
        await asyncio.sleep(0.5)  # past its lapse, and past the two windows of doubt

        probe = await staying.acquire(Priority.NORMAL, None)
        await answered(staying, probe, 200, headers(10, 9, 30))
        permits = [await staying.acquire(Priority.NORMAL, now() + 0.1) for _ in range(9)]

        assert staying.remaining == 0 and all(permit.shared for permit in permits)


async def test_a_member_gone_without_leaving_is_held_for_two_windows_then_no_more(
    redis_prefix: tuple[str, str],
) -> None:
    """A replica that stops heartbeating (killed, or cut off for good) may be spending its
    local share: the others hold its share aside from the lapse of its entry until two windows
    later; then its entry is gone and the window whole again. The trade-off: a killed replica
    costs the others its share for two windows; one still cut off after them may overspend by
    its share (README, *Running replicas*)."""
    url, prefix = redis_prefix
    target = urlsplit(url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    upstream = Upstream(10, 0.5)
    options: dict[str, Any] = {"limit": 10, "window_s": 0.5, "heartbeat_s": 0.1, "retry_s": 30}
    async with (
        replicas(url, prefix, 1, **options) as (staying,),
        replicas(proxy.url_for(url), prefix, 1, **options),
    ):
        await at(upstream.origin, 0.6)
        await proxy.cut()  # the other is gone for good: its entry lapses at ~0.9 s

        await at(upstream.origin, 1.2)  # Redis's doubt about unknown members ended at ~1 s
        await upstream.burst(staying, 10, latency_s=0)  # the other's share held aside
        await at(upstream.origin, 2.2)  # its entry was removed at ~1.9 s
        await upstream.burst(staying, 10, latency_s=0)
    await proxy.close()

    assert upstream.refused() == {}
    assert upstream.served() == {2: 5, 4: 10}


# --- against the ShipStation sandbox --------------------------------------------------------------

RATE = RateRequest(
    carrier_code="fedex",
    ship_from=Address(postal_code="78703", country="US"),
    ship_to=Address(postal_code="10001", country="US", state="NY"),
    weight=Weight(value=1, unit="lb"),
)


@pytest.fixture
def tight_sandbox() -> ShipStationSandbox:
    return ShipStationSandbox(knobs=Knobs(rate_limit=20, window_s=0.4))


@pytest.fixture
async def sandbox_url(aiohttp_server: Any, tight_sandbox: ShipStationSandbox) -> str:
    server: TestServer = await aiohttp_server(tight_sandbox.app)
    return str(server.make_url("")).rstrip("/")


def shipstation(url: str, *, limit: int = 40) -> ShipStationConfig:
    return ShipStationConfig(
        url=url, api_key=Secret("sandbox-key"), api_secret=Secret("sandbox-secret"),
        rate_limit=limit, window_s=0.4,
    )  # fmt: skip


async def test_three_clients_sharing_one_limiter_get_no_429_from_the_sandbox(
    redis_prefix: tuple[str, str], sandbox_url: str, tight_sandbox: ShipStationSandbox
) -> None:
    async with (
        replicas(*redis_prefix, 3, window_s=0.4, margin_s=None) as limiters,
        aiohttp.ClientSession() as session,
    ):
        clients = [ShipStationClient(session, shipstation(sandbox_url), lim) for lim in limiters]
        results = await asyncio.gather(
            *(clients[i % 3].get_rates(RATE, deadline=now() + 30) for i in range(120))
        )

    assert all(results)
    assert tight_sandbox.throttled == 0
    served = tight_sandbox.window.served_per_window
    assert sum(served.values()) == 120
    assert max(served.values()) <= 20
    assert min(full_windows(served)) >= 18


async def test_replica_processes_sharing_one_limiter_get_no_429_and_use_the_budget(
    redis_prefix: tuple[str, str], sandbox_url: str, tight_sandbox: ShipStationSandbox
) -> None:
    url, prefix = redis_prefix
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = (*REPLICA, "rates", sandbox_url, url, prefix, "60")
    pipes = {"stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE}
    processes = [
        await asyncio.create_subprocess_exec(*command, **pipes, env=env, cwd=ROOT) for _ in range(3)
    ]
    for process in processes:  # all set up, then all at once
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
    outputs = await asyncio.wait_for(
        asyncio.gather(*(p.communicate(b"go\n") for p in processes)), 50
    )

    reports = [json.loads(stdout) for stdout, _ in outputs]
    assert [p.returncode for p in processes] == [0, 0, 0]
    assert reports == [{"rated": 60, "refused": 0}] * 3
    assert tight_sandbox.throttled == 0
    served = tight_sandbox.window.served_per_window
    assert sum(served.values()) == 180
    assert max(served.values()) <= 20
    assert min(full_windows(served)) >= 18


@pytest.mark.parametrize("header", ["X-Rate-Limit-Limit", "X-Rate-Limit-Remaining",
                                    "X-Rate-Limit-Reset"])  # fmt: skip
async def test_an_unparseable_huge_rate_header_does_not_fail_a_successful_call(
    aiohttp_server: Any, redis_prefix: tuple[str, str], header: str
) -> None:
    """``1e999`` / ``inf`` in a rate header became ``inf``: ``int(inf)`` raised inside
    ``observe`` (a 200 became a 500, a bought label a crash), and a huge Reset made the
    OBSERVE script fail after its HSET. Such a header is ignored."""

    async def getrates(_request: web.Request) -> web.Response:
        return web.json_response([], headers={header: "1e999"})

    app = web.Application()
    app.router.add_post("/shipments/getrates", getrates)
    server = await aiohttp_server(app)
    url, prefix = redis_prefix
    async with replicas(url, prefix, 1) as (limiter,), aiohttp.ClientSession() as session:
        client = ShipStationClient(session, shipstation(str(server.make_url("")).rstrip("/")),
                                   limiter)  # fmt: skip
        assert await client.get_rates(RATE, deadline=now() + 5) == []
        await limiter.flush()
        assert await client.get_rates(RATE, deadline=now() + 5) == []
        assert limiter.shared


# --- the factory ------------------------------------------------------------------------------


async def test_the_factory_shares_with_redis_and_stays_in_process_without(
    redis_prefix: tuple[str, str],
) -> None:
    url, prefix = redis_prefix
    client = open_redis(url)
    shared = make_limiter("cin7:app", limit=60, window_s=60, redis=client, prefix=prefix)
    local = make_limiter("cin7:app", limit=60, window_s=60)
    try:
        permit = await shared.acquire(Priority.URGENT, None)
        shared.release(permit)

        assert isinstance(shared, SharedRateLimiter) and shared.state().sharing == "shared"
        assert isinstance(local, RateLimiter) and local.state().sharing == "local"
        assert await client.exists(f"{prefix}limit:v1:{{cin7:app}}") == 1
    finally:
        await shared.aclose()
        await client.aclose()


async def redis_now(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1_000_000 + int(micros)


def window_key(prefix: str, name: str) -> str:
    return redis_key(prefix, "limit", "v1", f"{{{name}}}")


# --- review round 5: heartbeats roll nothing, idle limiters cost nothing, a stop leaves --------


async def test_an_idle_shared_window_keeps_its_dead_zone_small_and_grants_a_caller_at_once(
    redis_prefix: tuple[str, str],
) -> None:
    """Every heartbeat (BEAT) runs the prelude's roll, so an idle key's window is rolled by
    heartbeats, window after window, with no answer to correct it: the roll moves ``soft`` by
    exactly one window but sets ``end = now + window + margin``, ``now`` being the heartbeat's
    time (at or after the old end). ``end - soft`` (the dead zone) grows by the margin plus
    the heartbeat's lateness every idle window - for ShipStation by 1-2 s a window, until it
    covers nearly the whole 60 s window (~35 idle minutes) before the idle-probe branch resets
    it. A quote arriving then on a key nobody used for half an hour waits up to ~55 s and is
    refused ``upstream_throttled`` at its deadline. (README: "about 3 s of each 60 s window".)
    Now BEAT changes nothing of the window, and a roll moves both bounds by one window.
    Here: 0.3 s window, heartbeat 0.05 s."""
    url, prefix = redis_prefix
    upstream = Upstream(10, 0.3)
    async with replicas(url, prefix, 1, limit=10, window_s=0.3, margin_s=None,
                        heartbeat_s=0.05) as (limiter,):  # fmt: skip
        await upstream.call(limiter, 0.01)  # the probe: the window's bounds are known
        client = limiter._redis.redis
        key = window_key(prefix, "shipstation:key")
        widest, refused = 0.0, 0
        stop = now() + 2.0
        while now() < stop:
            end, soft = await client.hmget(key, "end", "soft")
            at_us = await redis_now(client)
            if end is not None and soft is not None:
                zone = (int(end) - int(soft)) / 1e6
                widest = max(widest, zone)
                # inside a wide dead zone: a caller willing to wait a third of the window
                if zone > 0.15 and int(soft) - 15_000 <= at_us and int(end) - at_us > 0.12e6:
                    try:
                        permit = await limiter.acquire(Priority.NORMAL, now() + 0.1)
                    except UpstreamThrottled:
                        refused += 1
                    else:
                        upstream.send(limiter, permit)  # its answer is never delivered
                        limiter.release(permit)
                        break
            await asyncio.sleep(0.02)

    assert (widest <= 0.3 * 0.3, refused) == (True, 0), (
        f"dead zone grew to {widest:.3f} s of a 0.3 s window; {refused} callers refused in it"
    )


async def test_after_an_idle_stretch_the_shared_limiter_probes_before_it_bursts(
    redis_prefix: tuple[str, str],
) -> None:
    """README (Probing when unsure): after an idle stretch a single call goes first, "so a key
    exhausted by someone else costs one 429 per window, not a burst". The in-process limiter
    does it; the shared one never sees an idle stretch: the heartbeats roll its window every
    window, each time "promptly", so the roll never takes the idle branch and the next burst
    goes out whole. Here another program spends the key in every upstream window while our
    limiter idles two windows; then ten callers arrive: the local limiter costs one 429 per
    window, the shared one ten. Now only calls roll the window, and the first call after the
    idle stretch finds it idle: a probe."""
    url, prefix = redis_prefix
    upstream = Upstream(10, 0.5)
    origin = upstream.origin

    async def someone_else(windows: int) -> None:
        for index in range(1, windows + 1):
            await at(origin, index * 0.5 + 0.01)
            for _ in range(10):
                upstream.window.admit()

    async with replicas(url, prefix, 1, limit=10, window_s=0.5, margin_s=None,
                        heartbeat_s=0.05) as (limiter,):  # fmt: skip
        await upstream.call(limiter, 0.01)  # window 0: the probe
        other = asyncio.create_task(someone_else(4))
        await at(origin, 1.5 + 0.05)  # idle through windows 1 and 2 (heartbeats only)
        await upstream.burst(limiter, 10, latency_s=0.01)
        await other

    ours = sum(upstream.refused().values())
    assert ours <= 2, f"{ours} calls refused with 429: {upstream.refused()}"


async def test_a_replica_closing_with_callers_waiting_leaves_the_members_for_good(
    redis_prefix: tuple[str, str],
) -> None:
    """``aclose`` removes the member entry (``leave``) and then, when this replica had waiters
    registered, runs ACQUIRE with zero counts to withdraw them - and ACQUIRE's ``join``
    ZADDs the member again. The replica that stopped gracefully (a rolling deploy under
    traffic: callers waiting at the limiter) is a member again, lapses 3 s later, and every
    other replica holds ``limit // replicas`` aside for it for two more windows (2 minutes at
    ShipStation). README: the entry is removed "at once when the replica stops gracefully".
    Now ``aclose`` withdraws the waiters first and leaves last."""
    url, prefix = redis_prefix
    options: dict[str, Any] = {"limit": 10, "window_s": 0.4, "heartbeat_s": 0.05}
    async with replicas(url, prefix, 1, **options) as (staying,):
        async with replicas(url, prefix, 1, **options) as (leaving,):
            await asyncio.sleep(0.9)  # past the two windows of doubt of a new member set
            probe = await staying.acquire(Priority.NORMAL, None)
            await answered(staying, probe, 200, headers(10, 0, 0.3))  # nothing left
            waiter = asyncio.create_task(leaving.acquire(Priority.NORMAL, now() + 5))
            await asyncio.sleep(0.1)  # its dispatcher registered the waiter in Redis
            me = leaving._redis.me
        # leaving closed here (the waiter is refused)
        with pytest.raises(UpstreamThrottled):
            await waiter
        members = await staying._redis.redis.zrange(
            window_key(prefix, "shipstation:key") + ":members", 0, -1
        )
        await asyncio.sleep(0.4)  # the window rolled, the re-added entry lapsed
        await staying.join()
        held = staying._redis.window.held if staying._redis.window else None

    assert (me.encode() in members, held) == (False, 0), (
        f"the stopped replica is a member again ({me.encode() in members}); "
        f"{held} calls a window held aside for it"
    )


async def test_idle_limiters_do_not_each_run_a_redis_script_every_heartbeat(
    redis_prefix: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_beat_forever`` runs BEAT (a Lua script: ZREMRANGEBYSCORE, ZADD, HMGET, 3 HSETs, 3
    PEXPIREs) for every limiter instance every ``heartbeat_s`` for the life of the process,
    whether or not it was ever used. An integrator with 1,000 accounts has ~2,000 limiters
    (ShipStation + Cin7 Core) per process: 2,000 scripts a second per process, 12,000 a
    second on Redis for 3 replicas of 2 workers, for keys nobody calls; measured here, 2,000
    idle limiters cost a process ~28 % of a core. Now a limiter that granted nothing for two
    windows (or never) leaves the members and stops beating until its next call."""
    url, prefix = redis_prefix
    scripts = 0
    original = limiter_window.RedisWindow._run

    async def counting(self: Any, script: Any, *args: Any, **kwargs: Any) -> list[int]:
        nonlocal scripts
        scripts += 1
        return await original(self, script, *args, **kwargs)

    monkeypatch.setattr(limiter_window.RedisWindow, "_run", counting)
    client = open_redis(url)
    limiters = [
        SharedRateLimiter(
            f"shipstation:{i:016x}",
            redis=client,
            prefix=prefix,
            limit=40,
            window_s=60.0,
            heartbeat_s=0.2,
        )
        for i in range(100)
    ]
    try:
        await asyncio.sleep(0.5)  # each joined once
        before = scripts
        await asyncio.sleep(2.0)  # nobody calls
        idle_scripts = scripts - before
    finally:
        for limiter in limiters:
            await limiter.aclose()
        await client.aclose()

    assert idle_scripts <= 20, f"100 idle limiters ran {idle_scripts} scripts in 2 s"


async def test_a_cold_start_uses_the_whole_window_and_a_redis_that_lost_its_members_doubts(
    redis_prefix: tuple[str, str],
) -> None:
    """Redis holding no members meant "it forgot them" (a restart), so for two windows a share
    was held aside per replica not heard from: a single-process deployment (the default
    ``RATESVC_REPLICAS`` is 2) had half its budget for two minutes after every start, and,
    with idle limiters leaving the members, after every idle stretch. Now only a replica that
    was a member before, finding that Redis no longer knows the window had members, doubts."""
    url, prefix = redis_prefix
    options: dict[str, Any] = {"limit": 10, "window_s": 30.0, "heartbeat_s": 0.1}
    async with replicas(url, prefix, 1, **options) as (alone,):
        probe = await alone.acquire(Priority.NORMAL, None)
        await answered(alone, probe, 200, headers(10, 9, 20))
        await alone.acquire(Priority.NORMAL, now() + 0.1)
        assert alone._redis.window is not None and alone._redis.window.held == 0

        client = alone._redis.redis
        await client.delete(*alone._redis.keys)  # Redis lost its data
        await alone.join()

        assert alone._redis.window is not None and alone._redis.window.held == 5
