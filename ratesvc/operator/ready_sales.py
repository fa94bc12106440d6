"""``GET /v1/sales?ready=true``: the packed, unshipped sales of an account, for the packing bench.

Two reads of Cin7 Core, both at the limiter's *background* priority (labels, write-backs and rates
go first), both cached so a page looked at again costs nothing:

* the list: ``saleList?ReadyForShipping=true``, every page, kept :data:`LIST_TTL_S` (15 s) per
  account; one read in flight per account, whoever asks; a failed read is not kept (the caller
  gets the upstream problem: 503 with ``retry_after_s`` when throttled or down);
* each listed sale of the page asked for (``GET /sale``), for its ship-to and boxes: kept per
  (sale, ``Updated`` stamp) in a bounded LRU (:data:`SALES_MAX` entries), so a changed sale is
  read again and an unchanged one never. A page waits for its reads at most :data:`WAIT_S`; a
  sale not read by then is ``pending`` (no ship-to, no boxes) and its read goes on, so the page
  asked again shortly after has it. A read that fails for now (throttled, down, timed out) is
  not kept: the sale stays ``pending``; one that cannot succeed (the sale is gone, its answer
  cannot be read, no fulfilment is packed and unshipped any more) is ``unavailable`` with
  ``problem`` in words, until the sale changes.

What ratesvc knows of each sale of the page — its newest live label, its newest automation
event — comes from the ledger in two queries for the whole page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.customs import is_international
from ratesvc.errors import InvalidRequest, UpstreamFailure, UpstreamTimeout
from ratesvc.labels.lifecycle import LabelStatus
from ratesvc.limiter import Priority
from ratesvc.models import Address, Dimensions, Weight
from ratesvc.sales import parcels_for
from ratesvc.storage.ledger import Ledger

log = logging.getLogger(__name__)

LIST_TTL_S = 15.0
SALES_MAX = 2000
WAIT_S = 3.0
DEADLINE_MARGIN_S = 0.2  # left of a request's deadline to answer the page
READ_DEADLINE_S = 60.0  # a sale read waits behind everything else: it may take a while
LIST_PAGE = 1000  # Cin7 Core's largest saleList page
LIST_MAX_PAGES = 50
UNDATED_TTL_S = LIST_TTL_S  # a sale listed without an Updated stamp is read again this often
DETAILS = ("ready", "pending", "unavailable")
_CURSOR = re.compile(r"sl_([A-Za-z0-9_\-]{1,400})")
_NOT_LIVE = (LabelStatus.VOIDED, LabelStatus.FAILED)

Details = Literal["ready", "pending", "unavailable"]


class SaleBox(msgspec.Struct, frozen=True, kw_only=True):
    """A packed box as it would be rated: weight worked out, size if known."""

    box: str | None
    weight: Weight
    dimensions: Dimensions | None


class SaleAutomation(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    status: str
    reason: str | None


class ReadySale(msgspec.Struct, frozen=True, kw_only=True):
    sale_id: str
    task_id: str | None
    order_number: str | None
    customer: str | None
    updated: str | None
    details: Details
    ship_to: Address | None
    boxes: list[SaleBox] | None
    defaults: list[str]  # what had to be assumed about the boxes, in words
    international: bool | None  # None: not read yet, or the account sets no ship-from
    label_id: str | None  # the newest label that is not voided or failed
    label_status: str | None
    automation: SaleAutomation | None  # the newest automation event of the sale
    problem: str | None = None  # why the details are ``unavailable``


class ReadySaleList(msgspec.Struct, frozen=True, kw_only=True):
    sales: list[ReadySale]
    next_cursor: str | None


@dataclass(frozen=True)
class _Listed:
    sale_id: str
    order_number: str | None
    customer: str | None
    updated: str | None


@dataclass(frozen=True)
class _Details:
    """A sale as read: what it ships (or why it cannot be shown)."""

    task_id: str | None
    ship_to: Address | None
    boxes: list[SaleBox] | None
    defaults: list[str]
    international: bool | None
    problem: str | None = None
    read_at: float = 0.0


_Key = tuple[str, str, str | None]  # account, sale id, Updated stamp
_K = TypeVar("_K")
_T = TypeVar("_T")


def encode_cursor(offset: int, sale_id: str) -> str:
    raw = f"{offset}:{sale_id}".encode()
    return "sl_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(offset, sale id) of a ``next_cursor``; 422 naming ``cursor`` for anything else."""
    match = _CURSOR.fullmatch(cursor)
    try:
        if match is None:
            raise ValueError(cursor)
        text = match[1]
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        offset, _, sale_id = raw.partition(":")
        if not re.fullmatch(r"[0-9]{1,6}", offset) or not sale_id:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest.field(
            "cursor", "is not a cursor: pass next_cursor of the last page"
        ) from None
    return int(offset), sale_id


class ReadySales:
    """The ready list of every account, with its caches (see the module docstring)."""

    def __init__(
        self, ledger: Ledger, *, sales_max: int = SALES_MAX, wait_s: float = WAIT_S
    ) -> None:
        self._ledger = ledger
        self._sales_max = sales_max
        self._wait_s = wait_s
        self._lists: dict[str, tuple[list[_Listed], float]] = {}
        self._listing: dict[str, asyncio.Task[list[_Listed]]] = {}
        self._details: OrderedDict[_Key, _Details] = OrderedDict()
        self._reads: dict[_Key, asyncio.Task[None]] = {}

    async def page(
        self,
        services: AccountServices,
        *,
        search: str | None,
        limit: int,
        after: tuple[int, str] | None,
        deadline: float,
    ) -> ReadySaleList:
        """One page; ``after`` (a decoded cursor): the offset and the sale the last page ended
        with — the page goes on after that sale, or at the offset when it left the list."""
        if services.cin7 is None:
            raise InvalidRequest.field(
                "ready", "this account has no Cin7 Core credentials (RATESVC_CIN7_ACCOUNT_ID and "
                "RATESVC_CIN7_APPLICATION_KEY, or the account's cin7 table)",
            )  # fmt: skip
        listed = await self._listed(services, deadline)
        if search:
            needle = search.casefold()
            listed = [s for s in listed
                      if needle in (s.order_number or "").casefold()
                      or needle in (s.customer or "").casefold()]  # fmt: skip
        start = 0
        if after is not None:
            offset, last = after
            ids = [s.sale_id for s in listed]
            if last not in ids and offset > len(listed):
                raise InvalidRequest.field(
                    "cursor", "is past the end of the list: start again without a cursor"
                )
            start = ids.index(last) + 1 if last in ids else offset
        shown = listed[start : start + limit]
        more = start + limit < len(listed)
        details = await self._read_all(services, shown, deadline)
        sales = await self._with_ledger(services.account.name, shown, details)
        next_cursor = encode_cursor(start + limit, shown[-1].sale_id) if more and shown else None
        return ReadySaleList(sales=sales, next_cursor=next_cursor)

    # --- the list --------------------------------------------------------------------------------

    async def _listed(self, services: AccountServices, deadline: float) -> list[_Listed]:
        name = services.account.name
        now = asyncio.get_running_loop().time()
        kept = self._lists.get(name)
        if kept is not None and kept[1] > now:
            return kept[0]
        task = self._listing.get(name)
        if task is None:
            # the first caller's deadline bounds the shared read: Cin7 Core down or throttled is
            # then that caller's 503 with a retry time, not a wait past anyone's deadline
            task = self._listing[name] = asyncio.create_task(self._read_list(services, deadline))
            task.add_done_callback(_forget(self._listing, name))
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(task)
        except TimeoutError:
            raise UpstreamTimeout(
                "Cin7 Core's ready-to-ship list was not read in time; it is still being read: "
                "try again in a few seconds", upstream="cin7", endpoint="saleList",
            ) from None  # fmt: skip

    async def _read_list(self, services: AccountServices, deadline: float) -> list[_Listed]:
        cin7 = services.cin7
        assert cin7 is not None
        seen: dict[str, _Listed] = {}
        for number in range(1, LIST_MAX_PAGES + 1):
            answer = await cin7.ready_for_shipping(page=number, limit=LIST_PAGE, deadline=deadline)
            for item in answer.SaleList:  # a sale may move between pages: listed once
                seen.setdefault(item.SaleID, _Listed(item.SaleID, item.OrderNumber,
                                                     item.Customer, item.Updated))  # fmt: skip
            if len(answer.SaleList) < LIST_PAGE or len(seen) >= answer.Total:
                break
        listed = list(seen.values())
        loop = asyncio.get_running_loop()
        self._lists[services.account.name] = (listed, loop.time() + LIST_TTL_S)
        return listed

    # --- each sale -------------------------------------------------------------------------------

    async def _read_all(
        self, services: AccountServices, shown: list[_Listed], deadline: float
    ) -> dict[str, _Details]:
        name = services.account.name
        now = asyncio.get_running_loop().time()
        found: dict[str, _Details] = {}
        waiting: list[asyncio.Task[None]] = []
        for sale in shown:
            key = (name, sale.sale_id, sale.updated)
            known = self._details.get(key)
            if known is not None and (
                sale.updated is not None or known.read_at + UNDATED_TTL_S > now
            ):
                self._details.move_to_end(key)
                found[sale.sale_id] = known
                continue
            read = self._reads.get(key)
            if read is None:
                read = self._reads[key] = asyncio.create_task(self._read(services, key))
                read.add_done_callback(_forget(self._reads, key))
            waiting.append(read)
        # at most wait_s, and never past the request's deadline (what is not read is pending)
        wait_s = min(self._wait_s, deadline - asyncio.get_running_loop().time() - DEADLINE_MARGIN_S)
        if waiting and wait_s > 0:
            await asyncio.wait([asyncio.shield(t) for t in waiting], timeout=wait_s)
        for sale in shown:
            known = self._details.get((name, sale.sale_id, sale.updated))
            if known is not None:
                found.setdefault(sale.sale_id, known)
        return found

    async def _read(self, services: AccountServices, key: _Key) -> None:
        assert services.cin7 is not None
        loop = asyncio.get_running_loop()
        sale_id = key[1]
        try:
            sale = await services.cin7.get_sale(
                sale_id, deadline=loop.time() + READ_DEADLINE_S, priority=Priority.BACKGROUND
            )
        except UpstreamFailure as exc:
            if exc.retryable or exc.code == "upstream_unavailable":
                log.info("ready list: sale %s not read for now: %s", sale_id, exc.detail)
                return  # not kept: read again when the page is asked again
            details = _Details(task_id=None, ship_to=None, boxes=None, defaults=[],
                               international=None, problem=exc.detail)  # fmt: skip
        else:
            fulfilment = sale.fulfilment(None)
            ship_to = (fulfilment.ship_to if fulfilment else None) or sale.ship_to
            if fulfilment is None:
                details = _Details(task_id=None, ship_to=ship_to, boxes=None, defaults=[],
                                   international=None,
                                   problem="no fulfilment of the sale is packed and unshipped "
                                   "any more")  # fmt: skip
            else:
                parcels = parcels_for(fulfilment, sale.products, services.account.packaging)
                ship_from = services.account.ship_from
                details = _Details(
                    task_id=fulfilment.task_id, ship_to=ship_to,
                    boxes=[SaleBox(box=p.box, weight=p.weight, dimensions=p.dimensions)
                           for p in parcels.packages],
                    defaults=parcels.defaults,
                    international=None if ship_from is None or ship_to is None
                    else is_international(ship_from.country, ship_to),
                    problem=None if ship_to is not None else sale.ship_to_problem,
                )  # fmt: skip
        self._details[key] = dataclasses.replace(details, read_at=loop.time())
        self._details.move_to_end(key)
        while len(self._details) > self._sales_max:
            self._details.popitem(last=False)

    # --- what the ledger knows -------------------------------------------------------------------

    async def _with_ledger(
        self, account: str, shown: list[_Listed], details: dict[str, _Details]
    ) -> list[ReadySale]:
        ids = [s.sale_id for s in shown]
        # (sale, fulfilment) -> (created_at, label_id, status): a sale's label is the listed
        # fulfilment's (an advanced sale's shipped fulfilment has its own, older label)
        labels: dict[tuple[str, str], tuple[str, str, str]] = {}
        for row in await self._ledger.purchases_for_sales(account, ids):
            if row.sale_id is None or row.task_id is None or row.status in _NOT_LIVE:
                continue
            key = (row.sale_id.lower(), row.task_id.lower())
            newest = (row.created_at, row.label_id, row.status)
            labels[key] = max(labels.get(key, newest), newest)
        events: dict[str, tuple[str, SaleAutomation]] = {}
        for event in await self._ledger.events_for_sales(account, ids):
            if event.sale_id is None:
                continue
            seen = events.get(event.sale_id)
            if seen is None or (event.received_at, event.event_id) > (seen[0], seen[1].event_id):
                events[event.sale_id] = (event.received_at, SaleAutomation(
                    event_id=event.event_id, status=event.status, reason=event.reason))  # fmt: skip
        sales = []
        for sale in shown:
            known = details.get(sale.sale_id)
            task = known.task_id if known is not None else None
            label = labels.get((sale.sale_id.lower(), task.lower())) if task else None
            last_event = events.get(sale.sale_id)
            state: Details = "pending"
            if known is not None:
                state = "unavailable" if known.problem and known.boxes is None else "ready"
            sales.append(ReadySale(
                sale_id=sale.sale_id, order_number=sale.order_number, customer=sale.customer,
                updated=_rfc3339(sale.updated), details=state,
                task_id=known.task_id if known else None,
                ship_to=known.ship_to if known else None,
                boxes=known.boxes if known else None,
                defaults=known.defaults if known else [],
                international=known.international if known else None,
                problem=known.problem if known else None,
                label_id=label[1] if label else None, label_status=label[2] if label else None,
                automation=last_event[1] if last_event else None,
            ))  # fmt: skip
        return sales

    async def close(self) -> None:
        """Cancel the reads still running (at shutdown)."""
        tasks = [*self._reads.values(), *self._listing.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _rfc3339(stamp: str | None) -> str | None:
    """Cin7 Core's ``Updated`` (UTC, often without an offset) as RFC 3339 UTC to the second."""
    if not stamp:
        return None
    try:
        moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _forget(tasks: dict[_K, asyncio.Task[_T]], key: _K) -> Callable[[asyncio.Task[_T]], None]:
    """A done callback: the task leaves ``tasks``, its failure retrieved (its waiters may all
    have left)."""

    def done(task: asyncio.Task[_T]) -> None:
        if tasks.get(key) is task:
            del tasks[key]
        if not task.cancelled():
            task.exception()

    return done
