"""The carrier catalogue of an account: connected carriers with their services and package types.

Loading it costs 1 + 2 × carriers ShipStation calls out of a 40-per-minute budget, so it is read
once and kept for ``carriers_ttl_s`` (hours). When the kept copy is older than that, a request
still gets it at once and a single background task refreshes it (stale-while-revalidate); a
failed refresh keeps the old copy and is tried again on a later request. Only the very first load
makes a request wait, and concurrent first requests share that one load.

A carrier whose services or package types cannot be listed still appears (with empty lists, so
it is still rated); such a partial catalogue is refreshed again after a minute instead of hours.

**Shared by replicas** (:meth:`CarrierCatalog.share`): the copy and its ``version`` live in a
:class:`CatalogSharing` store (Redis), so every replica quotes from the same catalogue and keys
replays by the same version, under a *scope* naming the account and what its catalogue is made from
(:func:`catalog_scope`: key pair, carrier allow-list). One replica at a time loads or refreshes an
account's catalogue (it *claims* it); the others wait for the copy it publishes (a first load) or
keep using theirs (a refresh). A replica asks the store whether the version changed at most every
``sync_s``. When the store cannot be reached, each replica loads and keeps its own copy as above,
with versions of its own (negative, so they never equal a shared one).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ratesvc.config import Account
from ratesvc.errors import StorageUnavailable, UpstreamFailure, UpstreamTimeout
from ratesvc.limiter import Priority
from ratesvc.metrics import Metrics
from ratesvc.models import CarrierCatalogEntry, CarriersResponse
from ratesvc.upstreams.shipstation.client import ShipStationClient

log = logging.getLogger(__name__)

_BACKGROUND_DEADLINE_S = 120.0
_PARTIAL_RETRY_S = 60.0
_SYNC_S = 2.0  # a replica's copy is checked against the shared version at most this often
_POLL_S = (0.02, 0.25)  # waiting for another replica's first load: first and longest pause


@dataclass(frozen=True)
class SharedCopy:
    """What the shared store holds for an account: ``snapshot`` is None when it is the version
    the asker already has."""

    version: int
    snapshot: CarriersResponse | None
    refresh_due: bool


def catalog_scope(account: Account) -> str:
    """What an account's catalogue is shared under: its name and what the catalogue is made
    from, the ShipStation account (:meth:`~ratesvc.config.ShipStationConfig.cache_id`) and the
    carrier allow-list. A replica configured otherwise (a carrier removed, another key pair)
    never adopts a catalogue published under the old configuration."""
    allowed = None if account.carriers is None else sorted(account.carriers)
    named = msgspec.json.encode([account.shipstation.cache_id(), allowed])
    return f"{account.name}:{hashlib.sha256(named).hexdigest()[:32]}"


class CatalogSharing(Protocol):
    """Where replicas keep each account's catalogue; every method raises
    :class:`~ratesvc.errors.StorageUnavailable` when the store cannot be reached."""

    async def read(self, account: str, *, known_version: int) -> SharedCopy | None:
        """The shared copy (None: nobody published one yet)."""

    async def claim(self, account: str, *, hold_s: float) -> str | None:
        """A token when this replica is now the one to load the catalogue (for ``hold_s`` at
        most), None when another replica holds the claim."""

    async def publish(
        self, account: str, token: str, snapshot: CarriersResponse, *, refresh_in_s: float
    ) -> int:
        """Store ``snapshot`` as the new shared copy and end the claim; its version."""

    async def release(self, account: str, token: str) -> None:
        """End the claim without publishing (the load failed)."""


class CarrierCatalog:
    def __init__(
        self,
        client: ShipStationClient,
        *,
        account: str,
        ttl_s: float,
        allowed: tuple[str, ...] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self._account = account
        self._ttl_s = ttl_s
        self._allowed = allowed
        self._metrics = metrics
        self._snapshot: CarriersResponse | None = None
        self._loaded_at = 0.0
        self._loading: asyncio.Task[CarriersResponse] | None = None
        self.version = 0  # goes up with every load, so answers built on an older one are known
        self._sharing: CatalogSharing | None = None
        self._shared_as = account
        self._checked_at = float("-inf")
        self._syncing: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._sync_s = _SYNC_S
        self._next_claim = 0.0
        self._local_versions = 0

    def share(
        self, sharing: CatalogSharing, *, scope: str | None = None, sync_s: float = _SYNC_S
    ) -> None:
        """Keep the catalogue and its version in ``sharing``, with the other replicas, under
        ``scope`` (:func:`catalog_scope`; the account's name when None); this replica's copy is
        checked against the shared version at most every ``sync_s``."""
        self._sharing = sharing
        self._shared_as = scope or self._account
        self._sync_s = sync_s

    async def current_version(self) -> int:
        """The version of the catalogue requests are quoted from (checked with the other
        replicas when shared)."""
        if self._sharing is not None:
            await self._sync()
        return self.version

    async def get(self, *, deadline: float) -> CarriersResponse:
        """The catalogue; waits (until ``deadline``) only when there is no copy at all."""
        loop = asyncio.get_running_loop()
        if self._sharing is not None:
            await self._sync()
        if self._snapshot is not None:
            if loop.time() - self._loaded_at > self._ttl_s:
                self._start_refresh()
            return self._snapshot
        task = self._start_load(Priority.NORMAL, deadline)
        try:
            async with asyncio.timeout_at(deadline):
                # shield: a caller giving up must not cancel the load other callers share
                return await asyncio.shield(task)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                "ShipStation did not list the carriers before the deadline",
                upstream="shipstation",
                endpoint="carriers",
            ) from exc

    async def close(self) -> None:
        tasks = [t for t in (self._loading, self._refreshing, self._syncing) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- loading -------------------------------------------------------------------------------

    def _start_load(self, priority: Priority, deadline: float) -> asyncio.Task[CarriersResponse]:
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._load(priority, deadline))
            self._loading.add_done_callback(_consume_exception)
        return self._loading

    def _start_refresh(self) -> None:
        """Refresh in the background (a failure keeps the copy; a later request tries again)."""
        loop = asyncio.get_running_loop()
        busy = self._refreshing is not None and not self._refreshing.done()
        loading = self._loading is not None and not self._loading.done()
        if busy or loading or loop.time() < self._next_claim:
            return
        self._refreshing = asyncio.create_task(self._refresh(loop.time() + _BACKGROUND_DEADLINE_S))
        self._refreshing.add_done_callback(_consume_exception)

    async def _refresh(self, deadline: float) -> None:
        if self._sharing is None:
            await self._load(Priority.BACKGROUND, deadline)
            return
        try:
            token = await self._sharing.claim(self._shared_as, hold_s=_BACKGROUND_DEADLINE_S + 5)
        except StorageUnavailable:
            await self._load(Priority.BACKGROUND, deadline)
            return
        if token is None:  # another replica refreshes it; its copy is picked up when published
            self._next_claim = asyncio.get_running_loop().time() + self._sync_s
            return
        await self._load_claimed(token, Priority.BACKGROUND, deadline, refreshing=True)

    async def _load(self, priority: Priority, deadline: float) -> CarriersResponse:
        """A first load (or, unshared, any load): shared, it waits for the replica that holds
        the claim, taking the claim over when that replica gives it up or dies."""
        loop = asyncio.get_running_loop()
        pause = _POLL_S[0]
        while self._sharing is not None:
            try:
                token = await self._sharing.claim(
                    self._shared_as, hold_s=max(1.0, deadline - loop.time()) + 1.0
                )
                if token is not None:
                    return await self._load_claimed(token, priority, deadline, refreshing=False)
                copy = await self._sharing.read(self._shared_as, known_version=self.version)
            except StorageUnavailable:
                break
            if copy is not None and copy.snapshot is not None:
                self._adopt(copy.snapshot, copy.version)
                return copy.snapshot
            if loop.time() + pause >= deadline:
                raise UpstreamTimeout(
                    "another replica is listing the carriers and did not finish before the "
                    "deadline", upstream="shipstation", endpoint="carriers",
                )  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_S[1])
        snapshot, partial = await self._fetch(priority, deadline)
        self._adopt(snapshot, self._local_version() if self._sharing else self.version + 1)
        if partial:
            self._loaded_at -= max(0.0, self._ttl_s - _PARTIAL_RETRY_S)
        return snapshot

    async def _load_claimed(
        self, token: str, priority: Priority, deadline: float, *, refreshing: bool
    ) -> CarriersResponse:
        """Load and publish the catalogue under the claim ``token`` — unless another replica
        published what is needed between this one's last look and its claim."""
        assert self._sharing is not None
        with contextlib.suppress(StorageUnavailable):
            copy = await self._sharing.read(self._shared_as, known_version=self.version)
            if copy is not None and not (refreshing and copy.refresh_due):
                await self._sharing.release(self._shared_as, token)
                if copy.snapshot is not None:
                    self._adopt(copy.snapshot, copy.version)
                if self._snapshot is not None:
                    return self._snapshot
        try:
            snapshot, partial = await self._fetch(priority, deadline)
        except BaseException:
            with contextlib.suppress(StorageUnavailable):
                await self._sharing.release(self._shared_as, token)
            raise
        refresh_in = _PARTIAL_RETRY_S if partial else self._ttl_s
        try:
            version = await self._sharing.publish(
                self._shared_as, token, snapshot, refresh_in_s=refresh_in
            )
        except StorageUnavailable:
            version = self._local_version()
        self._adopt(snapshot, version)
        if partial:
            self._loaded_at -= max(0.0, self._ttl_s - _PARTIAL_RETRY_S)
        return snapshot

    def _local_version(self) -> int:
        """A version for a copy only this replica has (the shared store was unreachable)."""
        self._local_versions -= 1
        return self._local_versions

    def _adopt(self, snapshot: CarriersResponse, version: int) -> None:
        self._snapshot = snapshot
        self.version = version
        self._loaded_at = asyncio.get_running_loop().time()

    async def _sync(self) -> None:
        """Pick up the shared copy when another replica published a newer one (at most every
        ``sync_s``; concurrent callers share one read)."""
        if asyncio.get_running_loop().time() - self._checked_at < self._sync_s:
            return
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.create_task(self._read_shared())
        await asyncio.shield(self._syncing)

    async def _read_shared(self) -> None:
        assert self._sharing is not None
        try:
            copy = await self._sharing.read(self._shared_as, known_version=self.version)
        except StorageUnavailable:
            copy = None
        self._checked_at = asyncio.get_running_loop().time()
        if copy is None:
            return
        if copy.snapshot is not None:
            self._adopt(copy.snapshot, copy.version)
        if copy.refresh_due:
            self._start_refresh()

    async def _fetch(self, priority: Priority, deadline: float) -> tuple[CarriersResponse, bool]:
        """The catalogue from ShipStation, and whether it is partial."""
        outcome = "error"
        try:
            carriers = await self._client.list_carriers(deadline=deadline, priority=priority)
            if self._allowed is not None:
                carriers = [c for c in carriers if c.carrier_code in self._allowed]

            partial = False

            async def entry(code: str, name: str, nickname: str | None) -> CarrierCatalogEntry:
                nonlocal partial
                try:
                    services, packages = await asyncio.gather(
                        self._client.list_services(code, deadline=deadline, priority=priority),
                        self._client.list_packages(code, deadline=deadline, priority=priority),
                    )
                except UpstreamFailure as exc:
                    log.warning("services of %s not listed (%s); retrying soon", code, exc.detail)
                    partial = True
                    services, packages = [], []
                return CarrierCatalogEntry(
                    carrier_code=code, name=name, nickname=nickname,
                    services=services, packages=packages,
                )  # fmt: skip

            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(entry(c.carrier_code, c.name, c.nickname)) for c in carriers
                ]
            snapshot = CarriersResponse(
                carriers=[t.result() for t in tasks], refreshed_at=dt.datetime.now(dt.UTC)
            )
            outcome = "partial" if partial else "ok"
            return snapshot, partial
        except* Exception as group:
            # TaskGroup wraps failures; surface the first so callers see a typed upstream error.
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            log.warning("carrier catalogue of %s not loaded: %s", self._account, first)
            raise first from None
        finally:
            if self._metrics is not None:
                self._metrics.catalog_refreshes.labels(self._account, outcome).inc()


def _consume_exception(task: asyncio.Task[CarriersResponse] | asyncio.Task[None]) -> None:
    """A background refresh nobody awaits must not log 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()
