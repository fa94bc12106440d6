"""Voiding a label at ShipStation, and finding out when the answer does not say.

A void whose answer was lost (a time-out, a 5xx, an unreadable body) may have happened; a void
ShipStation refuses may be of a label voided earlier (by a void whose answer was lost). Either
way ShipStation's own shipment record says: voided there is voided here.

One void runs per label across replicas: it holds the label's void lease
(:data:`VOID_LEASE` + label id, taken by :class:`~ratesvc.labels.service.Labels`) while it
calls ShipStation and records what it did. It confirms the lease in the ledger before each
box's void call and fences what it records on it: a void whose lease lapsed (renewals failed
while it worked) stops — the client is asked to try again — and leaves the label to whoever
took the lease (the sweep of expired void leases, or the retry), never settling it twice. A
box or a label it finds already ``voided`` is progress, not an error. The lease also tells a
void cut off by a crash (its lease expired with nobody renewing it) from one running on
another replica right now (:func:`settle_interrupted_voids` leaves those alone).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager

from ratesvc.accounts import AccountServices
from ratesvc.errors import (
    AlreadyVoided,
    NotFound,
    Reconciling,
    UpstreamFailure,
    UpstreamUnavailable,
    VoidRejected,
)
from ratesvc.labels.lifecycle import SETTLED, VOIDABLE, LabelStatus, PackageState
from ratesvc.labels.models import LabelPlan
from ratesvc.labels.reconcile import find_shipment
from ratesvc.labels.views import plan_of
from ratesvc.storage.leases import Lease
from ratesvc.storage.ledger import (
    IllegalTransition,
    Ledger,
    PackageRow,
    parse_stamp,
)

log = logging.getLogger(__name__)
S = LabelStatus
VOID_LEASE = "void:"  # + label id: held by the one void (or settling of a void) of a label

# A label's void claim: the process's one-void-per-label lock and the label's void lease, taken
# for the ``async with`` block if it can be (the value says whether it was).
VoidClaim = Callable[[str], AbstractAsyncContextManager[Lease | None]]


async def void_label(
    ledger: Ledger,
    services: AccountServices,
    label_id: str,
    on_queued: Callable[[], None],
    lease: Lease | None = None,
) -> None:
    """Void every bought package at ShipStation, then, in one transaction: the label
    ``voided``, its fulfilment released, a write-back that never started cancelled and one that
    did corrected (see :meth:`Ledger.void`). Boxes the carrier refuses send the label to
    ``attention``. Under ``lease`` (the label's void lease): confirmed before each box's void
    call, and what is recorded is fenced on it: raises :class:`LeaseLost` when it lapsed (the
    label is left as it stands, to the lease's next holder)."""
    row = await ledger.purchase(label_id)
    if row is None or row.account != services.account.name:
        raise NotFound(f"no label {label_id}")
    if row.status == S.VOIDED:
        raise AlreadyVoided(f"label {label_id} was voided at {row.voided_at}")
    packages = await ledger.packages(label_id)
    if any(p.state == PackageState.UNKNOWN for p in packages):
        raise Reconciling(
            f"label {label_id}: whether ShipStation bought some of its packages is still "
            "being checked; void it once that is settled",
            label_id=label_id,
        )
    if row.status == S.PURCHASING:
        raise VoidRejected(f"label {label_id} is still being bought; try again shortly")
    if row.status in SETTLED:
        raise VoidRejected(f"label {label_id} bought nothing ({row.status}): nothing to void")
    plan = plan_of(row)
    deadline = asyncio.get_running_loop().time() + services.account.request_deadline_s
    refused: list[str] = []
    failure: UpstreamFailure | None = None
    for package in packages:
        if package.state != PackageState.BOUGHT or package.shipment_id is None:
            continue
        if lease is not None:
            await lease.confirm()
        try:
            refusal = await void_package(services, plan, package, deadline)
        except UpstreamFailure as exc:  # ShipStation down: what was voided is still recorded
            failure = exc
            refused.append(f"box {package.n}: {exc.detail}")
            break
        if refusal is not None:
            refused.append(f"box {package.n}: {refusal}")
            continue
        try:
            await ledger.move_package(
                label_id, package.n, PackageState.VOIDED, {PackageState.BOUGHT},
                lease=None if lease is None else lease.name,
            )  # fmt: skip
        except IllegalTransition as exc:
            if exc.current != PackageState.VOIDED:
                raise
            # another void (one whose lease ran out while it worked) recorded it first
            log.info("box %d of %s was already recorded voided", package.n, label_id)
    voided_now = [p.n for p in await ledger.packages(label_id) if p.state == PackageState.VOIDED]
    if refused and not voided_now:
        if failure is not None:
            raise failure
        raise VoidRejected("; ".join(refused), label_id=label_id)
    partly = None
    if refused:
        partly = (
            f"voided box(es) {', '.join(map(str, voided_now))}, but not {'; '.join(refused)}: "
            "void again, or settle the rest at the carrier"
        )
    await finish_void(ledger, label_id, on_queued, partly=partly, lease=lease)
    if failure is not None:
        raise failure
    if partly is not None:
        raise VoidRejected(partly, label_id=label_id)


async def finish_void(
    ledger: Ledger,
    label_id: str,
    on_queued: Callable[[], None],
    *,
    partly: str | None = None,
    lease: Lease | None = None,
) -> None:
    """Record the void (whole, or ``partly``: to ``attention``) with its correction, fenced on
    ``lease`` when given. A label another void recorded ``voided`` meanwhile is left as it is:
    the void happened."""
    try:
        _, corrected = await ledger.void(
            label_id, VOIDABLE, partly=partly, lease=None if lease is None else lease.name
        )
    except IllegalTransition as exc:
        if exc.current == S.VOIDED:
            log.info("label %s was already recorded voided (by another void)", label_id)
            return
        log.error("refused: %s", exc)
        raise VoidRejected(
            f"label {label_id} changed while it was being voided ({exc.current}); try again"
        ) from None
    if corrected:
        on_queued()


async def settle_interrupted_voids(
    ledger: Ledger,
    on_queued: Callable[[], None],
    claim: VoidClaim,
    label_ids: Iterable[str] | None = None,
) -> int:
    """A live label with voided boxes was cut off mid-void (a crash between two boxes): it goes
    to ``attention`` — or, when every box is voided, ``voided`` — and its voided boxes' tracking
    is corrected. Every such label (at start-up), or those of ``label_ids`` that are (a sweep
    of void leases found expired). How many were settled.

    Each is settled under its void ``claim``, and looked at again once the claim is taken: a
    label whose void lease a live owner holds is being voided right now (on another replica,
    or in this process) and is skipped — its void is running, not cut off; once its runner is
    gone its lease expires and the sweep settles it."""
    if label_ids is None:
        label_ids = [label_id for label_id, _ in await ledger.half_voided()]
    settled = 0
    for label_id in label_ids:
        try:
            async with claim(label_id) as lease:
                if lease is None:
                    continue
                found = await ledger.half_voided(label_id)
                if not found:  # finished (or never begun) after all: nothing to settle
                    continue
                every_box = found[0][1]
                partly = (
                    None if every_box else "a void was interrupted after some boxes: void again"
                )
                await finish_void(ledger, label_id, on_queued, partly=partly, lease=lease)
                settled += 1
        except Exception:  # the next one may still be settled; this one at the next look
            log.exception("settling the interrupted void of %s failed", label_id)
    return settled


async def void_package(
    services: AccountServices, plan: LabelPlan | None, package: PackageRow, deadline: float
) -> str | None:
    """Void one bought package: None when it is voided at ShipStation, else the carrier's
    refusal. Raises :class:`UpstreamFailure` when ShipStation neither voided it nor said no."""
    assert package.shipment_id is not None
    lost: UpstreamFailure | None = None
    try:
        result = await services.shipstation.void_label(package.shipment_id, deadline=deadline)
    except UpstreamFailure as exc:
        if not (exc.maybe_processed or (exc.upstream_status or 0) >= 500):
            raise
        lost = exc
    else:
        if result.approved:
            return None
    if plan is not None and package.attempt_at is not None:
        attempt = parse_stamp(package.attempt_at)
        try:
            found, _ = await find_shipment(
                services, plan, package.purchase_key, attempt, deadline=deadline
            )
        except UpstreamFailure:
            found = None
        if found is not None and found.voided:
            return None
    if lost is not None:
        raise UpstreamUnavailable(
            f"ShipStation did not confirm the void of box {package.n} ({lost.detail}); void "
            "again: a void that went through is recognised",
            upstream="shipstation",
            endpoint="voidlabel",
        ) from lost
    return result.message or "the carrier refused the void"
