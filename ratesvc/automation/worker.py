"""Recording Cin7 Core events durably and processing them in the background.

:meth:`Automation.receive` writes the event to the ledger (one row per account + dedup key, so a
repeated delivery finds the row already there) and wakes the worker; the caller answers at once.
A delivery that finds its event in ``attention`` puts it back in the queue instead: Cin7 Core
announces a pack again when a person re-authorises it, after fixing what the event needed them
for. :meth:`Automation.retry` is the same for a person asking (``POST
/v1/automation/events/{event_id}/retry``): an event in ``attention`` or ``failed`` is due at once
with its attempts reset.

The worker processes due events a few at a time, one at a time per sale:

1. ``Sale/PackAuthorised``: re-read the sale (the payload is only a hint) and its packed
   fulfilment; a fulfilment already labelled in the ledger, shipped, or not packed needs nothing;
   rate it with only what the rule could buy; pick (:mod:`.rules`); buy through
   :meth:`ratesvc.labels.Labels.buy` with no idempotency key, so the key is account + sale +
   task, exactly as for a person calling ``POST /v1/labels`` with the sale: webhook, poller and
   person can never buy twice. The write-back outbox then puts tracking and PDFs on the sale.
   The event is ``processed`` only when its label is bought (``purchased``, ``completed``,
   ``write_back_failed``) — whether this event bought it or found it in the ledger. A label still
   ``purchasing`` (``Labels.buy`` answers after at most ``wait_s`` with the label as it is) keeps
   the event open (``received``, with the ``label_id``): it is due again after the retry interval
   (at most :data:`RECHECK_S`) and then only *reads* that label — it never buys again, and the
   look is not counted as an attempt. A label that ended ``failed`` (nothing bought, the key is
   free) makes the event retry like any failure that may pass; a label in ``attention`` puts the
   event in ``attention`` with the label's detail.
2. ``Sale/Voided``: labels of the sale not yet written back go to ``attention`` (their write-back
   is cancelled: the sale cannot take it), and the sale's waiting events are dropped.

Failures that may pass (an upstream down, throttled, late; a rating missing a carrier) are retried
with exponential back-off; after :data:`MAX_ATTEMPTS` tries, or at once for what retrying cannot
fix (a cost cap, missing weights, a rejected credential), the event goes to ``attention`` with a
reason a person can act on. When an event buys (or finds) the fulfilment's label, the sale's
earlier events in ``attention`` for that fulfilment are resolved (``processed``, "resolved by
..."). An event being processed when the process stops is still
``received``/``failed`` in the ledger and is processed again after the restart; buying stays
exactly-once because of the purchase key.

Across replicas an event is processed by the one that claimed it (``owner`` and ``lease_until``
on its row, :meth:`ratesvc.storage.ledger.Ledger.claim_events`): one event of a sale at a time,
the claim renewed every third of ``lease_ttl_s`` while it is processed and given up with its
outcome (only the current owner writes one). An event whose replica died is adopted by another
once its claim expired; a replica that lost an event's claim stops processing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ratesvc.accounts import AccountServices
from ratesvc.automation.events import PACK_AUTHORISED, SALE_VOIDED, Cin7Event, EventNotRetryable
from ratesvc.automation.rules import Choice, choose, mapped_service, rating_filters
from ratesvc.config import Account, ShipRule
from ratesvc.errors import (
    AlreadyLabelled,
    AlreadyShipped,
    NotFound,
    RatesvcError,
    Reconciling,
    SaleNotReady,
    UpstreamAuth,
    UpstreamError,
    UpstreamFailure,
)
from ratesvc.labels import SALE_VOIDED as SALE_VOIDED_DETAIL
from ratesvc.labels import Label, Labels, LabelsRequest
from ratesvc.labels.lifecycle import SETTLED, LabelStatus
from ratesvc.metrics import Metrics
from ratesvc.rating import Rater
from ratesvc.sale_shipments import SaleShipment, shipment_for_sale
from ratesvc.storage.leases import DEFAULT_TTL_S, Claims
from ratesvc.storage.ledger import (
    OPEN_EVENT_STATUSES,
    EventRow,
    LeaseLost,
    Ledger,
    format_stamp,
    now_text,
    parse_stamp,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
MAX_BACKOFF_S = 3600.0
RECHECK_S = 30.0  # at most this long between two looks at a label still being bought
BOUGHT = (LabelStatus.PURCHASED, LabelStatus.COMPLETED, LabelStatus.WRITE_BACK_FAILED)
RETRYABLE = ("attention", "failed")  # event statuses a person may put back in the queue


@dataclass(frozen=True)
class Outcome:
    status: str  # processed | ignored | attention | waiting (for a label still being bought)
    reason: str
    label_id: str | None = None
    task_id: str | None = None  # the fulfilment the label is for


@dataclass
class _SaleLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class _TryAgain(Exception):
    """The event could not be processed now for a reason that may pass."""


class Automation:
    """Every account's automation events: recording, the worker, and their metrics."""

    def __init__(
        self,
        ledger: Ledger,
        accounts: dict[str, AccountServices],
        *,
        labels: Labels,
        rater: Rater,
        metrics: Metrics,
        retry_s: float,
        concurrency: int = 4,
        lease_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self._ledger = ledger
        self._concurrency = concurrency
        self._lease_ttl_s = lease_ttl_s
        self._claims: Claims[str] = Claims(
            "automation event", lambda ids: ledger.renew_events(ids, lease_ttl_s),
            ttl_s=lease_ttl_s,
        )  # fmt: skip
        self._accounts = accounts
        self._labels = labels
        self._rater = rater
        self._metrics = metrics
        self._retry_s = retry_s
        self._slots = asyncio.Semaphore(concurrency)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._sale_locks: dict[tuple[str, str], _SaleLock] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- recording -----------------------------------------------------------------------------

    async def receive(
        self,
        account: Account,
        event: Cin7Event,
        payload: bytes,
        *,
        source: str = "webhook",
        dedup_key: str | None = None,
        sale_updated: str | None = None,
    ) -> tuple[EventRow, bool]:
        """Record an event: (the row, True) when new, (the earlier row, False) for a repeat."""
        status, reason = _initial(account, event)
        stamp = now_text()
        row = EventRow(
            event_id="ev_" + secrets.token_urlsafe(12), account=account.name, source=source,
            event_type=event.event_type, dedup_key=dedup_key or event.dedup_key,
            sale_id=event.sale_id, task_id=event.task_id, order_number=event.order_number,
            sale_updated=sale_updated, status=status, reason=reason, label_id=None, attempts=0,
            next_at=stamp, payload=payload, received_at=stamp, updated_at=stamp,
        )  # fmt: skip
        recorded, created = await self._ledger.record_event(row)
        if not created and status == "received" and source == "webhook":
            # Cin7 Core announces a pack again (same type, sale, task) after a person fixed what
            # the event needed them for and re-authorised it: examine the sale again
            reopened = await self._ledger.requeue_event(
                recorded.event_id, statuses=("attention",),
                reason=f"delivered again; before: {recorded.reason}",
            )  # fmt: skip
            recorded, created = (reopened, True) if reopened is not None else (recorded, False)
        kind = event.event_type if event.event_type in (PACK_AUTHORISED, SALE_VOIDED) else "other"
        if created:
            self._metrics.automation_received.labels(source, kind).inc()
            log.info(
                "%s event %s for sale %s (task %s) from %s: %s%s", account.name, event.event_type,
                event.sale_id, event.task_id, source, status, f" ({reason})" if reason else "",
            )  # fmt: skip
            if status == "received":
                self.nudge()
        else:
            self._metrics.automation_deduplicated.labels(source).inc()
        return recorded, created

    async def retry(self, account: str, event_id: str, *, by: str = "a person") -> EventRow:
        """Put an event in ``attention`` or ``failed`` back in the queue, due now, with its
        attempts reset (a fresh set of tries) and ``reason`` saying what it was. 404 for an
        unknown event or another account's; 409 ``event_not_retryable`` for any other."""
        row = await self._ledger.event(event_id)
        if row is None or row.account != account:
            raise NotFound(f"no automation event {event_id}")
        requeued = None
        if event_id not in self._running:  # the status is checked as it is changed
            requeued = await self._ledger.requeue_event(
                event_id,
                statuses=RETRYABLE,
                reason=f"retry requested{'' if by == 'a person' else f' by {by}'}; before: "
                f"{row.reason}",
            )
        if requeued is None:
            status = (await self._ledger.event(event_id) or row).status
            state = "already waiting to be processed" if status == "received" else status
            if event_id in self._running:
                state = "being processed right now"
            raise EventNotRetryable(
                f"event {event_id} is {state}; only an event in attention or failed can be retried"
            )
        log.info("event %s put back in the queue by %s (was %s)", event_id, by, row.status)
        self.nudge()
        return requeued

    # --- the worker ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker; with one process (SQLite) the claims a previous process left on
        events are given up first, so they are processed now rather than once they expire."""
        await self._ledger.release_claimed_events()
        self._task = asyncio.create_task(self._run())

    def nudge(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop taking work; events being processed are cancelled (they stay due in the
        ledger, their claims given up: another replica, or the next start, processes them)."""
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._claims.stop()
        try:
            await self._ledger.release_events()
        except Exception as exc:
            log.warning("claims on automation events not given back (%r): they expire", exc)

    async def idle(self) -> None:
        """Wait until no event is being processed (tests, benchmarks)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except Exception:  # the ledger itself failing: say so, then keep trying
                log.exception("automation worker round failed")
                await asyncio.sleep(1.0)

    async def _round(self) -> None:
        self._wake.clear()
        # read before claiming: an event that falls due meanwhile is claimed now or woken for
        next_at = await self._ledger.next_event_due_at()
        room = self._concurrency - len(self._running)
        due: list[EventRow] = []
        sent = asyncio.get_running_loop().time()
        if room > 0:
            claimed = await self._ledger.claim_events(limit=room, ttl_s=self._lease_ttl_s)
            for event in claimed:  # a claim that lapsed (renewals failed) and is ours again
                if event.event_id in self._running:
                    self._claims.add(event.event_id, self._running[event.event_id], sent)
            due = [e for e in claimed if e.event_id not in self._running]
        for row in due:
            task = asyncio.create_task(self._process(row))
            self._running[row.event_id] = task
            self._claims.add(row.event_id, task, sent)
            task.add_done_callback(functools.partial(self._done, row.event_id))
        # another replica's event is adopted once its claim expires: look that often
        longest = 60.0 if self._ledger.single_process else min(60.0, self._lease_ttl_s / 2)
        timeout = longest
        if next_at is not None:
            due_at = parse_stamp(next_at)
            timeout = min(longest, (due_at - dt.datetime.now(dt.UTC)).total_seconds())
            if timeout <= 0:  # what was due is claimed now (here or elsewhere); an end wakes us
                timeout = longest
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _done(self, event_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(event_id, None)
        self.nudge()

    @contextlib.asynccontextmanager
    async def _sale_lock(self, account: str, sale: str) -> AsyncIterator[None]:
        """One event at a time per sale; the lock is forgotten when nobody holds or awaits it."""
        key = (account, sale.lower())
        entry = self._sale_locks.get(key)
        if entry is None:
            entry = self._sale_locks[key] = _SaleLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._sale_locks[key]

    async def _process(self, row: EventRow) -> None:
        try:
            await self._claimed(row)
        except LeaseLost as lost:  # adopted by another replica: its outcome is the one kept
            log.warning("automation event %s: %s", row.event_id, lost)

    async def _claimed(self, row: EventRow) -> None:
        """Process an event this replica claimed; every outcome gives the claim up."""
        async with self._slots:
            # An open event with a label waits for that label: looking at it again is no attempt
            attempts = row.attempts if row.label_id is not None else row.attempts + 1
            try:
                outcome = await self._outcome(row, attempts)
            except _TryAgain as exc:
                await self._failed(row, attempts, str(exc))
                return
            except (UpstreamAuth, UpstreamError) as exc:  # retrying the same call cannot help
                outcome = Outcome("attention", exc.detail)
            except UpstreamFailure as exc:
                await self._failed(row, attempts, exc.detail)
                return
            except RatesvcError as exc:
                outcome = Outcome("attention", exc.detail)
            except Exception as exc:  # a bug: log it, keep the event, try again later
                log.exception("automation event %s failed unexpectedly", row.event_id)
                await self._failed(row, attempts, f"internal error: {exc!r}")
                return
            if outcome is None:  # settled by someone else meanwhile: only the claim is left
                await self._ledger.release_events([row.event_id])
                return
            if outcome.status == "waiting":
                await self._wait_for_label(row, attempts, outcome)
                return
            await self._ledger.set_event(
                row.event_id, status=outcome.status, reason=outcome.reason,
                label_id=outcome.label_id, attempts=attempts, claimed=True,
            )  # fmt: skip
            self._metrics.automation_finished.labels(outcome.status).inc()
            if outcome.status == "processed" and outcome.label_id is not None:
                await self._resolve_attention(row, outcome)
            if outcome.status == "attention":
                log.warning("event %s needs attention: %s", row.event_id, outcome.reason)

    async def _resolve_attention(self, row: EventRow, outcome: Outcome) -> None:
        """Earlier events of the sale's fulfilment that needed a person are resolved by the label
        this one found or bought (e.g. a webhook's event in attention, after the poller bought)."""
        assert row.sale_id is not None
        task = (outcome.task_id or "").lower()
        for other in await self._ledger.events_for_sales(row.account, [row.sale_id]):
            if (
                other.status == "attention" and other.event_type == PACK_AUTHORISED
                and other.event_id != row.event_id and (other.task_id or task).lower() == task
            ):  # fmt: skip
                await self._ledger.set_event(
                    other.event_id, status="processed", label_id=outcome.label_id,
                    reason=f"resolved by {row.event_id}: {outcome.reason}",
                )  # fmt: skip

    async def _wait_for_label(self, row: EventRow, attempts: int, outcome: Outcome) -> None:
        """Keep the event open (``received``), due again shortly, to look at its label again."""
        next_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=min(RECHECK_S, self._retry_s))
        await self._ledger.set_event(
            row.event_id, status="received", reason=outcome.reason, label_id=outcome.label_id,
            attempts=attempts, next_at=format_stamp(next_at), claimed=True,
        )  # fmt: skip
        log.info("event %s: %s", row.event_id, outcome.reason)

    async def _failed(self, row: EventRow, attempts: int, reason: str) -> None:
        """Retry after a back-off, or ``attention`` after the last attempt; the event no longer
        waits for a label (a failed label bought nothing)."""
        if attempts >= MAX_ATTEMPTS:
            reason = f"gave up after {attempts} attempts: {reason}"
            await self._ledger.set_event(
                row.event_id,
                status="attention",
                reason=reason,
                attempts=attempts,
                label_id=None,
                claimed=True,
            )
            self._metrics.automation_failed.labels("attention").inc()
            log.warning("event %s needs attention: %s", row.event_id, reason)
            return
        delay = min(MAX_BACKOFF_S, self._retry_s * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
        next_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
        await self._ledger.set_event(
            row.event_id, status="failed", reason=reason, attempts=attempts, label_id=None,
            next_at=format_stamp(next_at), claimed=True,
        )  # fmt: skip
        self._metrics.automation_failed.labels("retry").inc()
        log.info("event %s failed (%s); retry in %.1f s", row.event_id, reason, delay)

    async def _outcome(self, row: EventRow, attempts: int) -> Outcome | None:
        services = self._accounts.get(row.account)
        if services is None:
            return Outcome("ignored", f"account {row.account} is no longer configured")
        if row.sale_id is None:
            return Outcome("ignored", "the payload names no SaleID")
        async with self._sale_lock(row.account, row.sale_id):
            current = await self._ledger.event(row.event_id)
            if current is None or current.status not in OPEN_EVENT_STATUSES:
                return None  # settled while it waited for the sale (the sale was voided)
            if row.event_type == SALE_VOIDED:
                return await self._voided(services, row.sale_id)
            if row.label_id is not None:  # an earlier attempt left its label being bought
                label = await self._labels.view(row.label_id, row.account)
                return _label_outcome(label, bought=_bought(label))
            return await self._ship(services, row, last_try=attempts >= MAX_ATTEMPTS)

    # --- Sale/PackAuthorised -------------------------------------------------------------------

    async def _ship(self, services: AccountServices, row: EventRow, *, last_try: bool) -> Outcome:
        account = services.account
        rule = account.rule
        if not rule.on:
            return Outcome("ignored", "automation is off for this account")
        assert row.sale_id is not None
        deadline = asyncio.get_running_loop().time() + max(30.0, account.request_deadline_s)
        try:
            prepared = await shipment_for_sale(
                services, row.sale_id, row.task_id, deadline=deadline
            )
        except AlreadyShipped as exc:
            return Outcome("processed", f"nothing to do: {exc.detail}")
        except (SaleNotReady, NotFound) as exc:
            return Outcome("ignored", exc.detail)
        task_id = prepared.fulfilment.task_id
        labelled = await self._active_label(account.name, prepared.sale.sale_id, task_id)
        if labelled is not None:
            return _label_outcome(labelled, bought=f"already labelled by {labelled.label_id}")
        prepared.require_customs()  # incomplete: attention naming each product and field
        guessed = [d for d in prepared.defaults if "no weight for" in d]
        if guessed and not rule.allow_default_weights:
            return Outcome("attention", "product weights missing: " + "; ".join(guessed))
        mapped = mapped_service(rule, prepared.sale.carrier)
        if rule.autoship == "sale_carrier" and mapped is None and rule.fallback == "attention":
            return Outcome(
                "attention", f"the sale's carrier {prepared.sale.carrier or '(none)'!r} is not "
                "in the account's carrier map",
            )  # fmt: skip
        choice = await self._rate_and_choose(services, prepared, rule, mapped, deadline, last_try)
        if choice.quote is None and mapped is not None and rule.fallback == "cheapest":
            choice = await self._rate_and_choose(services, prepared, rule, None, deadline, last_try)
        quote = choice.quote
        if quote is None:
            return Outcome("attention", choice.reason or "no quote could be chosen")
        request = LabelsRequest(quote_id=quote.quote_id, test_label=rule.test_labels,
                                write_back=True)  # fmt: skip
        try:
            label, _ = await self._labels.buy(services, request, None, sale_checked=True)
        except (AlreadyShipped, AlreadyLabelled) as exc:  # labelled meanwhile by someone else
            labelled = await self._active_label(account.name, prepared.sale.sale_id, task_id)
            if labelled is None:
                return Outcome("processed", f"nothing to do: {exc.detail}")
            return _label_outcome(labelled, bought=f"already labelled by {labelled.label_id}")
        except Reconciling as exc:
            raise _TryAgain(exc.detail) from exc
        return _label_outcome(label, bought=_bought(label))

    async def _rate_and_choose(
        self,
        services: AccountServices,
        prepared: SaleShipment,
        rule: ShipRule,
        mapped: tuple[str, str] | None,
        deadline: float,
        last_try: bool,
    ) -> Choice:
        carriers, service_codes = rating_filters(rule, mapped)
        rating = await self._rater.rate(
            services, prepared.shipment, carriers=carriers, service_codes=service_codes,
            max_age_s=None, deadline=deadline, sale_id=prepared.sale.sale_id,
            task_id=prepared.fulfilment.task_id, order_number=prepared.sale.order_number,
        )  # fmt: skip
        answer = rating.response
        if answer.errors and not last_try:  # the cheapest may be among those that failed
            failed = ", ".join(f"{e.carrier_code}: {e.message}" for e in answer.errors)
            raise _TryAgain(f"rating incomplete ({failed})")
        return choose(rule, answer.quotes, mapped=mapped)

    async def _active_label(self, account: str, sale_id: str, task_id: str) -> Label | None:
        """The fulfilment's label that still holds it (not voided, not failed), if any."""
        for row in await self._ledger.purchases(account, sale_id=sale_id, limit=200):
            if (row.task_id or "").lower() == task_id.lower() and row.status not in SETTLED:
                return await self._labels.view(row.label_id, account)
        return None

    # --- Sale/Voided ---------------------------------------------------------------------------

    async def _voided(self, services: AccountServices, sale_id: str) -> Outcome:
        account = services.account.name
        stuck = await self._labels.hold_for_voided_sale(account, sale_id, SALE_VOIDED_DETAIL)
        for event in await self._ledger.events_for_sales(account, [sale_id]):
            if event.status in OPEN_EVENT_STATUSES and event.event_type != SALE_VOIDED:
                await self._ledger.set_event(
                    event.event_id, status="ignored", reason="the sale was voided in Cin7 Core"
                )
        if not stuck:
            return Outcome("ignored", "no label of this sale was waiting to be written back")
        return Outcome(
            "processed", f"labels not yet written back set to attention: {', '.join(stuck)}"
        )


def _label_outcome(label: Label, *, bought: str) -> Outcome:
    """What a label an event bought or found means for the event. Only a bought label makes it
    ``processed`` (with ``bought`` as the reason); one still being bought keeps it waiting; one
    that bought nothing makes it retry; one that needs a person puts it in ``attention``."""
    label_id = label.label_id
    if label.status in BOUGHT:
        return Outcome("processed", bought, label_id, label.task_id)
    if label.status == LabelStatus.PURCHASING:
        return Outcome(
            "waiting", f"label {label_id} is still being bought; it is checked again without "
            "buying", label_id,
        )  # fmt: skip
    if label.status == LabelStatus.FAILED:
        raise _TryAgain(f"label {label_id}: purchase failed: {label.detail}")
    if label.status == LabelStatus.ATTENTION:
        detail = label.detail or "it needs a person"
        return Outcome("attention", f"label {label_id}: {detail}", label_id)
    return Outcome("ignored", f"label {label_id} was voided; nothing more is bought for this event")


def _bought(label: Label) -> str:
    test = " (test label)" if label.test_label else ""
    return (
        f"bought {label.carrier_code}/{label.service_code} for {label.total_cost} "
        f"{label.currency}{test}, {len(label.packages)} package(s)"
    )


def _initial(account: Account, event: Cin7Event) -> tuple[str, str | None]:
    """(status, reason) of an event as it is recorded."""
    if event.event_type == PACK_AUTHORISED:
        if not account.rule.on:
            return "ignored", "automation is off for this account (autoship = off)"
        if event.sale_id is None:
            return "ignored", "the payload names no SaleID"
        return "received", None
    if event.event_type == SALE_VOIDED and event.sale_id is not None:
        return "received", None
    return "ignored", f"acknowledged; ratesvc acts on {PACK_AUTHORISED} and {SALE_VOIDED} only"
