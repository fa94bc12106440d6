"""Every ``web.AppKey`` of the service, typed, in one place."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from ratesvc.accounts import AccountServices
from ratesvc.api.tokens import ApiTokens
from ratesvc.automation.poller import Poller
from ratesvc.automation.worker import Automation
from ratesvc.config import Settings
from ratesvc.labels import Labels
from ratesvc.metrics import Metrics
from ratesvc.operator import ReadySales, WebhookWatch
from ratesvc.rating import Rater
from ratesvc.replay import ReplayProtocol
from ratesvc.storage.ledger import Ledger

SETTINGS = web.AppKey("settings", Settings)
# API tokens -> account names (built once; the edge's lookup)
TOKENS = web.AppKey("tokens", ApiTokens)
METRICS = web.AppKey("metrics", Metrics)
ACCOUNTS = web.AppKey("accounts", dict[str, AccountServices])
RATER = web.AppKey("rater", Rater)
REPLAY: web.AppKey[ReplayProtocol] = web.AppKey("replay")
LEDGER = web.AppKey("ledger", Ledger)
LABELS = web.AppKey("labels", Labels)
AUTOMATION = web.AppKey("automation", Automation)
POLLER = web.AppKey("poller", Poller)
READY_SALES = web.AppKey("ready_sales", ReadySales)
WEBHOOK_WATCH = web.AppKey("webhook_watch", WebhookWatch)
# the process's Redis client (ratesvc.storage.redis_client); None: RATESVC_REDIS_URL is unset.
# Redis-backed components take it with ``settings.redis_prefix``.
REDIS: web.AppKey[Redis | None] = web.AppKey("redis")
