"""The label lifecycle: its states and every allowed transition, as data, in one place.

::

                        ┌──────────── failed (nothing bought; the claim is released)
                        │
    (request) ──▶ purchasing ──▶ completed ◀──────────────┐ (written back,
                        │  │                               │  or none asked)
                        │  └──▶ purchased ──▶ write_back_failed ─┐
                        │          │  ▲            │  ▲          │
                        │          │  └────────────┘  └─(retry)──┘
                        ▼          ▼                  │
                    attention ◀────┴──────────────────┘
                        │
       any of purchased, completed, write_back_failed, attention ──▶ voided (terminal)
       completed ──▶ attention (a void the carrier refused for some of the boxes)

* ``purchasing``: recorded before anything is bought; packages are bought (or their unknown
  outcome reconciled) one by one. A label whose packages' outcome is unknown stays here, however
  many attempts were made, until ShipStation's shipment list settles it.
* ``purchased``: every package bought; the write-back job is queued in the same transaction.
* ``attention``: a person must look (``detail`` says why). The purchase unit may still settle
  an unknown outcome afterwards, so ``attention`` can move on to ``purchased``, ``completed`` or
  ``failed``. A write-back that failed ``RATESVC_WRITEBACK_ATTENTION_AFTER`` times also lands
  here and is still retried (now, on request): written back, the label is ``completed``.
* ``voided``: terminal. The void cancels a write-back that has not started and queues the
  correction of one that has, in the same transaction; nothing moves a voided label again.

Package states: ``pending`` (not yet tried, or provably not bought) → ``unknown`` (a
``createlabel`` call was made and its outcome is not yet known: recorded *before* the call) →
``bought``; ``unknown`` → ``pending`` when ShipStation's list proves it absent (or it answered
that it was throttled); ``unknown`` → ``failed`` when ShipStation refused it for good; ``bought``
→ ``voided``.

Every change goes through :func:`transition` (in :mod:`ratesvc.storage.ledger`, one SQL
transaction with the outbox jobs it implies); an illegal one is refused and logged, never silently
applied.
"""

from __future__ import annotations

import enum


class LabelStatus(enum.StrEnum):
    PURCHASING = "purchasing"
    PURCHASED = "purchased"
    COMPLETED = "completed"
    WRITE_BACK_FAILED = "write_back_failed"
    VOIDED = "voided"
    ATTENTION = "attention"
    FAILED = "failed"


class PackageState(enum.StrEnum):
    PENDING = "pending"
    BOUGHT = "bought"
    UNKNOWN = "unknown"
    VOIDED = "voided"
    FAILED = "failed"


class WriteBackState(enum.StrEnum):
    NOT_REQUESTED = "not_requested"
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobKind(enum.StrEnum):
    WRITE_BACK = "write_back"
    VOID_CORRECTION = "void_correction"


S = LabelStatus

TRANSITIONS: dict[LabelStatus, frozenset[LabelStatus]] = {
    S.PURCHASING: frozenset({S.PURCHASING, S.PURCHASED, S.COMPLETED, S.ATTENTION, S.FAILED}),
    S.PURCHASED: frozenset({S.COMPLETED, S.WRITE_BACK_FAILED, S.ATTENTION, S.VOIDED}),
    S.WRITE_BACK_FAILED: frozenset({S.WRITE_BACK_FAILED, S.COMPLETED, S.ATTENTION, S.VOIDED}),
    S.COMPLETED: frozenset({S.VOIDED, S.ATTENTION}),
    S.ATTENTION: frozenset({S.ATTENTION, S.PURCHASED, S.COMPLETED, S.FAILED, S.VOIDED}),
    S.VOIDED: frozenset(),
    S.FAILED: frozenset(),
}
"""``from → {to}``; a status missing from a set cannot be reached from that status. A status
listed in its own set may be rewritten (new ``detail`` or write-back counters)."""

PACKAGE_TRANSITIONS: dict[PackageState, frozenset[PackageState]] = {
    PackageState.PENDING: frozenset({PackageState.UNKNOWN, PackageState.FAILED}),
    PackageState.UNKNOWN: frozenset(
        {PackageState.BOUGHT, PackageState.PENDING, PackageState.FAILED}
    ),
    PackageState.BOUGHT: frozenset({PackageState.VOIDED}),
    PackageState.VOIDED: frozenset(),
    PackageState.FAILED: frozenset(),
}

# --- the groups the rest of the service asks about --------------------------------------------

IN_FLIGHT = frozenset({S.PURCHASING, S.PURCHASED, S.WRITE_BACK_FAILED})
"""Work is still going on for the label (buying, or writing back)."""

SETTLED = frozenset({S.VOIDED, S.FAILED})
"""Nothing will ever happen to the label again."""

VOIDABLE = frozenset({S.PURCHASED, S.COMPLETED, S.WRITE_BACK_FAILED, S.ATTENTION})


def sources(to: LabelStatus) -> frozenset[LabelStatus]:
    """Every status from which ``to`` may be reached."""
    return frozenset(src for src, targets in TRANSITIONS.items() if to in targets)


def package_sources(to: PackageState) -> frozenset[PackageState]:
    return frozenset(src for src, targets in PACKAGE_TRANSITIONS.items() if to in targets)
