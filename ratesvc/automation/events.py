"""Cin7 Core webhook payloads, read leniently, and the life of an automation event.

Payloads are thin and their keys differ per event type (``SaleID`` + ``TaskID`` on
``Sale/PackAuthorised``, only ``SaleTaskID`` + ``OrderNumber`` on ``Sale/ShipmentAuthorised``), so
keys are matched case-insensitively under every known spelling. A payload that is not a JSON
object, names no event type, or names neither a sale nor a task is refused (400) and nothing is
recorded.

An event's ``status``:

* ``received`` — recorded, waiting for the worker; with a ``label_id``: waiting for that label,
  still being bought, to be bought (``next_attempt_at`` says when it is looked at again);
* ``failed`` — the last attempt failed for a reason that may pass (Cin7 Core or ShipStation down,
  throttled); retried after a back-off, ``reason`` says why;
* ``processed`` — done: a label was bought (``label_id``; never while that label is still
  being bought), or the sale turned out to be labelled or shipped already;
* ``ignored`` — nothing to do (another event type, automation off, the sale is not packed, the
  label it waited for was voided by a person);
* ``attention`` — a person must act; ``reason`` says what (cost cap, missing weights, retries
  exhausted, ...). Not forever: a new delivery of the event, a change of the sale seen by the
  poller, or ``POST /v1/automation/events/{event_id}/retry`` examines the sale again.

Put back in the queue (a retry, a new delivery), an event is ``received`` again, due now, with
``attempts`` 0, no ``label_id``, and a ``reason`` that keeps what it was ("retry requested;
before: ...") until the worker writes the outcome. Only ``attention`` and ``failed`` can be
retried: anything else is 409 ``event_not_retryable``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec
import orjson

from ratesvc.errors import MalformedJson, RequestError
from ratesvc.storage.ledger import EventRow

PACK_AUTHORISED = "Sale/PackAuthorised"
SALE_VOIDED = "Sale/Voided"
EVENT_STATUSES = ("received", "failed", "processed", "ignored", "attention")

_EVENT_TYPE = re.compile(r"^[A-Za-z]+/[A-Za-z]+$")
_KEYS = {
    "event_type": ("eventtype", "type", "event"),
    "sale_id": ("saleid", "sale_id"),
    "task_id": ("taskid", "saletaskid", "task_id"),
    "order_number": ("saleordernumber", "ordernumber", "order_number"),
}
MAX_ID = 100


@dataclass(frozen=True)
class Cin7Event:
    event_type: str
    sale_id: str | None
    task_id: str | None
    order_number: str | None

    @property
    def dedup_key(self) -> str:
        """Same event type, sale and task: the same event, however often it is delivered."""
        return "|".join(
            (self.event_type.lower(), (self.sale_id or "").lower(), (self.task_id or "").lower())
        )


def parse_event(raw: bytes) -> Cin7Event:
    """The event a delivery announces, or 400 ``malformed_json`` saying what is wrong."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedJson("a Cin7 Core webhook payload must be a JSON object")
    lowered = {str(key).lower(): value for key, value in data.items()}
    found: dict[str, str | None] = {}
    for name, spellings in _KEYS.items():
        value = next((lowered[k] for k in spellings if lowered.get(k) not in (None, "")), None)
        if value is not None and not isinstance(value, str):
            raise MalformedJson(f"{spellings[0]}: must be a string, got {type(value).__name__}")
        if value is not None and len(value.strip()) > MAX_ID:
            raise MalformedJson(f"{spellings[0]}: longer than {MAX_ID} characters")
        found[name] = (value.strip() or None) if value is not None else None
    event_type = found["event_type"]
    if event_type is None:
        raise MalformedJson("not a Cin7 Core webhook payload: it has no EventType")
    if not _EVENT_TYPE.match(event_type):
        raise MalformedJson(f"EventType {event_type!r} is not a Cin7 Core event type")
    if found["sale_id"] is None and found["task_id"] is None:
        raise MalformedJson(f"{event_type} payload names no sale: SaleID or TaskID is required")
    return Cin7Event(
        event_type=event_type,
        sale_id=found["sale_id"],
        task_id=found["task_id"],
        order_number=found["order_number"],
    )


class EventNotRetryable(RequestError):
    """409: only an event in ``attention`` or ``failed`` can be put back in the queue."""

    code = "event_not_retryable"
    status = 409


class AutomationEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as ``GET /v1/automation/events`` shows it."""

    event_id: str
    source: str  # webhook | poller
    event_type: str
    sale_id: str | None
    task_id: str | None
    order_number: str | None
    status: str
    reason: str | None
    label_id: str | None
    attempts: int
    next_attempt_at: str | None  # when a failed event is tried again
    received_at: str
    updated_at: str


def event_view(row: EventRow) -> AutomationEvent:
    return AutomationEvent(
        event_id=row.event_id, source=row.source, event_type=row.event_type,
        sale_id=row.sale_id, task_id=row.task_id, order_number=row.order_number,
        status=row.status, reason=row.reason, label_id=row.label_id, attempts=row.attempts,
        next_attempt_at=row.next_at[:19] + "Z" if _later(row) else None,
        received_at=row.received_at[:19] + "Z", updated_at=row.updated_at[:19] + "Z",
    )  # fmt: skip


def _later(row: EventRow) -> bool:
    """A failed event retried after a back-off, or one waiting for its label to be bought."""
    return row.status == "failed" or (row.status == "received" and row.label_id is not None)


class EventList(msgspec.Struct, frozen=True, kw_only=True):
    events: list[AutomationEvent]
    next_cursor: str | None


class WebhookReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a delivery: 202 when recorded now, 200 for a repeat of a recorded event."""

    event_id: str
    status: str
    duplicate: bool
