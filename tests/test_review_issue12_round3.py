"""Hostile review of issue 12, round 3: its findings, kept as the specifications they now meet."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from ratesvc import keys
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.storage.leases import owner_is_gone
from tests.conftest import AUTH
from tests.test_leases_replicas import (
    SALE,
    MakeReplica,
    make_replica,  # noqa: F401 - the fixture
)
from tests.test_review_issue12_round2 import _partition_from_ledger


async def test_the_settle_window_counts_from_the_send_so_a_slow_commit_is_not_rebought(
    make_replica: MakeReplica,  # noqa: F811 - the fixture
    sandbox: ShipStationSandbox,
    postgres_url: str,
) -> None:
    """attempt_at is stamped before the limiter wait; confirm() passes with any lease time left
    (no margin). A waits 3.5 s for its turn (< settle 4 s), confirms, sends; ShipStation takes
    2.5 s (< settle too). A is partitioned from renewals right at the grant, its lease lapses
    1 s later, B adopts: listing finds nothing yet and age (from attempt_at) >= settle -> B buys.
    Each delay alone is within settle; together they double-buy."""
    a = await make_replica("a", RATESVC_LABEL_SETTLE_S="4")
    b = await make_replica("b", RATESVC_LABEL_SETTLE_S="4")
    http = a.app[keys.ACCOUNTS]["default"].shipstation._http
    limiter = http.limiter
    real_acquire = limiter.acquire

    async def queued_acquire(priority: Any, deadline: Any) -> Any:
        permit = await real_acquire(priority, deadline)
        if buying_label:
            await asyncio.sleep(3.5)  # the turn waited for (other urgent calls ahead)
            _partition_from_ledger(a)  # a GC pause / partition from here on
            sandbox.set_latency(2500, carrier="ups")  # ShipStation slow to commit
        return permit

    limiter.acquire = queued_acquire
    client = a.app[keys.ACCOUNTS]["default"].shipstation
    real_create = client.create_label
    buying_label: list[bool] = []

    async def create_label(request: Any, **kwargs: Any) -> Any:
        buying_label.append(True)
        return await real_create(request, **kwargs)

    client.create_label = create_label
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await asyncio.sleep(12)
    buying.cancel()
    await asyncio.gather(buying, return_exceptions=True)
    n = sandbox.calls["/shipments/createlabel"]
    assert n == 1 and len(sandbox.shipments) == 1, (
        f"createlabel sent {n} times, {len(sandbox.shipments)} shipments bought for one package"
    )
    del b


def test_a_live_owner_in_another_container_with_the_same_host_name_is_not_gone() -> None:
    """Two containers with the same hostname (compose `hostname:`, k8s StatefulSet re-use,
    --uts=host) sharing one SQLite volume: the other's pid is not visible here, so its live
    leases/claims are abandoned at start-up; and if both run as pid 1 the same-pid rule
    abandons them too."""

    other_container_pid_1 = f"{socket.gethostname()}:{os.getpid()}:deadbeef"
    assert not owner_is_gone(other_container_pid_1), (
        "a live process in another container (same hostname, same pid) is taken for gone"
    )
