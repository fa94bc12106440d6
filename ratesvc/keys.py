"""Every ``web.AppKey`` of the service, typed, in one place."""

from __future__ import annotations

from aiohttp import web

from ratesvc.accounts import AccountServices
from ratesvc.api.tokens import ApiTokens
from ratesvc.automation.poller import Poller
from ratesvc.automation.worker import Automation
from ratesvc.config import Settings
from ratesvc.labels import Labels
from ratesvc.ledger import Ledger
from ratesvc.metrics import Metrics
from ratesvc.operator import ReadySales, WebhookWatch
from ratesvc.rating import Rater
from ratesvc.replay import AnswerReplay

SETTINGS = web.AppKey("settings", Settings)
# API tokens -> account names (built once; the edge's lookup)
TOKENS = web.AppKey("tokens", ApiTokens)
METRICS = web.AppKey("metrics", Metrics)
ACCOUNTS = web.AppKey("accounts", dict[str, AccountServices])
RATER = web.AppKey("rater", Rater)
REPLAY = web.AppKey("replay", AnswerReplay)
LEDGER = web.AppKey("ledger", Ledger)
LABELS = web.AppKey("labels", Labels)
AUTOMATION = web.AppKey("automation", Automation)
POLLER = web.AppKey("poller", Poller)
READY_SALES = web.AppKey("ready_sales", ReadySales)
WEBHOOK_WATCH = web.AppKey("webhook_watch", WebhookWatch)
