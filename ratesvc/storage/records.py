"""The ledger's rows, as the rest of the service reads them, and the ledger's own errors.

Each row type lists its table's columns in the order the ledger selects them; fields added by a
later migration come last, with a default. Time stamps are UTC text (:data:`STAMP_FORMAT`), which
sorts like time on every engine.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields

STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # the ledger's UTC time stamps


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime(STAMP_FORMAT)


def parse_stamp(text: str) -> dt.datetime:
    """A ledger time stamp as an aware UTC datetime (ValueError when it is not one)."""
    return dt.datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=dt.UTC)


def format_stamp(moment: dt.datetime) -> str:
    """A UTC datetime as the ledger writes its time stamps."""
    return moment.strftime(STAMP_FORMAT)


@dataclass(frozen=True)
class PurchaseRow:
    label_id: str
    account: str
    idem_key: str | None
    request_hash: str
    plan: bytes
    status: str
    detail: str | None
    sale_id: str | None
    task_id: str | None
    write_back_state: str
    write_back_attempts: int
    write_back_error: str | None
    created_at: str
    updated_at: str
    voided_at: str | None
    fulfilment_key: str | None = None  # "sale:<sale>:<task>" while the label holds it
    order_number: str | None = None  # the sale's order number, when the label is for a sale


@dataclass(frozen=True)
class PackageRow:
    label_id: str
    n: int
    box: str | None
    purchase_key: str
    state: str
    attempt_at: str | None
    shipment_id: int | None
    tracking_number: str | None
    cost: str | None
    insurance_cost: str | None
    pdf_path: str | None
    attempts: int = 0  # createlabel calls that may have reached ShipStation
    customs_pdf_path: str | None = None  # the customs form of an international package
    # the label PDF / customs form is in the ledger's documents (the paths above are what
    # versions before migration 6 wrote: files under the data directory)
    pdf_stored: bool = field(default=False, metadata={"computed": True})
    customs_pdf_stored: bool = field(default=False, metadata={"computed": True})

    @property
    def has_pdf(self) -> bool:
        return self.pdf_stored or self.pdf_path is not None

    @property
    def has_customs_pdf(self) -> bool:
        return self.customs_pdf_stored or self.customs_pdf_path is not None


@dataclass(frozen=True)
class OutboxRow:
    id: int
    label_id: str
    kind: str
    state: str  # pending | running | done | cancelled
    attempts: int
    next_at: str
    last_error: str | None
    account: str = ""
    sale_id: str | None = None


@dataclass(frozen=True)
class JobResult:
    """What happens to an outbox job in the same transaction as a label's status change."""

    id: int
    state: str  # done | pending (retry at next_at) | cancelled
    error: str | None = None
    next_at: dt.datetime | None = None


@dataclass(frozen=True)
class EventRow:
    event_id: str
    account: str
    source: str  # webhook | poller
    event_type: str
    dedup_key: str
    sale_id: str | None
    task_id: str | None
    order_number: str | None
    sale_updated: str | None  # the sale list's Updated stamp, for events the poller found
    status: str  # see ratesvc.automation.EVENT_STATUSES
    reason: str | None
    label_id: str | None
    attempts: int
    next_at: str
    payload: bytes
    received_at: str
    updated_at: str


@dataclass(frozen=True)
class Backlog:
    """What an account has waiting, counted (``GET /v1/status``): open write-back jobs and when
    the oldest was queued; events and labels by status (only the statuses asked for)."""

    write_backs: int
    oldest_write_back_at: str | None
    events: dict[str, int]
    labels: dict[str, int]


@dataclass(frozen=True)
class Purged:
    """What retention forgot: settled events and outbox jobs, the label PDFs and customs forms
    held in the ledger, and the paths of older ones kept as files (to delete now)."""

    events: int
    jobs: int
    documents: int
    paths: list[str]


OPEN_EVENT_STATUSES = ("received", "failed")  # still to be processed (now or after a back-off)


class IdempotencyConflict(Exception):
    """Another purchase already holds this idempotency key (``by_key``) or this fulfilment."""

    def __init__(self, existing: PurchaseRow, *, by_key: bool = True) -> None:
        super().__init__(existing.label_id)
        self.existing = existing
        self.by_key = by_key


class IllegalTransition(Exception):
    """The row was not in a state the change may start from; nothing was written."""

    def __init__(self, label_id: str, current: str | None, to: str) -> None:
        super().__init__(f"{label_id}: {current} -> {to} is not allowed")
        self.label_id = label_id
        self.current = current
        self.to = to


def columns(row_type: type, prefix: str = "") -> str:
    """The ``SELECT`` list of a row type's table columns in its field order (``prefix``: a table
    alias and a dot), computed fields left out. Never ``SELECT *``: a column a newer version added
    (a rolling deploy on a shared database) must not break reading."""
    return ", ".join(
        prefix + f.name for f in fields(row_type) if not f.metadata.get("computed", False)
    )


LABEL = "label"  # the documents' kinds: a package's label PDF and its customs form
CUSTOMS = "customs"


class LeaseLost(Exception):
    """The work's lease (``name``) is no longer this owner's: another replica adopted it after it
    expired. Nothing was written; the work stops here."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the lease {name} is no longer ours")
        self.name = name
