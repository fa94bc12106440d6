"""What a replica cut off from Redis may spend of a shared window (:mod:`.shared_limiter`).

While Redis cannot be reached, a replica's calls go against a *local share* of the key's
budget, :class:`ShareModel`: ``max(1, limit // replicas)`` calls a window, paced
``replicas`` times slower than the shared pacing (``min_interval_s``, Cin7 Core), judged by an
in-process :class:`~ratesvc.limiter.WindowModel` that starts from the last window Redis
described (the calls this replica took in it counted) with a probe.

The share is safe only if the replicas still reaching Redis leave it alone. They do once this
replica's member entry has lapsed (:mod:`.limiter_scripts`: every acquire holds a share aside
per lapsed member), so :func:`spend_from` and :func:`held_until` say when that is certain, on
this process's clock: a replica spends nothing of its share until its entry has lapsed
(``lapse_s`` after the answer to its last refresh), and the others hold the share until
``expiry_s`` after that (no earlier than ``lapse_s + expiry_s`` after that refresh was sent;
Redis's clock and this one run at the same rate, whatever their offsets).
"""

from __future__ import annotations

from typing import Any

from ratesvc.limiter import RateHeaders, WindowModel
from ratesvc.storage.limiter_window import Window


class ShareModel(WindowModel):
    """The in-process window of a replica cut off from Redis: its share of the key's budget.
    Headers describe the whole key: their Limit is divided among the replicas, and so is the
    Remaining a probe learns (every replica cut off may be probing too), never more than what
    is left of the share."""

    def __init__(self, name: str, *, replicas: int, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.replicas = replicas

    def share(self, limit: int) -> int:
        return max(1, limit // self.replicas)

    def _scaled(self, info: RateHeaders) -> RateHeaders:
        limit = None if info.limit is None else self.share(info.limit)
        remaining = info.remaining
        if remaining is not None and self.probing:
            remaining = min(remaining // self.replicas, (limit or self.limit) - 1)
        return RateHeaders(limit=limit, remaining=remaining, reset_s=info.reset_s,
                           reset_unit_s=info.reset_unit_s)  # fmt: skip

    def adopt(
        self, now: float, info: RateHeaders, *, alone: bool, sent_at: float | None = None
    ) -> None:
        super().adopt(now, self._scaled(info), alone=alone, sent_at=sent_at)

    def throttle(self, now: float, info: RateHeaders, *, sent_at: float | None = None) -> None:
        super().throttle(now, self._scaled(info), sent_at=sent_at)

    def paused_for(self, now: float) -> float | None:
        """Seconds left of a pause after a 429 (None: not paused)."""
        if self.probing and self.remaining <= 0 and self.reset_at is not None:
            return self.reset_at - now if self.reset_at > now else None
        return None


def local_share(
    name: str,
    window: Window | None,
    taken: int,
    now: float,
    *,
    replicas: int,
    limit: int,
    window_s: float,
    margin_s: float,
    min_interval_s: float,
    pause_s: float,
) -> ShareModel:
    """A local window for this replica's share. It starts with a probe (what Redis last said
    may be stale: other replicas took calls since), within the shared window as last seen
    (``window``), with the ``taken`` calls this replica was granted in it counted."""
    model = ShareModel(
        f"{name} (local share)",
        replicas=replicas,
        limit=1,
        window_s=window_s,
        margin_s=margin_s,
        min_interval_s=min_interval_s * replicas,  # N cut-off replicas: one pace between them
        throttle_pause_s=pause_s,
    )
    model.limit = model.share(window.limit if window is not None else limit)
    if window is not None and window.ends_at is not None and now < window.ends_at:
        model.reset_at = window.ends_at
        model.heard = True  # Redis's bound: answers here only ever move it later
        model.soft_end = window.soft_at
        model.remaining = max(0, min(model.limit - taken, window.remaining))
        model.next_slot = window.slot_at
    return model


def spend_from(joined: tuple[float, float] | None, lapse_s: float, now: float) -> float:
    """When a replica cut off at ``now`` may start on its share, its member entry last
    refreshed by a command sent and answered at ``joined``: once the others hold the share
    aside (at once if it never was a member: nobody will)."""
    return now if joined is None else max(now, joined[1] + lapse_s)


def held_until(joined: tuple[float, float] | None, lapse_s: float, expiry_s: float) -> float | None:
    """Until when the others surely hold this replica's share aside (None: never)."""
    return None if joined is None else joined[0] + lapse_s + expiry_s
