"""The ledger: durable settings, versioned migrations, idempotency keys, one writer at a time."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from ratesvc.ledger import (
    MIGRATIONS,
    IdempotencyConflict,
    IllegalTransition,
    Ledger,
    PurchaseRow,
    now_text,
)


def purchase(label_id: str, key: str | None = "k1", account: str = "acme") -> PurchaseRow:
    stamp = now_text()
    return PurchaseRow(
        label_id=label_id, account=account, idem_key=key, request_hash="h", plan=b"{}",
        status="purchasing", detail=None, sale_id=None, task_id=None,
        write_back_state="not_requested", write_back_attempts=0, write_back_error=None,
        created_at=stamp, updated_at=stamp, voided_at=None,
    )  # fmt: skip


async def test_opening_twice_migrates_once_with_wal_and_full_sync(tmp_path: Path) -> None:
    first = Ledger(tmp_path / "ledger.sqlite3")
    await first.open()
    await first.close()
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    await ledger.open()

    assert await ledger.version() == len(MIGRATIONS)
    async with ledger.db.execute("PRAGMA journal_mode") as cursor:
        assert (await cursor.fetchone())[0] == "wal"  # type: ignore[index]
    async with ledger.db.execute("PRAGMA synchronous") as cursor:
        assert (await cursor.fetchone())[0] == 2  # type: ignore[index]  # FULL
    async with ledger.db.execute("SELECT COUNT(*) FROM schema_version") as cursor:
        assert (await cursor.fetchone())[0] == len(MIGRATIONS)  # type: ignore[index]
    await ledger.close()


async def test_an_idempotency_key_belongs_to_one_purchase_per_account(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    await ledger.open()
    await ledger.create_purchase(purchase("lb_1"), [(1, "Box 1", "lb_1:1")])

    with pytest.raises(IdempotencyConflict) as caught:
        await ledger.create_purchase(purchase("lb_2"), [(1, "Box 1", "lb_2:1")])
    await ledger.create_purchase(purchase("lb_3", account="globex"), [(1, None, "lb_3:1")])
    await ledger.transition("lb_1", "failed", {"purchasing"}, release=True)  # bought nothing
    await ledger.create_purchase(purchase("lb_4"), [(1, None, "lb_4:1")])

    assert caught.value.existing.label_id == "lb_1"
    assert await ledger.purchase("lb_2") is None  # nothing half-written
    assert [p.purchase_key for p in await ledger.packages("lb_4")] == ["lb_4:1"]
    await ledger.close()


async def test_concurrent_writers_never_interleave_inside_a_transaction(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    await ledger.open()
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
    await ledger.close()


async def test_a_fulfilment_is_held_by_one_live_purchase(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    await ledger.open()
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
    await ledger.close()


async def test_an_illegal_transition_writes_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    await ledger.open()
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
    await ledger.close()


async def test_in_lists_longer_than_sqlite_allows_are_cut(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    await ledger.open()
    sale_ids = [f"sale-{i}" for i in range(40_000)]  # SQLite allows 32,766 "?" at most

    assert await ledger.purchases_for_sales("acme", sale_ids) == []
    assert await ledger.events_for_sales("acme", sale_ids) == []
    await ledger.close()
