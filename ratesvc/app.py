"""``create_app(settings)``: the whole service as one aiohttp application.

No I/O happens here; every resource (Redis, the upstream HTTP sessions, the per-account clients) is
opened and closed in ``cleanup_ctx``, so the app can be started and stopped any number of times
by tests. A context that fails after opening something closes it before the failure propagates
(aiohttp cleans up only the contexts that had started).

A graceful stop has one deadline, ``RATESVC_STOP_GRACE_S`` (30 s) counted from the signal
(:class:`StopClock`, started by ``on_shutdown`` as the runner stops listening): requests in
flight get until then to finish (the runner's ``shutdown_timeout``, set by
:func:`ratesvc.demo.start_site`), purchases waiting for ShipStation's ``createlabel`` answer
run meanwhile and get only what is left of it when the cleanup contexts close them — not a
grace of their own after the requests' — so the whole stop fits an orchestrator's grace
period (compose's 45 s ``stop_grace_period``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from ratesvc import __version__, keys
from ratesvc.accounts import AccountServices, build_accounts, close_limiters
from ratesvc.api.middlewares import add_unmatched
from ratesvc.api.routes import setup_routes
from ratesvc.api.tokens import ApiTokens
from ratesvc.automation.poller import Poller
from ratesvc.automation.worker import Automation
from ratesvc.config import ConfigError, Settings
from ratesvc.console import setup_console
from ratesvc.fd_limit import fitting_pool
from ratesvc.labels import Labels, LabelTiming, WriteBackWorker
from ratesvc.metrics import Metrics
from ratesvc.operator import ReadySales, WebhookWatch
from ratesvc.rating import Rater
from ratesvc.storage.ledger import Ledger, LedgerUnavailable
from ratesvc.storage.redis_client import check_at_start, open_redis
from ratesvc.storage.shared_quotes import build_rating_state

USER_AGENT = f"ratesvc/{__version__}"


class StopClock:
    """When the graceful stop began, and how much of its grace is left."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._deadline: float | None = None

    def start(self) -> None:
        if self._deadline is None:
            self._deadline = time.monotonic() + self.grace_s

    def left(self) -> float:
        """Seconds left of the grace (the whole grace when the stop has not begun: a start-up
        that failed, a test closing its app)."""
        if self._deadline is None:
            return self.grace_s
        return max(0.0, self._deadline - time.monotonic())


STOP_CLOCK = web.AppKey("stop_clock", StopClock)


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    accounts = settings.accounts.items()
    app[keys.TOKENS] = ApiTokens({t.digest(): name for name, a in accounts for t in a.api_tokens})
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics or Metrics()
    app[STOP_CLOCK] = StopClock(settings.stop_grace_s)
    app.on_shutdown.append(_stopping)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(_rating)
    app.cleanup_ctx.append(_labels)
    app.cleanup_ctx.append(_automation)
    app.cleanup_ctx.append(_operator)
    setup_routes(app)
    setup_console(app)
    add_unmatched(app)  # last: it takes whatever no route took
    return app


async def _stopping(app: web.Application) -> None:
    """The runner stopped listening (SIGTERM): the stop's one deadline starts now."""
    app[STOP_CLOCK].start()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    """The process's Redis client when ``RATESVC_REDIS_URL`` is set (else None). Opened first
    and closed last: the limiters, the quote cache and the stores use it. An unreachable Redis
    is logged, not fatal (:mod:`ratesvc.storage.redis_client`)."""
    settings = app[keys.SETTINGS]
    url = settings.redis_url
    if url is None:
        app[keys.REDIS] = None
        yield
        return
    try:
        redis = app[keys.REDIS] = open_redis(url)
    except ValueError:  # its text may hold part of the URL: never shown
        raise ConfigError(
            ["RATESVC_REDIS_URL: redis-py cannot read the URL or one of its options (percent-"
             "encode / # ? @ % [ ] in the user and password)"]
        ) from None  # fmt: skip
    try:
        await check_at_start(redis, url, settings.redis_prefix)
        yield
    finally:
        await redis.aclose()


def _session(*, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60, connect=10),
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections,
                                       ttl_dns_cache=300),
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
    )  # fmt: skip


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession per upstream (ShipStation, Cin7 Core), shared by every account; each
    credential's limiter in this process, or shared through Redis when it is configured."""
    shipstation = _session(connections=fitting_pool(app[keys.SETTINGS].shipstation_connections))
    cin7 = _session(connections=10)  # Cin7 Core is paced to about a call a second anyway
    accounts: dict[str, AccountServices] = {}
    try:
        accounts = build_accounts(
            app[keys.SETTINGS], shipstation, app[keys.METRICS], cin7, redis=app[keys.REDIS]
        )
        app[keys.ACCOUNTS] = accounts
        yield
    finally:
        await close_limiters(accounts)
        for services in accounts.values():
            await services.catalog.close()
            if services.products is not None:
                await services.products.close()
        await shipstation.close()
        await cin7.close()


async def _rating(app: web.Application) -> AsyncIterator[None]:
    """The quote cache, in-flight calls, quote store, replay and (shared) carrier catalogues."""
    settings = app[keys.SETTINGS]
    state = build_rating_state(app[keys.REDIS], settings.redis_prefix, settings)
    try:
        app[keys.RATER] = Rater(
            cache=state.cache, store=state.store, shared_flights=state.flights,
            max_stale_s=settings.quote_max_stale_s,
            memo_max_bytes=settings.quote_store_max_bytes // 8,
        )  # fmt: skip
        app[keys.REPLAY] = state.replay
        state.share_catalogs(app[keys.ACCOUNTS].values())
        yield
    finally:
        await state.close()


async def _labels(app: web.Application) -> AsyncIterator[None]:
    """The ledger (on the engine ``RATESVC_DATABASE_URL`` names), the label purchases it records,
    and the write-back worker draining it.

    Purchases a previous process left unfinished are resumed (reconciled) at start-up; at
    shutdown purchases waiting for ShipStation's answer get what is left of the stop's grace
    (:class:`StopClock`) before they are cancelled. A ledger that did not open has nothing
    to give back: the purchases and the write-back worker were not started.
    """
    settings = app[keys.SETTINGS]
    ledger = Ledger.from_url(settings.ledger_url)
    worker = WriteBackWorker(
        ledger, app[keys.ACCOUNTS], base_s=settings.writeback_retry_s,
        attention_after=settings.writeback_attention_after, lease_ttl_s=settings.lease_ttl_s,
    )  # fmt: skip
    labels = Labels(
        ledger,
        quotes=app[keys.RATER].quotes,
        accounts=app[keys.ACCOUNTS],
        timing=LabelTiming(settle_s=settings.label_settle_s, lease_ttl_s=settings.lease_ttl_s),
        on_queued=worker.nudge,
        retention_days=settings.retention_days,
    )
    app[keys.LEDGER] = ledger
    app[keys.LABELS] = labels
    opened = False
    try:  # whatever fails below, what was opened or started is closed or stopped
        await _open(ledger, settings)
        opened = True
        await worker.start()
        await labels.start()
        yield
    finally:
        if opened:
            await labels.close(grace_s=app[STOP_CLOCK].left())
            await worker.stop()
        await ledger.close()


async def _open(ledger: Ledger, settings: Settings) -> None:
    """A ledger that cannot be opened stops start-up with one line naming the setting and the
    place (a file, or PostgreSQL's host, port and database — never the URL's password)."""
    setting = "RATESVC_DATABASE_URL" if settings.database_url else "RATESVC_DATA_DIR"
    try:
        await ledger.open()
    except LedgerUnavailable as exc:
        raise ConfigError([f"{setting}: {exc}"]) from exc


async def _automation(app: web.Application) -> AsyncIterator[None]:
    """Webhook events and the ReadyForShipping poller; events a previous process recorded but
    did not finish are due at once and processed now."""
    settings = app[keys.SETTINGS]
    automation = Automation(
        app[keys.LEDGER], app[keys.ACCOUNTS], labels=app[keys.LABELS], rater=app[keys.RATER],
        metrics=app[keys.METRICS], retry_s=settings.automation_retry_s,
        lease_ttl_s=settings.lease_ttl_s,
    )  # fmt: skip
    poller = Poller(app[keys.LEDGER], app[keys.ACCOUNTS], automation, app[keys.METRICS],
                    lease_ttl_s=settings.lease_ttl_s)  # fmt: skip
    app[keys.AUTOMATION] = automation
    app[keys.POLLER] = poller
    try:
        await automation.start()
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
