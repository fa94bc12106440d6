"""What the service runs for each account: its ShipStation client, limiter and catalogue.

Accounts that share a ShipStation key pair share one limiter, because ShipStation counts calls
per key pair, whoever makes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from redis.asyncio import Redis

from ratesvc.catalog import CarrierCatalog
from ratesvc.config import Account, Settings
from ratesvc.customs.products import ProductRecords
from ratesvc.limiter import Limiter
from ratesvc.metrics import Metrics
from ratesvc.storage.shared_limiter import make_limiter
from ratesvc.upstreams.cin7.client import CIN7_CALLS_PER_WINDOW, Cin7Client
from ratesvc.upstreams.shipstation.client import ShipStationClient


@dataclass(frozen=True)
class AccountServices:
    account: Account
    shipstation: ShipStationClient
    catalog: CarrierCatalog
    cin7: Cin7Client | None = None
    products: ProductRecords | None = None  # with cin7: product records for customs


def build_accounts(
    settings: Settings,
    shipstation_session: aiohttp.ClientSession,
    metrics: Metrics,
    cin7_session: aiohttp.ClientSession | None = None,
    *,
    redis: Redis | None = None,
) -> dict[str, AccountServices]:
    """Accounts sharing a ShipStation key pair share its limiter; likewise a Cin7 Core API
    application (its account id). With ``redis`` (``app[keys.REDIS]``) each limiter's window is
    shared by every replica (:mod:`ratesvc.storage.shared_limiter`)."""
    limiters: dict[tuple[str, str], Limiter] = {}
    cin7_limiters: dict[bytes, Limiter] = {}
    built: dict[str, AccountServices] = {}
    for name, account in settings.accounts.items():
        ss = account.shipstation
        key = (ss.url, ss.cache_id())
        limiter = limiters.get(key)
        if limiter is None:  # named (in metrics, /v1/status and Redis) by 64 bits of its key pair
            limiter = limiters[key] = make_limiter(
                f"shipstation:{ss.cache_id()[:16]}", limit=ss.rate_limit, window_s=ss.window_s,
                metrics=metrics, redis=redis, prefix=settings.redis_prefix,
                replicas=settings.replicas,
            )  # fmt: skip
        client = ShipStationClient(shipstation_session, ss, limiter, metrics=metrics)
        cin7: Cin7Client | None = None
        if account.cin7 is not None and cin7_session is not None:
            application = account.cin7.account_id.digest()
            if application not in cin7_limiters:
                cin7_limiters[application] = make_limiter(
                    f"cin7:{application.hex()[:16]}", limit=CIN7_CALLS_PER_WINDOW,
                    window_s=settings.cin7_window_s, min_interval_s=settings.cin7_min_interval_s,
                    throttle_pause_s=settings.cin7_throttle_pause_s, metrics=metrics,
                    redis=redis, prefix=settings.redis_prefix, replicas=settings.replicas,
                )  # fmt: skip
            limiter_7 = cin7_limiters[application]
            cin7 = Cin7Client(cin7_session, account.cin7, limiter_7, metrics=metrics)
        built[name] = AccountServices(
            account=account,
            shipstation=client,
            catalog=CarrierCatalog(
                client,
                account=name,
                ttl_s=settings.carriers_ttl_s,
                allowed=account.carriers,
                metrics=metrics,
            ),
            cin7=cin7,
            products=(
                ProductRecords(cin7, ttl_s=settings.customs_product_ttl_s)
                if cin7 is not None
                else None
            ),
        )
    return built


async def close_limiters(accounts: dict[str, AccountServices]) -> None:
    """Stop every limiter's background work (a shared one's dispatcher) before Redis closes."""
    seen: set[int] = set()
    for services in accounts.values():
        for client in (services.shipstation, services.cin7):
            if client is not None and id(client.limiter) not in seen:
                seen.add(id(client.limiter))
                await client.limiter.aclose()
