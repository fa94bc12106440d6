"""Finding out what happened to a ``createlabel`` call whose answer never came.

ShipStation does not look labels up by our key, but it lists shipments by carrier, service and
creation time, and each carries the purchase key ratesvc sent in ``advancedOptions.customField1``.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from ratesvc.accounts import AccountServices
from ratesvc.labels.models import LabelPlan
from ratesvc.models import ShipmentQuery, ShipmentRecord

MAX_PAGES = 20  # shipment list pages (of 500) read when reconciling one package
WINDOW = dt.timedelta(minutes=10)  # before the attempt: clocks differ, ShipStation stamps late


async def find_shipment(
    services: AccountServices,
    plan: LabelPlan,
    purchase_key: str,
    attempt: dt.datetime,
    *,
    deadline: float | None = None,
) -> tuple[ShipmentRecord | None, bool]:
    """(the shipment bought with ``purchase_key``, or None; whether every page was read).
    ``deadline`` (the loop's clock) bounds the whole look-up — a void's, so that the sweep of
    expired void leases can count on the void's calls being over; else each page gets 30 s.

    The list starts :data:`WINDOW` before ``attempt`` (on the database's clock) and has no end:
    an end taken from this replica's clock would, on a replica whose clock is behind, end
    before the attempt — the shipment missing from a list read to its last page, the package
    taken for unbought and bought again."""
    loop = asyncio.get_running_loop()
    for number in range(1, MAX_PAGES + 1):
        query = ShipmentQuery(
            carrier_code=plan.carrier_code,
            service_code=plan.service_code,
            created_from=attempt - WINDOW,
            page=number,
            page_size=500,
        )
        page_deadline = loop.time() + 30 if deadline is None else deadline
        page = await services.shipstation.list_shipments(query, deadline=page_deadline)
        found = next((s for s in page.shipments if s.custom_field1 == purchase_key), None)
        if found is not None or number >= page.pages:
            return found, True
    return None, False
