"""Work claimed, not assumed: who holds what, for how long, and giving it up when it is lost.

Several replicas share one ledger, so nothing is done because a replica *found* it to do: it is
done by the replica that *claimed* it. A claim is a lease in the ledger — an owner and an expiry —
taken with one conditional statement (it succeeds only when the work is free, expired, or already
the taker's), renewed in the background while the work goes on (every third of its TTL), and
given up when the work is done. A replica that dies stops renewing; once the lease expires
another one adopts the work. Two shapes:

* :class:`Lease` — a named lease (``purchase:<label id>``, ``poller:<account>``) in the
  ``leases`` table, for one piece of work this process drives;
* :class:`Claims` — the leases of the outbox jobs or automation events this process claimed
  (``owner`` and ``lease_until`` on their rows), renewed in one statement per round; the task
  of a row whose claim was lost is cancelled.

Expiry is decided by the database's clock alone (see :meth:`Ledger.acquire_lease
<ratesvc.storage.ledger.Ledger.acquire_lease>`). The holder keeps its own, earlier, idea of the
expiry on its monotonic clock — measured from when it *sent* the statement that took or renewed
the lease, so it always believes in the lease for less time than the database grants it — and
stops using the lease when that passes without a renewal (the database unreachable, say), even
before it learns that someone else took it. Writes that must only be made by the holder are also
*fenced* in the ledger (they check the owner in the same transaction), so a holder that was too
slow to notice cannot overwrite the adopter's work.

Owners are ``host:pid:token`` (:func:`new_owner`): unique per process, and per
:class:`~ratesvc.storage.ledger.Ledger` object, so two replicas simulated in one test process
are two owners. A forked child draws its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ratesvc.storage.records import LeaseLost

if TYPE_CHECKING:
    from ratesvc.storage.ledger import Ledger

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
DEFAULT_TTL_S = 30.0  # a dead replica's work is adopted this long after its last renewal


def this_host() -> str:
    """This machine as owners name it: the host name, and on Linux the pid namespace too
    (``web~4026531836``), so two containers sharing a host name are told apart."""
    try:
        namespace = f"~{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}{namespace}"


def new_owner() -> str:
    """A fresh owner name: ``host:pid:token`` (readable in the ledger, never reused)."""
    return f"{this_host()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_gone(owner: str) -> bool:
    """Whether ``owner``'s process is known to be gone: it ran on this host (same host name and
    pid namespace: another container is another host) and its pid is no longer alive, or it is
    this very process (an earlier ledger object of it, as a restart inside one test process
    leaves). An owner on another host, or a live process here, is not
    gone: its leases and claims are left to expire. A second ``ratesvc serve`` on the same
    SQLite file therefore never takes over what a live first one holds."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != this_host() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def renew_every(ttl_s: float) -> float:
    """How often a lease of ``ttl_s`` is renewed: a third of it, so two renewals in a row may
    fail (a slow database, a busy loop) before it expires. Rounds keep this cadence however
    long one took (each is given up after a period); after a failed one the next comes a
    quarter period later, so one renewal that hung for a whole period still leaves time for
    the next before the lease runs out."""
    return ttl_s / 3


def confirm_margin(ttl_s: float) -> float:
    """How much of a claim of ``ttl_s`` must be left, on the database's clock, for an upstream
    write to be sent under it: a third of it (what is left once two renewals in a row failed).
    A write sent then lands after the claim lapsed only if the upstream takes longer than that
    to apply it."""
    return ttl_s / 3


class Lease:
    """One named lease this process takes, renews while it works, and gives back."""

    def __init__(self, ledger: Ledger, name: str, *, ttl_s: float) -> None:
        self.name = name
        self._ledger = ledger
        self._ttl_s = ttl_s
        self._valid_until = 0.0  # on the loop's monotonic clock
        self._lost = False
        self._renewing: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """Still ours as far as this process can know: not lost, and renewed recently enough
        that the database has not expired it yet."""
        return not self._lost and asyncio.get_running_loop().time() < self._valid_until

    def check(self) -> None:
        """Raises :class:`LeaseLost` unless the lease is :attr:`held` (before an upstream call)."""
        if not self.held:
            raise LeaseLost(self.name)

    async def confirm(self) -> None:
        """Raises :class:`LeaseLost` unless the ledger itself says the lease is still ours and
        unexpired — asked right before a call that must never be made twice (``createlabel``):
        the holder's own belief lags a takeover by up to a renewal period."""
        self.check()
        found = await self._ledger.lease(self.name)
        if found is None or found[0] != self._ledger.owner or found[1] <= 0:
            self._lost = True
            raise LeaseLost(self.name)

    async def acquire(self) -> bool:
        """Take the lease (or extend it, when it is already this process's) and keep renewing it
        in the background; False when another owner holds it."""
        sent = asyncio.get_running_loop().time()
        if not await self._ledger.acquire_lease(self.name, self._ttl_s):
            return False
        self._lost = False
        self._valid_until = sent + self._ttl_s
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew())
        return True

    async def _renew(self) -> None:
        loop = asyncio.get_running_loop()
        period = renew_every(self._ttl_s)
        next_at = loop.time() + period
        warned_at = -float("inf")
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            sent = loop.time()
            next_at = sent + period  # rounds keep their cadence, however long one took
            try:
                async with asyncio.timeout(period):
                    renewed = await self._ledger.renew_lease(self.name, self._ttl_s)
            except Exception as exc:  # the ledger unreachable: held() runs out on its own
                if sent - warned_at >= self._ttl_s:  # a ledger down for long: once a TTL
                    warned_at = sent
                    log.warning("lease %s not renewed (%r); trying again", self.name, exc)
                next_at = min(next_at, loop.time() + period / 4)
                continue
            if not renewed:
                self._lost = True
                log.warning("lease %s was taken by another owner: its work stops here", self.name)
                return
            self._valid_until = sent + self._ttl_s

    async def pause(self) -> None:
        """Stop renewing, keeping the lease until it expires (the poller between rounds)."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None

    async def release(self) -> None:
        """Stop renewing and give the lease back (if it is still ours), so another replica may
        take the work at once. A failure is logged: the lease then simply expires."""
        await self.pause()
        if self._lost:
            return
        self._lost = True
        try:
            await self._ledger.release_lease(self.name)
        except Exception as exc:
            log.warning("lease %s not released (%r); it expires on its own", self.name, exc)


@dataclass
class _Held:
    """One claimed row: the task working on it, and until when (the loop's clock) this process
    believes the claim is its own — the timer that stops the task then, unless renewed."""

    task: asyncio.Task[None]
    valid_until: float
    timer: asyncio.TimerHandle


class Claims(Generic[K]):
    """The rows (outbox jobs or events) this process claimed, each with the task working on it.

    Every :func:`renew_every` seconds all of them are renewed in one statement (``renew`` gives
    the keys still ours back); a task whose claim was not renewed in time is cancelled: its work
    stops before any further upstream call, and its result would be refused anyway. Two ways a
    claim is lost:

    * another owner adopted the row (it expired first): the renewal does not give its key back;
    * the claim ran out here: each claim has a timer at its *valid_until* (measured, like a
      :class:`Lease`, from when the statement that took or last renewed it was sent, so always
      before the database expires it) that cancels its task — even while a renewal is still
      pending. A renewal is itself bounded by the last of the claims' *valid_until*: a
      statement that hangs (the database not answering, the pool exhausted: up to the engine's
      10 s time-outs) neither keeps a task working past its claim nor delays the next round.

    The timer only stops what this process still has to do; a write already sent keeps going.
    Work that writes upstream therefore also confirms its claim in the ledger right before each
    write (:meth:`ratesvc.labels.writeback.WriteBackWorker` does, before every Cin7 Core write).
    """

    def __init__(
        self,
        what: str,
        renew: Callable[[Sequence[K]], Awaitable[set[K]]],
        *,
        ttl_s: float,
    ) -> None:
        self._what = what
        self._renew = renew
        self._ttl_s = ttl_s
        self._held: dict[K, _Held] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, key: K, task: asyncio.Task[None], claimed_at: float) -> None:
        """``task`` works on the row ``key``, claimed by a statement sent at ``claimed_at`` (the
        loop's clock); it is forgotten when the task ends."""
        self._hold(key, task, claimed_at + self._ttl_s)
        task.add_done_callback(lambda done: self._forget(key, done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def _hold(self, key: K, task: asyncio.Task[None], valid_until: float) -> None:
        earlier = self._held.get(key)
        if earlier is not None:
            earlier.timer.cancel()
        timer = asyncio.get_running_loop().call_at(valid_until, self._lapse, key, task)
        self._held[key] = _Held(task, valid_until, timer)

    def _lapse(self, key: K, task: asyncio.Task[None]) -> None:
        held = self._held.get(key)
        if held is None or held.task is not task or task.done():
            return
        log.warning("%s %s: its claim was not renewed in time (it may be adopted now): stopping",
                    self._what, key)  # fmt: skip
        task.cancel()

    def _forget(self, key: K, task: asyncio.Task[None]) -> None:
        held = self._held.get(key)
        if held is not None and held.task is task:
            held.timer.cancel()
            del self._held[key]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        period = renew_every(self._ttl_s)
        next_at = loop.time() + period
        warned_at = -float("inf")
        while self._held:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            keys = list(self._held)
            if not keys:
                continue
            sent = loop.time()
            next_at = sent + period  # rounds keep their cadence, however long one took
            last = max(self._held[key].valid_until for key in keys)
            if last <= sent:  # every claim ran out: their tasks are being stopped
                continue
            try:  # a hung renewal is given up after a period (and with the claims)
                async with asyncio.timeout_at(min(last, sent + period)):
                    kept = await self._renew(keys)
            except Exception as exc:  # the timers stop what runs out meanwhile
                if sent - warned_at >= self._ttl_s:  # a ledger down for long: once a TTL
                    warned_at = sent
                    log.warning("%s claims not renewed (%r); trying again", self._what, exc)
                next_at = min(next_at, loop.time() + period / 4)  # soon: it may answer again
                continue
            for key in keys:
                held = self._held.get(key)
                if held is None or held.task.done():
                    continue
                if key in kept:
                    self._hold(key, held.task, sent + self._ttl_s)
                else:
                    log.warning("%s %s was adopted by another owner: stopping", self._what, key)
                    held.task.cancel()
