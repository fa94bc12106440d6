"""The carrier catalogue of an account: connected carriers with their services and package types.

Loading it costs 1 + 2 × carriers ShipStation calls out of a 40-per-minute budget, so it is read
once and kept for ``carriers_ttl_s`` (hours). When the kept copy is older than that, a request
still gets it at once and a single background task refreshes it (stale-while-revalidate); a
failed refresh keeps the old copy and is tried again on a later request. Only the very first load
makes a request wait, and concurrent first requests share that one load.

A carrier whose services or package types cannot be listed still appears (with empty lists, so
it is still rated); such a partial catalogue is refreshed again after a minute instead of hours.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from ratesvc.errors import UpstreamFailure, UpstreamTimeout
from ratesvc.limiter import Priority
from ratesvc.metrics import Metrics
from ratesvc.models import CarrierCatalogEntry, CarriersResponse
from ratesvc.upstreams.shipstation.client import ShipStationClient

log = logging.getLogger(__name__)

_BACKGROUND_DEADLINE_S = 120.0
_PARTIAL_RETRY_S = 60.0


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

    async def get(self, *, deadline: float) -> CarriersResponse:
        """The catalogue; waits (until ``deadline``) only when there is no copy at all."""
        loop = asyncio.get_running_loop()
        if self._snapshot is not None:
            if loop.time() - self._loaded_at > self._ttl_s:
                self._start_load(Priority.BACKGROUND, loop.time() + _BACKGROUND_DEADLINE_S)
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
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)

    def _start_load(self, priority: Priority, deadline: float) -> asyncio.Task[CarriersResponse]:
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._load(priority, deadline))
            self._loading.add_done_callback(_consume_exception)
        return self._loading

    async def _load(self, priority: Priority, deadline: float) -> CarriersResponse:
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
            self._snapshot = snapshot
            self.version += 1
            self._loaded_at = asyncio.get_running_loop().time()
            if partial:
                self._loaded_at -= max(0.0, self._ttl_s - _PARTIAL_RETRY_S)
            outcome = "partial" if partial else "ok"
            return snapshot
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


def _consume_exception(task: asyncio.Task[CarriersResponse]) -> None:
    """A background refresh nobody awaits must not log 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()
