"""The safety net: every interval, list the sales Cin7 Core says are ready for shipping.

Webhooks need a paid Cin7 Core module and are switched off silently after six failed deliveries,
so for each account with automation on the poller reads ``saleList?ReadyForShipping=true`` (pages
of :data:`PAGE_SIZE`, at the limiter's *background* priority: write-backs and people go first) and
records a ``Sale/PackAuthorised`` event for every listed sale nobody has handled yet.

It must be cheap when nothing changed: one call per interval per account, and the decision to skip
a listed sale is taken from the ledger alone, without reading the sale:

* an event for the sale is still waiting or being retried → skip (it is being handled);
* a purchase of the sale is in flight or waiting for its write-back → skip;
* an event for the sale needs attention → skip until the sale changes (its ``Updated`` stamp), so a
  person is not overtaken by the same failure every interval. An event the poller found carries
  the stamp it was found with; one that came by webhook (or was put back in the queue and needs a
  person again) has none, and takes the stamp of the first poll that lists the sale after it:
  the sale as the person is asked to look at it. When the stamp changes (a person fixed the
  product weights and re-authorised the pack, say), the sale is recorded again and re-examined;
  the event in attention is resolved when the new one buys the label;
* except a sale refused for its customs declaration: the fix is made on a *product* record,
  which leaves the sale's stamp as it was, so its (newest) event in attention is put back in the
  queue when it has waited :data:`CUSTOMS_RECHECK_S` (30 min), then at least as long as it has
  been stuck (1 h, 2 h, ... at most a day); the retry reads the products again. A person who
  fixed it need not wait: retry the event;
* otherwise the event's key is the sale and its ``Updated`` stamp: a sale seen before and not
  changed since is not recorded again. A sale that changed (for instance a second fulfilment was
  packed after the first was shipped) is recorded and processed.

One replica polls an account at a time: each round starts by taking the account's lease
(``poller:<account>``) for the interval plus ``lease_ttl_s`` — extending it when this replica
already holds it — and renews it while the round runs; a replica that does not get it skips
the round. The holder keeps the account round after round; if it dies, another takes over at
most an interval plus ``lease_ttl_s`` later (at once when it stops gracefully: the lease is
given back).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass

import orjson

from ratesvc.accounts import AccountServices
from ratesvc.automation.events import PACK_AUTHORISED, Cin7Event
from ratesvc.automation.worker import Automation
from ratesvc.customs.packages import REFUSED
from ratesvc.errors import RequestError, UpstreamFailure
from ratesvc.labels.lifecycle import IN_FLIGHT, LabelStatus
from ratesvc.metrics import Metrics
from ratesvc.storage.leases import DEFAULT_TTL_S, Lease
from ratesvc.storage.ledger import (
    OPEN_EVENT_STATUSES,
    EventRow,
    LeaseLost,
    Ledger,
    PurchaseRow,
    parse_stamp,
)
from ratesvc.upstreams.cin7 import wire

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
CUSTOMS_RECHECK_S = 1800.0  # a sale refused for customs is looked at again after this long
CUSTOMS_RECHECK_MAX_S = 86400.0  # ... backing off to at most this
MAX_PAGES = 50


@dataclass(frozen=True)
class PollResult:
    listed: int
    recorded: int
    skipped: int
    calls: int


class Poller:
    def __init__(
        self,
        ledger: Ledger,
        accounts: dict[str, AccountServices],
        automation: Automation,
        metrics: Metrics,
        *,
        lease_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self._ledger = ledger
        self._lease_ttl_s = lease_ttl_s
        self.rounds = 0  # polls this poller made (a replica without the lease makes none)
        self._accounts = accounts
        self._automation = automation
        self._metrics = metrics
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for services in self._accounts.values():
            rule = services.account.rule
            if rule.on and services.cin7 is not None and rule.poll_interval_s > 0:
                self._tasks.append(asyncio.create_task(self._loop(services)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _loop(self, services: AccountServices) -> None:
        interval = services.account.rule.poll_interval_s
        name = services.account.name
        lease = Lease(self._ledger, f"poller:{name}", ttl_s=interval + self._lease_ttl_s)
        try:
            while True:
                await self._round(services, lease)
                await asyncio.sleep(interval)
        finally:
            await lease.release()  # another replica takes the account over at once

    async def _round(self, services: AccountServices, lease: Lease) -> None:
        """One poll, if this replica holds (or gets) the account's lease."""
        name = services.account.name
        try:
            if not await lease.acquire():
                return  # another replica polls this account
        except Exception as exc:  # the ledger away: nobody can be sure, so nobody polls
            log.warning("polling %s skipped: its lease could not be taken (%r)", name, exc)
            return
        try:
            try:
                result = await self.poll(services, lease=lease)
            except LeaseLost as lost:
                log.warning("polling %s stopped: %s", name, lost)
            except UpstreamFailure as exc:
                self._metrics.automation_polls.labels(name, "failed").inc()
                log.warning("polling Cin7 Core for %s failed: %s", name, exc.detail)
            except Exception:  # a bug must not end polling for good
                self._metrics.automation_polls.labels(name, "failed").inc()
                log.exception("polling Cin7 Core for %s failed unexpectedly", name)
            else:
                self._metrics.automation_polls.labels(name, "ok").inc()
                if result.recorded:
                    log.info("poll of %s: %d ready, %d new", name, result.listed, result.recorded)
        finally:
            await lease.pause()  # held until the next round (or expiry), not renewed

    async def poll(self, services: AccountServices, *, lease: Lease | None = None) -> PollResult:
        """One poll of one account; records what is new and wakes the worker. With ``lease``,
        each page is read only while it is held (:class:`LeaseLost` otherwise)."""
        self.rounds += 1
        cin7 = services.cin7
        assert cin7 is not None
        account = services.account
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(10.0, account.rule.poll_interval_s)
        items: list[wire.SaleListItem] = []
        calls = 0
        for page in range(1, MAX_PAGES + 1):
            if lease is not None:
                lease.check()
            answer = await cin7.ready_for_shipping(page=page, limit=PAGE_SIZE, deadline=deadline)
            calls += 1
            items += answer.SaleList
            if len(answer.SaleList) < PAGE_SIZE or len(items) >= answer.Total:
                break
        listed = {item.SaleID: item for item in items}  # a sale may move between pages
        ids = list(listed)
        events: dict[str, list[EventRow]] = defaultdict(list)
        for event in await self._ledger.events_for_sales(account.name, ids):
            if event.sale_id is not None:
                events[event.sale_id].append(event)
        purchases: dict[str, list[PurchaseRow]] = defaultdict(list)
        for purchase in await self._ledger.purchases_for_sales(account.name, ids):
            if purchase.sale_id is not None:
                purchases[purchase.sale_id].append(purchase)
        recorded = skipped = 0
        for item in listed.values():
            for event in events[item.SaleID]:
                if event.status == "attention" and event.sale_updated is None:
                    await self._ledger.set_event(event.event_id, sale_updated=item.Updated)
            recheck = _customs_recheck(item, events[item.SaleID])
            if recheck is not None and _handled(item, events[item.SaleID], purchases[item.SaleID]):
                with contextlib.suppress(RequestError):  # being processed meanwhile
                    await self._automation.retry(account.name, recheck.event_id, by="the poller")
            if _handled(item, events[item.SaleID], purchases[item.SaleID]):
                skipped += 1
                continue
            _, created = await self._automation.receive(
                account,
                Cin7Event(event_type=PACK_AUTHORISED, sale_id=item.SaleID, task_id=None,
                          order_number=item.OrderNumber),
                orjson.dumps({"SaleID": item.SaleID, "OrderNumber": item.OrderNumber,
                              "Updated": item.Updated, "Source": "saleList?ReadyForShipping"}),
                source="poller",
                dedup_key=f"poll|{item.SaleID.lower()}|{item.Updated or ''}",
                sale_updated=item.Updated,
            )  # fmt: skip
            if created:
                recorded += 1
            else:
                skipped += 1
        self._metrics.automation_polled_sales.labels(account.name, "recorded").inc(recorded)
        self._metrics.automation_polled_sales.labels(account.name, "skipped").inc(skipped)
        return PollResult(listed=len(ids), recorded=recorded, skipped=skipped, calls=calls)


def _customs_recheck(item: wire.SaleListItem, events: list[EventRow]) -> EventRow | None:
    """The sale's event in attention for its customs declaration that is due to be looked at
    again, if any: only the newest one, only while the sale is as it was (a changed sale gets
    a new event anyway), and with a back-off — it waits at least as long as it has been stuck
    (30 min, then 1 h, 2 h, ... at most a day), so a refusal nobody fixes costs a few reads a
    day, not one every poll."""
    refused = [
        e for e in events
        if e.status == "attention" and REFUSED in (e.reason or "")
        and e.sale_updated in (None, item.Updated)
    ]  # fmt: skip
    if not refused or any(e.status in OPEN_EVENT_STATUSES for e in events):
        return None
    newest = max(refused, key=lambda e: e.received_at)
    now = dt.datetime.now(dt.UTC)
    since = _parse(newest.updated_at) or now
    stuck = (since - (_parse(newest.received_at) or since)).total_seconds()
    wait = min(max(CUSTOMS_RECHECK_S, stuck), CUSTOMS_RECHECK_MAX_S)
    return newest if (now - since).total_seconds() >= wait else None


def _parse(stamp: str) -> dt.datetime | None:
    try:
        return parse_stamp(stamp)
    except ValueError:
        return None


def _handled(item: wire.SaleListItem, events: list[EventRow], purchases: list[PurchaseRow]) -> bool:
    """Whether a listed sale is being (or was) handled; decided from the ledger alone."""
    if any(e.status in OPEN_EVENT_STATUSES for e in events):
        return True
    if any(
        p.status in IN_FLIGHT
        or (p.status == LabelStatus.ATTENTION and p.write_back_state != "done")
        for p in purchases
    ):
        return True
    return any(e.status == "attention" and e.sale_updated in (None, item.Updated) for e in events)
