"""Hostile review of issue 12, round 2: exactly-once holes across replicas (each a finding,
kept as the specification it now meets)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from typing import Any

from ratesvc import keys
from ratesvc.app import create_app
from ratesvc.config import load_settings
from ratesvc.labels import purchase as purchase_module
from ratesvc.sandbox.shipstation import ShipStationSandbox
from ratesvc.storage.leases import owner_is_gone, this_host
from ratesvc.storage.ledger import Ledger
from ratesvc.storage.records import format_stamp
from tests.api.test_labels import until
from tests.conftest import AUTH, service_env
from tests.ledger_sql import ledger_sql
from tests.test_leases_replicas import (
    SALE,
    MakeReplica,
    make_replica,  # noqa: F401 - the fixture
)


def _partition_from_ledger(replica: Any) -> None:
    """The replica can no longer renew its leases (a network partition from PostgreSQL, a
    stalled event loop): the renewal statement fails, everything else keeps going."""
    ledger = replica.app[keys.LEDGER]

    async def renew_fails(*args: object, **kwargs: object) -> bool:
        raise ConnectionError("partitioned from the ledger")

    ledger.renew_lease = renew_fails


def _slow_sender(replica: Any, hold: asyncio.Event) -> asyncio.Event:
    """The replica's createlabel is held before it leaves (a limiter wait, a slow network,
    a GC pause) until ``hold`` is set; returns an event set when it got there."""
    services = replica.app[keys.ACCOUNTS]["default"]
    client = services.shipstation
    real = client.create_label
    reached = asyncio.Event()

    async def held(request: Any, **kwargs: Any) -> Any:
        reached.set()
        await hold.wait()
        return await real(request, **kwargs)

    client.create_label = held
    return reached


async def test_a_replica_that_lost_its_purchase_lease_while_waiting_to_send_still_buys(
    make_replica: MakeReplica,  # noqa: F811 - the fixture
    sandbox: ShipStationSandbox,
    postgres_url: str,
) -> None:
    """A moves the package to unknown (fenced), then waits before its createlabel leaves
    (limiter queue / slow socket). Its lease lapses meanwhile and B adopts: B reconciles,
    finds nothing (A has not sent yet), buys. Then A's createlabel goes out anyway: nothing
    re-checks the lease between the fenced write and the upstream call."""
    a = await make_replica("a")
    hold = asyncio.Event()
    reached = _slow_sender(a, hold)
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await asyncio.wait_for(reached.wait(), 10)
    _partition_from_ledger(a)
    b = await make_replica("b")
    await until(lambda: asyncio.sleep(0, sandbox.calls["/shipments/createlabel"] >= 1), 15)
    hold.set()  # A's call leaves now
    await asyncio.sleep(1.0)
    buying.cancel()
    await asyncio.gather(buying, return_exceptions=True)
    keys_bought = [s.get("advancedOptions", {}).get("customField1")
                   for s in sandbox.shipments.values()]  # fmt: skip
    assert sandbox.calls["/shipments/createlabel"] == 1, (
        f"one package bought {sandbox.calls['/shipments/createlabel']} times: {keys_bought}"
    )
    del b


async def test_a_replica_clock_behind_does_not_make_the_adopter_rebuy_within_settle(
    make_replica: MakeReplica,  # noqa: F811 - the fixture
    sandbox: ShipStationSandbox,
    postgres_url: str,
    monkeypatch: Any,
) -> None:
    """Review finding: the settle decision compared A's wall clock (``attempt_at``) with B's,
    so a replica 2 minutes behind made the adopter treat a purchase still in flight as
    'provably absent' at once and buy again. Now both are the database's clock: within
    settle_s (60 s) of the attempt B keeps looking, and A, whose lease B took, never sends."""
    a = await make_replica("a", RATESVC_LABEL_SETTLE_S="60")
    hold = asyncio.Event()
    reached = _slow_sender(a, hold)
    real_now = purchase_module.now_text

    def a_clock_two_minutes_behind() -> str:
        return format_stamp(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120))

    monkeypatch.setattr(purchase_module, "now_text", a_clock_two_minutes_behind)
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await asyncio.wait_for(reached.wait(), 10)
    monkeypatch.setattr(purchase_module, "now_text", real_now)  # B's clock is right
    (stamp,) = await ledger_sql(postgres_url, "SELECT attempt_at FROM packages")
    _partition_from_ledger(a)
    b = await make_replica("b", RATESVC_LABEL_SETTLE_S="60")
    await asyncio.sleep(6)  # lease TTL 1 s: B adopted long ago, well within settle_s
    hold.set()
    await asyncio.sleep(1.0)
    buying.cancel()
    await asyncio.gather(buying, return_exceptions=True)
    assert sandbox.calls["/shipments/createlabel"] == 0, (
        f"bought {sandbox.calls['/shipments/createlabel']} times (A's attempt_at {stamp})"
    )
    del b


async def test_a_second_ledger_on_the_same_sqlite_file_cannot_make_the_first_buy_twice(
    aiohttp_client: Any,
    sandbox_url: str,
    cin7_url: str,
    tmp_path: Any,
    sandbox: ShipStationSandbox,
) -> None:
    """Review finding: SQLite start-up abandoned every ``purchase:`` lease, so a second
    process on the same file took over a purchase the first was still buying, and both
    bought. Now start-up abandons only leases whose owner is gone (a dead pid on this host;
    see the next test for a live one), and a purchase confirms its lease in the ledger right
    before ``createlabel`` leaves: here B (same pid, so taken for a restart) adopts, and A,
    finding its lease gone, does not send."""

    data = tmp_path / "shared-data"
    env = service_env(sandbox_url, data, cin7_url, RATESVC_LABEL_SETTLE_S="0")
    a = await aiohttp_client(create_app(load_settings(env)))
    hold = asyncio.Event()
    reached = _slow_sender(a, hold)
    buying = asyncio.create_task(a.post("/v1/labels", json=SALE, headers=AUTH))
    await asyncio.wait_for(reached.wait(), 10)
    owner_a = a.app[keys.LEDGER].owner
    b = await aiohttp_client(create_app(load_settings(env)))  # same SQLite file
    await asyncio.sleep(1.0)
    hold.set()
    await asyncio.sleep(1.0)
    buying.cancel()
    await asyncio.gather(buying, return_exceptions=True)
    assert sandbox.calls["/shipments/createlabel"] == 1, (
        f"bought {sandbox.calls['/shipments/createlabel']} times; A ({owner_a}) was still "
        f"buying when B ({b.app[keys.LEDGER].owner}) started on the same SQLite ledger"
    )


async def test_sqlite_start_up_leaves_a_live_processs_leases_and_claims_alone(
    tmp_path: Any,
) -> None:
    """A lease held by another live process on this host (the parent pid stands for it) is
    not abandoned at start-up; one whose process is dead is."""

    host = this_host()
    live, dead = f"{host}:{os.getppid()}:aaaa", f"{host}:{2**22 + 12345}:bbbb"
    assert not owner_is_gone(live)
    assert owner_is_gone(dead)
    assert not owner_is_gone(f"elsewhere:{os.getpid()}:cccc")
    assert not owner_is_gone(f"{socket.gethostname()}~1:{os.getpid()}:dddd")  # a container
    ledger = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    await ledger.open()
    try:
        for name, owner in (("purchase:lb_live", live), ("purchase:lb_dead", dead)):
            await ledger._engine.execute(  # what another process wrote
                f"INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, {ledger._now} + 60)",
                (name, owner),
            )
        await ledger.abandon_leases("purchase:")
        assert await ledger.lease("purchase:lb_dead") is None
        kept = await ledger.lease("purchase:lb_live")
        assert kept is not None and kept[0] == live
    finally:
        await ledger.close()
