"""``create_app(settings)``: the whole service as one aiohttp application.

No I/O happens here; every resource (the upstream HTTP sessions, the per-account clients) is
opened and closed in ``cleanup_ctx``, so the app can be started and stopped any number of times
by tests. A context that fails after opening something closes it before the failure propagates
(aiohttp cleans up only the contexts that had started).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from ratesvc import __version__, keys
from ratesvc.accounts import AccountServices, build_accounts
from ratesvc.api.middlewares import add_unmatched
from ratesvc.api.routes import setup_routes
from ratesvc.api.tokens import ApiTokens
from ratesvc.automation.poller import Poller
from ratesvc.automation.worker import Automation
from ratesvc.config import ConfigError, Settings
from ratesvc.console import setup_console
from ratesvc.fd_limit import fitting_pool
from ratesvc.labels import Labels, LabelTiming, WriteBackWorker
from ratesvc.ledger import Ledger
from ratesvc.metrics import Metrics
from ratesvc.operator import ReadySales, WebhookWatch
from ratesvc.quotes import LegCache, QuoteStore
from ratesvc.rating import Rater
from ratesvc.replay import AnswerReplay

USER_AGENT = f"ratesvc/{__version__}"


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    accounts = settings.accounts.items()
    app[keys.TOKENS] = ApiTokens({t.digest(): name for name, a in accounts for t in a.api_tokens})
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics or Metrics()
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(_rating)
    app.cleanup_ctx.append(_labels)
    app.cleanup_ctx.append(_automation)
    app.cleanup_ctx.append(_operator)
    setup_routes(app)
    setup_console(app)
    add_unmatched(app)  # last: it takes whatever no route took
    return app


def _session(*, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60, connect=10),
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections,
                                       ttl_dns_cache=300),
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
    )  # fmt: skip


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession per upstream (ShipStation, Cin7 Core), shared by every account."""
    shipstation = _session(connections=fitting_pool(app[keys.SETTINGS].shipstation_connections))
    cin7 = _session(connections=10)  # Cin7 Core is paced to about a call a second anyway
    accounts: dict[str, AccountServices] = {}
    try:
        accounts = build_accounts(app[keys.SETTINGS], shipstation, app[keys.METRICS], cin7)
        app[keys.ACCOUNTS] = accounts
        yield
    finally:
        for services in accounts.values():
            await services.catalog.close()
            if services.products is not None:
                await services.products.close()
        await shipstation.close()
        await cin7.close()


async def _rating(app: web.Application) -> AsyncIterator[None]:
    """The quote cache, in-flight calls and quote store, shared by every account."""
    settings = app[keys.SETTINGS]
    cache = LegCache(
        backend=settings.quote_cache,
        max_entries=settings.quote_cache_max_entries,
        max_bytes=settings.quote_cache_max_bytes,
        ttl_s=max(settings.quote_max_stale_s, *(a.quote_ttl_s for a in settings.accounts.values())),
    )
    try:
        budget = settings.quote_store_max_bytes  # the replay and the memo get a share of it
        store = QuoteStore(max_bytes=budget)
        app[keys.RATER] = Rater(cache=cache, store=store, max_stale_s=settings.quote_max_stale_s,
                                memo_max_bytes=budget // 8)  # fmt: skip
        app[keys.REPLAY] = AnswerReplay(store, max_bytes=budget // 4)
        yield
    finally:
        await cache.close()


async def _labels(app: web.Application) -> AsyncIterator[None]:
    """The ledger, the label purchases it records, and the write-back worker draining it.

    Purchases a previous process left unfinished are resumed (reconciled) at start-up; at
    shutdown purchases in progress get a grace period to finish before they are cancelled.
    """
    settings = app[keys.SETTINGS]
    ledger = Ledger(settings.data_dir / "ledger.sqlite3")
    worker = WriteBackWorker(
        ledger, app[keys.ACCOUNTS], base_s=settings.writeback_retry_s,
        attention_after=settings.writeback_attention_after,
    )  # fmt: skip
    labels = Labels(
        ledger,
        data_dir=settings.data_dir,
        quotes=app[keys.RATER].quotes,
        accounts=app[keys.ACCOUNTS],
        timing=LabelTiming(settle_s=settings.label_settle_s),
        on_queued=worker.nudge,
        retention_days=settings.retention_days,
    )
    app[keys.LEDGER] = ledger
    app[keys.LABELS] = labels
    try:  # whatever fails below, what was opened or started is closed or stopped
        await _open(ledger)
        await worker.start()
        await labels.start()
        yield
    finally:
        await labels.close()
        await worker.stop()
        await ledger.close()


async def _open(ledger: Ledger) -> None:
    try:
        await ledger.open()
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            [f"RATESVC_DATA_DIR: cannot open the ledger {ledger.path}: {exc}"]
        ) from exc


async def _automation(app: web.Application) -> AsyncIterator[None]:
    """Webhook events and the ReadyForShipping poller; events a previous process recorded but
    did not finish are due at once and processed now."""
    settings = app[keys.SETTINGS]
    automation = Automation(
        app[keys.LEDGER], app[keys.ACCOUNTS], labels=app[keys.LABELS], rater=app[keys.RATER],
        metrics=app[keys.METRICS], retry_s=settings.automation_retry_s,
    )  # fmt: skip
    poller = Poller(app[keys.LEDGER], app[keys.ACCOUNTS], automation, app[keys.METRICS])
    app[keys.AUTOMATION] = automation
    app[keys.POLLER] = poller
    try:
        automation.start()
        poller.start()
        yield
    finally:
        await poller.stop()
        await automation.stop()


async def _operator(app: web.Application) -> AsyncIterator[None]:
    """What the console reads: the ready list and the webhook state, with their caches; the
    Cin7 Core reads still running at shutdown are cancelled."""
    sales = app[keys.READY_SALES] = ReadySales(app[keys.LEDGER])
    watch = app[keys.WEBHOOK_WATCH] = WebhookWatch()
    try:
        yield
    finally:
        await sales.close()
        await watch.close()
