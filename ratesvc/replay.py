"""Replaying a finished answer to a byte-identical ``POST /v1/rates`` request.

Warehouse tools retry, poll and refresh screens: the same body arrives again and again. When an
answer was built entirely from cached legs (so it says ``cached: true`` everywhere, with no errors
and nothing stale), the same body from the same account gets the same answer for as long as those
legs are fresh enough for the request's ``max_age_s`` and the carrier catalogue is unchanged. The
answer is kept encoded; a replay puts a new token into its quote ids and records the quotes in the
:class:`~ratesvc.quotes.QuoteStore` like any answer, so they stay unique and buyable. Replayed
quotes keep the ``expires_at`` of the answer they copy: their prices are that old, and a replay
never extends how long a price is offered. It saves decoding, validation, the cache reads and
building the quotes again.

An answer also depends on the account's configuration (key pair, carriers, markup, default
ship-from, quote TTL): :func:`rating_fingerprint` names it. In one process it cannot change
without a restart, which empties the replay; replicas sharing one through Redis key kept answers
by it, so a release with a new markup never replays what the old one kept.

Kept answers are bounded by an estimate of the bytes they hold (the encoded answer, the request
body that keys it, the batch it copies); the least recently kept go first.

:class:`AnswerReplay` is the embedded implementation of :class:`ReplayProtocol`; replicas share
:class:`ratesvc.storage.redis_quotes.RedisAnswerReplay` instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Protocol

import msgspec

from ratesvc.byte_lru import ByteLRU
from ratesvc.config import Account
from ratesvc.quotes import ENTRY_BYTES, MIB, QuoteBatch, QuoteStore, batch_bytes, new_token


def _rfc3339(moment: dt.datetime) -> bytes:
    """As msgspec writes a whole-second UTC datetime: ``2026-11-29T16:00:00Z``."""
    return moment.isoformat().replace("+00:00", "Z").encode()


@dataclass(frozen=True)
class _Kept:
    pieces: list[bytes]  # the answer split at its batch's token, joined by a new one per replay
    batch: QuoteBatch
    batch_bytes: int  # its estimate, which every copy of it shares
    fresh_until: dt.datetime
    catalog_version: int


MAX_BODY_BYTES = 16 * 1024  # bodies kept as keys: a real rate request is far smaller


def rating_fingerprint(account: Account) -> str:
    """Names what of ``account``'s configuration its answers depend on (besides the carrier
    catalogue, which has its own version): a change of any makes other answers."""
    named = msgspec.json.encode([
        account.shipstation.cache_id(), account.carriers, account.markup, account.ship_from,
        account.quote_ttl_s,
    ])  # fmt: skip
    return hashlib.sha256(named).hexdigest()[:32]


class ReplayProtocol(Protocol):
    """Finished answers kept by (account, request body), for as long as they may be replayed."""

    @property
    def held_bytes(self) -> int: ...

    async def replay(self, account: str, body: bytes, catalog_version: int) -> bytes | None:
        """The answer to ``body`` again, with fresh quote ids, or None."""

    async def keep(
        self,
        account: str,
        body: bytes,
        answer: bytes,
        batch: QuoteBatch,
        *,
        fresh_until: dt.datetime,
        catalog_version: int,
    ) -> None:
        """Remember ``answer`` (encoded, with ``batch``'s token in its quote ids)."""


class AnswerReplay:
    """Kept answers, least recently kept first out, under ``max_bytes`` (estimated)."""

    def __init__(self, store: QuoteStore, *, max_bytes: int = 16 * MIB) -> None:
        self._store = store
        self._kept: ByteLRU[tuple[str, bytes], _Kept] = ByteLRU(max_bytes)

    @property
    def held_bytes(self) -> int:
        """The estimate of what the kept answers hold in memory."""
        return self._kept.bytes

    async def replay(self, account: str, body: bytes, catalog_version: int) -> bytes | None:
        """The answer to ``body`` again, with fresh quote ids, or None."""
        kept = self._kept.get((account, body))
        if kept is None:
            return None
        now = dt.datetime.now(dt.UTC)
        if kept.catalog_version != catalog_version or now >= kept.fresh_until:
            self._kept.pop((account, body))
            return None
        token = new_token()
        copy = msgspec.structs.replace(kept.batch, token=token)
        self._store.keep(copy, size=kept.batch_bytes, now=now)
        return token.encode().join(kept.pieces)

    async def keep(
        self,
        account: str,
        body: bytes,
        answer: bytes,
        batch: QuoteBatch,
        *,
        fresh_until: dt.datetime,
        catalog_version: int,
    ) -> None:
        """Remember ``answer`` (encoded, with ``batch``'s token in its quote ids)."""
        if len(body) > MAX_BODY_BYTES:
            return
        size = self._store.size_of(batch.token) or batch_bytes(batch)
        kept = _Kept(
            pieces=answer.split(batch.token.encode()), batch=batch, batch_bytes=size,
            fresh_until=min(fresh_until, batch.expires_at), catalog_version=catalog_version,
        )  # fmt: skip
        self._kept.put((account, body), kept, ENTRY_BYTES + len(answer) + len(body) + size)
