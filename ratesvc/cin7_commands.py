"""``ratesvc cin7 subscribe`` and ``ratesvc cin7 webhooks``: Cin7 Core webhook subscriptions.

Both print one line per fact and return the exit status: 0 when all is well, 1 when something
needs a person (a deactivated webhook is reported loudly: Cin7 Core switches a webhook off
silently after six failed deliveries, and until it is re-subscribed only the poller ships).
"""

from __future__ import annotations

import asyncio

import aiohttp

from ratesvc.automation.subscriptions import describe, subscribe
from ratesvc.config import Settings
from ratesvc.errors import UpstreamFailure
from ratesvc.upstreams.cin7.client import Cin7Client, cin7_limiter

TIMEOUT_S = 30.0


async def subscribe_command(
    settings: Settings, account_name: str, url: str
) -> tuple[int, list[str]]:
    account = settings.accounts.get(account_name)
    if account is None:
        known = ", ".join(sorted(settings.accounts))
        return 2, [f"no account {account_name!r} (configured: {known})"]
    if account.cin7 is None:
        return 2, [f"account {account_name}: Cin7 Core is not configured"]
    if account.webhook is None:
        return 2, [
            f"account {account_name}: no webhook credential to give Cin7 Core; set "
            "RATESVC_CIN7_WEBHOOK_TOKEN (or the account's webhook table) first"
        ]
    if not url.startswith(("https://", "http://")):
        return 2, [f"--url must be an http(s) URL, got {url!r}"]
    expected = f"/v1/webhooks/cin7/{account_name}"
    notes = []
    if not url.rstrip("/").endswith(expected):
        notes.append(f"note: the URL does not end with {expected}; deliveries will not arrive")
    async with aiohttp.ClientSession() as session:
        cin7 = Cin7Client(session, account.cin7, cin7_limiter(f"cli:{account_name}"))
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        try:
            done = await subscribe(cin7, account_name, account.webhook, url, deadline=deadline)
        except UpstreamFailure as exc:
            return 1, [f"account {account_name}: Cin7 Core refused the subscription: {exc.detail}"]
    verb = "subscribed" if done.created else "updated (and re-activated)"
    return 0, [*notes, f"account {account_name}: {verb}: {describe(done.hook)}"]


async def webhooks_command(settings: Settings, account_name: str | None) -> tuple[int, list[str]]:
    names = [account_name] if account_name else sorted(settings.accounts)
    lines: list[str] = []
    status = 0
    async with aiohttp.ClientSession() as session:
        for name in names:
            account = settings.accounts.get(name)
            if account is None:
                lines.append(f"account {name}: no such account")
                status = 2
                continue
            if account.cin7 is None:
                lines.append(f"account {name}: Cin7 Core is not configured")
                continue
            cin7 = Cin7Client(session, account.cin7, cin7_limiter(f"cli:{name}"))
            deadline = asyncio.get_running_loop().time() + TIMEOUT_S
            try:
                hooks = await cin7.webhooks(deadline=deadline)
            except UpstreamFailure as exc:
                lines.append(f"account {name}: cannot list webhooks: {exc.detail}")
                status = 1
                continue
            if not hooks:
                lines.append(f"account {name}: no webhooks (only the poller finds packed sales)")
            for hook in hooks:
                lines.append(f"account {name}: {describe(hook)}")
                if not hook.IsActive:
                    status = 1
                    lines.append(
                        f"!!! account {name}: Cin7 Core DEACTIVATED the {hook.Type} webhook to "
                        f"{hook.ExternalURL} (six failed deliveries?). Packed sales arrive only "
                        f"through the poller until you run: ratesvc cin7 subscribe --account "
                        f"{name} --url {hook.ExternalURL}"
                    )
    return status, lines
