"""Buying labels exactly once; reading and voiding them.

The purchase of one label (one ShipStation label per package) is a *unit* that runs in a tracked
task, so a client that disconnects or a duplicate request cannot cut it in half:

1. The intent is recorded first: a ledger row keyed by (account, idempotency key) with the plan
   and the request's hash, and one row per package with its purchase key (``<label>:<n>``), which
   is sent to ShipStation in ``advancedOptions.customField1``. A second request with the same key
   and body waits for the first and gets its result; with another body it is refused.
2. Each package is marked ``buying`` before ``createlabel`` (never retried) and ``bought``, with
   its PDF on disk, before anyone is answered.
3. An outcome that is unknown (time-out, lost connection, a crash between ShipStation's answer and
   the ledger write) is reconciled before anything is bought again: ShipStation's shipments are
   listed around the attempt and matched on the purchase key. Found: adopted (ShipStation does not
   list label PDFs, so the label must be reprinted there; the label says so). Provably absent
   (listed, not there, ``settle_s`` after the attempt): bought again. Otherwise the unit waits and
   looks again; after ``give_up_s`` it goes to ``attention`` for a person.

At start-up every unfinished purchase is resumed the same way. Write-backs to Cin7 Core are queued
in the same ledger (see :mod:`ratesvc.writeback`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.errors import (
    AlreadyShipped,
    AlreadyVoided,
    IdempotencyKeyReused,
    InvalidRequest,
    NotFound,
    QuoteExpired,
    RatesvcError,
    UpstreamFailure,
    UpstreamThrottled,
    VoidRejected,
)
from ratesvc.label_models import Label, LabelPackage, LabelPlan, LabelsRequest, WriteBack
from ratesvc.ledger import IdempotencyConflict, Ledger, PackageRow, PurchaseRow, now_text
from ratesvc.models import LabelRequest, ShipmentQuery, ShipmentRecord
from ratesvc.quotes import QuoteStore
from ratesvc.sale_shipments import shipment_for_sale
from ratesvc.tracking import tracking_url
from ratesvc.units import money_str

log = logging.getLogger(__name__)


MAX_ATTEMPTS = 5  # createlabel calls for one package before a person must look
MAX_PAGES = 20  # shipment list pages (of 500) read when reconciling one package


@dataclass(frozen=True)
class LabelTiming:
    settle_s: float = 60.0  # how long after an attempt a missing shipment counts as absent
    give_up_s: float = 3600.0  # unknown outcomes unresolved this long go to `attention`
    wait_s: float = 30.0  # how long a request waits for its purchase before answering as is


class Labels:
    def __init__(
        self,
        ledger: Ledger,
        *,
        data_dir: Path,
        quotes: QuoteStore,
        accounts: dict[str, AccountServices],
        timing: LabelTiming,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_queued`` is called when a write-back job was queued (to wake the worker)."""
        self._on_queued = on_queued
        self._ledger = ledger
        self._dir = data_dir / "labels"
        self._quotes = quotes
        self._accounts = accounts
        self._timing = timing
        self._units: dict[str, asyncio.Task[None]] = {}
        self._buying: dict[tuple[str, str, str], asyncio.Task[tuple[str, bool]]] = {}
        self._attempts: dict[str, int] = {}  # createlabel calls per purchase key, this process

    # --- buying --------------------------------------------------------------------------------

    async def buy(
        self,
        services: AccountServices,
        request: LabelsRequest,
        idem_key: str | None,
        *,
        sale_checked: bool = False,
    ) -> tuple[Label, bool]:
        """(the label, True when this call created it).

        Identical requests (same account, body and key) arriving together share one attempt:
        the first creates the label, the others wait for it and get it as a replay, without
        reading the sale again. ``sale_checked``: the caller read the quoted sale moments ago
        (automation), so it is not read again before buying.
        """
        request_hash = hashlib.sha256(msgspec.json.encode(request)).hexdigest()
        together = (services.account.name, idem_key or "", request_hash)
        running = self._buying.get(together)
        if running is not None:
            label_id, _ = await asyncio.shield(running)
            return await self.view(label_id, services.account.name), False
        task = asyncio.create_task(
            self._buy(services, request, idem_key, request_hash, sale_checked)
        )
        self._buying[together] = task
        try:
            label_id, created = await asyncio.shield(task)
        finally:
            if task.done():
                self._buying.pop(together, None)
        return await self.view(label_id, services.account.name), created

    async def _buy(
        self,
        services: AccountServices,
        request: LabelsRequest,
        idem_key: str | None,
        request_hash: str,
        sale_checked: bool,
    ) -> tuple[str, bool]:
        account = services.account
        plan = await self._plan(services, request, sale_checked)
        key = idem_key or (f"sale:{plan.sale_id}:{plan.task_id}" if plan.sale_id else None)
        label_id = "lb_" + secrets.token_urlsafe(12)
        stamp = now_text()
        row = PurchaseRow(
            label_id=label_id, account=account.name, idem_key=key, request_hash=request_hash,
            plan=msgspec.json.encode(plan), status="purchasing", detail=None,
            sale_id=plan.sale_id, task_id=plan.task_id,
            write_back_state="pending" if plan.write_back else "not_requested",
            write_back_attempts=0, write_back_error=None, created_at=stamp, updated_at=stamp,
            voided_at=None,
        )  # fmt: skip
        packages = [(n, p.box, f"{label_id}:{n}") for n, p in enumerate(plan.packages, start=1)]
        try:
            await self._ledger.create_purchase(row, packages)
        except IdempotencyConflict as conflict:
            existing = conflict.existing
            if existing.request_hash != request_hash:
                if idem_key is None:
                    raise AlreadyShipped(
                        f"fulfilment {plan.task_id} of sale {plan.sale_id} is already labelled "
                        f"by {existing.label_id}; void it to label again",
                    ) from None
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request body"
                ) from None
            await self._wait(existing.label_id, services)
            return existing.label_id, False
        await self._wait(label_id, services)
        return label_id, True

    async def _plan(
        self, services: AccountServices, request: LabelsRequest, sale_checked: bool
    ) -> LabelPlan:
        account = services.account
        ship_date = request.ship_date or dt.datetime.now(dt.UTC).date()
        if request.write_back and request.sale_id is None and request.quote_id is None:
            raise InvalidRequest.field("write_back", "only goes with a sale_id (or its quote)")
        if ship_date < dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1):
            raise InvalidRequest.field("ship_date", "must not be in the past")
        deadline = asyncio.get_running_loop().time() + account.request_deadline_s
        if request.quote_id is not None:
            stored = self._quotes.get(request.quote_id)
            if stored is None or stored.account != account.name:
                raise NotFound(f"no quote {request.quote_id}")
            if stored.expires_at <= dt.datetime.now(dt.UTC):
                raise QuoteExpired(f"quote {request.quote_id} expired; rate again")
            shipment, ship_from = stored.shipment, stored.ship_from
            carrier, service = stored.carrier_code, stored.service_code
            codes = [code or "package" for code in stored.package_codes]
            sale_id, task_id = stored.sale_id, stored.task_id
            charge: str | None = stored.total
            if sale_id is not None and not sale_checked:  # it may have moved on since quoted
                await shipment_for_sale(
                    services, sale_id, task_id, deadline=deadline,
                    relabel=await self._relabel_allowed(account.name, sale_id),
                )  # fmt: skip
        else:
            carrier, service = request.carrier_code or "", request.service_code or ""
            sale_id = task_id = None
            charge = None
            if request.sale_id is not None:
                prepared = await shipment_for_sale(
                    services, request.sale_id, request.task_id, deadline=deadline,
                    relabel=await self._relabel_allowed(account.name, request.sale_id),
                )  # fmt: skip
                shipment = prepared.shipment
                sale_id, task_id = prepared.sale.sale_id, prepared.fulfilment.task_id
            else:
                assert request.shipment is not None
                shipment = request.shipment
            ship_from_or_none = shipment.ship_from or account.ship_from
            if ship_from_or_none is None:
                raise InvalidRequest.field(
                    "shipment.ship_from", "is required: the account has no default ship-from"
                )
            ship_from = ship_from_or_none
            codes = [request.package_code or "package"] * len(shipment.packages)
            await self._check_offered(services, carrier, service, codes[0], deadline)
        return LabelPlan(
            carrier_code=carrier, service_code=service, package_codes=codes, ship_from=ship_from,
            ship_to=shipment.ship_to, packages=shipment.packages,
            confirmation=shipment.confirmation, ship_date=ship_date,
            test_label=request.test_label,
            write_back=sale_id is not None and request.write_back is not False,
            sale_id=sale_id, task_id=task_id, quote_id=request.quote_id, charge=charge,
        )  # fmt: skip

    @staticmethod
    async def _check_offered(
        services: AccountServices, carrier: str, service: str, package: str, deadline: float
    ) -> None:
        """Refuse, before buying, what the carrier catalogue says cannot be bought."""
        catalog = await services.catalog.get(deadline=deadline)
        entry = next((c for c in catalog.carriers if c.carrier_code == carrier), None)
        if entry is None:
            connected = ", ".join(c.carrier_code for c in catalog.carriers)
            raise InvalidRequest.field(
                "carrier_code", f"{carrier!r} is not connected to this account ({connected})"
            )
        if entry.services and service not in {s.service_code for s in entry.services}:
            raise InvalidRequest.field("service_code", f"{carrier} offers no service {service!r}")
        if entry.packages and package not in {p.package_code for p in entry.packages}:
            raise InvalidRequest.field("package_code", f"{carrier} has no package type {package!r}")

    async def _wait(self, label_id: str, services: AccountServices) -> None:
        unit = self._unit(label_id, services)
        try:
            async with asyncio.timeout(self._timing.wait_s):
                await asyncio.shield(unit)
        except TimeoutError:
            log.info("label %s still purchasing; answering with its current state", label_id)

    def _unit(self, label_id: str, services: AccountServices) -> asyncio.Task[None]:
        """The one task that buys (or resumes buying) a label in this process."""
        unit = self._units.get(label_id)
        if unit is None or unit.done():
            unit = asyncio.create_task(self._purchase(label_id, services))
            self._units[label_id] = unit
            unit.add_done_callback(lambda done: self._unit_done(label_id, done))
        return unit

    def _unit_done(self, label_id: str, unit: asyncio.Task[None]) -> None:
        self._units.pop(label_id, None)
        if not unit.cancelled() and unit.exception() is not None:
            log.error(
                "purchase of %s stopped unexpectedly; it is resumed at the next start",
                label_id, exc_info=unit.exception(),
            )  # fmt: skip

    async def resume_unfinished(self) -> int:
        """At start-up: finish (reconcile, then buy what is provably missing) every purchase a
        previous process left in ``purchasing``."""
        rows = await self._ledger.unfinished_purchases()
        for row in rows:
            services = self._accounts.get(row.account)
            if services is not None:
                self._unit(row.label_id, services)
        return len(rows)

    async def close(self, grace_s: float = 30.0) -> None:
        units = list(self._units.values())
        if units:
            _, pending = await asyncio.wait(units, timeout=grace_s)
            for unit in pending:
                unit.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _purchase(self, label_id: str, services: AccountServices) -> None:
        row = await self._ledger.purchase(label_id)
        if row is None or row.status != "purchasing":
            return
        plan = msgspec.json.decode(row.plan, type=LabelPlan)
        started = asyncio.get_running_loop().time()
        try:
            for first in await self._ledger.packages(label_id):
                package = first
                while package.state != "bought":
                    package = await self._advance(plan, package, services, started)
        except RatesvcError as exc:
            bought = [p for p in await self._ledger.packages(label_id) if p.state == "bought"]
            if not bought and isinstance(exc, UpstreamFailure) and not exc.maybe_processed:
                await self._ledger.set_status(label_id, "failed", detail=exc.detail)
                await self._ledger.release_key(label_id)
            else:
                await self._ledger.set_status(label_id, "attention", detail=exc.detail)
            return
        if plan.write_back:
            await self._ledger.set_status(label_id, "purchased", write_back_state="pending")
            await self._ledger.enqueue(label_id, "write_back")
            self._on_queued()
        else:
            await self._ledger.set_status(label_id, "completed")

    async def _advance(
        self, plan: LabelPlan, package: PackageRow, services: AccountServices, started: float
    ) -> PackageRow:
        """One step for one package: buy it, or find out what happened to the last attempt."""
        label_id, n = package.label_id, package.n
        if package.state in ("buying", "unknown"):
            found = await self._reconcile(plan, package, services, started)
            if found is not None:
                return found
            refreshed = next(p for p in await self._ledger.packages(label_id) if p.n == n)
            if refreshed.state != "pending":
                return refreshed
        await self._ledger.set_package(label_id, n, state="buying", attempt_at=now_text())
        parcel = plan.packages[n - 1]
        request = LabelRequest(
            carrier_code=plan.carrier_code, service_code=plan.service_code,
            package_code=plan.package_codes[n - 1], ship_date=plan.ship_date,
            ship_from=plan.ship_from, ship_to=plan.ship_to, weight=parcel.weight,
            dimensions=parcel.dimensions,
            confirmation=None if plan.confirmation == "none" else plan.confirmation,
            test_label=plan.test_label, purchase_key=package.purchase_key,
        )  # fmt: skip
        deadline = asyncio.get_running_loop().time() + 60
        attempts = self._attempts[package.purchase_key] = (
            self._attempts.get(package.purchase_key, 0) + 1
        )
        try:
            record = await services.shipstation.create_label(request, deadline=deadline)
        except UpstreamThrottled:
            # ShipStation answered 429 or the limiter said no: nothing was bought, try again
            await self._ledger.set_package(label_id, n, state="pending")
            await asyncio.sleep(1.0)
            return next(p for p in await self._ledger.packages(label_id) if p.n == n)
        except UpstreamFailure as exc:
            server_side = (exc.upstream_status or 0) >= 500
            if (exc.maybe_processed or server_side) and attempts < MAX_ATTEMPTS:
                # A 5xx may come after the carrier sold the label: find out before buying again
                await self._ledger.set_package(label_id, n, state="unknown")
                log.warning("label %s package %d: outcome unknown (%s)", label_id, n, exc.detail)
                return next(p for p in await self._ledger.packages(label_id) if p.n == n)
            if server_side:  # the last of several 5xx: a person should look at ShipStation
                await self._ledger.set_package(label_id, n, state="unknown")
                raise UpstreamFailure(
                    f"package {n}: ShipStation failed {attempts} times ({exc.detail}); check "
                    f"ShipStation for purchase key {package.purchase_key} before buying again",
                    upstream="shipstation",
                    endpoint="createlabel",
                    maybe_processed=True,
                ) from exc
            await self._ledger.set_package(label_id, n, state="pending")
            raise
        pdf_path = None
        if record.label_pdf:
            pdf_path = await asyncio.to_thread(self._save_pdf, label_id, n, record.label_pdf)
        await self._ledger.set_package(
            label_id, n, state="bought", shipment_id=record.shipment_id,
            tracking_number=record.tracking_number, cost=str(record.shipment_cost),
            insurance_cost=str(record.insurance_cost), pdf_path=pdf_path,
        )  # fmt: skip
        return next(p for p in await self._ledger.packages(label_id) if p.n == n)

    async def _reconcile(
        self, plan: LabelPlan, package: PackageRow, services: AccountServices, started: float
    ) -> PackageRow | None:
        """Look for the last attempt at ShipStation. Adopt it if there; if provably absent,
        mark the package ``pending`` (the caller buys it); else wait and look again."""
        attempt = dt.datetime.strptime(package.attempt_at or now_text(), "%Y-%m-%dT%H:%M:%S.%fZ")
        attempt = attempt.replace(tzinfo=dt.UTC)
        loop = asyncio.get_running_loop()
        while True:
            try:
                found, listed_all = await self._find(plan, package, attempt, services)
            except UpstreamFailure as exc:
                log.warning("reconciling %s: %s", package.purchase_key, exc.detail)
                found, listed_all = None, False
            if found is not None:
                await self._ledger.set_package(
                    package.label_id, package.n, state="bought", shipment_id=found.shipment_id,
                    tracking_number=found.tracking_number, cost=str(found.shipment_cost),
                    insurance_cost=str(found.insurance_cost),
                )  # fmt: skip
                await self._ledger.set_status(
                    package.label_id, "purchasing",
                    detail="a label was recovered from ShipStation after an unknown outcome; "
                           "reprint its PDF from ShipStation",
                )  # fmt: skip
                return next(
                    p for p in await self._ledger.packages(package.label_id) if p.n == package.n
                )
            age = (dt.datetime.now(dt.UTC) - attempt).total_seconds()
            if listed_all and age >= self._timing.settle_s:
                await self._ledger.set_package(package.label_id, package.n, state="pending")
                return None
            if loop.time() - started > self._timing.give_up_s:
                raise UpstreamFailure(
                    f"package {package.n}: could not find out whether ShipStation bought it "
                    f"(purchase key {package.purchase_key}); check ShipStation before buying again",
                    upstream="shipstation", endpoint="shipments", maybe_processed=True,
                )  # fmt: skip
            await asyncio.sleep(min(5.0, max(0.05, self._timing.settle_s - age)))

    @staticmethod
    async def _find(
        plan: LabelPlan, package: PackageRow, attempt: dt.datetime, services: AccountServices
    ) -> tuple[ShipmentRecord | None, bool]:
        """(the shipment bought with this purchase key, or None; whether every page was read)."""
        loop = asyncio.get_running_loop()
        for number in range(1, MAX_PAGES + 1):
            query = ShipmentQuery(
                carrier_code=plan.carrier_code,
                service_code=plan.service_code,
                created_from=attempt - dt.timedelta(minutes=10),
                created_to=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10),
                page=number,
                page_size=500,
            )
            page = await services.shipstation.list_shipments(query, deadline=loop.time() + 30)
            found = next(
                (s for s in page.shipments if s.custom_field1 == package.purchase_key), None
            )
            if found is not None or number >= page.pages:
                return found, True
        return None, False

    def _save_pdf(self, label_id: str, n: int, pdf: bytes) -> str:
        folder = self._dir / label_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{n}.pdf"
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as handle:
            handle.write(pdf)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
        return str(path)

    # --- reading -------------------------------------------------------------------------------

    async def view(self, label_id: str, account: str) -> Label:
        row = await self._ledger.purchase(label_id)
        if row is None or row.account != account:
            raise NotFound(f"no label {label_id}")
        return _label(row, await self._ledger.packages(label_id))

    async def pdf(self, label_id: str, account: str, n: int) -> bytes:
        row = await self._ledger.purchase(label_id)
        if row is None or row.account != account:
            raise NotFound(f"no label {label_id}")
        package = next((p for p in await self._ledger.packages(label_id) if p.n == n), None)
        if package is None or package.pdf_path is None:
            raise NotFound(f"label {label_id} has no PDF for package {n}")
        return await asyncio.to_thread(Path(package.pdf_path).read_bytes)

    async def page(
        self, account: str, *, sale_id: str | None, status: str | None, limit: int,
        cursor: str | None,
    ) -> tuple[list[Label], str | None]:  # fmt: skip
        rows = await self._ledger.purchases(
            account, sale_id=sale_id, status=status, after=cursor, limit=limit + 1
        )
        labels = [_label(row, await self._ledger.packages(row.label_id)) for row in rows[:limit]]
        return labels, rows[limit - 1].label_id if len(rows) > limit else None

    # --- voiding -------------------------------------------------------------------------------

    async def void(self, services: AccountServices, label_id: str) -> Label:
        row = await self._ledger.purchase(label_id)
        if row is None or row.account != services.account.name:
            raise NotFound(f"no label {label_id}")
        if row.status == "voided":
            raise AlreadyVoided(f"label {label_id} was voided at {row.voided_at}")
        if row.status == "purchasing":
            raise VoidRejected(f"label {label_id} is still being bought; try again shortly")
        deadline = asyncio.get_running_loop().time() + services.account.request_deadline_s
        for package in await self._ledger.packages(label_id):
            if package.state != "bought" or package.shipment_id is None:
                continue
            result = await services.shipstation.void_label(package.shipment_id, deadline=deadline)
            if not result.approved:
                raise VoidRejected(result.message or "the carrier refused the void")
            await self._ledger.set_package(label_id, package.n, state="voided")
        await self._ledger.set_status(label_id, "voided", voided_at=now_text())
        await self._ledger.release_key(label_id)
        if row.write_back_state == "done":
            await self._ledger.enqueue(label_id, "void_correction")
            self._on_queued()
        return await self.view(label_id, services.account.name)

    async def _relabel_allowed(self, account: str, sale_id: str) -> bool:
        """A sale whose earlier labels were voided may be labelled again although its Ship stays
        authorised (Cin7 Core cannot un-authorise it; the void cleared the tracking)."""
        voided = await self._ledger.purchases(account, sale_id=sale_id, status="voided", limit=1)
        return bool(voided)


def _label(row: PurchaseRow, packages: list[PackageRow]) -> Label:
    plan = msgspec.json.decode(row.plan, type=LabelPlan)
    codes = set(plan.package_codes)
    total = sum((Decimal(p.cost) for p in packages if p.cost), Decimal(0))
    return Label(
        label_id=row.label_id, status=row.status, detail=row.detail, sale_id=row.sale_id,
        task_id=row.task_id, carrier_code=plan.carrier_code, service_code=plan.service_code,
        package_code=codes.pop() if len(codes) == 1 else None, ship_date=plan.ship_date,
        test_label=plan.test_label,
        packages=[
            LabelPackage(
                box=p.box, shipment_id=p.shipment_id, tracking_number=p.tracking_number,
                tracking_url=tracking_url(plan.carrier_code, p.tracking_number),
                cost=money_str(Decimal(p.cost)) if p.cost else None,
                insurance_cost=money_str(Decimal(p.insurance_cost)) if p.insurance_cost else None,
                label_url=f"/v1/labels/{row.label_id}/packages/{p.n}/label.pdf"
                if p.pdf_path else None,
                state=p.state,
            )
            for p in packages
        ],
        total_cost=money_str(total), currency="USD",
        write_back=WriteBack(state=row.write_back_state, attempts=row.write_back_attempts,
                             last_error=row.write_back_error),
        created_at=row.created_at[:19] + "Z",
        voided_at=row.voided_at[:19] + "Z" if row.voided_at else None,
    )  # fmt: skip
