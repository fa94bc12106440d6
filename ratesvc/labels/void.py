"""Voiding one package at ShipStation, and finding out when the answer does not say.

A void whose answer was lost (a time-out, a 5xx, an unreadable body) may have happened; a void
ShipStation refuses may be of a label voided earlier (by a void whose answer was lost). Either
way ShipStation's own shipment record says: voided there is voided here.
"""

from __future__ import annotations

import datetime as dt

from ratesvc.accounts import AccountServices
from ratesvc.errors import UpstreamFailure, UpstreamUnavailable
from ratesvc.labels.models import LabelPlan
from ratesvc.labels.reconcile import find_shipment
from ratesvc.ledger import PackageRow

_STAMP = "%Y-%m-%dT%H:%M:%S.%fZ"


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
        attempt = dt.datetime.strptime(package.attempt_at, _STAMP).replace(tzinfo=dt.UTC)
        try:
            found, _ = await find_shipment(services, plan, package.purchase_key, attempt)
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
