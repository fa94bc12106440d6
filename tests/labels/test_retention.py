"""Retention: finished events, outbox jobs and label PDFs older than ``RATESVC_RETENTION_DAYS``
are forgotten; the label rows (the record of what was bought) and anything still in progress
are kept."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

import pytest

from ratesvc import keys
from ratesvc.config import ConfigError, load_settings
from ratesvc.labels.retention import Retention
from ratesvc.sandbox.cin7 import Cin7Sandbox
from ratesvc.storage import postgres_engine
from ratesvc.storage.ledger import Ledger, format_stamp
from tests.api.test_labels import EXPLICIT, buy, until
from tests.conftest import AUTH, service_env
from tests.labels.conftest import SALE, Service, status_is
from tests.ledger_sql import ledger_sql


async def age(service: Service, days: int) -> None:
    """Move every row's last change ``days`` into the past (time passing, for the ledger)."""
    stamp = format_stamp(dt.datetime.now(dt.UTC) - dt.timedelta(days=days))
    for table in ("purchases", "outbox", "events"):
        await service.sql(f"UPDATE {table} SET updated_at = ?", (stamp,))


async def test_old_finished_records_are_forgotten_and_labels_are_kept(
    restartable: Service, cin7_sandbox: Cin7Sandbox, tmp_path: Path
) -> None:
    client = restartable.client
    assert client is not None
    done = await buy(client, SALE)
    await until(lambda: status_is(client, done["label_id"], "completed"))
    cin7_sandbox.knobs.writes_down = True
    explicit = await buy(client, EXPLICIT)  # no write-back: completed, its PDF is old too
    await age(restartable, 91)

    events, jobs, pdfs = await client.app[keys.LABELS].retention.purge()
    gone = await client.get(f"/v1/labels/{done['label_id']}/packages/1/label.pdf", headers=AUTH)
    kept = await client.get(f"/v1/labels/{done['label_id']}", headers=AUTH)

    assert (jobs, pdfs) == (1, 2)  # the finished write-back job; both labels' PDFs
    assert events == 0
    assert gone.status == 404
    assert kept.status == 200 and (await kept.json())["status"] == "completed"
    assert (await kept.json())["packages"][0]["label_url"] is None
    explicit_pdf = f"/v1/labels/{explicit['label_id']}/packages/1/label.pdf"
    assert (await client.get(explicit_pdf, headers=AUTH)).status == 404


async def test_what_is_younger_or_unfinished_is_kept(
    restartable: Service, cin7_sandbox: Cin7Sandbox, tmp_path: Path
) -> None:
    client = restartable.client
    assert client is not None
    cin7_sandbox.knobs.writes_down = True
    stuck = await buy(client, SALE)  # its write-back keeps failing: still in progress
    await until(lambda: status_is(client, stuck["label_id"], "write_back_failed"))
    await age(restartable, 89)
    fresh = await buy(client, {**EXPLICIT, "shipment": {**EXPLICIT["shipment"]}}, key="f")

    assert await client.app[keys.LABELS].retention.purge() == (0, 0, 0)
    await age(restartable, 91)
    assert await client.app[keys.LABELS].retention.purge() == (
        0,
        0,
        1,
    )  # only the finished one's PDF
    pdf = await client.get(f"/v1/labels/{stuck['label_id']}/packages/1/label.pdf", headers=AUTH)
    assert pdf.status == 200
    assert fresh["status"] == "completed"


@pytest.mark.parametrize("value", ["0", "-3", "forever"])
def test_retention_days_must_be_a_positive_number(
    sandbox_url: str, tmp_path: Path, value: str
) -> None:
    with pytest.raises(ConfigError, match="RATESVC_RETENTION_DAYS"):
        load_settings(service_env(sandbox_url, tmp_path, RATESVC_RETENTION_DAYS=value))


async def test_a_backlog_too_big_for_one_statement_is_purged_in_batches_that_keep_their_progress(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention first enabled (or shortened) on a busy multi-tenant ledger: millions of settled
    events. Deleted in one statement, the purge ran into PostgreSQL's 10 s statement cap, rolled
    back everything, and failed the same way every hour after. Deleted in batches (each its own
    transaction, smaller after a batch runs into the cap), every run keeps what it did and the
    backlog is gone after a few. Scaled down: a 0.1 s cap and 300 000 events (one DELETE of them
    all takes longer)."""
    monkeypatch.setattr(postgres_engine, "COMMAND_TIMEOUT_S", 0.1)
    ledger = Ledger.from_url(postgres_url)
    await ledger.open()
    try:
        old = "2020-01-01T00:00:00.000000Z"
        await ledger_sql(
            postgres_url,
            "INSERT INTO events (event_id, account, source, event_type, dedup_key, status, "
            "attempts, next_at, payload, received_at, updated_at) "
            "SELECT 'ev_' || g, 'default', 'webhook', 'Sale/PackAuthorised', 'k' || g, "
            "'processed', 1, ?, convert_to(repeat('x', 300), 'UTF8'), ?, ? "
            "FROM generate_series(1, 300000) g",
            (old, old, old),
        )
        await ledger_sql(postgres_url, "ANALYZE events")  # as autovacuum would have by now
        retention = Retention(ledger, days=90)
        left: list[int] = []
        for _ in range(10):  # hourly runs, each logging what stopped it (Retention.run)
            with contextlib.suppress(TimeoutError):
                await retention.purge()
            ((count,),) = await ledger_sql(postgres_url, "SELECT COUNT(*) FROM events")
            left.append(count)
            if count == 0:
                break
        assert left[0] < 300_000, "the first run kept nothing of what it deleted"
        assert left[-1] == 0, f"events left after each run: {left}"
    finally:
        await ledger.close()
