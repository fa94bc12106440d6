"""``ratesvc check``: verify every account's upstream credentials, one actionable line each."""

from __future__ import annotations

import asyncio

import aiohttp

from ratesvc.config import Settings
from ratesvc.errors import UpstreamFailure
from ratesvc.limiter import RateLimiter
from ratesvc.upstreams.cin7.client import Cin7Client, cin7_limiter
from ratesvc.upstreams.shipstation.client import ShipStationClient


async def check_accounts(settings: Settings, *, timeout_s: float = 15.0) -> tuple[bool, list[str]]:
    """Return (all good, report lines)."""
    lines: list[str] = []
    ok = True
    async with aiohttp.ClientSession() as session:
        for name, account in settings.accounts.items():
            ss = account.shipstation
            limiter = RateLimiter(f"check:{name}", limit=ss.rate_limit, window_s=ss.window_s)
            client = ShipStationClient(session, ss, limiter)
            deadline = asyncio.get_running_loop().time() + timeout_s
            try:
                carriers = await client.list_carriers(deadline=deadline)
            except UpstreamFailure as exc:
                ok = False
                lines.append(f"account {name}: ShipStation at {ss.url}: PROBLEM: {exc.detail}")
                continue
            codes = ", ".join(c.carrier_code for c in carriers) or "none"
            lines.append(
                f"account {name}: ShipStation OK ({len(carriers)} carriers connected: {codes}; "
                f"limit {limiter.limit} calls per window)"
            )
            if not carriers:
                ok = False
                lines.append(
                    f"account {name}: PROBLEM: no carrier is connected in ShipStation; connect one "
                    "under Settings → Shipping → Carriers before rating"
                )
            elif account.carriers:
                missing = set(account.carriers) - {c.carrier_code for c in carriers}
                if missing:
                    ok = False
                    lines.append(
                        f"account {name}: PROBLEM: carriers allowed in config but not connected "
                        f"in ShipStation: {', '.join(sorted(missing))}"
                    )
            if account.cin7 is None:
                lines.append(f"account {name}: Cin7 Core not configured (sale-based features off)")
                continue
            cin7 = Cin7Client(session, account.cin7, cin7_limiter(f"check:{name}"))
            try:
                locations = await cin7.locations(
                    deadline=asyncio.get_running_loop().time() + timeout_s
                )
            except UpstreamFailure as exc:
                ok = False
                lines.append(
                    f"account {name}: Cin7 Core at {account.cin7.url}: PROBLEM: {exc.detail}"
                )
                continue
            names = ", ".join(location.Name for location in locations) or "none"
            lines.append(f"account {name}: Cin7 Core OK ({len(locations)} locations: {names})")
    return ok, lines
