"""Cin7 Core product records for customs, read once per request and kept briefly per account.

A sale's order lines carry each product's name, SKU, weight and size but not its HS code or
country of origin: those are on the product record (``GET /product``), one call per product.
Cin7 Core allows 60 calls a minute per application, so records are kept for ``ttl_s`` (60 s by
default: long enough that rating a sale and then buying its label reads each product once, short
enough that an edit made in Cin7 Core is seen soon after), at most ``max_entries`` per account
(least recently used dropped first), and concurrent reads of one product share one call. A
product Cin7 Core does not have is remembered as missing for the same time; a failed read is not
remembered; a product a declaration found wanting is forgotten at once (:meth:`forget`), so the
retry after fixing it in Cin7 Core reads it again.

A shared read belongs to no caller: it runs with its own deadline (``READ_S``, so a request
that gives up early does not cut short the read another caller is waiting for), and each caller
waits for it only until its own deadline (504 ``deadline_exceeded`` then; the read goes on and
is kept, so a retry a moment later finds it). Cin7 Core's pacing (about a call a second) makes a
sale of many products slow to declare the first time.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Iterable

from ratesvc.errors import UpstreamNotFound, UpstreamTimeout
from ratesvc.limiter import Priority
from ratesvc.sales import Product
from ratesvc.upstreams.cin7.client import Cin7Client

TTL_S = 60.0
MAX_ENTRIES = 2_000
READ_S = 120.0  # how long one shared read may wait for Cin7 Core's limiter and answer


class ProductRecords:
    """One account's product records (see the module docstring)."""

    def __init__(
        self, cin7: Cin7Client, *, ttl_s: float = TTL_S, max_entries: int = MAX_ENTRIES
    ) -> None:
        self._cin7 = cin7
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._kept: OrderedDict[str, tuple[float, Product | None]] = OrderedDict()
        self._reading: dict[str, asyncio.Future[Product | None]] = {}
        self._batches: set[asyncio.Future[list[Product | None]]] = set()  # reads of one call

    def __len__(self) -> int:
        return len(self._kept)

    async def read(
        self, product_ids: Iterable[str], *, deadline: float | None,
        priority: Priority = Priority.NORMAL,
    ) -> dict[str, Product]:  # fmt: skip
        """The records of ``product_ids`` that Cin7 Core has, each read at most once (concurrently
        with the others); an upstream failure other than "not found" is raised.

        When every read of one call has finished, all its records are kept afresh together: a
        sale of more products than Cin7 Core's pace reads within the TTL (a hundred at a call a
        second) is then found whole by the retry after a 504, not expiring at one end while the
        other end is still being read."""
        wanted = list(dict.fromkeys(product_ids))
        batch = asyncio.gather(*(self._future(pid, priority) for pid in wanted))
        self._batches.add(batch)
        batch.add_done_callback(functools.partial(self._batch_done, wanted))
        try:
            async with asyncio.timeout_at(deadline):
                # shield: a caller giving up (deadline, cancelled request) cancels only its wait
                found = await asyncio.shield(batch)
        except TimeoutError:
            raise UpstreamTimeout(
                f"Cin7 Core's product records ({len(wanted)}) were not all read in time; they "
                "are still being read: try again in a few seconds",
                upstream="cin7", endpoint="product",
            ) from None  # fmt: skip
        return {pid: product for pid, product in zip(wanted, found, strict=True) if product}

    def forget(self, product_ids: Iterable[str]) -> None:
        """Read these again next time (a declaration found them wanting: they may be fixed)."""
        for product_id in product_ids:
            self._kept.pop(product_id, None)

    async def close(self) -> None:
        """Stop the reads still running (the service is stopping; nobody waits for them)."""
        reads = list(self._reading.values())
        for reading in reads:
            reading.cancel()
        await asyncio.gather(*reads, *self._batches, return_exceptions=True)

    def _future(self, product_id: str, priority: Priority) -> asyncio.Future[Product | None]:
        kept = self._kept.get(product_id)
        if kept is not None and kept[0] > time.monotonic():
            self._kept.move_to_end(product_id)
            done: asyncio.Future[Product | None] = asyncio.get_running_loop().create_future()
            done.set_result(kept[1])
            return done
        reading = self._reading.get(product_id)
        if reading is None:
            deadline = asyncio.get_running_loop().time() + READ_S
            reading = asyncio.ensure_future(self._fetch(product_id, deadline, priority))
            self._reading[product_id] = reading
            reading.add_done_callback(functools.partial(self._read, product_id))
        return reading

    def _batch_done(self, wanted: list[str], batch: asyncio.Future[list[Product | None]]) -> None:
        self._batches.discard(batch)
        if batch.cancelled() or batch.exception() is not None:
            return
        expires = time.monotonic() + self._ttl_s
        for product_id, product in zip(wanted, batch.result(), strict=True):
            self._keep(product_id, product, expires)

    def _keep(self, product_id: str, product: Product | None, expires: float) -> None:
        self._kept[product_id] = (expires, product)
        self._kept.move_to_end(product_id)
        while len(self._kept) > self._max_entries:
            self._kept.popitem(last=False)

    def _read(self, product_id: str, reading: asyncio.Future[Product | None]) -> None:
        self._reading.pop(product_id, None)
        if not reading.cancelled():
            reading.exception()  # retrieved: every caller may have gone (no "never retrieved")

    async def _fetch(
        self, product_id: str, deadline: float | None, priority: Priority
    ) -> Product | None:
        try:
            product = await self._cin7.get_product(product_id, deadline=deadline, priority=priority)
        except UpstreamNotFound:
            product = None
        self._keep(product_id, product, time.monotonic() + self._ttl_s)
        return product
