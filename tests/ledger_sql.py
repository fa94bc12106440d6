"""A test's own SQL on the service's ledger, whichever engine holds it — to age rows, stage what
an older version or a crash left behind, or look at what was written.

``?`` placeholders on both engines; values are bound, never formatted in.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from ratesvc.config import sqlite_path
from ratesvc.storage.sql import numbered


def _sqlite(url: str, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(sqlite_path(url))) as db, db:
        return [tuple(row) for row in db.execute(sql, args).fetchall()]


def _sqlite_many(url: str, sql: str, rows: list[Sequence[Any]]) -> None:
    with contextlib.closing(sqlite3.connect(sqlite_path(url))) as db, db:
        db.executemany(sql, rows)


async def ledger_sql(url: str, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the ledger at ``url``; the rows it returned."""
    if url.startswith("sqlite"):
        return await asyncio.to_thread(_sqlite, url, sql, args)
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(numbered(sql), *args)]
    finally:
        await connection.close()


async def ledger_sql_many(url: str, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """Run one statement for each of ``rows``, in one transaction."""
    rows = list(rows)
    if url.startswith("sqlite"):
        await asyncio.to_thread(_sqlite_many, url, sql, rows)
        return
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction():
            await connection.executemany(numbered(sql), rows)
    finally:
        await connection.close()
