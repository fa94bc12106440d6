"""Retention: finished automation events, finished outbox jobs and the PDFs of finished labels
older than ``RATESVC_RETENTION_DAYS`` are forgotten, hourly. Label rows stay: they are the record
of what was bought. Nothing still in progress is touched (see :meth:`Ledger.purge`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from pathlib import Path

from ratesvc.storage.ledger import Ledger

log = logging.getLogger(__name__)

EVERY_S = 3600.0


class Retention:
    def __init__(self, ledger: Ledger, days: float) -> None:
        self._ledger = ledger
        self._keep = dt.timedelta(days=days)

    async def run(self) -> None:
        """Purge now and then every hour, for as long as the service runs."""
        while True:
            try:
                await self.purge()
            except Exception:
                log.exception("retention: purging old records failed; trying again later")
            await asyncio.sleep(EVERY_S)

    async def purge(self) -> tuple[int, int, int]:
        """(events, outbox jobs, PDFs) forgotten — PDFs kept in the ledger and older ones kept as
        files alike."""
        before = dt.datetime.now(dt.UTC) - self._keep
        purged = await self._ledger.purge(before)
        events, jobs = purged.events, purged.jobs
        removed = purged.documents + await asyncio.to_thread(_unlink_all, purged.paths)
        if events or jobs or removed:
            log.info("retention: forgot %d events, %d outbox jobs, %d label PDFs", events, jobs,
                     removed)  # fmt: skip
        return events, jobs, removed


def _unlink_all(paths: list[str]) -> int:
    removed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
            removed += 1
        with contextlib.suppress(OSError):
            Path(path).parent.rmdir()  # the label's folder, once empty
    return removed
