"""The public Structs of ``/v1/labels`` and the purchase plan the ledger keeps."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec

from ratesvc.models import (
    Address,
    Code,
    Confirmation,
    CustomsIn,
    Inbound,
    PackageIn,
    SaleRef,
    ShipmentIn,
    require_text,
)


class LabelsRequest(Inbound, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Either ``quote_id`` alone, or ``carrier_code`` + ``service_code`` with a ``sale_id`` or a
    ``shipment``; ``ship_date``, ``test_label`` and ``write_back`` go with either."""

    quote_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    carrier_code: Code | None = None
    service_code: Code | None = None
    package_code: Code | None = None
    sale_id: SaleRef | None = None
    task_id: SaleRef | None = None
    shipment: ShipmentIn | None = None
    ship_date: dt.date | None = None
    test_label: bool = False
    write_back: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require_text(self, "quote_id", "sale_id", "task_id")
        explicit = (self.carrier_code, self.service_code, self.package_code, self.sale_id,
                    self.task_id, self.shipment)  # fmt: skip
        if self.quote_id is not None:
            if any(value is not None for value in explicit):
                raise ValueError("quote_id: goes alone (with ship_date, test_label, write_back)")
            return
        if self.carrier_code is None or self.service_code is None:
            raise ValueError("carrier_code: give quote_id, or carrier_code and service_code")
        if (self.sale_id is None) == (self.shipment is None):
            raise ValueError("shipment: give exactly one of sale_id or shipment")
        if self.task_id is not None and self.sale_id is None:
            raise ValueError("task_id: only goes with sale_id")


class LabelPlan(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Exactly what will be bought; kept in the ledger with the purchase.

    Customs (international only, see :mod:`ratesvc.labels.customs`): ``customs`` is the header,
    each package's ``customs_items`` what its label declares — from the request's shipment or
    built from a sale, however they were obtained.
    """

    carrier_code: str
    service_code: str
    package_codes: list[str]
    ship_from: Address
    ship_to: Address
    packages: list[PackageIn]
    confirmation: Confirmation
    ship_date: dt.date
    test_label: bool
    write_back: bool
    sale_id: str | None = None
    task_id: str | None = None
    quote_id: str | None = None
    order_number: str | None = None  # the sale's (Cin7 Core's SaleOrderNumber), when known
    charge: str | None = None  # what the customer was quoted (markup included), when quoted
    customs: CustomsIn | None = None


class LabelPackage(msgspec.Struct, frozen=True, kw_only=True):
    box: str | None
    shipment_id: int | None
    tracking_number: str | None
    tracking_url: str | None
    cost: str | None
    insurance_cost: str | None
    label_url: str | None
    state: str
    customs_form_url: str | None = None


class WriteBack(msgspec.Struct, frozen=True, kw_only=True):
    state: str
    attempts: int
    last_error: str | None


class Label(msgspec.Struct, frozen=True, kw_only=True):
    label_id: str
    status: str
    detail: str | None
    sale_id: str | None
    task_id: str | None
    order_number: str | None
    carrier_code: str
    service_code: str
    package_code: str | None
    ship_date: dt.date
    test_label: bool
    packages: list[LabelPackage]
    total_cost: str
    currency: str
    write_back: WriteBack
    created_at: str
    voided_at: str | None


class LabelList(msgspec.Struct, frozen=True, kw_only=True):
    labels: list[Label]
    next_cursor: str | None
