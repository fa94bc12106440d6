"""The ledger, on both engines (SQLite and PostgreSQL, for real): versioned migrations,
idempotency keys, one writer's transaction never mixed with another's, PDFs kept with the
package's result, search, retention."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ratesvc.storage.ledger import (
    CUSTOMS,
    LABEL,
    SCHEMA_VERSION,
    EventRow,
    IdempotencyConflict,
    IllegalTransition,
    Ledger,
    PurchaseRow,
    now_text,
)
from ratesvc.storage.sqlite_engine import SQLiteEngine
from tests.ledger_sql import ledger_sql


def purchase(label_id: str, key: str | None = "k1", account: str = "acme") -> PurchaseRow:
    stamp = now_text()
    return PurchaseRow(
        label_id=label_id, account=account, idem_key=key, request_hash="h", plan=b"{}",
        status="purchasing", detail=None, sale_id=None, task_id=None,
        write_back_state="not_requested", write_back_attempts=0, write_back_error=None,
        created_at=stamp, updated_at=stamp, voided_at=None,
    )  # fmt: skip


def event(event_id: str, dedup_key: str) -> EventRow:
    stamp = now_text()
    return EventRow(
        event_id=event_id, account="acme", source="webhook", event_type="Sale/Pack",
        dedup_key=dedup_key, sale_id="s1", task_id=None, order_number=None, sale_updated=None,
        status="received", reason=None, label_id=None, attempts=0, next_at=stamp,
        payload=b"{}", received_at=stamp, updated_at=stamp,
    )  # fmt: skip


@pytest.fixture
def ledger_url(ledger_env: dict[str, str], tmp_path: Path) -> str:
    return ledger_env.get("RATESVC_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.sqlite3'}")


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    opened = Ledger.from_url(ledger_url)
    await opened.open()
    yield opened
    await opened.close()


async def test_opening_twice_migrates_once(ledger_url: str) -> None:
    first = Ledger.from_url(ledger_url)
    await first.open()
    await first.close()
    ledger = Ledger.from_url(ledger_url)
    await ledger.open()

    assert await ledger.version() == SCHEMA_VERSION
    versions = await ledger_sql(ledger_url, "SELECT version FROM schema_version ORDER BY version")
    assert [v for (v,) in versions] == list(range(1, SCHEMA_VERSION + 1))
    await ledger.close()


@pytest.mark.parametrize("ledger_env", ["sqlite"], indirect=True)
async def test_sqlite_runs_in_wal_with_full_sync(ledger: Ledger) -> None:
    assert isinstance(ledger.engine, SQLiteEngine)
    async with ledger.engine.db.execute("PRAGMA journal_mode") as cursor:
        assert (await cursor.fetchone())[0] == "wal"  # type: ignore[index]
    async with ledger.engine.db.execute("PRAGMA synchronous") as cursor:
        assert (await cursor.fetchone())[0] == 2  # type: ignore[index]  # FULL


async def test_an_idempotency_key_belongs_to_one_purchase_per_account(ledger: Ledger) -> None:
    await ledger.create_purchase(purchase("lb_1"), [(1, "Box 1", "lb_1:1")])

    with pytest.raises(IdempotencyConflict) as caught:
        await ledger.create_purchase(purchase("lb_2"), [(1, "Box 1", "lb_2:1")])
    await ledger.create_purchase(purchase("lb_3", account="globex"), [(1, None, "lb_3:1")])
    await ledger.transition("lb_1", "failed", {"purchasing"}, release=True)  # bought nothing
    await ledger.create_purchase(purchase("lb_4"), [(1, None, "lb_4:1")])

    assert caught.value.existing.label_id == "lb_1"
    assert await ledger.purchase("lb_2") is None  # nothing half-written
    assert [p.purchase_key for p in await ledger.packages("lb_4")] == ["lb_4:1"]


async def test_concurrent_writers_never_interleave_inside_a_transaction(ledger: Ledger) -> None:
    await ledger.create_purchase(purchase("lb_0", key=None), [(1, None, "lb_0:1")])

    await asyncio.gather(
        *(ledger.create_purchase(purchase(f"lb_{i}", key=f"k{i}"), [(1, None, f"lb_{i}:1")])
          for i in range(1, 30)),
        *(ledger.move_package("lb_0", 1, "unknown", {"pending", "unknown"}, attempts=i)
          for i in range(30)),
        *(ledger.transition("lb_0", "purchasing", {"purchasing"}, fields={"detail": str(i)})
          for i in range(30)),
    )  # fmt: skip

    assert len(await ledger.purchases("acme", limit=100)) == 30
    assert (await ledger.packages("lb_0"))[0].state == "unknown"


async def test_a_fulfilment_is_held_by_one_live_purchase(ledger: Ledger) -> None:
    held = dataclasses.replace(purchase("lb_1", key="a"), fulfilment_key="sale:s:t")
    await ledger.create_purchase(held, [(1, None, "lb_1:1")])

    other = dataclasses.replace(purchase("lb_2", key="b"), fulfilment_key="sale:s:t")
    with pytest.raises(IdempotencyConflict) as caught:
        await ledger.create_purchase(other, [(1, None, "lb_2:1")])
    await ledger.transition("lb_1", "completed", {"purchasing"})
    voided, corrected = await ledger.void("lb_1", {"completed"})
    await ledger.create_purchase(other, [(1, None, "lb_2:1")])

    assert caught.value.existing.label_id == "lb_1" and not caught.value.by_key
    assert voided.status == "voided" and voided.fulfilment_key is None
    assert voided.idem_key == "a"  # a replay with the key answers the voided label
    assert not corrected  # no write-back ever ran


async def test_an_illegal_transition_writes_nothing(ledger: Ledger) -> None:
    await ledger.create_purchase(purchase("lb_1"), [(1, None, "lb_1:1")])
    await ledger.transition("lb_1", "completed", {"purchasing"})
    await ledger.void("lb_1", {"completed"})

    with pytest.raises(IllegalTransition):
        await ledger.transition(
            "lb_1", "completed", {"purchased"}, fields={"detail": "late"}, enqueue="write_back"
        )

    row = await ledger.purchase("lb_1")
    assert row is not None and row.status == "voided" and row.detail is None
    assert await ledger.jobs("lb_1") == []


async def test_in_lists_longer_than_sqlite_allows_are_cut(ledger: Ledger) -> None:
    sale_ids = [f"sale-{i}" for i in range(40_000)]  # SQLite allows 32,766 "?" at most

    assert await ledger.purchases_for_sales("acme", sale_ids) == []
    assert await ledger.events_for_sales("acme", sale_ids) == []


# --- label PDFs and customs forms ----------------------------------------------------------


async def test_a_bought_packages_pdfs_are_kept_with_its_result(ledger: Ledger) -> None:
    await ledger.create_purchase(purchase("lb_1"), [(1, "Box 1", "lb_1:1"), (2, None, "lb_1:2")])
    await ledger.move_package("lb_1", 1, "unknown", {"pending"})
    await ledger.move_package("lb_1", 2, "unknown", {"pending"})

    bought = await ledger.move_package(
        "lb_1", 1, "bought", {"unknown"}, tracking_number="1Z1",
        documents={LABEL: b"%PDF-label-1", CUSTOMS: b"%PDF-customs-1"},
    )  # fmt: skip
    with pytest.raises(IllegalTransition):  # refused: its PDF is not kept either
        await ledger.move_package("lb_1", 2, "bought", {"pending"}, documents={LABEL: b"%PDF-2"})

    second = (await ledger.packages("lb_1"))[1]
    assert bought.pdf_stored and bought.customs_pdf_stored and bought.has_pdf
    assert bought.pdf_path is None  # no file
    assert await ledger.document("lb_1", 1, LABEL) == b"%PDF-label-1"
    assert await ledger.documents("lb_1", CUSTOMS) == {1: b"%PDF-customs-1"}
    assert not second.has_pdf and await ledger.document("lb_1", 2, LABEL) is None


async def test_retention_forgets_the_pdfs_of_finished_labels_only(ledger: Ledger) -> None:
    for label_id, status in (("lb_done", "completed"), ("lb_busy", "purchased")):
        await ledger.create_purchase(purchase(label_id, key=label_id), [(1, None, f"{label_id}:1")])
        await ledger.move_package(label_id, 1, "unknown", {"pending"})
        await ledger.move_package(label_id, 1, "bought", {"unknown"}, documents={LABEL: b"%PDF"})
        await ledger.transition(label_id, status, {"purchasing"})
    old = await ledger.move_package("lb_done", 1, "bought", {"bought"}, pdf_path="/old/1.pdf")

    purged = await ledger.purge(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))

    assert old.pdf_path == "/old/1.pdf"
    assert (purged.documents, purged.paths) == (1, ["/old/1.pdf"])
    assert await ledger.document("lb_done", 1, LABEL) is None
    assert not (await ledger.packages("lb_done"))[0].has_pdf
    assert await ledger.document("lb_busy", 1, LABEL) == b"%PDF"  # not finished: kept


# --- search ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "typed"),
    [("VÉ-1001", "vé-1001"), ("STRASSE-7", "straße-7"), ("ΟΔΟΣ-9", "οδος-9"),
     ("SO-ﬁ12", "so-fi12"), ("so-5", "SO-5")],
)  # fmt: skip
async def test_search_folds_case_beyond_ascii(ledger: Ledger, stored: str, typed: str) -> None:
    """``casefold``, not ``lower``: ß matches SS, final sigma matches Σ, a ligature its letters."""
    await ledger.create_purchase(purchase("lb_x", key=None), [(1, None, "lb_x:1")])
    await ledger.set_detail("lb_x", None, order_number=stored)
    await ledger.create_purchase(purchase("lb_y", key=None), [(1, None, "lb_y:1")])

    found = await ledger.purchases("acme", search=typed)

    assert [row.label_id for row in found] == ["lb_x"]


async def test_search_takes_wildcards_literally_and_a_nul_matches_nothing(ledger: Ledger) -> None:
    await ledger.create_purchase(purchase("lb_x", key=None), [(1, None, "lb_x:1")])
    await ledger.set_detail("lb_x", None, order_number="SO_100%")
    await ledger.create_purchase(purchase("lb_y", key=None), [(1, None, "lb_y:1")])
    await ledger.set_detail("lb_y", None, order_number="SO-1000")

    assert [r.label_id for r in await ledger.purchases("acme", search="o_100%")] == ["lb_x"]
    assert await ledger.purchases("acme", search="\x00") == []


async def test_pages_run_newest_first_after_a_cursor(ledger: Ledger) -> None:
    for i in range(5):
        await ledger.create_purchase(purchase(f"lb_{i}", key=None), [(1, None, f"lb_{i}:1")])

    first = await ledger.purchases("acme", limit=2)
    second = await ledger.purchases("acme", limit=2, after=first[-1].label_id)

    assert [r.label_id for r in first + second] == ["lb_4", "lb_3", "lb_2", "lb_1"]


# --- events and the outbox -------------------------------------------------------------------


async def test_a_repeated_event_is_recorded_once(ledger: Ledger) -> None:
    first, new = await ledger.record_event(event("ev1", "d1"))
    again, repeated = await ledger.record_event(event("ev2", "d1"))

    assert (new, repeated) == (True, False)
    assert again == first
    assert [e.event_id for e in await ledger.due_events()] == ["ev1"]
