"""The write-back outbox worker: tracking and label PDFs back onto the Cin7 Core sale.

Jobs live in the ledger, so they survive restarts. A job is done in steps that each look before
they write, so repeating a job (after a crash, a time-out, or a retry) never duplicates anything:

* ``write_back`` — read the sale; if its Ship already carries our tracking numbers the ship lines
  are done, else write one line per box (carrier, tracking number, tracking URL, ship date,
  shipped) and authorise the Ship (``POST``), or add the tracking with ``PUT
  AddTrackingNumbers`` when the Ship was authorised for labels since voided; then attach each
  label PDF (and customs form) whose file name is not on the sale yet.
* ``void_correction`` — after a void, clear the voided tracking numbers from the Ship lines.

A failed job is retried with exponential backoff (``base_s`` doubling up to ``max_s``) through
throttling and outages; the label says ``write_back_failed`` meanwhile, and ``attention`` once
``attention_after`` tries have failed (a person should look at Cin7 Core) — the job is still
retried, and succeeding completes the label. A person can make the waiting job due now
(:meth:`ratesvc.storage.ledger.Ledger.due_now`, ``POST /v1/labels/{id}/write-back/retry``). A
Ship authorised with someone else's tracking cannot be fixed by retrying: the label goes to
``attention`` and its job ends.

A job is ``running`` while a worker does it, claimed by that worker's replica with a lease
(``owner``, ``lease_until``) renewed every third of ``lease_ttl_s`` while it runs
(:class:`ratesvc.storage.leases.Claims`). A job whose replica died is adopted by another once
its lease expired (each step looks before it writes, so doing a job again is harmless); a
replica that lost a job's claim stops it, and its late result is refused (only the current
owner settles a job). With one process (SQLite) the jobs a previous process left running are
due again at start-up; with several (PostgreSQL) a running job at start-up may be a live
replica's and is left to expire. A graceful stop gives the stopped jobs back at once.

A job never starts a Cin7 Core write once its claim may have lapsed: right before *every* Cin7
Core write (the Ship, each PDF and customs form, the invoice charge, a correction's Ship and
charge removal) — when the limiter grants it, after any wait for a turn — the worker confirms the
claim in the ledger itself (:meth:`WriteBackWorker._confirm`: the job is still ``running``, still
this replica's, with at least :func:`~ratesvc.storage.leases.confirm_margin` — a third of the
TTL — left on the database's clock). A write it cannot confirm (the claim adopted, about to
lapse, or the ledger not answering) is not sent, and the job stops there without settling or
recording an error: the claim lapses and whoever claims the job next (an adopter, or this
replica) does it again from the top. Meanwhile :class:`~ratesvc.storage.leases.Claims` cancels a
job whose claim runs out on this replica's clock, even while a renewal hangs.

What is left: a write confirmed and sent can still be *applied* after the claim lapsed, if more
than the margin (10 s with the default 30 s TTL) passes between the confirm and Cin7 Core
applying it (connecting, sending, Cin7 Core's own processing) *and* every renewal meanwhile
failed; it duplicates or outlives an adopter's work only if it lands after the adopter claimed
the job and read the sale, later still. The margin cannot cover a Cin7 Core call's own time-out
(a call may last until the job's 60 s deadline): that would need a TTL above 180 s
(``RATESVC_LEASE_TTL_S``, and a dead replica's work would wait that long to be adopted).

A void while a write-back is ``pending`` and untried cancels it; while it is
running, or after it ran, the void queues a ``void_correction`` behind it (see
:meth:`ratesvc.storage.ledger.Ledger.void`), and the write-back's own outcome no longer moves the
label. A correction that keeps failing is retried for as long as it takes (the voided label stays
``voided``; its ``detail`` says the correction is late).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from decimal import Decimal

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.errors import RatesvcError, UpstreamFailure
from ratesvc.labels.documents import CUSTOMS, LABEL, package_pdf
from ratesvc.labels.lifecycle import JobKind, LabelStatus, PackageState, WriteBackState, sources
from ratesvc.labels.models import LabelPlan
from ratesvc.sales import SHIPPED_STATES
from ratesvc.storage.leases import DEFAULT_TTL_S, Claims, confirm_margin
from ratesvc.storage.ledger import (
    IllegalTransition,
    JobResult,
    LeaseLost,
    Ledger,
    OutboxRow,
    PackageRow,
    PurchaseRow,
    parse_stamp,
)
from ratesvc.tracking import carrier_name, tracking_url
from ratesvc.upstreams.cin7 import wire
from ratesvc.upstreams.cin7.client import Cin7Client

log = logging.getLogger(__name__)

Confirm = Callable[[], Awaitable[None]]
"""Raises :class:`LeaseLost` unless the job's claim is still this replica's (before a write)."""


class NeedsAPerson(RatesvcError):
    """Retrying cannot fix this write-back."""

    code = "attention"
    status = 409


SALE_VOIDED = (
    "the sale was voided in Cin7 Core before this label was written back; void the label to "
    "have its cost refunded"
)


_WRITABLE = frozenset({LabelStatus.PURCHASED, LabelStatus.WRITE_BACK_FAILED})
"""A write-back job may only run, and settle, for a label in one of these statuses — or for one
its own failed tries sent to ``attention`` (see :func:`held_by_write_back`)."""


NOT_CLEARED = "voided, but its tracking could not be cleared in Cin7 Core yet"


def held_by_write_back(row: PurchaseRow) -> bool:
    """The label is in ``attention`` because its write-back kept failing (still retried). Other
    ways to ``attention`` end or cancel the write-back job (a refusal retrying cannot fix, the
    sale voided, a partial void), so none of them leaves a job to run."""
    return row.status == LabelStatus.ATTENTION and row.write_back_state == WriteBackState.FAILED


def _line(plan: LabelPlan, package: PackageRow, *, live: bool) -> wire.ShipLineWrite:
    """The Ship line of one box: its tracking when ``live``, cleared otherwise."""
    return wire.ShipLineWrite(
        ShipmentDate=f"{plan.ship_date.isoformat()}T00:00:00",
        Carrier=carrier_name(plan.carrier_code),
        Box=package.box or f"Box {package.n}",
        TrackingNumber=(package.tracking_number or "") if live else "",
        TrackingURL=(tracking_url(plan.carrier_code, package.tracking_number) or "")
        if live
        else "",
        IsShipped=live,
    )


def pdf_name(tracking_number: str | None, n: int) -> str:
    return f"label-{tracking_number or n}.pdf"


def customs_name(tracking_number: str | None, n: int) -> str:
    return f"customs-{tracking_number or n}.pdf"


class WriteBackWorker:
    """Runs due outbox jobs: several sales (and accounts) at once, one job per sale at a time,
    in the order they were queued (a void's correction runs after the write-back it corrects).
    Each job's outcome and the label's status change commit together."""

    def __init__(
        self,
        ledger: Ledger,
        accounts: dict[str, AccountServices],
        *,
        base_s: float = 5.0,
        max_s: float = 600.0,
        attention_after: int = 50,
        concurrency: int = 8,
        lease_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self._ledger = ledger
        self._lease_ttl_s = lease_ttl_s
        self._margin_s = confirm_margin(lease_ttl_s)
        self._claims: Claims[int] = Claims(
            "write-back job", lambda ids: ledger.renew_jobs(ids, lease_ttl_s), ttl_s=lease_ttl_s
        )
        self._accounts = accounts
        self._base_s = base_s
        self._max_s = max_s
        self._attention_after = attention_after
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._jobs: dict[asyncio.Task[None], int] = {}

    async def start(self) -> None:
        await self._ledger.release_running_jobs()
        self._task = asyncio.create_task(self._run())

    def nudge(self) -> None:
        """New work was queued: look now instead of at the next due time."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop; the jobs cut short are given back (pending) for another replica or the next
        start — if the ledger cannot be reached, their claims simply expire."""
        tasks = [t for t in (self._task, *self._running) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._claims.stop()
        try:
            await self._ledger.release_own_jobs()
        except Exception as exc:
            log.warning("running write-back jobs not given back (%r): they expire", exc)

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except Exception:  # the ledger itself failing: say so, then keep trying
                log.exception("write-back worker round failed")
                await asyncio.sleep(1.0)

    async def _round(self) -> None:
        """Start every due job there is room for, then sleep until the next is due, new work is
        queued, or a running job ends (its sale's next job may be due)."""
        self._wake.clear()
        # read before claiming: a job that falls due meanwhile is claimed now or woken for
        next_at = await self._ledger.next_due_at()
        room = self._concurrency - len(self._running)
        if room > 0:
            sent = asyncio.get_running_loop().time()
            doing = {job_id: task for task, job_id in self._jobs.items()}
            for job in await self._ledger.claim_jobs(limit=room, ttl_s=self._lease_ttl_s):
                if job.id in doing:  # its claim lapsed (renewals failed) and is ours again
                    self._claims.add(job.id, doing[job.id], sent)
                    continue
                task = asyncio.create_task(self._guarded(job))
                self._running.add(task)
                self._jobs[task] = job.id
                self._claims.add(job.id, task, sent)
                task.add_done_callback(self._finished)
        # another replica's running job is adopted once its claim expires: look that often
        longest = 60.0 if self._ledger.single_process else min(60.0, self._lease_ttl_s / 2)
        timeout = longest
        if next_at is not None:
            due = parse_stamp(next_at)
            timeout = max(0.0, min(longest, (due - dt.datetime.now(dt.UTC)).total_seconds()))
        if timeout == 0.0 or len(self._running) >= self._concurrency:
            # what was due is claimed now (or by another replica); a job ending wakes the loop
            timeout = longest
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(timeout, 0.01))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._jobs.pop(task, None)
        self._wake.set()

    async def _guarded(self, job: OutboxRow) -> None:
        try:
            await self._do(job)
        except asyncio.CancelledError:
            raise
        except LeaseLost as lost:  # adopted, or could not be confirmed: left to the next claim
            log.warning("write-back job %d of %s stops here: %s", job.id, job.label_id, lost)
        except Exception as exc:  # a bug must not stop every other write-back
            log.exception("write-back job %d of %s failed unexpectedly", job.id, job.label_id)
            later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._max_s)
            with contextlib.suppress(LeaseLost):  # adopted meanwhile: the adopter settles it
                await self._ledger.settle_job(
                    JobResult(job.id, "pending", f"internal error: {exc!r}", later)
                )

    async def _do(self, job: OutboxRow) -> None:
        row = await self._ledger.purchase(job.label_id)
        services = self._accounts.get(row.account) if row else None
        if row is None or services is None or services.cin7 is None:
            await self._ledger.settle_job(JobResult(job.id, "cancelled", "no such label/account"))
            return
        # a label in attention for its failed tries settles only if nothing else changed it since
        since = row.updated_at if held_by_write_back(row) else None
        if job.kind == JobKind.WRITE_BACK and row.status not in _WRITABLE and since is None:
            # voided (its correction is queued if needed), or held for a person
            await self._ledger.settle_job(JobResult(job.id, "cancelled", f"label {row.status}"))
            return
        try:
            packages = await self._ledger.packages(job.label_id)
            plan = msgspec.json.decode(row.plan, type=LabelPlan)
            confirm = functools.partial(self._confirm, job.id)
            if job.kind == JobKind.VOID_CORRECTION:
                await self._correct(services, plan, packages, confirm)
            else:
                await self._write(services, plan, packages, confirm)
        except NeedsAPerson as exc:
            if job.kind == JobKind.VOID_CORRECTION:  # a voided label stays voided
                await self._ledger.settle_job(JobResult(job.id, "done", exc.detail))
                await self._ledger.set_detail(job.label_id, exc.detail)
                return
            # stopped for good (retrying cannot fix it): ``cancelled``, so the label is not one
            # its write-back still holds (nothing is offered a retry that would do nothing)
            await self._outcome(job, LabelStatus.ATTENTION, JobResult(job.id, "done", exc.detail),
                                since, detail=exc.detail, write_back_state="cancelled",
                                write_back_error=exc.detail)  # fmt: skip
            return
        except UpstreamFailure as exc:
            delay = min(self._max_s, self._base_s * 2**job.attempts) * random.uniform(0.8, 1.2)
            log.info("%s of %s failed (%s); retry in %.1f s", job.kind, job.label_id, exc.detail,
                     delay)  # fmt: skip
            later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
            retry = JobResult(job.id, "pending", exc.detail, later)
            attempts = job.attempts + 1
            if job.kind == JobKind.VOID_CORRECTION:
                await self._ledger.settle_job(retry)
                if attempts >= self._attention_after:
                    # a partly voided label keeps its own reason (the boxes left to settle)
                    now = await self._ledger.purchase(job.label_id) or row
                    keep = now.status == LabelStatus.ATTENTION
                    await self._ledger.set_detail(
                        job.label_id,
                        now.detail if keep else f"{NOT_CLEARED} (still retrying): {exc.detail}",
                        write_back_error=exc.detail,
                    )
                return
            if since is not None or attempts >= self._attention_after:
                why = (
                    f"the write-back to Cin7 Core has failed {attempts} time(s) and is still "
                    f"retried; once Cin7 Core works again, retry it now: {exc.detail}"
                )
                await self._outcome(
                    job, LabelStatus.ATTENTION, retry, since, detail=why,
                    write_back_state="failed", write_back_error=exc.detail,
                )  # fmt: skip
                return
            await self._outcome(job, LabelStatus.WRITE_BACK_FAILED, retry, since,
                                write_back_state="failed", write_back_error=exc.detail)  # fmt: skip
            return
        if job.kind == JobKind.VOID_CORRECTION:
            await self._ledger.settle_job(JobResult(job.id, "done"))
            after = await self._ledger.purchase(job.label_id)
            if after is not None and (after.detail or "").startswith(NOT_CLEARED):  # it is over
                await self._ledger.set_detail(job.label_id, None, write_back_error=None)
            elif after is not None and after.write_back_error is not None:  # a reason of its own
                await self._ledger.set_detail(job.label_id, after.detail, write_back_error=None)
            return
        cleared = {"detail": None} if since is not None else {}  # the attention is over
        await self._outcome(job, LabelStatus.COMPLETED, JobResult(job.id, "done"), since,
                            write_back_state="done", write_back_error=None, **cleared)  # fmt: skip

    async def _outcome(
        self, job: OutboxRow, to: LabelStatus, result: JobResult, since: str | None,
        **fields: object,
    ) -> None:  # fmt: skip
        """The job's result and the label's new status, in one transaction. A label voided
        meanwhile keeps its status: the job is settled alone (cancelled, as the void queued the
        correction of whatever it wrote). ``since``: the job ran for a label its failed tries
        had sent to ``attention`` (at that ``updated_at``); it settles only if the label is
        unchanged (a partial void, say, keeps its own ``attention``)."""
        fields["write_back_attempts"] = job.attempts + 1
        allowed = _WRITABLE if since is None else frozenset({LabelStatus.ATTENTION})
        try:
            await self._ledger.transition(
                job.label_id, to, allowed & sources(to), fields=fields, job=result,
                unchanged_since=since,
            )  # fmt: skip
        except IllegalTransition as exc:
            log.info("write-back of %s: label no longer takes it (%s)", job.label_id, exc.current)
            await self._ledger.settle_job(JobResult(job.id, "cancelled", f"label {exc.current}"))

    async def _confirm(self, job_id: int) -> None:
        """Right before a Cin7 Core write of job ``job_id`` leaves: the ledger says the job is
        still this replica's, with at least the margin left on the database's clock once the
        answer is back (the time the read took is taken off what it found). Raises
        :class:`LeaseLost` otherwise — also when the ledger cannot say: the write is not sent."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            left = await self._ledger.job_claim_left(job_id)
        except Exception as exc:
            log.warning("the claim on write-back job %d could not be confirmed (%r)", job_id, exc)
            raise LeaseLost(f"outbox:{job_id}") from exc
        if left is None or left - (loop.time() - sent) < self._margin_s:
            raise LeaseLost(f"outbox:{job_id}")

    async def _write(
        self,
        services: AccountServices,
        plan: LabelPlan,
        packages: list[PackageRow],
        confirm: Confirm,
    ) -> None:
        cin7 = services.cin7
        assert cin7 is not None
        assert plan.sale_id is not None
        assert plan.task_id is not None
        deadline = asyncio.get_running_loop().time() + 60
        sale = await cin7.get_sale(plan.sale_id, deadline=deadline)
        if sale.voided:
            raise NeedsAPerson(SALE_VOIDED)
        fulfilment = sale.fulfilment(plan.task_id)
        if fulfilment is None:
            raise NeedsAPerson(f"sale {plan.sale_id} no longer has fulfilment {plan.task_id}")
        packages = [p for p in packages if p.state == PackageState.BOUGHT]  # never a voided one
        ours = {p.tracking_number for p in packages if p.tracking_number}
        present = {line.tracking_number for line in fulfilment.ship_lines if line.tracking_number}
        lines = [_line(plan, p, live=True) for p in packages]
        if not ours <= present:
            if fulfilment.ship_status in SHIPPED_STATES:
                if present:
                    raise NeedsAPerson(
                        f"the Ship of fulfilment {plan.task_id} is already authorised with other "
                        f"tracking numbers ({', '.join(sorted(present))})"
                    )
                await cin7.ship(plan.task_id, lines, authorise=True, add_tracking=True,
                                deadline=deadline, before_send=confirm)  # fmt: skip
            else:
                await cin7.ship(
                    plan.task_id, lines, authorise=True, deadline=deadline, before_send=confirm
                )
        attached = set(sale.attachments)
        for package in packages:
            files = (
                (pdf_name(package.tracking_number, package.n), LABEL, package.has_pdf),
                (customs_name(package.tracking_number, package.n), CUSTOMS,
                 package.has_customs_pdf),
            )  # fmt: skip
            for name, kind, kept in files:
                if kept and name not in attached:
                    content = await package_pdf(self._ledger, package, kind)
                    if content is not None:
                        await cin7.attach(plan.sale_id, name, content, deadline=deadline,
                                          before_send=confirm)  # fmt: skip
        if services.account.invoice_shipping:
            await self._charge(cin7, plan, packages, deadline, confirm)

    @staticmethod
    async def _charge(
        cin7: Cin7Client,
        plan: LabelPlan,
        packages: list[PackageRow],
        deadline: float,
        confirm: Confirm,
    ) -> None:
        """Add the shipping charge to the sale's draft invoice once (its comment names the label).

        ``POST /sale/invoice`` rewrites every line, so the invoice goes back whole, with ours
        added to its additional charges.
        """
        assert plan.sale_id is not None
        label_id = packages[0].label_id
        invoices = await cin7.invoices(plan.sale_id, deadline=deadline)
        if any(c.Comment == label_id for i in invoices for c in i.fields.AdditionalCharges):
            return
        draft = next((i for i in invoices if i.fields.Status == "DRAFT"), None)
        if draft is None:
            raise NeedsAPerson(
                f"sale {plan.sale_id} has no draft invoice to add the shipping charge to"
            )
        amount = Decimal(plan.charge) if plan.charge else sum(
            (Decimal(p.cost) for p in packages if p.cost), Decimal(0)
        )  # fmt: skip
        tracking = ", ".join(p.tracking_number for p in packages if p.tracking_number)
        charge = wire.InvoiceCharge(
            Description=f"Shipping - {carrier_name(plan.carrier_code)} ({tracking})",
            Quantity=Decimal(1), Price=amount, Total=amount, Comment=label_id,
        )  # fmt: skip
        await cin7.add_invoice_charge(draft, charge, deadline=deadline, before_send=confirm)

    async def _correct(
        self,
        services: AccountServices,
        plan: LabelPlan,
        packages: list[PackageRow],
        confirm: Confirm,
    ) -> None:
        """Clear the voided boxes' tracking numbers from the Ship, if any of them are there (a
        box the carrier would not void keeps its line); once every box is voided, take the
        label's shipping charge off the draft invoice too."""
        assert services.cin7 is not None
        assert plan.sale_id is not None
        assert plan.task_id is not None
        deadline = asyncio.get_running_loop().time() + 60
        sale = await services.cin7.get_sale(plan.sale_id, deadline=deadline)
        fulfilment = sale.fulfilment(plan.task_id)
        dead = {p.tracking_number for p in packages if p.tracking_number and p.state == "voided"}
        if fulfilment is not None and dead & {
            line.tracking_number for line in fulfilment.ship_lines if line.tracking_number
        }:
            lines = [_line(plan, p, live=p.state == PackageState.BOUGHT) for p in packages]
            await services.cin7.ship(plan.task_id, lines, authorise=True, add_tracking=True,
                                     deadline=deadline, before_send=confirm)  # fmt: skip
        if services.account.invoice_shipping and all(p.state == "voided" for p in packages):
            await self._uncharge(services.cin7, plan, packages[0].label_id, deadline, confirm)

    @staticmethod
    async def _uncharge(
        cin7: Cin7Client, plan: LabelPlan, label_id: str, deadline: float, confirm: Confirm
    ) -> None:
        """Take the voided label's shipping charge off the sale's draft invoice, if it is there;
        on an invoice no longer in draft it cannot be: a person credits it."""
        assert plan.sale_id is not None
        for invoice in await cin7.invoices(plan.sale_id, deadline=deadline):
            if not any(c.Comment == label_id for c in invoice.fields.AdditionalCharges):
                continue
            if invoice.fields.Status != "DRAFT":
                raise NeedsAPerson(
                    f"voided, but its shipping charge is on invoice {invoice.fields.InvoiceNumber}"
                    f" ({invoice.fields.Status}): credit it in Cin7 Core"
                )
            await cin7.remove_invoice_charge(
                invoice, label_id, deadline=deadline, before_send=confirm
            )
