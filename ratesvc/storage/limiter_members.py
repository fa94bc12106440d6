"""A replica's entry in the members of a shared window (:mod:`.shared_limiter`), and when it
keeps one.

**In use, a member.** A limiter that granted a call in the last two windows (or has callers
waiting) refreshes its entry every ``heartbeat_s`` (the dispatcher's acquires do it too while
callers wait); the first heartbeat comes at a random moment within ``heartbeat_s``, so limiters
started together do not beat together. An entry lapses after ``3 * heartbeat_s`` without a
refresh and is removed two windows later, or when the limiter closes. Each acquire holds
``limit // replicas`` calls aside per lapsed member, which may be cut off from Redis and
spending its local share (:mod:`.limiter_share`); after a replica rejoins, or when Redis lost
the members a replica knew it had (a restart), for two windows, per replica Redis has not heard
from (``replicas`` less the live members).

**Idle, not a member.** A limiter that granted nothing for two windows (or never) leaves the
members and stops its heartbeat until its next call: no Redis command for a key nobody calls,
and nothing held aside for it by the others (its entry lapsing would have made them hold its
share for two windows). The cost: cut off from Redis while idle there, it is not covered (its
first call from the local share is a probe, which sees what upstream has left).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

from redis.exceptions import RedisError

from ratesvc.storage.limiter_window import RedisWindow

UNAVAILABLE = (RedisError, OSError, TimeoutError)


class Membership:
    """The heartbeat of one limiter's member entry; ``busy`` says callers wait, ``shared``
    that Redis is in use, ``lost`` is told what a heartbeat raised because of Redis."""

    def __init__(
        self,
        window: RedisWindow,
        *,
        busy: Callable[[], bool],
        shared: Callable[[], bool],
        lost: Callable[[BaseException], None],
    ) -> None:
        self._window = window
        self._busy = busy
        self._shared = shared
        self._lost = lost
        self._active_until = float("-inf")  # idle from then: two windows without a grant
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def used(self) -> None:
        """A call was granted (or a member entry asked for): in use for two more windows."""
        now = asyncio.get_running_loop().time()
        self._active_until = now + self._window.config.expiry_s
        self.start()

    def start(self, *, anyway: bool = False) -> None:
        """Beat while in use (``anyway``: at least once, e.g. after a rejoin, to leave)."""
        loop = asyncio.get_running_loop()
        in_use = self._busy() or loop.time() < self._active_until
        if self._task is None and not self._closing and (in_use or anyway):
            self._task = loop.create_task(self._forever())

    async def beat(self) -> None:
        """Refresh the member entry now."""
        try:
            await self._window.beat()
        except UNAVAILABLE as exc:
            self._lost(exc)

    async def stop(self) -> None:
        self._closing = True  # the loop stops even if a Redis command swallows a cancellation
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        loop = asyncio.get_running_loop()
        heartbeat_s = self._window.config.heartbeat_s
        try:
            await asyncio.sleep(random.uniform(0.0, heartbeat_s))
            while not self._closing:
                idle = not self._busy() and loop.time() >= self._active_until
                if idle and (not self._shared() or await self._leave_idle()):
                    return
                joined = self._window.joined
                if self._shared() and (joined is None or loop.time() - joined[1] >= heartbeat_s):
                    await self.beat()
                await asyncio.sleep(heartbeat_s)
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _leave_idle(self) -> bool:
        """Leave the members, unused: whether the limiter is still idle after (a call that
        came meanwhile may have joined before the removal: then it joins again)."""
        active_until = self._active_until
        with contextlib.suppress(*UNAVAILABLE):
            await self._window.leave()
        if not self._busy() and self._active_until == active_until:
            return True
        await self.beat()
        return False
