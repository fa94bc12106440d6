"""The shared window in Redis as one replica talks to it (:mod:`.shared_limiter`): the Lua
scripts (:mod:`.limiter_scripts`) run with this replica's arguments, every command bounded by
``timeout_s``, and what each answer says of the window, on this process's clock
(:class:`Window`). Whatever Redis raises is the caller's to handle (the local share).

Keys: ``<prefix>limit:v1:{<name>}`` (the window), ``…:waiting`` (the registrations),
``…:members``, ``…:known`` (the window had members lately) and ``…:answer:<replica>`` (the
last answer, for a retried command); one hash slot, all expiring.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from ratesvc.limiter import Permit, Priority, RateHeaders, Waiter
from ratesvc.metrics import Metrics
from ratesvc.storage import limiter_scripts
from ratesvc.storage.redis_client import key as redis_key

_US = 1_000_000


@dataclass(frozen=True)
class Window:
    """The shared window as the last script described it, on this process's clock."""

    epoch: int
    limit: int
    remaining: int
    ends_at: float | None
    slot_at: float
    probing: bool
    soft_at: float | None = None  # the earliest upstream's window can end (None: unknown)
    held: int = 0  # calls the last acquire held aside for replicas that may be cut off


@dataclass(frozen=True)
class Config:
    """What a replica's limiter passes to every script (see :class:`.SharedRateLimiter`)."""

    limit: int
    window_s: float
    margin_s: float
    min_interval_s: float
    pause_s: float
    replicas: int
    reserve: int
    poll_s: float
    heartbeat_s: float
    lease_s: float
    timeout_s: float

    @property
    def lapse_s(self) -> float:
        """How long a member entry or a waiting registration lasts without a refresh."""
        return 3 * self.heartbeat_s

    @property
    def expiry_s(self) -> float:
        """How long the others hold a lapsed member's share aside."""
        return 2 * self.window_s


class RedisWindow:
    """One replica's handle on the shared window of credential ``name``."""

    def __init__(
        self, redis: Redis, prefix: str, name: str, config: Config, metrics: Metrics | None
    ) -> None:
        self.name = name
        self.config = config
        self.redis = redis
        key = redis_key(prefix, "limit", "v1", f"{{{name}}}")
        self.me = f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self.keys = [
            key, f"{key}:waiting", f"{key}:answer:{self.me}", f"{key}:members", f"{key}:known"
        ]  # fmt: skip
        self.window: Window | None = None  # nothing read from Redis yet
        self.mine = (0, 0)  # (epoch, calls) this replica was granted in the shared window
        self.joined: tuple[float, float] | None = None  # the last member refresh: sent, answered
        self.was_member = False  # a member refresh was answered once (None joined: left since)
        self._metrics = metrics
        self._tokens = itertools.count()
        self._acquire = redis.register_script(limiter_scripts.ACQUIRE)
        self._observe = redis.register_script(limiter_scripts.OBSERVE)
        self._hand_back = redis.register_script(limiter_scripts.HAND_BACK)
        self._rejoin = redis.register_script(limiter_scripts.REJOIN)
        self._beat = redis.register_script(limiter_scripts.BEAT)

    async def acquire(
        self, priority: Priority, counts: Sequence[int]
    ) -> tuple[list[Permit], float]:
        """Ask for calls for this replica's ``counts[priority]`` waiters at ``priority`` (and
        register its waiters by priority): the permits granted, or how long to wait."""
        c = self.config
        reply = await self._run(
            self._acquire,
            self.me, int(priority), counts[priority], ",".join(map(str, counts)),
            round(c.min_interval_s * _US), round(c.lease_s * _US), c.reserve,
            round(c.lapse_s * _US), round(c.poll_s * _US), next(self._tokens),
            *self._membership(), member=True,
        )  # fmt: skip
        granted, wait_us, epoch = reply[:3]
        if granted:
            calls = self.mine[1] if self.mine[0] == epoch else 0
            self.mine = (epoch, calls + granted)
        return [self._permit(reply) for _ in range(granted)], wait_us / _US

    @staticmethod
    def _permit(reply: Sequence[int]) -> Permit:
        epoch, probe, counted, paced_from, paced_until, lease = reply[2:8]
        return Permit(
            epoch=epoch, probe=bool(probe), counted=bool(counted), paced_from=paced_from,
            paced_until=paced_until, shared=True, lease=lease if probe else 0,
            granted_at=reply[14],
        )  # fmt: skip

    async def observe(
        self, permit: Permit, info: RateHeaders, refused: bool, *, blank: bool = False
    ) -> None:
        """An answer (a refusal may answer a call of the local share: no grant time then;
        ``blank``: it says nothing of the window, a server error without rate headers)."""
        await self._run(
            self._observe,
            int(refused), permit.epoch, info.limit or 0,
            -1 if info.remaining is None else info.remaining,
            -1 if info.reset_s is None else round(info.reset_s * _US),
            round(self.config.pause_s * _US),
            round(permit.granted_at) if permit.shared else -1,
            round(info.reset_unit_s * _US), int(blank),
        )  # fmt: skip

    async def hand_back(self, permit: Permit, *, call: bool) -> None:
        """A call granted and never sent (``call``: its window call and pacing slot too)."""
        await self._run(
            self._hand_back,
            permit.epoch, int(call and permit.counted), int(permit.paced_from),
            int(permit.paced_until) if call else 0, permit.lease,
        )  # fmt: skip

    async def beat(self) -> None:
        """Refresh this replica's member entry (and read ``held``; the window is not rolled)."""
        await self._run(self._beat, self.me, *self._membership(), member=True)

    async def rejoin(self, pause_s: float | None) -> None:
        """Back from the local share (``pause_s``: what is left of a 429's pause seen there)."""
        pause = -1 if pause_s is None else round(pause_s * _US)
        await self._run(self._rejoin, pause, self.me, *self._membership(), member=True)

    async def leave(self) -> None:
        """Remove this replica's member entry: the others hold nothing aside for it."""
        async with asyncio.timeout(self.config.timeout_s):
            await self.redis.zrem(self.keys[3], self.me)
        self.joined = None  # not a member: cut off now, nobody holds its share aside

    def eta(self, window: Window, position: int, waiter: Waiter, now: float) -> float:
        """Earliest time the waiter at ``position`` could be sent, other replicas aside."""
        c = self.config
        paced = max(now, window.slot_at) + position * c.min_interval_s
        if window.ends_at is None:
            return paced
        reserve = c.reserve if waiter.priority > Priority.URGENT else 0
        fresh = now >= window.ends_at
        left = window.remaining - window.held if not fresh else window.limit
        available = max(0, left - reserve)
        if position < available:
            closed = window.soft_at is not None and window.soft_at - c.margin_s <= paced
            return window.ends_at if not fresh and closed and paced < window.ends_at else paced
        windows_later = (position - available) // max(1, window.limit - reserve)
        return max(paced, window.ends_at + windows_later * (c.window_s + c.margin_s))

    def _membership(self) -> tuple[int, int, int, int]:
        """The ARGV every script refreshing the member entry ends with (the last: whether this
        replica was a member before, so Redis not knowing the window's members means it lost
        them)."""
        c = self.config
        before = int(self.was_member)
        return round(c.lapse_s * _US), round(c.expiry_s * _US), c.replicas, before

    async def _run(self, script: Any, *args: object, member: bool = False) -> list[int]:
        """Run one of the scripts, bounded by ``timeout_s``; remember the window it describes
        (and, with ``member``, that it refreshed this replica's member entry)."""
        c = self.config
        head = (c.limit, round(c.window_s * _US), round(c.margin_s * _US))
        loop = asyncio.get_running_loop()
        sent = loop.time()
        async with asyncio.timeout(c.timeout_s):
            reply: list[int] = await script(keys=self.keys, args=[*head, *args])
        now = loop.time()
        if member:
            self.joined, self.was_member = (sent, now), True
        limit, remaining, ends_in, slot_in, probing, soft, redis_now, held = reply[8:16]
        previous = self.window
        self.window = Window(
            epoch=reply[2], limit=limit, remaining=remaining,
            ends_at=None if ends_in < 0 else now + ends_in / _US, slot_at=now + slot_in / _US,
            probing=bool(probing),
            # the earliest end as early as Redis's answer could mean: from when it was asked
            soft_at=sent + (soft - redis_now) / _US if soft else None,
            held=held if held >= 0 else (previous.held if previous is not None else 0),
        )  # fmt: skip
        if self._metrics is not None:
            self._metrics.limiter_remaining.labels(self.name).set(remaining)
        return reply
