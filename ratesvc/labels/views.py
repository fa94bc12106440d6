"""Ledger rows → the public :class:`Label`. A row that cannot be read never breaks a list: it is
shown with what the row itself holds and a ``detail`` saying the plan could not be read."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal, InvalidOperation

import msgspec

from ratesvc.labels.models import Label, LabelPackage, LabelPlan, WriteBack
from ratesvc.storage.ledger import PackageRow, PurchaseRow
from ratesvc.tracking import tracking_url
from ratesvc.units import money_str

log = logging.getLogger(__name__)

_PLAN = msgspec.json.Decoder(LabelPlan)


def plan_of(row: PurchaseRow) -> LabelPlan | None:
    """The recorded plan, or None (logged) when it cannot be read back."""
    try:
        return _PLAN.decode(row.plan)
    except msgspec.DecodeError as exc:
        log.error("label %s: its recorded plan cannot be read (%s)", row.label_id, exc)
        return None


def label_view(row: PurchaseRow, packages: list[PackageRow]) -> Label:
    plan = plan_of(row)
    carrier = plan.carrier_code if plan else ""
    codes = set(plan.package_codes) if plan else set()
    total = sum((_money(p.cost) for p in packages), Decimal(0))
    detail = row.detail
    if plan is None:
        detail = f"the recorded plan of this label cannot be read; {detail or 'a person must look'}"
    return Label(
        label_id=row.label_id, status=row.status, detail=detail, sale_id=row.sale_id,
        task_id=row.task_id, order_number=row.order_number, carrier_code=carrier,
        service_code=plan.service_code if plan else "",
        package_code=codes.pop() if len(codes) == 1 else None,
        ship_date=plan.ship_date if plan else dt.date.fromisoformat(row.created_at[:10]),
        test_label=plan.test_label if plan else False,
        packages=[
            LabelPackage(
                box=p.box, shipment_id=p.shipment_id, tracking_number=p.tracking_number,
                tracking_url=tracking_url(carrier, p.tracking_number),
                cost=money_str(_money(p.cost)) if p.cost else None,
                insurance_cost=money_str(_money(p.insurance_cost)) if p.insurance_cost else None,
                label_url=f"/v1/labels/{row.label_id}/packages/{p.n}/label.pdf"
                if p.has_pdf else None,
                state=p.state,
                customs_form_url=f"/v1/labels/{row.label_id}/packages/{p.n}/customs.pdf"
                if p.has_customs_pdf else None,
            )
            for p in packages
        ],
        total_cost=money_str(total), currency="USD",
        write_back=WriteBack(state=row.write_back_state, attempts=row.write_back_attempts,
                             last_error=row.write_back_error),
        created_at=row.created_at[:19] + "Z",
        voided_at=row.voided_at[:19] + "Z" if row.voided_at else None,
    )  # fmt: skip


def _money(text: str | None) -> Decimal:
    try:
        return Decimal(text) if text else Decimal(0)
    except InvalidOperation:
        return Decimal(0)
