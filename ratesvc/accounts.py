"""What the service runs for each account: its ShipStation client, limiter and catalogue.

Accounts that share a ShipStation key pair share one limiter, because ShipStation counts calls
per key pair, whoever makes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from ratesvc.catalog import CarrierCatalog
from ratesvc.config import Account, Settings
from ratesvc.limiter import RateLimiter
from ratesvc.metrics import Metrics
from ratesvc.upstreams.shipstation.client import ShipStationClient


@dataclass(frozen=True)
class AccountServices:
    account: Account
    shipstation: ShipStationClient
    catalog: CarrierCatalog


def build_accounts(
    settings: Settings, shipstation_session: aiohttp.ClientSession, metrics: Metrics
) -> dict[str, AccountServices]:
    limiters: dict[tuple[str, str], RateLimiter] = {}
    built: dict[str, AccountServices] = {}
    for name, account in settings.accounts.items():
        ss = account.shipstation
        key = (ss.url, ss.key_id())
        limiter = limiters.get(key)
        if limiter is None:
            limiter = limiters[key] = RateLimiter(
                f"shipstation:{ss.key_id()}",
                limit=ss.rate_limit,
                window_s=ss.window_s,
                metrics=metrics,
            )
        client = ShipStationClient(shipstation_session, ss, limiter, metrics=metrics)
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
        )
    return built
