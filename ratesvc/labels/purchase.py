"""The purchase unit: drives one recorded label from ``purchasing`` to bought (or to a person).

One unit runs per label in this process (a tracked task, so a client that disconnects cannot cut
it in half), and one across replicas: a unit drives its label only while it holds the label's
lease (``purchase:<label id>``, :class:`ratesvc.storage.leases.Lease`), renewed in the
background and given back when it stops. A unit that finds the lease taken returns at once
(another replica drives the label); one whose lease is lost midway (renewals failed until
another replica adopted the label) stops before its next call to ShipStation, and every
state it writes is fenced on the lease, so it never overwrites what the adopter found — but
for ShipStation's answer to a ``createlabel`` it sent: that is recorded whatever became of the
lease, guarded by the package's state alone (``unknown`` → ``bought``), since only that answer
carries the label PDF. The adopter starts from the ledger like any resumed unit: an ``unknown``
package is reconciled against ShipStation's shipment list before anything is bought again.

It reads top to bottom: each package is advanced by the function for its state until
it is ``bought``; then the label moves on (:func:`_finish`). A package's state is written *before*
anything is asked of ShipStation:

* ``pending`` → :meth:`PurchaseUnit._buy`: the package becomes ``unknown`` (attempt counted, time
  stamped) *before* ``createlabel`` is called, so a crash at any point leaves an outcome to
  reconcile, never a package believed unbought. A throttled call (the limiter said no, or a 429)
  reached nothing: the package goes back to ``pending`` and the attempt is not counted.
* ``unknown`` → :meth:`PurchaseUnit._settle`: ShipStation's shipments are listed around the attempt
  and matched on the purchase key (``advancedOptions.customField1``). Found: adopted — once the
  call's own answer can no longer come (an adopter waits for it up to ``settle_s`` or the
  call's deadline after the attempt, reading the ledger: the list carries no PDF). Provably
  absent (every page listed, ``settle_s`` after the attempt): ``pending`` again. Otherwise it waits
  and looks again — for as long as it takes; after ``give_up_s`` the label goes to ``attention``
  (a person should look) but the package stays ``unknown`` and the unit keeps looking, so a label
  ShipStation may have sold is never taken for unbought.

After :data:`MAX_ATTEMPTS` calls that provably bought nothing, or a refusal ShipStation will
repeat, the unit stops: ``failed`` when nothing at all was bought (the fulfilment is free again),
``attention`` when some packages were (a person voids or finishes them).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.errors import UpstreamFailure, UpstreamThrottled
from ratesvc.labels.customs import declaration, is_international
from ratesvc.labels.documents import CUSTOMS, LABEL
from ratesvc.labels.lifecycle import LabelStatus, PackageState, package_sources, sources
from ratesvc.labels.models import LabelPlan
from ratesvc.labels.reconcile import find_shipment
from ratesvc.models import LabelRequest, ShipmentRecord
from ratesvc.storage.leases import DEFAULT_TTL_S, Lease
from ratesvc.storage.ledger import (
    IllegalTransition,
    LeaseLost,
    Ledger,
    PackageRow,
    format_stamp,
    now_text,
    parse_stamp,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # createlabel calls for one package that provably bought nothing
CALL_S = 60.0  # a createlabel call's deadline (its turn in the limiter included)
P = PackageState
S = LabelStatus


@dataclass(frozen=True)
class LabelTiming:
    settle_s: float = 60.0  # how long after an attempt a missing shipment counts as absent
    give_up_s: float = 3600.0  # an unknown outcome unresolved this long asks for a person
    wait_s: float = 30.0  # how long a request waits for its purchase before answering as is
    throttle_pause_s: float = 1.0  # first pause after a throttled createlabel (doubles, ≤ 30 s)
    # a unit's lease on its label: renewed every third of it; a dead replica's purchase is
    # adopted by another this long after its last renewal
    lease_ttl_s: float = DEFAULT_TTL_S


class Stop(Exception):
    """The unit stops buying this label; ``detail`` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


PURCHASE_LEASE = "purchase:"  # + label id: held by the unit buying the label
RECONCILING_LEASE = "reconciling:"  # + label id: held while that unit reconciles an outcome


class PurchaseUnit:
    """Buys (or resumes buying) one label, under the label's purchase lease. While it looks for
    an ``unknown`` package's outcome at ShipStation it also holds the label's reconciling
    lease, so a request on any replica answers ``reconciling`` then, and ``already_labelled``
    while the unit is merely buying (see :meth:`.service.Labels._unknown_outcome`)."""

    def __init__(
        self,
        ledger: Ledger,
        services: AccountServices,
        label_id: str,
        *,
        timing: LabelTiming,
        on_queued: Callable[[], None],
    ) -> None:
        self._ledger = ledger
        self._services = services
        self._label_id = label_id
        self._timing = timing
        self._on_queued = on_queued
        self._started = 0.0
        self._asked_for_a_person = False
        self._lease = Lease(ledger, f"{PURCHASE_LEASE}{label_id}", ttl_s=timing.lease_ttl_s)
        self._reconciling = Lease(
            ledger, f"{RECONCILING_LEASE}{label_id}", ttl_s=timing.lease_ttl_s
        )
        self.calling = False  # a createlabel call is out: its answer is worth waiting for
        self._no_answer: set[int] = set()  # packages whose createlabel here ended unanswered

    async def run(self) -> bool:
        """Drive the label while holding its lease: True when this unit drove it as far as it
        goes; False when another owner holds the lease (or took it over midway)."""
        try:
            if not await self._lease.acquire():
                return False
            await self._drive()
        except LeaseLost as lost:
            log.warning("purchase of %s stops here: %s (its new holder carries on)",
                        self._label_id, lost)  # fmt: skip
            return False
        finally:
            await self._lease.release()
        return True

    async def _drive(self) -> None:
        row = await self._ledger.purchase(self._label_id)
        if row is None or row.status not in (S.PURCHASING, S.ATTENTION):
            return
        packages = await self._ledger.packages(self._label_id)
        if row.status == S.ATTENTION and not any(p.state == P.UNKNOWN for p in packages):
            return  # only an unknown outcome is still this unit's business
        try:
            plan = msgspec.json.decode(row.plan, type=LabelPlan)
        except msgspec.DecodeError as exc:  # recorded by an older version that did not check
            await self._ask_for_a_person(
                f"the recorded plan cannot be read ({exc}); check ShipStation for purchase keys "
                f"{self._label_id}:1, :2, … before buying again"
            )
            return
        self._asked_for_a_person = row.status == S.ATTENTION
        self._started = asyncio.get_running_loop().time()
        try:
            for recorded in packages:
                package = recorded
                while package.state != P.BOUGHT:
                    package = await self._advance(plan, package)
        except Stop as stop:
            await self._stop(stop.detail)
            return
        await self._finish(plan)

    async def _advance(self, plan: LabelPlan, package: PackageRow) -> PackageRow:
        if package.state == P.PENDING:
            return await self._buy(plan, package)
        if package.state == P.UNKNOWN:
            return await self._settle(plan, package)
        raise Stop(f"package {package.n} is {package.state}")

    # --- pending: buy it -----------------------------------------------------------------------

    async def _buy(self, plan: LabelPlan, package: PackageRow) -> PackageRow:
        if self._asked_for_a_person:
            raise Stop(f"package {package.n} was not bought")
        if package.attempts >= MAX_ATTEMPTS:
            raise Stop(
                f"package {package.n}: ShipStation failed {package.attempts} times and bought "
                "nothing (checked in its shipment list)"
            )
        n = package.n
        self._lease.check()  # and the move to unknown is fenced on it too
        # Calling from before the package reads unknown: a concurrent request that sees it so
        # must find it being bought (already_labelled), not reconciling.
        self.calling = True
        try:
            attempt_at = format_stamp(await self._ledger.clock())  # the database's clock
            package = await self._move(package, P.UNKNOWN, attempt_at=attempt_at,
                                       attempts=package.attempts + 1)  # fmt: skip
        except BaseException:
            self.calling = False
            raise
        parcel = plan.packages[n - 1]
        request = LabelRequest(
            carrier_code=plan.carrier_code, service_code=plan.service_code,
            package_code=plan.package_codes[n - 1], ship_date=plan.ship_date,
            ship_from=plan.ship_from, ship_to=plan.ship_to, weight=parcel.weight,
            dimensions=parcel.dimensions,
            confirmation=None if plan.confirmation == "none" else plan.confirmation,
            test_label=plan.test_label, purchase_key=package.purchase_key,
            customs=declaration(plan.ship_from, plan.ship_to, plan.customs, parcel),
        )  # fmt: skip
        deadline = asyncio.get_running_loop().time() + CALL_S
        try:
            # the lease is checked again when the limiter grants the call, right before it is
            # sent: a turn waited for can outlast the lease, and an adopter reconciling then
            # would find nothing and buy (the unit stops unsent; the adopter settles it)
            record = await self._services.shipstation.create_label(
                request, deadline=deadline, before_send=functools.partial(self._sending, n)
            )
        except LeaseLost:
            self.calling = False
            raise
        except UpstreamThrottled as exc:
            self.calling = False
            # The limiter said no, or ShipStation answered 429: nothing was bought, and the
            # attempt does not count.
            pause = min(30.0, self._timing.throttle_pause_s * 2 ** min(package.attempts, 5))
            await asyncio.sleep(max(pause, exc.reset_after_s or 0.0))
            return await self._move(package, P.PENDING, attempts=package.attempts - 1)
        except UpstreamFailure as exc:
            self.calling = False
            if exc.maybe_processed or (exc.upstream_status or 0) >= 500:
                # A 5xx may come after the carrier sold the label: find out before buying again
                log.warning("label %s package %d: outcome unknown (%s)", self._label_id, n,
                            exc.detail)  # fmt: skip
                self._no_answer.add(n)  # its settle need not wait for an answer
                return package
            await self._move(package, P.FAILED)
            raise Stop(f"package {n}: {exc.detail}") from exc
        try:
            return await self._answered(package, record)
        finally:
            self.calling = False

    async def _answered(self, package: PackageRow, record: ShipmentRecord) -> PackageRow:
        """ShipStation answered ``createlabel``: the label is bought and its PDF (and customs
        form) are in hand. Recorded *without* the lease fence — guarded by the package's state
        alone (``unknown`` → ``bought``, so of two writers only one records it): a unit that
        lost its lease while the call was out (its renewals failing, another replica adopting)
        still keeps what only this answer carries — the shipment list an adopter reconciles
        from has no label data, and the PDF would be lost ("reprint it from ShipStation").
        The adopter waits for this answer while it may still come (:meth:`_settle`). If the
        adopter recorded the package first, this answer is dropped and the package read again;
        either way a unit that lost its lease stops at its next fenced step."""
        try:
            return await self._bought(
                package, record, pdf=record.label_pdf, form=record.customs_form_pdf, fenced=False
            )
        except IllegalTransition as exc:
            log.warning("label %s package %d: bought, but recorded meanwhile (%s)",
                        self._label_id, package.n, exc.current)  # fmt: skip
            return await self._reread(package)

    async def _reread(self, package: PackageRow) -> PackageRow:
        for current in await self._ledger.packages(self._label_id):
            if current.n == package.n:
                return current
        raise Stop(f"package {package.n} is no longer recorded")

    async def _sending(self, n: int) -> None:
        """Right before ``createlabel`` leaves (the limiter granted it): the lease is still ours
        in the ledger, and the attempt's time is now — an adopter's settle window counts from
        the send, not from before a turn waited for in the limiter (both fenced on the lease:
        a lost one stops the call unsent)."""
        await self._lease.confirm()
        stamp = format_stamp(await self._ledger.clock())
        await self._ledger.move_package(
            self._label_id, n, P.UNKNOWN, (P.UNKNOWN,), lease=self._lease.name, attempt_at=stamp
        )

    # --- unknown: find out ---------------------------------------------------------------------

    async def _settle(self, plan: LabelPlan, package: PackageRow) -> PackageRow:
        """Look for the last attempt at ShipStation until it is found or provably absent, under
        the label's reconciling lease (for the other replicas to see)."""
        try:
            await self._reconciling.acquire()  # taken by another owner: it says so already
        except Exception as exc:  # the ledger away: the settling itself will find out
            log.warning("%s not taken (%r)", self._reconciling.name, exc)
        try:
            return await self._find_outcome(plan, package)
        finally:
            await self._reconciling.release()

    async def _find_outcome(self, plan: LabelPlan, package: PackageRow) -> PackageRow:
        loop = asyncio.get_running_loop()
        while True:
            self._lease.check()
            package = await self._reread(package)
            if package.state != P.UNKNOWN:  # the sender's answer was recorded meanwhile
                return package
            attempt = parse_stamp(package.attempt_at or now_text())
            try:
                found, listed_all = await find_shipment(
                    self._services, plan, package.purchase_key, attempt
                )
            except UpstreamFailure as exc:
                log.warning("reconciling %s: %s", package.purchase_key, exc.detail)
                found, listed_all = None, False
            # on the database's clock, like attempt_at: replicas' own clocks may disagree
            age = (await self._ledger.clock() - attempt).total_seconds()
            if found is not None:
                return await self._found(plan, package, found, age)
            if listed_all and age >= self._timing.settle_s:
                return await self._move(package, P.PENDING)
            waited = loop.time() - self._started
            if waited > self._timing.give_up_s and not self._asked_for_a_person:
                await self._ask_for_a_person(
                    f"package {package.n}: could not find out whether ShipStation bought it "
                    f"(purchase key {package.purchase_key}); still checking — nothing more is "
                    "bought or voided until it is settled"
                )
            pause = 5.0 if waited <= self._timing.give_up_s else 60.0
            await asyncio.sleep(min(pause, max(0.05, self._timing.settle_s - age)))

    async def _found(
        self, plan: LabelPlan, package: PackageRow, found: ShipmentRecord, age: float
    ) -> PackageRow:
        """The attempt's shipment is in ShipStation's list, which carries no label data. A unit
        that did not see that call end — it adopted the label, or resumed it — first waits
        while the sender may still get ShipStation's answer, with the label PDF, and record it
        (:meth:`_answered`): until :data:`CALL_S` (the call's deadline) or ``settle_s`` after
        the attempt, whichever is first, reading the package again every second (the ledger
        only: ShipStation is not asked again). Then it records the shipment from the list."""
        loop = asyncio.get_running_loop()
        until = loop.time() + min(CALL_S, self._timing.settle_s) - age
        while package.n not in self._no_answer and loop.time() < until:
            await asyncio.sleep(min(1.0, max(0.05, until - loop.time())))
            self._lease.check()
            package = await self._reread(package)
            if package.state != P.UNKNOWN:  # the sender recorded its answer
                return package
        try:
            bought = await self._bought(package, found, pdf=None)
        except IllegalTransition:  # the sender's answer was recorded first: take it
            return await self._reread(package)
        reprint = "its PDF"
        if is_international(plan.ship_from, plan.ship_to):
            reprint = "its PDF and its customs form (international: the parcel needs it)"
        await self._ledger.set_detail(
            self._label_id,
            f"package {package.n}: a label was recovered from ShipStation after an "
            f"unknown outcome; reprint {reprint} from ShipStation",
            lease=self._lease.name,
        )
        return bought

    # --- the label as a whole ------------------------------------------------------------------

    async def _finish(self, plan: LabelPlan) -> None:
        if plan.write_back:
            await self._transition(S.PURCHASED, write_back_state="pending", enqueue="write_back")
            self._on_queued()
        else:
            await self._transition(S.COMPLETED)

    async def _stop(self, detail: str) -> None:
        packages = await self._ledger.packages(self._label_id)
        if any(p.state == P.UNKNOWN for p in packages):
            await self._ask_for_a_person(detail)
        elif not any(p.state == P.BOUGHT for p in packages):
            await self._transition(S.FAILED, detail=detail, release=True)
        else:
            bought = ", ".join(str(p.n) for p in packages if p.state == P.BOUGHT)
            await self._transition(
                S.ATTENTION,
                detail=f"{detail}; package(s) {bought} were bought: void the label, or buy the "
                "rest by hand",
            )

    async def _ask_for_a_person(self, detail: str) -> None:
        self._asked_for_a_person = True
        await self._transition(S.ATTENTION, detail=detail)

    async def _transition(
        self,
        to: LabelStatus,
        *,
        detail: str | None = None,
        enqueue: str | None = None,
        release: bool = False,
        write_back_state: str | None = None,
    ) -> None:
        fields: dict[str, object] = {}
        if detail is not None:
            fields["detail"] = detail
        if write_back_state is not None:
            fields["write_back_state"] = write_back_state
        try:
            await self._ledger.transition(
                self._label_id, to, sources(to), fields=fields, enqueue=enqueue, release=release,
                lease=self._lease.name,
            )  # fmt: skip
        except IllegalTransition as exc:
            log.error("refused: %s", exc)

    # --- packages ------------------------------------------------------------------------------

    async def _move(
        self,
        package: PackageRow,
        to: PackageState,
        *,
        documents: dict[str, bytes] | None = None,
        **fields: object,
    ) -> PackageRow:
        return await self._ledger.move_package(
            self._label_id, package.n, to, package_sources(to), documents=documents,
            lease=self._lease.name, **fields,
        )  # fmt: skip

    async def _bought(
        self,
        package: PackageRow,
        record: ShipmentRecord,
        *,
        pdf: bytes | None,
        form: bytes | None = None,
        fenced: bool = True,
    ) -> PackageRow:
        """Record the package bought, with its label PDF and customs form (when ShipStation
        returned them) kept in the ledger in the same transaction; ``fenced``: only while the
        lease is ours (else the package's state alone guards the move)."""
        documents = {kind: content for kind, content in ((LABEL, pdf), (CUSTOMS, form)) if content}
        return await self._ledger.move_package(
            self._label_id, package.n, P.BOUGHT, package_sources(P.BOUGHT), documents=documents,
            lease=self._lease.name if fenced else None, shipment_id=record.shipment_id,
            tracking_number=record.tracking_number, cost=str(record.shipment_cost),
            insurance_cost=str(record.insurance_cost),
        )  # fmt: skip
