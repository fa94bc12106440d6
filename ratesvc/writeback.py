"""The write-back outbox worker: tracking and label PDFs back onto the Cin7 Core sale.

Jobs live in the ledger, so they survive restarts. A job is done in steps that each look before
they write, so repeating a job (after a crash, a time-out, or a retry) never duplicates anything:

* ``write_back`` — read the sale; if its Ship already carries our tracking numbers the ship lines
  are done, else write one line per box (carrier, tracking number, tracking URL, ship date,
  shipped) and authorise the Ship (``POST``), or add the tracking with ``PUT
  AddTrackingNumbers`` when the Ship was authorised for labels since voided; then attach each
  label PDF whose file name is not on the sale yet.
* ``void_correction`` — after a void, clear the voided tracking numbers from the Ship lines.

A failed job is retried with exponential backoff (``base_s`` doubling up to ``max_s``) through
throttling and outages; the label says ``write_back_failed`` meanwhile. A Ship authorised with
someone else's tracking cannot be fixed by retrying: the label goes to ``attention``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from decimal import Decimal
from pathlib import Path

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.errors import RatesvcError, UpstreamFailure
from ratesvc.label_models import LabelPlan
from ratesvc.ledger import Ledger, OutboxRow, PackageRow
from ratesvc.sales import SHIPPED_STATES
from ratesvc.tracking import carrier_name, tracking_url
from ratesvc.upstreams.cin7 import wire
from ratesvc.upstreams.cin7.client import Cin7Client

log = logging.getLogger(__name__)


class NeedsAPerson(RatesvcError):
    """Retrying cannot fix this write-back."""

    code = "attention"
    status = 409


SALE_VOIDED = (
    "the sale was voided in Cin7 Core before this label was written back; void the label to "
    "have its cost refunded"
)


def pdf_name(tracking_number: str | None, n: int) -> str:
    return f"label-{tracking_number or n}.pdf"


class WriteBackWorker:
    def __init__(
        self,
        ledger: Ledger,
        accounts: dict[str, AccountServices],
        *,
        base_s: float = 5.0,
        max_s: float = 600.0,
        attention_after: int = 50,
    ) -> None:
        self._ledger = ledger
        self._accounts = accounts
        self._base_s = base_s
        self._max_s = max_s
        self._attention_after = attention_after
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def nudge(self) -> None:
        """New work was queued: look now instead of at the next due time."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except Exception:  # the ledger itself failing: say so, then keep trying
                log.exception("write-back worker round failed")
                await asyncio.sleep(1.0)

    async def _round(self) -> None:
        """Do every due job, or sleep until the next one is due (or new work is queued)."""
        jobs = await self._ledger.due_jobs()
        for job in jobs:
            try:
                await self._do(job)
            except Exception as exc:  # a bug must not stop every other write-back
                log.exception("write-back job %d of %s failed unexpectedly", job.id, job.label_id)
                later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._max_s)
                await self._ledger.retry_job(job.id, f"internal error: {exc!r}", later)
        if jobs:
            return
        self._wake.clear()
        next_at = await self._ledger.next_due_at()
        timeout = 60.0
        if next_at is not None:
            due = dt.datetime.strptime(next_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
            timeout = max(0.0, min(60.0, (due - dt.datetime.now(dt.UTC)).total_seconds()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _do(self, job: OutboxRow) -> None:
        row = await self._ledger.purchase(job.label_id)
        services = self._accounts.get(row.account) if row else None
        if row is None or services is None or services.cin7 is None:
            await self._ledger.finish_job(job.id)
            return
        if job.kind == "write_back" and row.write_back_state == "cancelled":
            await self._ledger.finish_job(job.id)  # the sale was voided (see automation)
            return
        try:
            packages = await self._ledger.packages(job.label_id)
            plan = msgspec.json.decode(row.plan, type=LabelPlan)
            if job.kind == "void_correction":
                await self._correct(services, plan, packages)
            else:
                await self._write(services, plan, packages)
        except NeedsAPerson as exc:
            await self._ledger.finish_job(job.id)
            await self._ledger.set_status(
                job.label_id, "attention", detail=exc.detail, write_back_state="failed",
                write_back_error=exc.detail, write_back_attempts=job.attempts + 1,
            )  # fmt: skip
            return
        except UpstreamFailure as exc:
            attempts = job.attempts + 1
            delay = min(self._max_s, self._base_s * 2**job.attempts) * random.uniform(0.8, 1.2)
            log.info(
                "write-back of %s failed (%s); retry in %.1f s", job.label_id, exc.detail, delay
            )
            await self._ledger.retry_job(
                job.id, exc.detail, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
            )
            if job.kind == "write_back" and row.status != "voided":
                status = "attention" if attempts >= self._attention_after else "write_back_failed"
                await self._ledger.set_status(
                    job.label_id, status, write_back_state="failed", write_back_error=exc.detail,
                    write_back_attempts=attempts,
                )  # fmt: skip
            elif job.kind == "void_correction" and attempts >= self._attention_after:
                await self._ledger.finish_job(job.id)
                await self._ledger.set_status(
                    job.label_id, "attention",
                    detail="voided, but its tracking could not be cleared in Cin7 Core: "
                    + exc.detail,
                )  # fmt: skip
            return
        await self._ledger.finish_job(job.id)
        if job.kind == "write_back" and row.status != "voided":
            await self._ledger.set_status(
                job.label_id, "completed", write_back_state="done", write_back_error=None,
                write_back_attempts=job.attempts + 1,
            )  # fmt: skip

    async def _write(
        self, services: AccountServices, plan: LabelPlan, packages: list[PackageRow]
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
        ours = {p.tracking_number for p in packages if p.tracking_number}
        present = {line.tracking_number for line in fulfilment.ship_lines if line.tracking_number}
        lines = [
            wire.ShipLineWrite(
                ShipmentDate=f"{plan.ship_date.isoformat()}T00:00:00",
                Carrier=carrier_name(plan.carrier_code),
                Box=p.box or f"Box {p.n}", TrackingNumber=p.tracking_number or "",
                TrackingURL=tracking_url(plan.carrier_code, p.tracking_number) or "",
                IsShipped=True,
            )
            for p in packages
        ]  # fmt: skip
        if not ours <= present:
            if fulfilment.ship_status in SHIPPED_STATES:
                if present:
                    raise NeedsAPerson(
                        f"the Ship of fulfilment {plan.task_id} is already authorised with other "
                        f"tracking numbers ({', '.join(sorted(present))})"
                    )
                await cin7.ship(plan.task_id, lines, authorise=True, add_tracking=True,
                                deadline=deadline)  # fmt: skip
            else:
                await cin7.ship(plan.task_id, lines, authorise=True, deadline=deadline)
        attached = set(sale.attachments)
        for package in packages:
            name = pdf_name(package.tracking_number, package.n)
            if package.pdf_path and name not in attached:
                content = await asyncio.to_thread(Path(package.pdf_path).read_bytes)
                await cin7.attach(plan.sale_id, name, content, deadline=deadline)
        if services.account.invoice_shipping:
            await self._charge(cin7, plan, packages, deadline)

    @staticmethod
    async def _charge(
        cin7: Cin7Client, plan: LabelPlan, packages: list[PackageRow], deadline: float
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
        await cin7.add_invoice_charge(draft, charge, deadline=deadline)

    async def _correct(
        self, services: AccountServices, plan: LabelPlan, packages: list[PackageRow]
    ) -> None:
        assert services.cin7 is not None
        assert plan.task_id is not None
        lines = [
            wire.ShipLineWrite(
                ShipmentDate=f"{plan.ship_date.isoformat()}T00:00:00",
                Carrier=carrier_name(plan.carrier_code),
                Box=p.box or f"Box {p.n}", TrackingNumber="", TrackingURL="", IsShipped=False,
            )
            for p in packages
        ]  # fmt: skip
        deadline = asyncio.get_running_loop().time() + 60
        await services.cin7.ship(plan.task_id, lines, authorise=True, add_tracking=True,
                                 deadline=deadline)  # fmt: skip
