"""``GET /v1/status``: what an operator watches, for the account of the token.

Per ShipStation key and Cin7 Core application the limiter's window (read from the limiter, no
call made), and whether it is this replica's own (``local``), kept in Redis for every replica
(``shared``) or, Redis being unreachable, this replica's share of it (``degraded``); the
write-back backlog, the automation queue and the labels waiting for a person (counted in the
ledger); the Cin7 Core webhook's state (:mod:`.webhook_state`, cached); each backend's engine
and reachability; the process that answered (host and pid). It never fails because an upstream
is down: what cannot be known is said to be ``unknown``.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import TypeAlias

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.labels.lifecycle import LabelStatus
from ratesvc.limiter import Limiter, Sharing
from ratesvc.operator.webhook_state import WebhookState, WebhookWatch
from ratesvc.storage.ledger import Ledger, parse_stamp
from ratesvc.storage.probes import BackendState

_WAITING, _RETRYING, _ATTENTION = "received", "failed", "attention"  # event statuses
_LABELS = (LabelStatus.ATTENTION, LabelStatus.PURCHASING)


class ShipStationBudget(msgspec.Struct, frozen=True, kw_only=True):
    key: str  # the key pair's id, as in logs and metrics
    limit: int
    remaining: int
    resets_at: str | None
    throttled: int  # rate-limit refusals seen since start
    sharing: Sharing = "local"  # local | shared (Redis) | degraded (Redis unreachable)


class Cin7Budget(msgspec.Struct, frozen=True, kw_only=True):
    application: str  # the API application's id, as in logs and metrics
    limit: int
    remaining: int
    resets_at: str | None
    throttled: int
    sharing: Sharing = "local"


class WriteBackBacklog(msgspec.Struct, frozen=True, kw_only=True):
    backlog: int
    oldest_age_s: float | None


class AutomationQueue(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool
    waiting: int
    retrying: int
    attention: int


class LabelsWaiting(msgspec.Struct, frozen=True, kw_only=True):
    attention: int
    purchasing: int


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """The process that answered: behind a load balancer, which replica and which worker."""

    host: str
    pid: int


class Status(msgspec.Struct, frozen=True, kw_only=True):
    generated_at: str
    account: str
    shipstation: list[ShipStationBudget]
    cin7: list[Cin7Budget]
    write_back: WriteBackBacklog
    automation: AutomationQueue
    labels: LabelsWaiting
    webhook: WebhookState
    backends: list[BackendState]  # the ledger, and Redis when configured (no credentials)
    instance: Instance


def _rfc3339(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_Budget: TypeAlias = tuple[str, int, int, str | None, int, Sharing]


def _budget(limiter: Limiter, now: dt.datetime) -> _Budget:
    state = limiter.state()
    resets_at = None
    if state.reset_after_s is not None:
        resets_at = _rfc3339(now + dt.timedelta(seconds=state.reset_after_s))
    name = limiter.name.partition(":")[2] or limiter.name
    return name, state.limit, state.remaining, resets_at, state.throttled, state.sharing


async def account_status(
    services: AccountServices,
    ledger: Ledger,
    webhooks: WebhookWatch,
    *,
    base_url: str,
    backends: list[BackendState],
) -> Status:
    now = dt.datetime.now(dt.UTC)
    name = services.account.name
    key, limit, remaining, resets_at, throttled, sharing = _budget(
        services.shipstation.limiter, now
    )
    shipstation = [ShipStationBudget(key=key, limit=limit, remaining=remaining,
                                     resets_at=resets_at, throttled=throttled,
                                     sharing=sharing)]  # fmt: skip
    cin7: list[Cin7Budget] = []
    if services.cin7 is not None:
        app, limit, remaining, resets_at, throttled, sharing = _budget(services.cin7.limiter, now)
        cin7.append(Cin7Budget(application=app, limit=limit, remaining=remaining,
                               resets_at=resets_at, throttled=throttled,
                               sharing=sharing))  # fmt: skip
    backlog = await ledger.backlog(
        name, event_statuses=(_WAITING, _RETRYING, _ATTENTION), label_statuses=_LABELS
    )
    oldest = None
    if backlog.oldest_write_back_at is not None:
        queued = parse_stamp(backlog.oldest_write_back_at)
        oldest = round(max(0.0, (now - queued).total_seconds()), 1)
    return Status(
        generated_at=_rfc3339(now),
        account=name,
        shipstation=shipstation,
        cin7=cin7,
        write_back=WriteBackBacklog(backlog=backlog.write_backs, oldest_age_s=oldest),
        automation=AutomationQueue(
            enabled=services.account.rule.on,
            waiting=backlog.events[_WAITING],
            retrying=backlog.events[_RETRYING],
            attention=backlog.events[_ATTENTION],
        ),
        labels=LabelsWaiting(
            attention=backlog.labels[LabelStatus.ATTENTION],
            purchasing=backlog.labels[LabelStatus.PURCHASING],
        ),
        webhook=await webhooks.state(services, base_url),
        backends=backends,
        instance=Instance(host=socket.gethostname(), pid=os.getpid()),
    )
