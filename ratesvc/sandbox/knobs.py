"""Behaviour knobs and call counters shared by the sandboxes.

Knobs are settable at construction, through the Python API (plain attribute access on
:class:`Knobs`) and at run time through ``PUT /__sandbox/knobs`` with a JSON body of the fields to
change (``KnobsUpdate``). Counters are read with ``GET /__sandbox/calls``.

``createlabel_faults`` scripts the next ``createlabel`` calls, one entry consumed per call (then
calls behave normally again): ``ok``; ``error_before_buy`` (a 500 with an ``ExceptionMessage``,
nothing bought); ``lost_after_buy`` (the label is bought, the answer is a 500: ShipStation's
ambiguous failure); ``drop_after_buy`` (bought, the connection is closed without an answer, as a
client time-out sees it); ``hang_after_buy`` (bought, the answer is held for ``hang_s``).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import msgspec

LabelFault = Literal["ok", "error_before_buy", "lost_after_buy", "drop_after_buy", "hang_after_buy"]


class Latency(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Answer time: ``base_ms`` plus a uniform jitter of ±``jitter_ms``, and a slow tail."""

    base_ms: float = 0.0
    jitter_ms: float = 0.0
    tail_ms: float = 0.0
    tail_rate: float = 0.0

    def sample(self, rng: random.Random) -> float:
        ms = self.base_ms + rng.uniform(-self.jitter_ms, self.jitter_ms)
        if self.tail_rate and rng.random() < self.tail_rate:
            ms += self.tail_ms
        return max(0.0, ms) / 1000.0


class KnobsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /__sandbox/knobs``: only the fields given change."""

    latency: Latency | None = None
    carrier_latency: dict[str, Latency] | None = None
    error_rate: dict[str, float] | None = None
    timeout_rate: dict[str, float] | None = None
    hang_s: float | None = None
    rate_limit: int | None = None
    window_s: float | None = None
    storm_s: float | None = None
    createlabel_faults: list[LabelFault] | None = None  # replaces the script


@dataclass
class Knobs:
    """``error_rate`` / ``timeout_rate`` map a carrier code (or ``*`` for all) to a probability."""

    latency: Latency = field(default_factory=Latency)
    carrier_latency: dict[str, Latency] = field(default_factory=dict)
    error_rate: dict[str, float] = field(default_factory=dict)
    timeout_rate: dict[str, float] = field(default_factory=dict)
    hang_s: float = 30.0
    rate_limit: int = 40
    window_s: float = 60.0
    seed: int = 7
    createlabel_faults: list[LabelFault] = field(default_factory=list)  # one consumed per call

    def latency_for(self, carrier: str | None) -> Latency:
        if carrier is not None and carrier in self.carrier_latency:
            return self.carrier_latency[carrier]
        return self.latency

    def rate_for(self, table: dict[str, float], carrier: str | None) -> float:
        if carrier is not None and carrier in table:
            return table[carrier]
        return table.get("*", 0.0)


class FixedWindow:
    """A fixed rate-limit window (ShipStation's is 60 s) counting the calls it lets through."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._origin = _now()
        self._index = -1
        self._count = 0
        self.served_per_window: Counter[int] = Counter()
        self.throttled_per_window: Counter[int] = Counter()
        self.storm_until = 0.0

    def reconfigure(self, *, limit: int | None = None, window_s: float | None = None) -> None:
        if limit is not None:
            self.limit = limit
        if window_s is not None:
            self.window_s = window_s
            self._origin = _now()
            self._index = -1

    def index_at(self, moment: float) -> int:
        """The window ``moment`` (``time.monotonic()``, the loop's clock) falls in: the key of
        ``served_per_window`` and ``throttled_per_window``."""
        return math.floor((moment - self._origin) / self.window_s)

    def admit(self) -> tuple[bool, dict[str, str]]:
        """Count one call; return whether it is within the limit, and the three headers."""
        now = _now()
        index = math.floor((now - self._origin) / self.window_s)
        if index != self._index:
            self._index, self._count = index, 0
        reset_s = self._origin + (index + 1) * self.window_s - now
        storm = now < self.storm_until
        if not storm:
            self._count += 1
        allowed = not storm and self._count <= self.limit
        if allowed:
            self.served_per_window[index] += 1
        else:
            self.throttled_per_window[index] += 1
        remaining = 0 if storm else max(0, self.limit - self._count)
        return allowed, {
            "X-Rate-Limit-Limit": str(self.limit),
            "X-Rate-Limit-Remaining": str(remaining),
            "X-Rate-Limit-Reset": self._format_reset(reset_s),
        }

    def _format_reset(self, reset_s: float) -> str:
        # Whole seconds, rounded up, as ShipStation sends; sub-second windows (fast tests) get
        # milliseconds so a client can still follow them.
        if self.window_s >= 10:
            return str(math.ceil(reset_s))
        return f"{math.ceil(reset_s * 1000) / 1000:.3f}"


def _now() -> float:
    # The same clock as asyncio's loop.time() on every platform Python supports here.
    return time.monotonic()
