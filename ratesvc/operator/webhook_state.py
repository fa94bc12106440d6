"""Is Cin7 Core still delivering ``Sale/PackAuthorised`` to this account?

Cin7 Core switches a webhook off silently after six failed deliveries; until someone re-subscribes,
only the poller finds packed sales. The state is read from Cin7 Core's webhook list at the
limiter's *background* priority and kept :data:`FRESH_S` (60 s) per account; a failed read is kept
:data:`FAILED_S` (15 s), so a status page polled every few seconds while Cin7 Core is down costs
a call now and then, not one per look. Reads are shared (one in flight per account) and a caller
waits for one at most :data:`WAIT_S`; the read goes on, and the next look gets its answer.
Nothing here raises: whatever goes wrong is an ``unknown`` state that says what.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from typing import Literal

import msgspec

from ratesvc.accounts import AccountServices
from ratesvc.errors import UpstreamFailure
from ratesvc.limiter import Priority
from ratesvc.upstreams.cin7 import wire

log = logging.getLogger(__name__)

FRESH_S = 60.0
FAILED_S = 15.0
WAIT_S = 2.0
READ_DEADLINE_S = 30.0
WEBHOOK_STATES = ("active", "inactive", "unknown")

State = Literal["active", "inactive", "unknown"]


class WebhookState(msgspec.Struct, frozen=True, kw_only=True):
    """``fix``: the command that makes Cin7 Core deliver again (None when none is needed, or
    none would help)."""

    state: State
    detail: str
    fix: str | None


def target_path(account: str) -> str:
    return f"/v1/webhooks/cin7/{account}"


def subscribe_command(account: str, url: str) -> str:
    """Quoted for a shell: the URL comes from Cin7 Core (or a placeholder with spaces)."""
    return f"ratesvc cin7 subscribe --account {shlex.quote(account)} --url {shlex.quote(url)}"


def judge(hooks: list[wire.Webhook], account: str, base_url: str) -> WebhookState:
    """The account's state among the organisation's webhooks (its URL ends with the account's
    webhook path): active wins over inactive."""
    path = target_path(account)
    ours = [h for h in hooks if h.ExternalURL.rstrip("/").endswith(path)]
    active = next((h for h in ours if h.IsActive), None)
    if active is not None:
        return WebhookState(
            state="active", detail=f"{active.Type} is delivered to {active.ExternalURL}", fix=None
        )
    if ours:
        url = ours[0].ExternalURL
        return WebhookState(
            state="inactive",
            detail=f"Cin7 Core deactivated the {ours[0].Type} webhook to {url} (after failed "
            "deliveries?): packed sales arrive only through the poller until it is re-subscribed",
            fix=subscribe_command(account, url),
        )
    return WebhookState(
        state="unknown",
        detail=f"no Cin7 Core webhook points at {path}: only the poller finds packed sales",
        fix=subscribe_command(account, base_url.rstrip("/") + path),
    )


class WebhookWatch:
    """The webhook state of each account, cached (see the module docstring)."""

    def __init__(self, *, fresh_s: float = FRESH_S, failed_s: float = FAILED_S) -> None:
        self._fresh_s = fresh_s
        self._failed_s = failed_s
        # account -> (hooks, or the failure's words; loop time it expires)
        self._known: dict[str, tuple[list[wire.Webhook] | str, float]] = {}
        self._reads: dict[str, asyncio.Task[None]] = {}

    async def state(
        self, services: AccountServices, base_url: str, *, wait_s: float = WAIT_S
    ) -> WebhookState:
        """``base_url``: how this service is reached, for the command when none is found."""
        name = services.account.name
        cin7 = services.cin7
        if cin7 is None:
            return WebhookState(
                state="unknown", fix=None,
                detail="this account has no Cin7 Core credentials: there is no webhook to watch",
            )  # fmt: skip
        now = asyncio.get_running_loop().time()
        known = self._known.get(name)
        if known is None or known[1] <= now:
            read = self._reads.get(name)
            if read is None:
                read = self._reads[name] = asyncio.create_task(self._read(services))
                read.add_done_callback(lambda _: self._reads.pop(name, None))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(read), wait_s)
            known = self._known.get(name, known)
        if known is None:
            return WebhookState(
                state="unknown", fix=None,
                detail="Cin7 Core's webhook list is being read: look again in a moment",
            )  # fmt: skip
        hooks, _ = known
        if isinstance(hooks, str):
            return WebhookState(
                state="unknown", fix=None, detail=f"Cin7 Core could not be asked: {hooks}"
            )
        return judge(hooks, name, base_url)

    async def _read(self, services: AccountServices) -> None:
        assert services.cin7 is not None
        loop = asyncio.get_running_loop()
        name = services.account.name
        try:
            hooks = await services.cin7.webhooks(
                deadline=loop.time() + READ_DEADLINE_S, priority=Priority.BACKGROUND
            )
        except UpstreamFailure as exc:
            self._known[name] = (exc.detail, loop.time() + self._failed_s)
        except Exception as exc:  # the status page must never fail: say it, log the bug
            log.exception("reading Cin7 Core's webhooks for %s failed unexpectedly", name)
            self._known[name] = (f"an unexpected error ({type(exc).__name__})", 0.0)
        else:
            self._known[name] = (hooks, loop.time() + self._fresh_s)

    async def close(self) -> None:
        reads = list(self._reads.values())
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
